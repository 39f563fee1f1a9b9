//! Card-pool shard actors. Each owns a disjoint slice of one SKU's available keys (a key
//! belongs to shard `card_id % shards`). A reservation starts at a home shard and tries the
//! others before answering sold out; what it gathered but cannot use goes back.
//!
//! Where shards live (`ShardHosts`): the HTTP workers' arbiters, once they registered, shard
//! `i` on worker `i % workers`; a reservation asks the shards on its own thread first, so a
//! create normally reserves with a message that never leaves its thread (no wake-up of
//! another thread, and none back), and reaches the other workers' shards only when its own
//! are empty. Without registered workers (tools, tests, the simulator) every shard lives on
//! the shop's own pool arbiter, as before.
//!
//! Sold out without a message: each SKU has one published count of its available keys
//! (`SkuPool::available`), changed by a shard in the same handler that changes its keys. A
//! create that reads fewer than it wants is answered sold out at once; the count was that
//! low at that instant, so the pool held fewer keys then (a key is offered from the moment
//! its shard counts it). A reservation walk that comes back short while the count says
//! enough keys exist (keys given back behind it) walks again, a bounded number of times.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Instant;

use actix::prelude::*;
use engine::pool::{shard_of, Shard};
use engine::{CardId, Rejection, Sku};

use crate::{ActorKind, Clock, Health, Shop, ShopError};

/// Messages a shard may hold before senders wait.
pub const POOL_MAILBOX_CAPACITY: usize = 1024;
/// Most arbiters that may host shards (one per HTTP worker).
pub const SHARD_HOSTS_MAX: usize = 64;

/// The arbiters pool shards are started on: the HTTP workers' (each with its thread),
/// or the shop's pool arbiter while none registered.
pub struct ShardHosts {
    workers: parking_lot::RwLock<Vec<(ThreadId, ArbiterHandle)>>,
    fallback: Arbiter,
}

impl ShardHosts {
    pub fn new() -> Self {
        Self {
            workers: parking_lot::RwLock::default(),
            fallback: Arbiter::new(),
        }
    }

    /// Registers the arbiter of the calling thread (an HTTP worker); pools opened from now
    /// on place shards on it. Once per thread; at most `SHARD_HOSTS_MAX`; a thread without
    /// an arbiter registers nothing.
    pub fn register_current(&self) -> usize {
        let thread = std::thread::current().id();
        let mut workers = self.workers.write();
        if let Some(arbiter) = Arbiter::try_current() {
            if workers.len() < SHARD_HOSTS_MAX && workers.iter().all(|(t, _)| *t != thread) {
                workers.push((thread, arbiter));
            }
        }
        workers.len()
    }

    pub fn registered_count(&self) -> usize {
        self.workers.read().len()
    }

    /// Where shard `index` goes: its arbiter, and its thread when it is a worker's.
    fn place(&self, index: usize) -> (ArbiterHandle, Option<ThreadId>) {
        let workers = self.workers.read();
        match workers.get(index % workers.len().max(1)) {
            Some((thread, arbiter)) => (arbiter.clone(), Some(*thread)),
            None => (self.fallback.handle(), None),
        }
    }
}

impl Default for ShardHosts {
    fn default() -> Self {
        Self::new()
    }
}

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
    /// The SKU's published available count, shared by its shards: each adds what it gains
    /// and subtracts what it loses, so one load reads the whole pool at one instant.
    available: Arc<AtomicUsize>,
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

    /// Publishes the shard's count, and its change to the SKU's count. Only this shard's
    /// handlers write its hint, so the previous value is what the SKU's count holds for it.
    fn publish(&self) {
        let now = self.shard.available_count();
        let before = self.available_hint.swap(now, Ordering::AcqRel);
        if now > before {
            self.available.fetch_add(now - before, Ordering::AcqRel);
        } else if before > now {
            self.available.fetch_sub(before - now, Ordering::AcqRel);
        }
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

/// The order a reservation on thread `here` asks shards in (`threads`: where each runs):
/// those on `here` first, then the others, each group from `home` on. No allocation: it
/// runs on every create.
fn ask_order(
    threads: &[Option<ThreadId>],
    here: ThreadId,
    home: usize,
) -> impl Iterator<Item = usize> + '_ {
    let count = threads.len();
    let rotated = move || (0..count).map(move |step| (home + step) % count);
    let local = move |index: &usize| threads[*index] == Some(here);
    rotated()
        .filter(local)
        .chain(rotated().filter(move |index| !local(index)))
}

