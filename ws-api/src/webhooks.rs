//! Reseller webhooks: one worker task per reseller with a `webhook_url` POSTs each stream
//! event as its JSON frame plus an `"id"` (`<reseller id>-<seq>`), signed
//! `Panshi-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Invariants: each event has its own retry schedule (a task of its own, up to
//! `PENDING_PER_RESELLER_MAX` at once per reseller), so a failing event never holds back
//! the first try of later ones; an event is settled (delivered on a 2xx, or parked after
//! `ATTEMPTS_MAX` tries) exactly once; every try has a timeout (`TIMEOUT_MS`); at most
//! `DELIVERIES_IN_FLIGHT_MAX` tries are in flight across all resellers (a task waiting
//! for its next retry holds no slot); the worker only reads the stream and commits small
//! settlement facts, so a slow or failing receiver never slows a purchase. No redirect is
//! followed; with private addresses forbidden, the address connected to is checked
//! (`ssrf.rs`); URLs (which may carry secrets) stay out of log lines.
//!
//! Key decision: the retry schedule is exponential with "equal jitter" (half the delay
//! fixed, half random) from `webhook_retry_first_ms`, capped at `RETRY_DELAY_CAP_FACTOR`
//! times it. With the 30 s default the `ATTEMPTS_MAX` tries span at least ~1.6 hours, which
//! the contract's "10 tries over an hour" needs; the cursor, the events settled ahead of it
//! and the parked list are log events (actors/src/webhook.rs), so pending deliveries resume
//! after a restart. The try count restarts at 1 after a restart: a crash only ever adds
//! tries, never skips one.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::reseller::StreamEvent;
use actors::webhook::{Settlement, WebhookTarget};
use actors::Shop;
use engine::ResellerId;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Semaphore;

use crate::routes::resellers::{stream_frame, ResellerSettings};

/// Default delay before the first retry.
pub const RETRY_FIRST_MS_DEFAULT: u64 = 30_000;
/// Tries per event (the first and its retries) before it is parked.
pub const ATTEMPTS_MAX: u32 = 10;
/// The longest retry delay, as a multiple of the first (30 s x 128 = 64 min).
pub const RETRY_DELAY_CAP_FACTOR: u64 = 128;
/// Timeout of one try (connect, send, answer).
pub const TIMEOUT_MS: u64 = 10_000;
/// Tries in flight at once, across all resellers.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 32;
/// Events one reseller's worker delivers at once (each on its own retry schedule); more
/// wait until one settles.
pub const PENDING_PER_RESELLER_MAX: usize = 1_000;
/// Worker tasks at most (one per reseller with a webhook).
pub const WORKERS_MAX: usize = 10_000;
/// An idle worker re-reads its cursor this often even without a wake-up.
pub const IDLE_RECHECK_MS: u64 = 5_000;
/// Pause after a failed settlement commit (the log refusing writes) before trying again.
pub const SETTLE_RETRY_MS: u64 = 1_000;
/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Panshi-Signature";
const MS_PER_HOUR: u64 = 3_600_000;
const _: () = assert!(ATTEMPTS_MAX >= 10);
// The contract: the tries span at least an hour at the default, even with the least jitter.
const _: () = assert!(schedule_floor_ms(RETRY_FIRST_MS_DEFAULT) >= MS_PER_HOUR);

/// The shortest possible span of all tries (every jitter at its least: half the delay).
const fn schedule_floor_ms(first_ms: u64) -> u64 {
    let mut total = 0;
    let mut retry = 1;
    while retry < ATTEMPTS_MAX {
        total += retry_delay_ms(first_ms, retry) / 2;
        retry += 1;
    }
    total
}

/// The un-jittered delay before retry `retry` (1 for the first retry).
const fn retry_delay_ms(first_ms: u64, retry: u32) -> u64 {
    let cap = first_ms.saturating_mul(RETRY_DELAY_CAP_FACTOR);
    let doubled = first_ms.saturating_mul(1 << (retry - 1));
    if doubled < cap {
        doubled
    } else {
        cap
    }
}

