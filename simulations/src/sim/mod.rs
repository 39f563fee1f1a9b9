//! The deterministic simulator. One `u64` seed drives everything: the fault settings, the
//! buyers (bursty, flash-sale shaped), the gateways (Epay, Alipay and WeChat Pay direct:
//! dropped, duplicated, delayed, reordered, forged and replayed notifies, each in its
//! protocol's wire form and verified as the edge verifies it), the clock, and crashes with
//! the unsynced log tail lost or torn.
//!
//! It drives the real engine (decisions, `ShopState` validation) and the real storage (log,
//! fdatasync, recovery, sled mirror, audit). The order flow follows the actors' sequence:
//! decide with the engine, commit, and change memory only after the commit is acknowledged.
//! Every step waits for its own commit, so results do not depend on thread timing and a
//! failing seed replays exactly.

mod cards;
mod cluster;
mod direct;
mod gateway;
mod history;
mod listings;
mod mail;
mod net;
mod on_cluster;
mod resellers;
mod rng;

use std::collections::BTreeMap;
use std::fmt;

use cluster::{Cluster, ClusterFaults};
use engine::order::PaymentDecision;
use engine::pool::{shard_of, Shard};
use engine::{
    CardId, Currency, Event, Fulfilment, NewOrder, Order, OrderId, OrderStatus, Payment, Product,
    ReviewReason, Sku,
};
use gateway::{Gateway, Notify, Protocol};
use replication::Node;
pub use rng::Rng;
use storage::Store;

/// Simulated time a buyer has to pay.
pub const ORDER_TTL_MS: u64 = 60_000;
/// Shards per SKU in the simulated pools.
pub const SHARDS: usize = 4;
/// Simulated minutes the liveness phase may take, after faults stop.
pub const LIVENESS_MS_MAX: u64 = 6 * 60 * 60 * 1000;
const PRODUCTS: [(&str, u64); 2] = [("sim-a", 100), ("sim-b", 250)];
pub const MERCHANT_PID: &str = "1001";
pub const MERCHANT_KEY: &str = "sim-merchant-key";

/// The faults of one seed, printed before it runs.
#[derive(Clone, Debug)]
pub struct Faults {
    pub notify_drop_percent: u64,
    pub notify_duplicate_percent: u64,
    pub notify_delay_ms_max: u64,
    pub notify_forge_percent: u64,
    /// Share of payments one of whose genuine notifies is captured and replayed later.
    pub notify_replay_percent: u64,
    pub crash_per_mille: u64,
    pub torn_tail_percent: u64,
    pub sync_failure_per_mille: u64,
    /// Tries of a delivery mail that the simulated mail server refuses.
    pub mail_failure_percent: u64,
    /// One node: a snapshot (which archives settled orders out of memory) per step.
    pub snapshot_per_mille: u64,
}

impl Faults {
    pub fn from_rng(rng: &mut Rng) -> Self {
        Self {
            notify_drop_percent: rng.below(40),
            notify_duplicate_percent: rng.below(40),
            notify_delay_ms_max: rng.below(120_000),
            notify_forge_percent: rng.below(15),
            notify_replay_percent: rng.below(20),
            crash_per_mille: rng.below(25),
            torn_tail_percent: rng.below(100),
            sync_failure_per_mille: rng.below(8),
            mail_failure_percent: rng.below(60),
            snapshot_per_mille: rng.below(60),
        }
    }

    fn none() -> Self {
        Self {
            notify_drop_percent: 0,
            notify_duplicate_percent: 0,
            notify_delay_ms_max: 1_000,
            notify_forge_percent: 0,
            notify_replay_percent: 0,
            crash_per_mille: 0,
            torn_tail_percent: 0,
            sync_failure_per_mille: 0,
            mail_failure_percent: 0,
            snapshot_per_mille: 0,
        }
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "notify drop {}%, duplicate {}%, delay <= {} ms, forged {}%, replayed {}%; crash {}‰ per step, torn tail {}%, sync failure {}‰; mail refused {}%; snapshot {}‰ per step",
            self.notify_drop_percent,
            self.notify_duplicate_percent,
            self.notify_delay_ms_max,
            self.notify_forge_percent,
            self.notify_replay_percent,
            self.crash_per_mille,
            self.torn_tail_percent,
            self.sync_failure_per_mille,
            self.mail_failure_percent,
            self.snapshot_per_mille
        )
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub steps: u64,
    /// 1: one node (`Node::start_single`); 3: a cluster of three voters (`cluster`).
    pub nodes: u64,
    /// Run with a deliberately broken rule to prove the checks can fail: on one node, keys
    /// released without a committed expiry; on three, no readiness gate.
    pub canary: bool,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub orders: u64,
    /// Reseller bulk purchases acknowledged.
    pub reseller_orders: u64,
    /// Delivery mails sent, and given up, as the log holds them at the end.
    pub mails_sent: u64,
    pub mails_given_up: u64,
    pub crashes: u64,
    /// One node: snapshots taken.
    pub snapshots: u64,
    /// Orders out of memory at the end (archived by snapshots).
    pub archived: u64,
    /// Keys out of memory at the end (archived with the orders that bought them).
    pub archived_keys: u64,
    /// One node: sled rebuilt with the rows memory holds while the node ran.
    pub sled_rebuilds: u64,
    /// Writes whose outcome the client never learned (three nodes: the leader changed or the
    /// network held them too long).
    pub unknown_outcomes: u64,
    pub notifies: u64,
    /// Forged and stale replayed notifies the shop refused, as it must.
    pub notifies_refused: u64,
    pub violations: Vec<String>,
    /// The cluster's moves, elections and faults (three nodes only).
    pub cluster: Option<cluster::NetStats>,
    /// A digest of the committed history (three nodes only): equal on every run of a seed.
    pub digest: u64,
    /// The step at which the first violation was found.
    pub first_violation_step: Option<u64>,
}

