//! A flash-sale crowd through the waiting room, driven by panshi-load's flash scenario
//! in-process against a real `panshi serve`: 400 buyers for 25 keys, every one queued with
//! a ticket it watches over a WebSocket. panshi-load's end-of-run checks must all pass:
//! exactly 25 keys won and delivered, stock conserved, no key sold twice, audit clean.

use clap::Parser;
use simulations::load::{self, cli::Cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_through_the_flash_sale_room_buys_exactly_the_stock() {
    let cli = Cli::parse_from([
        "panshi-load",
        "--spawn",
        env!("CARGO_BIN_EXE_panshi"),
        "flash",
        "--keys",
        "25",
        "--buyers",
        "400",
        "--waiting-room",
        "flash",
    ]);
    cli.validate().unwrap();
    let passed = load::run(cli, "panshi-load flash (test)".into())
        .await
        .expect("the run completes");
    assert!(passed, "a panshi-load check failed; see the report above");
}
