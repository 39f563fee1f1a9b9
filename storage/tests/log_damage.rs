//! The log under damage: a torn or corrupted tail is detected and cut, never applied;
//! damage before acknowledged records refuses to start; a failed sync is sticky.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use engine::{Currency, Event, Product, Sku};
use storage::{Error, Store};

fn product(n: u32) -> Event {
    Event::ProductCreated(Product {
        sku: Sku::parse(&format!("sku-{n}")).unwrap(),
        name: format!("product {n}"),
        price_cents: 100,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    })
}

fn fill(dir: &Path, count: u32) {
    let store = Store::open(dir).unwrap();
    for n in 0..count {
        store.commit(&product(n)).unwrap().wait_blocking().unwrap();
    }
    store.close().unwrap();
}

fn segment(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

#[test]
fn a_torn_tail_is_cut_and_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let path = segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    // Tear the last record: drop its final 3 bytes, as a crash mid-write would.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.recovery().last_lsn, 4);
    assert!(store.recovery().truncated_bytes > 0);
    assert_eq!(store.state().products().count(), 4);
    // The log goes on from the cut: the next record is lsn 5 again, and replays cleanly.
    store.commit(&product(99)).unwrap().wait_blocking().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.recovery().last_lsn, 5);
    assert_eq!(store.recovery().truncated_bytes, 0);
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    let mut file = OpenOptions::new()
        .append(true)
        .open(segment(dir.path()))
        .unwrap();
    file.write_all(&[0xAB; 40]).unwrap();
    drop(file);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.recovery().last_lsn, 3);
    assert_eq!(store.recovery().truncated_bytes, 40);
}

#[test]
fn a_flipped_bit_inside_acknowledged_records_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0x01; // inside the first record's payload
    fs::write(&path, &bytes).unwrap();
    match Store::open(dir.path()) {
        Err(Error::Corrupt(_)) => {}
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupted log opened"),
    }
    let report = storage::audit::audit(dir.path());
    assert!(report.is_err(), "audit must not pass a corrupted log");
}

#[test]
fn a_failed_sync_is_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit(&product(1)).unwrap().wait_blocking().unwrap();
    store.inject_sync_failure();
    let failed = store.commit(&product(2)).unwrap().wait_blocking();
    assert!(matches!(failed, Err(Error::LogFailed)), "{failed:?}");
    assert!(!store.is_healthy());
    assert!(matches!(store.commit(&product(3)), Err(Error::LogFailed)));
}

#[test]
fn the_engine_refuses_bad_events_before_they_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit(&product(1)).unwrap().wait_blocking().unwrap();
    assert!(matches!(
        store.commit(&product(1)),
        Err(Error::Violation(_))
    ));
    store.close().unwrap();
    drop(store);
    let report = storage::audit::audit(dir.path()).unwrap();
    assert_eq!(report.last_lsn, 1);
    assert!(report.violations.is_empty());
}
