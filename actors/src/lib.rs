//! Panshi's actors: the supervised, message-driven runtime around the engine.
//!
//! - `OrderActor`: one per live order; owns its payment, delivery, expiry timer and live
//!   subscribers. Started on demand from storage (the `Directory` is its supervisor: an order
//!   whose actor is gone is reloaded from sled on the next message).
//! - `PoolShard`: a disjoint slice of one SKU's keys (default 4 shards per SKU), supervised.
//! - `Catalog`: serialises product creation and imports, supervised.
//!
//! Invariants: an actor changes its own copy of state only after the event is durable;
//! reserved keys return to a pool only after the expiry that frees them is durable; every
//! mailbox is bounded.
//!
//! Design decision: actors are thin. They ask the engine what an input means, ask storage to
//! commit the resulting event (which validates it again against the whole shop), and apply
//! it once durable. A crash loses only unacknowledged work; recovery is a log replay, which
//! is also why the release build aborts on panic instead of unwinding into odd states.

pub mod catalog;
pub mod order;
pub mod pool;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use engine::events::{Event, Fulfilment, Idempotency, NewOrder, Payment, Product};
use engine::ids::hex128;
use engine::money::{format_cents, AMOUNT_CENTS_MAX};
use engine::order::{CONTACT_LEN_MAX, ORDER_QUANTITY_MAX};
use engine::payment::{epay_submit_url, signatures_equal};
use engine::{CardId, Currency, Order, OrderId, OrderRecord, OrderStatus, Rejection, Sku, Stock};
use parking_lot::{Mutex, RwLock};
use storage::Store;
use tokio::sync::mpsc;

pub use catalog::ImportOutcome;
use order::{Directory, Pay, Subscribe};
pub use order::{OrderUpdate, PayOutcome};
use pool::SkuPool;

/// Longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the shop is at capacity; retry shortly")]
    Busy,
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    #[error("this idempotency key was used with another request")]
    IdempotencyMismatch,
    #[error("storage: {0}")]
    Storage(storage::Error),
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
}

impl From<storage::Error> for ShopError {
    fn from(error: storage::Error) -> Self {
        match error {
            storage::Error::Busy => ShopError::Busy,
            other => ShopError::Storage(other),
        }
    }
}

impl ShopError {
    /// Whether the event was refused before it reached the log, so what it held may be
    /// given back. After a log failure nothing is given back: the state is ahead of the log.
    pub fn is_refused_before_logging(&self) -> bool {
        matches!(
            self,
            ShopError::Busy | ShopError::Storage(storage::Error::Violation(_))
        )
    }
}

/// Wall-clock time in Unix milliseconds. The simulator passes its own.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Randomness for ids and secrets. The real one is a CSPRNG; the simulator passes a seeded one.
pub trait Entropy: Send + Sync + 'static {
    fn random_u64(&self) -> u64;
    fn random_u128(&self) -> u128;
}

pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn random_u64(&self) -> u64 {
        rand::random()
    }
    fn random_u128(&self) -> u128 {
        rand::random()
    }
}

#[derive(Clone, Debug)]
pub struct EpaySettings {
    pub pid: String,
    pub key: String,
    pub gateway_url: String,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub order_ttl_ms: u64,
    pub shards_per_sku: usize,
    pub currency: Currency,
    /// Base URL gateways and buyers reach this shop at (notify and return URLs).
    pub public_url: String,
    pub epay: Option<EpaySettings>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Order,
    PoolShard,
    Catalog,
}

impl ActorKind {
    pub const ALL: [ActorKind; 3] = [ActorKind::Order, ActorKind::PoolShard, ActorKind::Catalog];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Order => "order",
            ActorKind::PoolShard => "pool_shard",
            ActorKind::Catalog => "catalog",
        }
    }
}

/// Live counts and restarts per actor kind.
#[derive(Default)]
pub struct Health {
    live: [AtomicI64; 3],
    started: [AtomicU64; 3],
    restarts: [AtomicU64; 3],
}

#[derive(Debug, Clone, Copy)]
pub struct KindHealth {
    pub kind: ActorKind,
    pub live: i64,
    pub started: u64,
    pub restarts: u64,
}

impl Health {
    fn index(kind: ActorKind) -> usize {
        kind as usize
    }

