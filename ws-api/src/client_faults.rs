//! Faults of one connection that the HTTP layer (actix-http) logs at ERROR: a malformed
//! request line or header, a body that breaks off, a client gone mid-write. They are a
//! client's doing, not the server's, and a fuzzer or a scanner can make thousands a second:
//! each is counted (`panshi_http_client_faults_total`) and at most one per
//! `CLIENT_FAULT_LOG_INTERVAL_MS` is logged, at WARN, with how many went unlogged since.
//!
//! Invariant: nothing from the HTTP layer reaches the logs or Sentry at ERROR.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::layer::{Context, Layer};

/// At most one client-fault line per this long.
pub const CLIENT_FAULT_LOG_INTERVAL_MS: u64 = 10_000;
/// `last_logged_ms` before the first line.
const NEVER: u64 = u64::MAX;

/// Whether an event is one the HTTP layer logs about a single connection.
pub fn is_client_fault(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("actix_http") && *metadata.level() <= Level::WARN
}

/// The filter for every other layer: client faults reach them only through `ClientFaults`.
/// `max_level` is the most verbose level the global filter lets through: a per-layer filter
/// without it leaves the whole subscriber without a level hint, and then every `trace!` and
/// `debug!` (actix-http's per poll, openraft's, sled's `log` records) runs every layer's
/// filter instead of stopping at its macro's level check.
pub fn without_client_faults(max_level: LevelFilter) -> FilterFn<fn(&Metadata<'_>) -> bool> {
    let filter: FilterFn<fn(&Metadata<'_>) -> bool> =
        FilterFn::new(|metadata| !is_client_fault(metadata));
    filter.with_max_level_hint(max_level)
}

/// Counts client faults and logs a sample of them at WARN.
pub struct ClientFaults {
    started: Instant,
    last_logged_ms: AtomicU64,
    unlogged: AtomicU64,
}

impl Default for ClientFaults {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_logged_ms: AtomicU64::new(NEVER),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl ClientFaults {
    /// Whether this fault is the sample of its interval (one thread wins the interval).
    fn sampled(&self) -> bool {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_logged_ms.load(Ordering::Acquire);
        let due = last == NEVER || now_ms >= last.saturating_add(CLIENT_FAULT_LOG_INTERVAL_MS);
        due && self
            .last_logged_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl<S: Subscriber> Layer<S> for ClientFaults {
    /// Client faults are WARN and above.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if !is_client_fault(metadata) {
            return;
        }
        metrics::counter!("panshi_http_client_faults_total").increment(1);
        if !self.sampled() {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            target: "panshi::http",
            source = metadata.target(),
            unlogged_since_last = unlogged,
            "a client's connection failed (malformed request or broken connection): {}",
            message.0
        );
    }
}

/// An event's `message` field as text.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
}
