//! A shop nobody scrapes keeps its metrics' memory bounded: the recorder the server installs
//! counts histogram samples into buckets as they come (the exporter kept every sample until
//! the next scrape or upkeep). In a binary of its own, so resident memory is this test's.

use metrics::{Key, Metadata, Recorder};

/// Samples recorded after a first burst.
const SAMPLES: usize = 4_000_000;
const BURST_SAMPLES: usize = 100_000;
/// Growth allowed: the samples themselves took about 33 MB when kept until a scrape.
const GROWTH_KIB_MAX: u64 = 12 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn histogram_samples_take_no_memory_without_a_scrape() {
    let recorder = ws_api::recorder::ShopRecorder::new();
    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let histogram = recorder.register_histogram(
        &Key::from_static_name("panshi_http_request_duration_seconds"),
        &METADATA,
    );
    // A first burst, so the allocator's own start-up is not counted as growth.
    for i in 0..BURST_SAMPLES {
        histogram.record(i as f64 * 1e-7);
    }
    let before = rss_kib();
    for i in 0..SAMPLES {
        histogram.record((i % BURST_SAMPLES) as f64 * 1e-7);
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown <= GROWTH_KIB_MAX,
        "{SAMPLES} histogram samples never scraped grew memory by {grown} KiB"
    );
    // Every sample is counted once: none twice, none lost.
    let text = recorder.handle().render();
    let prefix = "panshi_http_request_duration_seconds_count ";
    let counted: usize = text
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in {text}"));
    assert_eq!(counted, SAMPLES + BURST_SAMPLES);
}
