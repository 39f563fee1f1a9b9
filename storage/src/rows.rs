//! The versioned record formats: log payloads and sled rows. Each starts with a format byte;
//! the rest is bincode 2 (standard config). A reader refuses versions it does not know.

use bincode::{Decode, Encode};
use std::collections::BTreeSet;
use std::sync::Arc;

use engine::state::{Holder, OrderRecord, ShopState, Stock, Touched};
use engine::{CardId, Event, OrderId, Product, Sku};

use crate::Error;

/// Format of log payloads and sled rows written by this build. 2: orders carry the
/// gateway's payment reference; refunds, operator actions and reseller events exist.
/// Format 1 (the first day's builds) is not read: no data of it was ever kept.
pub const FORMAT_VERSION: u8 = 2;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    bytes.push(FORMAT_VERSION);
    bincode::encode_into_std_write(value, &mut bytes, config()).expect("encoding to memory");
    bytes
}

pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            let (value, read) = bincode::decode_from_slice(rest, config())
                .map_err(|e| Error::Corrupt(format!("undecodable record: {e}")))?;
            if read != rest.len() {
                return Err(Error::Corrupt("trailing bytes after a record".into()));
            }
            Ok(value)
        }
        Some((version, _)) => Err(Error::Corrupt(format!("unknown record format {version}"))),
        None => Err(Error::Corrupt("empty record".into())),
    }
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    encode(event)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, Error> {
    decode(bytes)
}

/// A product's sled row.
#[derive(Encode, Decode, Debug, PartialEq, Eq)]
pub struct ProductRow {
    pub product: Product,
    pub stock: Stock,
}

/// A card's sled row: its product, its sealed key, and whether an operator deleted it.
/// Whether it is reserved or sold, and to which order, is in that order's row (its status
/// and its keys), so neither a reservation nor a sale writes a card row.
#[derive(Encode, Decode, Debug, PartialEq, Eq)]
pub struct CardRow {
    pub sku: Sku,
    /// The sealed key. `None` for a key still in the clear (an older version's, between an
    /// upgrade's open and the start-up sealing): sled never holds a key in the clear.
    pub sealed_key: Option<Vec<u8>>,
    /// Deleted by an operator; never sold.
    pub deleted: bool,
}

/// The sled trees. Orders live in one tree per creation month, so old months can be
/// archived or dropped whole.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TreeName {
    Meta,
    Products,
    Cards,
    OrderMonth,
    /// The operators' audit trail, by entry number.
    Audit,
    /// Reseller accounts, by reseller id.
    Resellers,
    /// The resellers' ledger, by entry number.
    Ledger,
    /// Reseller stream events, by (reseller id, seq).
    ResellerStream,
    /// Product listings beyond creation (details, deleted count), by SKU.
    Listings,
    /// Coupons and their use counts, by code.
    Coupons,
    /// Orders' coupon and lookup-password terms, by order id.
    OrderTerms,
    /// The shop's identity, one row.
    Shop,
    Orders(String),
}

impl TreeName {
    pub fn as_string(&self) -> String {
        match self {
            TreeName::Meta => "meta".into(),
            TreeName::Products => "products".into(),
            TreeName::Cards => "cards".into(),
            TreeName::OrderMonth => "order_month".into(),
            TreeName::Audit => "audit".into(),
            TreeName::Resellers => "resellers".into(),
            TreeName::Ledger => "ledger".into(),
            TreeName::ResellerStream => "reseller_stream".into(),
            TreeName::Listings => "listings".into(),
            TreeName::Coupons => "coupons".into(),
            TreeName::OrderTerms => "order_terms".into(),
            TreeName::Shop => "shop".into(),
            TreeName::Orders(month) => format!("orders/{month}"),
        }
    }
}