/// The jittered delay: half fixed, half random, so retries of many events spread out.
fn jittered_ms(first_ms: u64, retry: u32) -> u64 {
    let delay = retry_delay_ms(first_ms, retry);
    let half = delay / 2;
    half + rand::thread_rng().gen_range(0..=delay - half)
}

/// The workers' shared parts.
struct Dispatcher {
    retry_first_ms: u64,
    client: reqwest::Client,
    /// Loopback and private addresses allowed (else refused at connect time).
    private_allowed: bool,
    in_flight: Semaphore,
    /// Resellers whose worker runs (a worker is started once per process).
    /// The worker of each reseller, by the shop generation it runs under.
    running: Mutex<HashMap<ResellerId, u64>>,
}

static DISPATCHER: OnceLock<Dispatcher> = OnceLock::new();

fn dispatcher() -> &'static Dispatcher {
    DISPATCHER.get_or_init(|| dispatcher_with(&ResellerSettings::default()))
}

fn dispatcher_with(settings: &ResellerSettings) -> Dispatcher {
    let private_allowed = settings.webhook_private_addresses_allowed;
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none());
    if !private_allowed {
        builder = builder.dns_resolver(std::sync::Arc::new(crate::ssrf::GuardedResolver));
    }
    let client = builder.build().expect("the webhook client builds");
    Dispatcher {
        retry_first_ms: settings.webhook_retry_first_ms.max(1),
        client,
        private_allowed,
        in_flight: Semaphore::new(DELIVERIES_IN_FLIGHT_MAX),
        running: Mutex::default(),
    }
}

/// Sets the settings and starts a worker for every reseller with a webhook. Must run inside
/// the actix system (workers are spawned on it).
pub fn start(shop: &Shop, settings: &ResellerSettings) {
    let _ = DISPATCHER.set(dispatcher_with(settings));
    for id in shop.resellers_with_webhooks() {
        watch(shop, id);
    }
}

/// Starts the reseller's worker unless it runs or the reseller has no webhook.
pub fn watch(shop: &Shop, id: ResellerId) {
    if !shop.has_webhook(id) {
        return;
    }
    let mut running = dispatcher().running.lock();
    let generation = shop.generation();
    if running.get(&id) == Some(&generation) {
        return;
    }
    if running.len() >= WORKERS_MAX && !running.contains_key(&id) {
        tracing::error!(reseller = %id, "webhook workers at their bound; not started");
        return;
    }
    running.insert(id, generation);
    actix_web::rt::spawn(run(shop.clone(), id));
}

