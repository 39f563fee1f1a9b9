//! A snapshot asked for right after a restart (nothing new since the last one) completes; one
//! asked of a node that has applied nothing is refused at once.

mod common;

use engine::{Currency, Event, Product, Sku};
use replication::{Node, NodeConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A learner whose cluster never answers has applied nothing: openraft builds a snapshot of
/// nothing and does not count it, so waiting for one would last `SNAPSHOT_WAIT_SECS` (on the
/// simulator's clock, for ever: three-node seed 6066 hung there).
#[test]
fn a_snapshot_of_a_node_that_applied_nothing_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::runtime();
    let config = NodeConfig {
        node_id: 2,
        voters: BTreeMap::from([(1, "http://127.0.0.1:1".to_string())]),
        learners: BTreeMap::from([(2, "http://127.0.0.1:2".to_string())]),
        ..NodeConfig::single()
    };
    let node = Node::start(
        dir.path(),
        config,
        Arc::new(replication::network::NoTransport),
        Arc::new(storage::NoObserver),
    )
    .unwrap();
    let asked = std::thread::spawn(move || {
        let outcome = runtime.block_on(node.snapshot_now());
        node.shutdown();
        outcome
    });
    let started = Instant::now();
    while !asked.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a snapshot of nothing was waited for"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = asked.join().unwrap();
    assert!(
        matches!(outcome, Err(replication::Error::NothingApplied)),
        "{outcome:?}"
    );
}
