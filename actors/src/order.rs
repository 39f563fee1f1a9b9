//! Order actors: one per live order, owning its lifecycle (payment, delivery, expiry timer,
//! live subscribers). Every change is decided by the engine, committed, and applied to the
//! actor's copy only once durable; a message that changes state holds the mailbox until then
//! (`AtomicResponse`), so one order's events are strictly serial.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use engine::order::PaymentDecision;
use engine::{CardId, Event, Fulfilment, Order, OrderId, OrderStatus, Payment, ReviewReason};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::{ActorKind, Shop, ShopError};

/// Messages an order actor may hold before senders wait.
pub const ORDER_MAILBOX_CAPACITY: usize = 64;
/// Frames a live subscriber may lag behind before it is dropped (it reconnects).
pub const SUBSCRIBER_BUFFER_FRAMES: usize = 8;
/// Live subscribers one order may have.
pub const SUBSCRIBERS_PER_ORDER_MAX: usize = 16;
/// How long an actor woken for a settled order lingers before stopping.
pub const SETTLED_LINGER_MS: u64 = 5_000;
/// Retry delay after a failed commit of an expiry.
pub const EXPIRY_RETRY_MS: u64 = 1_000;
const DIRECTORY_SHARDS: usize = 32;

/// A status change as subscribers see it. `cards` holds the keys once delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderUpdate {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub cards: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum PayOutcome {
    /// This notify changed the order to `status`.
    Applied(OrderStatus),
    /// The same transaction was applied before; nothing changed.
    AlreadyApplied,
}

#[derive(Message)]
#[rtype(result = "Result<PayOutcome, ShopError>")]
pub struct Pay(pub Payment);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub mpsc::Sender<OrderUpdate>);

#[derive(Message)]
#[rtype(result = "()")]
struct Expire;

pub struct OrderActor {
    shop: Shop,
    order: Order,
    serial: u64,
    subscribers: Vec<mpsc::Sender<OrderUpdate>>,
}

impl OrderActor {
    fn update(&self) -> OrderUpdate {
        let cards = if self.order.status == OrderStatus::Delivered {
            self.shop.card_keys(&self.order.cards)
        } else {
            Vec::new()
        };
        OrderUpdate {
            order_id: self.order.order_id.clone(),
            status: self.order.status,
            cards,
        }
    }

    fn push(&mut self, update: OrderUpdate) {
        self.subscribers
            .retain(|subscriber| subscriber.try_send(update.clone()).is_ok());
    }

    /// After a terminal status subscribers are released (their sockets close normally)
    /// and the actor stops.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.order.status.is_terminal() {
            self.subscribers.clear();
            ctx.stop();
        }
    }

    fn schedule_expiry(&self, ctx: &mut Context<Self>) {
        let delay_ms = self.order.expires_at_ms.saturating_sub(self.shop.now_ms());
        ctx.run_later(Duration::from_millis(delay_ms), |_, ctx| ctx.notify(Expire));
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(ORDER_MAILBOX_CAPACITY);
        self.shop.health().started(ActorKind::Order);
        match self.order.status {
            OrderStatus::AwaitingPayment => self.schedule_expiry(ctx),
            OrderStatus::ManualReview => {}
            _ => {
                ctx.run_later(Duration::from_millis(SETTLED_LINGER_MS), |_, ctx| {
                    ctx.stop()
                });
            }
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shop.health().stopped(ActorKind::Order);
        self.shop
            .directory()
            .remove(&self.order.order_id, self.serial);
    }
}

impl Handler<Subscribe> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        if msg.0.try_send(self.update()).is_err() {
            return;
        }
        if !self.order.status.is_terminal() && self.subscribers.len() < SUBSCRIBERS_PER_ORDER_MAX {
            self.subscribers.push(msg.0);
        }
    }
}

impl Handler<Pay> for OrderActor {
    type Result = AtomicResponse<Self, Result<PayOutcome, ShopError>>;

