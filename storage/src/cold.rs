//! Archived orders: the settled orders a snapshot moved out of memory, in cold tables
//! (`table.rs`) under `cold/` in the data dir, read through `engine::state::ColdOrders`.
//!
//! A table holds five sections, each sorted by its key:
//! - `ORDER | index: u32 BE` -> the order's record (`rows::encode`);
//! - `ID | order id` -> its index (`u32` LE);
//! - `IDEMPOTENCY | key` -> the newest index made with that `Idempotency-Key` (`u32` LE);
//! - `CARD | card id: u64 BE` -> the card a delivered order bought (`rows::encode`);
//! - `DIGEST | product index: u32 BE | key digest: 32 bytes` -> that card's id (`u64` LE),
//!   what deduplicates an import against archived keys.
//!
//! A snapshot names its tables, newest first. An order archived again (an event brought it
//! back, changed it, and a later snapshot archived it anew) is in a newer table, which
//! shadows the older copy. Each archive writes one table: the newly archived orders merged
//! with the newest tables while those are no more than twice as large as what is merged so
//! far, so a table's orders are rewritten about log2(orders) times over their life and a
//! snapshot names that many tables. Tables are immutable: written under a temporary name,
//! fsync'd, renamed, and removed only once no snapshot names them.
//!
//! Reading an archived order that the table's checksums refuse, or that the disk cannot
//! read, stops the process (the state would otherwise decide differently from every other
//! replica): the node restarts, and a table that stays unreadable is a lost disk, which a
//! replica or a backup replaces (docs/DEPLOYMENT.md, "Backups").

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::ids::{CardId, OrderId};
use engine::state::{CardSlot, ColdOrders, OrderRecord, ShopState};

use crate::table::{Cursor, Table, TableWriter};
use crate::{rows, Error};

const ORDER: u8 = b'o';
const ID: u8 = b'i';
const IDEMPOTENCY: u8 = b'k';
const CARD: u8 = b'c';
const DIGEST: u8 = b'd';
/// File name extension of a cold table.
pub const TABLE_EXTENSION: &str = "cold";
/// A table joins a merge while it is at most this many times what is merged so far.
const MERGE_RATIO: u64 = 2;
/// Entries an archived order writes at most: its record, its id, its idempotency key.
const ENTRIES_PER_ORDER_MAX: u64 = 3;
/// Entries an archived card writes: the card, its digest.
const ENTRIES_PER_CARD: u64 = 2;

pub fn cold_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cold")
}

/// A new table's name (without its extension): the snapshot's index and term, and the time,
/// so that no two tables anywhere share a name (a replica installs the leader's tables
/// beside its own).
pub fn table_name(last_index: u64, last_term: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{last_index:020}-{last_term:020}-{nanos:016x}")
}

