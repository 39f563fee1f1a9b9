//! Order actors: one per live order, owning its lifecycle (payment, delivery, expiry timer,
//! live subscribers). Every change is decided by the engine, committed, and applied to the
//! actor's copy only once durable; a message that changes state holds the mailbox until then
//! (`AtomicResponse`), so one order's events are strictly serial.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use engine::order::PaymentDecision;
use engine::{Event, Fulfilment, Order, OrderId, OrderStatus, Payment, ReviewReason};
use parking_lot::Mutex;

use crate::channel::{
    reconcile_delay_ms, ChannelActor, GatewayError, Query, QueryAnswer, RECONCILE_ATTEMPTS_MAX,
};
use crate::trace::Stage;
use crate::{ActorKind, Shop, ShopError};

/// Messages an order actor may hold before senders wait.
pub const ORDER_MAILBOX_CAPACITY: usize = 64;
/// How long an actor woken for a settled order lingers before stopping.
pub const SETTLED_LINGER_MS: u64 = 5_000;
/// Retry delay after a failed commit of an expiry.
pub const EXPIRY_RETRY_MS: u64 = 1_000;
const DIRECTORY_SHARDS: usize = 32;

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

/// Stops the actor: this node stopped leading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

#[derive(Message)]
#[rtype(result = "()")]
struct Expire;

/// When a step began (wall clock, for the trace) and how long it took (monotonic).
type Timed = (u64, Duration);

/// What a payment's asynchronous part did, for the trace.
struct PaidSteps {
    fulfilment: Fulfilment,
    /// Present when the keys had lapsed and were reserved again.
    reserved: Option<Timed>,
    committed: Timed,
}

pub struct OrderActor {
    shop: Shop,
    order: Order,
    serial: u64,
    /// The order's payment channel, when it can be queried (reconciliation).
    channel: Option<Arc<Addr<ChannelActor>>>,
    reconcile_attempts: u32,
    /// The gateway was asked once more before the keys are released.
    checked_before_expiry: bool,
}

/// An operator refunds a paid order that could not be fulfilled.
#[derive(Message)]
#[rtype(result = "Result<OrderStatus, ShopError>")]
pub struct Refund;

/// Ask the order's gateway whether it was paid (reconciliation).
#[derive(Message)]
#[rtype(result = "()")]
struct Reconcile;

impl OrderActor {
    /// After a terminal status the actor stops (live watchers are told by the feed that
    /// every applied change reaches, `live.rs`).
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.order.status.is_terminal() {
            ctx.stop();
        }
    }

    /// Applies a durable payment: the actor's copy, metrics, subscribers, trace. Called only
    /// once the `PaymentApplied` event is durable.
    fn paid(
        &mut self,
        payment: &Payment,
        steps: PaidSteps,
        started: (u64, Instant),
        ctx: &mut Context<Self>,
    ) -> PayOutcome {
        let apply_started = (self.shop.now_ms(), Instant::now());
        let released = self.order.apply_payment(payment, &steps.fulfilment);
        if !released.is_empty() {
            // Durable now: the review freed the keys the order held.
            let (shop, sku) = (self.shop.clone(), self.order.sku.clone());
            actix::spawn(async move { shop.give_back(&sku, released).await });
        }
        self.shop.risk_released(&self.order.order_id);
        self.shop.record_payment(&self.order, &steps.fulfilment);
        let applied = (apply_started.0, apply_started.1.elapsed());
        let elapsed = started.1.elapsed();
        if matches!(steps.fulfilment, Fulfilment::Delivered { .. }) {
            crate::kept::record("panshi_delivery_seconds", &[], elapsed.as_secs_f64());
        }
        self.trace_payment(&steps, (started.0, elapsed), applied);
        self.shop.health().handled(ActorKind::Order, elapsed);
        self.settle(ctx);
        PayOutcome::Applied(self.order.status)
    }

    fn trace_payment(&self, steps: &PaidSteps, notify: Timed, applied: Timed) {
        let order_id = &self.order.order_id;
        let Some(trace_id) = self.shop.trace_id_of(order_id) else {
            return;
        };
        let settled = match steps.fulfilment {
            Fulfilment::Delivered { .. } => Stage::Deliver,
            Fulfilment::ManualReview { .. } => Stage::ManualReview,
        };
        let timed = |stage: Stage, (at_ms, duration): Timed| (stage, at_ms, duration);
        let (notify, committed) = (
            timed(Stage::Notify, notify),
            timed(Stage::Commit, steps.committed),
        );
        let settled = timed(settled, applied);
        let traces = self.shop.traces();
        match steps.reserved {
            Some(reserved) => {
                let reserved = timed(Stage::Reserve, reserved);
                traces.record_all(order_id, &trace_id, &[notify, reserved, committed, settled]);
            }
            None => traces.record_all(order_id, &trace_id, &[notify, committed, settled]),
        }
    }

    /// Notes a failed message in the kind's health, and its handling time.
    fn failed(&self, error: &ShopError, started: Instant) {
        let message = format!("order {}: {error}", self.order.order_id);
        self.shop
            .health()
            .failed(ActorKind::Order, &message, self.shop.now_ms());
        self.shop
            .health()
            .handled(ActorKind::Order, started.elapsed());
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
            OrderStatus::AwaitingPayment => {
                self.schedule_expiry(ctx);
                self.schedule_reconcile(ctx);
            }
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

impl Handler<Retire> for OrderActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Pay> for OrderActor {
    type Result = AtomicResponse<Self, Result<PayOutcome, ShopError>>;

    fn handle(&mut self, msg: Pay, _: &mut Self::Context) -> Self::Result {
        let started = (self.shop.now_ms(), Instant::now());
        let payment = msg.0;
        let channel_allowed = self
            .shop
            .channel_may_pay(&self.order.order_id, &payment.channel);
        let decision = match self.order.decide_payment(&payment, channel_allowed) {
            Ok(decision) => decision,
            Err(rejection) => {
                self.shop
                    .health()
                    .handled(ActorKind::Order, started.1.elapsed());
                return AtomicResponse::new(Box::pin(fut::ready(Err(rejection.into()))));
            }
        };
        let fulfil = match decision {
            PaymentDecision::AlreadyApplied => {
                self.shop
                    .health()
                    .handled(ActorKind::Order, started.1.elapsed());
                return AtomicResponse::new(Box::pin(fut::ready(Ok(PayOutcome::AlreadyApplied))));
            }
            PaymentDecision::DeliverReserved => Fulfil::Deliver { reserve: 0 },
            PaymentDecision::ReserveAgain { quantity } => Fulfil::Deliver {
                reserve: quantity as usize,
            },
            PaymentDecision::Review(reason) => Fulfil::Review(reason),
        };
        let work = commit_payment(
            self.shop.clone(),
            self.order.order_id.clone(),
            self.order.sku.clone(),
            payment.clone(),
            fulfil,
        );
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(steps) => Ok(act.paid(&payment, steps, started, ctx)),
                Err(error) => {
                    act.failed(&error, started.1);
                    Err(error)
                }
            },
        )))
    }
}

