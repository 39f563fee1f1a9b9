//! Alert rules, evaluated in-process over a short history of samples. Pure: the caller takes
//! a `Sample` (counters and gauges read at one moment, with that moment's time) every few
//! seconds and passes it to `Alerts::evaluate`, which returns what fired and what cleared.
//! No clock, no I/O, so the rules are tested on synthetic series with an injected time.
//!
//! Rules (thresholds in `AlertSettings`):
//! - `latency_rising`: the mean response time rose sample over sample for
//!   `latency_rise_samples` samples, by more than `latency_rise_ratio` overall.
//! - `error_rate`: 5xx answers over the last `error_window_ms` reached `error_rate_max`
//!   (with at least `error_requests_min` requests, so one failure in three is not an alert).
//! - `payment_success`: per payment channel, paid / created over the last
//!   `payment_window_ms` fell below `payment_success_drop_ratio` times the rate before that
//!   window, while order volume stayed normal (at least `payment_orders_min` orders and at
//!   least `payment_volume_normal_ratio` of the volume of the window before).
//! - `stock_low`: a SKU's available keys are below `stock_min`.
//! - `delivery_overdue`: a paid order has waited `delivery_overdue_ms` without its keys, or
//!   the manual-review queue is not empty.
//! - `disk_space_low`: the data dir's file system has less than `disk_free_bytes_min` free
//!   (a full disk stops the log).
//! - `mirror_lag`: the oldest durable change not yet in sled has waited `mirror_lag_ms_max`
//!   (sled is stuck or failing; reads of older orders would miss what the log holds).
//!
//! Invariants: the history holds at most `ALERT_HISTORY_SAMPLES_MAX` samples, the active set
//! at most `ALERTS_ACTIVE_MAX` alerts and the recent list `ALERTS_RECENT_MAX`; samples must
//! come in time order (a sample older than the last is ignored).

use std::collections::{BTreeMap, VecDeque};

/// Samples kept: an hour at one sample every 5 s.
pub const ALERT_HISTORY_SAMPLES_MAX: usize = 720;
/// Alerts active at once (rules times SKUs and channels); more are dropped, and counted.
pub const ALERTS_ACTIVE_MAX: usize = 1_024;
/// Cleared alerts kept for operators.
pub const ALERTS_RECENT_MAX: usize = 100;

/// Thresholds of the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    pub latency_rise_ratio: f64,
    pub latency_rise_samples: usize,
    pub error_rate_max: f64,
    pub error_window_ms: u64,
    pub error_requests_min: u64,
    pub payment_success_drop_ratio: f64,
    pub payment_volume_normal_ratio: f64,
    pub payment_window_ms: u64,
    pub payment_orders_min: u64,
    pub stock_min: u64,
    pub delivery_overdue_ms: u64,
    pub disk_free_bytes_min: u64,
    pub mirror_lag_ms_max: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            latency_rise_ratio: 0.20,
            latency_rise_samples: 5,
            error_rate_max: 0.01,
            error_window_ms: 300_000,
            error_requests_min: 100,
            payment_success_drop_ratio: 0.5,
            payment_volume_normal_ratio: 0.5,
            payment_window_ms: 300_000,
            payment_orders_min: 20,
            stock_min: 5,
            delivery_overdue_ms: 60_000,
            disk_free_bytes_min: 1 << 30,
            mirror_lag_ms_max: 10_000,
        }
    }
}

/// Orders created and paid through one payment channel, as running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTotals {
    pub channel: String,
    pub created_total: u64,
    pub paid_total: u64,
}

