//! The facts Panshi commits to its log. Each event is a complete, self-contained fact: replay
//! never depends on an allocation algorithm, a clock or a random source, so the same log
//! always rebuilds the same state. storage/ frames and versions these; it never interprets them.

use bincode::{Decode, Encode};
use std::sync::Arc;

use crate::coupon::{Coupon, CouponUse};
use crate::ids::{CardId, OrderId, ResellerId, Sku};
use crate::listing::{IdentityChange, ProductChange};
use crate::money::Currency;

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Event {
    ProductCreated(Product),
    /// Keys already deduplicated against the SKU; ids are `first_card_id ..` in order.
    CardsImported {
        sku: Sku,
        first_card_id: CardId,
        keys: Vec<String>,
    },
    /// Shared, not copied, by the state's record of the order (encoded as a `NewOrder`).
    OrderCreated(Arc<NewOrder>),
    PaymentApplied {
        order_id: OrderId,
        payment: Payment,
        at_ms: u64,
        fulfilment: Fulfilment,
    },
    OrderExpired {
        order_id: OrderId,
        at_ms: u64,
    },
    /// An operator refunded a paid order that could not be fulfilled (manual review).
    OrderRefunded {
        order_id: OrderId,
        at_ms: u64,
    },
    /// The audit trail: who did what, when, to what. Changes no shop state.
    OperatorAction(OperatorAction),
    /// A reseller account opened (its ledger account at 0).
    ResellerCreated(Box<NewReseller>),
    /// A reseller's key stops working, for good.
    ResellerRevoked {
        reseller_id: ResellerId,
        at_ms: u64,
    },
    /// An operator moved a reseller's prepaid balance.
    BalanceChanged {
        reseller_id: ResellerId,
        change: BalanceChange,
        note: String,
        at_ms: u64,
    },
    /// A wholesale purchase: keys straight from Available to Sold, the charge debited, and
    /// one event on the reseller's stream, all in this one fact.
    ResellerOrderPlaced(Box<ResellerOrder>),
    /// A reseller's webhook receiver acknowledged (2xx) stream event `seq`, any seq not yet
    /// settled (each event has its own retry schedule); the delivery cursor moves past every
    /// settled seq that follows it.
    WebhookDelivered {
        reseller_id: ResellerId,
        seq: u64,
        at_ms: u64,
    },
    /// Stream event `seq` exhausted its retries: it is parked for operators and counts as
    /// settled, like a delivery.
    WebhookParked {
        reseller_id: ResellerId,
        seq: u64,
        attempts: u32,
        at_ms: u64,
    },
    /// An operator's replay of a parked event was acknowledged: it leaves the parked list.
    WebhookReplayed {
        reseller_id: ResellerId,
        seq: u64,
        at_ms: u64,
    },
    /// An operator changed a live reseller's credentials or terms. (Appended last: the log
    /// encodes a variant by its index.)
    ResellerUpdated {
        reseller_id: ResellerId,
        change: ResellerChange,
        at_ms: u64,
    },
    /// The mail outbox opens (the first start with a mail server): from now on every order
    /// delivered to an e-mail contact gets a delivery mail. Orders delivered before are not
    /// mailed, so configuring a mail server never writes to a shop's past buyers.
    MailOutboxOpened {
        at_ms: u64,
    },
    /// The mail server accepted the delivery mail of an order.
    MailSent {
        order_id: OrderId,
        at_ms: u64,
    },
    /// Try number `attempt` (the previous + 1) to send an order's delivery mail failed; the
    /// `MAIL_ATTEMPTS_MAX`th gives the mail up, for operators to see.
    MailFailed {
        order_id: OrderId,
        attempt: u32,
        error: String,
        at_ms: u64,
    },
    /// Keys imported sealed: like `CardsImported`, each key kept only sealed (actors'
    /// `seal`, the card id as associated data) with a keyed digest to deduplicate by.
    /// (Appended after the mail events: the log encodes a variant by its index, so new
    /// variants only ever go last.)
    SealedCardsImported {
        sku: Sku,
        first_card_id: CardId,
        cards: Vec<SealedCard>,
    },
    /// Keys an older version imported in the clear, sealed now (same ids, same keys).
    CardsSealed {
        cards: Vec<(CardId, SealedCard)>,
    },
    /// An operator edited a product's listing (name, price, description, visibility,
    /// purchase limit, usage note, image, category), all changes at once. Stock and order
    /// history are untouched.
    ProductEdited {
        sku: Sku,
        changes: Vec<ProductChange>,
        at_ms: u64,
    },
    /// An operator deleted unsold keys: they leave the stock for good (no longer counted as
    /// imported) and can never be reserved or sold. Only available keys can be deleted.
    CardsDeleted {
        sku: Sku,
        cards: Vec<CardId>,
        at_ms: u64,
    },
    /// A buyer order with a coupon or a lookup password (the plain `OrderCreated` has
    /// neither); otherwise exactly an `OrderCreated`.
    OrderPlaced(Box<PlacedOrder>),
    /// An operator created a coupon (its code unused so far).
    CouponCreated(Coupon),
    /// An operator withdrew a coupon: no order may use it from now on.
    CouponDisabled {
        code: String,
        at_ms: u64,
    },
    /// An operator set the shop's name, logo, banner, footer, support contact or terms.
    ShopIdentitySet {
        changes: Vec<IdentityChange>,
        at_ms: u64,
    },
}

