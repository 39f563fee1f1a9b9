//! `ShopState`: the whole shop as the log describes it. Pure: `apply` folds one committed
//! event in, refusing (and leaving the state untouched) any event that would break an
//! invariant; `check` re-derives every invariant from scratch. storage/ mirrors it into sled,
//! `panshi audit` and the simulator replay logs through it, and the actors are seeded from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::chunked::Chunked;
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

mod coupons;
mod listings;
mod mail;
mod orders;
mod resellers;
pub use coupons::{contact_key, CouponState, OrderTerms};
pub use listings::CARDS_PER_DELETION_MAX;
pub use mail::{MailTries, Outbox};
pub use orders::{may_be_archived, ColdOrders, StateEncoding};
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

#[derive(Encode, Decode)]
pub struct ProductState {
    pub product: Product,
    pub stock: Stock,
    /// The listing beyond what creation fixed (`ProductEdited`).
    pub details: ProductDetails,
    /// Keys deleted by operators: no longer in `stock.imported`, never sold.
    pub deleted: u64,
    /// Every key ever imported (deleted ones too, so a deleted key is not imported again).
    /// What deduplicates them: a key in the clear, or a sealed key's digest.
    keys: HashSet<KeyId>,
    /// The SKU's cards in import order, for operators' listings.
    cards: Vec<CardId>,
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
        self.keys.contains(&KeyId::Clear(key.into()))
    }

    /// The SKU's cards, oldest first, deleted ones included.
    pub fn card_ids(&self) -> &[CardId] {
        &self.cards
    }

    /// Whether a sealed key with this digest is the product's.
    pub fn has_digest(&self, digest: &[u8; 32]) -> bool {
        self.keys.contains(&KeyId::Digest(*digest))
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

#[derive(Encode, Decode)]
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
    /// Every card, by index (`Chunked`: growing never copies them).
    cards: Chunked<CardSlot>,
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

    pub fn card(&self, card: CardId) -> Option<&CardSlot> {
        let index = card.0.checked_sub(1)?;
        self.cards.get(usize::try_from(index).ok()?)
    }

    pub fn sku_of(&self, card: CardId) -> Option<Sku> {
        self.card(card)
            .map(|slot| self.skus[slot.sku_index as usize].clone())
    }

    pub fn card_key(&self, card: CardId) -> Option<&CardKey> {
        self.card(card).map(|slot| &slot.key)
    }

    /// Cards whose key is still in the clear (imported by an older version), in id order.
    pub fn clear_cards(&self) -> impl Iterator<Item = (CardId, &str)> {
        self.cards
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match &slot.key {
                CardKey::Clear(key) => Some((CardId(index as u64 + 1), key.as_str())),
                CardKey::Sealed(_) => None,
            })
    }

    pub fn cards_count(&self) -> u64 {
        self.cards.len() as u64
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
        (1..=self.cards.len() as u64)
            .map(CardId)
            .filter(|id| {
                let slot = &self.cards[(id.0 - 1) as usize];
                slot.sku_index == sku_index as u32 && slot.holder == Holder::Available
            })
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
                keys: HashSet::new(),
                cards: Vec::new(),
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
        let product = self.products.get_mut(sku);
        let (Some(sku_index), Some(product)) = (sku_index, product) else {
            return Err(Violation(format!("import into unknown sku {sku}")));
        };
        let mut fresh = HashSet::with_capacity(keys.len());
        for (id, _) in &keys {
            ensure!(!product.keys.contains(id), "key imported twice into {sku}");
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
        for (id, key) in keys {
            let card = CardId(self.cards.len() as u64 + 1);
            touched.cards.push(card);
            product.cards.push(card);
            product.keys.insert(id);
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
                .card(*card)
                .ok_or_else(|| Violation(format!("sealing unknown card {card:?}")))?;
            ensure!(
                matches!(slot.key, CardKey::Clear(_)),
                "card {card:?} is sealed already"
            );
            let product = &self.products[&self.skus[slot.sku_index as usize]];
            ensure!(
                !product.has_digest(&sealed.digest)
                    && digests.insert((slot.sku_index, sealed.digest)),
                "card {card:?}'s key is imported twice (sealed)"
            );
        }
        let mut touched = Touched::default();
        for (card, sealed) in cards {
            let index = (card.0 - 1) as usize;
            let sku = self.skus[self.cards[index].sku_index as usize].clone();
            let key = std::mem::replace(
                &mut self.cards[index].key,
                CardKey::Sealed(sealed.sealed.clone()),
            );
            let product = self.products.get_mut(&sku).expect("card's sku");
            if let CardKey::Clear(clear) = key {
                product.keys.remove(&KeyId::Clear(clear.into()));
            }
            product.keys.insert(KeyId::Digest(sealed.digest));
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
                .card(*card)
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
            self.cards[(card.0 - 1) as usize].holder = holder;
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
        for slot in &self.cards {
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
            if product.keys.len() as u64 != counted.imported + deleted[sku_index] {
                violations.push(Violation(format!("{sku}: duplicate keys imported")));
            }
        }
        self.check_orders(walk, &mut violations);
        self.check_resellers(&mut violations);
        self.check_outbox(&mut violations);
        self.check_coupons(&mut violations);
        violations
    }

    /// Every reserved or sold key is listed by the order its holder names, among the orders
    /// `walked` (`owner`: key -> the order listing it, from `check_order`).
    fn check_card_owners(
        &self,
        owner: &HashMap<CardId, u32>,
        walked: impl Fn(u32) -> bool,
        violations: &mut Vec<Violation>,
    ) {
        for (at, slot) in self.cards.iter().enumerate() {
            let card = CardId(at as u64 + 1);
            if let Holder::Reserved(index) | Holder::Sold(index) = slot.holder {
                if walked(index) && owner.get(&card) != Some(&index) {
                    violations.push(Violation(format!(
                        "card {card:?} is {:?} but that order does not list it",
                        slot.holder
                    )));
                }
            }
        }
    }

    fn check_order(
        &self,
        index: u32,
        record: &OrderRecord,
        owner: &mut HashMap<CardId, u32>,
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
                    if let Some(other) = owner.insert(*card, index) {
                        let other = self.order_at(other).map(|r| r.created.order_id.clone());
                        violations.push(Violation(format!(
                            "card {card:?} is in orders {other:?} and {id}"
                        )));
                    }
                    if self.card(*card).map(|slot| slot.holder) != Some(holder) {
                        violations.push(Violation(format!("card {card:?} of {id} not {holder:?}")));
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
