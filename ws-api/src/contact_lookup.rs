//! Rate limits on finding orders by contact and lookup password: each try costs the server
//! a slow hash per candidate order and gives a guesser one try, so tries are few, per client
//! IP and per contact (whoever asks), each bucket refilling slowly. A refusal is 429 with
//! `Retry-After`, whatever the password.
//!
//! Bounded like the edge's other limits: idle keys are forgotten (`prune`), and past
//! `TRACKED_KEYS_MAX` new keys share one overflow bucket. Contacts are kept as a 64-bit
//! hash, not as text.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;

/// Tries one client IP may make in a burst, and how often one more comes back.
pub const LOOKUPS_PER_IP_BURST: u32 = 6;
pub const LOOKUP_PER_IP_EVERY_SECS: u64 = 10;
/// Tries on one contact, from anywhere, in a burst, and how often one more comes back.
pub const LOOKUPS_PER_CONTACT_BURST: u32 = 5;
pub const LOOKUP_PER_CONTACT_EVERY_SECS: u64 = 60;
/// Keys tracked per limiter before new ones share the overflow bucket.
pub const TRACKED_KEYS_MAX: usize = 100_000;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct ContactLookupLimits<C: Clock = DefaultClock> {
    by_ip: Keyed<IpAddr, C>,
    by_contact: Keyed<u64, C>,
    clock: C,
}

fn quota(burst: u32, every_secs: u64) -> Quota {
    Quota::with_period(Duration::from_secs(every_secs))
        .expect("a positive period")
        .allow_burst(NonZeroU32::new(burst).expect("a positive burst"))
}

fn contact_hash(contact: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine::state::contact_key(contact).hash(&mut hasher);
    hasher.finish()
}

impl ContactLookupLimits<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for ContactLookupLimits<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> ContactLookupLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        Self {
            by_ip: RateLimiter::new(
                quota(LOOKUPS_PER_IP_BURST, LOOKUP_PER_IP_EVERY_SECS),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            by_contact: RateLimiter::new(
                quota(LOOKUPS_PER_CONTACT_BURST, LOOKUP_PER_CONTACT_EVERY_SECS),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Takes one try for this client and this contact, or answers 429.
    pub fn check(&self, client: Option<IpAddr>, contact: &str) -> Result<(), ApiError> {
        let mut ip = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if self.by_ip.len() >= TRACKED_KEYS_MAX {
            ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        }
        let mut contact = contact_hash(contact);
        if self.by_contact.len() >= TRACKED_KEYS_MAX {
            contact = 0;
        }
        let refused = self
            .by_ip
            .check_key(&ip)
            .and_then(|()| self.by_contact.check_key(&contact));
        refused.map_err(|not_until| {
            metrics::counter!("panshi_rate_limited_total", "lane" => "contact_lookup").increment(1);
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError {
                retry_after_secs: Some(wait.as_secs().clamp(1, 3600) as u32),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many lookups; retry later",
                )
            }
        })
    }

    /// Forgets keys whose buckets are full again.
    pub fn prune(&self) {
        self.by_ip.retain_recent();
        self.by_ip.shrink_to_fit();
        self.by_contact.retain_recent();
        self.by_contact.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn tries_are_limited_per_contact_from_any_address_and_per_address() {
        let clock = FakeRelativeClock::default();
        let limits = ContactLookupLimits::with_clock(clock.clone());
        for n in 0..LOOKUPS_PER_CONTACT_BURST {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, n as u8));
            assert!(limits.check(Some(ip), "Buyer@Example.com").is_ok());
        }
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));
        let refused = limits.check(Some(ip), " buyer@example.com").unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (429, "rate_limited")
        );
        assert!(limits.check(Some(ip), "other@example.com").is_ok());
        clock.advance(Duration::from_secs(LOOKUP_PER_CONTACT_EVERY_SECS));
        assert!(limits.check(Some(ip), "buyer@example.com").is_ok());
    }
}
