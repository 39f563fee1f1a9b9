//! `panshi audit` on logs the engine would never have written: a coupon used past its limit,
//! a deleted key sold. Each is framed by hand after valid records (as a bug or a tampered
//! copy would leave it) and must be reported as a violation; the honest log is clean.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

mod common;

use common::{once_coupon, order, product, sku, with_coupon};
use engine::{CardId, Event};
use replication::Node;
use storage::entry::{self, EntryPayload, EntryRef, PayloadRef};

/// A shop with three keys, key 3 deleted, and a one-use coupon used once.
fn honest_log(dir: &Path) {
    let node = Node::start_single(dir).unwrap();
    let store = node.store().clone();
    let events = [
        product(),
        Event::CardsImported {
            sku: sku(),
            first_card_id: CardId(1),
            keys: vec!["K1".into(), "K2".into(), "K3".into()],
        },
        once_coupon(),
        with_coupon(1, 1),
        Event::CardsDeleted {
            sku: sku(),
            cards: vec![CardId(3)],
            at_ms: 5,
        },
    ];
    for event in &events {
        store.commit(event).unwrap().wait_blocking().unwrap();
    }
    drop(store);
    node.shutdown();
}

/// Appends `event` as the next entry, in the last batch's chain (so replay admits it), and
/// marks it committed: bypassing the engine's checks, as a bug or a tampered copy would.
fn forge(dir: &Path, event: &Event) {
    let (path, ends) = storage::log::tail_frames(&dir.join("log"))
        .unwrap()
        .unwrap();
    let bytes = fs::read(&path).unwrap();
    let (last, end) = *ends.last().unwrap();
    let start = ends.len().checked_sub(2).map_or(0, |i| ends[i].1);
    let record = entry::decode_entry(
        &bytes[start as usize + storage::log::FRAME_HEADER_BYTES..end as usize],
    )
    .unwrap();
    let EntryPayload::Events { origin, .. } = record.payload else {
        panic!("the honest log ends with a batch of events");
    };
    let mut origin = origin;
    origin.batch += 1;
    origin.base = last;
    let mut events = Vec::new();
    entry::pack_event(&mut events, &storage::rows::encode_event(event));
    let payload = entry::encode_entry(&EntryRef {
        term: record.term,
        leader: record.leader,
        index: last + 1,
        payload: PayloadRef::Events {
            origin,
            events: &events,
        },
    });
    let mut frame = Vec::new();
    storage::log::encode_frame(&mut frame, last + 1, &payload);
    // Right after the last frame, over the zeros the writer wrote ahead.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&frame, end).unwrap();
    file.sync_all().unwrap();
    fs::write(
        dir.join("log").join(storage::log::COMMITTED_FILE),
        storage::log::committed_hint(record.term, record.leader, last + 1),
    )
    .unwrap();
}

#[test]
fn the_honest_log_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    honest_log(dir.path());
    let report = storage::audit::audit(dir.path()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn audit_reports_a_coupon_used_past_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    honest_log(dir.path());
    forge(dir.path(), &with_coupon(2, 2));
    let report = storage::audit::audit(dir.path()).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("coupon ONCE") && v.contains("coupon_used_up")),
        "{:?}",
        report.violations
    );
}

#[test]
fn audit_reports_a_deleted_key_sold() {
    let dir = tempfile::tempdir().unwrap();
    honest_log(dir.path());
    forge(
        dir.path(),
        &Event::OrderCreated(std::sync::Arc::new(order(3, 3, 1_000))),
    );
    let report = storage::audit::audit(dir.path()).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("CardId(3)") && v.contains("Deleted")),
        "{:?}",
        report.violations
    );
}
