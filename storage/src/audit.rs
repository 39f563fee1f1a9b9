//! `audit`: checks a data dir that no server is using. It replays the log through the
//! engine's `ShopState` (every event must be one the engine accepts), re-derives every
//! invariant, and checks that sled agrees with the log.
//!
//! Invariant: the audit never writes to the data dir it checks: the log is read without
//! repair and sled through a private copy. An unreadable sled is a note (it is derived, and
//! rebuilt at the next start); the log is checked all the same.

use std::path::Path;

use engine::state::ShopState;

use crate::entry as storage_entry;
use crate::replay;
use crate::rows::TouchedSet;
use crate::rows::{self, CardRow, ProductRow, TreeName};
use crate::sled_dir::{self, SledCopy};
use crate::Error;

#[derive(Debug, Default)]
pub struct AuditReport {
    pub orders_count: u64,
    pub cards_count: u64,
    pub last_lsn: u64,
    pub violations: Vec<String>,
    /// Facts worth knowing that are not violations (a torn tail, sled behind the log).
    pub notes: Vec<String>,
}

pub fn audit(data_dir: &Path) -> Result<AuditReport, Error> {
    if !data_dir.is_dir() {
        return Err(Error::NoDataDir(data_dir.to_owned()));
    }
    if !crate::log::log_dir(data_dir).is_dir() {
        return Err(Error::NotADataDir(data_dir.to_owned()));
    }
    let mut report = AuditReport::default();
    // Never sled itself: opening it writes to its directory. A running server's is refused.
    let copy = match SledCopy::of(data_dir) {
        Ok(copy) => copy,
        Err(Error::InUse(dir)) => return Err(Error::InUse(dir)),
        Err(error) => {
            report.notes.push(format!(
                "sled could not be copied for reading ({error}); only the log was checked"
            ));
            None
        }
    };
    let sled = match copy.as_ref().map(SledCopy::open).transpose() {
        Ok(sled) => sled,
        Err(error) => {
            report.notes.push(format!(
                "sled cannot be read ({error}); the next start sets it aside and rebuilds it \
                 from the log; only the log was checked"
            ));
            None
        }
    };
    let mirrored = sled.as_ref().map_or(0, |(_, mirrored)| *mirrored);
    let replayed = replay_log(data_dir, mirrored, &mut report)?;
    report
        .violations
        .extend(replayed.state.check().into_iter().map(|v| v.0));
    outbox_note(&replayed.state, &mut report);
    let clear_keys = replayed.state.clear_cards().count();
    if clear_keys > 0 {
        report.notes.push(format!(
            "{clear_keys} card keys are stored in the clear by an older version; the next \
             start seals them (the log's older records keep them until purged)"
        ));
    }
    note_open_permissions(data_dir, &mut report);
    if let Some((db, mirrored)) = &sled {
        compare_lsn(*mirrored, replayed.last_index, &mut report);
        if !sled_dir::rows_readable(sled_dir::rows_format(db)?) && *mirrored > 0 {
            report.notes.push(
                "sled holds rows in an older format; the next start rebuilds it \
                 (its rows are not compared)"
                    .into(),
            );
        } else if *mirrored < replayed.snapshot_index {
            report.notes.push(
                "sled is behind the snapshot: not compared (the next start rewrites it)".into(),
            );
        } else {
            let (state, unmirrored) = (&replayed.state, &replayed.unmirrored);
            compare_sled(db, state, unmirrored, &mut report)?;
            crate::resellers::compare(db, state, unmirrored, &mut report.violations)?;
            crate::listings::compare(db, state, unmirrored, &mut report.violations)?;
        }
    }
    report.orders_count = replayed.state.orders_count();
    report.cards_count = replayed.state.cards_count();
    report.last_lsn = replayed.last_index;
    Ok(report)
}

/// The state a data dir's snapshot and log describe, with what sled may not hold yet.
struct Replayed {
    state: ShopState,
    unmirrored: TouchedSet,
    snapshot_index: u64,
    last_index: u64,
}

