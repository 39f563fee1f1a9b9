//! Fault drills on a real `panshi` process: a torn log tail, a full disk that heals, an
//! unreadable sled mirror, and a SIGTERM under keep-alive traffic. Each test is a drill that
//! once needed a person (issue 17) and must not any more.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The newest log segment of a data dir.
fn last_segment(data: &Path) -> PathBuf {
    let mut files: Vec<_> = fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files.pop().expect("a log segment")
}

/// The JSON log lines of a server at `level` (as `"WARN"`), parsed.
fn log_lines(text: &str, level: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == level)
        .collect()
}

/// Postmortem: cutting a torn tail was logged at info, so a server at `warn` removed bytes
/// from its data dir without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_with_a_warning_naming_the_bytes_and_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = dir.path().join("server.log");
    let mut server = Server::start_logged(&data, &[], &stderr);
    server.product("t1", 100, &keys("T", 1)).await;
    server.product("t2", 100, &[]).await;
    server.stop();
    // Tear the last record as a crash mid-write would: its final 5 bytes never landed.
    let segment = last_segment(&data);
    let len = fs::metadata(&segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let torn_bytes = fs::metadata(&segment).unwrap().len();
    server.restart();
    let warnings = log_lines(&server.log_text(), "WARN");
    let cut = warnings
        .iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("torn tail"))
        })
        .unwrap_or_else(|| panic!("no WARN about the cut among {warnings:?}"));
    let fields = &cut["fields"];
    let kept = fields["kept_bytes"].as_u64().unwrap();
    assert_eq!(
        fields["truncated_bytes"].as_u64().unwrap() + kept,
        torn_bytes,
        "{cut}"
    );
    assert!(fields["last_lsn_kept"].as_u64().unwrap() >= 2, "{cut}");
    assert_eq!(fs::metadata(&segment).unwrap().len(), kept);
    // The torn record (t2's creation) is gone; everything before it is there.
    let products: Value = server
        .http
        .get(server.url("/api/v1/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let skus: Vec<&str> = products
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["t1"]);
}