/// How a payment is to be fulfilled, as decided before its asynchronous part.
enum Fulfil {
    /// Deliver, reserving `reserve` keys again first (0 when the order holds its keys).
    Deliver { reserve: usize },
    /// Send to review without delivering.
    Review(ReviewReason),
}

/// The asynchronous part of a payment: reserve again if the keys lapsed, then commit. Keys
/// reserved here go back if the commit was refused before reaching the log.
async fn commit_payment(
    shop: Shop,
    order_id: OrderId,
    sku: engine::Sku,
    payment: Payment,
    fulfil: Fulfil,
) -> Result<PaidSteps, ShopError> {
    let reserve_started = (shop.now_ms(), Instant::now());
    let reserve_quantity = match fulfil {
        Fulfil::Deliver { reserve } => reserve,
        Fulfil::Review(_) => 0,
    };
    let fulfilment = match fulfil {
        Fulfil::Review(reason) => Fulfilment::ManualReview { reason },
        Fulfil::Deliver { reserve: 0 } => Fulfilment::Delivered {
            newly_reserved: Vec::new(),
        },
        Fulfil::Deliver { reserve } => match shop.reserve(&sku, reserve).await {
            Ok(cards) => Fulfilment::Delivered {
                newly_reserved: cards,
            },
            Err(ShopError::Rejected(engine::Rejection::SoldOut)) => Fulfilment::ManualReview {
                reason: ReviewReason::SoldOutAfterLapse,
            },
            Err(other) => return Err(other),
        },
    };
    let reserved = (reserve_quantity > 0).then(|| (reserve_started.0, reserve_started.1.elapsed()));
    let event = Event::PaymentApplied {
        order_id,
        payment,
        at_ms: shop.now_ms(),
        fulfilment: fulfilment.clone(),
    };
    let commit_started = (shop.now_ms(), Instant::now());
    if let Err(error) = shop.commit(&event).await {
        if let Fulfilment::Delivered { newly_reserved } = fulfilment {
            if error.is_refused_before_logging() {
                shop.give_back(&sku, newly_reserved).await;
            }
        }
        return Err(error);
    }
    if matches!(fulfilment, Fulfilment::Delivered { .. }) {
        shop.mail_waker().notify_one();
    }
    Ok(PaidSteps {
        fulfilment,
        reserved,
        committed: (commit_started.0, commit_started.1.elapsed()),
    })
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
        if !self.checked_before_expiry && self.channel.is_some() {
            // Ask the gateway once more before the keys go back, so that nobody pays for
            // a key that was already released; then come back here.
            self.checked_before_expiry = true;
            self.query_gateway(ctx, true);
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let event = Event::OrderExpired {
            order_id: self.order.order_id.clone(),
            at_ms: now_ms,
        };
        let shop = self.shop.clone();
        let started = Instant::now();
        let work = async move { shop.commit(&event).await };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(move |result, act, ctx| {
            if let Err(error) = result {
                act.failed(&error, started);
                tracing::error!(order_id = %act.order.order_id, %error, "expiry not committed; retrying");
                ctx.run_later(Duration::from_millis(EXPIRY_RETRY_MS), |_, ctx| ctx.notify(Expire));
                return;
            }
            // Only now, with the expiry durable, may another order get these keys.
            let released = act.order.apply_expiry();
            act.shop.risk_released(&act.order.order_id);
            act.shop.expired(&act.order, released);
            act.shop
                .health()
                .handled(ActorKind::Order, started.elapsed());
            act.settle(ctx);
        })))
    }
}

