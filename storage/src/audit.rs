//! `audit`: checks a data dir that no server is using. It replays the log through the
//! engine's `ShopState` (every event must be one the engine accepts), re-derives every
//! invariant, and checks that sled agrees with the log.
//!
//! Invariant: the audit never writes to the data dir it checks: the log is read without
//! repair and sled through a private copy. An unreadable sled is a note (it is derived, and
//! rebuilt at the next start); the log is checked all the same.

use std::path::Path;

use engine::state::ShopState;

use crate::log;
use crate::rows::{self, CardRow, ProductRow, TreeName};
use crate::sled_dir::SledCopy;
use crate::store::{self, TouchedSet};
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
    if !store::log_dir(data_dir).is_dir() {
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
    let (state, unmirrored, recovery) = replay_log(data_dir, mirrored, &mut report)?;
    report
        .violations
        .extend(state.check().into_iter().map(|v| v.0));
    outbox_note(&state, &mut report);
    let clear_keys = state.clear_cards().count();
    if clear_keys > 0 {
        report.notes.push(format!(
            "{clear_keys} card keys are stored in the clear by an older version; the next \
             start seals them (the log's older records keep them until purged)"
        ));
    }
    note_open_permissions(data_dir, &mut report);
    if let Some((db, mirrored)) = &sled {
        compare_lsn(*mirrored, recovery.last_lsn, &mut report);
        if store::rows_format(db)? != Some(store::ROWS_FORMAT) && *mirrored > 0 {
            report.notes.push(
                "sled holds rows in an older format; the next start rebuilds it from the log \
                 (its rows are not compared)"
                    .into(),
            );
        } else {
            compare_sled(db, &state, &unmirrored, &mut report)?;
            crate::resellers::compare(db, &state, &unmirrored, &mut report.violations)?;
            crate::listings::compare(db, &state, &unmirrored, &mut report.violations)?;
        }
    }
    report.orders_count = state.orders().len() as u64;
    report.cards_count = state.cards_count();
    report.last_lsn = recovery.last_lsn;
    Ok(report)
}

/// Replays the log without repairing it; what the engine refuses is a violation.
fn replay_log(
    data_dir: &Path,
    mirrored: u64,
    report: &mut AuditReport,
) -> Result<(ShopState, TouchedSet, log::Recovery), Error> {
    let mut state = ShopState::default();
    let mut unmirrored = TouchedSet::default();
    let recovery = log::recover(&store::log_dir(data_dir), false, |lsn, payload| {
        match rows::decode_event(payload) {
            Ok(event) => match state.apply(&event) {
                Ok(touched) if lsn.0 > mirrored => unmirrored.add(touched, &event),
                Ok(_) => {}
                Err(v) => report.violations.push(format!("lsn {}: {v}", lsn.0)),
            },
            Err(e) => report.violations.push(format!("lsn {}: {e}", lsn.0)),
        }
        Ok(())
    })?;
    if recovery.truncated_bytes > 0 {
        report.notes.push(format!(
            "torn log tail of {} bytes (never acknowledged; cut at the next start)",
            recovery.truncated_bytes
        ));
    }
    Ok((state, unmirrored, recovery))
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

fn compare_lsn(mirrored: u64, last_lsn: u64, report: &mut AuditReport) {
    if mirrored > last_lsn {
        report.violations.push(format!(
            "sled applied lsn {mirrored} beyond the log's last {last_lsn}"
        ));
    } else if mirrored < last_lsn {
        report.notes.push(format!(
            "sled is {} records behind the log (an unclean stop; the next start catches up)",
            last_lsn - mirrored
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
    state: &ShopState,
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
    let cards = db.open_tree(TreeName::Cards.as_string())?;
    for id in 1..=state.cards_count() {
        let card = engine::CardId(id);
        if unmirrored.cards.contains(&card) {
            continue;
        }
        let row: Option<CardRow> = cards
            .get(rows::card_key(card))?
            .map(|b| rows::decode(&b))
            .transpose()?;
        let slot = state.card(card).expect("counted");
        let agrees = row.is_some_and(|row| {
            Some(&row.sku) == state.sku_of(card).as_ref()
                && row.sealed_key == rows::sealed_key_row(&slot.key)
                && row.holder == rows::holder_row(state, slot.holder)
        });
        if !agrees {
            report
                .violations
                .push(format!("sled disagrees with the log on card {id}"));
        }
    }
    let audit_rows = db.open_tree(TreeName::Audit.as_string())?.len() as u64;
    if audit_rows + unmirrored.audits.len() as u64 != state.audit_count() {
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
    let mirrored_orders = state.orders().len() as u64;
    let unmirrored_new = unmirrored
        .orders
        .iter()
        .filter(|id| !matches!(read_order(db, id), Ok(Some(_))))
        .count() as u64;
    if sled_orders + unmirrored_new != mirrored_orders {
        report.violations.push(format!(
            "sled holds {sled_orders} orders, the log {mirrored_orders}"
        ));
    }
    for record in state.orders() {
        let id = &record.created.order_id;
        if unmirrored.orders.contains(id) {
            continue;
        }
        if read_order(db, id)?.as_ref() != Some(record) {
            report
                .violations
                .push(format!("sled disagrees with the log on order {id}"));
        }
    }
    Ok(())
}

fn read_order(db: &sled::Db, id: &engine::OrderId) -> Result<Option<engine::OrderRecord>, Error> {
    let index = db.open_tree(TreeName::OrderMonth.as_string())?;
    let Some(month) = index.get(id.as_str())? else {
        return Ok(None);
    };
    let tree =
        db.open_tree(TreeName::Orders(String::from_utf8_lossy(&month).into_owned()).as_string())?;
    tree.get(id.as_str())?.map(|b| rows::decode(&b)).transpose()
}
