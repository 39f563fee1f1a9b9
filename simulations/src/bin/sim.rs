//! `panshi-sim`: the deterministic simulator. Prints each seed and its faults first; the
//! last line reads `sim: <N> seeds, <orders> orders, <V> violations`; exits non-zero when
//! V > 0. `--seed S` replays one seed exactly.

use std::process::ExitCode;

use clap::Parser;
use panshi_simulations::sim::{self, Options};

#[derive(Parser, Debug)]
#[command(name = "panshi-sim")]
struct Args {
    /// First seed (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of seeds to run: seed, seed+1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Steps per seed.
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    /// Run with a deliberately broken rule: must report violations.
    #[arg(long)]
    canary: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut orders = 0;
    let mut violations = 0;
    for seed in first..first.saturating_add(args.seeds) {
        let outcome = sim::run(&Options {
            seed,
            steps: args.steps,
            canary: args.canary,
        });
        for violation in &outcome.violations {
            println!("  violation: {violation}");
        }
        println!(
            "  seed {seed}: {} orders, {} reseller orders, {} mails sent ({} given up), {} notifies ({} forged or stale refused), {} crashes, {} violations{}",
            outcome.orders,
            outcome.reseller_orders,
            outcome.mails_sent,
            outcome.mails_given_up,
            outcome.notifies,
            outcome.notifies_refused,
            outcome.crashes,
            outcome.violations.len(),
            if outcome.violations.is_empty() {
                String::new()
            } else {
                format!(" (replay: panshi-sim --seed {seed} --steps {})", args.steps)
            }
        );
        orders += outcome.orders;
        violations += outcome.violations.len();
    }
    println!(
        "sim: {} seeds, {orders} orders, {violations} violations",
        args.seeds
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
