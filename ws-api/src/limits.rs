//! Rate limits at the edge: token buckets (governor) per client IP, separately for order
//! creation, order lookups and live-socket connects. A refusal is 429 with `Retry-After`.
//! Payment callbacks are never limited here: that money is already paid.
//!
//! Clients are keyed by `client::client_key` (IPv4 address, IPv6 /64, the address a
//! trusted proxy reports), so a proxy's address is never everyone's bucket.
//!
//! Bounded: each bucket map forgets idle clients (`prune`, run periodically) and holds at
//! most `TRACKED_CLIENTS_MAX` clients; when it is full a client it does not track is
//! refused (429) until room frees up, never pooled into one bucket shared with everyone
//! else (one abuser would then refuse every newcomer of the shop).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Clients tracked per lane; past it, untracked clients are refused until room frees up.
pub const TRACKED_CLIENTS_MAX: usize = 100_000;
/// `Retry-After` for a client refused because the table is full (prune runs every few
/// seconds and frees the idle clients' room).
pub const TABLE_FULL_RETRY_SECS: u32 = 5;

/// A bucket map that never grows past its capacity: a new key finds it full and is
/// refused (measured against a state that allows nothing) without being stored.
pub struct BoundedStore {
    inner: DashMapStateStore<IpAddr>,
    capacity: usize,
}

impl BoundedStore {
    fn new(capacity: usize) -> Self {
        Self {
            inner: DashMapStateStore::default(),
            capacity,
        }
    }
}

impl StateStore for BoundedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.inner.len() >= self.capacity && !self.inner.contains_key(key) {
            // A theoretical arrival time far in the future: the rule refuses.
            return f(Some(Nanos::from(u64::MAX / 2))).map(|(outcome, _)| outcome);
        }
        self.inner.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.inner.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.inner);
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

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

type Keyed<C> = RateLimiter<IpAddr, BoundedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

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
                BoundedStore::new(TRACKED_CLIENTS_MAX),
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

    /// Takes one token for `client` in `lane`, or answers 429 with the wait. A request
    /// without a client address (none over TCP) is refused: it has no bucket of its own.
    pub fn check(&self, lane: Lane, client: Option<IpAddr>) -> Result<(), ApiError> {
        let limiter = self.lane(lane);
        let Some(key) = client else {
            return Err(refused(lane, TABLE_FULL_RETRY_SECS));
        };
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            // A wait of days is the full table's refusal, not this client's own pace.
            let secs = if wait > Duration::from_secs(3600) {
                TABLE_FULL_RETRY_SECS
            } else {
                retry_after_secs(wait)
            };
            refused(lane, secs)
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

fn refused(lane: Lane, retry_after_secs: u32) -> ApiError {
    metrics::counter!("panshi_rate_limited_total", "lane" => lane_name(lane)).increment(1);
    ApiError {
        retry_after_secs: Some(retry_after_secs),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this client; retry later",
        )
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
    use std::net::Ipv4Addr;

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

    /// Postmortem: past the table's bound every newcomer shared one overflow bucket, so one
    /// abuser got 429s for everyone. A full table refuses only clients it does not track.
    #[test]
    fn a_full_table_refuses_newcomers_but_serves_the_clients_it_tracks() {
        let clock = FakeRelativeClock::default();
        let limiter: Keyed<FakeRelativeClock> = RateLimiter::new(
            quota(settings().create),
            BoundedStore::new(2),
            clock.clone(),
        );
        let (a, b, c) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        );
        assert!(limiter.check_key(&a).is_ok());
        assert!(limiter.check_key(&b).is_ok());
        assert!(limiter.check_key(&c).is_err(), "a newcomer to a full table");
        assert!(
            limiter.check_key(&a).is_ok(),
            "tracked clients keep their own pace"
        );
        assert_eq!(limiter.len(), 2);
        clock.advance(Duration::from_secs(10));
        limiter.retain_recent();
        assert!(
            limiter.check_key(&c).is_ok(),
            "room again once idle clients go"
        );
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
