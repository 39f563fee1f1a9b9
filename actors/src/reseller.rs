//! Resellers: accounts, prepaid balances, bulk purchases and the per-reseller stream.
//!
//! Invariants: a purchase is all or nothing (stock checked first, then the balance; keys
//! reserved from the pool shards, one event committed, keys given back on any refusal);
//! one reseller's purchases and balance changes are serialised by a per-reseller lock, so
//! two concurrent purchases can never overdraw (and `ShopState::apply` refuses an overdraft
//! anyway); the stream hands out every event once, in seq order, with no gap.
//!
//! Key decision: the stream's seq is part of the committed event, so replay after a restart
//! numbers events exactly as the live feed did. A subscriber is registered (under the
//! reseller's lock, so no purchase is between commit and publish) before its replay bound
//! is read; live events at or below what replay sent are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use engine::events::{
    BalanceChange, Event, Idempotency, NewReseller, ResellerChange, ResellerOrder,
};
use engine::ids::hex128;
use engine::ledger::DISCOUNT_BP_MAX;
use engine::ledger::{wholesale_charge_cents, EntryKind, LedgerRefusal, ADJUSTMENT_CENTS_MAX};
use engine::state::{api_key_sha256, RESELLER_NAME_LEN_MAX, RESELLER_ORDER_QUANTITY_MAX};
use engine::{OrderId, OrderStatus, Rejection, ResellerId, Sku};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::{OrderView, Shop, ShopError};

/// Stream events a subscriber may have waiting; a reader that falls further behind is
/// disconnected (it resumes from its cursor).
pub const STREAM_SUBSCRIBER_BUFFER_EVENTS: usize = 256;
/// Bytes of card keys (plus a fixed overhead per event) a subscriber may have waiting: a
/// bulk order can carry 1,000 keys of up to 1 KiB, so the event count alone does not bound
/// memory. A reader over either bound is disconnected.
pub const STREAM_SUBSCRIBER_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// What an event costs a subscriber's buffer beyond its keys.
const STREAM_EVENT_OVERHEAD_BYTES: usize = 128;
/// Live stream subscribers per reseller.
pub const STREAM_SUBSCRIBERS_PER_RESELLER_MAX: usize = 16;
/// Stream events read from the state per replay step.
pub const STREAM_REPLAY_PAGE_EVENTS: usize = 64;
/// Longest note on a balance change.
pub const BALANCE_NOTE_LEN_MAX: usize = 500;
/// Longest webhook URL.
pub const WEBHOOK_URL_LEN_MAX: usize = 2_048;
const _: () = assert!(STREAM_REPLAY_PAGE_EVENTS <= STREAM_SUBSCRIBER_BUFFER_EVENTS);

/// Prefixes of the secrets handed out once, so that a leaked one is recognisable.
const API_KEY_PREFIX: &str = "psk_";
const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// A created reseller with its secrets, shown this once.
pub struct CreatedReseller {
    pub reseller_id: ResellerId,
    pub api_key: String,
    pub webhook_secret: String,
}

pub struct ResellerRequest {
    pub name: String,
    pub webhook_url: Option<String>,
    pub discount_bp: u32,
}

/// A bulk purchase, validated at the edge for shape only.
pub struct PurchaseRequest {
    pub sku: Sku,
    pub quantity: u32,
    pub idempotency_key: Option<String>,
    /// A hash of the request body, to tell a retry from another request with the same key.
    pub fingerprint: u64,
}

/// The answer to a purchase (and to its idempotent retries).
pub struct Receipt {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub cards: Vec<String>,
    pub amount_cents: u64,
    pub balance_cents: u64,
}

/// One event of a reseller's stream.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    pub seq: u64,
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub sku: Sku,
    pub amount_cents: u64,
    pub cards: Vec<String>,
}

impl StreamEvent {
    /// What holding this event costs a subscriber's buffer.
    fn buffered_bytes(&self) -> usize {
        STREAM_EVENT_OVERHEAD_BYTES + self.cards.iter().map(String::len).sum::<usize>()
    }
}

