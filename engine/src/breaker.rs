//! A circuit breaker for one payment channel: closed, open, half-open. Fed by the channel's
//! server-to-server calls (create, query) and their timeouts; time is passed in.
//!
//! Closed -> open after `consecutive_failures_max` failures in a row, or when the error rate
//! over the last `window_ms` reaches `error_rate_percent_max` with at least
//! `window_calls_min` calls. Open -> half-open after `cooldown_ms`: up to
//! `half_open_probes_max` calls go through; a success closes, a failure reopens.

use std::collections::VecDeque;

/// Most outcomes remembered for the error-rate window.
pub const WINDOW_OUTCOMES_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_failures_max: u32,
    pub window_ms: u64,
    pub window_calls_min: u32,
    pub error_rate_percent_max: u32,
    pub cooldown_ms: u64,
    pub half_open_probes_max: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures_max: 5,
            window_ms: 60_000,
            window_calls_min: 20,
            error_rate_percent_max: 50,
            cooldown_ms: 30_000,
            half_open_probes_max: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { since_ms: u64 },
    HalfOpen { probes_in_flight: u32 },
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// (time, succeeded), oldest first, within `window_ms`.
    window: VecDeque<(u64, bool)>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        assert!(config.consecutive_failures_max > 0 && config.half_open_probes_max > 0);
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            window: VecDeque::new(),
        }
    }

    /// The state now, moving open -> half-open once the cool-down has passed.
    pub fn state(&mut self, now_ms: u64) -> BreakerState {
        if let BreakerState::Open { since_ms } = self.state {
            if now_ms.saturating_sub(since_ms) >= self.config.cooldown_ms {
                self.state = BreakerState::HalfOpen {
                    probes_in_flight: 0,
                };
            }
        }
        self.state
    }

    /// Whether a call may go to the channel now; a half-open breaker counts its probe.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probes_in_flight } => {
                if probes_in_flight < self.config.half_open_probes_max {
                    self.state = BreakerState::HalfOpen {
                        probes_in_flight: probes_in_flight + 1,
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Whether new orders may be routed here (closed, or half-open with a probe free).
    pub fn is_usable(&mut self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probes_in_flight } => {
                probes_in_flight < self.config.half_open_probes_max
            }
        }
    }

    /// The earliest time at which `is_usable` answers true if nothing else happens: 0 when
    /// usable now, the end of the cool-down when open, `u64::MAX` when half-open with every
    /// probe taken (only an outcome frees one). Published for readers that must not wait
    /// for the channel's actor: `is_usable(now) == (now >= usable_from_ms())`.
    pub fn usable_from_ms(&self) -> u64 {
        match self.state {
            BreakerState::Closed => 0,
            BreakerState::Open { since_ms } => since_ms.saturating_add(self.config.cooldown_ms),
            BreakerState::HalfOpen { probes_in_flight } => {
                match probes_in_flight < self.config.half_open_probes_max {
                    true => 0,
                    false => u64::MAX,
                }
            }
        }
    }

    pub fn record(&mut self, now_ms: u64, succeeded: bool) {
        self.remember(now_ms, succeeded);
        match (self.state(now_ms), succeeded) {
            (BreakerState::HalfOpen { .. }, true) => self.close(),
            (BreakerState::HalfOpen { .. }, false) => self.open(now_ms),
            (BreakerState::Closed, true) => self.consecutive_failures = 0,
            (BreakerState::Closed, false) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.config.consecutive_failures_max
                    || self.error_rate_exceeded()
                {
                    self.open(now_ms);
                }
            }
            // Late answers to calls made before the breaker opened change nothing.
            (BreakerState::Open { .. }, _) => {}
        }
    }

    fn remember(&mut self, now_ms: u64, succeeded: bool) {
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > self.config.window_ms)
        {
            self.window.pop_front();
        }
        if self.window.len() == WINDOW_OUTCOMES_MAX {
            self.window.pop_front();
        }
        self.window.push_back((now_ms, succeeded));
    }

    fn error_rate_exceeded(&self) -> bool {
        let calls = self.window.len() as u64;
        let failures = self.window.iter().filter(|(_, ok)| !ok).count() as u64;
        calls >= u64::from(self.config.window_calls_min)
            && failures * 100 >= calls * u64::from(self.config.error_rate_percent_max)
    }

    fn open(&mut self, now_ms: u64) {
        self.state = BreakerState::Open { since_ms: now_ms };
        self.consecutive_failures = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.window.clear();
    }

    /// Success rate over the window, in percent (100 with no calls).
    pub fn success_percent(&self) -> u64 {
        let calls = self.window.len() as u64;
        if calls == 0 {
            return 100;
        }
        self.window.iter().filter(|(_, ok)| *ok).count() as u64 * 100 / calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures_max: 3,
            window_ms: 10_000,
            window_calls_min: 10,
            error_rate_percent_max: 50,
            cooldown_ms: 5_000,
            half_open_probes_max: 1,
        }
    }

    /// `usable_from_ms` answers as `is_usable` does, at every time after any history of
    /// calls, probes and outcomes (the published copy readers use instead of asking).
    #[test]
    fn usable_from_agrees_with_is_usable() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..200 {
            let mut breaker = Breaker::new(BreakerConfig {
                half_open_probes_max: 1 + next(3) as u32,
                ..config()
            });
            let mut now = 0;
            for _ in 0..200 {
                now += next(3_000);
                match next(3) {
                    0 => breaker.record(now, next(4) == 0),
                    1 => drop(breaker.allow(now)),
                    _ => {}
                }
                let from = breaker.usable_from_ms();
                for probe in [now, now + 1, now + 2_500, now + 5_000, now + 60_000] {
                    let mut copy = Breaker {
                        window: breaker.window.clone(),
                        ..breaker
                    };
                    assert_eq!(
                        copy.is_usable(probe),
                        probe >= from,
                        "at {probe}, from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let mut breaker = Breaker::new(config());
        for t in 0..2 {
            breaker.record(t, false);
        }
        assert_eq!(breaker.state(2), BreakerState::Closed);
        breaker.record(3, false);
        assert_eq!(breaker.state(3), BreakerState::Open { since_ms: 3 });
        assert!(!breaker.allow(4_000), "open refuses during the cool-down");
        assert!(breaker.allow(5_003), "one probe after the cool-down");
        assert!(!breaker.allow(5_004), "only one probe at a time");
        breaker.record(5_010, true);
        assert_eq!(breaker.state(5_010), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut breaker = Breaker::new(config());
        for t in 0..3 {
            breaker.record(t, false);
        }
        assert!(breaker.allow(6_000));
        breaker.record(6_001, false);
        assert_eq!(breaker.state(6_001), BreakerState::Open { since_ms: 6_001 });
        assert_eq!(
            breaker.state(11_001),
            BreakerState::HalfOpen {
                probes_in_flight: 0
            }
        );
    }

    #[test]
    fn the_error_rate_opens_without_consecutive_failures() {
        let mut breaker = Breaker::new(config());
        for t in 0..10 {
            breaker.record(t, t % 2 == 0);
        }
        assert!(
            matches!(breaker.state(10), BreakerState::Open { .. }),
            "5 of 10 failed"
        );
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut breaker = Breaker::new(config());
        for t in 0..9 {
            breaker.record(t, t % 2 == 0);
        }
        // Ten seconds later the failures above no longer count.
        for t in 20_000..20_009 {
            breaker.record(t, true);
        }
        breaker.record(20_010, false);
        assert_eq!(breaker.state(20_010), BreakerState::Closed);
        assert_eq!(breaker.success_percent(), 90);
    }
}