/// Walks over the shards one reservation makes at most: a walk that comes back short
/// while the SKU's count says enough keys exist (given back behind it) walks again.
pub const RESERVE_WALKS_MAX: usize = 3;

/// One SKU's shards.
pub struct SkuPool {
    shards: Vec<Addr<PoolShard>>,
    hints: Vec<Arc<AtomicUsize>>,
    /// Available keys over all shards, as the shards published them (see the module doc).
    available: Arc<AtomicUsize>,
    /// The thread each shard runs on, when it is an HTTP worker's.
    threads: Vec<Option<ThreadId>>,
    /// Counts the messages sent to the shards (mailbox depth) and their failures.
    health: Arc<Health>,
    /// The shop's clock, for the time of a failure (not the shop itself: the shop owns this).
    clock: Arc<dyn Clock>,
}

impl SkuPool {
    /// Starts the SKU's shard actors, supervised, where `hosts` places them, each loaded
    /// from the store.
    pub fn start(shop: &Shop, sku: &Sku, hosts: &ShardHosts) -> Self {
        let shards_count = shop.settings().shards_per_sku;
        let mut shards = Vec::with_capacity(shards_count);
        let mut hints = Vec::with_capacity(shards_count);
        let mut threads = Vec::with_capacity(shards_count);
        let available = Arc::new(AtomicUsize::new(0));
        for index in 0..shards_count {
            let (arbiter, thread) = hosts.place(index);
            threads.push(thread);
            let hint = Arc::new(AtomicUsize::new(0));
            let mut actor = PoolShard {
                shop: shop.clone(),
                sku: sku.clone(),
                index,
                shard: Shard::default(),
                available_hint: hint.clone(),
                available: available.clone(),
            };
            actor.reload();
            shards.push(Supervisor::start_in_arbiter(&arbiter, move |_| actor));
            hints.push(hint);
        }
        Self {
            shards,
            hints,
            available,
            threads,
            health: shop.health_handle(),
            clock: shop.clock_handle(),
        }
    }

    /// Available keys as the shards published them: one load, no message.
    pub fn available(&self) -> usize {
        self.available.load(Ordering::Acquire)
    }

    /// Reserves `quantity` keys, all or none, asking the shards on this thread first, from
    /// shard `home` on. Sold out only once the published count was below `quantity`, or
    /// after `RESERVE_WALKS_MAX` walks came back short.
    pub async fn reserve(&self, quantity: usize, home: usize) -> Result<Vec<CardId>, ShopError> {
        let mut got = Vec::with_capacity(quantity);
        for _ in 0..RESERVE_WALKS_MAX {
            if self.available() < quantity - got.len() {
                break;
            }
            got = self.walk(quantity, home, got).await?;
            if got.len() == quantity {
                return Ok(got);
            }
        }
        self.give_back(got).await;
        Err(Rejection::SoldOut.into())
    }

    /// One walk over the shards, adding to `got` until it holds `quantity` keys.
    async fn walk(
        &self,
        quantity: usize,
        home: usize,
        mut got: Vec<CardId>,
    ) -> Result<Vec<CardId>, ShopError> {
        for index in ask_order(&self.threads, std::thread::current().id(), home) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reservation asks its own thread's shards first and every shard once.
    #[test]
    fn a_reservation_asks_its_own_threads_shards_first() {
        let here = std::thread::current().id();
        let other = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let threads = [Some(here), Some(other), Some(here), Some(other)];
        assert_eq!(
            ask_order(&threads, here, 0).collect::<Vec<_>>(),
            vec![0, 2, 1, 3]
        );
        assert_eq!(
            ask_order(&threads, here, 1).collect::<Vec<_>>(),
            vec![2, 0, 1, 3]
        );
        assert_eq!(
            ask_order(&threads, other, 3).collect::<Vec<_>>(),
            vec![3, 1, 0, 2]
        );
        // Shards on the shop's own arbiter (no worker registered): from home, in turn.
        assert_eq!(
            ask_order(&[None; 4], here, 2).collect::<Vec<_>>(),
            vec![2, 3, 0, 1]
        );
    }
}
