//! Overload detection for the order pipeline: when too many order creations are in flight,
//! or the ones finishing spent too long in the pipeline proper (reserving keys and
//! committing; not the payment gateway's call), the pipeline is saturated and new buyers are put in
//! a waiting room instead of piling more work onto it. Pure: the caller counts creations in
//! flight, measures their latency per window, and passes the clock in.
//!
//! Invariants: entering is immediate (a request that finds `inflight_high` creations in
//! flight is queued at once, so a spike cannot slam through between two ticks); latency
//! enters only over a window of at least `LATENCY_SAMPLES_MIN` creations, so one slow
//! order cannot switch the shop to queueing; leaving is slow (in flight at or below
//! `inflight_low` and latency under half the threshold for `calm_ms` in a row), so the
//! state does not flap. A window that measured nothing says nothing about latency: with
//! nothing in flight it is calm (idle), with creations in flight it neither starts nor
//! breaks a calm period. So creations that are stuck never make the pipeline look calm,
//! while a quiet shop whose few creations wait on a slow gateway still leaves. While saturated, queued buyers are
//! admitted only into the room left below `inflight_low`: admission runs at the rate the
//! pipeline actually completes work, not at a guessed rate.

/// Creations a window must have measured before its mean latency counts.
pub const LATENCY_SAMPLES_MIN: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Order creations in flight at which the pipeline counts as saturated.
    pub inflight_high: u32,
    /// Creations in flight the pipeline is brought back to while saturated.
    pub inflight_low: u32,
    /// Mean creation latency over one window at which the pipeline counts as saturated.
    pub latency_high_ms: u32,
    /// How long the pipeline must stay calm before the saturated state ends.
    pub calm_ms: u64,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        Self {
            inflight_high: 1_024,
            inflight_low: 256,
            latency_high_ms: 250,
            calm_ms: 1_000,
        }
    }
}

impl OverloadSettings {
    /// Settings that make sense: low below high, both at least 1; a latency threshold of
    /// at least 2 ms (leaving needs half of it).
    pub fn normalised(self) -> Self {
        let inflight_high = self.inflight_high.max(1);
        Self {
            inflight_high,
            inflight_low: self.inflight_low.clamp(1, inflight_high),
            latency_high_ms: self.latency_high_ms.max(2),
            calm_ms: self.calm_ms,
        }
    }
}

/// What finished in one measurement window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Creations that finished (with an order or a refusal).
    pub completed: u64,
    /// Creations whose time in the pipeline proper was measured.
    pub latency_samples: u64,
    /// Their summed latency, in microseconds.
    pub latency_sum_us: u64,
    /// The window's length.
    pub length_ms: u64,
}

impl Window {
    /// The mean latency of the creations measured, if any was.
    fn mean_latency_ms(&self) -> Option<u64> {
        self.latency_sum_us
            .checked_div(self.latency_samples)
            .map(|us| us / 1_000)
    }
}

/// A change of state, for counting and logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Entered,
    Left,
}

#[derive(Debug)]
pub struct Overload {
    settings: OverloadSettings,
    saturated: bool,
    /// Since when the pipeline has been calm, while saturated.
    calm_since_ms: Option<u64>,
    /// Creations completed per second, smoothed over windows.
    sustained_per_second: u64,
}

impl Overload {
    pub fn new(settings: OverloadSettings) -> Self {
        Self {
            settings: settings.normalised(),
            saturated: false,
            calm_since_ms: None,
            sustained_per_second: 0,
        }
    }

    pub fn settings(&self) -> OverloadSettings {
        self.settings
    }

    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// Creations the pipeline completed per second lately (smoothed; 0 before any).
    pub fn sustained_per_second(&self) -> u64 {
        self.sustained_per_second
    }

    /// At a new order request: true when the buyer must queue. Enters the saturated state
    /// when `in_flight` (not counting this request) has reached the high-water mark.
    pub fn on_request(&mut self, now_ms: u64, in_flight: u64) -> (bool, Option<Transition>) {
        if self.saturated {
            return (true, None);
        }
        if in_flight >= u64::from(self.settings.inflight_high) {
            self.enter(now_ms);
            return (true, Some(Transition::Entered));
        }
        (false, None)
    }

    /// At the end of a measurement window.
    pub fn on_window(&mut self, now_ms: u64, in_flight: u64, window: Window) -> Option<Transition> {
        if let Some(rate) = (window.completed * 1_000).checked_div(window.length_ms) {
            // Exponential smoothing, 1/4 weight to the newest window.
            self.sustained_per_second = if self.sustained_per_second == 0 {
                rate
            } else {
                (self.sustained_per_second * 3 + rate) / 4
            };
        }
        let latency_ms = window.mean_latency_ms();
        let high = u64::from(self.settings.latency_high_ms);
        if !self.saturated {
            let slow = window.latency_samples >= LATENCY_SAMPLES_MIN
                && latency_ms.is_some_and(|ms| ms >= high);
            if in_flight >= u64::from(self.settings.inflight_high) || slow {
                self.enter(now_ms);
                return Some(Transition::Entered);
            }
            return None;
        }
        let calm = match latency_ms {
            _ if in_flight > u64::from(self.settings.inflight_low) => Some(false),
            Some(ms) => Some(ms < high / 2),
            None if in_flight == 0 => Some(true),
            // Work in flight and none measured: no evidence either way.
            None => None,
        };
        let since = match calm {
            Some(false) => {
                self.calm_since_ms = None;
                return None;
            }
            Some(true) => *self.calm_since_ms.get_or_insert(now_ms),
            None => self.calm_since_ms?,
        };
        if now_ms.saturating_sub(since) >= self.settings.calm_ms {
            self.saturated = false;
            self.calm_since_ms = None;
            return Some(Transition::Left);
        }
        None
    }

