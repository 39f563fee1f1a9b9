//! The simulator on three voters (its own test binary: simulated time is process-wide). A few
//! seeds must come out clean; without the readiness gate (the canary) a new leader seeds its
//! pools from a state that lacks committed reservations, and the double sale must be found.

use panshi_simulations::sim::{run, Options};

#[test]
fn three_voters_run_clean_and_the_readiness_gate_canary_is_caught() {
    for seed in [1, 2] {
        let outcome = run(&Options {
            seed,
            steps: 80,
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