/// A card key at rest: sealed, with a keyed digest of the key (per SKU) so that an import
/// is deduplicated without opening anything. The engine never reads either.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SealedCard {
    pub digest: [u8; 32],
    pub sealed: Vec<u8>,
}

/// A buyer order with what the plain `OrderCreated` lacks.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PlacedOrder {
    /// Its `amount_cents` is the gross amount less the coupon's discount. Shared, not
    /// copied, by the state's record of the order (encoded as a `NewOrder`).
    pub order: Arc<NewOrder>,
    pub coupon: Option<CouponUse>,
    /// A slow salted hash of the buyer's lookup password (dujiaoka's 查询密码), in the
    /// actors' `lookup` format; the engine never reads it.
    pub lookup_password_hash: Option<String>,
}

/// What a `ResellerUpdated` changes.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ResellerChange {
    /// A new API key: the old one stops working at once. Only the new key's SHA-256.
    ApiKeyRotated { api_key_sha256: [u8; 32] },
    /// A new webhook secret, sealed like the first; it signs every delivery from now on.
    WebhookSecretRotated { webhook_secret: String },
    /// The wholesale discount of purchases from now on, in basis points.
    DiscountSet { discount_bp: u32 },
}

/// A new reseller. The API key itself is never stored: only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct NewReseller {
    pub reseller_id: ResellerId,
    pub name: String,
    pub api_key_sha256: [u8; 32],
    /// Signs webhook deliveries; shown once, kept because signing needs it, and kept
    /// sealed (actors `seal`: authenticated encryption under the operator's sealing key).
    /// The engine never reads it.
    pub webhook_secret: String,
    pub webhook_url: Option<String>,
    /// Wholesale discount in basis points (see `ledger::wholesale_charge_cents`).
    pub discount_bp: u32,
    pub created_at_ms: u64,
}

/// A signed balance change: positive tops up, negative corrects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum BalanceChange {
    TopUp { amount_cents: u64 },
    Correction { amount_cents: u64 },
}

/// A reseller's bulk purchase, delivered at once.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ResellerOrder {
    pub order_id: OrderId,
    pub reseller_id: ResellerId,
    /// Secret of the order's record (buyer-style lookups), 128 random bits in hex.
    pub token: String,
    pub trace_id: String,
    pub sku: Sku,
    /// Taken from the pool; sold by this event. Their count is the quantity.
    pub cards: Vec<CardId>,
    /// What the ledger charges: the discounted price of the keys.
    pub amount_cents: u64,
    /// Scoped to the reseller.
    pub idempotency: Option<Idempotency>,
    /// This order's event on the reseller's stream: the previous seq + 1.
    pub stream_seq: u64,
    pub created_at_ms: u64,
}

/// One entry of the operators' append-only audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct OperatorAction {
    /// Who acted (the operator credential's holder and where from).
    pub by: String,
    /// `confirm_payment`, `refund`, ...
    pub action: String,
    /// What it was done to (an order id, a SKU).
    pub subject: String,
    pub note: String,
    pub at_ms: u64,
}

