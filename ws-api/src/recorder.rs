//! The shop's metrics recorder: Prometheus's exporter for counters and gauges, and
//! histograms of our own, counted into their buckets as each sample is recorded.
//!
//! The exporter kept every histogram sample (16 bytes each, several a purchase) until a
//! scrape or an upkeep folded them into buckets; recording one took a shared lock (so that a
//! fold never raced it: metrics-util 0.20's sample bucket lost samples to a fold that took it
//! while a block was being linked) and an atomic push, about 2.5% of the server's CPU at 64
//! purchases in flight. A sample here is a search of at most 13 bounds and three atomic
//! adds; nothing grows, and a scrape reads the counters as they stand. Rendered exactly as
//! the exporter rendered its histograms (the test below compares the two).
//!
//! Invariants: one `Buckets` per key, however often a key is registered; a sample is counted
//! in exactly one bucket; a scrape's count is the sum of the buckets it shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::formatting::{
    key_to_parts, sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

/// Buckets, in seconds, of every duration histogram.
const DURATION_BUCKETS_SECONDS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// The one histogram that is not a duration.
const LOG_GROUP_RECORDS: &str = "panshi_log_group_records";
/// Buckets of the group-commit batch size (records, up to the log's group bound of 8,192);
/// the duration buckets would put every batch in the top bucket.
const LOG_GROUP_RECORDS_BUCKETS: [f64; 8] = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 8192.0];

/// The recorder to install once, globally.
pub struct ShopRecorder {
    inner: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

/// What scrapes read: renders the text exposition.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
    histograms: Arc<Histograms>,
}

/// Every histogram registered, and the descriptions of their names.
#[derive(Default)]
struct Histograms {
    by_key: Mutex<HashMap<Key, Arc<Buckets>>>,
    descriptions: Mutex<HashMap<String, SharedString>>,
}

/// One histogram's counts.
struct Buckets {
    /// Upper bounds, ascending.
    bounds: &'static [f64],
    /// `counts[i]`: samples above `bounds[i - 1]` and at most `bounds[i]`; the last counts the
    /// samples above every bound. Not cumulative: a sample adds to one counter.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, an `f64`'s bits.
    sum_bits: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0.0_f64.to_bits()),
        }
    }

    fn add(&self, value: f64, count: u64) {
        // Prometheus's `le`: a sample equal to a bound is in that bound's bucket.
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(count, Ordering::Relaxed);
        let added = value * count as f64;
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + added).to_bits())
            });
    }

    /// Writes the bucket, sum and count lines of one label set.
    fn render(&self, output: &mut String, name: &str, labels: &[String]) {
        let mut below = 0_u64;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            below += count.load(Ordering::Relaxed);
            write_metric_line(
                output,
                name,
                Some("bucket"),
                labels,
                Some(("le", bound)),
                below,
                None,
            );
        }
        let total = below + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        write_metric_line(
            output,
            name,
            Some("bucket"),
            labels,
            Some(("le", "+Inf")),
            total,
            None,
        );
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        write_metric_line::<&str, f64>(output, name, Some("sum"), labels, None, sum, None);
        write_metric_line::<&str, u64>(output, name, Some("count"), labels, None, total, None);
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.add(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.add(value, count as u64);
    }
}

impl Histograms {
    fn register(&self, key: &Key) -> Arc<Buckets> {
        let bounds: &'static [f64] = if key.name() == LOG_GROUP_RECORDS {
            &LOG_GROUP_RECORDS_BUCKETS
        } else {
            &DURATION_BUCKETS_SECONDS
        };
        self.by_key
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Buckets::new(bounds)))
            .clone()
    }

    /// Every histogram, grouped by name (names in order), in the exporter's format.
    fn render(&self, output: &mut String) {
        let mut by_name: Vec<(String, Vec<String>, Arc<Buckets>)> = self
            .by_key
            .lock()
            .iter()
            .map(|(key, buckets)| {
                let (name, labels) = key_to_parts(key, None);
                (name, labels, buckets.clone())
            })
            .collect();
        by_name.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let descriptions = self.descriptions.lock();
        for family in by_name.chunk_by(|a, b| a.0 == b.0) {
            let name = &family[0].0;
            if let Some(description) = descriptions.get(name) {
                write_help_line(output, name, description);
            }
            write_type_line(output, name, "histogram");
            for (_, labels, buckets) in family {
                buckets.render(output, name, labels);
            }
            output.push('\n');
        }
    }
}

impl ShopRecorder {
    pub fn new() -> ShopRecorder {
        ShopRecorder {
            inner: metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
            histograms: Arc::default(),
        }
    }

    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            inner: self.inner.handle(),
            histograms: self.histograms.clone(),
        }
    }
}

