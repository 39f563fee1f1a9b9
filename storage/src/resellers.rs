//! The resellers' sled rows: one per reseller (account, status, totals), one per ledger
//! entry, one per stream event keyed (reseller id, seq). Like every row they hold absolute
//! values computed from the replayed state, so re-applying a suffix of the log is idempotent;
//! `audit` compares them with the log.

use bincode::{Decode, Encode};
use engine::ledger::{Entry, Totals};
use engine::state::ShopState;
use engine::{NewReseller, OrderId, OrderStatus, ResellerId};

use crate::rows::{self, Row, TreeName};
use crate::Error;

/// A reseller's sled row.
#[derive(Encode, Decode, Debug, PartialEq, Eq, Clone)]
pub struct ResellerRow {
    pub reseller: NewReseller,
    pub revoked_at_ms: Option<u64>,
    pub totals: Totals,
    pub stream_seq: u64,
}

/// One event of a reseller's stream.
#[derive(Encode, Decode, Debug, PartialEq, Eq, Clone)]
pub struct StreamRow {
    pub order_id: OrderId,
    pub status: OrderStatus,
}

pub fn reseller_record(state: &ShopState, id: ResellerId) -> ResellerRow {
    let account = state.reseller(id).expect("touched reseller exists");
    ResellerRow {
        reseller: account.reseller.clone(),
        revoked_at_ms: account.revoked_at_ms,
        totals: state.ledger().totals(id).expect("account opened"),
        stream_seq: account.stream.len() as u64,
    }
}

pub fn stream_record(state: &ShopState, id: ResellerId, seq: u64) -> StreamRow {
    let item = state
        .reseller_stream(id, seq - 1, seq, 1)
        .pop()
        .expect("touched stream event exists");
    StreamRow {
        order_id: item.record.created.order_id.clone(),
        status: item.status,
    }
}

pub fn ledger_record(state: &ShopState, number: u64) -> Entry {
    state
        .ledger()
        .entry(number)
        .expect("touched entry exists")
        .clone()
}

pub fn stream_key(id: ResellerId, seq: u64) -> Vec<u8> {
    let mut key = id.0.to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn reseller_row(id: ResellerId, row: &ResellerRow) -> Row {
    Row {
        tree: TreeName::Resellers,
        key: id.0.to_be_bytes().to_vec(),
        value: rows::encode(row),
    }
}

pub fn ledger_row(entry: &Entry) -> Row {
    Row {
        tree: TreeName::Ledger,
        key: entry.number.to_be_bytes().to_vec(),
        value: rows::encode(entry),
    }
}

pub fn stream_row(id: ResellerId, seq: u64, row: &StreamRow) -> Row {
    Row {
        tree: TreeName::ResellerStream,
        key: stream_key(id, seq),
        value: rows::encode(row),
    }
}

/// What `audit` finds where sled disagrees with the log about resellers. Rows the log
/// touched after sled's applied lsn (`unmirrored`) are skipped: an unclean stop, not a
/// violation.
pub(crate) fn compare(
    db: &sled::Db,
    state: &ShopState,
    unmirrored: &crate::rows::TouchedSet,
    violations: &mut Vec<String>,
) -> Result<(), Error> {
    let resellers = db.open_tree(TreeName::Resellers.as_string())?;
    let streams = db.open_tree(TreeName::ResellerStream.as_string())?;
    for account in state.resellers() {
        let id = account.reseller.reseller_id;
        if !unmirrored.resellers.contains(&id) {
            let row: Option<ResellerRow> = resellers
                .get(id.0.to_be_bytes())?
                .map(|b| rows::decode(&b))
                .transpose()?;
            if row.as_ref() != Some(&reseller_record(state, id)) {
                violations.push(format!("sled disagrees with the log on reseller {id}"));
            }
        }
        for seq in 1..=account.stream.len() as u64 {
            if unmirrored.streams.contains(&(id, seq)) {
                continue;
            }
            let row: Option<StreamRow> = streams
                .get(stream_key(id, seq))?
                .map(|b| rows::decode(&b))
                .transpose()?;
            if row.as_ref() != Some(&stream_record(state, id, seq)) {
                violations.push(format!("sled disagrees with the log on {id} stream {seq}"));
            }
        }
    }
    let ledger = db.open_tree(TreeName::Ledger.as_string())?;
    for entry in state.ledger().entries() {
        if unmirrored.ledger_entries.contains(&entry.number) {
            continue;
        }
        let row: Option<Entry> = ledger
            .get(entry.number.to_be_bytes())?
            .map(|b| rows::decode(&b))
            .transpose()?;
        if row.as_ref() != Some(entry) {
            violations.push(format!(
                "sled disagrees with the log on ledger entry {}",
                entry.number
            ));
        }
    }
    let ledger_rows = ledger.len() as u64 + unmirrored.ledger_entries.len() as u64;
    if ledger_rows < state.ledger().entries().len() as u64
        || ledger.len() > state.ledger().entries().len()
    {
        violations.push(format!(
            "sled holds {} ledger entries, the log {}",
            ledger.len(),
            state.ledger().entries().len()
        ));
    }
    Ok(())
}
