//! A snapshot asked for right after a restart (nothing new since the last one) completes.

mod common;

use engine::{Currency, Event, Product, Sku};
use replication::Node;

#[test]
fn a_snapshot_after_a_restart_with_nothing_new_completes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::runtime();
    let node = Node::start_single(dir.path()).unwrap();
    let product = Product {
        sku: Sku::parse("snap").unwrap(),
        name: "Snap".into(),
        price_cents: 100,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    node.store()
        .commit(&Event::ProductCreated(product))
        .unwrap()
        .wait_blocking()
        .unwrap();
    runtime.block_on(node.snapshot_now()).unwrap();
    node.shutdown();
    let node = Node::start_single(dir.path()).unwrap();
    let asked = std::thread::spawn(move || {
        runtime.block_on(node.snapshot_now()).unwrap();
        node.shutdown();
    });
    let started = std::time::Instant::now();
    while !asked.is_finished() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the snapshot never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    asked.join().unwrap();
}