/// What the shop looked like at one moment. Totals only grow (they are counters since start).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Wall-clock time of the sample, Unix milliseconds.
    pub at_ms: u64,
    pub requests_total: u64,
    /// Requests answered 5xx.
    pub errors_total: u64,
    /// Sum of request durations, microseconds.
    pub latency_us_total: u64,
    pub channels: Vec<ChannelTotals>,
    /// Available keys per SKU.
    pub stock: Vec<(String, u64)>,
    /// When the oldest paid, undelivered order (not in review) was paid, if there is one.
    pub oldest_undelivered_paid_at_ms: Option<u64>,
    pub manual_review_count: u64,
    /// Free bytes on the data dir's file system, when it could be read.
    pub data_dir_free_bytes: Option<u64>,
    /// Durable records not yet in sled, and how long the oldest has waited.
    pub mirror_lag_records: u64,
    pub mirror_lag_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    LatencyRising,
    ErrorRate,
    PaymentSuccess,
    StockLow,
    DeliveryOverdue,
    DiskSpaceLow,
    MirrorLag,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::LatencyRising,
        Rule::ErrorRate,
        Rule::PaymentSuccess,
        Rule::StockLow,
        Rule::DeliveryOverdue,
        Rule::DiskSpaceLow,
        Rule::MirrorLag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::LatencyRising => "latency_rising",
            Rule::ErrorRate => "error_rate",
            Rule::PaymentSuccess => "payment_success",
            Rule::StockLow => "stock_low",
            Rule::DeliveryOverdue => "delivery_overdue",
            Rule::DiskSpaceLow => "disk_space_low",
            Rule::MirrorLag => "mirror_lag",
        }
    }
}

/// An alert, active or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: Rule,
    /// What it is about: a SKU, a channel, or empty for the whole shop.
    pub subject: String,
    pub message: String,
    pub since_ms: u64,
    pub cleared_ms: Option<u64>,
}

/// A condition that holds now.
struct Firing {
    rule: Rule,
    subject: String,
    message: String,
}

/// The rules' state: recent samples, active alerts, recently cleared ones.
pub struct Alerts {
    settings: AlertSettings,
    history: VecDeque<Sample>,
    active: BTreeMap<(Rule, String), Alert>,
    recent: VecDeque<Alert>,
    /// Alerts not raised because the active set was full.
    pub dropped_count: u64,
}

impl Alerts {
    pub fn new(settings: AlertSettings) -> Self {
        Self {
            settings,
            history: VecDeque::new(),
            active: BTreeMap::new(),
            recent: VecDeque::new(),
            dropped_count: 0,
        }
    }

    pub fn settings(&self) -> &AlertSettings {
        &self.settings
    }

