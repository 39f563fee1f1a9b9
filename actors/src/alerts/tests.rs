//! The rules on synthetic series: the clock is the sample's `at_ms`, advanced by hand.

use super::*;

const STEP_MS: u64 = 5_000;

/// A series of samples 5 s apart, built from per-step increments.
struct Series {
    alerts: Alerts,
    sample: Sample,
}

impl Series {
    fn new() -> Self {
        Self::with(AlertSettings::default())
    }

    fn with(settings: AlertSettings) -> Self {
        let sample = Sample {
            at_ms: 1_700_000_000_000,
            channels: vec![ChannelTotals {
                channel: "epay".into(),
                created_total: 0,
                paid_total: 0,
            }],
            stock: vec![("sku-a".into(), 100)],
            ..Sample::default()
        };
        Self {
            alerts: Alerts::new(settings),
            sample,
        }
    }

    /// One step: `requests` answered with mean `latency_us`, `errors` of them 5xx.
    fn traffic(&mut self, requests: u64, errors: u64, latency_us: u64) -> Vec<Alert> {
        self.sample.requests_total += requests;
        self.sample.errors_total += errors;
        self.sample.latency_us_total += requests * latency_us;
        self.step()
    }

    fn orders(&mut self, created: u64, paid: u64) -> Vec<Alert> {
        self.sample.channels[0].created_total += created;
        self.sample.channels[0].paid_total += paid;
        self.step()
    }

    fn step(&mut self) -> Vec<Alert> {
        self.sample.at_ms += STEP_MS;
        self.alerts.evaluate(self.sample.clone())
    }

    fn active(&self, rule: Rule) -> bool {
        self.alerts.active_count(rule) > 0
    }
}

#[test]
fn latency_rising_fires_after_consecutive_rises_and_clears_when_it_falls() {
    let mut series = Series::new();
    series.traffic(100, 0, 10_000);
    for latency_us in [10_000, 10_500, 11_000, 11_500] {
        series.traffic(100, 0, latency_us);
        assert!(
            !series.active(Rule::LatencyRising),
            "not yet 5 rising samples"
        );
    }
    let fired = series.traffic(100, 0, 12_500);
    assert!(series.active(Rule::LatencyRising));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, Rule::LatencyRising);
    let cleared = series.traffic(100, 0, 9_000);
    assert!(!series.active(Rule::LatencyRising));
    assert_eq!(cleared[0].cleared_ms, Some(series.sample.at_ms));
    assert_eq!(series.alerts.recent().count(), 1);
}

#[test]
fn latency_rising_by_less_than_the_ratio_does_not_fire() {
    let mut series = Series::new();
    series.traffic(100, 0, 10_000);
    for latency_us in [10_000, 10_100, 10_200, 10_300, 10_400, 10_500] {
        series.traffic(100, 0, latency_us);
    }
    assert!(!series.active(Rule::LatencyRising));
}

#[test]
fn error_rate_jump_fires_within_the_window_and_clears_after_it() {
    let mut series = Series::new();
    // 0.1% errors for ten minutes: quiet.
    for _ in 0..120 {
        series.traffic(1_000, 1, 1_000);
    }
    assert!(!series.active(Rule::ErrorRate));
    // A jump to 2%: the 5-minute rate passes 1% within a few minutes.
    let mut fired_after_steps = None;
    for step in 1..=60 {
        series.traffic(1_000, 20, 1_000);
        if series.active(Rule::ErrorRate) {
            fired_after_steps = Some(step);
            break;
        }
    }
    let steps = fired_after_steps.expect("error rate alert fired within 5 minutes");
    assert!(steps * STEP_MS <= 300_000);
    // Healthy again: the window forgets the burst.
    for _ in 0..61 {
        series.traffic(1_000, 0, 1_000);
    }
    assert!(!series.active(Rule::ErrorRate));
}

#[test]
fn error_rate_needs_enough_requests() {
    let mut series = Series::new();
    series.traffic(1, 0, 1_000);
    series.traffic(3, 3, 1_000);
    assert!(!series.active(Rule::ErrorRate));
}

#[test]
fn payment_success_falling_with_normal_volume_fires_and_clears() {
    let mut series = Series::new();
    // Ten minutes at 10 orders per step, 8 paid: an 80% success rate.
    for _ in 0..120 {
        series.orders(10, 8);
    }
    assert!(!series.active(Rule::PaymentSuccess));
    // The channel breaks: orders keep coming, almost none are paid.
    for _ in 0..60 {
        series.orders(10, 1);
    }
    assert!(series.active(Rule::PaymentSuccess));
    let alert = series.alerts.active().next().unwrap();
    assert_eq!(alert.subject, "epay");
    // Payments come back.
    for _ in 0..61 {
        series.orders(10, 8);
    }
    assert!(!series.active(Rule::PaymentSuccess));
}