    pub fn started(&self, kind: ActorKind) {
        self.live[Self::index(kind)].fetch_add(1, Ordering::Relaxed);
        self.started[Self::index(kind)].fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("panshi_actors_live", "kind" => kind.as_str()).increment(1.0);
    }

    pub fn stopped(&self, kind: ActorKind) {
        self.live[Self::index(kind)].fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("panshi_actors_live", "kind" => kind.as_str()).decrement(1.0);
    }

    pub fn restarted(&self, kind: ActorKind) {
        self.restarts[Self::index(kind)].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("panshi_actor_restarts_total", "kind" => kind.as_str()).increment(1);
    }

    pub fn snapshot(&self) -> Vec<KindHealth> {
        ActorKind::ALL
            .iter()
            .map(|kind| KindHealth {
                kind: *kind,
                live: self.live[Self::index(*kind)].load(Ordering::Relaxed),
                started: self.started[Self::index(*kind)].load(Ordering::Relaxed),
                restarts: self.restarts[Self::index(*kind)].load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A buyer's order request, validated at the edge for shape only.
pub struct OrderRequest {
    pub sku: Sku,
    pub quantity: u32,
    pub contact: String,
    pub channel: String,
    pub idempotency_key: Option<String>,
    /// A hash of the request body, to tell a retry from a different request with the same key.
    pub fingerprint: u64,
}

/// An order as its buyer may see it.
pub struct OrderView {
    pub record: OrderRecord,
    /// The keys, once delivered.
    pub keys: Vec<String>,
}

struct Inner {
    store: Arc<Store>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    pools: RwLock<HashMap<Sku, Arc<SkuPool>>>,
    pool_arbiter: Arbiter,
    directory: Directory,
    catalog: OnceLock<Addr<catalog::Catalog>>,
    idempotency_in_flight: Mutex<HashSet<String>>,
    health: Health,
}

/// The handle every edge and actor uses; cheap to clone.
#[derive(Clone)]
pub struct Shop(Arc<Inner>);

/// Removes an idempotency key from the in-flight set when the request ends, however it ends.
struct InFlight<'a> {
    shop: &'a Shop,
    key: Option<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shop.0.idempotency_in_flight.lock().remove(&key);
        }
    }
}

fn validate_contact(contact: &str) -> Result<(), Rejection> {
    if contact.trim().is_empty() {
        return Err(Rejection::InvalidInput("contact is required"));
    }
    if contact.len() > CONTACT_LEN_MAX || contact.chars().any(char::is_control) {
        return Err(Rejection::InvalidInput(
            "contact is too long or holds control characters",
        ));
    }
    Ok(())
}

impl Shop {
    /// Starts the runtime on an open store: the catalogue, one pool per product, and an
    /// actor for every order still awaiting payment or review. Call inside an actix system.
    pub fn start(
        store: Arc<Store>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Shop {
        assert!(
            settings.shards_per_sku >= 1
                && settings.shards_per_sku <= engine::pool::SHARDS_PER_SKU_MAX
        );
        let shop = Shop(Arc::new(Inner {
            store,
            settings,
            clock,
            entropy,
            pools: RwLock::default(),
            pool_arbiter: Arbiter::new(),
            directory: Directory::default(),
            catalog: OnceLock::new(),
            idempotency_in_flight: Mutex::default(),
            health: Health::default(),
        }));
        let catalog_shop = shop.clone();
        let catalog = Supervisor::start(move |_| catalog::Catalog { shop: catalog_shop });
        shop.0.catalog.set(catalog).ok().expect("catalog set once");
        let (skus, live): (Vec<Sku>, Vec<Order>) = {
            let state = shop.store().state();
            let skus = state.products().map(|p| p.product.sku.clone()).collect();
            let live = state
                .orders()
                .iter()
                .filter(|r| {
                    matches!(
                        r.status,
                        OrderStatus::AwaitingPayment | OrderStatus::ManualReview
                    )
                })
                .map(OrderRecord::to_order)
                .collect();
            (skus, live)
        };
        for sku in &skus {
            shop.open_pool(sku);
        }
        for order in live {
            let id = order.order_id.clone();
            let _ = shop
                .0
                .directory
                .get_or_start(&shop, &id, || Ok(Some(order)));
        }
        shop
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn now_ms(&self) -> u64 {
        self.0.clock.now_ms()
    }

    pub fn health(&self) -> &Health {
        &self.0.health
    }

    pub fn directory(&self) -> &Directory {
        &self.0.directory
    }

    /// Commits an event and waits until it is durable and mirrored.
    pub async fn commit(&self, event: &Event) -> Result<storage::Lsn, ShopError> {
        let durable = self.store().commit(event)?;
        Ok(durable.wait().await?)
    }

    pub fn card_keys(&self, cards: &[CardId]) -> Vec<String> {
        order::keys_of(&self.store().state(), cards)
    }

    fn catalog(&self) -> &Addr<catalog::Catalog> {
        self.0.catalog.get().expect("started")
    }

    pub async fn create_product(&self, product: Product) -> Result<(), ShopError> {
        if product.name.trim().is_empty() || product.name.len() > 200 {
            return Err(Rejection::InvalidInput("name must be 1 to 200 bytes").into());
        }
        if product.price_cents == 0 || product.price_cents > AMOUNT_CENTS_MAX {
            return Err(Rejection::InvalidInput("price_cents must be 1 to 1000000000").into());
        }
        self.catalog()
            .send(catalog::CreateProduct(product))
            .await
            .map_err(|_| ShopError::Unavailable("catalogue"))?
    }

    pub async fn import_cards(&self, sku: Sku, body: Vec<u8>) -> Result<ImportOutcome, ShopError> {
        self.catalog()
            .send(catalog::ImportCards { sku, body })
            .await
            .map_err(|_| ShopError::Unavailable("catalogue"))?
    }

    pub(crate) fn open_pool(&self, sku: &Sku) {
        let pool = SkuPool::start(self, sku, &self.0.pool_arbiter.handle());
        self.0.pools.write().insert(sku.clone(), Arc::new(pool));
    }

    fn pool(&self, sku: &Sku) -> Result<Arc<SkuPool>, ShopError> {
        self.0
            .pools
            .read()
            .get(sku)
            .cloned()
            .ok_or(Rejection::UnknownSku.into())
    }

    pub(crate) async fn reserve(
        &self,
        sku: &Sku,
        quantity: usize,
    ) -> Result<Vec<CardId>, ShopError> {
        let home = (self.0.entropy.random_u64() % self.settings().shards_per_sku as u64) as usize;
        self.pool(sku)?.reserve(quantity, home).await
    }

    pub(crate) async fn give_back(&self, sku: &Sku, cards: Vec<CardId>) {
        if let Ok(pool) = self.pool(sku) {
            pool.give_back(cards).await;
        }
    }

    pub(crate) async fn add_cards(&self, sku: &Sku, cards: Vec<CardId>) {
        if let Ok(pool) = self.pool(sku) {
            pool.add(cards).await;
        }
    }

    /// Available keys of a SKU as the pool shards count them now.
    pub fn available_hint(&self, sku: &Sku) -> Option<usize> {
        self.pool(sku).ok().map(|pool| pool.available_hint())
    }

    pub fn products(&self) -> Vec<(Product, Stock)> {
        self.store()
            .state()
            .products()
            .map(|p| (p.product.clone(), p.stock))
            .collect()
    }

    pub fn stock(&self, sku: &Sku) -> Result<Stock, ShopError> {
        self.store()
            .state()
            .product(sku)
            .map(|p| p.stock)
            .ok_or(Rejection::UnknownSku.into())
    }

    /// The gateway and URL where the buyer pays for an order.
    fn payment_link(
        &self,
        channel: &str,
        order_id: &OrderId,
        name: &str,
        amount_cents: u64,
    ) -> Result<(String, String), Rejection> {
        let method = match channel {
            "epay" => "",
            "alipay" | "wxpay" | "qqpay" => channel,
            "epusdt" | "usdt" | "stripe" => return Err(Rejection::ChannelUnavailable),
            _ => return Err(Rejection::UnknownChannel),
        };
        let epay = self
            .settings()
            .epay
            .as_ref()
            .ok_or(Rejection::ChannelUnavailable)?;
        let base = self.settings().public_url.trim_end_matches('/');
        let notify_url = format!("{base}/api/v1/payments/epay/notify");
        let return_url = format!("{base}/");
        let money = format_cents(amount_cents);
        let fields = [
            ("pid", epay.pid.as_str()),
            ("type", method),
            ("out_trade_no", order_id.as_str()),
            ("notify_url", notify_url.as_str()),
            ("return_url", return_url.as_str()),
            ("name", name),
            ("money", money.as_str()),
        ];
        Ok((
            "epay".into(),
            epay_submit_url(&epay.gateway_url, &epay.key, &fields),
        ))
    }

    fn begin_idempotent(
        &self,
        request: &OrderRequest,
    ) -> Result<Result<InFlight<'_>, NewOrder>, ShopError> {
        let Some(key) = &request.idempotency_key else {
            return Ok(Ok(InFlight {
                shop: self,
                key: None,
            }));
        };
        if key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_LEN_MAX
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Rejection::InvalidInput(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .into());
        }
        let mut in_flight = self.0.idempotency_in_flight.lock();
        if in_flight.contains(key) {
            return Err(ShopError::InProgress);
        }
        // Not in flight, so whatever the state holds for this key is durable.
        if let Some(first) = self.store().state().order_by_idempotency_key(key) {
            let same = first.created.idempotency.as_ref().map(|i| i.fingerprint)
                == Some(request.fingerprint);
            return if same {
                Ok(Err(first.created.clone()))
            } else {
                Err(ShopError::IdempotencyMismatch)
            };
        }
        in_flight.insert(key.clone());
        Ok(Ok(InFlight {
            shop: self,
            key: Some(key.clone()),
        }))
    }