    /// How many queued buyers may start creating an order now: the room left below the
    /// low-water mark while saturated, below the high-water mark otherwise.
    pub fn admit_budget(&self, in_flight: u64) -> u64 {
        let ceiling = if self.saturated {
            self.settings.inflight_low
        } else {
            self.settings.inflight_high
        };
        u64::from(ceiling).saturating_sub(in_flight)
    }

    fn enter(&mut self, _now_ms: u64) {
        self.saturated = true;
        self.calm_since_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OverloadSettings {
        OverloadSettings {
            inflight_high: 100,
            inflight_low: 20,
            latency_high_ms: 200,
            calm_ms: 1_000,
        }
    }

    fn window(completed: u64, mean_ms: u64) -> Window {
        Window {
            completed,
            latency_samples: completed,
            latency_sum_us: completed * mean_ms * 1_000,
            length_ms: 100,
        }
    }

    #[test]
    fn a_request_at_the_high_water_mark_enters_at_once() {
        let mut o = Overload::new(settings());
        assert_eq!(o.on_request(0, 99), (false, None));
        assert_eq!(o.on_request(1, 100), (true, Some(Transition::Entered)));
        // Saturated: everyone queues, even when the pipeline momentarily has room.
        assert_eq!(o.on_request(2, 0), (true, None));
    }

    #[test]
    fn slow_completions_enter_and_an_idle_window_does_not() {
        let mut o = Overload::new(settings());
        assert_eq!(o.on_window(100, 5, window(0, 0)), None);
        assert_eq!(o.on_window(200, 5, window(10, 199)), None);
        // One slow creation is not a saturated pipeline.
        assert_eq!(
            o.on_window(250, 5, window(LATENCY_SAMPLES_MIN - 1, 5_000)),
            None
        );
        assert_eq!(
            o.on_window(300, 5, window(10, 200)),
            Some(Transition::Entered)
        );
        assert!(o.is_saturated());
    }

    #[test]
    fn leaving_needs_calm_for_the_whole_calm_period() {
        let mut o = Overload::new(settings());
        o.on_request(0, 100);
        // Calm from t=100 ...
        assert_eq!(o.on_window(100, 20, window(50, 10)), None);
        assert_eq!(o.on_window(900, 20, window(50, 10)), None);
        // ... broken at t=1000 by a busy window: the clock restarts.
        assert_eq!(o.on_window(1_000, 21, window(50, 10)), None);
        assert_eq!(o.on_window(1_100, 10, window(50, 10)), None);
        assert_eq!(o.on_window(2_000, 10, window(50, 99)), None);
        // Latency at half the threshold is not calm either.
        assert_eq!(o.on_window(2_050, 10, window(50, 100)), None);
        assert_eq!(o.on_window(2_100, 10, window(50, 10)), None);
        assert!(o.is_saturated());
        assert_eq!(
            o.on_window(3_100, 10, window(50, 10)),
            Some(Transition::Left)
        );
        assert!(!o.is_saturated());
        assert_eq!(o.on_request(3_101, 50), (false, None));
    }

    #[test]
    fn few_or_no_measurements_while_saturated() {
        let mut o = Overload::new(settings());
        o.on_request(0, 100);
        // Creations in flight and none measured: stuck, not calm, however long.
        assert_eq!(o.on_window(100, 5, window(0, 0)), None);
        assert_eq!(o.on_window(5_000, 5, window(0, 0)), None);
        assert!(o.is_saturated());
        // A few slow ones (too few to enter on) are not calm.
        assert_eq!(o.on_window(5_100, 5, window(2, 150)), None);
        assert_eq!(o.on_window(7_000, 5, window(2, 150)), None);
        assert!(o.is_saturated());
        // A few fast ones are, and so is an idle pipeline; windows that measured nothing
        // while a creation waits on its gateway do not break the calm period.
        assert_eq!(o.on_window(7_100, 5, window(2, 10)), None);
        assert_eq!(o.on_window(7_300, 2, window(0, 0)), None);
        assert_eq!(o.on_window(7_600, 0, window(0, 0)), None);
        assert_eq!(o.on_window(7_900, 1, window(0, 0)), None);
        assert!(o.is_saturated());
        assert_eq!(o.on_window(8_100, 1, window(0, 0)), Some(Transition::Left));
    }

    #[test]
    fn admission_fills_the_room_below_the_mark_in_force() {
        let mut o = Overload::new(settings());
        assert_eq!(o.admit_budget(30), 70);
        o.on_request(0, 100);
        assert_eq!(o.admit_budget(5), 15);
        assert_eq!(o.admit_budget(20), 0);
        assert_eq!(o.admit_budget(500), 0);
    }

    #[test]
    fn the_sustained_rate_follows_completions() {
        let mut o = Overload::new(settings());
        o.on_window(100, 0, window(100, 1));
        assert_eq!(o.sustained_per_second(), 1_000);
        o.on_window(200, 0, window(0, 0));
        assert_eq!(o.sustained_per_second(), 750);
    }

    #[test]
    fn nonsense_settings_are_made_sane() {
        let o = Overload::new(OverloadSettings {
            inflight_high: 0,
            inflight_low: 50,
            latency_high_ms: 0,
            calm_ms: 0,
        });
        let s = o.settings();
        assert_eq!(
            (s.inflight_high, s.inflight_low, s.latency_high_ms),
            (1, 1, 2)
        );
    }
}
