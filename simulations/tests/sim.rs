//! The simulator in the test suite: a few seeds must come out clean, the canary must not,
//! and a seed must replay exactly.

use panshi_simulations::sim::{run, Options};

#[test]
fn seeds_run_clean() {
    for seed in [7, 8, 9] {
        let outcome = run(&Options {
            seed,
            steps: 400,
            nodes: 1,
            canary: false,
        });
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}",
            outcome.violations
        );
        assert!(outcome.orders > 0);
    }
}

#[test]
fn the_canary_is_caught() {
    let outcome = run(&Options {
        seed: 7,
        steps: 400,
        nodes: 1,
        canary: true,
    });
    assert!(
        !outcome.violations.is_empty(),
        "the broken rule went unnoticed"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let first = run(&Options {
        seed: 11,
        steps: 300,
        nodes: 1,
        canary: false,
    });
    let second = run(&Options {
        seed: 11,
        steps: 300,
        nodes: 1,
        canary: false,
    });
    assert_eq!(
        (first.orders, first.notifies, first.crashes),
        (second.orders, second.notifies, second.crashes)
    );
}