    /// Creates an order: reserves its keys, commits it, and starts its actor. With an
    /// `Idempotency-Key` seen before, answers the first order instead.
    pub async fn create_order(&self, request: OrderRequest) -> Result<NewOrder, ShopError> {
        if request.quantity == 0 || request.quantity > ORDER_QUANTITY_MAX {
            return Err(Rejection::InvalidInput("quantity must be 1 to 100").into());
        }
        validate_contact(&request.contact)?;
        let product = {
            let state = self.store().state();
            state
                .product(&request.sku)
                .ok_or(Rejection::UnknownSku)?
                .product
                .clone()
        };
        let amount_cents = product
            .price_cents
            .checked_mul(u64::from(request.quantity))
            .filter(|a| *a <= AMOUNT_CENTS_MAX)
            .ok_or(Rejection::InvalidInput("order amount is too large"))?;
        let _guard = match self.begin_idempotent(&request)? {
            Ok(guard) => guard,
            Err(first) => return Ok(first),
        };
        let now_ms = self.now_ms();
        let order_id = OrderId::generate(now_ms, self.0.entropy.random_u64());
        let (payment_channel, payment_url) =
            self.payment_link(&request.channel, &order_id, &product.name, amount_cents)?;
        let cards = self
            .reserve(&request.sku, request.quantity as usize)
            .await?;
        let new_order = NewOrder {
            order_id: order_id.clone(),
            token: hex128(self.0.entropy.random_u128()),
            trace_id: hex128(self.0.entropy.random_u128()),
            sku: request.sku.clone(),
            quantity: request.quantity,
            amount_cents,
            currency: product.currency,
            contact: request.contact,
            channel: request.channel,
            payment_channel,
            payment_url,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + self.settings().order_ttl_ms,
            cards: cards.clone(),
            idempotency: request.idempotency_key.map(|key| Idempotency {
                key,
                fingerprint: request.fingerprint,
            }),
        };
        let event = Event::OrderCreated(Box::new(new_order));
        if let Err(error) = self.commit(&event).await {
            if error.is_refused_before_logging() {
                self.give_back(&request.sku, cards).await;
            }
            return Err(error);
        }
        let Event::OrderCreated(new_order) = event else {
            unreachable!()
        };
        let order = OrderRecord {
            created: (*new_order).clone(),
            status: OrderStatus::AwaitingPayment,
            cards,
            payment: None,
            paid_at_ms: None,
            settled_at_ms: None,
            review_reason: None,
        }
        .to_order();
        self.0
            .directory
            .get_or_start(self, &order_id, || Ok(Some(order)))?;
        metrics::counter!("panshi_orders_created_total").increment(1);
        tracing::info!(trace_id = %new_order.trace_id, order_id = %order_id, stage = "create", "order created");
        Ok(*new_order)
    }