/// Folds the newest snapshot and the log after it, without repairing anything; what the
/// engine refuses in an admitted batch is a violation, a skipped batch a note.
fn replay_log(data_dir: &Path, mirrored: u64, report: &mut AuditReport) -> Result<Replayed, Error> {
    let folded = replay::from_snapshot(data_dir)?;
    // Every block of every cold table, before the state reads archived orders from them.
    if let Err(error) = folded.archive.verify() {
        report
            .violations
            .push(format!("the archive of settled orders is damaged: {error}"));
    }
    let snapshot_index = folded.last_index;
    let mut state = folded.state;
    let mut chains = folded.chains;
    let mut skipped = 0u64;
    let mut unmirrored = TouchedSet::default();
    let mut first_seen = None;
    let recovery = replay::scan_log(data_dir, snapshot_index, |lsn, entry| {
        first_seen.get_or_insert(lsn.0);
        let entry = match entry {
            Ok(entry) if entry.index == lsn.0 => entry,
            Ok(entry) => {
                report
                    .violations
                    .push(format!("lsn {}: holds entry {}", lsn.0, entry.index));
                return Ok(());
            }
            Err(e) => {
                report.violations.push(format!("lsn {}: {e}", lsn.0));
                return Ok(());
            }
        };
        if let storage_entry::EntryPayload::Events { origin, .. } = &entry.payload {
            if !chains.admits(origin) {
                skipped += 1;
                return Ok(());
            }
            chains.admitted(*origin, entry.index);
        }
        match replay::entry_events(&entry) {
            Ok(events) => {
                for event in events {
                    match state.apply(&event) {
                        Ok(touched) if lsn.0 > mirrored => unmirrored.add(touched),
                        Ok(_) => {}
                        Err(v) => report.violations.push(format!("lsn {}: {v}", lsn.0)),
                    }
                }
            }
            Err(e) => report.violations.push(format!("lsn {}: {e}", lsn.0)),
        }
        Ok(())
    })?;
    if first_seen.is_some_and(|first| first > snapshot_index + 1) {
        report.violations.push(format!(
            "the log starts at {} but the snapshot ends at {snapshot_index}",
            first_seen.unwrap_or(0)
        ));
    }
    let last_index = recovery.last_lsn().unwrap_or(0).max(snapshot_index);
    if skipped > 0 {
        report.notes.push(format!(
            "{skipped} batches skipped: proposed by a leader whose premises were overtaken \
             (never acknowledged)"
        ));
    }
    if recovery.truncated_bytes > 0 {
        report.notes.push(format!(
            "torn log tail of {} bytes (never acknowledged; cut at the next start)",
            recovery.truncated_bytes
        ));
    }
    Ok(Replayed {
        state,
        unmirrored,
        snapshot_index,
        last_index,
    })
}

fn outbox_note(state: &ShopState, report: &mut AuditReport) {
    let outbox = state.outbox();
    if outbox.waiting_count() > 0 || outbox.given_up_count() > 0 {
        report.notes.push(format!(
            "mail outbox: {} sent, {} waiting (sent at the next start with [smtp]), {} given up",
            outbox.sent_count,
            outbox.waiting_count(),
            outbox.given_up_count()
        ));
    }
}

fn compare_lsn(mirrored: u64, last_index: u64, report: &mut AuditReport) {
    if mirrored > last_index {
        report.violations.push(format!(
            "sled applied lsn {mirrored} beyond the log's last {last_index}"
        ));
    } else if mirrored < last_index {
        report.notes.push(format!(
            "sled is {} entries behind the log (an unclean stop, or entries not yet known \
             to be committed; the next start catches up)",
            last_index - mirrored
        ));
    }
}

