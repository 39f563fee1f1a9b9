//! Latency histograms (hdrhistogram, microseconds) and error counts per endpoint, the
//! per-second progress figures, and the table the report prints.
//!
//! Only expected answers go into a histogram (a 201 for a create, `success` for a notify,
//! a 409 `sold_out` in a flash sale); everything else is an error counted by kind, so a
//! fast stream of 503s cannot flatter the percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram holds; longer ones are clamped to it.
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Precision of the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endpoint {
    /// A TCP connect made ahead of use (the flash sale's buyers).
    Connect,
    Create,
    /// A create sent once the harness saw the stock at 0 (the last key taken), answered
    /// sold out (the flash sale's); these are in `Create` too.
    CreateAfterLastKey,
    /// A create after the sale ended, one at a time on one connection: the server's own
    /// time to answer sold out, with no crowd queued in front.
    CreateSoldOutQuiet,
    Notify,
    Lookup,
    WsConnect,
    /// From the notify being written to the `delivered` frame arriving on the order's socket.
    WsPush,
    /// A whole purchase: create written to the last answer read.
    Purchase,
    /// From a waiting-room ticket (202) to its outcome frame (admitted, sold out, failed).
    QueueWait,
    /// A reseller's bulk purchase (201 with its keys).
    ResellerBuy,
}

impl Endpoint {
    pub const ALL: [Endpoint; 11] = [
        Endpoint::Connect,
        Endpoint::Create,
        Endpoint::CreateAfterLastKey,
        Endpoint::CreateSoldOutQuiet,
        Endpoint::Notify,
        Endpoint::Lookup,
        Endpoint::WsConnect,
        Endpoint::WsPush,
        Endpoint::Purchase,
        Endpoint::QueueWait,
        Endpoint::ResellerBuy,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Connect => "connect",
            Endpoint::Create => "create",
            Endpoint::CreateAfterLastKey => "after last",
            Endpoint::CreateSoldOutQuiet => "quiet 409",
            Endpoint::Notify => "notify",
            Endpoint::Lookup => "lookup",
            Endpoint::WsConnect => "ws connect",
            Endpoint::WsPush => "ws push",
            Endpoint::Purchase => "purchase",
            Endpoint::QueueWait => "queue wait",
            Endpoint::ResellerBuy => "reseller",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum ErrorKind {
    /// An HTTP answer with an unexpected status.
    Status(u16),
    Connect,
    Timeout,
    /// The connection closed before any byte of the answer.
    Closed,
    Io,
    Protocol,
    /// The right status with a body the harness did not expect.
    UnexpectedBody,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKind::Status(code) => write!(f, "http {code}"),
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Closed => f.write_str("closed"),
            ErrorKind::Io => f.write_str("io"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::UnexpectedBody => f.write_str("unexpected body"),
        }
    }
}

struct EndpointStats {
    latency_us: Histogram<u64>,
    errors: BTreeMap<ErrorKind, u64>,
}

/// Figures of one progress interval.
pub struct Interval {
    pub purchases: u64,
    pub purchase_p50_us: u64,
    pub purchase_p99_us: u64,
    pub errors: u64,
}

/// Everything measured during one run or step; shared by its workers behind a mutex.
pub struct Stats {
    endpoints: Vec<EndpointStats>,
    /// Purchase latencies since the last progress line; reset by `take_interval`.
    interval_us: Histogram<u64>,
    interval_errors: u64,
    /// Named counters: skipped slots, sold-out answers, retries, ...
    notes: BTreeMap<&'static str, u64>,
}

pub type SharedStats = Arc<Mutex<Stats>>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX)
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            endpoints: Endpoint::ALL
                .iter()
                .map(|_| EndpointStats {
                    latency_us: histogram(),
                    errors: BTreeMap::new(),
                })
                .collect(),
            interval_us: histogram(),
            interval_errors: 0,
            notes: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn shared() -> SharedStats {
        Arc::new(Mutex::new(Stats::default()))
    }

    pub fn record(&mut self, endpoint: Endpoint, latency: Duration) {
        let us = micros(latency);
        self.endpoints[endpoint.index()]
            .latency_us
            .saturating_record(us);
        if endpoint == Endpoint::Purchase {
            self.interval_us.saturating_record(us);
        }
    }

    pub fn error(&mut self, endpoint: Endpoint, kind: ErrorKind) {
        *self.endpoints[endpoint.index()]
            .errors
            .entry(kind)
            .or_default() += 1;
        self.interval_errors += 1;
    }

    pub fn note(&mut self, name: &'static str, count: u64) {
        *self.notes.entry(name).or_default() += count;
    }

    pub fn note_count(&self, name: &str) -> u64 {
        self.notes.get(name).copied().unwrap_or(0)
    }

    pub fn count(&self, endpoint: Endpoint) -> u64 {
        self.endpoints[endpoint.index()].latency_us.len()
    }

    pub fn errors_total(&self) -> u64 {
        self.endpoints.iter().flat_map(|e| e.errors.values()).sum()
    }

    pub fn quantile_us(&self, endpoint: Endpoint, quantile: f64) -> u64 {
        self.endpoints[endpoint.index()]
            .latency_us
            .value_at_quantile(quantile)
    }

    /// The current progress interval's figures; starts the next interval.
    pub fn take_interval(&mut self) -> Interval {
        let interval = Interval {
            purchases: self.interval_us.len(),
            purchase_p50_us: self.interval_us.value_at_quantile(0.5),
            purchase_p99_us: self.interval_us.value_at_quantile(0.99),
            errors: self.interval_errors,
        };
        self.interval_us.reset();
        self.interval_errors = 0;
        interval
    }

    /// The per-endpoint table, rates over `wall`.
    pub fn table(&self, wall: Duration) -> String {
        let secs = wall.as_secs_f64().max(1e-9);
        let mut out = format!(
            "{:<11}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}  errors\n",
            "endpoint", "count", "rate/s", "p50", "p95", "p99", "p99.9", "max"
        );
        for endpoint in Endpoint::ALL {
            let stats = &self.endpoints[endpoint.index()];
            if stats.latency_us.is_empty() && stats.errors.is_empty() {
                continue;
            }
            let h = &stats.latency_us;
            let _ = writeln!(
                out,
                "{:<11}{:>9}{:>10.1}{:>10}{:>10}{:>10}{:>10}{:>10}  {}",
                endpoint.name(),
                h.len(),
                h.len() as f64 / secs,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.95)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                errors_text(&stats.errors),
            );
        }
        if !self.notes.is_empty() {
            let notes: Vec<String> = self.notes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "notes: {}", notes.join(", "));
        }
        out
    }
}

fn errors_text(errors: &BTreeMap<ErrorKind, u64>) -> String {
    if errors.is_empty() {
        return "0".to_owned();
    }
    let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    parts.join(", ")
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// Locks shared stats; a worker that panicked while holding them left nothing half-written
/// worth refusing (every update is one counter or one histogram record).
pub fn lock(stats: &SharedStats) -> MutexGuard<'_, Stats> {
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