/// What the simulation was told was durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acked {
    Created,
    Delivered,
    Review,
    Expired,
}

impl Acked {
    fn status(self) -> OrderStatus {
        match self {
            Acked::Created => OrderStatus::AwaitingPayment,
            Acked::Delivered => OrderStatus::Delivered,
            Acked::Review => OrderStatus::ManualReview,
            Acked::Expired => OrderStatus::Expired,
        }
    }
}

/// A commit that did not come back acknowledged: the process "crashed" around it.
struct Crashed;

/// Where the shop runs.
enum Backend {
    /// One node, leading.
    Single {
        dir: tempfile::TempDir,
        node: Option<Node>,
    },
    /// Three voters; the shop runs on the active leader (`Cluster::shop`).
    Cluster(Box<Cluster>),
}

struct World {
    rng: Rng,
    now_ms: u64,
    faults: Faults,
    canary: bool,
    backend: Backend,
    step: u64,
    /// No leader could be had even with every fault healed, or no write went through for
    /// too long: the run stops.
    stuck: bool,
    /// Writes to the cluster whose outcome stayed unknown since the last acknowledged one.
    failed_writes_in_a_row: u64,
    pools: BTreeMap<Sku, Vec<Shard>>,
    /// Times the pools were rebuilt from a store's state (a restart, a new leader): keys
    /// taken out before a rebuild are already back in them.
    pool_rebuilds: u64,
    live: BTreeMap<OrderId, Order>,
    acked: BTreeMap<OrderId, Acked>,
    gateway: Gateway,
    /// The direct channels' keys (parsed once).
    direct_keys: direct::Keys,
    outcome: Outcome,
    keys_imported: u64,
    /// The first card imported sealed (every one after the setup's legacy import).
    first_sealed_card: CardId,
    resellers: resellers::Model,
    mail: mail::Model,
    /// The highest log index of an acknowledged event: a crash can damage only what lies
    /// beyond it (what was acknowledged was synced).
    acked_through: u64,
    listings: listings::Model,
}

/// How often (in steps) the single node's lookups are checked (`World::check_lookups`).
const LOOKUPS_EVERY_STEPS: u64 = 20;

/// Archived orders (or cards) a node's live state drops per hold of its lock: small, so
/// that a seed's archives of a few dozen orders take several steps, with reads and events
/// between them.
pub(crate) const SIM_ARCHIVE_STEP_ITEMS: usize = 7;

/// The single node's configuration: the default, except that sled is rebuilt at every
/// archive, so that rebuilds meet crashes and lookups, and archives take small steps.
fn single_config() -> replication::NodeConfig {
    let mut config = replication::NodeConfig::single();
    config.sled_rebuild = storage::sled_dir::SledRebuild::ALWAYS;
    config.archive_step_items = SIM_ARCHIVE_STEP_ITEMS;
    config
}

