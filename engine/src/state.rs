//! `ShopState`: the whole shop as the log describes it. Pure: `apply` folds one committed
//! event in, refusing (and leaving the state untouched) any event that would break an
//! invariant; `check` re-derives every invariant from scratch. storage/ mirrors it into sled,
//! `panshi audit` and the simulator replay logs through it, and the actors are seeded from it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::events::{
    Event, Fulfilment, NewOrder, Payment, PlacedOrder, Product, ReviewReason, SealedCard,
};
use crate::ids::{CardId, OrderId, ResellerId, Sku};
use crate::listing::{ProductDetails, ShopIdentity};
use crate::order::{transition, Order, OrderEventKind, OrderStatus};
use crate::sharded::ShardedMap;

/// Whether the idempotency key of `first` still stands at `now_ms` (its window is open).
pub fn idempotency_live(first: &OrderRecord, now_ms: u64) -> bool {
    now_ms
        < first
            .created
            .created_at_ms
            .saturating_add(crate::order::IDEMPOTENCY_WINDOW_MS)
}

/// An event that must never have been committed, or a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(Violation(format!($($fmt)*)));
        }
    };
}

mod cards;
mod coupons;
mod listings;
mod mail;
mod orders;
mod resellers;
pub use coupons::{contact_key, CouponState, OrderTerms};
pub use listings::CARDS_PER_DELETION_MAX;
pub use mail::{MailTries, Outbox};
pub use orders::{may_be_archived, ArchivableCard, ColdOrders, Released, StateEncoding};
pub use resellers::{
    api_key_sha256, ResellerState, StreamEntry, StreamItem, RESELLER_CHANNEL,
    RESELLER_NAME_LEN_MAX, RESELLER_ORDER_QUANTITY_MAX,
};

/// Per-SKU key counts. Conservation: imported = available + reserved + sold.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Stock {
    pub imported: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

impl Stock {
    pub fn is_conserved(&self) -> bool {
        self.available + self.reserved + self.sold == self.imported
    }
}

pub struct ProductState {
    pub product: Product,
    pub stock: Stock,
    /// The listing beyond what creation fixed (`ProductEdited`).
    pub details: ProductDetails,
    /// Keys deleted by operators: no longer in `stock.imported`, never sold.
    pub deleted: u64,
    /// The keys of the product's cards in memory (deleted ones too, so a deleted key is not
    /// imported again), each with its card: what deduplicates them. The keys of archived
    /// cards are in the cold tables (`ShopState::has_digest`).
    keys: HashMap<KeyId, CardId>,
    /// Keys whose cards are archived.
    archived_keys: u64,
    /// The SKU's cards in import order, for operators' listings: each import is a run of
    /// ids `(first, count)`.
    imports: Vec<(CardId, u64)>,
}

/// Card ids `for_each_card` reads from the archive at a time.
const CARDS_READ_TOGETHER: u64 = 4_096;

/// A key whose card an older snapshot did not record (format 2 and before): it stays in
/// memory, and so does its card.
const UNRECORDED_CARD: CardId = CardId(0);

impl Encode for ProductState {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.product.encode(encoder)?;
        self.stock.encode(encoder)?;
        self.details.encode(encoder)?;
        self.deleted.encode(encoder)?;
        self.keys.encode(encoder)?;
        self.archived_keys.encode(encoder)?;
        self.imports.encode(encoder)
    }
}

impl Decode<StateEncoding> for ProductState {
    fn decode<D: bincode::de::Decoder<Context = StateEncoding>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let product = Product::decode(decoder)?;
        let stock = Stock::decode(decoder)?;
        let details = ProductDetails::decode(decoder)?;
        let deleted = u64::decode(decoder)?;
        let (keys, archived_keys, imports) = match *decoder.context() {
            StateEncoding::AllOrders | StateEncoding::HotOrders => {
                let keys: HashSet<KeyId> = Decode::decode(decoder)?;
                let cards: Vec<CardId> = Decode::decode(decoder)?;
                let keys = keys.into_iter().map(|key| (key, UNRECORDED_CARD)).collect();
                (keys, 0, runs_of(&cards))
            }
            StateEncoding::HotCards => (
                Decode::decode(decoder)?,
                u64::decode(decoder)?,
                Decode::decode(decoder)?,
            ),
        };
        Ok(Self {
            product,
            stock,
            details,
            deleted,
            keys,
            archived_keys,
            imports,
        })
    }
}

impl<'de> bincode::BorrowDecode<'de, StateEncoding> for ProductState {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = StateEncoding>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Self::decode(decoder)
    }
}

/// Card ids as runs of consecutive ids `(first, count)`, in their order.
fn runs_of(cards: &[CardId]) -> Vec<(CardId, u64)> {
    let mut runs: Vec<(CardId, u64)> = Vec::new();
    for card in cards {
        match runs.last_mut() {
            Some((first, count)) if first.0 + *count == card.0 => *count += 1,
            _ => runs.push((*card, 1)),
        }
    }
    runs
}

/// A key's identity for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
enum KeyId {
    /// A key an older version imported in the clear.
    Clear(Box<str>),
    /// A sealed key's keyed digest (`SealedCard::digest`).
    Digest([u8; 32]),
}