pub struct Row {
    pub tree: TreeName,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

pub use engine::time::month_of;

pub fn card_key(card: CardId) -> [u8; 8] {
    card.0.to_be_bytes()
}

/// An order as sled holds it: in the month's tree its id names (`OrderId::created_at_ms`),
/// else through `order_month`.
pub fn read_order(db: &sled::Db, id: &OrderId) -> Result<Option<OrderRecord>, Error> {
    let get = |month: &str| -> Result<Option<OrderRecord>, Error> {
        db.open_tree(TreeName::Orders(month.to_owned()).as_string())?
            .get(id.as_str())?
            .map(|bytes| decode(&bytes))
            .transpose()
    };
    if let Some(month) = id.created_at_ms().map(month_of) {
        if let Some(record) = get(&month)? {
            return Ok(Some(record));
        }
    }
    let index = db.open_tree(TreeName::OrderMonth.as_string())?;
    match index.get(id.as_str())? {
        Some(month) => get(&String::from_utf8_lossy(&month)),
        None => Ok(None),
    }
}

/// `visit` on every order, hot or archived, index rising; after its first error it visits
/// nothing more, and that error is returned.
pub fn try_for_each_order(
    state: &ShopState,
    mut visit: impl FnMut(&OrderRecord) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut result = Ok(());
    state.for_each_order(|_, record| {
        if result.is_ok() {
            result = visit(record);
        }
    });
    result
}

/// An order's row, and with `created` its `order_month` row if it needs one: only orders
/// whose id does not begin with their creation time have one (one sled insert fewer for
/// every order made here; compared as times, so no month is formatted twice). sled keeps
/// no index of idempotency keys: nothing read it (the state answers retries).
pub fn order_rows(record: &OrderRecord, created: bool, rows: &mut Vec<Row>) {
    let month = month_of(record.created.created_at_ms);
    let id = record.created.order_id.as_str().as_bytes().to_vec();
    if created && record.created.order_id.created_at_ms() != Some(record.created.created_at_ms) {
        rows.push(Row {
            tree: TreeName::OrderMonth,
            key: id.clone(),
            value: month.as_bytes().to_vec(),
        });
    }
    rows.push(Row {
        tree: TreeName::Orders(month),
        key: id,
        value: encode(record),
    });
}

pub fn product_row(product: &Product, stock: Stock) -> Row {
    Row {
        tree: TreeName::Products,
        key: product.sku.as_str().as_bytes().to_vec(),
        value: encode(&ProductRow {
            product: product.clone(),
            stock,
        }),
    }
}

/// One change to mirror, captured (cheaply, unencoded) while the state lock is held.
pub enum Change {
    Audit {
        number: u64,
        action: engine::OperatorAction,
    },
    Order {
        record: Arc<OrderRecord>,
        created: bool,
    },
    Card {
        card: CardId,
        row: CardRow,
    },
    Stock {
        sku: Sku,
        stock: Stock,
    },
    Product(Product),
    Reseller {
        id: engine::ResellerId,
        row: crate::resellers::ResellerRow,
    },
    LedgerEntry(engine::ledger::Entry),
    Stream {
        id: engine::ResellerId,
        seq: u64,
        row: crate::resellers::StreamRow,
    },
    /// A listing, coupon, order-terms or identity row: few and small, encoded at once.
    Encoded(Row),
}

/// The changes an applied event made, as the state now has them.
pub fn changes(state: &ShopState, event: &Event, touched: Touched, out: &mut Vec<Change>) {
    let touched_resellers = TouchedResellers::from(&touched);
    if let Event::ProductCreated(product) = event {
        out.push(Change::Product(product.clone()));
    }
    if let Event::ProductEdited { sku, .. } = event {
        // The mirror keeps each product to write beside its stock: give it the new one.
        let product = &state.product(sku).expect("edited sku exists").product;
        out.push(Change::Product(product.clone()));
    }
    crate::listings::changes(state, &touched, out);
    if let (Event::OperatorAction(action), Some(number)) = (event, touched.audit) {
        out.push(Change::Audit {
            number,
            action: action.clone(),
        });
    }
    if let Some(order_id) = &touched.order {
        let record = state.order(order_id).expect("touched order exists");
        out.push(Change::Order {
            record: Arc::new(record.into_owned()),
            created: touched.order_created,
        });
    }
    for card in touched.cards {
        out.push(Change::Card {
            card,
            row: card_record(state, card),
        });
    }
    if let Some(sku) = touched.sku {
        let stock = state.product(&sku).expect("touched sku exists").stock;
        out.push(Change::Stock { sku, stock });
    }
    reseller_changes(state, &touched_resellers, out);
}

/// The reseller rows an applied event changed.
fn reseller_changes(state: &ShopState, touched: &TouchedResellers, out: &mut Vec<Change>) {
    use crate::resellers::{ledger_record, reseller_record, stream_record};
    if let Some(id) = touched.reseller {
        let row = reseller_record(state, id);
        out.push(Change::Reseller { id, row });
    }
    if let Some(number) = touched.ledger_entry {
        out.push(Change::LedgerEntry(ledger_record(state, number)));
    }
    if let Some((id, seq)) = touched.stream {
        let row = stream_record(state, id, seq);
        out.push(Change::Stream { id, seq, row });
    }
}

/// The reseller part of a `Touched`, taken before the rest is consumed.
pub struct TouchedResellers {
    pub reseller: Option<engine::ResellerId>,
    pub ledger_entry: Option<u64>,
    pub stream: Option<(engine::ResellerId, u64)>,
}

impl From<&Touched> for TouchedResellers {
    fn from(touched: &Touched) -> Self {
        Self {
            reseller: touched.reseller,
            ledger_entry: touched.ledger_entry,
            stream: touched.stream,
        }
    }
}

pub fn card_record(state: &ShopState, card: CardId) -> CardRow {
    card_record_of(state, &state.card(card).expect("touched card exists"))
}

pub fn card_record_of(state: &ShopState, slot: &engine::state::CardSlot) -> CardRow {
    CardRow {
        sku: state
            .sku_at(slot.sku_index)
            .expect("card has a sku")
            .clone(),
        sealed_key: sealed_key_row(&slot.key),
        deleted: slot.holder == Holder::Deleted,
    }
}

/// The runs of consecutive ids in `cards` (rising), as id ranges: `ShopState::for_each_card`
/// reads a range's archived cards with a cursor, not a lookup each.
fn card_ranges(cards: &BTreeSet<CardId>) -> Vec<std::ops::Range<u64>> {
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for card in cards {
        match ranges.last_mut() {
            Some(range) if range.end == card.0 => range.end += 1,
            _ => ranges.push(card.0..card.0 + 1),
        }
    }
    ranges
}

/// What sled keeps of a card's key: the sealed bytes, never a clear key.
pub fn sealed_key_row(key: &engine::CardKey) -> Option<Vec<u8>> {
    match key {
        engine::CardKey::Sealed(sealed) => Some(sealed.clone()),
        engine::CardKey::Clear(_) => None,
    }
}

pub fn card_row(card: CardId, row: &CardRow) -> Row {
    Row {
        tree: TreeName::Cards,
        key: card_key(card).to_vec(),
        value: encode(row),
    }
}

pub fn audit_row(number: u64, action: &engine::OperatorAction) -> Row {
    Row {
        tree: TreeName::Audit,
        key: number.to_be_bytes().to_vec(),
        value: encode(action),
    }
}

/// Keys of rows to write or compare, by kind: what an audit found unmirrored, or
/// everything a state holds (for rebuilding sled whole).
#[derive(Default)]
pub(crate) struct TouchedSet {
    pub(crate) skus: BTreeSet<Sku>,
    pub(crate) orders: BTreeSet<OrderId>,
    pub(crate) cards: BTreeSet<CardId>,
    pub(crate) audits: BTreeSet<u64>,
    pub(crate) resellers: BTreeSet<engine::ResellerId>,
    pub(crate) ledger_entries: BTreeSet<u64>,
    pub(crate) streams: BTreeSet<(engine::ResellerId, u64)>,
    pub(crate) listings: BTreeSet<Sku>,
    pub(crate) coupons: BTreeSet<String>,
    pub(crate) order_terms: BTreeSet<OrderId>,
    pub(crate) identity: bool,
}

impl TouchedSet {
    pub(crate) fn add(&mut self, touched: Touched) {
        self.audits.extend(touched.audit);
        self.resellers.extend(touched.reseller);
        self.ledger_entries.extend(touched.ledger_entry);
        self.streams.extend(touched.stream);
        self.listings.extend(touched.listing);
        self.coupons.extend(touched.coupon);
        if touched.order_terms {
            self.order_terms.extend(touched.order.clone());
        }
        self.identity |= touched.identity;
        self.skus.extend(touched.sku);
        self.orders.extend(touched.order);
        self.cards.extend(touched.cards);
    }