    /// Adds a sample and re-evaluates every rule. Returns the alerts that fired (no
    /// `cleared_ms`) and those that cleared (with it), in that order.
    pub fn evaluate(&mut self, sample: Sample) -> Vec<Alert> {
        if self
            .history
            .back()
            .is_some_and(|last| last.at_ms > sample.at_ms)
        {
            return Vec::new();
        }
        let now_ms = sample.at_ms;
        if self.history.len() >= ALERT_HISTORY_SAMPLES_MAX {
            self.history.pop_front();
        }
        self.history.push_back(sample);
        let firing = self.conditions();
        let mut changes = self.raise(&firing, now_ms);
        changes.extend(self.clear(&firing, now_ms));
        changes
    }

    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// Cleared alerts, newest last.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Alert> {
        self.recent.iter()
    }

    pub fn active_count(&self, rule: Rule) -> usize {
        self.active.keys().filter(|(r, _)| *r == rule).count()
    }

    fn conditions(&self) -> Vec<Firing> {
        let mut firing = Vec::new();
        firing.extend(self.latency_rising());
        firing.extend(self.error_rate());
        firing.extend(self.payment_success());
        firing.extend(self.stock_low());
        firing.extend(self.delivery_overdue());
        firing.extend(self.disk_space_low());
        firing.extend(self.mirror_lagging());
        firing
    }

    fn raise(&mut self, firing: &[Firing], now_ms: u64) -> Vec<Alert> {
        let mut raised = Vec::new();
        for f in firing {
            let key = (f.rule, f.subject.clone());
            if let Some(alert) = self.active.get_mut(&key) {
                alert.message.clone_from(&f.message);
                continue;
            }
            if self.active.len() >= ALERTS_ACTIVE_MAX {
                self.dropped_count += 1;
                continue;
            }
            let alert = Alert {
                rule: f.rule,
                subject: f.subject.clone(),
                message: f.message.clone(),
                since_ms: now_ms,
                cleared_ms: None,
            };
            self.active.insert(key, alert.clone());
            raised.push(alert);
        }
        raised
    }

    fn clear(&mut self, firing: &[Firing], now_ms: u64) -> Vec<Alert> {
        let gone: Vec<(Rule, String)> = self
            .active
            .keys()
            .filter(|(rule, subject)| {
                !firing
                    .iter()
                    .any(|f| f.rule == *rule && f.subject == *subject)
            })
            .cloned()
            .collect();
        let mut cleared = Vec::with_capacity(gone.len());
        for key in gone {
            let mut alert = self.active.remove(&key).expect("key taken from the map");
            alert.cleared_ms = Some(now_ms);
            if self.recent.len() >= ALERTS_RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back(alert.clone());
            cleared.push(alert);
        }
        cleared
    }

    fn latest(&self) -> &Sample {
        self.history.back().expect("evaluate pushed a sample")
    }

    /// The newest sample at or before `at_ms`, if the history reaches back that far.
    fn sample_at(&self, at_ms: u64) -> Option<&Sample> {
        self.history.iter().rev().find(|s| s.at_ms <= at_ms)
    }

    /// Mean latency (µs) between consecutive samples that saw requests, newest last.
    fn mean_latencies(&self, count: usize) -> Vec<f64> {
        let mut means: Vec<f64> = self
            .history
            .iter()
            .zip(self.history.iter().skip(1))
            .filter_map(|(before, after)| {
                let requests = after.requests_total.checked_sub(before.requests_total)?;
                let latency = after
                    .latency_us_total
                    .checked_sub(before.latency_us_total)?;
                (requests > 0).then(|| latency as f64 / requests as f64)
            })
            .collect();
        let skip = means.len().saturating_sub(count);
        means.drain(..skip);
        means
    }

    fn latency_rising(&self) -> Option<Firing> {
        let count = self.settings.latency_rise_samples.max(2);
        let means = self.mean_latencies(count);
        if means.len() < count {
            return None;
        }
        let rising = means.windows(2).all(|w| w[1] > w[0]);
        let (first, last) = (means[0], means[count - 1]);
        (rising && last > first * (1.0 + self.settings.latency_rise_ratio)).then(|| Firing {
            rule: Rule::LatencyRising,
            subject: String::new(),
            message: format!(
                "mean response time rose over {count} samples from {:.1} ms to {:.1} ms",
                first / 1000.0,
                last / 1000.0
            ),
        })
    }

    fn error_rate(&self) -> Option<Firing> {
        let latest = self.latest();
        let start = self.sample_at(latest.at_ms.saturating_sub(self.settings.error_window_ms))?;
        let requests = latest.requests_total.saturating_sub(start.requests_total);
        let errors = latest.errors_total.saturating_sub(start.errors_total);
        if requests < self.settings.error_requests_min.max(1) {
            return None;
        }
        let rate = errors as f64 / requests as f64;
        (rate >= self.settings.error_rate_max).then(|| Firing {
            rule: Rule::ErrorRate,
            subject: String::new(),
            message: format!(
                "{:.2}% of {requests} requests failed with 5xx over the last {} s",
                rate * 100.0,
                self.settings.error_window_ms / 1000
            ),
        })
    }

    fn payment_success(&self) -> Vec<Firing> {
        let latest = self.latest();
        let window_ms = self.settings.payment_window_ms;
        let (Some(start), Some(before)) = (
            self.sample_at(latest.at_ms.saturating_sub(window_ms)),
            self.sample_at(latest.at_ms.saturating_sub(2 * window_ms)),
        ) else {
            return Vec::new();
        };
        latest
            .channels
            .iter()
            .filter_map(|now| {
                let recent = Window::between(start, now)?;
                let earlier = Window::between(before, channel_in(start, &now.channel)?)?;
                self.payment_falling(&now.channel, recent, earlier)
            })
            .collect()
    }

    fn payment_falling(&self, channel: &str, recent: Window, earlier: Window) -> Option<Firing> {
        let settings = &self.settings;
        let volume_normal = recent.created >= settings.payment_orders_min
            && recent.created as f64
                >= earlier.created as f64 * settings.payment_volume_normal_ratio;
        let (rate_now, rate_before) = (recent.paid_rate()?, earlier.paid_rate()?);
        let falling = rate_now < rate_before * settings.payment_success_drop_ratio;
        (volume_normal && falling).then(|| Firing {
            rule: Rule::PaymentSuccess,
            subject: channel.to_owned(),
            message: format!(
                "channel {channel}: {:.0}% of {} orders paid, down from {:.0}%",
                rate_now * 100.0,
                recent.created,
                rate_before * 100.0
            ),
        })
    }

    fn stock_low(&self) -> Vec<Firing> {
        self.latest()
            .stock
            .iter()
            .filter(|(_, available)| *available < self.settings.stock_min)
            .map(|(sku, available)| Firing {
                rule: Rule::StockLow,
                subject: sku.clone(),
                message: format!(
                    "{sku}: {available} keys available (threshold {})",
                    self.settings.stock_min
                ),
            })
            .collect()
    }

    fn delivery_overdue(&self) -> Option<Firing> {
        let latest = self.latest();
        let overdue_since = latest.oldest_undelivered_paid_at_ms.filter(|paid_at_ms| {
            latest.at_ms.saturating_sub(*paid_at_ms) >= self.settings.delivery_overdue_ms
        });
        if overdue_since.is_none() && latest.manual_review_count == 0 {
            return None;
        }
        Some(Firing {
            rule: Rule::DeliveryOverdue,
            subject: String::new(),
            message: format!(
                "{} orders in manual review; oldest undelivered payment waiting: {}",
                latest.manual_review_count,
                overdue_since.map_or("none".to_owned(), |paid_at_ms| format!(
                    "{} s",
                    latest.at_ms.saturating_sub(paid_at_ms) / 1000
                ))
            ),
        })
    }
}