pub fn run(options: &Options) -> Outcome {
    let mut rng = Rng::new(options.seed);
    let faults = Faults::from_rng(&mut rng);
    println!(
        "seed {}: {faults}{}",
        options.seed,
        if options.canary { " [canary]" } else { "" }
    );
    let backend = if options.nodes > 1 {
        let cluster_faults = ClusterFaults::from_rng(&mut rng);
        println!("  cluster: {cluster_faults}");
        Backend::Cluster(Box::new(Cluster::start(
            options.seed,
            options.canary,
            cluster_faults,
        )))
    } else {
        let dir = tempfile::tempdir().expect("temporary dir");
        let node = Node::start_alone(dir.path(), single_config()).expect("a fresh node");
        Backend::Single {
            dir,
            node: Some(node),
        }
    };
    let mut world = World {
        rng,
        now_ms: 1_790_000_000_000,
        faults,
        canary: options.canary,
        backend,
        step: 0,
        stuck: false,
        failed_writes_in_a_row: 0,
        pools: BTreeMap::new(),
        pool_rebuilds: 0,
        live: BTreeMap::new(),
        acked: BTreeMap::new(),
        gateway: Gateway::default(),
        direct_keys: direct::Keys::new(),
        outcome: Outcome::default(),
        keys_imported: 0,
        first_sealed_card: CardId(1),
        resellers: resellers::Model::default(),
        mail: mail::Model::default(),
        acked_through: 0,
        listings: listings::Model::default(),
    };
    world.ensure_shop();
    world.setup();
    for step in 0..options.steps {
        world.step = step;
        world.step();
        world.check(step);
        if world.outcome.violations.len() > 20 || world.stuck {
            break;
        }
    }
    world.faults = Faults::none();
    if let Backend::Cluster(cluster) = &mut world.backend {
        cluster.faults = cluster.faults.none();
    }
    world.settle();
    world.finish();
    world.outcome
}

impl World {
    fn store(&self) -> &Store {
        match &self.backend {
            Backend::Single { node, .. } => node.as_ref().expect("node running").store(),
            Backend::Cluster(cluster) => cluster.shop_store(),
        }
    }

    fn violation(&mut self, text: String) {
        if self.outcome.first_violation_step.is_none() {
            self.outcome.first_violation_step = Some(self.step);
        }
        self.outcome.violations.push(text);
    }

    /// Commits and waits. A refused event is a violation; an unacknowledged one a crash.
    fn commit(&mut self, event: &Event) -> Result<(), Crashed> {
        if let Backend::Cluster(_) = self.backend {
            return self.commit_to_cluster(event);
        }
        if self.rng.per_mille(self.faults.sync_failure_per_mille) {
            if let Backend::Single {
                node: Some(node), ..
            } = &self.backend
            {
                node.inject_sync_failure();
            }
        }
        match self
            .store()
            .commit(event)
            .and_then(|durable| durable.wait_blocking())
        {
            Ok(lsn) => {
                self.acked_through = self.acked_through.max(lsn.0);
                Ok(())
            }
            Err(storage::Error::Violation(v)) => {
                self.violation(format!("engine refused {}: {v}", describe(event)));
                Err(Crashed)
            }
            Err(_) => {
                self.crash(None);
                Err(Crashed)
            }
        }
    }

    fn setup(&mut self) {
        self.setup_mail();
        for (sku, price_cents) in PRODUCTS {
            let product = Product {
                sku: Sku::parse(sku).unwrap(),
                name: format!("simulated {sku}"),
                price_cents,
                currency: Currency::parse("CNY").unwrap(),
                created_at_ms: self.now_ms,
            };
            while self
                .commit(&Event::ProductCreated(product.clone()))
                .is_err()
            {
                if self.store().state().product(&product.sku).is_some() {
                    break;
                }
            }
            self.pools.insert(
                product.sku.clone(),
                (0..SHARDS).map(|_| Shard::default()).collect(),
            );
            // As an older version imported them: in the clear, sealed by the next start.
            self.import_keys(&product.sku, 40, true);
        }
        self.seal_legacy_cards();
        let first_sealed_card = self.store().state().next_card_id();
        self.first_sealed_card = first_sealed_card;
        self.setup_resellers();
        self.setup_listings();
    }

    fn step(&mut self) {
        if self.is_cluster() {
            let faulted = self.cluster_fault();
            if faulted || !self.ensure_shop() {
                return;
            }
            self.workload_step();
            self.run_network();
        } else if self.rng.per_mille(self.faults.snapshot_per_mille) {
            self.snapshot();
        } else {
            self.workload_step();
        }
    }

    /// One node: a snapshot now (archiving what has settled).
    fn snapshot(&mut self) {
        self.outcome.snapshots += 1;
        if let Backend::Single {
            node: Some(node), ..
        } = &self.backend
        {
            if let Err(error) = node.trigger(replication::Trigger::Snapshot) {
                self.violation(format!("snapshot failed: {error}"));
            }
        }
    }

    fn workload_step(&mut self) {
        if self.rng.per_mille(self.faults.crash_per_mille) {
            let in_flight = self.rng.percent(50);
            self.crash(in_flight.then_some(()));
            return;
        }
        match self.rng.below(100) {
            0..=34 => {
                // Flash-sale shaped: mostly small bursts, sometimes a rush.
                let burst = if self.rng.percent(10) {
                    10 + self.rng.below(30)
                } else {
                    1 + self.rng.below(4)
                };
                for _ in 0..burst {
                    // A failed commit in the burst crashes the leader: the rest of the
                    // burst waits for the next step's leader.
                    if !self.shop_runs() {
                        break;
                    }
                    self.buy();
                }
            }
            35..=59 => self.pay_something(),
            60..=79 => {
                let advance = self.rng.below(30_000);
                self.advance(advance);
            }
            80..=84 => self.mail_step(),
            85..=91 => self.reseller_step(),
            92..=95 => self.listing_step(),
            _ => {
                let sku = Sku::parse(PRODUCTS[self.rng.below(2) as usize].0).unwrap();
                let count = 1 + self.rng.below(15);
                self.import_keys(&sku, count, false);
                if self.rng.percent(10) {
                    self.import_duplicate(&sku);
                }
            }
        }
    }

