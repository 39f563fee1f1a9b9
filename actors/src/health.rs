//! Actor health per kind (order, pool shard, catalogue): live count, starts, restarts,
//! mailbox depth now and at most, handling latency percentiles, and the last error with its
//! time. Fed by the actors themselves; read by the operator endpoint, the metrics scrape, the
//! status page and the alert rules.
//!
//! Invariants: every counter is per kind (three fixed slots), so memory does not grow with
//! traffic; a `Queued` guard counts a message from send until its answer arrives (or the send
//! fails), so the depth returns to zero however the exchange ends.
//!
//! Design decision: "mailbox depth" is counted at the sender (messages sent and not yet
//! answered) because actix does not expose a mailbox's length; for the actors here, which
//! answer every message, that is the queue plus the one being handled.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::ActorKind;

/// Largest handling time the histograms hold; longer ones are recorded as this.
pub const HANDLING_US_MAX: u64 = 60_000_000;
/// Precision of the handling histograms (2 significant digits: 1% error, small tables).
const HANDLING_SIGNIFICANT_DIGITS: u8 = 2;
/// Longest last-error text kept per kind.
pub const ERROR_TEXT_BYTES_MAX: usize = 512;

const KINDS_COUNT: usize = ActorKind::ALL.len();

/// The last failure an actor kind reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub message: String,
    /// Wall-clock time of the failure, Unix milliseconds.
    pub at_ms: u64,
}

/// One kind's counters.
struct KindCounters {
    live: AtomicI64,
    started: AtomicU64,
    restarts: AtomicU64,
    /// Messages sent to actors of this kind and not yet answered.
    depth: AtomicI64,
    /// The largest `depth` seen since start.
    depth_max: AtomicI64,
    /// Handling time per message, microseconds.
    handling_us: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<LastError>>,
    /// This kind's labelled metric handles, taken from the recorder at first use (after
    /// the server installed it): a lookup by name and label on every message hashed and
    /// compared the labels each time (about 1% of a purchase's CPU).
    metrics: OnceLock<KindMetrics>,
}

struct KindMetrics {
    live: metrics::Gauge,
    depth: metrics::Gauge,
    handling_seconds: metrics::Histogram,
}

impl Default for KindCounters {
    fn default() -> Self {
        Self {
            live: AtomicI64::new(0),
            started: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            depth: AtomicI64::new(0),
            depth_max: AtomicI64::new(0),
            handling_us: Mutex::new(
                Histogram::new_with_bounds(1, HANDLING_US_MAX, HANDLING_SIGNIFICANT_DIGITS)
                    .expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
            metrics: OnceLock::new(),
        }
    }
}

/// Live counts, restarts, mailbox depth, handling latency and last error per actor kind.
#[derive(Default)]
pub struct Health {
    kinds: [KindCounters; KINDS_COUNT],
}

/// A snapshot of one kind's health.
#[derive(Debug, Clone)]
pub struct KindHealth {
    pub kind: ActorKind,
    pub live: i64,
    pub started: u64,
    pub restarts: u64,
    pub mailbox_depth: i64,
    pub mailbox_depth_max: i64,
    /// Messages handled since start.
    pub handled_count: u64,
    pub handling_p50_us: u64,
    pub handling_p99_us: u64,
    pub last_error: Option<LastError>,
}

/// Counts one message as queued until dropped (answer received or send failed).
pub struct Queued<'a> {
    health: &'a Health,
    kind: ActorKind,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let counters = self.health.kind(self.kind);
        counters.depth.fetch_sub(1, Ordering::Relaxed);
        counters.metrics(self.kind).depth.decrement(1.0);
    }
}

impl KindCounters {
    fn metrics(&self, kind: ActorKind) -> &KindMetrics {
        self.metrics.get_or_init(|| {
            let kind = kind.as_str();
            KindMetrics {
                live: metrics::gauge!("panshi_actors_live", "kind" => kind),
                depth: metrics::gauge!("panshi_actor_mailbox_depth", "kind" => kind),
                handling_seconds: metrics::histogram!("panshi_actor_handling_seconds", "kind" => kind),
            }
        })
    }
}

impl Health {
    fn kind(&self, kind: ActorKind) -> &KindCounters {
        &self.kinds[kind as usize]
    }