    fn load_order(&self, order_id: &OrderId) -> Result<Option<Order>, ShopError> {
        Ok(self.store().order(order_id)?.map(|r| r.to_order()))
    }

    /// Applies a verified payment to its order, through the order's actor.
    pub async fn apply_payment(
        &self,
        order_id: &OrderId,
        payment: Payment,
    ) -> Result<PayOutcome, ShopError> {
        for _ in 0..3 {
            let addr = self
                .0
                .directory
                .get_or_start(self, order_id, || self.load_order(order_id))?;
            match addr.send(Pay(payment.clone())).await {
                Ok(result) => return result,
                // The actor stopped between lookup and delivery: it settled; ask again.
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(ShopError::Unavailable("order actor")),
            }
        }
        Err(ShopError::Unavailable("order actor"))
    }

    fn authorised(&self, order_id: &OrderId, token: &str) -> Result<OrderRecord, ShopError> {
        let record = self
            .store()
            .order(order_id)?
            .ok_or(Rejection::UnknownOrder)?;
        if !signatures_equal(&record.created.token, token) {
            return Err(Rejection::UnknownOrder.into());
        }
        Ok(record)
    }

    pub fn lookup(&self, order_id: &OrderId, token: &str) -> Result<OrderView, ShopError> {
        let record = self.authorised(order_id, token)?;
        let keys = if record.status == OrderStatus::Delivered {
            self.card_keys(&record.cards)
        } else {
            Vec::new()
        };
        Ok(OrderView { record, keys })
    }

