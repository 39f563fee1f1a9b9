//! Membership at run time through the operator endpoints: a new node joins as a learner,
//! is promoted to voter, and a dead voter is removed; the promoted node then votes.

use serde_json::{json, Value};

use crate::common::{answer, keys, ADMIN};
use crate::harness::Cluster;

const VOTERS: [u64; 3] = [1, 2, 3];
const SPARE: u64 = 4;

async fn operator(
    cluster: &Cluster,
    on: u64,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let server = cluster.node(on);
    let mut request = server
        .http
        .request(method, server.url(path))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.unwrap()).await
}

fn roles(status: &Value) -> Vec<(u64, String)> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node_id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_a_dead_voter_removed_at_run_time() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[SPARE]);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster
        .node(leader)
        .product("mem", 100, &keys("mem", 50))
        .await;
    let (code, early) = cluster.node(leader).order("mem", 1).await;
    assert_eq!(code, 201, "{early}");
    let followers: Vec<u64> = VOTERS.into_iter().filter(|&id| id != leader).collect();

    // Added as a learner through a follower (passed to the leader).
    cluster.relaunch(SPARE);
    let url = cluster.proxy.url(SPARE);
    let (code, body) = operator(
        &cluster,
        followers[0],
        reqwest::Method::POST,
        "/api/v1/admin/cluster/learners",
        Some(json!({"node_id": SPARE, "url": url})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let with_learner = [1, 2, 3, SPARE];
    let leader = cluster.wait_leader(&with_learner).await;
    cluster.wait_caught_up(leader).await;
    let status = cluster.status(SPARE).await.unwrap();
    assert_eq!(status["role"], "learner", "{status}");
    let (code, view) = cluster.node(SPARE).lookup(&early).await;
    assert_eq!(
        code, 200,
        "the learner replicated what came before it: {view}"
    );

    // A voter dies; the learner takes its place and the dead one is removed.
    let dead = followers[1];
    cluster.kill9(dead);
    let survivors: Vec<u64> = VOTERS.into_iter().filter(|&id| id != dead).collect();
    let mut voters: Vec<u64> = survivors.clone();
    voters.push(SPARE);
    let (code, body) = operator(
        &cluster,
        SPARE,
        reqwest::Method::PUT,
        "/api/v1/admin/cluster/voters",
        Some(json!({"voters": voters})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let path = format!("/api/v1/admin/cluster/members/{dead}");
    let (code, body) = operator(&cluster, survivors[0], reqwest::Method::DELETE, &path, None).await;
    assert_eq!(code, 200, "{body}");
    let leader = cluster.wait_leader(&voters).await;
    let status = cluster.status(leader).await.unwrap();
    let members: Vec<u64> = roles(&status).into_iter().map(|(id, _)| id).collect();
    let mut expected = voters.clone();
    expected.sort();
    assert_eq!(members, expected, "{status}");
    assert!(
        roles(&status).iter().all(|(_, role)| role != "learner"),
        "{status}"
    );

    // The promoted node votes: with the leader killed, it and the last original voter are
    // a majority of the new three.
    cluster.kill9(leader);
    let rest: Vec<u64> = voters.iter().copied().filter(|&id| id != leader).collect();
    let (code, order) = cluster
        .order_on_leader(&rest, "mem", "after-promotion")
        .await;
    assert_eq!(code, 201, "the new voters serve writes: {order}");
    cluster.relaunch(leader);
    let leader = cluster.wait_leader(&voters).await;
    cluster.wait_caught_up(leader).await;
    let (code, _) = cluster.node(SPARE).lookup(&order).await;
    assert_eq!(code, 200);
    cluster.stop_and_audit();
}
