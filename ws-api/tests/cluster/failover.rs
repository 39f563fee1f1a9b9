//! `kill -9` of the leader under load: nothing acknowledged is lost, no key is sold twice,
//! each Idempotency-Key is one order, and the killed node catches up when it returns.

use std::time::{Duration, Instant};

use crate::common::{keys, Frame, Live};
use crate::harness::Cluster;
use crate::load::Load;

const ALL: [u64; 4] = [1, 2, 3, 4];
const IMPORTED: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(&[1, 2, 3], &[4], &[]);
    let leader = cluster.wait_leader(&ALL).await;
    let keys = keys("kill", IMPORTED as usize);
    cluster.node(leader).product("kill", 100, &keys).await;
    let load = Load::start(cluster.targets(), "kill", 8);
    load.wait_paid(30).await;
    let mut leader = leader;
    for round in 0..2 {
        cluster.kill9(leader);
        let survivors: Vec<u64> = ALL.into_iter().filter(|&id| id != leader).collect();
        let paid = load.ledger().paid_count();
        let next = cluster.wait_leader(&survivors).await;
        assert_ne!(next, leader);
        load.wait_paid(paid + 30).await;
        cluster.relaunch(leader);
        let agreed = cluster.wait_leader(&ALL).await;
        cluster.wait_caught_up(agreed).await;
        load.wait_paid(paid + 60).await;
        eprintln!("round {round}: node {leader} killed, node {next} took over");
        leader = agreed;
    }
    load.finish_and_verify(&cluster, "kill", IMPORTED).await;
    cluster.stop_and_audit();
}

/// The killed leader's timers are the new leader's: orders it created expire on time, once,
/// and a buyer watching on a follower sees the expiry once before the feed closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_a_killed_leader_expire_on_the_new_one_once() {
    let ttl = [("PANSHI_ORDER_TTL_SECS", "3")];
    let mut cluster = Cluster::start_with(&[1, 2, 3], &[], &[], &ttl);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster
        .node(leader)
        .product("ttl", 100, &keys("ttl", 10))
        .await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let (code, order) = cluster.node(leader).order("ttl", 1).await;
        assert_eq!(code, 201, "{order}");
        orders.push(order);
    }
    let watcher = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let mut live = Live::connect(cluster.node(watcher), &orders[0]).await;
    assert_eq!(live.status().await, "awaiting_payment");
    cluster.kill9(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let next = cluster.wait_leader(&survivors).await;
    let started = Instant::now();
    while cluster.node(next).stock("ttl").await != (10, 0, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new leader never expired the killed leader's orders: {:?}",
            cluster.node(next).stock("ttl").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader's stock counts its own expiries from the moment it proposes them; a lookup
    // shows them once they are committed, a moment later.
    for order in &orders {
        loop {
            let (_, view) = cluster.node(watcher).lookup(order).await;
            if view["status"] == "expired" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the watcher's node never showed the expiry: {view}"
            );
            assert_eq!(view["status"], "awaiting_payment", "{view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(live.status().await, "expired");
    assert!(
        matches!(live.next().await, Frame::Closed(_)),
        "the feed closes after the terminal state, with no second expiry"
    );
    cluster.relaunch(leader);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster.wait_caught_up(leader).await;
    cluster.stop_and_audit();
}