    /// Every row of what the state holds in memory: for rebuilding sled whole. sled mirrors
    /// memory, not the archive: an archived order or card is read from its table
    /// (`Store::order`, `ShopState::card`), so a rebuild never walks the archive and its
    /// rows do not grow with history. A struct literal, not `default()` and extends: a new
    /// kind of row cannot be left out of a rewrite unnoticed (listings, coupons, terms and
    /// the identity once were, and a rewritten sled lacked them).
    pub(crate) fn held(state: &ShopState) -> Self {
        let mut resellers = BTreeSet::new();
        let mut streams = BTreeSet::new();
        for account in state.resellers() {
            let id = account.reseller.reseller_id;
            resellers.insert(id);
            streams.extend((1..=account.stream.len() as u64).map(|seq| (id, seq)));
        }
        let skus: BTreeSet<Sku> = state.products().map(|p| p.product.sku.clone()).collect();
        let order_id = |index| {
            let record = state.order_at(index).expect("an order with terms exists");
            record.created.order_id.clone()
        };
        Self {
            listings: skus.clone(),
            // Terms stay in memory for archived orders too (coupon counts, lookups).
            order_terms: state.orders_with_terms().map(order_id).collect(),
            skus,
            orders: state
                .hot_orders()
                .map(|(_, record)| record.created.order_id.clone())
                .collect(),
            cards: state.hot_cards().map(|(card, _)| card).collect(),
            audits: (1..=state.audit_count()).collect(),
            resellers,
            ledger_entries: (1..=state.ledger().entries().len() as u64).collect(),
            streams,
            coupons: state.coupons().map(|c| c.coupon.code.clone()).collect(),
            identity: true,
        }
    }

