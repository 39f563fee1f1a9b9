//! Card-pool shard actors. Each owns a disjoint slice of one SKU's available keys (a key
//! belongs to shard `card_id % shards`). A reservation starts at a home shard and tries the
//! others before answering sold out; what it gathered but cannot use goes back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use engine::pool::{shard_of, Shard};
use engine::{CardId, Rejection, Sku};

use crate::{ActorKind, Clock, Health, Shop, ShopError};

/// Messages a shard may hold before senders wait.
pub const POOL_MAILBOX_CAPACITY: usize = 1024;

#[derive(Message)]
#[rtype(result = "Vec<CardId>")]
pub struct Take {
    pub quantity: usize,
}

/// Keys going back to the shard: a lapsed reservation (after its expiry is durable), or an
/// incomplete one that was never logged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GiveBack(pub Vec<CardId>);

/// Freshly imported keys (after their import is durable).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Add(pub Vec<CardId>);

/// Keys an operator is deleting: the shard drops those it holds and says which.
#[derive(Message)]
#[rtype(result = "Vec<CardId>")]
pub struct Remove(pub Vec<CardId>);

pub struct PoolShard {
    shop: Shop,
    sku: Sku,
    index: usize,
    shard: Shard,
    /// The shard's available count, readable without a message (a hint: it may lag).
    available_hint: Arc<AtomicUsize>,
}

impl PoolShard {
    /// Reloads this shard's keys from the store: on start and when the supervisor restarts it.
    fn reload(&mut self) {
        let shards_count = self.shop.settings().shards_per_sku;
        let state = self.shop.store().state();
        let mine = state
            .available_cards(&self.sku)
            .into_iter()
            .filter(|card| shard_of(*card, shards_count) == self.index);
        self.shard = Shard::default();
        self.shard.add(mine);
        self.publish();
    }

    fn handled(&self, started: Instant) {
        self.shop
            .health()
            .handled(ActorKind::PoolShard, started.elapsed());
    }

    fn publish(&self) {
        self.available_hint
            .store(self.shard.available_count(), Ordering::Release);
    }
}

impl Actor for PoolShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(POOL_MAILBOX_CAPACITY);
        self.shop.health().started(ActorKind::PoolShard);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shop.health().stopped(ActorKind::PoolShard);
    }
}

impl Supervised for PoolShard {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.shop.health().restarted(ActorKind::PoolShard);
        self.reload();
    }
}

impl Handler<Take> for PoolShard {
    type Result = MessageResult<Take>;

    fn handle(&mut self, msg: Take, _: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let mut taken = Vec::with_capacity(msg.quantity);
        self.shard.take(msg.quantity, &mut taken);
        self.publish();
        self.handled(started);
        MessageResult(taken)
    }
}

impl Handler<GiveBack> for PoolShard {
    type Result = ();

    fn handle(&mut self, msg: GiveBack, _: &mut Self::Context) {
        let started = Instant::now();
        // A key deleted while it was out (reserved by an order refused or lapsed since) is
        // never offered again: the log says it is gone.
        let mut cards = msg.0;
        {
            let state = self.shop.store().state();
            cards.retain(|card| !state.is_deleted(*card));
        }
        self.shard.give_back(&cards);
        self.publish();
        self.handled(started);
    }
}

impl Handler<Add> for PoolShard {
    type Result = ();

    fn handle(&mut self, msg: Add, _: &mut Self::Context) {
        let started = Instant::now();
        self.shard.add(msg.0);
        self.publish();
        self.handled(started);
    }
}

impl Handler<Remove> for PoolShard {
    type Result = MessageResult<Remove>;

    fn handle(&mut self, msg: Remove, _: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let removed = self.shard.remove(&msg.0);
        self.publish();
        self.handled(started);
        MessageResult(removed)
    }
}

/// One SKU's shards.
pub struct SkuPool {
    shards: Vec<Addr<PoolShard>>,
    hints: Vec<Arc<AtomicUsize>>,
    /// Counts the messages sent to the shards (mailbox depth) and their failures.
    health: Arc<Health>,
    /// The shop's clock, for the time of a failure (not the shop itself: the shop owns this).
    clock: Arc<dyn Clock>,
}