    fn reserve(&mut self, sku: &Sku, quantity: usize) -> Option<Vec<CardId>> {
        let home = self.rng.below(SHARDS as u64) as usize;
        let shards = self.pools.get_mut(sku)?;
        let mut got = Vec::new();
        for step in 0..SHARDS {
            shards[(home + step) % SHARDS].take(quantity - got.len(), &mut got);
        }
        if got.len() < quantity {
            give_back(shards, &got);
            return None;
        }
        Some(got)
    }

    /// An order's stored token: its digest, as the actors commit it; one in ten in the
    /// clear, as an older version committed it (the state keeps only the digest).
    fn new_token(&mut self) -> String {
        let token = engine::ids::hex128(u128::from(self.rng.next_u64()));
        if self.rng.percent(10) {
            token
        } else {
            engine::ids::token_digest(&token)
        }
    }

    fn new_order(
        &mut self,
        sku: &Sku,
        quantity: u32,
        cards: Vec<CardId>,
        protocol: Protocol,
    ) -> NewOrder {
        let price = self
            .store()
            .state()
            .product(sku)
            .expect("sku")
            .product
            .price_cents;
        NewOrder {
            order_id: OrderId::generate(self.now_ms, self.rng.next_u64()),
            token: self.new_token(),
            trace_id: engine::ids::hex128(u128::from(self.rng.next_u64())),
            sku: sku.clone(),
            quantity,
            amount_cents: price * u64::from(quantity),
            currency: Currency::parse("CNY").unwrap(),
            contact: if self.rng.percent(60) {
                "sim@example.com".into()
            } else {
                "13800138000".into()
            },
            channel: protocol.channel().into(),
            payment_channel: protocol.channel().into(),
            payment_url: format!("http://gateway.invalid/{}", protocol.channel()),
            payment_ref: String::new(),
            created_at_ms: self.now_ms,
            expires_at_ms: self.now_ms + ORDER_TTL_MS,
            cards,
            idempotency: None,
        }
    }

    fn buy(&mut self) {
        let sku = Sku::parse(PRODUCTS[self.rng.below(2) as usize].0).unwrap();
        let quantity = 1 + self.rng.below(3) as u32;
        if self.rng.percent(5) {
            self.try_coupon_past_limit(&sku);
        }
        let Some(cards) = self.reserve(&sku, quantity as usize) else {
            return;
        };
        // On a crash the pools were rebuilt from the recovered log; nothing to give back.
        let protocol = Protocol::ALL[self.rng.below(Protocol::ALL.len() as u64) as usize];
        let with_coupon = self.rng.percent(30);
        self.commit_order(&sku, cards, with_coupon, protocol);
    }

    /// An order's creation was acknowledged: it is live and awaits payment.
    fn order_acknowledged(&mut self, created: NewOrder) {
        let id = created.order_id.clone();
        self.acked.insert(id.clone(), Acked::Created);
        self.live.insert(id, order_of(&created));
        self.outcome.orders += 1;
    }