    fn handle(&mut self, msg: Pay, _: &mut Self::Context) -> Self::Result {
        let payment = msg.0;
        let decision = match self.order.decide_payment(&payment) {
            Ok(decision) => decision,
            Err(rejection) => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(rejection.into()))))
            }
        };
        let reserve_quantity = match decision {
            PaymentDecision::AlreadyApplied => {
                return AtomicResponse::new(Box::pin(fut::ready(Ok(PayOutcome::AlreadyApplied))))
            }
            PaymentDecision::DeliverReserved => 0,
            PaymentDecision::ReserveAgain { quantity } => quantity as usize,
        };
        let shop = self.shop.clone();
        let order_id = self.order.order_id.clone();
        let sku = self.order.sku.clone();
        let recorded = payment.clone();
        let work = async move {
            let fulfilment = if reserve_quantity == 0 {
                Fulfilment::Delivered {
                    newly_reserved: Vec::new(),
                }
            } else {
                match shop.reserve(&sku, reserve_quantity).await {
                    Ok(cards) => Fulfilment::Delivered {
                        newly_reserved: cards,
                    },
                    Err(ShopError::Rejected(engine::Rejection::SoldOut)) => {
                        Fulfilment::ManualReview {
                            reason: ReviewReason::SoldOutAfterLapse,
                        }
                    }
                    Err(other) => return Err(other),
                }
            };
            let event = Event::PaymentApplied {
                order_id,
                payment: recorded,
                at_ms: shop.now_ms(),
                fulfilment: fulfilment.clone(),
            };
            if let Err(error) = shop.commit(&event).await {
                if let Fulfilment::Delivered { newly_reserved } = fulfilment {
                    if error.is_refused_before_logging() {
                        shop.give_back(&sku, newly_reserved).await;
                    }
                }
                return Err(error);
            }
            Ok(fulfilment)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, ctx| {
                let fulfilment = result?;
                act.order.apply_payment(&payment, &fulfilment);
                act.shop.record_payment(&act.order, &fulfilment);
                act.push(OrderUpdate {
                    order_id: act.order.order_id.clone(),
                    status: OrderStatus::Paid,
                    cards: Vec::new(),
                });
                let update = act.update();
                act.push(update);
                act.settle(ctx);
                Ok(PayOutcome::Applied(act.order.status))
            },
        )))
    }
}

impl Handler<Expire> for OrderActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Expire, ctx: &mut Self::Context) -> Self::Result {
        let now_ms = self.shop.now_ms();
        if self.order.decide_expiry(now_ms).is_err() {
            if self.order.status == OrderStatus::AwaitingPayment {
                // Woken early (the wall clock moved back): sleep again until the deadline.
                self.schedule_expiry(ctx);
            }
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let event = Event::OrderExpired {
            order_id: self.order.order_id.clone(),
            at_ms: now_ms,
        };
        let shop = self.shop.clone();
        let work = async move { shop.commit(&event).await };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, act, ctx| {
            if let Err(error) = result {
                tracing::error!(order_id = %act.order.order_id, %error, "expiry not committed; retrying");
                ctx.run_later(Duration::from_millis(EXPIRY_RETRY_MS), |_, ctx| ctx.notify(Expire));
                return;
            }
            // Only now, with the expiry durable, may another order get these keys.
            let released = act.order.apply_expiry();
            act.shop.expired(&act.order, released);
            let update = act.update();
            act.push(update);
            act.settle(ctx);
        })))
    }
}

/// Where each live order's actor is. Sharded to keep lock hold times short.
pub struct Directory {
    shards: Vec<Mutex<HashMap<OrderId, (u64, Addr<OrderActor>)>>>,
    serial: AtomicU64,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            shards: (0..DIRECTORY_SHARDS).map(|_| Mutex::default()).collect(),
            serial: AtomicU64::new(1),
        }
    }
}

impl Directory {
    fn shard(&self, order_id: &OrderId) -> &Mutex<HashMap<OrderId, (u64, Addr<OrderActor>)>> {
        let hash = order_id
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        &self.shards[(hash % DIRECTORY_SHARDS as u64) as usize]
    }

    pub fn get(&self, order_id: &OrderId) -> Option<Addr<OrderActor>> {
        self.shard(order_id)
            .lock()
            .get(order_id)
            .map(|(_, addr)| addr.clone())
    }

    /// The order's actor, started on the current arbiter from `load` if none is live.
    pub fn get_or_start(
        &self,
        shop: &Shop,
        order_id: &OrderId,
        load: impl FnOnce() -> Result<Option<Order>, ShopError>,
    ) -> Result<Addr<OrderActor>, ShopError> {
        let mut shard = self.shard(order_id).lock();
        if let Some((_, addr)) = shard.get(order_id) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        let order = load()?.ok_or(ShopError::Rejected(engine::Rejection::UnknownOrder))?;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let addr = OrderActor {
            shop: shop.clone(),
            order,
            serial,
            subscribers: Vec::new(),
        }
        .start();
        shard.insert(order_id.clone(), (serial, addr.clone()));
        Ok(addr)
    }

    fn remove(&self, order_id: &OrderId, serial: u64) {
        let mut shard = self.shard(order_id).lock();
        if shard.get(order_id).is_some_and(|(s, _)| *s == serial) {
            shard.remove(order_id);
        }
    }

    pub fn live_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// Keys for display, in order.
pub(crate) fn keys_of(state: &engine::ShopState, cards: &[CardId]) -> Vec<String> {
    cards
        .iter()
        .filter_map(|card| state.card_key(*card).map(str::to_owned))
        .collect()
}
