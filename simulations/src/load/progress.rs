//! One progress line per second on stderr while a run goes on: completed purchases, their
//! latency over the last second, errors, and the CPU the generator and the server used.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::cpu::{CpuMark, ServerPid};
use super::stats::{lock, ms, SharedStats};

/// How often a progress line is printed.
pub const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// The running progress printer; stops when finished or at its deadline.
pub struct Progress {
    handle: JoinHandle<()>,
}

impl Progress {
    /// Prints until `finish` or until `until`, whichever comes first.
    pub fn start(label: String, stats: SharedStats, server: ServerPid, until: Instant) -> Self {
        let handle = tokio::spawn(print_until(label, stats, server, until));
        Self { handle }
    }

    pub fn finish(self) {
        self.handle.abort();
    }
}

async fn print_until(label: String, stats: SharedStats, server: ServerPid, until: Instant) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at((started + PROGRESS_PERIOD).into(), PROGRESS_PERIOD);
    // A generator too busy to tick on time prints one late line, not a burst of empty ones.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut mark = CpuMark::now(&server);
    let mut purchases_total = 0;
    while Instant::now() < until {
        ticker.tick().await;
        let interval = lock(&stats).take_interval();
        let cpu = mark.share_since(&server);
        mark = CpuMark::now(&server);
        purchases_total += interval.purchases;
        eprintln!(
            "[{:>4}s] {label}: {} purchases/s (total {purchases_total}), p50 {} p99 {}, errors {}, cpu {cpu}",
            started.elapsed().as_secs(),
            interval.purchases,
            ms(interval.purchase_p50_us),
            ms(interval.purchase_p99_us),
            interval.errors,
        );
    }
}
