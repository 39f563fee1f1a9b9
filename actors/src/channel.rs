//! Payment channel actors. Each channel (epay, alipay, wechat, ...) is a supervised actor that owns its
//! circuit breaker and a bound on concurrent server-to-server calls, behind one trait
//! (`GatewayClient`) that the edge implements for the real protocol.
//!
//! Reconciliation uses it: an order awaiting payment is queried at its gateway (first 10 s
//! after creation, then with backoff until expiry, and once more before its keys are
//! released), so no paid order waits for a callback that never comes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use engine::breaker::{Breaker, BreakerConfig, BreakerState};
use engine::{OrderId, Payment};
use tokio::sync::Semaphore;

use crate::{ActorKind, Clock};

/// Concurrent gateway calls per channel; more are refused at once and retried later.
pub const CHANNEL_CALLS_CONCURRENT_MAX: usize = 32;
/// How long one gateway call may take before it counts as failed.
pub const GATEWAY_CALL_TIMEOUT_MS: u64 = 3_000;
/// First reconciliation query after an order's creation.
pub const RECONCILE_FIRST_MS: u64 = 10_000;
/// Longest wait between two reconciliation queries of one order.
pub const RECONCILE_BACKOFF_MS_MAX: u64 = 120_000;
/// Most reconciliation queries per order (the one before expiry is extra).
pub const RECONCILE_ATTEMPTS_MAX: u32 = 12;
pub const CHANNEL_MAILBOX_CAPACITY: usize = 1024;
const _: () = assert!(RECONCILE_FIRST_MS <= RECONCILE_BACKOFF_MS_MAX);

/// The delay before reconciliation attempt `attempt` (0 = the first).
pub fn reconcile_delay_ms(attempt: u32) -> u64 {
    RECONCILE_FIRST_MS
        .saturating_mul(1 << attempt.min(16))
        .min(RECONCILE_BACKOFF_MS_MAX)
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the gateway says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAnswer {
    Paid(Payment),
    NotPaid,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    #[error("the gateway failed: {0}")]
    Failed(String),
    #[error("the gateway did not answer in time")]
    Timeout,
    #[error("the channel's circuit breaker is open")]
    BreakerOpen,
    #[error("too many calls in flight on this channel")]
    Saturated,
}

/// What a gateway needs to create a payment.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub order_id: OrderId,
    /// The payment method within the channel (Epay's `type`), or empty.
    pub method: String,
    pub amount_cents: u64,
    /// ISO 4217, upper case.
    pub currency: String,
    pub name: String,
    pub notify_url: String,
    pub return_url: String,
    /// The buyer is on a phone: Alipay's wap flow rather than its desktop page.
    pub phone: bool,
}

/// A payment the gateway created: where the buyer pays, and the gateway's reference for it
/// (a Stripe checkout session id; empty where the order id is the reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedPayment {
    pub url: String,
    pub reference: String,
}

/// A payment gateway's server-to-server API, as the edge implements it.
pub trait GatewayClient: Send + Sync + 'static {
    /// Asks whether an order is paid. `reference` is what `create` returned, if anything.
    fn query(
        &self,
        order_id: &OrderId,
        reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>>;

    /// Whether `create` only signs a URL locally (Alipay's page and wap payments): no call
    /// reaches the gateway, so it neither takes a concurrency permit nor counts for the
    /// breaker, though an open breaker still turns new orders away.
    fn creates_locally(&self, _request: &CreateRequest) -> bool {
        false
    }

    /// Closes an unpaid payment where the protocol allows (Stripe: expire the checkout
    /// session), so that nobody pays for keys about to be released. Best effort.
    fn close(&self, _order_id: &OrderId, _reference: &str) -> BoxFuture<Result<(), GatewayError>> {
        Box::pin(async { Ok(()) })
    }

    /// Creates a payment server-side, or signs its URL where `creates_locally`. Channels
    /// whose payment page the shop builds itself (Epay's `submit.php`) do not need it.
    fn create(&self, _request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        Box::pin(async {
            Err(GatewayError::Failed(
                "this channel creates no payments server-side".into(),
            ))
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<QueryAnswer, GatewayError>")]
pub struct Query {
    pub order_id: OrderId,
    pub reference: String,
}

#[derive(Message)]
#[rtype(result = "Result<CreatedPayment, GatewayError>")]
pub struct Create(pub CreateRequest);

#[derive(Message)]
#[rtype(result = "Result<(), GatewayError>")]
pub struct Close {
    pub order_id: OrderId,
    pub reference: String,
}

#[derive(Message)]
#[rtype(result = "ChannelHealth")]
pub struct Health;

#[derive(Debug, Clone)]
pub struct ChannelHealth {
    pub name: String,
    pub breaker: &'static str,
    pub success_percent: u64,
    pub calls: u64,
    pub failures: u64,
}

/// Whether new orders may be routed to a channel, published by its actor after every
/// change of its breaker (`Breaker::usable_from_ms`), so that a create reads it without a
/// message to the actor and back: two thread wake-ups per order saved.
#[derive(Debug, Default)]
pub struct Usability(AtomicU64);

impl Usability {
    pub fn is_usable(&self, now_ms: u64) -> bool {
        now_ms >= self.0.load(Ordering::Acquire)
    }

    fn set(&self, breaker: &Breaker) {
        self.0.store(breaker.usable_from_ms(), Ordering::Release);
    }
}

pub struct ChannelActor {
    name: String,
    client: Arc<dyn GatewayClient>,
    breaker: Breaker,
    usability: Arc<Usability>,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    calls: u64,
    failures: u64,
    health: Arc<crate::Health>,
}

impl ChannelActor {
    pub fn new(
        name: &str,
        client: Arc<dyn GatewayClient>,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        health: Arc<crate::Health>,
        usability: Arc<Usability>,
    ) -> Self {
        let breaker = Breaker::new(config);
        usability.set(&breaker);
        Self {
            name: name.to_owned(),
            client,
            breaker,
            usability,
            clock,
            permits: Arc::new(Semaphore::new(CHANNEL_CALLS_CONCURRENT_MAX)),
            calls: 0,
            failures: 0,
            health,
        }
    }

    fn publish(&mut self) {
        let state = self.breaker.state(self.clock.now_ms());
        self.usability.set(&self.breaker);
        let open = match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        };
        metrics::gauge!("panshi_channel_breaker_state", "channel" => self.name.clone()).set(open);
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CHANNEL_MAILBOX_CAPACITY);
        self.health.started(ActorKind::Channel);
        self.publish();
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.health.stopped(ActorKind::Channel);
    }
}

impl Supervised for ChannelActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.health.restarted(ActorKind::Channel);
    }
}