impl OrderActor {
    fn schedule_reconcile(&self, ctx: &mut Context<Self>) {
        if self.channel.is_none() || self.reconcile_attempts >= RECONCILE_ATTEMPTS_MAX {
            return;
        }
        // The first query comes RECONCILE_FIRST_MS after creation (sooner never helps: the
        // buyer is still paying), later ones back off; none is scheduled past the expiry,
        // which asks once more by itself.
        let since_created = if self.reconcile_attempts == 0 {
            self.shop.now_ms().saturating_sub(self.order.created_at_ms)
        } else {
            0
        };
        let delay_ms = reconcile_delay_ms(self.reconcile_attempts).saturating_sub(since_created);
        if self.shop.now_ms() + delay_ms >= self.order.expires_at_ms {
            return;
        }
        ctx.run_later(Duration::from_millis(delay_ms), |_, ctx| {
            ctx.notify(Reconcile)
        });
    }

    /// Queries the gateway; a paid answer is applied exactly as a notify would be (same
    /// transaction id, so a late notify changes nothing). With `then_expire`, the expiry
    /// runs after the answer, whatever it is.
    fn query_gateway(&mut self, ctx: &mut Context<Self>, then_expire: bool) {
        let Some(channel) = self.channel.clone() else {
            return;
        };
        let reference = self.shop.payment_reference(&self.order.order_id);
        let query = channel.send(Query {
            order_id: self.order.order_id.clone(),
            reference,
        });
        let work = async move {
            query
                .await
                .unwrap_or(Err(GatewayError::Failed("channel gone".into())))
        };
        ctx.spawn(work.into_actor(self).map(move |answer, act, ctx| {
            if act.order.status != OrderStatus::AwaitingPayment {
                return;
            }
            match answer {
                Ok(QueryAnswer::Paid(payment)) => {
                    metrics::counter!("panshi_reconcile_recoveries_total").increment(1);
                    tracing::warn!(order_id = %act.order.order_id, stage = "reconcile", "paid at the gateway without a notify; applying");
                    ctx.notify(Pay(payment));
                }
                Ok(QueryAnswer::NotPaid) if then_expire => {
                    // Close the payment where the gateway allows, then release. A payment
                    // that still lands follows the late-payment rule.
                    let reference = act.shop.payment_reference(&act.order.order_id);
                    let close = crate::channel::Close { order_id: act.order.order_id.clone(), reference };
                    if let Some(channel) = &act.channel {
                        let _ = channel.try_send(close);
                    }
                }
                Ok(QueryAnswer::NotPaid) => {}
                Err(error) => tracing::debug!(order_id = %act.order.order_id, %error, "reconciliation query failed"),
            }
            if then_expire {
                ctx.notify(Expire);
            } else {
                act.reconcile_attempts += 1;
                act.schedule_reconcile(ctx);
            }
        }));
    }
}

impl Handler<Refund> for OrderActor {
    type Result = AtomicResponse<Self, Result<OrderStatus, ShopError>>;

    fn handle(&mut self, _: Refund, _: &mut Self::Context) -> Self::Result {
        if let Err(rejection) = self.order.decide_refund() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(rejection.into()))));
        }
        let event = Event::OrderRefunded {
            order_id: self.order.order_id.clone(),
            at_ms: self.shop.now_ms(),
        };
        let shop = self.shop.clone();
        let work = async move { shop.commit(&event).await };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, act, ctx| {
            result?;
            act.order.apply_refund();
            act.settle(ctx);
            Ok(act.order.status)
        })))
    }
}

impl Handler<Reconcile> for OrderActor {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Self::Context) {
        if self.order.status == OrderStatus::AwaitingPayment {
            self.query_gateway(ctx, false);
        }
    }
}

/// Per order: the serial of the actor started for it, and its address.
type Actors = HashMap<OrderId, (u64, Addr<OrderActor>)>;

/// Where each live order's actor is. Sharded to keep lock hold times short.
pub struct Directory {
    shards: Vec<Mutex<Actors>>,
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
    fn shard(&self, order_id: &OrderId) -> &Mutex<Actors> {
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
            channel: shop.channel_of(order_id),
            reconcile_attempts: 0,
            checked_before_expiry: false,
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

    /// Stops every order actor (this node stopped leading). An actor mid-commit finishes
    /// that message first.
    pub fn stop_all(&self) {
        for shard in &self.shards {
            for (_, (_, addr)) in shard.lock().drain() {
                let _ = addr.try_send(Retire);
            }
        }
    }
}
