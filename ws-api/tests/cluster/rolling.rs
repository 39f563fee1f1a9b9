//! A rolling restart of all three voters under load: a buyer who retries 503s with its
//! Idempotency-Key never sees a purchase fail.

use crate::common::keys;
use crate::harness::Cluster;
use crate::load::Load;

const VOTERS: [u64; 3] = [1, 2, 3];
const IMPORTED: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_purchase() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[]);
    let leader = cluster.wait_leader(&VOTERS).await;
    let keys = keys("roll", IMPORTED as usize);
    cluster.node(leader).product("roll", 100, &keys).await;
    let load = Load::start(cluster.targets(), "roll", 6);
    load.wait_paid(20).await;
    for id in VOTERS {
        let paid = load.ledger().paid_count();
        cluster.stop(id);
        let others: Vec<u64> = VOTERS.into_iter().filter(|&other| other != id).collect();
        cluster.wait_leader(&others).await;
        load.wait_paid(paid + 10).await;
        cluster.relaunch(id);
        let leader = cluster.wait_leader(&VOTERS).await;
        cluster.wait_caught_up(leader).await;
    }
    load.finish_and_verify(&cluster, "roll", IMPORTED).await;
    cluster.stop_and_audit();
}
