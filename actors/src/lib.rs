//! Panshi's actors: the supervised, message-driven runtime around the engine.
//!
//! - `OrderActor`: one per live order; owns its payment, delivery, expiry timer and live
//!   subscribers. Started on demand from storage (the `Directory` is its supervisor: an order
//!   whose actor is gone is reloaded from sled on the next message).
//! - `PoolShard`: a disjoint slice of one SKU's keys (default 4 shards per SKU), supervised.
//! - `Catalog`: serialises product creation, imports and key deletions, supervised.
//!
//! `Shop` is the handle every edge holds. Its own functions are the buyer's path (orders,
//! payments, lookups) and the runtime's; operators' work goes through sub-handles:
//! `shop.products()` (products, listings, keys), `shop.coupons()`, `shop.order_book()`
//! (search, queues, revenue) and `shop.storefront()` (the shop's identity).
//!
//! Invariants: an actor changes its own copy of state only after the event is durable;
//! reserved keys return to a pool only after the expiry that frees them is durable; every
//! mailbox is bounded.
//!
//! Design decision: actors are thin. They ask the engine what an input means, ask storage to
//! commit the resulting event (which validates it again against the whole shop), and apply
//! it once durable. A crash loses only unacknowledged work; recovery is a log replay, which
//! is also why the release build aborts on panic instead of unwinding into odd states.

pub mod alerts;
pub mod cards;
pub mod catalog;
pub mod channel;
pub mod coupons;
pub mod flash;
pub mod health;
pub mod kept;
pub mod live;
pub mod lookup;
pub mod mail;
pub mod order;
pub mod order_book;
pub mod payment;
pub mod pool;
pub mod products;
pub mod reseller;
pub mod seal;
pub mod storefront;
pub mod trace;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use engine::coupon::CouponUse;
use engine::events::{Event, Fulfilment, Idempotency, NewOrder, Payment, PlacedOrder, Product};
use engine::ids::hex128;
use engine::money::AMOUNT_CENTS_MAX;
use engine::order::{CONTACT_LEN_MAX, ORDER_QUANTITY_MAX};
use engine::state::ProductState;
use engine::{CardId, Currency, Order, OrderId, OrderRecord, OrderStatus, Rejection, Sku};
use parking_lot::{Mutex, RwLock};
use storage::Store;
use tokio::sync::mpsc;

pub use catalog::{DeleteOutcome, ImportOutcome};
pub use health::{Health, KindHealth, LastError};
pub use live::OrderUpdate;
pub use order::PayOutcome;
use order::{Directory, Pay};
use pool::SkuPool;
use trace::{OrderTrace, Stage, Traces};

/// The prefix of a VIP invite code (`Shop::vip_invite`); the digit is the format's version.
pub const VIP_INVITE_PREFIX: &str = "vip1.";
/// Longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Payment channels counted for the alert rules.
pub const CHANNELS_TRACKED_MAX: usize = 16;

/// Longest product name, in bytes.
pub const PRODUCT_NAME_BYTES_MAX: usize = 200;

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
    /// An order or a reseller already has as many live sockets as it may.
    #[error("too many live sockets are open on this; close one before opening another")]
    TooManySubscribers,
    /// This node does not lead (or not yet): nothing was committed. `leader` as last known.
    #[error("this node does not lead; retry shortly")]
    NotLeader { leader: Option<u64> },
    /// Leadership changed before the commit was known: it may or may not have happened.
    #[error("the outcome is unknown; retry with the same idempotency key")]
    OutcomeUnknown,
}