/// Notes a data dir that others than its owner may read (an older version made it 0755;
/// the next start tightens it to 0700, its files to 0600).
fn note_open_permissions(data_dir: &Path, report: &mut AuditReport) {
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::metadata(data_dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
    if open {
        report.notes.push(format!(
            "{} is readable by others than its owner; the next start makes it 0700",
            data_dir.display()
        ));
    }
}

fn compare_sled(
    db: &sled::Db,
    state: &engine::state::ShopState,
    unmirrored: &TouchedSet,
    report: &mut AuditReport,
) -> Result<(), Error> {
    let products = db.open_tree(TreeName::Products.as_string())?;
    for product in state.products() {
        let sku = &product.product.sku;
        if unmirrored.skus.contains(sku) {
            continue;
        }
        let row: Option<ProductRow> = products
            .get(sku.as_str())?
            .map(|b| rows::decode(&b))
            .transpose()?;
        let want = ProductRow {
            product: product.product.clone(),
            stock: product.stock,
        };
        if row.as_ref() != Some(&want) {
            report
                .violations
                .push(format!("sled disagrees with the log on product {sku}"));
        }
    }
    // sled mirrors memory: a card or order in memory has its row; an archived one may have
    // the row it had before the archive, or none since a rebuild, and any row agrees.
    let cards = db.open_tree(TreeName::Cards.as_string())?;
    let mut failure = None;
    state.for_each_card(1..state.cards_count() + 1, |card, slot| {
        if unmirrored.cards.contains(&card) || failure.is_some() {
            return;
        }
        let row = cards.get(rows::card_key(card)).map_err(Error::from);
        let row = row.and_then(|row| row.map(|b| rows::decode::<CardRow>(&b)).transpose());
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                failure = Some(error);
                return;
            }
        };
        let agrees = match row {
            Some(row) => row == rows::card_record_of(state, slot),
            None => !state.holds_card(card),
        };
        if !agrees {
            report
                .violations
                .push(format!("sled disagrees with the log on card {}", card.0));
        }
    });
    if let Some(error) = failure {
        return Err(error);
    }
    let audit_rows = db.open_tree(TreeName::Audit.as_string())?.len() as u64;
    let unmirrored_audits = unmirrored
        .audits
        .iter()
        .filter(|n| **n > audit_rows)
        .count();
    if audit_rows + unmirrored_audits as u64 != state.audit_count() {
        report.violations.push(format!(
            "sled holds {audit_rows} audit entries, the log {}",
            state.audit_count()
        ));
    }
    let mut sled_orders = 0u64;
    for name in db.tree_names() {
        if name.starts_with(b"orders/") {
            sled_orders += db.open_tree(name)?.len() as u64;
        }
    }
    let mut found = 0u64;
    rows::try_for_each_order(state, |record| {
        let id = &record.created.order_id;
        let row = rows::read_order(db, id)?;
        found += u64::from(row.is_some());
        let agrees = match &row {
            Some(row) => row == record,
            None => !state.holds_order(id),
        };
        if !agrees && !unmirrored.orders.contains(id) {
            report
                .violations
                .push(format!("sled disagrees with the log on order {id}"));
        }
        Ok(())
    })?;
    if sled_orders != found {
        report.violations.push(format!(
            "sled holds {sled_orders} orders, {found} of them known to the log"
        ));
    }
    Ok(())
}

/// What comparing several nodes' data dirs found.
#[derive(Debug, Default)]
pub struct CompareReport {
    /// Every data dir that holds the state at this index holds the same state.
    pub agreed_through: u64,
    /// Log entries compared pairwise.
    pub entries_compared: u64,
    pub violations: Vec<String>,
}

/// One data dir's history as far as the comparison needs it.
struct History {
    dir: std::path::PathBuf,
    snapshot_index: u64,
    /// Index -> (term, checksum of the entry).
    entries: std::collections::BTreeMap<u64, (u64, u32)>,
    committed: u64,
}

