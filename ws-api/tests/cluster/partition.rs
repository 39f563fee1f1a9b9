//! A partition that isolates the leader (through the fault proxy): the isolated side stops
//! acknowledging, the majority elects and serves, and after healing the old leader follows
//! and catches up.

use std::time::{Duration, Instant};

use crate::common::keys;
use crate::harness::{one_order_each, try_order, Cluster};

const VOTERS: [u64; 3] = [1, 2, 3];
/// How long an isolated leader may take to answer a write (its gate closes after one
/// election timeout without a majority, 500 ms by default; the rest is a loaded machine).
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_isolating_the_leader_stops_it_acknowledging_until_it_heals() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[]);
    let old = cluster.wait_leader(&VOTERS).await;
    let majority: Vec<u64> = VOTERS.into_iter().filter(|&id| id != old).collect();
    cluster
        .node(old)
        .product("part", 100, &keys("part", 200))
        .await;
    let (code, before) = cluster.node(majority[0]).order("part", 1).await;
    assert_eq!(code, 201, "{before}");

    cluster.proxy.isolate(old);
    let cut = Instant::now();
    // Writes straight to the isolated leader, while the majority elects.
    let isolated = cluster.node(old);
    let mut minority = Vec::new();
    for n in 0..20 {
        let sent = cut.elapsed();
        let key = format!("minority-{n}");
        let written = try_order(isolated, "part", &key, REFUSAL_WITHIN).await;
        assert!(
            written.is_refusal(),
            "the isolated leader's answer to {key}, sent {sent:?} after the cut: {written:?}"
        );
        minority.push(key);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = cluster.wait_leader(&majority).await;
    assert_ne!(new, old);
    let mut after = Vec::new();
    for (n, &id) in majority.iter().cycle().take(6).enumerate() {
        let (code, order) = cluster
            .node(id)
            .order_keyed("part", 1, "m@example.com", &format!("majority-{n}"))
            .await;
        assert_eq!(code, 201, "the majority serves writes: {order}");
        let (code, text) = cluster.node(id).pay(&order).await;
        assert_eq!((code, text.as_str()), (200, "success"));
        after.push(order);
    }
    // A read on the isolated side cannot know what the majority did: refused, not stale.
    let (code, body) = cluster.node(old).lookup(&after[0]).await;
    assert_eq!(code, 503, "a read on the isolated node: {body}");
    assert!(!cluster.leads(old).await, "the isolated node does not lead");

    cluster.proxy.heal();
    let leader = cluster.wait_leader(&VOTERS).await;
    assert_ne!(leader, old, "the old leader's log is behind; it cannot win");
    cluster.wait_caught_up(leader).await;
    let status = cluster.status(old).await.unwrap();
    assert_eq!(status["role"], "follower", "{status}");
    for order in after.iter().chain([&before]) {
        let (code, view) = cluster.node(old).lookup(order).await;
        assert_eq!(code, 200, "the old leader caught up: {view}");
    }
    // Keys refused on the isolated side are one order each when retried anywhere.
    one_order_each(&cluster, "part", &minority, &VOTERS).await;
    cluster.stop_and_audit();
}