impl From<storage::Error> for ShopError {
    fn from(error: storage::Error) -> Self {
        match error {
            storage::Error::Busy => ShopError::Busy,
            storage::Error::NotLeader { leader } => ShopError::NotLeader { leader },
            storage::Error::OutcomeUnknown => ShopError::OutcomeUnknown,
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
            ShopError::Busy
                | ShopError::NotLeader { .. }
                | ShopError::Storage(storage::Error::Violation(_))
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
    /// Create payments server-side through `mapi.php` (behind the channel's breaker)
    /// instead of building the signed `submit.php` URL locally.
    pub create_via_mapi: bool,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Flash-sale waiting rooms: admission rate, VIP share and VIP contacts.
    pub flash: flash::FlashSettings,
    /// Per-buyer risk limits for new orders.
    pub risk: engine::risk::RiskLimits,
    /// Payment method -> ordered channels (primary first).
    pub payment_methods: std::collections::BTreeMap<String, Vec<String>>,
    /// Circuit-breaker thresholds for every payment channel.
    pub breaker: engine::breaker::BreakerConfig,
    pub order_ttl_ms: u64,
    pub shards_per_sku: usize,
    pub currency: Currency,
    /// Base URL gateways and buyers reach this shop at (notify and return URLs).
    pub public_url: String,
    pub epay: Option<EpaySettings>,
    /// Seals the resellers' webhook secrets at rest.
    pub sealing_key: seal::SealingKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Order,
    PoolShard,
    Catalog,
    Channel,
}

impl ActorKind {
    pub const ALL: [ActorKind; 4] = [
        ActorKind::Order,
        ActorKind::PoolShard,
        ActorKind::Catalog,
        ActorKind::Channel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Order => "order",
            ActorKind::PoolShard => "pool_shard",
            ActorKind::Catalog => "catalog",
            ActorKind::Channel => "payment_channel",
        }
    }
}

/// A buyer's order request, validated at the edge for shape only.
#[derive(Clone)]
pub struct OrderRequest {
    pub sku: Sku,
    pub quantity: u32,
    pub contact: String,
    pub channel: String,
    pub idempotency_key: Option<String>,
    /// A hash of the request body, to tell a retry from a different request with the same key.
    pub fingerprint: u64,
    /// The client's IP, for the risk rules (`None` where unknown).
    pub client_ip: Option<String>,
    /// A coupon code and a lookup password, when the buyer gave them.
    pub terms: BuyerTerms,
    /// The buyer holds a valid VIP invite (`Shop::vip_invite_valid`): queues in the VIP lane.
    pub vip: bool,
    /// The buyer's browser is a phone's (its User-Agent): Alipay's wap flow instead of
    /// the desktop page. Not part of the idempotency fingerprint.
    pub phone: bool,
}

/// What a buyer may add to an order beyond the contract's fields.
#[derive(Clone, Debug, Default, Hash)]
pub struct BuyerTerms {
    /// A coupon code, in any case.
    pub coupon: Option<String>,
    /// A password to find the order again by contact (only its slow hash is stored).
    pub lookup_password: Option<String>,
}

/// An order as its buyer may see it.
pub struct OrderView {
    /// Shared with the store's view of recent changes: a lookup copies nothing.
    pub record: Arc<OrderRecord>,
    /// The keys, once delivered.
    pub keys: Vec<String>,
    /// The coupon the order used, and what it took off.
    pub coupon: Option<CouponUse>,
}

struct Inner {
    store: Arc<Store>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    pools: RwLock<HashMap<Sku, Arc<SkuPool>>>,
    shard_hosts: pool::ShardHosts,
    directory: Directory,
    catalog: OnceLock<Addr<catalog::Catalog>>,
    idempotency_in_flight: Mutex<HashSet<String>>,
    health: Arc<Health>,
    traces: Traces,
    /// Orders created and paid per payment channel since start, for the alert rules.
    channel_totals: Mutex<Vec<alerts::ChannelTotals>>,
    /// Payment channels that can be queried (reconciliation), by name.
    channels: channel::Channels,
    /// Per-reseller locks and stream hubs (`reseller.rs`).
    resellers: reseller::Resellers,
    /// Seals the resellers' webhook secrets at rest.
    sealer: seal::Sealer,
    /// Per-buyer limits on unpaid reservations and order rates.
    risk: Mutex<engine::risk::RiskBook>,
    /// Flash sales' waiting rooms and tickets.
    flash: flash::FlashSales,
    /// Notified when a delivery queued a mail (`mail.rs`).
    mail_waker: Arc<tokio::sync::Notify>,
    /// Buyers watching orders live (fed by every applied change, on every node).
    live: live::OrderFeeds,
    /// This node leads: its actors run and it takes writes (`activate`, `deactivate`).
    active: AtomicBool,
    /// Rises at each activation; a ticker of an earlier one ends by itself.
    generation: AtomicU64,
}

/// The handle every edge and actor uses; cheap to clone.
#[derive(Clone)]
pub struct Shop(Arc<Inner>);

/// Lifts a risk hold when an order is not created, however creation ends.
struct RiskHold<'a> {
    shop: &'a Shop,
    order_id: Option<OrderId>,
}

impl RiskHold<'_> {
    fn keep(&mut self) {
        self.order_id = None;
    }
}

impl Drop for RiskHold<'_> {
    fn drop(&mut self) {
        if let Some(order_id) = self.order_id.take() {
            self.shop.risk_released(&order_id);
        }
    }
}

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

/// Checks the risk rules for one buyer, counting a refusal under its rule.
fn risk_check(
    book: &mut engine::risk::RiskBook,
    buyer: &engine::risk::Buyer,
    sku: &Sku,
    quantity: u32,
    now_ms: u64,
) -> Result<(), ShopError> {
    book.check(buyer, sku, quantity, now_ms).map_err(|rule| {
        metrics::counter!("panshi_risk_refusals_total", "rule" => rule.code()).increment(1);
        Rejection::Risk(rule).into()
    })
}

