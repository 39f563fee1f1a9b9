//! A node's log under damage: a torn or corrupted tail is detected and cut, never applied;
//! damage before acknowledged records refuses to start; a failed sync is sticky.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use engine::{Currency, Event, Product, Sku};
use replication::Node;
use storage::Error;

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
    let node = Node::start_single(dir).unwrap();
    for n in 0..count {
        node.store()
            .commit(&product(n))
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    node.shutdown();
}

fn products(node: &Node) -> usize {
    node.store().state().products().count()
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
    // Tear the last record: the file ends 3 bytes before it does, as a crash mid-write
    // into a file that grew with its frames would leave it.
    let (path, ends) = storage::log::tail_frames(&dir.path().join("log"))
        .unwrap()
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(ends.last().unwrap().1 - 3)
        .unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    assert!(node.log_recovery().truncated_bytes > 0);
    assert_eq!(products(&node), 4);
    // The log goes on from the cut, and replays cleanly.
    node.store()
        .commit(&product(99))
        .unwrap()
        .wait_blocking()
        .unwrap();
    node.shutdown();
    let node = Node::start_single(dir.path()).unwrap();
    assert_eq!(node.log_recovery().truncated_bytes, 0);
    assert_eq!(products(&node), 5);
    node.shutdown();
    let report = storage::audit::audit(dir.path()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    // Right after the last record, over the zeros the writer wrote ahead.
    let (path, ends) = storage::log::tail_frames(&dir.path().join("log"))
        .unwrap()
        .unwrap();
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[0xAB; 40], ends.last().unwrap().1)
        .unwrap();
    drop(file);
    let node = Node::start_single(dir.path()).unwrap();
    assert_eq!(node.log_recovery().truncated_bytes, 40);
    assert_eq!(products(&node), 3);
    node.shutdown();
}

#[test]
fn a_flipped_bit_inside_acknowledged_records_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0x01; // inside the first record's payload
    fs::write(&path, &bytes).unwrap();
    match Node::start_single(dir.path()) {
        Err(replication::Error::Storage(Error::Corrupt(_))) => {}
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupted log opened"),
    }
    let report = storage::audit::audit(dir.path());
    assert!(report.is_err(), "audit must not pass a corrupted log");
}

#[test]
fn a_failed_sync_is_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    let store = node.store().clone();
    store.commit(&product(1)).unwrap().wait_blocking().unwrap();
    node.inject_sync_failure();
    let failed = store.commit(&product(2)).unwrap().wait_blocking();
    assert!(failed.is_err(), "{failed:?}");
    // Nothing is acknowledged after a failed sync, and the node says it is unhealthy.
    let started = std::time::Instant::now();
    while store.is_healthy() && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!store.is_healthy());
    assert!(store.commit(&product(3)).is_err());
    node.shutdown();
}

#[test]
fn the_engine_refuses_bad_events_before_they_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    node.store()
        .commit(&product(1))
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(matches!(
        node.store().commit(&product(1)),
        Err(Error::Violation(_))
    ));
    node.shutdown();
    drop(node);
    let report = storage::audit::audit(dir.path()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.notes.len(), 0, "{:?}", report.notes);
    let folded = storage::replay::from_snapshot(dir.path()).unwrap();
    assert_eq!(folded.last_index, 0, "no snapshot yet");
}

/// A log whose first entry lies beyond its purge mark has lost entries in between: it
/// refuses to start rather than serve a history with a hole.
#[test]
fn a_log_starting_after_its_purge_mark_refuses_to_start() {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use replication::types::{encode_entry, Entry};
    use storage::log::{self, Op};

    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (recovery, index) = log::recover(&log_dir, true, |_, _| Ok(())).unwrap();
    let writer = log::Log::start(&log_dir, &recovery, index).unwrap();
    let records = (113..=115)
        .map(|index| {
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
                payload: EntryPayload::Blank,
            };
            (index, encode_entry(&entry))
        })
        .collect();
    let (sender, receiver) = std::sync::mpsc::channel();
    writer
        .submit_waiting(Op::Append {
            records,
            done: Box::new(move |result| sender.send(result).unwrap()),
        })
        .unwrap();
    receiver.recv().unwrap().unwrap();
    writer.close();
    let purged = LogId::new(CommittedLeaderId::new(2, 1), 109);
    fs::write(log_dir.join("purged"), serde_json::to_vec(&purged).unwrap()).unwrap();
    match replication::log_store::LogStore::open(&log_dir) {
        Err(Error::Corrupt(what)) => assert!(what.contains("purged only through 109"), "{what}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a log with a hole after its purge mark started"),
    }
}
