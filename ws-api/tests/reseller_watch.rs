//! `panshi reseller watch` as a real process against a real server: it prints each event
//! once as a JSON line, keeps its cursor file, and a watcher killed and restarted resumes
//! with no gap and no repeat.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// How long the test waits for a line or a cursor before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// A running watcher and its stdout lines.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(server: &Server, key: &str, cursor_file: &Path) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_panshi"))
            .args(["reseller", "watch", "--base", &server.base, "--cursor-file"])
            .arg(cursor_file)
            .env("PANSHI_RESELLER_KEY", key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the watcher starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next `count` events it prints.
    fn events(&self, count: usize) -> Vec<Value> {
        (0..count)
            .map(|_| {
                let line = self.lines.recv_timeout(WAIT_MAX).expect("a line");
                serde_json::from_str(&line).expect("each line is JSON")
            })
            .collect()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

async fn buy(server: &Server, key: &str) {
    let r = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(key)
        .json(&json!({"sku": "watched", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let (code, body) = answer(r).await;
    assert_eq!(code, 201, "{body}");
}

fn wait_cursor(path: &Path, seq: u64) {
    let start = Instant::now();
    while std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
        != Some(seq.to_string())
    {
        assert!(
            start.elapsed() < WAIT_MAX,
            "the cursor file never reached {seq}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_watcher_resumes_with_no_gap_and_no_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.product("watched", 100, &keys("watched", 20)).await;
    let (code, body) = server
        .admin_post("/api/v1/admin/resellers", json!({"name": "Watcher"}))
        .await;
    assert_eq!(code, 201, "{body}");
    let (id, key) = (
        body["reseller_id"].as_str().unwrap(),
        body["api_key"].as_str().unwrap(),
    );
    let path = format!("/api/v1/admin/resellers/{id}/balance");
    let (code, _) = server
        .admin_post(&path, json!({"amount_cents": 10_000, "note": "test"}))
        .await;
    assert_eq!(code, 200);
    let cursor_file = dir.path().join("watch.cursor");
    for _ in 0..3 {
        buy(&server, key).await;
    }
    // First run: the replay of 1..=3, then live events 4 and 5.
    let watcher = Watcher::start(&server, key, &cursor_file);
    let mut first = watcher.events(3);
    buy(&server, key).await;
    buy(&server, key).await;
    first.extend(watcher.events(2));
    wait_cursor(&cursor_file, 5);
    watcher.kill9();
    // Bought while no watcher runs: the restarted one must replay exactly these first.
    buy(&server, key).await;
    buy(&server, key).await;
    let watcher = Watcher::start(&server, key, &cursor_file);
    let mut second = watcher.events(2);
    buy(&server, key).await;
    second.extend(watcher.events(1));
    wait_cursor(&cursor_file, 8);
    assert!(
        watcher
            .lines
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "nothing more was printed"
    );
    watcher.kill9();
    assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        seqs(&second),
        vec![6, 7, 8],
        "no gap, no repeat across runs"
    );
    assert!(first
        .iter()
        .chain(&second)
        .all(|e| e["status"] == "delivered"));
    server.stop();
}

#[test]
fn a_refused_key_ends_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let status = Command::new(env!("CARGO_BIN_EXE_panshi"))
        .args([
            "reseller",
            "watch",
            "--base",
            &server.base,
            "--key",
            "psk_nope",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    server.stop();
}
