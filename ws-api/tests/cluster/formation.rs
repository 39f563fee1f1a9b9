//! Three voters and a learner form the cluster by themselves, report it as the contract
//! fixes it, and every node serves the whole API: writes passed to the leader, reads that
//! show every acknowledged change at once, live order feeds and reseller streams.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{keys, Live, Server};
use crate::harness::{Cluster, SETTLE_MAX};

const ALL: [u64; 4] = [1, 2, 3, 4];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_and_a_learner_form_a_cluster_that_reports_itself() {
    let mut cluster = Cluster::start(&[1, 2, 3], &[4], &[]);
    let leader = cluster.wait_leader(&ALL).await;
    for id in ALL {
        wait_ready(cluster.node(id)).await;
        assert_eq!(
            cluster.leads(id).await,
            id == leader,
            "/leaderz on node {id}"
        );
    }
    let statuses: Vec<Value> = cluster
        .statuses(&ALL)
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect();
    for (status, id) in statuses.iter().zip(ALL) {
        let role = match id {
            4 => "learner",
            id if id == leader => "leader",
            _ => "follower",
        };
        assert_eq!(status["node_id"], id, "{status}");
        assert_eq!(status["role"], role, "{status}");
        assert_eq!(status["leader_id"], leader, "{status}");
        assert_eq!(status["term"], statuses[0]["term"], "one term: {status}");
        assert!(status["commit_index"].as_u64().unwrap() >= 1, "{status}");
        assert!(status["applied_index"].as_u64().is_some(), "{status}");
        let members = status["members"].as_array().unwrap();
        let ids: Vec<u64> = members
            .iter()
            .map(|m| m["node_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, ALL, "{status}");
        for member in members {
            let member_id = member["node_id"].as_u64().unwrap();
            assert_eq!(member["url"], cluster.proxy.url(member_id), "{member}");
            let member_role = match member_id {
                4 => "learner",
                id if id == leader => "leader",
                _ => "follower",
            };
            assert_eq!(member["role"], member_role, "{member}");
            assert!(member.get("matched_index").is_some(), "{member}");
        }
    }
    let on_leader = &statuses[(leader - 1) as usize];
    for member in on_leader["members"].as_array().unwrap() {
        assert!(
            member["matched_index"].as_u64().is_some(),
            "the leader knows each member's matched index: {member}"
        );
    }
    let unauthorized = reqwest::get(cluster.node(2).url("/api/v1/ops/cluster"))
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    // The whole cluster stopped and started again keeps its membership and its data.
    cluster.node(2).product("kept", 100, &keys("kept", 3)).await;
    let (code, order) = cluster.node(4).order("kept", 1).await;
    assert_eq!(code, 201, "{order}");
    for id in ALL {
        cluster.stop(id);
    }
    for id in ALL {
        cluster.relaunch(id);
    }
    let leader = cluster.wait_leader(&ALL).await;
    cluster.wait_caught_up(leader).await;
    for id in ALL {
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status["members"].as_array().unwrap().len(), 4, "{status}");
        let (code, view) = cluster.node(id).lookup(&order).await;
        assert_eq!(code, 200, "node {id} after a full restart: {view}");
    }
    cluster.stop_and_audit();
    let errors = cluster.errors_logged();
    assert!(
        errors.is_empty(),
        "a healthy cluster logged errors:\n{}",
        errors.join("\n")
    );
}

/// A voter whose first start comes after the others formed the cluster joins it without
/// standing against their leader. (openraft's `initialize` elects at once, and a late
/// voter's first vote, of the leader's term and a higher node id, outranked the leader's:
/// about 1.5 s without a leader at every staggered formation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_started_late_joins_without_deposing_the_leader() {
    let mut cluster = Cluster::start_some(&[1, 2, 3], &[1, 2]);
    let leader = cluster.wait_leader(&[1, 2]).await;
    let term = cluster.status(leader).await.unwrap()["term"].clone();
    cluster.relaunch(3);
    let started = Instant::now();
    let mut joined = false;
    // Watched until node 3 has followed the leader for 3 s.
    while started.elapsed() < Duration::from_secs(3) || !joined {
        assert!(started.elapsed() < SETTLE_MAX, "node 3 never joined");
        let status = cluster.status(leader).await;
        let status = status.as_ref().unwrap_or(&Value::Null);
        assert!(
            status["role"] == "leader" && status["term"] == term,
            "node {leader} led in term {term} until node 3 started; now: {status}\n{}",
            cluster.log_tail(3)
        );
        if !joined {
            let third = cluster.status(3).await.unwrap_or(Value::Null);
            joined = third["leader_id"] == leader && third["term"] == term;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop_and_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_and_the_learner_pass_writes_on_and_show_them_at_once() {
    let mut cluster = Cluster::start(&[1, 2, 3], &[4], &[]);
    let leader = cluster.wait_leader(&ALL).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (follower, learner) = (cluster.node(followers[0]), cluster.node(4));
    follower.product("fwd", 100, &[]).await;
    let (code, body) = learner.import("fwd", keys("fwd", 10).join("\n")).await;
    assert_eq!((code, body["imported"].as_u64()), (200, Some(10)), "{body}");
    for id in ALL {
        assert_eq!(cluster.node(id).stock("fwd").await, (10, 0, 0), "node {id}");
    }
    for (n, buyer) in [followers[0], 4, followers[1], leader]
        .into_iter()
        .enumerate()
    {
        let (code, order) = cluster
            .node(buyer)
            .order_keyed("fwd", 1, "b@example.com", &format!("fwd-{n}"))
            .await;
        assert_eq!(code, 201, "create on node {buyer}: {order}");
        for id in ALL {
            let (code, view) = cluster.node(id).lookup(&order).await;
            assert_eq!(
                code, 200,
                "node {id} misses the order created on {buyer}: {view}"
            );
        }
        let payer = [4, followers[1], leader, followers[0]][n];
        let (code, text) = cluster.node(payer).pay(&order).await;
        assert_eq!(
            (code, text.as_str()),
            (200, "success"),
            "notify on node {payer}"
        );
        for id in ALL {
            let (_, view) = cluster.node(id).lookup(&order).await;
            assert!(
                matches!(view["status"].as_str(), Some("paid" | "delivered")),
                "node {id} does not show the payment acknowledged by {payer}: {view}"
            );
        }
    }
    cluster.stop_and_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_and_reseller_streams_work_on_followers_and_the_learner() {
    let mut cluster = Cluster::start(&[1, 2, 3], &[4], &[]);
    let leader = cluster.wait_leader(&ALL).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    cluster
        .node(leader)
        .product("live", 100, &keys("live", 20))
        .await;

    // A buyer watches on a follower and on the learner; the payment goes to the other
    // follower.
    let (code, order) = cluster.node(followers[0]).order("live", 1).await;
    assert_eq!(code, 201, "{order}");
    let mut watchers = Vec::new();
    for id in [followers[0], 4] {
        let mut live = Live::connect(cluster.node(id), &order).await;
        assert_eq!(
            live.status().await,
            "awaiting_payment",
            "first frame on {id}"
        );
        watchers.push(live);
    }
    let (code, _) = cluster.node(followers[1]).pay(&order).await;
    assert_eq!(code, 200);
    for mut live in watchers {
        let mut status = live.status().await;
        if status == "paid" {
            status = live.status().await;
        }
        assert_eq!(status, "delivered");
    }

    // A reseller reads its stream on a follower, then resumes on the learner.
    let (code, body) = cluster
        .node(4)
        .admin_post("/api/v1/admin/resellers", json!({"name": "Streamer"}))
        .await;
    assert_eq!(code, 201, "{body}");
    let (id, key) = (
        body["reseller_id"].as_str().unwrap().to_owned(),
        body["api_key"].as_str().unwrap().to_owned(),
    );
    let path = format!("/api/v1/admin/resellers/{id}/balance");
    let (code, _) = cluster
        .node(followers[1])
        .admin_post(&path, json!({"amount_cents": 100_000, "note": "test"}))
        .await;
    assert_eq!(code, 200);
    let buyers = [leader, followers[0], 4, followers[1]];
    for n in 0..2 {
        reseller_buy(cluster.node(buyers[n % 4]), &key, n).await;
    }
    let mut stream = Stream::open(cluster.node(followers[0]), &key, 0).await;
    for n in 2..5 {
        reseller_buy(cluster.node(buyers[n % 4]), &key, n).await;
    }
    assert_eq!(stream.seqs(5).await, vec![1, 2, 3, 4, 5]);
    assert!(stream.quiet().await, "nothing after seq 5");
    drop(stream);
    reseller_buy(cluster.node(followers[1]), &key, 5).await;
    let mut stream = Stream::open(cluster.node(4), &key, 5).await;
    reseller_buy(cluster.node(leader), &key, 6).await;
    assert_eq!(
        stream.seqs(2).await,
        vec![6, 7],
        "no gap, no repeat on another node"
    );
    assert!(stream.quiet().await, "nothing after seq 7");
    cluster.stop_and_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_count_the_buyer_not_the_node_that_passed_the_order_on() {
    let limits = [
        ("PANSHI_LIMITS__CREATE__PER_SECOND", "1"),
        ("PANSHI_LIMITS__CREATE__BURST", "2"),
    ];
    let mut cluster = Cluster::start_with(&[1, 2, 3], &[], &[], &limits);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster
        .node(leader)
        .product("lim", 100, &keys("lim", 10))
        .await;
    let url = cluster.node(follower).url("/api/v1/orders");
    let body = json!({"sku": "lim", "quantity": 1, "contact": "c@example.com", "channel": "epay"});
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let (first, second) = (from(2), from(3));
    let mut codes = Vec::new();
    for client in [&first, &first, &first, &second] {
        codes.push(
            client
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        codes,
        [201, 201, 429, 201],
        "the first buyer's burst of 2 is spent; the second buyer, through the same follower, has its own"
    );
    cluster.stop_and_audit();
}

async fn wait_ready(server: &Server) {
    let started = Instant::now();
    loop {
        let ready = server.http.get(server.url("/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < SETTLE_MAX,
            "{} never ready",
            server.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reseller_buy(server: &Server, key: &str, n: usize) {
    let answer = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("po-{n}"))
        .json(&json!({"sku": "live", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let (code, body) = crate::common::answer(answer).await;
    assert_eq!(
        code, 201,
        "reseller purchase {n} on {}: {body}",
        server.base
    );
}

/// A reseller's stream.
struct Stream(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Stream {
    async fn open(server: &Server, key: &str, cursor: u64) -> Stream {
        let url = server.ws_url(&format!("/api/v1/reseller/stream?cursor={cursor}"));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {key}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Stream(stream)
    }

    /// The seqs of the next `count` events.
    async fn seqs(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < count {
            let message = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(&text).unwrap();
                seqs.push(event["seq"].as_u64().unwrap());
            }
        }
        seqs
    }

    /// Whether nothing more arrives for a while.
    async fn quiet(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_millis(500), self.0.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Text(_)))) => return false,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return false,
            }
        }
    }
}