impl ProductState {
    /// Whether a key imported in the clear (by an older version) is this one.
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(&KeyId::Clear(key.into()))
    }

    /// The SKU's cards, oldest first, deleted and archived ones included.
    pub fn card_ids(&self) -> impl Iterator<Item = CardId> + '_ {
        self.imports
            .iter()
            .flat_map(|(first, count)| (first.0..first.0 + count).map(CardId))
    }

    /// The SKU's cards: `imports` runs of `(first, count)`, oldest first.
    pub fn card_runs(&self) -> &[(CardId, u64)] {
        &self.imports
    }
}

/// A card key as the state keeps it: sealed (every key imported now), or in the clear as
/// an older version imported it, until a `CardsSealed` seals it. The engine never opens a
/// sealed key.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum CardKey {
    Clear(String),
    Sealed(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Holder {
    Available,
    Reserved(u32),
    Sold(u32),
    /// Deleted by an operator while available: out of the stock for good.
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CardSlot {
    pub sku_index: u32,
    pub key: CardKey,
    pub holder: Holder,
}

/// An order as lookups show it; the sled row of an order.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct OrderRecord {
    /// What creation fixed, never changed after: shared by every copy of the record (the
    /// view of recent changes, the mirror's batch, lookups), so a copy allocates only what
    /// changes. Encoded as a `NewOrder`.
    pub created: Arc<NewOrder>,
    pub status: OrderStatus,
    /// Keys held: reserved while awaiting payment, sold once delivered, none once lapsed.
    pub cards: Vec<CardId>,
    pub payment: Option<Payment>,
    pub paid_at_ms: Option<u64>,
    /// When the order reached `delivered`, `expired` or `manual_review`.
    pub settled_at_ms: Option<u64>,
    pub review_reason: Option<ReviewReason>,
}

impl OrderRecord {
    /// The order as its actor holds it.
    pub fn to_order(&self) -> Order {
        Order {
            status: self.status,
            payment: self.payment.clone(),
            ..Order::created(&self.created, self.cards.clone())
        }
    }
}

/// Which orders `check` walks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Every,
    InMemory,
}

/// What an applied event changed: the rows a mirror must rewrite.
#[derive(Default, Debug)]
pub struct Touched {
    pub sku: Option<Sku>,
    pub order: Option<OrderId>,
    /// The event created the order (its indexes are new).
    pub order_created: bool,
    /// Cards whose row changed: imported, sealed or deleted. Neither a reservation nor a
    /// sale is a card change: the order's record holds its keys and its status.
    pub cards: Vec<CardId>,
    /// The audit-trail entry this event added (its number, from 1).
    pub audit: Option<u64>,
    /// The reseller whose account (status, balance) changed.
    pub reseller: Option<ResellerId>,
    /// The ledger entry this event posted (its number, from 1).
    pub ledger_entry: Option<u64>,
    /// The reseller stream event this event added: (reseller, seq).
    pub stream: Option<(ResellerId, u64)>,
    /// The product whose listing (details, deleted count) changed.
    pub listing: Option<Sku>,
    /// The coupon whose row (uses, status) changed.
    pub coupon: Option<String>,
    /// The order (`order`) has terms: a coupon or a lookup password.
    pub order_terms: bool,
    /// The shop's identity changed.
    pub identity: bool,
}

/// The whole state is `Encode`/`Decode`: a snapshot is this struct, indexes included
/// (`storage` versions the bytes; a decoded state is re-checked before use). Decoding names
/// the encoding it reads (`StateEncoding`: snapshots from before archiving hold every order).
#[derive(Default, Encode, Decode)]
#[bincode(decode_context = "StateEncoding")]
pub struct ShopState {
    products: BTreeMap<Sku, ProductState>,
    skus: Vec<Sku>,
    /// The cards in memory, by index: all but the archived (`cards.rs`).
    cards: cards::CardTable,
    /// Orders in memory and the archive of settled ones (`orders.rs`).
    orders: orders::Orders,
    /// The orders in memory, by id and by idempotency key (`ShardedMap`: growing never
    /// rehashes them all at once).
    order_index: ShardedMap<OrderId, u32>,
    idempotency: ShardedMap<String, u32>,
    /// The operators' audit trail, oldest first (few entries: operators' actions).
    audit_trail: Vec<crate::events::OperatorAction>,
    /// Reseller accounts, their ledger and streams (`resellers.rs`).
    resellers: resellers::Resellers,
    /// Delivery mails waiting, sent and given up (`mail.rs`).
    outbox: mail::Outbox,
    /// Coupons, order terms and the lookup index (`coupons.rs`).
    terms: coupons::Terms,
    /// The shop's name, logo, banner and footer.
    identity: ShopIdentity,
}

impl ShopState {
    pub fn product(&self, sku: &Sku) -> Option<&ProductState> {
        self.products.get(sku)
    }

    pub fn products(&self) -> impl Iterator<Item = &ProductState> {
        self.products.values()
    }