impl ChannelActor {
    /// Runs one gateway call behind the breaker, the concurrency bound and the timeout,
    /// and feeds its outcome back to the breaker.
    fn call<T: 'static>(
        &mut self,
        kind: &'static str,
        call: impl FnOnce(&dyn GatewayClient) -> BoxFuture<Result<T, GatewayError>>,
    ) -> ResponseActFuture<Self, Result<T, GatewayError>> {
        let allowed = self.breaker.allow(self.clock.now_ms());
        // A half-open breaker's probe was just taken: no other order may count on it.
        self.usability.set(&self.breaker);
        if !allowed {
            return Box::pin(fut::ready(Err(GatewayError::BreakerOpen)));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Box::pin(fut::ready(Err(GatewayError::Saturated)));
        };
        let call = call(&*self.client);
        let work = async move {
            let answer =
                tokio::time::timeout(Duration::from_millis(GATEWAY_CALL_TIMEOUT_MS), call).await;
            drop(permit);
            answer.unwrap_or(Err(GatewayError::Timeout))
        };
        Box::pin(work.into_actor(self).map(move |answer, act, _| {
            let succeeded = answer.is_ok();
            act.calls += 1;
            act.failures += u64::from(!succeeded);
            act.breaker.record(act.clock.now_ms(), succeeded);
            let outcome = if succeeded { "ok" } else { "failed" };
            metrics::counter!("panshi_gateway_calls_total", "channel" => act.name.clone(), "call" => kind, "outcome" => outcome).increment(1);
            act.publish();
            answer
        }))
    }
}

impl Handler<Query> for ChannelActor {
    type Result = ResponseActFuture<Self, Result<QueryAnswer, GatewayError>>;

    fn handle(&mut self, msg: Query, _: &mut Self::Context) -> Self::Result {
        self.call("query", move |client| {
            client.query(&msg.order_id, &msg.reference)
        })
    }
}

impl Handler<Create> for ChannelActor {
    type Result = ResponseActFuture<Self, Result<CreatedPayment, GatewayError>>;

    fn handle(&mut self, msg: Create, _: &mut Self::Context) -> Self::Result {
        if self.client.creates_locally(&msg.0) {
            if !self.breaker.is_usable(self.clock.now_ms()) {
                return Box::pin(fut::ready(Err(GatewayError::BreakerOpen)));
            }
            return Box::pin(self.client.create(&msg.0).into_actor(self));
        }
        self.call("create", move |client| client.create(&msg.0))
    }
}

impl Handler<Close> for ChannelActor {
    type Result = ResponseActFuture<Self, Result<(), GatewayError>>;

    fn handle(&mut self, msg: Close, _: &mut Self::Context) -> Self::Result {
        self.call("close", move |client| {
            client.close(&msg.order_id, &msg.reference)
        })
    }
}

impl Handler<Health> for ChannelActor {
    type Result = MessageResult<Health>;

    fn handle(&mut self, _: Health, _: &mut Self::Context) -> Self::Result {
        let state = self.breaker.state(self.clock.now_ms());
        MessageResult(ChannelHealth {
            name: self.name.clone(),
            breaker: state.as_str(),
            success_percent: self.breaker.success_percent(),
            calls: self.calls,
            failures: self.failures,
        })
    }
}

/// The configured channels by name: each actor's address and its published usability.
#[derive(Default, Clone)]
pub struct Channels {
    /// Each address shared: an `Addr` clone allocates (actix gives each sender its own
    /// parking slot), and every order actor holds its channel's.
    by_name: HashMap<String, (Arc<Addr<ChannelActor>>, Arc<Usability>)>,
}

impl Channels {
    pub fn insert(&mut self, name: &str, addr: Addr<ChannelActor>, usability: Arc<Usability>) {
        self.by_name
            .insert(name.to_owned(), (Arc::new(addr), usability));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Addr<ChannelActor>>> {
        self.by_name.get(name).map(|(addr, _)| addr)
    }

    /// Whether new orders may go to `name` now; a channel not configured has no breaker.
    pub fn is_usable(&self, name: &str, now_ms: u64) -> bool {
        self.by_name
            .get(name)
            .is_none_or(|(_, usability)| usability.is_usable(now_ms))
    }

    pub async fn health(&self) -> Vec<ChannelHealth> {
        let mut all = Vec::new();
        for (addr, _) in self.by_name.values() {
            if let Ok(health) = addr.send(Health).await {
                all.push(health);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_backs_off_to_a_ceiling() {
        assert_eq!(reconcile_delay_ms(0), 10_000);
        assert_eq!(reconcile_delay_ms(1), 20_000);
        assert_eq!(reconcile_delay_ms(3), 80_000);
        assert_eq!(reconcile_delay_ms(10), RECONCILE_BACKOFF_MS_MAX);
    }
}