/// A reseller's worker: starts a delivery task for every unsettled event (up to
/// `PENDING_PER_RESELLER_MAX` at once), each on its own retry schedule; sleeps until woken
/// when there is nothing new.
async fn run(shop: Shop, id: ResellerId) {
    let waker = shop.webhook_waker(id);
    let generation = shop.generation();
    let (done_sender, mut done) = tokio::sync::mpsc::channel::<u64>(PENDING_PER_RESELLER_MAX);
    let mut running: BTreeSet<u64> = BTreeSet::new();
    loop {
        // Only the active leader delivers; a new activation starts new workers.
        if !shop.has_webhook(id) || !shop.is_active() || shop.generation() != generation {
            let mut running = dispatcher().running.lock();
            if running.get(&id) == Some(&generation) {
                running.remove(&id);
            }
            return;
        }
        while let Ok(seq) = done.try_recv() {
            running.remove(&seq);
        }
        let room = PENDING_PER_RESELLER_MAX - running.len();
        let pending = shop.webhook_pending(id, room, &running).await;
        for event in pending {
            running.insert(event.seq);
            let (shop, done) = (shop.clone(), done_sender.clone());
            actix_web::rt::spawn(async move {
                let seq = event.seq;
                deliver_and_settle(&shop, id, &event).await;
                let _ = done.send(seq).await;
            });
        }
        let idle = Duration::from_millis(IDLE_RECHECK_MS);
        tokio::select! {
            _ = waker.notified() => {}
            Some(seq) = done.recv() => { running.remove(&seq); }
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

/// Delivers one event on its own schedule, then commits how it ended (retrying the commit
/// while the log refuses writes: an unsettled event would be sent again after a restart).
async fn deliver_and_settle(shop: &Shop, id: ResellerId, event: &StreamEvent) {
    let settlement = deliver(shop, id, event).await;
    while let Err(error) = shop.webhook_settle(id, event.seq, settlement).await {
        tracing::error!(reseller = %id, seq = event.seq, %error, "webhook settlement not committed");
        // A node that no longer leads leaves the settlement to the next leader's worker.
        if !shop.has_webhook(id) || !shop.is_active() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(SETTLE_RETRY_MS)).await;
    }
}

/// Tries until a 2xx or `ATTEMPTS_MAX` tries, waiting the jittered backoff between them.
/// The target is read at each try, so a rotated secret signs the retries too.
async fn deliver(shop: &Shop, id: ResellerId, event: &StreamEvent) -> Settlement {
    let config = dispatcher();
    let body = body(id, event);
    for attempt in 1..=ATTEMPTS_MAX {
        let outcome = match shop.webhook_target(id) {
            Some(target) => attempt_once(&target, &body).await,
            None => Err("the reseller has no webhook target".to_owned()),
        };
        match outcome {
            Ok(()) => return Settlement::Delivered,
            Err(error) => {
                metrics::counter!("panshi_webhook_failures_total").increment(1);
                tracing::warn!(reseller = %id, seq = event.seq, attempt, %error, "webhook try failed");
            }
        }
        if attempt < ATTEMPTS_MAX {
            let delay = jittered_ms(config.retry_first_ms, attempt);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    Settlement::Parked {
        attempts: ATTEMPTS_MAX,
    }
}

/// The webhook body: the stream frame with its `id`.
pub fn body(id: ResellerId, event: &StreamEvent) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(&stream_frame(event)).expect("a frame is JSON");
    value["id"] = serde_json::Value::String(delivery_id(id, event.seq));
    value.to_string()
}

pub fn delivery_id(id: ResellerId, seq: u64) -> String {
    format!("{id}-{seq}")
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, unix_secs: u64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{unix_secs}.{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_secs},v1={hex}")
}

/// One try: a 2xx is `Ok`; anything else (status, timeout, refused, a redirect, a private
/// address where they are forbidden) is `Err`, whose text never holds the URL.
pub async fn attempt_once(target: &WebhookTarget, body: &str) -> Result<(), String> {
    let config = dispatcher();
    if !config.private_allowed {
        crate::ssrf::check_literal(&target.url)?;
    }
    let _permit = config
        .in_flight
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let response = config
        .client
        .post(&target.url)
        .header("Content-Type", "application/json")
        .header(
            SIGNATURE_HEADER,
            signature(&target.secret, now.as_secs(), body),
        )
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| error_text(e.without_url()))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(format!("answered {status}")),
    }
}

/// A failed try as text, with the causes (a refused resolution says why) and no URL.
fn error_text(error: reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_then_caps() {
        assert_eq!(retry_delay_ms(30_000, 1), 30_000);
        assert_eq!(retry_delay_ms(30_000, 2), 60_000);
        assert_eq!(retry_delay_ms(30_000, 8), 30_000 * 128);
        assert_eq!(retry_delay_ms(30_000, 9), 30_000 * 128);
        for retry in 1..ATTEMPTS_MAX {
            let delay = jittered_ms(100, retry);
            assert!(delay >= retry_delay_ms(100, retry) / 2);
            assert!(delay <= retry_delay_ms(100, retry));
        }
    }

    #[test]
    fn signature_is_stripe_style_hex() {
        let signed = signature("whsec_x", 1_700_000_000, "{}");
        let (t, v1) = signed.split_once(',').unwrap();
        assert_eq!(t, "t=1700000000");
        assert_eq!(v1.len(), "v1=".len() + 64);
    }
}