    /// The card `card`, in memory or archived.
    pub fn card(&self, card: CardId) -> Option<Cow<'_, CardSlot>> {
        if let Some(slot) = self.hot_card(card) {
            return Some(Cow::Borrowed(slot));
        }
        if card.0 == 0 || card.0 > self.cards.len() as u64 {
            return None;
        }
        self.orders.cold()?.card(card).map(Cow::Owned)
    }

    /// Whether the card `card` is in memory: every card but the sold ones archived with
    /// their orders.
    pub fn holds_card(&self, card: CardId) -> bool {
        self.hot_card(card).is_some()
    }

    /// The card `card` if it is in memory.
    fn hot_card(&self, card: CardId) -> Option<&CardSlot> {
        let index = card.0.checked_sub(1)?;
        self.cards.get(usize::try_from(index).ok()?)
    }

    pub fn sku_of(&self, card: CardId) -> Option<Sku> {
        self.card(card)
            .map(|slot| self.skus[slot.sku_index as usize].clone())
    }

    /// The product a card's `sku_index` names.
    pub fn sku_at(&self, sku_index: u32) -> Option<&Sku> {
        self.skus.get(sku_index as usize)
    }

    pub fn card_key(&self, card: CardId) -> Option<Cow<'_, CardKey>> {
        match self.card(card)? {
            Cow::Borrowed(slot) => Some(Cow::Borrowed(&slot.key)),
            Cow::Owned(slot) => Some(Cow::Owned(slot.key)),
        }
    }

    /// The cards with ids in `cards`, in memory or archived, id rising. Archived cards are
    /// read `CARDS_READ_TOGETHER` ids at a time (a cursor each, not a lookup a card).
    pub fn for_each_card(&self, cards: Range<u64>, mut visit: impl FnMut(CardId, &CardSlot)) {
        let end = cards.end.min(self.cards.len() as u64 + 1);
        let mut start = cards.start.max(1);
        let mut archived = Vec::new();
        while start < end {
            let part = start..end.min(start.saturating_add(CARDS_READ_TOGETHER));
            archived.clear();
            if let Some(cold) = self.orders.cold() {
                cold.for_each_card_in(part.clone(), &mut |card, slot| {
                    archived.push((card, slot.clone()))
                });
            }
            let mut archived = archived.drain(..).peekable();
            for id in part.clone() {
                let card = CardId(id);
                if let Some(slot) = self.hot_card(card) {
                    visit(card, slot);
                } else if archived.peek().is_some_and(|(next, _)| *next == card) {
                    let (_, slot) = archived.next().expect("peeked");
                    visit(card, &slot);
                }
            }
            start = part.end;
        }
    }

    /// Whether product `sku` has a sealed key with this digest, in memory or archived.
    pub fn has_digest(&self, sku: &Sku, digest: &[u8; 32]) -> bool {
        let sku_index = self.skus.iter().position(|s| s == sku);
        sku_index.is_some_and(|sku_index| self.has_digest_at(sku_index, digest))
    }

    /// `has_digest` of the product at `sku_index`.
    fn has_digest_at(&self, sku_index: usize, digest: &[u8; 32]) -> bool {
        let product = &self.products[&self.skus[sku_index]];
        if product.keys.contains_key(&KeyId::Digest(*digest)) {
            return true;
        }
        product.archived_keys > 0
            && self
                .orders
                .cold()
                .is_some_and(|cold| cold.holds_digest(sku_index as u32, digest))
    }

    /// Cards whose key is still in the clear (imported by an older version), in id order.
    pub fn clear_cards(&self) -> impl Iterator<Item = (CardId, &str)> {
        self.cards
            .iter()
            .filter_map(|(index, slot)| match &slot.key {
                CardKey::Clear(key) => Some((CardId(index as u64 + 1), key.as_str())),
                CardKey::Sealed(_) => None,
            })
    }

    /// Cards ever imported, archived ones included.
    pub fn cards_count(&self) -> u64 {
        self.cards.len() as u64
    }

    /// The cards in memory, id rising.
    pub fn hot_cards(&self) -> impl Iterator<Item = (CardId, &CardSlot)> {
        self.cards
            .iter()
            .map(|(index, slot)| (CardId(index as u64 + 1), slot))
    }

    /// Cards in memory.
    pub fn hot_cards_count(&self) -> u64 {
        self.cards.hot_len() as u64
    }

    /// The id the next imported key gets.
    pub fn next_card_id(&self) -> CardId {
        CardId(self.cards.len() as u64 + 1)
    }

    /// Available keys of a SKU, oldest first (to seed the pool shards).
    pub fn available_cards(&self, sku: &Sku) -> Vec<CardId> {
        let Some(sku_index) = self.skus.iter().position(|s| s == sku) else {
            return Vec::new();
        };
        self.cards
            .iter()
            .filter(|(_, slot)| {
                slot.sku_index == sku_index as u32 && slot.holder == Holder::Available
            })
            .map(|(index, _)| CardId(index as u64 + 1))
            .collect()
    }

    /// Folds one committed event in. On `Err` nothing changed.
    pub fn apply(&mut self, event: &Event) -> Result<Touched, Violation> {
        let touched = self.apply_event(event)?;
        self.orders.applied();
        Ok(touched)
    }

    fn apply_event(&mut self, event: &Event) -> Result<Touched, Violation> {
        match event {
            Event::ProductCreated(product) => self.apply_product(product),
            Event::CardsImported {
                sku,
                first_card_id,
                keys,
            } => {
                let keys = keys
                    .iter()
                    .map(|k| (KeyId::Clear(k.as_str().into()), CardKey::Clear(k.clone())));
                self.apply_import(sku, *first_card_id, keys.collect())
            }
            Event::SealedCardsImported {
                sku,
                first_card_id,
                cards,
            } => {
                let keys = cards
                    .iter()
                    .map(|c| (KeyId::Digest(c.digest), CardKey::Sealed(c.sealed.clone())));
                self.apply_import(sku, *first_card_id, keys.collect())
            }
            Event::CardsSealed { cards } => self.apply_cards_sealed(cards),
            Event::OrderCreated(order) => self.apply_order_created(order, None),
            Event::OrderPlaced(placed) => self.apply_order_created(&placed.order, Some(placed)),
            Event::PaymentApplied {
                order_id,
                payment,
                at_ms,
                fulfilment,
            } => self.apply_payment(order_id, payment, *at_ms, fulfilment),
            Event::OrderExpired { order_id, at_ms } => self.apply_expiry(order_id, *at_ms),
            Event::OrderRefunded { order_id, at_ms } => self.apply_refund(order_id, *at_ms),
            Event::OperatorAction(action) => {
                self.audit_trail.push(action.clone());
                Ok(Touched {
                    audit: Some(self.audit_trail.len() as u64),
                    ..Touched::default()
                })
            }
            Event::ResellerCreated(reseller) => self.apply_reseller_created(reseller),
            Event::ResellerRevoked { reseller_id, at_ms } => {
                self.apply_reseller_revoked(*reseller_id, *at_ms)
            }
            Event::BalanceChanged {
                reseller_id,
                change,
                ..
            } => self.apply_balance_changed(*reseller_id, *change),
            Event::ResellerOrderPlaced(order) => self.apply_reseller_order(order),
            Event::WebhookDelivered {
                reseller_id, seq, ..
            } => self.apply_webhook_settled(*reseller_id, *seq, false),
            Event::WebhookParked {
                reseller_id, seq, ..
            } => self.apply_webhook_settled(*reseller_id, *seq, true),
            Event::WebhookReplayed {
                reseller_id, seq, ..
            } => self.apply_webhook_replayed(*reseller_id, *seq),
            Event::ResellerUpdated {
                reseller_id,
                change,
                ..
            } => self.apply_reseller_updated(*reseller_id, change),
            Event::MailOutboxOpened { at_ms } => self.apply_outbox_opened(*at_ms),
            Event::MailSent { order_id, .. } => self.apply_mail_sent(order_id),
            Event::MailFailed {
                order_id,
                attempt,
                error,
                at_ms,
            } => self.apply_mail_failed(order_id, *attempt, error, *at_ms),
            Event::ProductEdited { sku, changes, .. } => self.apply_product_edited(sku, changes),
            Event::CardsDeleted { sku, cards, .. } => self.apply_cards_deleted(sku, cards),
            Event::CouponCreated(coupon) => self.apply_coupon_created(coupon),
            Event::CouponDisabled { code, at_ms } => self.apply_coupon_disabled(code, *at_ms),
            Event::ShopIdentitySet { changes, .. } => self.apply_identity(changes),
        }
    }

    fn apply_product(&mut self, product: &Product) -> Result<Touched, Violation> {
        ensure!(
            !self.products.contains_key(&product.sku),
            "sku {} created twice",
            product.sku
        );
        self.skus.push(product.sku.clone());
        self.products.insert(
            product.sku.clone(),
            ProductState {
                product: product.clone(),
                stock: Stock::default(),
                details: ProductDetails::default(),
                deleted: 0,
                keys: HashMap::new(),
                archived_keys: 0,
                imports: Vec::new(),
            },
        );
        Ok(Touched {
            sku: Some(product.sku.clone()),
            ..Touched::default()
        })
    }

    fn apply_import(
        &mut self,
        sku: &Sku,
        first_card_id: CardId,
        keys: Vec<(KeyId, CardKey)>,
    ) -> Result<Touched, Violation> {
        ensure!(
            first_card_id == self.next_card_id(),
            "import at {first_card_id:?} leaves a gap"
        );
        let sku_index = self.skus.iter().position(|s| s == sku);
        let (Some(sku_index), Some(product)) = (sku_index, self.products.get(sku)) else {
            return Err(Violation(format!("import into unknown sku {sku}")));
        };
        let mut fresh = HashSet::with_capacity(keys.len());
        for (id, _) in &keys {
            let known = match id {
                KeyId::Digest(digest) => self.has_digest_at(sku_index, digest),
                KeyId::Clear(_) => product.keys.contains_key(id),
            };
            ensure!(!known, "key imported twice into {sku}");
            ensure!(
                fresh.insert(id),
                "key repeated inside one import into {sku}"
            );
        }
        let mut touched = Touched {
            sku: Some(sku.clone()),
            ..Touched::default()
        };
        let count = keys.len() as u64;
        let product = self.products.get_mut(sku).expect("looked up");
        match product.imports.last_mut() {
            Some((first, run)) if first.0 + *run == first_card_id.0 => *run += count,
            _ => product.imports.push((first_card_id, count)),
        }
        for (id, key) in keys {
            let card = CardId(self.cards.len() as u64 + 1);
            touched.cards.push(card);
            product.keys.insert(id, card);
            self.cards.push(CardSlot {
                sku_index: sku_index as u32,
                key,
                holder: Holder::Available,
            });
        }
        product.stock.imported += count;
        product.stock.available += count;
        Ok(touched)
    }

    /// Seals keys an older version imported in the clear: each card must hold a clear key,
    /// and its digest must be new to its product. Nothing else about the card changes.
    fn apply_cards_sealed(&mut self, cards: &[(CardId, SealedCard)]) -> Result<Touched, Violation> {
        let (mut seen, mut digests) = (HashSet::new(), HashSet::new());
        for (card, sealed) in cards {
            ensure!(
                seen.insert(*card),
                "card {card:?} sealed twice in one event"
            );
            let slot = self
                .hot_card(*card)
                .ok_or_else(|| Violation(format!("sealing unknown card {card:?}")))?;
            ensure!(
                matches!(slot.key, CardKey::Clear(_)),
                "card {card:?} is sealed already"
            );
            ensure!(
                !self.has_digest_at(slot.sku_index as usize, &sealed.digest)
                    && digests.insert((slot.sku_index, sealed.digest)),
                "card {card:?}'s key is imported twice (sealed)"
            );
        }
        let mut touched = Touched::default();
        for (card, sealed) in cards {
            let slot = self.cards.get_mut((card.0 - 1) as usize).expect("checked");
            let sku = self.skus[slot.sku_index as usize].clone();
            let key = std::mem::replace(&mut slot.key, CardKey::Sealed(sealed.sealed.clone()));
            let product = self.products.get_mut(&sku).expect("card's sku");
            if let CardKey::Clear(clear) = key {
                product.keys.remove(&KeyId::Clear(clear.into()));
            }
            product.keys.insert(KeyId::Digest(sealed.digest), *card);
            touched.cards.push(*card);
        }
        Ok(touched)
    }

    fn check_cards(&self, sku: &Sku, cards: &[CardId], holder: Holder) -> Result<(), Violation> {
        let mut seen = HashSet::new();
        for card in cards {
            ensure!(
                seen.insert(*card),
                "card {card:?} listed twice in one event"
            );
            let slot = self
                .hot_card(*card)
                .ok_or_else(|| Violation(format!("unknown card {card:?}")))?;
            ensure!(
                &self.skus[slot.sku_index as usize] == sku,
                "card {card:?} is not of {sku}"
            );
            ensure!(
                slot.holder == holder,
                "card {card:?} is {:?}, expected {holder:?}",
                slot.holder
            );
        }
        Ok(())
    }

    fn set_holders(&mut self, cards: &[CardId], holder: Holder) {
        for card in cards {
            let slot = self.cards.get_mut((card.0 - 1) as usize);
            slot.expect("a checked card is in memory").holder = holder;
        }
    }

    fn apply_order_created(
        &mut self,
        order: &Arc<NewOrder>,
        placed: Option<&PlacedOrder>,
    ) -> Result<Touched, Violation> {
        let id = &order.order_id;
        ensure!(self.index_of(id).is_none(), "order {id} created twice");
        let product = self
            .products
            .get(&order.sku)
            .ok_or_else(|| Violation(format!("order {id} of unknown sku")))?;
        ensure!(order.quantity > 0, "order {id} has quantity 0");
        ensure!(
            order.cards.len() == order.quantity as usize,
            "order {id} reserves {} keys for quantity {}",
            order.cards.len(),
            order.quantity
        );
        ensure!(
            !product.details.hidden,
            "order {id} of hidden {}",
            order.sku
        );
        ensure!(
            order.quantity <= product.details.order_quantity_max(),
            "order {id} is over the purchase limit of {}",
            order.sku
        );
        let gross_cents = product.product.price_cents * u64::from(order.quantity);
        let coupon = placed.and_then(|p| p.coupon.as_ref());
        self.check_coupon_use(order, coupon, gross_cents)?;
        if let Some(idempotency) = &order.idempotency {
            // A key is remembered for `IDEMPOTENCY_WINDOW_MS`; after that it may start a
            // new order.
            let earlier = self.order_by_idempotency_key(&idempotency.key);
            ensure!(
                earlier.is_none_or(|first| !idempotency_live(&first, order.created_at_ms)),
                "idempotency key of order {id} used twice within its window"
            );
        }
        self.check_cards(&order.sku, &order.cards, Holder::Available)?;
        let index = self.orders.made();
        self.set_holders(&order.cards, Holder::Reserved(index));
        let stock = &mut self.products.get_mut(&order.sku).expect("checked").stock;
        stock.available -= order.cards.len() as u64;
        stock.reserved += order.cards.len() as u64;
        if let Some(idempotency) = &order.idempotency {
            self.idempotency.insert(idempotency.key.clone(), index);
        }
        self.order_index.insert(id.clone(), index);
        // Only the token's digest is kept: the event's order is shared as it is when it holds
        // the digest (as every event this version makes does), copied when an older version's
        // event holds the token in the clear.
        let created = if crate::ids::is_token_digest(&order.token) {
            order.clone()
        } else {
            let mut created = NewOrder::clone(order);
            created.token = crate::ids::stored_token(&order.token);
            Arc::new(created)
        };
        let terms = placed.map(|p| self.add_terms(index, p));
        self.orders.push(OrderRecord {
            created,
            status: OrderStatus::AwaitingPayment,
            cards: order.cards.clone(),
            payment: None,
            paid_at_ms: None,
            settled_at_ms: None,
            review_reason: None,
        });
        Ok(Touched {
            sku: Some(order.sku.clone()),
            order: Some(id.clone()),
            order_created: true,
            order_terms: terms.is_some(),
            coupon: terms.flatten(),
            ..Touched::default()
        })
    }

    fn apply_payment(
        &mut self,
        order_id: &OrderId,
        payment: &Payment,
        at_ms: u64,
        fulfilment: &Fulfilment,
    ) -> Result<Touched, Violation> {
        let index = self.hot_index(order_id)?;
        let record = self.orders.hot(index).expect("brought in");
        let from = record.status;
        let paid = transition(from, OrderEventKind::PaymentConfirmed)
            .map_err(|e| Violation(format!("order {order_id}: {e}")))?;
        ensure!(
            payment.amount_cents == record.created.amount_cents,
            "order {order_id} paid {} for {}",
            payment.amount_cents,
            record.created.amount_cents
        );
        let sku = record.created.sku.clone();
        let quantity = record.created.quantity as usize;
        let held = record.cards.clone();
        let lapsed = from != OrderStatus::AwaitingPayment;
        let touched = Touched {
            sku: Some(sku.clone()),
            order: Some(order_id.clone()),
            ..Touched::default()
        };
        let (status, review_reason) = match fulfilment {
            Fulfilment::Delivered { newly_reserved } => {
                let to = transition(paid, OrderEventKind::Deliver).expect("paid -> delivered");
                if lapsed {
                    ensure!(
                        newly_reserved.len() == quantity,
                        "late delivery of {order_id} short"
                    );
                    self.check_cards(&sku, newly_reserved, Holder::Available)?;
                } else {
                    ensure!(newly_reserved.is_empty(), "order {order_id} reserved twice");
                    self.check_cards(&sku, &held, Holder::Reserved(index))?;
                }
                (to, None)
            }
            Fulfilment::ManualReview { reason } => {
                // Only a foreign channel's payment reviews an order that holds its keys
                // (they go back to the pool); a sold-out late payment has none.
                ensure!(
                    lapsed || *reason == ReviewReason::ForeignChannel,
                    "order {order_id} sent to review while holding keys"
                );
                if !lapsed {
                    self.check_cards(&sku, &held, Holder::Reserved(index))?;
                }
                let to = transition(paid, OrderEventKind::SendToReview).expect("paid -> review");
                (to, Some(*reason))
            }
        };
        // The order's keys after the payment, when they change.
        let mut cards_after = None;
        if let (Fulfilment::ManualReview { .. }, false) = (fulfilment, lapsed) {
            self.set_holders(&held, Holder::Available);
            let stock = &mut self.products.get_mut(&sku).expect("order's sku").stock;
            stock.reserved -= held.len() as u64;
            stock.available += held.len() as u64;
            cards_after = Some(Vec::new());
        }
        let delivered = matches!(fulfilment, Fulfilment::Delivered { .. });
        if let Fulfilment::Delivered { newly_reserved } = fulfilment {
            let cards: Vec<CardId> = if lapsed { newly_reserved.clone() } else { held };
            self.set_holders(&cards, Holder::Sold(index));
            let stock = &mut self.products.get_mut(&sku).expect("order's sku").stock;
            if lapsed {
                stock.available -= cards.len() as u64;
            } else {
                stock.reserved -= cards.len() as u64;
            }
            stock.sold += cards.len() as u64;
            cards_after = Some(cards);
        }
        let record = self.orders.set_status(index, status);
        if let Some(cards) = cards_after {
            record.cards = cards;
        }
        record.payment = Some(payment.clone());
        record.paid_at_ms = Some(at_ms);
        record.settled_at_ms = Some(at_ms);
        record.review_reason = review_reason;
        if delivered {
            self.enqueue_delivery_mail(index);
        }
        Ok(touched)
    }

    fn apply_expiry(&mut self, order_id: &OrderId, at_ms: u64) -> Result<Touched, Violation> {
        let index = self.hot_index(order_id)?;
        let record = self.orders.hot(index).expect("brought in");
        let to = transition(record.status, OrderEventKind::Expire)
            .map_err(|e| Violation(format!("order {order_id}: {e}")))?;
        ensure!(
            at_ms >= record.created.expires_at_ms,
            "order {order_id} expired before its deadline"
        );
        let sku = record.created.sku.clone();
        let cards = record.cards.clone();
        self.check_cards(&sku, &cards, Holder::Reserved(index))?;
        self.set_holders(&cards, Holder::Available);
        let stock = &mut self.products.get_mut(&sku).expect("order's sku").stock;
        stock.reserved -= cards.len() as u64;
        stock.available += cards.len() as u64;
        let record = self.orders.set_status(index, to);
        record.cards.clear();
        record.settled_at_ms = Some(at_ms);
        Ok(Touched {
            sku: Some(sku),
            order: Some(order_id.clone()),
            ..Touched::default()
        })
    }

    fn apply_refund(&mut self, order_id: &OrderId, at_ms: u64) -> Result<Touched, Violation> {
        let index = self.hot_index(order_id)?;
        let record = self.orders.hot(index).expect("brought in");
        let to = transition(record.status, OrderEventKind::Refund)
            .map_err(|e| Violation(format!("order {order_id}: {e}")))?;
        ensure!(
            record.cards.is_empty(),
            "refunded order {order_id} holds keys"
        );
        let sku = record.created.sku.clone();
        self.orders.set_status(index, to).settled_at_ms = Some(at_ms);
        Ok(Touched {
            sku: Some(sku),
            order: Some(order_id.clone()),
            ..Touched::default()
        })
    }

    pub fn audit_count(&self) -> u64 {
        self.audit_trail.len() as u64
    }

    /// The operators' audit trail, oldest first; entry `i` has number `i + 1`.
    pub fn audit_trail(&self) -> &[crate::events::OperatorAction] {
        &self.audit_trail
    }

    /// Re-derives every invariant from scratch; returns each broken one.
    pub fn check(&self) -> Vec<Violation> {
        self.check_orders_of(Walk::Every)
    }

    /// `check` without reading the archived orders (checked before they were archived, and
    /// by `panshi audit`): what a start and a snapshot build run, in time that does not grow
    /// with history.
    pub fn check_in_memory(&self) -> Vec<Violation> {
        self.check_orders_of(Walk::InMemory)
    }

    fn check_orders_of(&self, walk: Walk) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut recount: Vec<Stock> = vec![Stock::default(); self.skus.len()];
        let mut deleted: Vec<u64> = vec![0; self.skus.len()];
        for (_, slot) in self.cards.iter() {
            let stock = &mut recount[slot.sku_index as usize];
            stock.imported += 1;
            match slot.holder {
                Holder::Available => stock.available += 1,
                Holder::Reserved(_) => stock.reserved += 1,
                Holder::Sold(_) => stock.sold += 1,
                Holder::Deleted => {
                    // A deleted key left the stock: it is not counted as imported.
                    stock.imported -= 1;
                    deleted[slot.sku_index as usize] += 1;
                }
            }
        }
        // Archived cards are sold: counted by their products, and read back in a full check
        // (`check_card_owners`, which reads them once for both).
        let archived_read = self.check_orders(walk, &mut violations);
        let counted: Vec<u64> = self
            .skus
            .iter()
            .map(|sku| self.products[sku].archived_keys)
            .collect();
        if let Some(found) = &archived_read {
            for (sku, (counted, found)) in self.skus.iter().zip(counted.iter().zip(found)) {
                if counted != found {
                    violations.push(Violation(format!(
                        "{sku}: {counted} keys archived but the archive holds {found}"
                    )));
                }
            }
        }
        let archived = archived_read.unwrap_or(counted);
        for (stock, archived) in recount.iter_mut().zip(&archived) {
            stock.imported += archived;
            stock.sold += archived;
        }
        for (sku_index, sku) in self.skus.iter().enumerate() {
            let product = &self.products[sku];
            let counted = recount[sku_index];
            if !product.stock.is_conserved() {
                violations.push(Violation(format!(
                    "{sku}: stock {:?} not conserved",
                    product.stock
                )));
            }
            if product.stock != counted {
                violations.push(Violation(format!(
                    "{sku}: counters {:?} but the keys say {counted:?}",
                    product.stock
                )));
            }
            if product.deleted != deleted[sku_index] {
                violations.push(Violation(format!(
                    "{sku}: {} keys deleted but the keys say {}",
                    product.deleted, deleted[sku_index]
                )));
            }
            if product.keys.len() as u64 + product.archived_keys
                != counted.imported + deleted[sku_index]
            {
                violations.push(Violation(format!("{sku}: duplicate keys imported")));
            }
            for (key, card) in &product.keys {
                let slot = self.hot_card(*card);
                if *card != UNRECORDED_CARD
                    && slot.is_none_or(|slot| slot.sku_index as usize != sku_index)
                {
                    violations.push(Violation(format!(
                        "{sku}: key {key:?} names card {card:?}, not one of its cards in memory"
                    )));
                }
            }
        }
        self.check_resellers(&mut violations);
        self.check_outbox(&mut violations);
        self.check_coupons(&mut violations);
        violations
    }

    /// Every reserved or sold key is listed by the order its holder names, among the orders
    /// `walked`, and every key an order lists is held as that order expects (`owner`: key ->
    /// the order listing it and the holder it wants, from `check_order`). `Walk::Every` reads
    /// the archived cards too (each sold, none also in memory) and returns how many each
    /// product has; otherwise it reads only those that orders in memory list.
    fn check_card_owners(
        &self,
        owner: &HashMap<CardId, (u32, Holder)>,
        walked: impl Fn(u32) -> bool,
        walk: Walk,
        violations: &mut Vec<Violation>,
    ) -> Option<Vec<u64>> {
        let mut listed = 0_usize;
        let mut visit = |card: CardId, slot: &CardSlot, violations: &mut Vec<Violation>| {
            let listing = owner.get(&card);
            if let Some((index, expected)) = listing {
                listed += 1;
                if slot.holder != *expected {
                    violations.push(Violation(format!(
                        "card {card:?} of order {index} is {:?}, not {expected:?}",
                        slot.holder
                    )));
                }
            }
            if let Holder::Reserved(index) | Holder::Sold(index) = slot.holder {
                if walked(index) && listing.map(|(i, _)| *i) != Some(index) {
                    violations.push(Violation(format!(
                        "card {card:?} is {:?} but that order does not list it",
                        slot.holder
                    )));
                }
            }
        };
        for (at, slot) in self.cards.iter() {
            visit(CardId(at as u64 + 1), slot, violations);
        }
        let mut archived = None;
        if walk == Walk::Every {
            let mut found = vec![0_u64; self.skus.len()];
            if let Some(cold) = self.orders.cold() {
                let all = 1..self.cards.len() as u64 + 1;
                cold.for_each_card_in(all, &mut |card, slot| {
                    match found.get_mut(slot.sku_index as usize) {
                        Some(count) if matches!(slot.holder, Holder::Sold(_)) => *count += 1,
                        _ => violations.push(Violation(format!(
                            "archived card {card:?} is {:?} of product {}",
                            slot.holder, slot.sku_index
                        ))),
                    }
                    if self.hot_card(card).is_some() {
                        violations.push(Violation(format!(
                            "card {card:?} is both in memory and archived"
                        )));
                    }
                    visit(card, slot, violations)
                });
            }
            archived = Some(found);
        }
        if listed == owner.len() {
            return archived;
        }
        // Keys listed but not visited: archived ones (in memory only), or none at all.
        for (card, (index, expected)) in owner {
            if self.hot_card(*card).is_some() {
                continue;
            }
            match self.card(*card) {
                Some(slot) if walk == Walk::InMemory => {
                    if slot.holder != *expected {
                        violations.push(Violation(format!(
                            "card {card:?} of order {index} is {:?}, not {expected:?}",
                            slot.holder
                        )));
                    }
                }
                Some(_) => {}
                None => violations.push(Violation(format!(
                    "order {index} lists card {card:?}, which is not a card"
                ))),
            }
        }
        archived
    }

    fn check_order(
        &self,
        index: u32,
        record: &OrderRecord,
        owner: &mut HashMap<CardId, (u32, Holder)>,
        violations: &mut Vec<Violation>,
    ) {
        let id = &record.created.order_id;
        let quantity = record.created.quantity as usize;
        let expected_holder = match record.status {
            OrderStatus::AwaitingPayment => Some(Holder::Reserved(index)),
            OrderStatus::Delivered => Some(Holder::Sold(index)),
            OrderStatus::Paid => {
                violations.push(Violation(format!(
                    "order {id} was paid but neither delivered nor in manual review"
                )));
                None
            }
            _ => None,
        };
        match expected_holder {
            Some(holder) => {
                if record.cards.len() != quantity {
                    violations.push(Violation(format!(
                        "order {id} holds a wrong number of keys"
                    )));
                }
                for card in &record.cards {
                    if let Some((other, _)) = owner.insert(*card, (index, holder)) {
                        let other = self.order_at(other).map(|r| r.created.order_id.clone());
                        violations.push(Violation(format!(
                            "card {card:?} is in orders {other:?} and {id}"
                        )));
                    }
                }
            }
            None if !record.cards.is_empty() => {
                violations.push(Violation(format!(
                    "{:?} order {id} holds keys",
                    record.status
                )));
            }
            None => {}
        }
        if !crate::ids::is_token_digest(&record.created.token) {
            violations.push(Violation(format!(
                "order {id} keeps its token in the clear"
            )));
        }
        if record.status.is_paid() && record.payment.is_none() {
            violations.push(Violation(format!("order {id} is paid without a payment")));
        }
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

    /// A product as snapshots before format 3 hold it: its keys without their cards, and
    /// the list of its cards. It reads back with its cards as runs, and keys it cannot
    /// tie to a card stay in memory (`UNRECORDED_CARD`).
    #[test]
    fn a_product_of_an_older_snapshot_reads_back() {
        let product = Product {
            sku: Sku::parse("game-1").unwrap(),
            name: "Game".into(),
            price_cents: 100,
            currency: crate::Currency::parse("CNY").unwrap(),
            created_at_ms: 1,
        };
        let keys: HashSet<KeyId> = [KeyId::Digest([1; 32]), KeyId::Clear("K".into())].into();
        let cards = vec![CardId(1), CardId(2), CardId(3), CardId(7), CardId(8)];
        let config = bincode::config::standard();
        let stock = Stock {
            imported: 5,
            available: 5,
            ..Stock::default()
        };
        let old = (
            product,
            stock,
            ProductDetails::default(),
            0_u64,
            keys,
            cards,
        );
        let bytes = bincode::encode_to_vec(&old, config).unwrap();
        let (decoded, read): (ProductState, usize) =
            bincode::decode_from_slice_with_context(&bytes, config, StateEncoding::HotOrders)
                .unwrap();
        assert_eq!(read, bytes.len());
        assert_eq!(decoded.imports, vec![(CardId(1), 3), (CardId(7), 2)]);
        assert_eq!(decoded.keys.len(), 2);
        assert!(decoded.keys.values().all(|card| *card == UNRECORDED_CARD));
        assert_eq!(decoded.archived_keys, 0);
        // And as format 3 writes it.
        let bytes = bincode::encode_to_vec(&decoded, config).unwrap();
        let (again, _): (ProductState, usize) =
            bincode::decode_from_slice_with_context(&bytes, config, StateEncoding::HotCards)
                .unwrap();
        assert_eq!(again.imports, decoded.imports);
        assert_eq!(again.keys, decoded.keys);
    }
}