/// Whether `name` can be a cold table's file name (no path, the table extension).
pub fn is_table_name(name: &str) -> bool {
    let stem = name.strip_suffix(&format!(".{TABLE_EXTENSION}")[..]);
    stem.is_some_and(|stem| {
        !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

fn order_key(index: u32) -> [u8; 5] {
    let mut key = [ORDER, 0, 0, 0, 0];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn card_key(card: CardId) -> [u8; 9] {
    let mut key = [CARD; 9];
    key[1..].copy_from_slice(&card.0.to_be_bytes());
    key
}

fn digest_key(sku_index: u32, digest: &[u8; 32]) -> [u8; 37] {
    let mut key = [DIGEST; 37];
    key[1..5].copy_from_slice(&sku_index.to_be_bytes());
    key[5..].copy_from_slice(digest);
    key
}

fn keyed(section: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(section);
    key.extend_from_slice(text.as_bytes());
    key
}

fn index_value(value: &[u8]) -> Result<u32, Error> {
    let bytes: [u8; 4] = value
        .try_into()
        .map_err(|_| Error::Corrupt("a cold table's index is not 4 bytes".into()))?;
    Ok(u32::from_le_bytes(bytes))
}

/// What a walk over a range of keys hands each key and its newest copy to.
type VisitEntry<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), Error> + 'a;

/// An unreadable archive: see the module's last paragraph.
fn unreadable(error: Error) -> ! {
    panic!("archived orders unreadable ({error}); stopping rather than deciding without them")
}

/// The tables a snapshot names, newest first.
pub struct ColdArchive {
    tables: Vec<(String, Table)>,
}

impl ColdArchive {
    /// Opens the tables `names` (newest first) in `dir`, checking each one's footer, index
    /// and filter.
    pub fn open(dir: &Path, names: &[String]) -> Result<Self, Error> {
        let tables = names
            .iter()
            .map(|name| Ok((name.clone(), Table::open(&dir.join(name))?)))
            .collect::<Result<_, Error>>()?;
        Ok(Self { tables })
    }

    /// An archive of no tables (a state that archived nothing yet).
    pub fn empty() -> Self {
        Self { tables: Vec::new() }
    }

    pub fn names(&self) -> Vec<String> {
        self.tables.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Reads every block of every table (checking each CRC) and decodes every record: what
    /// `panshi audit` runs before it trusts the archive.
    pub fn verify(&self) -> Result<u64, Error> {
        let mut records = 0;
        for (name, table) in &self.tables {
            for entry in table.cursor(&[]) {
                let (key, value) = entry.map_err(|e| Error::Corrupt(format!("{name}: {e}")))?;
                match key.first() {
                    Some(&ORDER) => {
                        rows::decode::<OrderRecord>(&value)?;
                        records += 1;
                    }
                    Some(&CARD) => {
                        rows::decode::<CardSlot>(&value)?;
                    }
                    _ => {}
                }
            }
        }
        Ok(records)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        for (_, table) in &self.tables {
            if let Some(value) = table.get(key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// The newest copy under `key`, decoded.
    fn try_decoded<T: bincode::Decode<()>>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        self.get(key)?.map(|bytes| rows::decode(&bytes)).transpose()
    }

    /// Every key in `from..end` with its newest copy, key rising, until `visit` fails.
    fn try_for_each_between(
        &self,
        from: &[u8],
        end: &[u8],
        visit: &mut VisitEntry<'_>,
    ) -> Result<(), Error> {
        let cursors = self
            .tables
            .iter()
            .map(|(_, table)| {
                let cursor = table.cursor(from);
                cursor
                    .take_while(move |entry| entry.as_ref().map_or(true, |(key, _)| key[..] < *end))
            })
            .collect();
        merge(cursors, |key, copies| visit(key, &copies[0]))
    }

    /// Every archived order's newest copy with an index in `indexes`, index rising, until
    /// `visit` fails.
    fn try_for_each_in(
        &self,
        indexes: Range<u32>,
        visit: &mut dyn FnMut(u32, OrderRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (from, end) = (order_key(indexes.start), order_key(indexes.end));
        self.try_for_each_between(&from, &end, &mut |key, value| {
            let index = u32::from_be_bytes(key[1..].try_into().map_err(|_| bad_key())?);
            visit(index, rows::decode(value)?)
        })
    }

    /// Every archived card with an id in `cards`, id rising, until `visit` fails. A card is
    /// archived once and never changes: any copy is it.
    fn try_for_each_card_in(
        &self,
        cards: Range<u64>,
        visit: &mut dyn FnMut(CardId, CardSlot) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (from, end) = (card_key(CardId(cards.start)), card_key(CardId(cards.end)));
        self.try_for_each_between(&from, &end, &mut |key, value| {
            let id = u64::from_be_bytes(key[1..].try_into().map_err(|_| bad_key())?);
            visit(CardId(id), rows::decode(value)?)
        })
    }
}

fn bad_key() -> Error {
    Error::Corrupt("a cold table's order or card key is malformed".into())
}

/// The entries of one section of a table.
fn section(
    table: &Table,
    section: u8,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), Error>> + '_ {
    let cursor: Cursor<'_> = table.cursor(&[section]);
    cursor.take_while(move |entry| entry.as_ref().map_or(true, |(key, _)| key[0] == section))
}

type Entry = (Vec<u8>, Vec<u8>);

/// Merges sorted sources (`sources[0]` newest): each key once, in key order, with the
/// values every source holds for it, newest first.
fn merge<I: Iterator<Item = Result<Entry, Error>>>(
    mut sources: Vec<I>,
    mut visit: impl FnMut(&[u8], &[Vec<u8>]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut heads: Vec<Option<Entry>> = sources
        .iter_mut()
        .map(|source| source.next().transpose())
        .collect::<Result<_, _>>()?;
    let mut copies = Vec::new();
    loop {
        let Some(key) = heads.iter().flatten().map(|(key, _)| key).min().cloned() else {
            return Ok(());
        };
        copies.clear();
        for (head, source) in heads.iter_mut().zip(&mut sources) {
            if head.as_ref().is_some_and(|(k, _)| *k == key) {
                let (_, value) = head.take().expect("a head");
                copies.push(value);
                *head = source.next().transpose()?;
            }
        }
        visit(&key, &copies)?;
    }
}

impl ColdOrders for ColdArchive {
    fn record(&self, index: u32) -> Option<OrderRecord> {
        self.try_decoded(&order_key(index))
            .unwrap_or_else(|e| unreadable(e))
    }

    fn index_of(&self, id: &OrderId) -> Option<u32> {
        let found = self.get(&keyed(ID, id.as_str()));
        let found = found.and_then(|value| value.map(|v| index_value(&v)).transpose());
        found.unwrap_or_else(|e| unreadable(e))
    }

    fn index_of_idempotency_key(&self, key: &str) -> Option<u32> {
        let key = keyed(IDEMPOTENCY, key);
        let mut newest = None;
        for (_, table) in &self.tables {
            let found = table
                .get(&key)
                .and_then(|v| v.map(|v| index_value(&v)).transpose());
            newest = newest.max(found.unwrap_or_else(|e| unreadable(e)));
        }
        newest
    }

    fn for_each_in(&self, indexes: Range<u32>, visit: &mut dyn FnMut(u32, &OrderRecord)) {
        self.try_for_each_in(indexes, &mut |index, record| {
            visit(index, &record);
            Ok(())
        })
        .unwrap_or_else(|e| unreadable(e))
    }

    fn card(&self, card: CardId) -> Option<CardSlot> {
        self.try_decoded(&card_key(card))
            .unwrap_or_else(|e| unreadable(e))
    }

    fn for_each_card_in(&self, cards: Range<u64>, visit: &mut dyn FnMut(CardId, &CardSlot)) {
        self.try_for_each_card_in(cards, &mut |card, slot| {
            visit(card, &slot);
            Ok(())
        })
        .unwrap_or_else(|e| unreadable(e))
    }

    fn holds_digest(&self, sku_index: u32, digest: &[u8; 32]) -> bool {
        let found = self.get(&digest_key(sku_index, digest));
        found.unwrap_or_else(|e| unreadable(e)).is_some()
    }
}

/// What archiving a state did: the tables its snapshot names, what it archived and when.
pub struct Archived {
    pub archive: Arc<ColdArchive>,
    /// Indexes archived now, rising.
    pub indexes: Vec<u32>,
    /// The state's `events_applied` when they were archived.
    pub through_events: u64,
    /// Cards archived now with their keys' digests, id rising.
    pub cards: Vec<(CardId, [u8; 32])>,
}

/// Archives `state`'s archivable orders into a new table in `dir` (merged with the newest
/// of `current`'s tables, see the module doc), makes it durable, and drops them from
/// `state`. `name` names the new table (unique: a snapshot's index, term and time).
/// Nothing to archive writes nothing.
pub fn archive(
    dir: &Path,
    name: &str,
    current: &Arc<ColdArchive>,
    state: &mut ShopState,
) -> Result<Archived, Error> {
    let fresh: Vec<(u32, &OrderRecord)> = state.archivable_orders().collect();
    let indexes: Vec<u32> = fresh.iter().map(|(index, _)| *index).collect();
    let fresh_cards = state.archivable_cards(&indexes);
    let cards: Vec<(CardId, [u8; 32])> = fresh_cards.iter().map(|c| (c.card, c.digest)).collect();
    let through_events = state.events_applied();
    if fresh.is_empty() && fresh_cards.is_empty() {
        return Ok(Archived {
            archive: current.clone(),
            indexes,
            through_events,
            cards,
        });
    }
    // The newest tables join while each is at most MERGE_RATIO times what is merged so far.
    let mut merged_entries =
        fresh.len() as u64 * ENTRIES_PER_ORDER_MAX + fresh_cards.len() as u64 * ENTRIES_PER_CARD;
    let mut joining = 0;
    for (_, table) in &current.tables {
        if table.len() > merged_entries * MERGE_RATIO {
            break;
        }
        merged_entries += table.len();
        joining += 1;
    }
    crate::private::create_dir(dir)?;
    let path = dir.join(format!("{name}.{TABLE_EXTENSION}"));
    let _ = fs::remove_file(&path); // a part of a build that crashed
    let mut writer = TableWriter::create(&path)?;
    let joined = &current.tables[..joining];
    // Each section: the fresh orders (newest) merged with the joining tables.
    let mut ids: Vec<Entry> = Vec::with_capacity(fresh.len());
    let mut keys: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for (index, record) in &fresh {
        ids.push((
            keyed(ID, record.created.order_id.as_str()),
            index.to_le_bytes().to_vec(),
        ));
        if let Some(idempotency) = &record.created.idempotency {
            let newest = keys
                .entry(keyed(IDEMPOTENCY, &idempotency.key))
                .or_default();
            *newest = (*newest).max(*index);
        }
    }
    ids.sort();
    let key_entries: Vec<Entry> = keys
        .into_iter()
        .map(|(key, index)| (key, index.to_le_bytes().to_vec()))
        .collect();
    // An id or a record: the newest copy. An idempotency key: the largest index of those
    // merged, whichever table held it (a reader takes the largest of every table's).
    let mut newest = |key: &[u8], copies: &[Vec<u8>]| writer.add(key, &copies[0]);
    // Sections in key order: CARD, DIGEST, ID, IDEMPOTENCY, ORDER.
    const _: () = assert!(CARD < DIGEST && DIGEST < ID && ID < IDEMPOTENCY && IDEMPOTENCY < ORDER);
    let card_entries = fresh_cards
        .iter()
        .map(|c| (card_key(c.card).to_vec(), rows::encode(c.slot)));
    merge(sources(card_entries, joined, CARD), &mut newest)?;
    let mut digests: Vec<Entry> = fresh_cards
        .iter()
        .map(|c| {
            let key = digest_key(c.sku_index, &c.digest).to_vec();
            (key, c.card.0.to_le_bytes().to_vec())
        })
        .collect();
    digests.sort_unstable();
    merge(sources(digests.into_iter(), joined, DIGEST), &mut newest)?;
    merge(sources(ids.into_iter(), joined, ID), &mut newest)?;
    merge(
        sources(key_entries.into_iter(), joined, IDEMPOTENCY),
        |key, copies| {
            let mut largest = 0;
            for copy in copies {
                largest = largest.max(index_value(copy)?);
            }
            newest(key, &[largest.to_le_bytes().to_vec()])
        },
    )?;
    // Encoded as they are written, not all at once (a first archive may be every order).
    let orders = fresh
        .iter()
        .map(|(index, record)| (order_key(*index).to_vec(), rows::encode(*record)));
    merge(sources(orders, joined, ORDER), &mut newest)?;
    writer.finish()?;
    let mut names = vec![format!("{name}.{TABLE_EXTENSION}")];
    names.extend(
        current.tables[joining..]
            .iter()
            .map(|(name, _)| name.clone()),
    );
    let archive = Arc::new(ColdArchive::open(dir, &names)?);
    state.archive(archive.clone(), &indexes, through_events, &cards);
    Ok(Archived {
        archive,
        indexes,
        through_events,
        cards,
    })
}

/// The fresh entries (sorted, newest) then each joining table's section.
fn sources<'a>(
    fresh: impl Iterator<Item = Entry> + 'a,
    joined: &'a [(String, Table)],
    kind: u8,
) -> Vec<Box<dyn Iterator<Item = Result<Entry, Error>> + 'a>> {
    let mut sources: Vec<Box<dyn Iterator<Item = Result<Entry, Error>> + 'a>> =
        vec![Box::new(fresh.map(Ok))];
    sources.extend(
        joined
            .iter()
            .map(|(_, table)| Box::new(section(table, kind)) as Box<dyn Iterator<Item = _>>),
    );
    sources
}

/// Removes every table in `dir` that `keep` does not name (and parts of unfinished ones).
pub fn remove_unnamed(dir: &Path, keep: &[String]) -> Result<(), Error> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let table = path
            .extension()
            .is_some_and(|e| e == TABLE_EXTENSION || e == "tmp" || e == "unpacking");
        if table && !keep.iter().any(|k| k == name) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use engine::events::{Fulfilment, Idempotency, Payment};
    use engine::{CardId, Event, OrderStatus};

    use super::*;
    use crate::fixtures::{created, digest, new_order, stocked_sealed};
    use crate::snapshot::{self, SnapshotHeader};

    const KEYS: u64 = 400;

    fn shop() -> ShopState {
        stocked_sealed(KEYS)
    }

    fn id(n: u64) -> OrderId {
        OrderId::parse(&format!("o{n}")).unwrap()
    }

    /// Order `n` takes key `n`; the even ones carry an idempotency key.
    fn create(state: &mut ShopState, n: u64) {
        let mut order = new_order(&format!("o{n}"), CardId(n), 100);
        order.idempotency = n.is_multiple_of(2).then(|| Idempotency {
            key: format!("key-{n}"),
            fingerprint: n,
        });
        state.apply(&created(order)).unwrap();
    }

    fn pay(state: &mut ShopState, n: u64, newly_reserved: Vec<CardId>) {
        let payment = Payment {
            channel: "epay".into(),
            gateway_trade_no: format!("T{n}").into(),
            amount_cents: 1_000,
        };
        let event = Event::PaymentApplied {
            order_id: id(n),
            payment,
            at_ms: 500,
            fulfilment: Fulfilment::Delivered { newly_reserved },
        };
        state.apply(&event).unwrap();
    }

    fn expire(state: &mut ShopState, n: u64) {
        let event = Event::OrderExpired {
            order_id: id(n),
            at_ms: 5_000,
        };
        state.apply(&event).unwrap();
    }

    fn all(state: &ShopState) -> Vec<(u32, OrderRecord)> {
        let mut orders = Vec::new();
        state.for_each_order(|index, record| orders.push((index, record.clone())));
        orders
    }

    /// Twenty snapshots, each archiving what settled since the last: the tables merge into
    /// a few (a table joins while it is at most twice what is merged), every order reads
    /// back from them exactly as memory held it, an expired order paid late is archived
    /// again and its newer copy shadows the older, and tables nobody names are removed.
    #[test]
    fn archives_merge_into_few_tables_and_read_back_the_newest_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = shop();
        let mut archive = Arc::new(ColdArchive::empty());
        let mut before = Vec::new();
        for round in 0..20u64 {
            for n in round * 10 + 1..=round * 10 + 10 {
                create(&mut state, n);
                match n % 3 {
                    0 => expire(&mut state, n),
                    _ => pay(&mut state, n, Vec::new()),
                }
            }
            if round == 12 {
                // o3 expired and was archived rounds ago: paid late, it comes back.
                pay(&mut state, 3, vec![CardId(KEYS)]);
            }
            before = all(&state);
            let archived = archive_state(dir.path(), round, &archive, &mut state);
            assert_eq!(all(&state), before, "round {round}: the same orders");
            assert_eq!(
                state.hot_orders_count(),
                0,
                "round {round}: everything settled"
            );
            archive = archived.archive;
            remove_unnamed(dir.path(), &archive.names()).unwrap();
        }
        // The sold keys left with their orders (o3's first key went back to the stock).
        let sold: Vec<u64> = (1..=200).filter(|n| n % 3 != 0).chain([KEYS]).collect();
        assert_eq!(state.hot_cards_count(), KEYS - sold.len() as u64);
        assert_eq!(
            state.check(),
            Vec::new(),
            "the full check reads the archived cards"
        );
        let names = archive.names();
        assert!(names.len() <= 6, "{} tables for 200 orders", names.len());
        let on_disk = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, names.len(), "only named tables are kept");
        // Read back from the files alone, as a start does.
        let reopened = ColdArchive::open(dir.path(), &names).unwrap();
        assert_eq!(reopened.verify().unwrap(), 200);
        let mut state = shop();
        for n in 1..=200 {
            create(&mut state, n);
        }
        let mut walked = Vec::new();
        reopened.for_each(&mut |index, record| walked.push((index, record.clone())));
        assert_eq!(walked, before);
        let mut ranged = Vec::new();
        reopened.for_each_in(50..60, &mut |index, record| {
            ranged.push((index, record.clone()))
        });
        assert_eq!(ranged, before[50..60]);
        let o3 = reopened.record(2).unwrap();
        assert_eq!(o3.status, OrderStatus::Delivered, "the newer copy shadows");
        assert_eq!(reopened.index_of(&id(3)), Some(2));
        assert_eq!(reopened.index_of_idempotency_key("key-200"), Some(199));
        assert_eq!(reopened.index_of_idempotency_key("key-3"), None);
        assert_eq!(reopened.index_of(&id(201)), None);
        // Every sold key, from whichever table holds it; no other key.
        let mut cards = Vec::new();
        reopened.for_each_card_in(1..KEYS + 1, &mut |card, slot| {
            cards.push((card, slot.clone()))
        });
        assert_eq!(
            cards.iter().map(|(card, _)| card.0).collect::<Vec<_>>(),
            sold
        );
        let (card, slot) = &cards[0];
        assert_eq!(reopened.card(*card).as_ref(), Some(slot));
        assert_eq!(slot.holder, engine::state::Holder::Sold(0));
        assert_eq!(slot.key, engine::CardKey::Sealed(b"sealed-0".to_vec()));
        assert!(
            reopened.card(CardId(3)).is_none(),
            "o3's first key is not sold"
        );
        for n in &sold {
            assert!(reopened.holds_digest(0, &digest(n - 1)), "key {n}'s digest");
        }
        assert!(
            !reopened.holds_digest(0, &digest(2)),
            "an unsold key's digest"
        );
        assert!(!reopened.holds_digest(1, &digest(0)), "another product's");
    }

    /// A merge hands each key once, in key order, with every source's value newest first
    /// (what lets an idempotency key keep its largest index across tables).
    #[test]
    fn a_merge_hands_every_copy_of_a_key_newest_first() {
        let source = |entries: &[(&str, &str)]| {
            let entries: Vec<Result<Entry, Error>> = entries
                .iter()
                .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
                .collect();
            entries.into_iter()
        };
        let newest = source(&[("b", "new b"), ("c", "new c")]);
        let older = source(&[("a", "old a"), ("b", "old b")]);
        let mut seen = Vec::new();
        merge(vec![newest, older], |key, copies| {
            let copies: Vec<String> = copies
                .iter()
                .map(|c| String::from_utf8(c.clone()).unwrap())
                .collect();
            seen.push((String::from_utf8(key.to_vec()).unwrap(), copies));
            Ok(())
        })
        .unwrap();
        let want = [
            ("a", vec!["old a"]),
            ("b", vec!["new b", "old b"]),
            ("c", vec!["new c"]),
        ];
        let want: Vec<(String, Vec<String>)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(seen, want);
    }

    /// A table whose block rots under it: `verify` (what `panshi audit` runs) names it, and
    /// a read of an order in that block stops the process rather than answer "no such order"
    /// (a state that decided without it would part from every other replica).
    #[test]
    fn a_damaged_table_is_reported_and_never_read_as_missing_orders() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = shop();
        for n in 1..=40 {
            create(&mut state, n);
            pay(&mut state, n, Vec::new());
        }
        let empty = Arc::new(ColdArchive::empty());
        let names = archive_state(dir.path(), 1, &empty, &mut state)
            .archive
            .names();
        let path = dir.path().join(&names[0]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 0x40; // inside the first block's entries
        fs::write(&path, &bytes).unwrap();
        let damaged = ColdArchive::open(dir.path(), &names).unwrap();
        let error = damaged.verify().unwrap_err().to_string();
        assert!(error.contains("CRC"), "{error}");
        let read = std::panic::catch_unwind(|| damaged.index_of(&id(1)));
        assert!(
            read.is_err(),
            "a damaged block is never read as a missing order"
        );
    }

    fn archive_state(
        dir: &Path,
        round: u64,
        current: &Arc<ColdArchive>,
        state: &mut ShopState,
    ) -> Archived {
        archive(dir, &table_name(round, 1), current, state).unwrap()
    }

    /// A snapshot leaves the data dir as a bundle with its tables and comes back whole in
    /// another; a plain snapshot file (what versions before archiving sent) imports too.
    #[test]
    fn a_bundle_carries_its_tables_to_another_data_dir() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut state = shop();
        for n in 1..=30 {
            create(&mut state, n);
            pay(&mut state, n, Vec::new());
        }
        create(&mut state, 31);
        let before = all(&state);
        let archived = archive_state(
            &cold_dir(from.path()),
            1,
            &Arc::new(ColdArchive::empty()),
            &mut state,
        );
        assert_eq!(state.hot_orders_count(), 1);
        let header = SnapshotHeader {
            meta: Vec::new(),
            last_index: 9,
            last_term: 1,
            chains: Default::default(),
            cold: archived.archive.names(),
        };
        let path =
            snapshot::write(&snapshot::snapshot_dir(from.path()), &header, &state, 0).unwrap();
        let (mut exported, _) = crate::bundle::export(from.path(), &path).unwrap();
        let bundle = from.path().join("copied.bundle");
        std::io::copy(&mut exported, &mut fs::File::create(&bundle).unwrap()).unwrap();
        let left: Vec<_> = fs::read_dir(snapshot::snapshot_dir(from.path()))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "only the snapshot: the bundle has no name");
        let loaded = crate::bundle::unpack_checked(&bundle, to.path()).unwrap();
        assert_eq!(loaded.header.cold, header.cold);
        assert_eq!(all(&loaded.state), before);
        assert_eq!(loaded.state.check(), Vec::new());

        let plain = tempfile::tempdir().unwrap();
        let header = SnapshotHeader {
            cold: Vec::new(),
            ..header
        };
        let state = shop();
        let path =
            snapshot::write(&snapshot::snapshot_dir(plain.path()), &header, &state, 0).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let (loaded, _) = crate::bundle::unpack(&path, elsewhere.path()).unwrap();
        assert_eq!(loaded.state.orders_count(), 0);
    }
}