/// An `Idempotency-Key` header's shape: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_LEN_MAX
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Rejection::InvalidInput(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
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
    /// Starts the runtime on an open store and activates it at once (a single node that
    /// leads). Call inside an actix system.
    pub fn start(
        store: Arc<Store>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Shop {
        Self::start_with_gateways(store, settings, clock, entropy, Vec::new())
    }

    /// `start`, with the gateways whose server-to-server APIs the shop may query.
    pub fn start_with_gateways(
        store: Arc<Store>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        gateways: Vec<(String, Arc<dyn channel::GatewayClient>)>,
    ) -> Shop {
        let shop = Self::new(store, settings, clock, entropy, gateways);
        shop.activate();
        shop
    }

    /// The shop on an open store, passive: it answers reads and feeds live watchers; it
    /// runs actors and takes writes only between `activate` and `deactivate`. Each
    /// queryable gateway gets a supervised channel actor with its circuit breaker. Call
    /// inside an actix system.
    pub fn new(
        store: Arc<Store>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        gateways: Vec<(String, Arc<dyn channel::GatewayClient>)>,
    ) -> Shop {
        let health: Arc<Health> = Arc::default();
        let settings_risk = settings.risk.clone();
        let overload = settings.flash.overload;
        let mut channels = channel::Channels::default();
        for (name, client) in gateways {
            let (clock, health, actor_name) = (clock.clone(), health.clone(), name.clone());
            let config = settings.breaker;
            let usability = Arc::new(channel::Usability::default());
            let published = usability.clone();
            let addr = Supervisor::start(move |_| {
                channel::ChannelActor::new(&actor_name, client, config, clock, health, published)
            });
            channels.insert(&name, addr, usability);
        }
        assert!(
            settings.shards_per_sku >= 1
                && settings.shards_per_sku <= engine::pool::SHARDS_PER_SKU_MAX
        );
        let sealer = seal::Sealer::new(&settings.sealing_key);
        let shop = Shop(Arc::new(Inner {
            store,
            sealer,
            settings,
            clock,
            entropy,
            pools: RwLock::default(),
            shard_hosts: pool::ShardHosts::new(),
            directory: Directory::default(),
            catalog: OnceLock::new(),
            idempotency_in_flight: Mutex::default(),
            health,
            traces: Traces::default(),
            channel_totals: Mutex::default(),
            risk: Mutex::new(engine::risk::RiskBook::new(settings_risk)),
            flash: flash::FlashSales::new(overload),
            mail_waker: Arc::default(),
            channels,
            resellers: reseller::Resellers::default(),
            live: live::OrderFeeds::default(),
            active: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }));
        let catalog_shop = shop.clone();
        let catalog = Supervisor::start(move |_| catalog::Catalog { shop: catalog_shop });
        assert!(shop.0.catalog.set(catalog).is_ok(), "catalog set once");
        shop.store()
            .set_listener(Arc::new(Listener(Arc::downgrade(&shop.0))));
        shop
    }

    /// This node became the active leader (its state holds everything committed): seeds
    /// the pools from the state, counts unpaid reservations against their buyers again,
    /// starts the waiting rooms' ticker and an actor for every order still awaiting payment
    /// or review (their expiry timers and reconciliation with them). Call inside an actix
    /// system.
    pub fn activate(&self) {
        let generation = self.0.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let (skus, live): (Vec<Sku>, Vec<Order>) = {
            let state = self.store().state();
            let skus = state.products().map(|p| p.product.sku.clone()).collect();
            // Unpaid reservations count against their buyers again (by contact: the IP of
            // an order from before is not kept).
            let mut risk = self.0.risk.lock();
            *risk = engine::risk::RiskBook::new(self.settings().risk.clone());
            // Orders awaiting payment or review are never archived: they are all in memory.
            for (_, r) in state
                .hot_orders()
                .filter(|(_, r)| r.status == OrderStatus::AwaitingPayment)
            {
                let buyer = engine::risk::Buyer {
                    contact: r.created.contact.clone(),
                    ip: None,
                };
                risk.reserved(
                    &r.created.order_id,
                    &buyer,
                    &r.created.sku,
                    r.created.quantity,
                    r.created.created_at_ms,
                );
            }
            drop(risk);
            let live = state
                .hot_orders()
                .filter(|(_, r)| {
                    matches!(
                        r.status,
                        OrderStatus::AwaitingPayment | OrderStatus::ManualReview
                    )
                })
                .map(|(_, r)| r.to_order())
                .collect();
            (skus, live)
        };
        for sku in &skus {
            self.open_pool(sku);
        }
        self.start_admissions(generation);
        for order in live {
            let id = order.order_id.clone();
            let _ = self.0.directory.get_or_start(self, &id, || Ok(Some(order)));
        }
        self.0.active.store(true, Ordering::Release);
    }

    /// This node stopped leading: refuses writes from now on, stops every order actor
    /// (with its timers) and pool shard, and closes the waiting rooms.
    pub fn deactivate(&self) {
        self.0.active.store(false, Ordering::Release);
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.directory.stop_all();
        self.0.pools.write().clear();
        self.0.flash.close_all();
    }

    /// Whether this node leads and takes writes.
    pub fn is_active(&self) -> bool {
        self.0.active.load(Ordering::Acquire)
    }

    /// Refuses a write on a node that does not lead.
    fn ensure_active(&self) -> Result<(), ShopError> {
        if self.is_active() {
            Ok(())
        } else {
            Err(ShopError::NotLeader { leader: None })
        }
    }

    /// Rises at each activation and deactivation: work started under one generation ends
    /// when it changes.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub(crate) fn flash(&self) -> &flash::FlashSales {
        &self.0.flash
    }

    /// The channel actor an order's payment goes through, if that channel can be queried.
    pub(crate) fn channel_of(
        &self,
        order_id: &OrderId,
    ) -> Option<Arc<Addr<channel::ChannelActor>>> {
        let state = self.store().state();
        let name = &state.order(order_id)?.created.payment_channel;
        self.0.channels.get(name).cloned()
    }

    pub(crate) fn channel(&self, name: &str) -> Option<Arc<Addr<channel::ChannelActor>>> {
        self.0.channels.get(name).cloned()
    }

    /// The gateway's reference for an order's payment (empty when the order id is it).
    pub(crate) fn payment_reference(&self, order_id: &OrderId) -> String {
        let state = self.store().state();
        state
            .order(order_id)
            .map(|r| r.created.payment_ref.clone())
            .unwrap_or_default()
    }

    /// Each queryable channel's breaker state and success rate, for operators.
    pub async fn channel_health(&self) -> Vec<channel::ChannelHealth> {
        self.0.channels.health().await
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

    /// A shared handle on the health counters, for actors that outlive a borrow of the shop.
    pub fn health_handle(&self) -> Arc<Health> {
        self.0.health.clone()
    }

    pub fn clock_handle(&self) -> Arc<dyn Clock> {
        self.0.clock.clone()
    }

    pub fn traces(&self) -> &Traces {
        &self.0.traces
    }

    /// Records an order stage in the trace ring and the structured log (at `debug`).
    pub(crate) fn trace_stage(
        &self,
        order_id: &OrderId,
        trace_id: &str,
        stage: Stage,
        started: (u64, Instant),
    ) {
        let (at_ms, at) = started;
        self.0
            .traces
            .record(order_id, trace_id, stage, at_ms, at.elapsed());
    }

    /// The trace id of an order: from the ring, else from the shop state.
    pub fn trace_id_of(&self, order_id: &OrderId) -> Option<String> {
        self.0.traces.trace_id(order_id).or_else(|| {
            let state = self.store().state();
            state.order(order_id).map(|r| r.created.trace_id.clone())
        })
    }

    /// An order's timeline for operators: from the ring, else the stages its record proves.
    pub fn order_trace(&self, order_id: &OrderId) -> Result<OrderTrace, ShopError> {
        if let Some(trace) = self.0.traces.get(order_id) {
            return Ok(trace);
        }
        let record = self
            .store()
            .order(order_id)?
            .ok_or(Rejection::UnknownOrder)?;
        Ok(trace::derived_trace(&record))
    }

    /// Counts an order created (`paid == false`) or paid through `channel`.
    pub(crate) fn count_channel(&self, channel: &str, paid: bool) {
        let mut totals = self.0.channel_totals.lock();
        let index = match totals.iter().position(|t| t.channel == channel) {
            Some(index) => index,
            // Channels are the few the configuration knows; the bound guards against a bug.
            None if totals.len() < CHANNELS_TRACKED_MAX => {
                totals.push(alerts::ChannelTotals {
                    channel: channel.to_owned(),
                    created_total: 0,
                    paid_total: 0,
                });
                totals.len() - 1
            }
            None => return,
        };
        if paid {
            totals[index].paid_total += 1;
        } else {
            totals[index].created_total += 1;
        }
    }

    /// Orders created and paid per payment channel since start.
    pub fn channel_totals(&self) -> Vec<alerts::ChannelTotals> {
        self.0.channel_totals.lock().clone()
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
        cards::keys_of(&self.store().state(), &self.0.sealer, cards)
    }

    pub(crate) fn catalog(&self) -> &Addr<catalog::Catalog> {
        self.0.catalog.get().expect("started")
    }

    pub(crate) fn open_pool(&self, sku: &Sku) {
        let pool = SkuPool::start(self, sku, &self.0.shard_hosts);
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

    /// Offers the calling thread's arbiter (an HTTP worker's) as a home for pool shards:
    /// pools opened afterwards place shards on the registered workers, and a create
    /// reserves from its own worker's shards first. Returns the workers registered so far.
    pub fn host_pool_shards(&self) -> usize {
        self.0.shard_hosts.register_current()
    }

    /// HTTP workers registered as shard hosts.
    pub fn pool_shard_hosts(&self) -> usize {
        self.0.shard_hosts.registered_count()
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

    /// Refuses a create for fewer keys than it wants before any work is done for it (a
    /// coupon, a lookup password's hash, a risk hold): sold out needs no commit, and in a
    /// flash sale most buyers hear it.
    fn refuse_if_sold_out(&self, sku: &Sku, quantity: u32) -> Result<(), ShopError> {
        if self.pool(sku)?.available() < quantity as usize {
            metrics::counter!("panshi_orders_sold_out_at_once_total").increment(1);
            return Err(Rejection::SoldOut.into());
        }
        Ok(())
    }

    /// The order an `Idempotency-Key` made, while its window is open
    /// (`engine::order::IDEMPOTENCY_WINDOW_MS`); after that the key is free again.
    pub(crate) fn idempotent_first(&self, key: &str) -> Option<OrderRecord> {
        let now_ms = self.now_ms();
        let state = self.store().state();
        state
            .order_by_idempotency_key(key)
            .filter(|first| engine::state::idempotency_live(first, now_ms))
            .map(std::borrow::Cow::into_owned)
    }

    /// A buyer's token for an order: derived, so that only its digest is stored, and the
    /// order's first answer can be given again to an idempotent retry.
    pub fn order_token(&self, order_id: &OrderId) -> String {
        self.0.sealer.derive_token("order", order_id.as_str())
    }

    /// The token that opens `record`, for a link to it: derived again (only its digest is
    /// stored); empty for an order an older version made with a random token, which only
    /// its buyer still holds.
    pub fn buyer_token(&self, record: &OrderRecord) -> String {
        let token = self.order_token(&record.created.order_id);
        if engine::ids::token_matches(&record.created.token, &token) {
            token
        } else {
            String::new()
        }
    }

    /// A VIP invite code for `label` (who it is for, `^[A-Za-z0-9._-]{1,64}$`): the label
    /// and a MAC under a key derived from the sealing key, so nobody else can make one.
    pub fn vip_invite(&self, label: &str) -> Result<String, Rejection> {
        let label = Sku::parse(label)
            .map_err(|_| Rejection::InvalidInput("label must match ^[A-Za-z0-9._-]{1,64}$"))?;
        let mac = self.0.sealer.derive_token("vip", label.as_str());
        Ok(format!("{VIP_INVITE_PREFIX}{}.{mac}", label.as_str()))
    }

    /// Whether `code` is a VIP invite this shop signed (constant-time).
    pub fn vip_invite_valid(&self, code: &str) -> bool {
        let Some((label, mac)) = code
            .strip_prefix(VIP_INVITE_PREFIX)
            .and_then(|rest| rest.rsplit_once('.'))
        else {
            return false;
        };
        Sku::parse(label).is_ok()
            && engine::payment::signatures_equal(&self.0.sealer.derive_token("vip", label), mac)
    }

    /// A waiting-room ticket's token, derived like an order's.
    pub(crate) fn ticket_token(&self, ticket: engine::waiting_room::TicketId) -> String {
        self.0.sealer.derive_token("ticket", &ticket.0.to_string())
    }

    fn begin_idempotent(
        &self,
        request: &OrderRequest,
    ) -> Result<Result<InFlight<'_>, Arc<NewOrder>>, ShopError> {
        let Some(key) = &request.idempotency_key else {
            return Ok(Ok(InFlight {
                shop: self,
                key: None,
            }));
        };
        check_idempotency_key(key)?;
        let mut in_flight = self.0.idempotency_in_flight.lock();
        if in_flight.contains(key) {
            return Err(ShopError::InProgress);
        }
        // Not in flight, so whatever the state holds for this key is durable.
        if let Some(first) = self.idempotent_first(key) {
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

    /// The checks of a new order's shape: quantity, contact, a known and listed SKU, the
    /// product's purchase limit. Returns the product.
    pub(crate) fn check_request(&self, request: &OrderRequest) -> Result<Product, ShopError> {
        if request.quantity == 0 || request.quantity > ORDER_QUANTITY_MAX {
            return Err(Rejection::InvalidInput("quantity must be 1 to 100").into());
        }
        validate_contact(&request.contact)?;
        let state = self.store().state();
        let product = state
            .product(&request.sku)
            .filter(|p| !p.details.hidden)
            .ok_or(Rejection::UnknownSku)?;
        if request.quantity > product.details.order_quantity_max() {
            return Err(
                Rejection::InvalidInput("quantity is over this product's purchase limit").into(),
            );
        }
        Ok(product.product.clone())
    }

    /// The coupon's discount of a new order (a lookup of the state: cheap).
    fn order_coupon(
        &self,
        request: &OrderRequest,
        gross_cents: u64,
        now_ms: u64,
    ) -> Result<Option<CouponUse>, ShopError> {
        match request.terms.coupon.as_deref().map(str::trim) {
            Some(code) if !code.is_empty() => Ok(Some(self.price_with_coupon(
                code,
                &request.sku,
                gross_cents,
                now_ms,
            )?)),
            _ => Ok(None),
        }
    }

    /// The lookup password's hash of a new order: 100,000 PBKDF2 rounds, so it is computed
    /// only once the order has its keys (a buyer told sold out costs none).
    async fn order_password_hash(
        &self,
        request: &OrderRequest,
    ) -> Result<Option<String>, ShopError> {
        match &request.terms.lookup_password {
            Some(password) if !password.is_empty() => {
                Ok(Some(self.hash_lookup_password(password.clone()).await?))
            }
            _ => Ok(None),
        }
    }

    /// Why the engine refused a new order that passed every check here: another order took
    /// the coupon's last use, or an operator changed the product meanwhile.
    fn explain_refused_order(
        &self,
        coupon: Option<&CouponUse>,
        product: &Product,
        now_ms: u64,
    ) -> Option<ShopError> {
        let state = self.store().state();
        if let Some(coupon) = coupon {
            if let Some(refusal) = state.coupon_refusal(&coupon.code, &product.sku, now_ms) {
                return Some(Rejection::Coupon(refusal).into());
            }
        }
        let now = state
            .product(&product.sku)
            .map(|p: &ProductState| (p.product.price_cents, p.details.hidden));
        if now != Some((product.price_cents, false)) {
            return Some(
                Rejection::InvalidInput(
                    "the product changed while the order was made; please order again",
                )
                .into(),
            );
        }
        None
    }

    /// Creates an order: reserves its keys, commits it, and starts its actor. With an
    /// `Idempotency-Key` seen before, answers the first order instead.
    pub async fn create_order(&self, request: OrderRequest) -> Result<Arc<NewOrder>, ShopError> {
        let started = Instant::now();
        self.ensure_active()?;
        let product = self.check_request(&request)?;
        let in_flight = self.pipeline_enter();
        let amount_cents = product
            .price_cents
            .checked_mul(u64::from(request.quantity))
            .filter(|a| *a <= AMOUNT_CENTS_MAX)
            .ok_or(Rejection::InvalidInput("order amount is too large"))?;
        let _guard = match self.begin_idempotent(&request)? {
            Ok(guard) => guard,
            Err(first) => return Ok(first),
        };
        // After the idempotency check: a retry of an order made gets that order.
        self.refuse_if_sold_out(&request.sku, request.quantity)?;
        let now_ms = self.now_ms();
        let order_id = OrderId::generate(now_ms, self.0.entropy.random_u64());
        let buyer = engine::risk::Buyer {
            contact: request.contact.clone(),
            ip: request.client_ip.clone(),
        };
        let coupon = self.order_coupon(&request, amount_cents, now_ms)?;
        let amount_cents = amount_cents - coupon.as_ref().map_or(0, |c| c.discount_cents);
        let mut hold = self.hold_risk(&order_id, &buyer, &request.sku, request.quantity, now_ms)?;
        // Keys first: a gateway payment is created only for an order that has its keys.
        let reserve_started = (self.now_ms(), Instant::now());
        // A refusal here (sold out) was work the pipeline did: it is measured too.
        let reserved = self.reserve(&request.sku, request.quantity as usize).await;
        let reserve_elapsed = reserve_started.1.elapsed();
        let cards = reserved.inspect_err(|_| in_flight.measured(reserve_elapsed))?;
        let lookup_password_hash = match self.order_password_hash(&request).await {
            Ok(hash) => hash,
            Err(error) => {
                self.give_back(&request.sku, cards).await;
                return Err(error);
            }
        };
        let subject = payment::PaymentSubject {
            order_id: &order_id,
            name: &product.name,
            amount_cents,
            currency: product.currency,
            phone: request.phone,
        };
        let link = match self.payment_link(&request.channel, &subject).await {
            Ok(link) => link,
            Err(rejection) => {
                self.give_back(&request.sku, cards).await;
                return Err(rejection.into());
            }
        };
        let new_order = NewOrder {
            order_id: order_id.clone(),
            token: engine::ids::token_digest(&self.order_token(&order_id)),
            trace_id: hex128(self.0.entropy.random_u128()),
            sku: request.sku.clone(),
            quantity: request.quantity,
            amount_cents,
            currency: product.currency,
            contact: request.contact,
            channel: request.channel,
            payment_channel: link.channel,
            payment_url: link.url,
            payment_ref: link.reference,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + self.settings().order_ttl_ms,
            cards: cards.clone(),
            idempotency: request.idempotency_key.map(|key| Idempotency {
                key,
                fingerprint: request.fingerprint,
            }),
        };
        let event = if coupon.is_none() && lookup_password_hash.is_none() {
            Event::OrderCreated(Arc::new(new_order))
        } else {
            Event::OrderPlaced(Box::new(PlacedOrder {
                order: Arc::new(new_order),
                coupon,
                lookup_password_hash,
            }))
        };
        let commit_started = (self.now_ms(), Instant::now());
        let committed = self.commit(&event).await;
        // Failed commits count: a pipeline that fails slowly is not calm.
        in_flight.measured(reserve_elapsed + commit_started.1.elapsed());
        if let Err(error) = committed {
            if error.is_refused_before_logging() {
                self.give_back(&request.sku, cards).await;
            }
            if matches!(error, ShopError::Storage(storage::Error::Violation(_))) {
                let coupon = match &event {
                    Event::OrderPlaced(placed) => placed.coupon.as_ref(),
                    _ => None,
                };
                if let Some(explained) = self.explain_refused_order(coupon, &product, now_ms) {
                    return Err(explained);
                }
            }
            return Err(error);
        }
        let new_order = match event {
            Event::OrderCreated(new_order) => new_order,
            Event::OrderPlaced(placed) => placed.order,
            _ => unreachable!("built above"),
        };
        let order = engine::Order::created(&new_order, cards);
        hold.keep();
        self.0
            .directory
            .get_or_start(self, &order_id, || Ok(Some(order)))?;
        kept::count("panshi_orders_created_total", &[], 1);
        self.count_channel(&new_order.payment_channel, false);
        self.trace_created(
            &new_order,
            started,
            reserve_started.0,
            reserve_elapsed,
            commit_started,
        );
        Ok(new_order)
    }

    /// Traces a created order's first stages, measured by `create_order`.
    fn trace_created(
        &self,
        order: &NewOrder,
        started: Instant,
        reserve_at_ms: u64,
        reserve_elapsed: Duration,
        commit_started: (u64, Instant),
    ) {
        let (commit_at_ms, commit_at) = commit_started;
        self.0.traces.record_all(
            &order.order_id,
            &order.trace_id,
            &[
                (Stage::Create, order.created_at_ms, started.elapsed()),
                (Stage::Reserve, reserve_at_ms, reserve_elapsed),
                (Stage::Commit, commit_at_ms, commit_at.elapsed()),
            ],
        );
    }

    /// Checks the risk rules and holds the order's units against the buyer's limits; the
    /// hold lifts by itself unless the order is created (`RiskHold::keep`).
    fn hold_risk(
        &self,
        order_id: &OrderId,
        buyer: &engine::risk::Buyer,
        sku: &Sku,
        quantity: u32,
        now_ms: u64,
    ) -> Result<RiskHold<'_>, ShopError> {
        let mut book = self.0.risk.lock();
        risk_check(&mut book, buyer, sku, quantity, now_ms)?;
        book.reserved(order_id, buyer, sku, quantity, now_ms);
        Ok(RiskHold {
            shop: self,
            order_id: Some(order_id.clone()),
        })
    }

    /// The risk rules as they stand, without holding anything: a buyer about to be queued
    /// is refused now, with the rule's own code, rather than after the wait.
    pub(crate) fn screen_risk(&self, request: &OrderRequest) -> Result<(), ShopError> {
        let buyer = engine::risk::Buyer {
            contact: request.contact.clone(),
            ip: request.client_ip.clone(),
        };
        let now_ms = self.now_ms();
        risk_check(
            &mut self.0.risk.lock(),
            &buyer,
            &request.sku,
            request.quantity,
            now_ms,
        )
    }

    /// The order was paid or lapsed: its units stop counting against its buyer.
    pub(crate) fn risk_released(&self, order_id: &OrderId) {
        self.0.risk.lock().released(order_id);
    }

    fn load_order(&self, order_id: &OrderId) -> Result<Option<Order>, ShopError> {
        Ok(self.store().order(order_id)?.map(|r| r.to_order()))
    }

    /// Refunds an order in manual review (the money goes back at the gateway, by the
    /// operator); through the order's actor, so it serialises with payments.
    pub async fn refund(&self, order_id: &OrderId) -> Result<OrderStatus, ShopError> {
        self.ensure_active()?;
        for _ in 0..3 {
            let addr = self
                .0
                .directory
                .get_or_start(self, order_id, || self.load_order(order_id))?;
            match addr.send(order::Refund).await {
                Ok(result) => return result,
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(ShopError::Unavailable("order actor")),
            }
        }
        Err(ShopError::Unavailable("order actor"))
    }

    /// Appends an entry to the operators' audit trail (durably, through the log).
    pub async fn record_operator_action(
        &self,
        action: engine::OperatorAction,
    ) -> Result<(), ShopError> {
        self.commit(&Event::OperatorAction(action))
            .await
            .map(|_| ())
    }

    /// Applies a verified payment to its order, through the order's actor.
    pub async fn apply_payment(
        &self,
        order_id: &OrderId,
        payment: Payment,
    ) -> Result<PayOutcome, ShopError> {
        self.ensure_active()?;
        for _ in 0..3 {
            let addr = self
                .0
                .directory
                .get_or_start(self, order_id, || self.load_order(order_id))?;
            let queued = self.health().queued(ActorKind::Order);
            let sent = addr.send(Pay(payment.clone())).await;
            drop(queued);
            match sent {
                Ok(result) => return result,
                // The actor stopped between lookup and delivery: it settled; ask again.
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(ShopError::Unavailable("order actor")),
            }
        }
        Err(ShopError::Unavailable("order actor"))
    }

    fn authorised(&self, order_id: &OrderId, token: &str) -> Result<Arc<OrderRecord>, ShopError> {
        let record = self
            .store()
            .order(order_id)?
            .ok_or(Rejection::UnknownOrder)?;
        if !engine::ids::token_matches(&record.created.token, token) {
            return Err(Rejection::UnknownOrder.into());
        }
        Ok(record)
    }

    pub fn lookup(&self, order_id: &OrderId, token: &str) -> Result<OrderView, ShopError> {
        Ok(self.view_of(self.authorised(order_id, token)?))
    }

    /// What an order's record shows: the keys once delivered, and its coupon.
    pub(crate) fn view_of(&self, record: Arc<OrderRecord>) -> OrderView {
        let keys = if record.status == OrderStatus::Delivered {
            self.card_keys(&record.cards)
        } else {
            Vec::new()
        };
        let coupon = self
            .store()
            .state()
            .terms_of(&record.created.order_id)
            .and_then(|terms| terms.coupon.clone());
        OrderView {
            record,
            keys,
            coupon,
        }
    }

    /// A live feed of the order's status: the current state first, then every change; the
    /// feed ends after a terminal status. Works on every node (the feed hears applied
    /// changes); the caller waits for this node to have applied what was acknowledged.
    pub fn subscribe(
        &self,
        order_id: &OrderId,
        token: &str,
    ) -> Result<mpsc::Receiver<live::BoxedUpdate>, ShopError> {
        self.authorised(order_id, token)?;
        let mut failure = None;
        let receiver = self
            .0
            .live
            .watch(order_id, || match self.store().order(order_id) {
                Ok(Some(record)) => self.update_of(&record),
                other => {
                    failure = Some(other.err());
                    OrderUpdate {
                        order_id: order_id.clone(),
                        status: OrderStatus::Cancelled,
                        cards: Vec::new(),
                    }
                }
            });
        if let Some(error) = failure {
            return Err(error.map_or(Rejection::UnknownOrder.into(), Into::into));
        }
        receiver.map_err(|_| ShopError::TooManySubscribers)
    }

    /// An order's frame for its watchers.
    fn update_of(&self, record: &OrderRecord) -> OrderUpdate {
        let cards = if record.status == OrderStatus::Delivered {
            self.card_keys(&record.cards)
        } else {
            Vec::new()
        };
        OrderUpdate {
            order_id: record.created.order_id.clone(),
            status: record.status,
            cards,
        }
    }

    /// Buyers watching orders live.
    pub fn live_watchers_count(&self) -> usize {
        self.0.live.watchers_count()
    }

    pub(crate) fn expired(&self, order: &Order, released: Vec<CardId>) {
        metrics::counter!("panshi_orders_expired_total").increment(1);
        // The trace record logs the stage with its trace id.
        if let Some(trace_id) = self.trace_id_of(&order.order_id) {
            let at = (self.now_ms(), Instant::now());
            self.trace_stage(&order.order_id, &trace_id, Stage::Expire, at);
        }
        let shop = self.clone();
        let sku = order.sku.clone();
        actix::spawn(async move { shop.give_back(&sku, released).await });
    }

    pub(crate) fn record_payment(&self, order: &Order, fulfilment: &Fulfilment) {
        if let Some(payment) = &order.payment {
            kept::count(
                "panshi_orders_paid_total",
                &[("channel", payment_channel_label(&payment.channel))],
                1,
            );
            self.count_channel(&payment.channel, true);
        }
        match fulfilment {
            Fulfilment::Delivered { .. } => {
                kept::count("panshi_orders_delivered_total", &[], 1);
                let waited_ms = self.now_ms().saturating_sub(order.created_at_ms);
                kept::record(
                    "panshi_order_create_to_delivery_seconds",
                    &[],
                    waited_ms as f64 / 1000.0,
                );
            }
            Fulfilment::ManualReview { reason } => {
                metrics::counter!("panshi_orders_manual_review_total").increment(1);
                let trace_id = self.trace_id_of(&order.order_id).unwrap_or_default();
                tracing::error!(order_id = %order.order_id, %trace_id, reason = reason.as_str(), alert = true, "paid order needs an operator");
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.store().is_healthy()
    }
}

/// Hears every applied change from the store (on every node) and feeds the live watchers
/// and the resellers' streams. Weak: the store it is registered with belongs to the shop.
struct Listener(Weak<Inner>);

impl storage::ChangeListener for Listener {
    fn order_changed(&self, record: &Arc<OrderRecord>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let shop = Shop(inner);
        let started = (shop.now_ms(), Instant::now());
        shop.0
            .live
            .changed(record, || shop.card_keys(&record.cards));
        // A change after creation reached the live feeds: a stage of the order's timeline.
        if record.status != OrderStatus::AwaitingPayment {
            let trace_id = &record.created.trace_id;
            shop.trace_stage(&record.created.order_id, trace_id, Stage::Push, started);
        }
    }

    fn stream_appended(&self, reseller: engine::ResellerId, seq: u64) {
        if let Some(inner) = self.0.upgrade() {
            Shop(inner).publish_stream(reseller, seq);
        }
    }
}

/// A payment channel as a metric label: the known names, else `other`, so that a label's
/// values stay a small fixed set.
pub fn payment_channel_label(channel: &str) -> &'static str {
    match channel {
        "epay" => "epay",
        "epusdt" => "epusdt",
        "stripe" => "stripe",
        "alipay" => "alipay",
        "wechat" => "wechat",
        _ => "other",
    }
}

/// Feeds log group commits into metrics.
pub struct CommitMetrics;

impl storage::CommitObserver for CommitMetrics {
    fn group_committed(&self, records_count: usize, oldest_wait: Duration) {
        kept::record("panshi_log_commit_seconds", &[], oldest_wait.as_secs_f64());
        kept::record("panshi_log_group_records", &[], records_count as f64);
    }
}
