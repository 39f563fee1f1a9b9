//! Reseller streams under bulk purchases, driven by panshi-load's `resellers` scenario
//! in-process against a real `panshi serve`: 40 resellers each read their stream while
//! purchases flow through them. panshi-load's end-of-run checks must all pass: every
//! purchase's event on its own stream exactly once and in seq order, no stream closed, no
//! key sold twice, stock conserved, audit clean. (The slow reader is off here: being cut
//! off takes over 4 MiB of events, which the kernel's send buffer holds first; the server's
//! cut-off has its own test in resellers.rs.)

use clap::Parser;
use simulations::load::{self, cli::Cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_purchase_reaches_its_resellers_stream_once_and_in_order() {
    let cli = Cli::parse_from([
        "panshi-load",
        "--spawn",
        env!("CARGO_BIN_EXE_panshi"),
        "resellers",
        "--streams",
        "40",
        "--rate",
        "100",
        "--duration",
        "2",
        "--slow-rate",
        "0",
    ]);
    cli.validate().unwrap();
    let passed = load::run(cli, "panshi-load resellers (test)".into())
        .await
        .expect("the run completes");
    assert!(passed, "a panshi-load check failed; see the report above");
}
