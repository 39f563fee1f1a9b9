//! Sampling of log lines that anyone can cause without credentials (forged or malformed
//! payment callbacks): each call site writes at most `LINES_PER_WINDOW` lines per
//! `WINDOW_MS`, and the next line it writes says how many it held back. The metrics
//! still count every event; the log only needs to show that it is happening.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// Lines one call site may write per window.
pub const LINES_PER_WINDOW: u64 = 10;
/// The window.
pub const WINDOW_MS: u64 = 1_000;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One call site's budget (a `static` beside the line it guards).
pub struct LogGate {
    /// The window's number (milliseconds since `EPOCH` / `WINDOW_MS`) and lines written in
    /// it, packed so that one atomic holds both: window << 16 | lines.
    window_lines: AtomicU64,
    /// Lines held back since the last one written.
    held_back: AtomicU64,
}

impl LogGate {
    pub const fn new() -> Self {
        Self {
            window_lines: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        let window = EPOCH.elapsed().as_millis() as u64 / WINDOW_MS + 1;
        let admitted = self
            .window_lines
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                let (current, lines) = (packed >> 16, packed & 0xffff);
                match (current == window, lines < LINES_PER_WINDOW) {
                    (false, _) => Some(window << 16 | 1),
                    (true, true) => Some(packed + 1),
                    (true, false) => None,
                }
            })
            .is_ok();
        if admitted {
            Some(self.held_back.swap(0, Ordering::AcqRel))
        } else {
            self.held_back.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_a_few_lines_and_counts_the_rest() {
        let gate = LogGate::new();
        let written = (0..1_000).filter_map(|_| gate.admit()).count() as u64;
        // A window may roll over once during the loop.
        assert!(
            (LINES_PER_WINDOW..=2 * LINES_PER_WINDOW).contains(&written),
            "{written}"
        );
        std::thread::sleep(std::time::Duration::from_millis(WINDOW_MS + 10));
        let held_back = gate.admit().expect("a new window");
        assert_eq!(held_back + written, 1_000);
    }
}