    /// A buyer pays at the gateway: a live order mostly, sometimes one that lapsed.
    fn pay_something(&mut self) {
        let candidates: Vec<OrderId> = if self.rng.percent(85) && !self.live.is_empty() {
            self.live.keys().cloned().collect()
        } else {
            self.acked
                .iter()
                .filter(|(_, a)| **a == Acked::Expired)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let id = candidates[self.rng.below(candidates.len() as u64) as usize].clone();
        if self.gateway.is_paid(&id) {
            return;
        }
        let order = self.store().state().order(&id).map(|r| {
            (
                r.created.amount_cents,
                Protocol::of_channel(&r.created.payment_channel),
            )
        });
        let Some((amount_cents, protocol)) = order else {
            return;
        };
        let faults = self.faults.clone();
        self.gateway.pay(
            &mut self.rng,
            &faults,
            self.now_ms,
            (&id, protocol),
            amount_cents,
        );
    }

    fn advance(&mut self, by_ms: u64) {
        let until = self.now_ms + by_ms;
        while !self.stuck {
            let next_notify = self.gateway.next_due().unwrap_or(u64::MAX);
            let next_expiry = self
                .live
                .values()
                .map(|o| o.expires_at_ms)
                .min()
                .unwrap_or(u64::MAX);
            let next = next_notify.min(next_expiry);
            if next > until {
                break;
            }
            self.now_ms = self.now_ms.max(next);
            if next_expiry <= next_notify {
                self.expire_due();
            } else if let Some(notify) = self.gateway.pop_due(self.now_ms) {
                self.deliver_notify(notify);
            }
        }
        self.now_ms = until;
    }

    fn expire_due(&mut self) {
        let due: Vec<OrderId> = self
            .live
            .iter()
            .filter(|(_, o)| o.expires_at_ms <= self.now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(order) = self.live.get(&id).cloned() else {
                continue;
            };
            if order.decide_expiry(self.now_ms).is_err() {
                continue;
            }
            if self.canary {
                // The broken rule: keys go back without a committed expiry.
                self.live.remove(&id);
                give_back(self.pools.get_mut(&order.sku).expect("pool"), &order.cards);
                continue;
            }
            let event = Event::OrderExpired {
                order_id: id.clone(),
                at_ms: self.now_ms,
            };
            if self.commit(&event).is_err() {
                return;
            }
            let mut order = self.live.remove(&id).expect("live");
            let released = order.apply_expiry();
            give_back(self.pools.get_mut(&order.sku).expect("pool"), &released);
            self.acked.insert(id, Acked::Expired);
        }
    }

    /// The gateway's notify reaches the shop: verify as the edge does, then apply as the
    /// order actor does. The gateway retries until it hears `success`; forged notifies and
    /// stale replays must be refused, and are never retried.
    fn deliver_notify(&mut self, notify: Notify) {
        self.outcome.notifies += 1;
        let attacker = notify.forged || notify.replay_signed_at_ms.is_some();
        if !attacker && self.rng.percent(self.faults.notify_drop_percent) {
            self.gateway.retry(notify, self.now_ms);
            return;
        }
        let signed_at_ms = notify.replay_signed_at_ms.unwrap_or(self.now_ms);
        // The shop's own rule, in whole seconds as the headers carry them.
        let stale = notify.protocol == Protocol::Wechat
            && (self.now_ms / 1000).abs_diff(signed_at_ms / 1000)
                > engine::wechatpay::WECHATPAY_TOLERANCE_SECS;
        let must_refuse = notify.forged || stale;
        let nonce = self.rng.next_u64();
        let verified = direct::verify(
            &self.direct_keys,
            &notify,
            nonce,
            (signed_at_ms, self.now_ms),
        );
        let verified = match (verified, must_refuse) {
            (Err(_), true) => {
                self.outcome.notifies_refused += 1;
                return;
            }
            (Ok(_), true) => {
                self.violation(format!(
                    "a forged or stale {:?} notify for {} verified",
                    notify.protocol, notify.order_id
                ));
                return;
            }
            (Err(e), false) => {
                self.violation(format!(
                    "a genuine {:?} notify for {} failed: {e}",
                    notify.protocol, notify.order_id
                ));
                return;
            }
            (Ok(v), false) => v,
        };
        let payment = Payment {
            channel: notify_channel(&verified.order_id, notify.protocol.channel()).into(),
            gateway_trade_no: verified.trade_no.into(),
            amount_cents: verified.amount_cents,
        };
        if self.apply_payment(&verified.order_id, &payment).is_ok() {
            self.gateway.acknowledged(&notify);
        } else if !attacker {
            self.gateway.retry(notify, self.now_ms);
        }
    }

    fn apply_payment(&mut self, id: &OrderId, payment: &Payment) -> Result<(), Crashed> {
        let order = match self.live.get(id) {
            Some(order) => order.clone(),
            None => match self.store().order(id) {
                Ok(Some(record)) => record.to_order(),
                _ => {
                    self.violation(format!("a paid order {id} is unknown"));
                    return Err(Crashed);
                }
            },
        };
        // An order may be paid through the channel it was created on (no simulated method
        // has fallbacks): any other is a foreign one.
        let channel_allowed = self
            .store()
            .state()
            .order(id)
            .is_some_and(|record| *record.created.payment_channel == *payment.channel);
        let fulfilment = match order.decide_payment(payment, channel_allowed) {
            Ok(PaymentDecision::AlreadyApplied) => return Ok(()),
            Ok(PaymentDecision::Review(reason)) => Fulfilment::ManualReview { reason },
            Ok(PaymentDecision::DeliverReserved) => Fulfilment::Delivered {
                newly_reserved: vec![],
            },
            Ok(PaymentDecision::ReserveAgain { quantity }) => {
                match self.reserve(&order.sku, quantity as usize) {
                    Some(cards) => Fulfilment::Delivered {
                        newly_reserved: cards,
                    },
                    None => Fulfilment::ManualReview {
                        reason: ReviewReason::SoldOutAfterLapse,
                    },
                }
            }
            Err(rejection) => {
                self.violation(format!(
                    "a genuine payment for {id} was refused: {rejection}"
                ));
                return Err(Crashed);
            }
        };
        let event = Event::PaymentApplied {
            order_id: id.clone(),
            payment: payment.clone(),
            at_ms: self.now_ms,
            fulfilment: fulfilment.clone(),
        };
        self.commit(&event)?;
        self.live.remove(id);
        // As the order actor does: keys a reviewed order held go back once durable.
        let released = order.clone().apply_payment(payment, &fulfilment);
        give_back(self.pools.get_mut(&order.sku).expect("pool"), &released);
        let acked = match fulfilment {
            Fulfilment::Delivered { .. } => Acked::Delivered,
            Fulfilment::ManualReview { .. } => Acked::Review,
        };
        self.acked.insert(id.clone(), acked);
        if acked == Acked::Delivered {
            self.mail_queued(id);
        }
        Ok(())
    }

    /// kill -9: the store goes away; with `in_flight`, one more order was being committed
    /// and its frame may be lost whole, torn, or survive. Then restart from the log.
    fn crash(&mut self, in_flight: Option<()>) {
        self.outcome.crashes += 1;
        let mut unacked = None;
        let mut reseller_in_flight = None;
        let mut listing_in_flight = false;
        if in_flight.is_some() && self.rng.percent(30) {
            reseller_in_flight = self.top_up_in_flight();
        } else if in_flight.is_some() && self.rng.percent(30) {
            listing_in_flight = self.listing_in_flight();
        } else if in_flight.is_some() {
            let sku = Sku::parse(PRODUCTS[0].0).unwrap();
            if let Some(cards) = self.reserve(&sku, 1) {
                let created = self.new_order(&sku, 1, cards, Protocol::Epay);
                if let Ok(durable) = self
                    .store()
                    .commit(&Event::OrderCreated(std::sync::Arc::new(created.clone())))
                {
                    drop(durable);
                    unacked = Some(created.order_id);
                }
            }
        }
        let in_flight_now = unacked.is_some() || reseller_in_flight.is_some() || listing_in_flight;
        if self.is_cluster() {
            let torn = in_flight_now && self.rng.percent(self.faults.torn_tail_percent);
            self.crash_leader(torn);
        } else {
            if let Backend::Single { node, .. } = &mut self.backend {
                if let Some(node) = node.take() {
                    // The commit in flight reaches the log (unacknowledged) before the
                    // "crash", as it would have with a slower process death: what follows
                    // depends only on the seed.
                    node.quiesce();
                    self.outcome.sled_rebuilds += node.store().mirror_lag().rebuilds;
                    node.shutdown();
                }
            }
            if in_flight_now && self.rng.percent(self.faults.torn_tail_percent) {
                self.damage_tail();
            }
            self.restart();
        }
        self.adopt_in_flight(reseller_in_flight);
    }

    /// Every data dir the shop's history lives in: one, or each voter's.
    fn data_dirs(&self) -> Vec<std::path::PathBuf> {
        match &self.backend {
            Backend::Single { dir, .. } => vec![dir.path().to_path_buf()],
            Backend::Cluster(cluster) => cluster.dirs(),
        }
    }

    fn single_dir(&self) -> &std::path::Path {
        match &self.backend {
            Backend::Single { dir, .. } => dir.path(),
            Backend::Cluster(_) => unreachable!("one node only"),
        }
    }

    /// Damages the newest record, if it is not acknowledged (`cluster::damage_tail`).
    fn damage_tail(&mut self) {
        let dir = self.single_dir().to_owned();
        cluster::damage_tail(&dir, self.acked_through, &mut self.rng);
    }

    fn restart(&mut self) {
        let node = match Node::start_alone(self.single_dir(), single_config()) {
            Ok(node) => node,
            Err(error) => {
                self.violation(format!("restart failed: {error}"));
                panic!("the simulated shop cannot restart: {error}");
            }
        };
        if let Backend::Single { node: slot, .. } = &mut self.backend {
            *slot = Some(node);
        }
        self.reseed();
    }

    /// The shop's working memory starts over from the state (after a restart, or on a new
    /// leader), and takes the state's word on work whose acknowledgement was lost.
    fn reseed(&mut self) {
        self.pool_rebuilds += 1;
        self.pools.clear();
        self.live.clear();
        let store = self.store_handle();
        {
            let state = store.state();
            for product in state.products() {
                let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
                for card in state.available_cards(&product.product.sku) {
                    shards[shard_of(card, SHARDS)].add([card]);
                }
                self.pools.insert(product.product.sku.clone(), shards);
            }
            for (_, record) in state.hot_orders() {
                if record.status == OrderStatus::AwaitingPayment {
                    self.live
                        .insert(record.created.order_id.clone(), record.to_order());
                }
            }
        }
        self.keys_imported = store.state().cards_count();
        self.adopt_unacknowledged();
        self.adopt_mails();
        // As the server does at every start.
        self.seal_legacy_cards();
    }

    fn store_handle(&self) -> std::sync::Arc<Store> {
        match &self.backend {
            Backend::Single { node, .. } => node.as_ref().expect("node running").store().clone(),
            Backend::Cluster(cluster) => cluster.shop_store().clone(),
        }
    }

    /// Work whose acknowledgement was lost may or may not have survived: take the log's word.
    fn adopt_unacknowledged(&mut self) {
        let state = self.store().state();
        let mut adopted = Vec::new();
        state.for_each_order(|_, record| {
            let id = &record.created.order_id;
            let known = self.acked.get(id).copied();
            let now = match record.status {
                OrderStatus::AwaitingPayment => Acked::Created,
                OrderStatus::Delivered => Acked::Delivered,
                OrderStatus::ManualReview => Acked::Review,
                OrderStatus::Expired => Acked::Expired,
                _ => return,
            };
            if known != Some(now) && !known.is_some_and(|k| moved_back(k, now)) {
                adopted.push((id.clone(), now));
            }
        });
        drop(state);
        for (id, status) in adopted {
            if !self.acked.contains_key(&id) {
                self.outcome.orders += 1;
            }
            self.acked.insert(id, status);
        }
    }

    /// One node: a buyer's lookup shows every acknowledged order as the state has it (which
    /// `check` compares with what was acknowledged).
    fn check_lookups(&mut self, step: u64) {
        let store = self.store_handle();
        for problem in lookups_disagreeing(&store, self.acked.keys()) {
            self.violation(format!("step {step}: {problem}"));
        }
    }

    /// After each step: the invariants, and everything acknowledged is there as acknowledged.
    fn check(&mut self, step: u64) {
        if self.is_cluster() && !self.check_cluster(step) {
            return;
        }
        let problems: Vec<String> = self
            .store()
            .state()
            .check()
            .into_iter()
            .map(|v| v.0)
            .collect();
        for problem in problems {
            self.violation(format!("step {step}: {problem}"));
        }
        let mut lost = Vec::new();
        {
            let state = self.store().state();
            for (id, acked) in &self.acked {
                match state.order(id) {
                    Some(record) if record.status == acked.status() => {}
                    Some(record) => lost.push(format!(
                        "step {step}: order {id} is {:?}, acknowledged {:?}",
                        record.status, acked
                    )),
                    None => lost.push(format!("step {step}: acknowledged order {id} lost")),
                }
            }
        }
        for problem in lost {
            self.violation(problem);
        }
        if !self.is_cluster() && (step.is_multiple_of(LOOKUPS_EVERY_STEPS) || step == u64::MAX) {
            self.check_lookups(step);
        }
        self.check_card_keys(step);
        self.check_resellers(step);
        self.check_mail(step);
        self.check_listings(step);
    }

    /// Faults off: let time run until the gateway has nothing left to send (bounded).
    fn settle(&mut self) {
        if !self.ensure_shop() {
            return;
        }
        let deadline = self.now_ms + LIVENESS_MS_MAX;
        while self.gateway.has_pending() && self.now_ms < deadline {
            self.advance(60_000);
        }
        self.advance(ORDER_TTL_MS);
        self.settle_mail(deadline);
        for id in self.gateway.paid_orders() {
            let status = self.store().state().order(&id).map(|r| r.status);
            if !matches!(
                status,
                Some(OrderStatus::Delivered | OrderStatus::ManualReview)
            ) {
                self.violation(format!(
                    "liveness: order {id} was paid but is {status:?} after the faults stopped"
                ));
            }
        }
    }

    fn finish(&mut self) {
        let (sent, given_up) = {
            let state = self.store().state();
            (
                state.outbox().sent_count,
                state.outbox().given_up_count() as u64,
            )
        };
        self.outcome.mails_sent = sent;
        self.outcome.mails_given_up = given_up;
        (self.outcome.archived, self.outcome.archived_keys) = {
            let state = self.store().state();
            (
                state.orders_count() - state.hot_orders_count(),
                state.cards_count() - state.hot_cards_count(),
            )
        };
        let last = self.outcome.violations.len();
        self.check(u64::MAX);
        if self.outcome.violations.len() > last {
            return;
        }
        self.check_keys_at_rest(self.first_sealed_card);
        if self.is_cluster() {
            self.finish_cluster();
            return;
        }
        if let Backend::Single { node, .. } = &mut self.backend {
            if let Some(node) = node.take() {
                self.outcome.sled_rebuilds += node.store().mirror_lag().rebuilds;
                node.shutdown();
            }
        }
        match storage::audit::audit(self.single_dir()) {
            Ok(report) => {
                for violation in report.violations {
                    self.violation(format!("audit: {violation}"));
                }
            }
            Err(error) => self.violation(format!("audit failed: {error}")),
        }
    }
}

/// A lost acknowledgement can only have moved an order forward, never back.
/// The orders among `ids` whose lookup (`Store::order`: the view, sled, or the archive's
/// tables, whatever snapshots archived and sled rebuilds dropped) disagrees with the store's
/// own state, each said in a sentence.
fn lookups_disagreeing<'a>(store: &Store, ids: impl Iterator<Item = &'a OrderId>) -> Vec<String> {
    let mut wrong = Vec::new();
    for id in ids {
        let want = store.state().order(id).map(|record| record.status);
        let found = store.order(id).map(|o| o.map(|record| record.status));
        if !matches!(&found, Ok(status) if *status == want) {
            wrong.push(format!(
                "a lookup of order {id} found {found:?}, its state {want:?}"
            ));
        }
    }
    wrong
}