fn history(dir: &Path) -> Result<History, Error> {
    let snapshot_index = replay::from_snapshot(dir)?.last_index;
    let mut entries = std::collections::BTreeMap::new();
    let log_dir = crate::log::log_dir(dir);
    crate::log::recover(&log_dir, false, |lsn, payload| {
        let term = replay::decode_any(lsn.0, payload).map_or(0, |e| e.term);
        entries.insert(lsn.0, (term, crc32fast::hash(payload)));
        Ok(())
    })?;
    let committed = crate::log::read_committed_hint(&log_dir)?
        .map_or(snapshot_index, |(_, _, index)| index.max(snapshot_index));
    Ok(History {
        dir: dir.to_owned(),
        snapshot_index,
        entries,
        committed,
    })
}

/// Checks that the data dirs of several nodes (stopped) hold one committed history: every
/// log entry that two of them hold at or below both their commits is the same entry, and
/// the state each can fold at the lowest commit is the same.
pub fn compare(dirs: &[std::path::PathBuf]) -> Result<CompareReport, Error> {
    let histories = dirs
        .iter()
        .map(|d| history(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = CompareReport::default();
    for (i, a) in histories.iter().enumerate() {
        for b in &histories[i + 1..] {
            let through = a.committed.min(b.committed);
            for (index, entry) in a.entries.range(..=through) {
                let Some(other) = b.entries.get(index) else {
                    continue;
                };
                report.entries_compared += 1;
                if entry != other {
                    report.violations.push(format!(
                        "{} and {} hold different committed entries at {index}",
                        a.dir.display(),
                        b.dir.display()
                    ));
                }
            }
        }
    }
    let point = histories.iter().map(|h| h.committed).min().unwrap_or(0);
    report.agreed_through = point;
    let mut fingerprints = Vec::new();
    for history in &histories {
        let last = history.entries.keys().next_back().copied().unwrap_or(0);
        if history.snapshot_index > point || last.max(history.snapshot_index) < point {
            continue;
        }
        let state = state_at(&history.dir, point)?;
        fingerprints.push((history.dir.clone(), fingerprint(&state)));
    }
    if let Some((first_dir, first)) = fingerprints.first() {
        for (dir, other) in &fingerprints[1..] {
            if other != first {
                report.violations.push(format!(
                    "{} and {} hold different states at index {point}",
                    first_dir.display(),
                    dir.display()
                ));
            }
        }
    }
    Ok(report)
}

/// The state a stopped data dir holds at log index `through`.
fn state_at(dir: &Path, through: u64) -> Result<engine::state::ShopState, Error> {
    let folded = replay::from_snapshot(dir)?;
    let (mut state, mut chains) = (folded.state, folded.chains);
    let mut failure = None;
    replay::scan_log(dir, folded.last_index, |lsn, entry| {
        if lsn.0 > through || failure.is_some() {
            return Ok(());
        }
        match entry.and_then(|e| replay::apply_entry(&mut state, &mut chains, &e, |_, _, _| {})) {
            Ok(_) => {}
            Err(e) => failure = Some(e),
        }
        Ok(())
    })?;
    match failure {
        Some(error) => Err(error),
        None => Ok(state),
    }
}

/// A checksum of what the state means (orders, every key's holder, stock, balances), the
/// same for equal states whatever order their maps were filled in.
pub fn fingerprint(state: &engine::state::ShopState) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    state.for_each_order(|_, record| hasher.update(&rows::encode(record)));
    state.for_each_card(1..state.cards_count() + 1, |_, slot| {
        hasher.update(&rows::encode(&slot.key));
        hasher.update(&rows::encode(&slot.holder));
    });
    for product in state.products() {
        hasher.update(&rows::encode(&product.stock));
    }
    for account in state.resellers() {
        let id = account.reseller.reseller_id;
        if let Some(totals) = state.ledger().totals(id) {
            hasher.update(&totals.balance_cents.to_le_bytes());
        }
        hasher.update(&(account.stream.len() as u64).to_le_bytes());
    }
    hasher.update(&state.audit_count().to_le_bytes());
    hasher.finalize()
}