/// One live reader's queue: events are shared between readers, and the bytes it holds
/// are counted so that a stalled reader is cut off at `STREAM_SUBSCRIBER_BUFFER_BYTES`.
struct Subscriber {
    sender: mpsc::Sender<Arc<StreamEvent>>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Subscriber {
    /// Queues `event`; false when the reader is gone or over either bound.
    fn offer(&self, event: &Arc<StreamEvent>, bytes: usize) -> bool {
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        queued <= STREAM_SUBSCRIBER_BUFFER_BYTES && self.sender.try_send(event.clone()).is_ok()
    }
}

pub struct Account {
    pub reseller_id: ResellerId,
    pub name: String,
    pub balance_cents: u64,
}

/// A reseller's live subscribers and the last seq known durable.
struct Hub {
    durable_seq: u64,
    subscribers: Vec<Subscriber>,
}

/// The resellers' runtime state: the per-reseller locks and stream hubs.
#[derive(Default)]
pub struct Resellers {
    locks: Mutex<HashMap<ResellerId, Arc<tokio::sync::Mutex<()>>>>,
    hubs: Mutex<HashMap<ResellerId, Hub>>,
    /// Serialises reseller creation (ids are dense).
    creating: tokio::sync::Mutex<()>,
    /// Per reseller, wakes its webhook worker when a stream event becomes durable.
    pub(crate) webhook_wakers: Mutex<HashMap<ResellerId, Arc<tokio::sync::Notify>>>,
}

fn validate_reseller(request: &ResellerRequest) -> Result<(), Rejection> {
    let name = &request.name;
    if name.trim().is_empty() || name.len() > RESELLER_NAME_LEN_MAX {
        return Err(Rejection::InvalidInput("name must be 1 to 200 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::InvalidInput("name holds control characters"));
    }
    if request.discount_bp > DISCOUNT_BP_MAX {
        return Err(Rejection::InvalidInput("discount_bp must be 0 to 10000"));
    }
    if request
        .webhook_url
        .as_ref()
        .is_some_and(|url| url.len() > WEBHOOK_URL_LEN_MAX)
    {
        return Err(Rejection::InvalidInput("webhook_url is too long"));
    }
    Ok(())
}

fn ledger_rejection(refusal: LedgerRefusal) -> ShopError {
    match refusal {
        LedgerRefusal::UnknownAccount => Rejection::UnknownReseller.into(),
        LedgerRefusal::InsufficientBalance => Rejection::InsufficientBalance.into(),
        LedgerRefusal::BalanceTooLarge => {
            Rejection::InvalidInput("the balance would exceed its maximum").into()
        }
        LedgerRefusal::BadAmount => Rejection::InvalidInput("amount_cents is out of range").into(),
    }
}

impl Shop {
    pub(crate) fn resellers(&self) -> &Resellers {
        &self.0.resellers
    }

    pub(crate) fn reseller_lock(&self, id: ResellerId) -> Arc<tokio::sync::Mutex<()>> {
        self.resellers().locks.lock().entry(id).or_default().clone()
    }

    fn random_secret(&self, prefix: &str) -> String {
        let entropy = &self.0.entropy;
        let (high, low) = (entropy.random_u128(), entropy.random_u128());
        format!("{prefix}{}{}", hex128(high), hex128(low))
    }

    /// A webhook secret as the log keeps it: sealed for its reseller.
    fn seal_webhook_secret(&self, secret: &str, id: ResellerId) -> String {
        let random = self.0.entropy.random_u128().to_le_bytes();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&random[..12]);
        self.0.sealer.seal(secret, &id.to_string(), nonce)
    }

    /// A reseller's webhook secret, opened for signing.
    pub(crate) fn webhook_secret(
        &self,
        account: &engine::state::ResellerState,
    ) -> Result<String, crate::seal::SealError> {
        let id = account.reseller.reseller_id;
        self.0
            .sealer
            .open(&account.reseller.webhook_secret, &id.to_string())
    }

    /// Seals the webhook secrets an older version stored in the clear: each is committed
    /// again, sealed (revoked accounts too). Returns how many; the log's older records
    /// still hold those secrets until they are purged.
    pub async fn seal_legacy_secrets(&self) -> Result<usize, ShopError> {
        let legacy: Vec<(ResellerId, String)> = {
            let state = self.store().state();
            state
                .resellers()
                .filter(|a| !crate::seal::is_sealed(&a.reseller.webhook_secret))
                .map(|a| (a.reseller.reseller_id, a.reseller.webhook_secret.clone()))
                .collect()
        };
        for (id, secret) in &legacy {
            let lock = self.reseller_lock(*id);
            let _serial = lock.lock().await;
            let event = Event::ResellerUpdated {
                reseller_id: *id,
                change: ResellerChange::WebhookSecretRotated {
                    webhook_secret: self.seal_webhook_secret(secret, *id),
                },
                at_ms: self.now_ms(),
            };
            self.commit(&event).await?;
        }
        Ok(legacy.len())
    }

    /// Every reseller's webhook secret opens with the configured sealing key. Checked at
    /// start, so that a changed or missing key stops the server rather than every webhook.
    pub fn check_sealed_secrets(&self) -> Result<(), String> {
        let state = self.store().state();
        for account in state.resellers() {
            if let Err(error) = self.webhook_secret(account) {
                return Err(format!(
                    "the webhook secret of reseller {}: {error}",
                    account.reseller.reseller_id
                ));
            }
        }
        Ok(())
    }

    /// Commits a change to a live reseller, serialised with its purchases (a purchase
    /// priced before a discount change must not commit after it).
    async fn update_reseller(
        &self,
        id: ResellerId,
        change: ResellerChange,
    ) -> Result<(), ShopError> {
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        {
            let state = self.store().state();
            let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
            if account.revoked_at_ms.is_some() {
                return Err(Rejection::ResellerRevoked.into());
            }
        }
        let new_key = matches!(change, ResellerChange::ApiKeyRotated { .. });
        let event = Event::ResellerUpdated {
            reseller_id: id,
            change,
            at_ms: self.now_ms(),
        };
        self.commit(&event).await?;
        if new_key {
            self.end_streams(id);
        }
        Ok(())
    }

    /// A new API key for a live reseller, returned this once; the old key gets 401 from
    /// the moment this returns, and the streams opened with it are closed.
    pub async fn rotate_api_key(&self, id: ResellerId) -> Result<String, ShopError> {
        let api_key = self.random_secret(API_KEY_PREFIX);
        let change = ResellerChange::ApiKeyRotated {
            api_key_sha256: api_key_sha256(&api_key),
        };
        self.update_reseller(id, change).await?;
        Ok(api_key)
    }

    /// A new webhook secret for a live reseller, returned this once; every delivery from
    /// now on (retries of a pending one too) is signed with it.
    pub async fn rotate_webhook_secret(&self, id: ResellerId) -> Result<String, ShopError> {
        let secret = self.random_secret(WEBHOOK_SECRET_PREFIX);
        let change = ResellerChange::WebhookSecretRotated {
            webhook_secret: self.seal_webhook_secret(&secret, id),
        };
        self.update_reseller(id, change).await?;
        Ok(secret)
    }

    /// The wholesale discount of a live reseller's purchases from now on.
    pub async fn set_discount(&self, id: ResellerId, discount_bp: u32) -> Result<(), ShopError> {
        if discount_bp > DISCOUNT_BP_MAX {
            return Err(Rejection::InvalidInput("discount_bp must be 0 to 10000").into());
        }
        self.update_reseller(id, ResellerChange::DiscountSet { discount_bp })
            .await
    }

    /// Opens a reseller account (balance 0). The API key and webhook secret are returned
    /// this once; only the key's SHA-256 is kept, and the secret sealed.
    pub async fn create_reseller(
        &self,
        request: ResellerRequest,
    ) -> Result<CreatedReseller, ShopError> {
        validate_reseller(&request)?;
        let api_key = self.random_secret(API_KEY_PREFIX);
        let webhook_secret = self.random_secret(WEBHOOK_SECRET_PREFIX);
        let _creating = self.resellers().creating.lock().await;
        let reseller_id = self.store().state().next_reseller_id();
        let event = Event::ResellerCreated(Box::new(NewReseller {
            reseller_id,
            name: request.name,
            api_key_sha256: api_key_sha256(&api_key),
            webhook_secret: self.seal_webhook_secret(&webhook_secret, reseller_id),
            webhook_url: request.webhook_url,
            discount_bp: request.discount_bp,
            created_at_ms: self.now_ms(),
        }));
        self.commit(&event).await?;
        Ok(CreatedReseller {
            reseller_id,
            api_key,
            webhook_secret,
        })
    }

    /// Revokes a reseller's key for good. Revoking twice answers the same.
    pub async fn revoke_reseller(&self, id: ResellerId) -> Result<(), ShopError> {
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        let revoked = {
            let state = self.store().state();
            let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
            account.revoked_at_ms.is_some()
        };
        if revoked {
            return Ok(());
        }
        let at_ms = self.now_ms();
        let event = Event::ResellerRevoked {
            reseller_id: id,
            at_ms,
        };
        self.commit(&event).await?;
        self.end_streams(id);
        Ok(())
    }

    /// Tops up (`amount_cents > 0`) or corrects (`< 0`) a balance; answers the new balance.
    pub async fn adjust_balance(
        &self,
        id: ResellerId,
        amount_cents: i64,
        note: String,
    ) -> Result<u64, ShopError> {
        let magnitude = amount_cents.unsigned_abs();
        if magnitude == 0 || magnitude > ADJUSTMENT_CENTS_MAX {
            return Err(
                Rejection::InvalidInput("amount_cents must be non-zero and in range").into(),
            );
        }
        if note.len() > BALANCE_NOTE_LEN_MAX || note.chars().any(char::is_control) {
            return Err(
                Rejection::InvalidInput("note is too long or holds control characters").into(),
            );
        }
        let (change, kind) = if amount_cents > 0 {
            let change = BalanceChange::TopUp {
                amount_cents: magnitude,
            };
            (change, EntryKind::TopUp)
        } else {
            let change = BalanceChange::Correction {
                amount_cents: magnitude,
            };
            (change, EntryKind::Correction)
        };
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        let entry = self
            .store()
            .state()
            .ledger()
            .plan(id, kind, magnitude)
            .map_err(ledger_rejection)?;
        let at_ms = self.now_ms();
        let event = Event::BalanceChanged {
            reseller_id: id,
            change,
            note,
            at_ms,
        };
        self.commit(&event).await?;
        Ok(entry.balance_after_cents)
    }

    /// The reseller an API key belongs to, unless unknown or revoked. Purchases and
    /// streams check the key again under the reseller's lock (`still_in_force`), so one
    /// authenticated just before a rotation cannot act after it.
    pub fn reseller_by_key(&self, api_key: &str) -> Option<ResellerKey> {
        let key_sha256 = api_key_sha256(api_key);
        let state = self.store().state();
        let account = state.reseller_by_key_hash(&key_sha256)?;
        account.revoked_at_ms.is_none().then_some(ResellerKey {
            id: account.reseller.reseller_id,
            key_sha256,
        })
    }

    /// Refuses a key rotated out or revoked since it was authenticated (call under the
    /// reseller's lock).
    fn still_in_force(&self, who: ResellerKey) -> Result<(), ShopError> {
        if self.reseller_key_in_force(who.id) == Some(who.key_sha256) {
            Ok(())
        } else {
            Err(Rejection::UnknownReseller.into())
        }
    }

    pub fn reseller_account(&self, id: ResellerId) -> Result<Account, ShopError> {
        let state = self.store().state();
        let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
        Ok(Account {
            reseller_id: id,
            name: account.reseller.name.clone(),
            balance_cents: state.ledger().balance_cents(id).unwrap_or(0),
        })
    }

    /// A reseller's own order, as the buyer's lookup shows it; another's is unknown.
    pub fn reseller_order(
        &self,
        id: ResellerId,
        order_id: &OrderId,
    ) -> Result<OrderView, ShopError> {
        let owner = self.store().state().reseller_of_order(order_id);
        if owner != Some(id) {
            return Err(Rejection::UnknownOrder.into());
        }
        let record = self
            .store()
            .order(order_id)?
            .ok_or(Rejection::UnknownOrder)?;
        Ok(self.view_of(record))
    }

    /// The receipt of an order already placed (an idempotent retry's answer).
    fn receipt_of(&self, order_id: &OrderId) -> Result<Receipt, ShopError> {
        let state = self.store().state();
        let record = state.order(order_id).ok_or(Rejection::UnknownOrder)?;
        let charge = state
            .reseller_charge(order_id)
            .ok_or(Rejection::UnknownOrder)?;
        Ok(Receipt {
            order_id: order_id.clone(),
            status: record.status,
            cards: crate::cards::keys_of(&state, self.sealer(), &record.cards),
            amount_cents: charge.amount_cents,
            balance_cents: charge.balance_after_cents,
        })
    }

    /// A bulk purchase, all or nothing: 409 sold out is checked first, then the balance;
    /// a retry with the same idempotency key answers the first receipt.
    pub async fn reseller_purchase(
        &self,
        who: ResellerKey,
        request: PurchaseRequest,
    ) -> Result<Receipt, ShopError> {
        let id = who.id;
        if request.quantity == 0 || request.quantity > RESELLER_ORDER_QUANTITY_MAX {
            return Err(Rejection::InvalidInput("quantity must be 1 to 1000").into());
        }
        if let Some(key) = &request.idempotency_key {
            crate::check_idempotency_key(key)?;
        }
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        self.still_in_force(who)?;
        let planned = match self.plan_purchase(id, &request)? {
            Ok(planned) => planned,
            Err(first) => return self.receipt_of(&first),
        };
        let cards = self
            .reserve(&request.sku, request.quantity as usize)
            .await?;
        let entropy = &self.0.entropy;
        let now_ms = self.now_ms();
        let order_id = OrderId::generate(now_ms, entropy.random_u64());
        let order = ResellerOrder {
            token: engine::ids::token_digest(&self.order_token(&order_id)),
            order_id,
            reseller_id: id,
            trace_id: hex128(entropy.random_u128()),
            sku: request.sku.clone(),
            cards: cards.clone(),
            amount_cents: planned.amount_cents,
            idempotency: request.idempotency_key.map(|key| Idempotency {
                key,
                fingerprint: request.fingerprint,
            }),
            stream_seq: planned.stream_seq,
            created_at_ms: now_ms,
        };
        let order_id = order.order_id.clone();
        if let Err(error) = self
            .commit(&Event::ResellerOrderPlaced(Box::new(order)))
            .await
        {
            if error.is_refused_before_logging() {
                self.give_back(&request.sku, cards).await;
            }
            return Err(error);
        }
        metrics::counter!("panshi_reseller_orders_total").increment(1);
        // The stream event went out as the order was applied (`publish_stream`).
        self.receipt_of(&order_id)
    }

    /// Checks a purchase against the state: `Err(first order)` for an idempotent retry.
    fn plan_purchase(
        &self,
        id: ResellerId,
        request: &PurchaseRequest,
    ) -> Result<Result<Planned, OrderId>, ShopError> {
        let state = self.store().state();
        let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
        if account.revoked_at_ms.is_some() {
            return Err(Rejection::UnknownReseller.into());
        }
        if let Some(key) = &request.idempotency_key {
            if let Some((first, fingerprint)) = state.reseller_order_by_idempotency_key(id, key) {
                if fingerprint != request.fingerprint {
                    return Err(ShopError::IdempotencyMismatch);
                }
                return Ok(Err(first.created.order_id.clone()));
            }
        }
        let product = state.product(&request.sku).ok_or(Rejection::UnknownSku)?;
        if product.product.currency != self.settings().currency {
            return Err(
                Rejection::InvalidInput("the product is not in the shop's currency").into(),
            );
        }
        if product.stock.available < u64::from(request.quantity) {
            return Err(Rejection::SoldOut.into());
        }
        let price = product.product.price_cents;
        let amount_cents =
            wholesale_charge_cents(price, request.quantity, account.reseller.discount_bp)
                .ok_or(Rejection::InvalidInput("order amount is too large"))?;
        let balance_cents = state.ledger().balance_cents(id).unwrap_or(0);
        if amount_cents > balance_cents {
            return Err(Rejection::InsufficientBalance.into());
        }
        Ok(Ok(Planned {
            amount_cents,
            stream_seq: state.stream_seq(id) + 1,
        }))
    }

    /// The hash of a live reseller's API key (`None` once revoked).
    fn reseller_key_in_force(&self, id: ResellerId) -> Option<[u8; 32]> {
        let state = self.store().state();
        let account = state.reseller(id)?;
        account
            .revoked_at_ms
            .is_none()
            .then_some(account.reseller.api_key_sha256)
    }

    /// Ends every open stream of a reseller whose key was withdrawn (called under the
    /// reseller's lock, after the commit): a leaked key must not keep reading new keys.
    fn end_streams(&self, id: ResellerId) {
        self.resellers().hubs.lock().remove(&id);
    }

    /// Hands stream event `seq`, just applied, to the live subscribers and wakes the
    /// webhook worker. Called by the store's applier in commit order, on every node, so a
    /// stream read from any node goes live. A full or closed subscriber is dropped.
    pub(crate) fn publish_stream(&self, id: ResellerId, seq: u64) {
        self.webhook_waker(id).notify_one();
        let mut hubs = self.resellers().hubs.lock();
        let Some(hub) = hubs.get_mut(&id) else {
            return;
        };
        let event = {
            let state = self.store().state();
            let Some(item) = state
                .reseller_stream(id, seq - 1, seq, 1)
                .into_iter()
                .next()
            else {
                return;
            };
            let record = item.record;
            Arc::new(StreamEvent {
                seq: item.seq,
                order_id: record.created.order_id.clone(),
                status: item.status,
                sku: record.created.sku.clone(),
                amount_cents: record.created.amount_cents,
                cards: crate::cards::keys_of(&state, self.sealer(), &record.cards),
            })
        };
        let bytes = event.buffered_bytes();
        hub.durable_seq = hub.durable_seq.max(seq);
        hub.subscribers
            .retain(|subscriber| subscriber.offer(&event, bytes));
    }

    /// A reseller's stream from `cursor`: every event after it, then live.
    pub async fn reseller_stream(&self, who: ResellerKey, cursor: u64) -> Result<Feed, ShopError> {
        let id = who.id;
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        // Under the lock: a rotation committed after authentication refuses the stream
        // here, and one committed later closes it (`end_streams`).
        self.still_in_force(who)?;
        let (sender, live) = mpsc::channel(STREAM_SUBSCRIBER_BUFFER_EVENTS);
        let mut hubs = self.resellers().hubs.lock();
        // Under the lock no purchase is between commit and publish: the state's seq is durable.
        let hub = hubs.entry(id).or_insert_with(|| Hub {
            durable_seq: self.store().state().stream_seq(id),
            subscribers: Vec::new(),
        });
        hub.subscribers.retain(|s| !s.sender.is_closed());
        if hub.subscribers.len() >= STREAM_SUBSCRIBERS_PER_RESELLER_MAX {
            return Err(ShopError::TooManySubscribers);
        }
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        hub.subscribers.push(Subscriber {
            sender,
            queued_bytes: queued_bytes.clone(),
        });
        Ok(Feed {
            shop: self.clone(),
            reseller: id,
            opened_with: who.key_sha256,
            sent_seq: cursor,
            replay_through: hub.durable_seq,
            replayed: VecDeque::new(),
            live,
            queued_bytes,
        })
    }
}

struct Planned {
    amount_cents: u64,
    stream_seq: u64,
}

/// A reseller as authenticated by its API key: the key is checked again under the
/// reseller's lock before it buys or subscribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResellerKey {
    pub id: ResellerId,
    key_sha256: [u8; 32],
}

/// What a stream reader gets next.
pub enum FeedItem {
    Event(Arc<StreamEvent>),
    /// The reader fell behind and was disconnected; it resumes from its cursor.
    FellBehind,
    /// The key the stream was opened with was rotated or revoked: the stream ends.
    KeyWithdrawn,
}

/// A subscriber's view of the stream: replay up to the bound read at subscription, then
/// the live events, each seq exactly once.
pub struct Feed {
    shop: Shop,
    reseller: ResellerId,
    /// The API key (hash) in force when the stream opened.
    opened_with: [u8; 32],
    /// The last seq handed out (the cursor).
    sent_seq: u64,
    replay_through: u64,
    replayed: VecDeque<Arc<StreamEvent>>,
    live: mpsc::Receiver<Arc<StreamEvent>>,
    /// Bytes waiting in `live`, shared with the publishing side.
    queued_bytes: Arc<AtomicUsize>,
}

impl Feed {
    pub fn cursor(&self) -> u64 {
        self.sent_seq
    }