fn moved_back(known: Acked, now: Acked) -> bool {
    matches!(
        (known, now),
        (
            Acked::Delivered | Acked::Review | Acked::Expired,
            Acked::Created
        )
    )
}

fn give_back(shards: &mut [Shard], cards: &[CardId]) {
    for card in cards {
        shards[shard_of(*card, SHARDS)].give_back(&[*card]);
    }
}

fn order_of(created: &NewOrder) -> Order {
    Order {
        order_id: created.order_id.clone(),
        sku: created.sku.clone(),
        quantity: created.quantity,
        amount_cents: created.amount_cents,
        currency: created.currency,
        status: OrderStatus::AwaitingPayment,
        created_at_ms: created.created_at_ms,
        expires_at_ms: created.expires_at_ms,
        cards: created.cards.clone(),
        payment: None,
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::ProductCreated(p) => format!("product {}", p.sku),
        Event::CardsImported { sku, keys, .. } => {
            format!("import of {} keys into {sku}", keys.len())
        }
        Event::OrderCreated(o) => format!("order {}", o.order_id),
        Event::PaymentApplied { order_id, .. } => format!("payment of {order_id}"),
        Event::OrderExpired { order_id, .. } => format!("expiry of {order_id}"),
        Event::OrderRefunded { order_id, .. } => format!("refund of {order_id}"),
        Event::OperatorAction(action) => format!("operator action {}", action.action),
        Event::ResellerCreated(r) => format!("reseller {}", r.reseller_id),
        Event::ResellerRevoked { reseller_id, .. } => format!("revoke of {reseller_id}"),
        Event::BalanceChanged { reseller_id, .. } => format!("balance of {reseller_id}"),
        Event::ResellerOrderPlaced(o) => format!("reseller order {}", o.order_id),
        Event::WebhookDelivered {
            reseller_id, seq, ..
        } => format!("webhook {reseller_id}-{seq} delivered"),
        Event::WebhookParked {
            reseller_id, seq, ..
        } => format!("webhook {reseller_id}-{seq} parked"),
        Event::WebhookReplayed {
            reseller_id, seq, ..
        } => format!("webhook {reseller_id}-{seq} replayed"),
        Event::ResellerUpdated { reseller_id, .. } => format!("update of {reseller_id}"),
        Event::MailOutboxOpened { .. } => "the mail outbox's opening".to_owned(),
        Event::MailSent { order_id, .. } => format!("mail of {order_id} sent"),
        Event::MailFailed {
            order_id, attempt, ..
        } => format!("mail of {order_id} failed try {attempt}"),
        Event::ProductEdited { sku, .. } => format!("edit of {sku}"),
        Event::CardsDeleted { sku, cards, .. } => {
            format!("deletion of {} keys of {sku}", cards.len())
        }
        Event::OrderPlaced(placed) => format!("order {} with terms", placed.order.order_id),
        Event::CouponCreated(coupon) => format!("coupon {}", coupon.code),
        Event::CouponDisabled { code, .. } => format!("withdrawal of coupon {code}"),
        Event::ShopIdentitySet { .. } => "shop identity".into(),
        Event::SealedCardsImported { sku, cards, .. } => {
            format!("sealed import of {} keys into {sku}", cards.len())
        }
        Event::CardsSealed { cards } => format!("sealing of {} keys", cards.len()),
    }
}

/// Percent of orders whose genuine payment arrives through another channel than the one
/// they were created on (a verified payment from a foreign gateway): it must end in review.
const FOREIGN_CHANNEL_PERCENT: u64 = 3;

/// The channel an order's (every) notify arrives through: fixed per order, so that the
/// gateway's retries are replays of one transaction.
fn notify_channel(order_id: &OrderId, own: &'static str) -> &'static str {
    let hash = order_id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    if hash % 100 < FOREIGN_CHANNEL_PERCENT {
        "stripe"
    } else {
        own
    }
}