impl Event {
    /// The order an event concerns, if any: the unit of per-order serialisation.
    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            Event::OrderCreated(order) => Some(&order.order_id),
            Event::PaymentApplied { order_id, .. }
            | Event::OrderExpired { order_id, .. }
            | Event::OrderRefunded { order_id, .. } => Some(order_id),
            Event::ResellerOrderPlaced(order) => Some(&order.order_id),
            Event::OrderPlaced(placed) => Some(&placed.order.order_id),
            Event::ProductCreated(_)
            | Event::CardsImported { .. }
            | Event::OperatorAction(_)
            | Event::ResellerCreated(_)
            | Event::ResellerRevoked { .. }
            | Event::BalanceChanged { .. }
            | Event::WebhookDelivered { .. }
            | Event::WebhookParked { .. }
            | Event::WebhookReplayed { .. }
            | Event::ResellerUpdated { .. }
            | Event::MailOutboxOpened { .. }
            | Event::MailSent { .. }
            | Event::MailFailed { .. }
            | Event::ProductEdited { .. }
            | Event::CardsDeleted { .. }
            | Event::CouponCreated(_)
            | Event::CouponDisabled { .. }
            | Event::ShopIdentitySet { .. }
            | Event::SealedCardsImported { .. }
            | Event::CardsSealed { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub price_cents: u64,
    pub currency: Currency,
    pub created_at_ms: u64,
}

/// A created order, with the keys reserved for it and everything its first answer showed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct NewOrder {
    pub order_id: OrderId,
    /// Secret for buyer lookups, 128 random bits in hex.
    pub token: String,
    pub trace_id: String,
    pub sku: Sku,
    pub quantity: u32,
    pub amount_cents: u64,
    pub currency: Currency,
    pub contact: String,
    /// The channel the buyer asked for (a channel name or a payment method).
    pub channel: String,
    /// The channel chosen and the URL where the buyer pays.
    pub payment_channel: String,
    pub payment_url: String,
    /// The gateway's reference for the payment (a Stripe checkout session id), or empty.
    pub payment_ref: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub cards: Vec<CardId>,
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and a fingerprint of the request it first came with.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: u64,
}

/// A verified payment: which gateway transaction paid how much.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Payment {
    /// Shared when cloned (a payment passes through the route, the shop, the order's actor
    /// and the state); encoded as strings.
    pub channel: Arc<str>,
    pub gateway_trade_no: Arc<str>,
    pub amount_cents: u64,
}

impl Payment {
    /// A built-in channel's name (`"epay"`) for its payments, made once per thread: a
    /// payment then counts a reference to it instead of allocating the name.
    pub fn channel_named(channel: &'static str) -> Arc<str> {
        use std::cell::RefCell;
        thread_local! {
            static NAMES: RefCell<Vec<(&'static str, Arc<str>)>> = const { RefCell::new(Vec::new()) };
        }
        NAMES.with_borrow_mut(|names| {
            if let Some((_, name)) = names.iter().find(|(n, _)| *n == channel) {
                return name.clone();
            }
            let name: Arc<str> = channel.into();
            names.push((channel, name.clone()));
            name
        })
    }

    pub fn same_transaction(&self, other: &Payment) -> bool {
        self.channel == other.channel && self.gateway_trade_no == other.gateway_trade_no
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Fulfilment {
    /// Delivered: the order's reserved keys, plus `newly_reserved` for a late payment.
    Delivered { newly_reserved: Vec<CardId> },
    /// Paid but not fulfillable; an operator must act (restock and deliver, or refund).
    ManualReview { reason: ReviewReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ReviewReason {
    /// The payment arrived after the reservation lapsed and the stock was gone.
    SoldOutAfterLapse,
    /// A verified payment came through a channel the order was not created on (nor one of
    /// its method's fallbacks): never delivered on its own, an operator decides. The keys
    /// the order held go back to the pool. (Appended last: bincode encodes the index.)
    ForeignChannel,
}

impl ReviewReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewReason::SoldOutAfterLapse => "sold_out_after_lapse",
            ReviewReason::ForeignChannel => "foreign_channel",
        }
    }
}