impl Default for ShopRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsHandle {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut output = self.inner.render();
        self.histograms.render(&mut output);
        output
    }
}

impl Recorder for ShopRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        let name = sanitize_metric_name(key.as_str());
        self.histograms
            .descriptions
            .lock()
            .insert(name, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    /// A lock and a map lookup per registration; the shop keeps its handles (`actors::kept`).
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.register(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    /// Samples on bounds, between them, above them all and in bulk, on two label sets and
    /// a second name: rendered line for line as the exporter renders the same samples.
    #[test]
    fn histograms_render_as_the_exporter_rendered_them() {
        let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS_SECONDS)
            .unwrap()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(LOG_GROUP_RECORDS.into()),
                &LOG_GROUP_RECORDS_BUCKETS,
            )
            .unwrap()
            .build_recorder();
        let ours = ShopRecorder::new();
        let keys = [
            Key::from_parts(
                "panshi_http_request_duration_seconds",
                vec![
                    metrics::Label::new("route", "/api/v1/orders"),
                    metrics::Label::new("method", "POST"),
                ],
            ),
            Key::from_parts(
                "panshi_http_request_duration_seconds",
                vec![
                    metrics::Label::new("route", "/api/v1/orders/{id}"),
                    metrics::Label::new("method", "GET"),
                ],
            ),
            Key::from_static_name(LOG_GROUP_RECORDS),
        ];
        for recorder in [&exporter as &dyn Recorder, &ours] {
            recorder.describe_histogram(
                KeyName::from_const_str("panshi_http_request_duration_seconds"),
                None,
                SharedString::const_str("Time to answer a request, \"quoted\"."),
            );
            for (index, key) in keys.iter().enumerate() {
                let histogram = recorder.register_histogram(key, &METADATA);
                for value in [0.0001, 0.0003, 0.001, 0.0049, 0.3, 5.0, 7.5, 4096.0, 1e4] {
                    histogram.record(value * (index + 1) as f64);
                }
                histogram.record_many(0.002, 3 + index);
            }
        }
        let theirs = exporter.handle().render();
        let ours = ours.handle().render();
        // Sums are compared as numbers: float addition in another order rounds differently.
        let lines = |text: &str| -> Vec<(String, Option<f64>)> {
            let mut lines: Vec<_> = text
                .lines()
                .filter(|line| !line.is_empty())
                .map(|line| match line.rsplit_once(' ') {
                    Some((series, sum)) if series.contains("_sum") => {
                        (series.to_owned(), Some(sum.parse().unwrap()))
                    }
                    _ => (line.to_owned(), None),
                })
                .collect();
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            lines
        };
        let (our_lines, their_lines) = (lines(&ours), lines(&theirs));
        let same = |(a, x): &(String, Option<f64>), (b, y): &(String, Option<f64>)| {
            a == b
                && x.zip(*y)
                    .is_none_or(|(x, y)| (x - y).abs() <= 1e-9 * y.abs())
        };
        assert!(
            our_lines.len() == their_lines.len()
                && our_lines.iter().zip(&their_lines).all(|(a, b)| same(a, b)),
            "ours:\n{ours}\ntheirs:\n{theirs}"
        );
        assert!(ours.contains("le=\"+Inf\"} 12\n"), "{ours}");
    }

    /// Two threads record while a third scrapes again and again: every sample is counted
    /// once, and every scrape's count is the sum of its buckets.
    #[test]
    fn samples_recorded_while_scraped_are_all_counted() {
        const SAMPLES_PER_THREAD: usize = 1_000_000;
        const THREADS: usize = 2;
        let recorder = ShopRecorder::new();
        let histogram = recorder.register_histogram(&Key::from_static_name("raced"), &METADATA);
        let handle = recorder.handle();
        let count_in = |text: &str| -> u64 {
            let count = |prefix: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(prefix))
                    .and_then(|count| count.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            };
            let (total, infinite) = (count("raced_count "), count("raced_bucket{le=\"+Inf\"} "));
            assert_eq!(total, infinite);
            total
        };
        let recorders: Vec<_> = (0..THREADS)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for i in 0..SAMPLES_PER_THREAD {
                        histogram.record(i as f64 * 1e-7);
                    }
                })
            })
            .collect();
        let mut scrapes = 0;
        while !recorders.iter().all(|thread| thread.is_finished()) {
            count_in(&handle.render());
            scrapes += 1;
        }
        for thread in recorders {
            thread.join().unwrap();
        }
        assert!(scrapes > 1, "no scrape raced the recorders");
        let total = count_in(&handle.render());
        assert_eq!(
            total,
            (THREADS * SAMPLES_PER_THREAD) as u64,
            "after {scrapes} scrapes"
        );
    }
}