    /// Whether the key the stream was opened with still holds.
    fn key_holds(&self) -> bool {
        self.shop.reseller_key_in_force(self.reseller) == Some(self.opened_with)
    }

    pub async fn next(&mut self) -> FeedItem {
        // Replay reads the state directly: it must stop the moment the key is withdrawn,
        // not after it has served the whole history.
        let replaying = !self.replayed.is_empty() || self.sent_seq < self.replay_through;
        if replaying && !self.key_holds() {
            return FeedItem::KeyWithdrawn;
        }
        if self.replayed.is_empty() && self.sent_seq < self.replay_through {
            self.replay_page();
        }
        if let Some(event) = self.replayed.pop_front() {
            self.sent_seq = event.seq;
            return FeedItem::Event(event);
        }
        loop {
            let Some(event) = self.live.recv().await else {
                return if self.key_holds() {
                    FeedItem::FellBehind
                } else {
                    FeedItem::KeyWithdrawn
                };
            };
            self.queued_bytes
                .fetch_sub(event.buffered_bytes(), Ordering::AcqRel);
            if event.seq <= self.sent_seq {
                continue;
            }
            if event.seq != self.sent_seq + 1 {
                // Never expected: resuming from the cursor is always correct.
                return FeedItem::FellBehind;
            }
            self.sent_seq = event.seq;
            return FeedItem::Event(event);
        }
    }

    fn replay_page(&mut self) {
        let state = self.shop.store().state();
        let page = state.reseller_stream(
            self.reseller,
            self.sent_seq,
            self.replay_through,
            STREAM_REPLAY_PAGE_EVENTS,
        );
        // A page is bounded in bytes as the live queue is: the rest is read next time.
        let mut bytes = 0;
        for item in page {
            if bytes >= STREAM_SUBSCRIBER_BUFFER_BYTES {
                break;
            }
            let record = item.record;
            let event = StreamEvent {
                seq: item.seq,
                order_id: record.created.order_id.clone(),
                status: item.status,
                sku: record.created.sku.clone(),
                amount_cents: record.created.amount_cents,
                cards: crate::cards::keys_of(&state, self.shop.sealer(), &record.cards),
            };
            bytes += event.buffered_bytes();
            self.replayed.push_back(Arc::new(event));
        }
    }
}
