//! Rate limits at the edge: token buckets (governor) per client IP, separately for order
//! creation, order lookups and live-socket connects. A refusal is 429 with `Retry-After`.
//! Payment callbacks are never limited here: that money is already paid.
//!
//! Bounded: each bucket map forgets idle clients (`prune`, run periodically) and is capped
//! at `TRACKED_CLIENTS_MAX`; past the cap, new clients share one overflow bucket, so a
//! flood of spoofed sources cannot grow memory.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Clients tracked per lane before new ones share the overflow bucket.
pub const TRACKED_CLIENTS_MAX: usize = 100_000;
/// The key of the shared overflow bucket.
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Deserialize, Serialize, Debug, Clone, Copy)]
#[serde(default)]
pub struct LaneSettings {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct LimitsSettings {
    pub create: LaneSettings,
    pub lookup: LaneSettings,
    pub websocket: LaneSettings,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            create: LaneSettings {
                per_second: 5,
                burst: 20,
            },
            lookup: LaneSettings {
                per_second: 20,
                burst: 60,
            },
            websocket: LaneSettings {
                per_second: 5,
                burst: 20,
            },
        }
    }
}

impl Default for LaneSettings {
    fn default() -> Self {
        Self {
            per_second: 10,
            burst: 30,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Lane {
    Create,
    Lookup,
    Websocket,
}

type Keyed<C> =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct EdgeLimits<C: Clock = DefaultClock> {
    create: Keyed<C>,
    lookup: Keyed<C>,
    websocket: Keyed<C>,
    /// Finding orders by contact and lookup password: few tries, per IP and per contact.
    pub contact_lookup: crate::contact_lookup::ContactLookupLimits<C>,
    clock: C,
}

fn quota(lane: LaneSettings) -> Quota {
    let per_second = NonZeroU32::new(lane.per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(lane.burst.max(1)).expect("at least 1");
    Quota::per_second(per_second).allow_burst(burst)
}

impl EdgeLimits<DefaultClock> {
    pub fn new(settings: &LimitsSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> EdgeLimits<C> {
    pub fn with_clock(settings: &LimitsSettings, clock: C) -> Self {
        let keyed = |lane| {
            RateLimiter::new(
                quota(lane),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        };
        Self {
            create: keyed(settings.create),
            lookup: keyed(settings.lookup),
            websocket: keyed(settings.websocket),
            contact_lookup: crate::contact_lookup::ContactLookupLimits::with_clock(clock.clone()),
            clock: clock.clone(),
        }
    }

    fn lane(&self, lane: Lane) -> &Keyed<C> {
        match lane {
            Lane::Create => &self.create,
            Lane::Lookup => &self.lookup,
            Lane::Websocket => &self.websocket,
        }
    }

    /// Takes one token for `client` in `lane`, or answers 429 with the wait.
    pub fn check(&self, lane: Lane, client: Option<IpAddr>) -> Result<(), ApiError> {
        let limiter = self.lane(lane);
        let mut key = client.unwrap_or(OVERFLOW);
        if limiter.len() >= TRACKED_CLIENTS_MAX {
            key = OVERFLOW;
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            metrics::counter!("panshi_rate_limited_total", "lane" => lane_name(lane)).increment(1);
            ApiError {
                retry_after_secs: Some(retry_after_secs(wait)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests from this client; retry later",
                )
            }
        })
    }

    /// Forgets clients whose buckets are full again (run every few seconds).
    pub fn prune(&self) {
        for limiter in [&self.create, &self.lookup, &self.websocket] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.contact_lookup.prune();
    }
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::Create => "create",
        Lane::Lookup => "lookup",
        Lane::Websocket => "websocket",
    }
}

fn retry_after_secs(wait: Duration) -> u32 {
    (wait.as_millis().div_ceil(1000)).clamp(1, 3600) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings() -> LimitsSettings {
        LimitsSettings {
            create: LaneSettings {
                per_second: 1,
                burst: 3,
            },
            lookup: LaneSettings {
                per_second: 1,
                burst: 1,
            },
            websocket: LaneSettings {
                per_second: 1,
                burst: 1,
            },
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_recovers_with_time() {
        let clock = FakeRelativeClock::default();
        let limits = EdgeLimits::with_clock(&settings(), clock.clone());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check(Lane::Create, Some(ip)).is_ok());
        }
        let refused = limits.check(Lane::Create, Some(ip)).unwrap_err();
        assert_eq!(
            (
                refused.status.as_u16(),
                refused.code,
                refused.retry_after_secs
            ),
            (429, "rate_limited", Some(1))
        );
        // Another client and another lane are untouched.
        assert!(limits
            .check(Lane::Create, Some("10.0.0.2".parse().unwrap()))
            .is_ok());
        assert!(limits.check(Lane::Lookup, Some(ip)).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(limits.check(Lane::Create, Some(ip)).is_ok());
        assert!(limits.check(Lane::Create, Some(ip)).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limits = EdgeLimits::with_clock(&settings(), clock.clone());
        for n in 0..50u8 {
            let _ = limits.check(Lane::Lookup, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, n))));
        }
        assert_eq!(limits.lookup.len(), 50);
        clock.advance(Duration::from_secs(5));
        limits.prune();
        assert_eq!(limits.lookup.len(), 0);
    }
}
