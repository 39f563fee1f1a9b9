//! `kill -9` of the leader under load: nothing acknowledged is lost, no key is sold twice,
//! each Idempotency-Key is one order, and the killed node catches up when it returns.

use crate::common::keys;
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
