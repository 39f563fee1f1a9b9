//! `panshi-sim`: the deterministic simulator. Prints each seed and its faults first; the
//! last line reads `sim: <N> seeds, <orders> orders, <V> violations`; exits non-zero when
//! V > 0. `--seed S` replays one seed exactly. `--nodes 3` runs the shop on a cluster of
//! three voters over a simulated network; each seed's line then ends with the digest of its
//! committed history. On three nodes a seed replays its faults and workload, but thread
//! timing inside a node can still change what a message carries: two runs whose digests
//! differ diverged (docs/ARCHITECTURE.md, simulations/).

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
    /// 1: one node; 3: a cluster of three voters.
    #[arg(long, default_value_t = 1, value_parser = parse_nodes)]
    nodes: u64,
}

fn parse_nodes(text: &str) -> Result<u64, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err("one node (1) or a cluster of three (3)".into()),
    }
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
            nodes: args.nodes,
            canary: args.canary,
        });
        for violation in &outcome.violations {
            println!("  violation: {violation}");
        }
        if let Some(net) = &outcome.cluster {
            println!(
                "  seed {seed}: cluster: {} moves ({} delivered, {} lost, {} answers lost), {} elections, {} heartbeats, {} snapshots, {} node crashes, {} sync failures, {} partitions, {} writes of unknown outcome",
                net.moves,
                net.delivered,
                net.lost,
                net.answers_lost,
                net.elections,
                net.heartbeats,
                net.snapshots,
                net.node_crashes,
                net.sync_failures,
                net.partitions,
                outcome.unknown_outcomes
            );
        }
        println!(
            "  seed {seed}: {} orders ({} archived, with {} keys), {} reseller orders, {} mails sent ({} given up), {} notifies ({} forged or stale refused), {} crashes, {} snapshots ({} sled rebuilds), {} violations{}{}",
            outcome.orders,
            outcome.archived,
            outcome.archived_keys,
            outcome.reseller_orders,
            outcome.mails_sent,
            outcome.mails_given_up,
            outcome.notifies,
            outcome.notifies_refused,
            outcome.crashes,
            outcome.snapshots,
            outcome.sled_rebuilds,
            outcome.violations.len(),
            match outcome.first_violation_step {
                Some(step) => format!(" (first at step {step}; replay: panshi-sim --seed {seed} --steps {} --nodes {})", args.steps, args.nodes),
                None => String::new(),
            },
            if args.nodes > 1 {
                format!(", history {:016x}", outcome.digest)
            } else {
                String::new()
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