    pub(crate) fn rows(&self, state: &ShopState) -> Vec<Row> {
        let mut rows = Vec::new();
        self.slices(state, usize::MAX, &mut |slice| {
            rows.extend(slice);
            Ok(())
        })
        .map(|()| rows)
        .expect("collecting rows cannot fail")
    }

    /// Every row, handed to `sink` in slices of about `slice_rows` (a whole state's rows at
    /// once are several times the state's size).
    pub(crate) fn slices(
        &self,
        state: &ShopState,
        slice_rows: usize,
        sink: &mut dyn FnMut(Vec<Row>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut rows = Vec::new();
        let mut full = |rows: &mut Vec<Row>| match rows.len() >= slice_rows {
            true => sink(std::mem::take(rows)),
            false => Ok(()),
        };
        for sku in &self.skus {
            let product = state.product(sku).expect("replayed product");
            rows.push(product_row(&product.product, product.stock));
        }
        for order_id in &self.orders {
            order_rows(
                &state.order(order_id).expect("replayed order"),
                true,
                &mut rows,
            );
            full(&mut rows)?;
        }
        for range in card_ranges(&self.cards) {
            let mut start = range.start;
            while start < range.end {
                // A row a card: as many as the slice has room for.
                let room = slice_rows.saturating_sub(rows.len()).max(1) as u64;
                let end = range.end.min(start.saturating_add(room));
                state.for_each_card(start..end, |card, slot| {
                    rows.push(card_row(card, &card_record_of(state, slot)));
                });
                full(&mut rows)?;
                start = end;
            }
        }
        for number in &self.audits {
            let action = &state.audit_trail()[(*number - 1) as usize];
            rows.push(audit_row(*number, action));
        }
        self.reseller_rows(state, &mut rows);
        crate::listings::replayed_rows(state, self, &mut rows);
        match rows.is_empty() {
            true => Ok(()),
            false => sink(rows),
        }
    }

    fn reseller_rows(&self, state: &ShopState, rows: &mut Vec<Row>) {
        use crate::resellers as r;
        for id in &self.resellers {
            rows.push(r::reseller_row(*id, &r::reseller_record(state, *id)));
        }
        for number in &self.ledger_entries {
            rows.push(r::ledger_row(&r::ledger_record(state, *number)));
        }
        for (id, seq) in &self.streams {
            rows.push(r::stream_row(
                *id,
                *seq,
                &r::stream_record(state, *id, *seq),
            ));
        }
    }
}