impl SkuPool {
    /// Starts the SKU's shard actors, supervised, on `arbiter`, each loaded from the store.
    pub fn start(shop: &Shop, sku: &Sku, arbiter: &ArbiterHandle) -> Self {
        let shards_count = shop.settings().shards_per_sku;
        let mut shards = Vec::with_capacity(shards_count);
        let mut hints = Vec::with_capacity(shards_count);
        for index in 0..shards_count {
            let hint = Arc::new(AtomicUsize::new(0));
            let mut actor = PoolShard {
                shop: shop.clone(),
                sku: sku.clone(),
                index,
                shard: Shard::default(),
                available_hint: hint.clone(),
            };
            actor.reload();
            shards.push(Supervisor::start_in_arbiter(arbiter, move |_| actor));
            hints.push(hint);
        }
        Self {
            shards,
            hints,
            health: shop.health_handle(),
            clock: shop.clock_handle(),
        }
    }

    pub fn available_hint(&self) -> usize {
        self.hints.iter().map(|h| h.load(Ordering::Acquire)).sum()
    }

    /// Reserves `quantity` keys, all or none, starting at shard `home`.
    pub async fn reserve(&self, quantity: usize, home: usize) -> Result<Vec<CardId>, ShopError> {
        if self.available_hint() < quantity {
            return Err(Rejection::SoldOut.into());
        }
        let count = self.shards.len();
        let mut got = Vec::with_capacity(quantity);
        for step in 0..count {
            let index = (home + step) % count;
            let want = quantity - got.len();
            if want == 0 {
                break;
            }
            if self.hints[index].load(Ordering::Acquire) == 0 {
                continue;
            }
            let queued = self.health.queued(ActorKind::PoolShard);
            let sent = self.shards[index].send(Take { quantity: want }).await;
            drop(queued);
            match sent {
                Ok(taken) => got.extend(taken),
                Err(_) => {
                    self.shard_gone(index);
                    self.give_back(got).await;
                    return Err(ShopError::Unavailable("card pool shard"));
                }
            }
        }
        if got.len() < quantity {
            self.give_back(got).await;
            return Err(Rejection::SoldOut.into());
        }
        Ok(got)
    }

    fn shard_gone(&self, index: usize) {
        let message = format!("card pool shard {index} did not answer");
        self.health
            .failed(ActorKind::PoolShard, &message, self.clock.now_ms());
    }

    /// Returns keys to the shards that own them. Waits for room rather than dropping keys.
    pub async fn give_back(&self, cards: Vec<CardId>) {
        self.route(cards, |cards| GiveBack(cards).into()).await;
    }

    /// Takes keys out of the shards that own them (before their deletion is committed);
    /// returns those the shards held. A shard that does not answer removes nothing.
    pub async fn remove(&self, cards: &[CardId]) -> Vec<CardId> {
        let count = self.shards.len();
        let mut split: Vec<Vec<CardId>> = vec![Vec::new(); count];
        for card in cards {
            split[shard_of(*card, count)].push(*card);
        }
        let mut removed = Vec::with_capacity(cards.len());
        for (index, cards) in split.into_iter().enumerate() {
            if cards.is_empty() {
                continue;
            }
            let queued = self.health.queued(ActorKind::PoolShard);
            let sent = self.shards[index].send(Remove(cards)).await;
            drop(queued);
            match sent {
                Ok(taken) => removed.extend(taken),
                Err(_) => self.shard_gone(index),
            }
        }
        removed
    }

    /// Adds imported keys to the shards that own them.
    pub async fn add(&self, cards: Vec<CardId>) {
        self.route(cards, |cards| Add(cards).into()).await;
    }

    async fn route(&self, cards: Vec<CardId>, message: impl Fn(Vec<CardId>) -> Routed) {
        if cards.is_empty() {
            return;
        }
        let count = self.shards.len();
        let mut split: Vec<Vec<CardId>> = vec![Vec::new(); count];
        for card in cards {
            split[shard_of(card, count)].push(card);
        }
        for (index, cards) in split.into_iter().enumerate() {
            if cards.is_empty() {
                continue;
            }
            let queued = self.health.queued(ActorKind::PoolShard);
            let sent = match message(cards) {
                Routed::GiveBack(m) => self.shards[index].send(m).await,
                Routed::Add(m) => self.shards[index].send(m).await,
            };
            drop(queued);
            if sent.is_err() {
                self.shard_gone(index);
                tracing::error!(
                    shard = index,
                    "card pool shard gone; its keys reload on restart"
                );
            }
        }
    }
}

pub enum Routed {
    GiveBack(GiveBack),
    Add(Add),
}

impl From<GiveBack> for Routed {
    fn from(m: GiveBack) -> Self {
        Routed::GiveBack(m)
    }
}

impl From<Add> for Routed {
    fn from(m: Add) -> Self {
        Routed::Add(m)
    }
}
