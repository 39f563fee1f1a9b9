//! The simulator on three voters (its own test binary: simulated time is process-wide). A few
//! seeds must come out clean; without the readiness gate (the canary) a new leader seeds its
//! pools from a state that lacks committed reservations, and the double sale must be found.

use panshi_simulations::sim::{run, Options};

/// Seed 6066 asked a node that had applied nothing for a snapshot, and waited for ever on
/// the simulated clock. In seed 41130 a node committed and purged entries 0-6 within one
/// step: the history, which only looked after each step, began at entry 7 and folded an
/// order for a product it had never seen (a false double sale).
const SEEDS: [(u64, u64); 4] = [(1, 80), (2, 80), (6066, 50), (41130, 50)];

/// A seed that hangs fails the test instead of hanging it (simulated time does not pass on
/// its own, so a wait for it never ends).
const SEEDS_WITHIN_SECS: u64 = 600;

#[test]
fn three_voters_run_clean_and_the_readiness_gate_canary_is_caught() {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(SEEDS_WITHIN_SECS));
        if !watched.load(std::sync::atomic::Ordering::Acquire) {
            eprintln!("the seeds {SEEDS:?} did not finish within {SEEDS_WITHIN_SECS} s");
            std::process::exit(1);
        }
    });
    for (seed, steps) in SEEDS {
        let outcome = run(&Options {
            seed,
            steps,
            nodes: 3,
            canary: false,
        });
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}",
            outcome.violations
        );
        assert!(outcome.orders > 0);
        let cluster = outcome.cluster.expect("three nodes report their network");
        assert!(
            cluster.elections > 0 && cluster.delivered > 0,
            "{cluster:?}"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let canary = run(&Options {
        seed: 1,
        steps: 80,
        nodes: 3,
        canary: true,
    });
    assert!(
        canary
            .violations
            .iter()
            .any(|v| v.contains("Reserved") || v.contains("double sale")),
        "the missing readiness gate went unnoticed: {:?}",
        canary.violations
    );
}