impl Alerts {
    fn disk_space_low(&self) -> Option<Firing> {
        let free_bytes = self.latest().data_dir_free_bytes?;
        let min = self.settings.disk_free_bytes_min;
        (free_bytes < min).then(|| Firing {
            rule: Rule::DiskSpaceLow,
            subject: String::new(),
            message: format!(
                "the data dir's disk has {} MiB free (threshold {} MiB); a full disk stops the log",
                free_bytes >> 20,
                min >> 20
            ),
        })
    }

    fn mirror_lagging(&self) -> Option<Firing> {
        let latest = self.latest();
        (latest.mirror_lag_ms >= self.settings.mirror_lag_ms_max).then(|| Firing {
            rule: Rule::MirrorLag,
            subject: String::new(),
            message: format!(
                "sled is {} records behind the log; the oldest has waited {} s",
                latest.mirror_lag_records,
                latest.mirror_lag_ms / 1000
            ),
        })
    }
}

/// Orders created and paid in a channel between two samples.
#[derive(Debug, Clone, Copy)]
struct Window {
    created: u64,
    paid: u64,
}

impl Window {
    fn between(start: &Sample, end: &ChannelTotals) -> Option<Window> {
        let first = channel_in(start, &end.channel)?;
        Some(Window {
            created: end.created_total.saturating_sub(first.created_total),
            paid: end.paid_total.saturating_sub(first.paid_total),
        })
    }

    fn paid_rate(self) -> Option<f64> {
        (self.created > 0).then(|| self.paid as f64 / self.created as f64)
    }
}

fn channel_in<'a>(sample: &'a Sample, channel: &str) -> Option<&'a ChannelTotals> {
    sample.channels.iter().find(|c| c.channel == channel)
}

#[cfg(test)]
mod tests;
