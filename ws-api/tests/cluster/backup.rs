//! An online backup taken during load, restored into a new data dir and started as a
//! single node: audit clean, and its orders are the backup's, every order acknowledged
//! before the backup started among them.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{keys, Server, ADMIN};
use crate::harness::{Cluster, SEALING_KEY};
use crate::load::Load;

const VOTERS: [u64; 3] = [1, 2, 3];
const IMPORTED: u64 = 3_000;

/// `backup: <N> orders, <M> cards, through <position>` -> (N, M).
fn counts(line: &str, prefix: &str) -> (u64, u64) {
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("`{line}` does not start with `{prefix}`"));
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

fn last_line(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_load_restores_into_a_single_node_with_the_same_orders() {
    let mut cluster = Cluster::start(&VOTERS, &[], &[]);
    let leader = cluster.wait_leader(&VOTERS).await;
    cluster
        .node(leader)
        .product("bak", 100, &keys("bak", IMPORTED as usize))
        .await;
    let load = Load::start(cluster.targets(), "bak", 6);
    load.wait_paid(30).await;
    let follower = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    let before = load.ledger();
    let file = cluster.dir.path().join("shop.backup");
    let binary = env!("CARGO_BIN_EXE_panshi");
    let base = cluster.node(follower).base.clone();
    let output = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            Command::new(binary)
                .args(["backup", "--url", &base, "--to"])
                .arg(&file)
                .env("PANSHI_ADMIN_TOKEN", ADMIN)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (orders, cards) = counts(&last_line(&output), "backup: ");
    let paid = load.ledger().paid_count();
    load.wait_paid(paid + 10).await;
    let ledger = load.finish().await;
    assert!(ledger.failed.is_empty(), "{:?}", ledger.failed);
    assert!(
        orders >= before.orders.len() as u64,
        "the backup holds {orders} orders, {} were acknowledged before it started",
        before.orders.len()
    );
    assert_eq!(cards, IMPORTED, "every imported key is in the backup");

    let restored = cluster.dir.path().join("restored");
    let output = Command::new(binary)
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--data")
        .arg(&restored)
        .output()
        .unwrap();
    last_line(&output);
    let output = Command::new(binary)
        .args(["audit", "--data"])
        .arg(&restored)
        .output()
        .unwrap();
    assert_eq!(
        counts(&last_line(&output), "audit: "),
        (orders, cards),
        "the restored data dir holds what the backup said"
    );

    let log = cluster.dir.path().join("restored.log");
    let env = [("PANSHI_RESELLERS__SEALING_KEY", SEALING_KEY)];
    let mut single = Server::at(&restored, "127.0.0.1:0", &env, &log);
    single.relaunch();
    for purchase in before.orders.values() {
        let started = Instant::now();
        loop {
            let (code, view) = single.lookup(&purchase.order).await;
            assert_eq!(code, 200, "acknowledged before the backup, missing: {view}");
            if !purchase.paid || view["status"] == "delivered" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "paid before the backup, not delivered after the restore: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (available, reserved, sold) = single.stock("bak").await;
    assert_eq!(available + reserved + sold, IMPORTED);
    single.stop();
    let (clean, report) = single.audit();
    assert!(clean, "{report}");
    cluster.stop_and_audit();
}
