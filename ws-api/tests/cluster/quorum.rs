//! Without a majority nothing is acknowledged; an Idempotency-Key retried on another node
//! afterwards returns the first answer when the first attempt did commit.

use std::time::{Duration, Instant};

use simulations::netproxy::Fault;

use crate::common::keys;
use crate::harness::{one_order_each, try_order, Cluster, Written};

const VOTERS: [u64; 3] = [1, 2, 3];
/// A write's timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node without a majority may take to answer a write (a leader's gate closes
/// after one election timeout without a majority, 500 ms by default; the rest is a loaded
/// machine).
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

/// Writes keys on `node`, each refused with a 503 and `Retry-After` within
/// `REFUSAL_WITHIN`, never acknowledged; returns the keys.
async fn never_acknowledged(cluster: &Cluster, node: u64, prefix: &str) -> Vec<String> {
    let mut sent = Vec::new();
    for n in 0..15 {
        let key = format!("{prefix}-{n}");
        let written = try_order(cluster.node(node), "q", &key, REFUSAL_WITHIN).await;
        assert!(
            written.is_refusal(),
            "{key} on node {node} without a majority: {written:?}"
        );
        sent.push(key);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_majority_writes_get_503_and_are_never_acknowledged() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[]);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster
        .node(leader)
        .product("q", 100, &keys("q", 200))
        .await;
    let followers: Vec<u64> = VOTERS.into_iter().filter(|&id| id != leader).collect();

    // The leader left alone.
    cluster.kill9(followers[0]);
    cluster.kill9(followers[1]);
    let alone = never_acknowledged(&cluster, leader, "alone").await;
    cluster.relaunch(followers[0]);
    let pair = [leader, followers[0]];
    cluster.wait_leader(&pair).await;
    one_order_each(&cluster, "q", &alone, &[followers[0], leader]).await;

    // A follower left alone (the leader among the killed).
    let leader = cluster.wait_leader(&pair).await;
    let survivor = if leader == pair[0] { pair[1] } else { pair[0] };
    cluster.kill9(leader);
    let orphan = never_acknowledged(&cluster, survivor, "orphan").await;
    cluster.relaunch(leader);
    cluster.relaunch(followers[1]);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster.wait_caught_up(leader).await;
    let others: Vec<u64> = VOTERS.into_iter().filter(|&id| id != survivor).collect();
    one_order_each(&cluster, "q", &orphan, &others).await;
    cluster.stop_and_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_returns_its_first_answer_on_another_node() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[]);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster.node(leader).product("q", 100, &keys("q", 20)).await;
    let followers: Vec<u64> = VOTERS.into_iter().filter(|&id| id != leader).collect();
    let (relay, other) = (followers[0], followers[1]);

    // The follower passes the write on, slowly, and dies before the answer comes back.
    cluster
        .proxy
        .set(relay, leader, Fault::Delay(Duration::from_millis(1_500)));
    let relay_server = cluster.node(relay);
    let lost = tokio::spawn({
        let server_url = relay_server.url("/api/v1/orders");
        async move {
            let body = serde_json::json!({"sku": "q", "quantity": 1, "contact": "lost-answer@example.com", "channel": "epay"});
            reqwest::Client::new()
                .post(server_url)
                .header("Idempotency-Key", "lost-answer")
                .json(&body)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill9(relay);
    assert!(lost.await.unwrap().is_err(), "the first answer is lost");
    cluster.proxy.heal();

    // The write did commit: the leader shows its reservation.
    let started = Instant::now();
    while cluster.node(leader).stock("q").await != (19, 1, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the delayed write never committed: {:?}",
            cluster.node(leader).stock("q").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut retried = try_order(cluster.node(other), "q", "lost-answer", TIMEOUT).await;
    while matches!(&retried, Written::Answered(409, Some(code), true) if code == "request_in_progress")
    {
        // The first attempt is still under way on the leader: retry after a moment.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still in progress"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        retried = try_order(cluster.node(other), "q", "lost-answer", TIMEOUT).await;
    }
    assert!(
        matches!(retried, Written::Answered(201, None, _)),
        "the retry on another node: {retried:?}"
    );
    assert_eq!(
        cluster.node(other).stock("q").await,
        (19, 1, 0),
        "the retry returned the first order instead of making a second"
    );
    cluster.relaunch(relay);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster.wait_caught_up(leader).await;
    let (code, order) = cluster
        .node(relay)
        .order_keyed("q", 1, "lost-answer@example.com", "lost-answer")
        .await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(cluster.node(relay).stock("q").await, (19, 1, 0));
    cluster.stop_and_audit();
}