    pub fn started(&self, kind: ActorKind) {
        let counters = self.kind(kind);
        counters.live.fetch_add(1, Ordering::Relaxed);
        counters.started.fetch_add(1, Ordering::Relaxed);
        counters.metrics(kind).live.increment(1.0);
    }

    pub fn stopped(&self, kind: ActorKind) {
        let counters = self.kind(kind);
        counters.live.fetch_sub(1, Ordering::Relaxed);
        counters.metrics(kind).live.decrement(1.0);
    }

    pub fn restarted(&self, kind: ActorKind) {
        self.kind(kind).restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("panshi_actor_restarts_total", "kind" => kind.as_str()).increment(1);
    }

    /// Counts a message to an actor of `kind` until the returned guard drops. Hold it across
    /// the `send(..).await`.
    pub fn queued(&self, kind: ActorKind) -> Queued<'_> {
        let counters = self.kind(kind);
        let depth = counters.depth.fetch_add(1, Ordering::Relaxed) + 1;
        counters.depth_max.fetch_max(depth, Ordering::Relaxed);
        counters.metrics(kind).depth.increment(1.0);
        Queued { health: self, kind }
    }

    /// Records how long one message took to handle, commit included.
    pub fn handled(&self, kind: ActorKind, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let counters = self.kind(kind);
        counters
            .handling_us
            .lock()
            .saturating_record(us.clamp(1, HANDLING_US_MAX));
        counters
            .metrics(kind)
            .handling_seconds
            .record(elapsed.as_secs_f64());
    }

    /// Records a failure; the newest one is kept per kind.
    pub fn failed(&self, kind: ActorKind, message: &str, at_ms: u64) {
        let mut end = message.len().min(ERROR_TEXT_BYTES_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        *self.kind(kind).last_error.lock() = Some(LastError {
            message: message[..end].to_owned(),
            at_ms,
        });
        metrics::counter!("panshi_actor_errors_total", "kind" => kind.as_str()).increment(1);
    }

    pub fn snapshot(&self) -> Vec<KindHealth> {
        ActorKind::ALL
            .iter()
            .map(|kind| self.kind_snapshot(*kind))
            .collect()
    }

    pub fn kind_snapshot(&self, kind: ActorKind) -> KindHealth {
        let counters = self.kind(kind);
        let (handled_count, handling_p50_us, handling_p99_us) = {
            let histogram = counters.handling_us.lock();
            (
                histogram.len(),
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.99),
            )
        };
        KindHealth {
            kind,
            live: counters.live.load(Ordering::Relaxed),
            started: counters.started.load(Ordering::Relaxed),
            restarts: counters.restarts.load(Ordering::Relaxed),
            mailbox_depth: counters.depth.load(Ordering::Relaxed),
            mailbox_depth_max: counters.depth_max.load(Ordering::Relaxed),
            handled_count,
            handling_p50_us,
            handling_p99_us,
            last_error: counters.last_error.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_guard_counts_depth_and_max() {
        let health = Health::default();
        let first = health.queued(ActorKind::PoolShard);
        let second = health.queued(ActorKind::PoolShard);
        assert_eq!(health.kind_snapshot(ActorKind::PoolShard).mailbox_depth, 2);
        drop(first);
        drop(second);
        let snapshot = health.kind_snapshot(ActorKind::PoolShard);
        assert_eq!(snapshot.mailbox_depth, 0);
        assert_eq!(snapshot.mailbox_depth_max, 2);
        assert_eq!(health.kind_snapshot(ActorKind::Order).mailbox_depth_max, 0);
    }

    #[test]
    fn handling_percentiles_and_last_error() {
        let health = Health::default();
        for ms in 1..=100 {
            health.handled(ActorKind::Catalog, Duration::from_millis(ms));
        }
        health.failed(ActorKind::Catalog, &"é".repeat(ERROR_TEXT_BYTES_MAX), 7);
        let snapshot = health.kind_snapshot(ActorKind::Catalog);
        assert_eq!(snapshot.handled_count, 100);
        assert!((49_000..=51_000).contains(&snapshot.handling_p50_us));
        assert!((98_000..=100_000).contains(&snapshot.handling_p99_us));
        let error = snapshot.last_error.unwrap();
        assert!(error.message.len() <= ERROR_TEXT_BYTES_MAX);
        assert_eq!(error.at_ms, 7);
    }
}
