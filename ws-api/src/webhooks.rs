//! Reseller webhooks: one worker task per reseller with a `webhook_url` POSTs each stream
//! event, in seq order, as its JSON frame plus an `"id"` (`<reseller id>-<seq>`), signed
//! `Panshi-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Invariants: an event is settled (delivered on a 2xx, or parked after `ATTEMPTS_MAX`
//! tries) before the next one is tried; every try has a timeout (`TIMEOUT_MS`); at most
//! `DELIVERIES_IN_FLIGHT_MAX` tries are in flight across all resellers; the worker only
//! reads the stream and commits small settlement facts, so a slow or failing receiver
//! never slows a purchase.
//!
//! Key decision: the retry schedule is exponential with "equal jitter" (half the delay
//! fixed, half random) from `webhook_retry_first_ms`, capped at `RETRY_DELAY_CAP_FACTOR`
//! times it. With the 30 s default the `ATTEMPTS_MAX` tries span at least ~1.6 hours, which
//! the contract's "10 tries over an hour" needs; the cursor and the parked list are log
//! events (actors/src/webhook.rs), so pending deliveries resume after a restart. The try
//! count restarts at 1 after a restart: a crash only ever adds tries, never skips one.

use std::collections::HashMap;
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(TIMEOUT_MS))
        .build()
        .expect("a client without TLS always builds");
    Dispatcher {
        retry_first_ms: settings.webhook_retry_first_ms.max(1),
        client,
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

/// A reseller's worker: deliver the event after the cursor, settle it, repeat; sleep until
/// woken when the stream has nothing new.
async fn run(shop: Shop, id: ResellerId) {
    let waker = shop.webhook_waker(id);
    let generation = shop.generation();
    loop {
        // Only the active leader delivers; a new activation starts new workers.
        if !shop.has_webhook(id) || !shop.is_active() || shop.generation() != generation {
            let mut running = dispatcher().running.lock();
            if running.get(&id) == Some(&generation) {
                running.remove(&id);
            }
            return;
        }
        let Some(event) = shop.webhook_next(id).await else {
            let idle = Duration::from_millis(IDLE_RECHECK_MS);
            let _ = tokio::time::timeout(idle, waker.notified()).await;
            continue;
        };
        let settlement = deliver(&shop, id, &event).await;
        if let Err(error) = shop.webhook_settle(id, event.seq, settlement).await {
            tracing::error!(reseller = %id, seq = event.seq, %error, "webhook settlement not committed");
            tokio::time::sleep(Duration::from_millis(SETTLE_RETRY_MS)).await;
        }
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

/// One try: a 2xx is `Ok`; anything else (status, timeout, refused) is `Err`.
pub async fn attempt_once(target: &WebhookTarget, body: &str) -> Result<(), String> {
    let config = dispatcher();
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
        .map_err(|e| e.to_string())?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(format!("answered {status}")),
    }
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