    /// A live feed of the order's status: the current state first, then every change; the
    /// feed ends after a terminal status.
    pub async fn subscribe(
        &self,
        order_id: &OrderId,
        token: &str,
    ) -> Result<mpsc::Receiver<OrderUpdate>, ShopError> {
        for _ in 0..3 {
            let record = self.authorised(order_id, token)?;
            let (sender, receiver) = mpsc::channel(order::SUBSCRIBER_BUFFER_FRAMES);
            if record.status.is_terminal() {
                let keys = if record.status == OrderStatus::Delivered {
                    self.card_keys(&record.cards)
                } else {
                    Vec::new()
                };
                let _ = sender.try_send(OrderUpdate {
                    order_id: order_id.clone(),
                    status: record.status,
                    cards: keys,
                });
                return Ok(receiver);
            }
            let addr = self
                .0
                .directory
                .get_or_start(self, order_id, || Ok(Some(record.to_order())))?;
            match addr.send(Subscribe(sender)).await {
                Ok(()) => return Ok(receiver),
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(ShopError::Unavailable("order actor")),
            }
        }
        Err(ShopError::Unavailable("order actor"))
    }

    pub(crate) fn expired(&self, order: &Order, released: Vec<CardId>) {
        metrics::counter!("panshi_orders_expired_total").increment(1);
        tracing::info!(order_id = %order.order_id, stage = "expire", keys = released.len(), "order expired");
        let shop = self.clone();
        let sku = order.sku.clone();
        actix::spawn(async move { shop.give_back(&sku, released).await });
    }

    pub(crate) fn record_payment(&self, order: &Order, fulfilment: &Fulfilment) {
        match fulfilment {
            Fulfilment::Delivered { .. } => {
                metrics::counter!("panshi_orders_delivered_total").increment(1);
                let waited_ms = self.now_ms().saturating_sub(order.created_at_ms);
                metrics::histogram!("panshi_order_pay_to_create_seconds")
                    .record(waited_ms as f64 / 1000.0);
                tracing::info!(order_id = %order.order_id, stage = "deliver", "order delivered");
            }
            Fulfilment::ManualReview { reason } => {
                metrics::counter!("panshi_orders_manual_review_total").increment(1);
                tracing::error!(order_id = %order.order_id, reason = reason.as_str(), alert = true, "paid order needs an operator");
            }
        }
    }

    /// Operator-facing: orders waiting for an operator.
    pub fn manual_review_orders(&self) -> Vec<OrderRecord> {
        self.store()
            .state()
            .orders()
            .iter()
            .filter(|r| r.status == OrderStatus::ManualReview)
            .cloned()
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.store().is_healthy()
    }
}

/// Feeds log group commits into metrics.
pub struct CommitMetrics;

impl storage::CommitObserver for CommitMetrics {
    fn group_committed(&self, records_count: usize, oldest_wait: Duration) {
        metrics::histogram!("panshi_log_commit_seconds").record(oldest_wait.as_secs_f64());
        metrics::histogram!("panshi_log_group_records").record(records_count as f64);
    }
}
