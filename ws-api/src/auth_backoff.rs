//! Back-off on failed operator authentication, per client address (`client::client_key`):
//! the first `FREE_FAILURES` wrong tokens cost nothing, then each failure locks the address
//! out for twice as long as the last (from `LOCKOUT_FIRST_MS` to `LOCKOUT_MAX_MS`). While
//! locked out, an address's attempts are refused before its token is even compared, so a
//! guesser gets a handful of tries per lockout instead of thousands per second. A success
//! clears the address.
//!
//! Bounded: at most `TRACKED_ADDRESSES_MAX` addresses; at the bound the entry whose lockout
//! ends first is dropped (an attacker rotating addresses still pays `FREE_FAILURES` tries
//! per address, and a 32-character token is out of reach at that pace).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Wrong tokens an address may send before its first lockout.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const LOCKOUT_FIRST_MS: u64 = 1_000;
/// The longest lockout.
pub const LOCKOUT_MAX_MS: u64 = 15 * 60 * 1000;
/// Addresses remembered at once.
pub const TRACKED_ADDRESSES_MAX: usize = 10_000;
/// How long a quiet address's failures are remembered.
pub const FORGET_AFTER_MS: u64 = 60 * 60 * 1000;
const _: () = assert!(LOCKOUT_FIRST_MS <= LOCKOUT_MAX_MS);

struct Entry {
    failures: u32,
    locked_until: Instant,
    last_failure: Instant,
}

/// Failed operator authentications per address.
#[derive(Default)]
pub struct AuthBackoff {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

/// The lockout after `failures` failures in a row.
fn lockout(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(20);
    Duration::from_millis(
        LOCKOUT_FIRST_MS
            .saturating_mul(1 << doublings)
            .min(LOCKOUT_MAX_MS),
    )
}

impl AuthBackoff {
    /// `Err(wait)` while `client` is locked out.
    pub fn check(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let Some(client) = client else {
            return Ok(());
        };
        match self.entries.lock().get(&client) {
            Some(entry) if entry.locked_until > now => Err(entry.locked_until - now),
            _ => Ok(()),
        }
    }

    /// Counts a wrong token from `client`; returns the lockout it now has.
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) -> Duration {
        let Some(client) = client else {
            return Duration::ZERO;
        };
        let mut entries = self.entries.lock();
        if !entries.contains_key(&client) && entries.len() >= TRACKED_ADDRESSES_MAX {
            let forget = Duration::from_millis(FORGET_AFTER_MS);
            entries.retain(|_, e| e.locked_until > now || now - e.last_failure < forget);
            if entries.len() >= TRACKED_ADDRESSES_MAX {
                let first = entries
                    .iter()
                    .min_by_key(|(_, e)| e.locked_until)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = first {
                    entries.remove(&ip);
                }
            }
        }
        let entry = entries.entry(client).or_insert(Entry {
            failures: 0,
            locked_until: now,
            last_failure: now,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let wait = lockout(entry.failures);
        entry.locked_until = now + wait;
        debug_assert!(entries.len() <= TRACKED_ADDRESSES_MAX);
        wait
    }

    /// A correct token: the address starts afresh.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            self.entries.lock().remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_an_address_out_for_longer_and_longer() {
        let backoff = AuthBackoff::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(backoff.failed(Some(a), now), Duration::ZERO);
            assert!(backoff.check(Some(a), now).is_ok());
        }
        assert_eq!(
            backoff.failed(Some(a), now),
            Duration::from_millis(LOCKOUT_FIRST_MS)
        );
        assert!(backoff.check(Some(a), now).is_err());
        assert!(
            backoff.check(Some(b), now).is_ok(),
            "another address is untouched"
        );
        let later = now + Duration::from_millis(LOCKOUT_FIRST_MS);
        assert!(backoff.check(Some(a), later).is_ok());
        assert_eq!(
            backoff.failed(Some(a), later),
            Duration::from_millis(2 * LOCKOUT_FIRST_MS)
        );
        assert_eq!(lockout(100), Duration::from_millis(LOCKOUT_MAX_MS));
        backoff.succeeded(Some(a));
        assert!(backoff.check(Some(a), later).is_ok());
    }
}