#[test]
fn payment_success_ignores_a_drop_in_volume() {
    let mut series = Series::new();
    for _ in 0..120 {
        series.orders(10, 8);
    }
    // Traffic falls to a trickle (night): few orders, few payments. Not a channel failure.
    for _ in 0..20 {
        series.orders(1, 0);
        series.orders(0, 0);
        series.orders(0, 0);
    }
    assert!(!series.active(Rule::PaymentSuccess));
}

#[test]
fn stock_below_threshold_fires_per_sku_and_clears_on_import() {
    let mut series = Series::new();
    series.step();
    assert!(!series.active(Rule::StockLow));
    series.sample.stock = vec![("sku-a".into(), 4), ("sku-b".into(), 50)];
    let fired = series.step();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].subject, "sku-a");
    series.sample.stock[0].1 = 40;
    let cleared = series.step();
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].cleared_ms.is_some());
}

#[test]
fn paid_order_undelivered_for_a_minute_fires() {
    let mut series = Series::new();
    series.sample.oldest_undelivered_paid_at_ms = Some(series.sample.at_ms);
    for _ in 0..11 {
        series.step();
        assert!(!series.active(Rule::DeliveryOverdue), "under a minute");
    }
    series.step();
    assert!(series.active(Rule::DeliveryOverdue));
    series.sample.oldest_undelivered_paid_at_ms = None;
    series.step();
    assert!(!series.active(Rule::DeliveryOverdue));
}

#[test]
fn manual_review_queue_counts_as_overdue() {
    let mut series = Series::new();
    series.sample.manual_review_count = 1;
    series.step();
    assert!(series.active(Rule::DeliveryOverdue));
    series.sample.manual_review_count = 0;
    series.step();
    assert!(!series.active(Rule::DeliveryOverdue));
}

#[test]
fn a_sample_from_the_past_is_ignored() {
    let mut series = Series::new();
    series.sample.manual_review_count = 1;
    series.step();
    let mut old = series.sample.clone();
    old.at_ms -= 60_000;
    old.manual_review_count = 0;
    assert!(series.alerts.evaluate(old).is_empty());
    assert!(series.active(Rule::DeliveryOverdue));
}

#[test]
fn history_and_recent_alerts_are_bounded() {
    let mut series = Series::new();
    for step in 0..(ALERT_HISTORY_SAMPLES_MAX + ALERTS_RECENT_MAX * 2) {
        series.sample.manual_review_count = (step % 2) as u64;
        series.step();
    }
    assert!(series.alerts.history.len() <= ALERT_HISTORY_SAMPLES_MAX);
    assert_eq!(series.alerts.recent().count(), ALERTS_RECENT_MAX);
}

#[test]
fn low_disk_space_fires_below_the_threshold_and_clears_above_it() {
    let mut series = Series::new();
    series.sample.data_dir_free_bytes = Some(2 << 30);
    series.step();
    assert!(!series.active(Rule::DiskSpaceLow));
    series.sample.data_dir_free_bytes = Some(100 << 20);
    let fired = series.step();
    assert_eq!(fired[0].rule, Rule::DiskSpaceLow);
    assert!(
        fired[0].message.contains("100 MiB free"),
        "{}",
        fired[0].message
    );
    series.sample.data_dir_free_bytes = None;
    series.step();
    assert!(!series.active(Rule::DiskSpaceLow), "unknown is not low");
}

#[test]
fn a_stuck_mirror_fires_once_its_oldest_record_waited_too_long() {
    let mut series = Series::new();
    series.sample.mirror_lag_records = 500;
    series.sample.mirror_lag_ms = 300;
    series.step();
    assert!(
        !series.active(Rule::MirrorLag),
        "a flush stall is not an alert"
    );
    series.sample.mirror_lag_ms = 12_000;
    let fired = series.step();
    assert_eq!(fired[0].rule, Rule::MirrorLag);
    assert!(
        fired[0].message.contains("500 records"),
        "{}",
        fired[0].message
    );
    series.sample.mirror_lag_records = 0;
    series.sample.mirror_lag_ms = 0;
    let cleared = series.step();
    assert_eq!(cleared[0].cleared_ms, Some(series.sample.at_ms));
}
