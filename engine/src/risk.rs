//! Risk rules for new orders, per buyer contact and per client IP: blacklists, a cap on
//! units held in unpaid reservations per SKU (so one buyer cannot lock a whole stock by
//! ordering and never paying), a purchase limit per window, and a velocity rule. Pure: time
//! is passed in; the caller records what happened.
//!
//! Bounded: per-key history is pruned to the rules' windows, and the number of tracked
//! keys is capped (`RISK_KEYS_MAX`); past the cap the least recently seen keys go first.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::ids::{OrderId, Sku};

/// Contacts and IPs tracked at once; more evicts the stalest.
pub const RISK_KEYS_MAX: usize = 200_000;
/// Velocity window: orders per IP within this many milliseconds.
pub const VELOCITY_WINDOW_MS: u64 = 60_000;

#[derive(Clone, Debug)]
pub struct RiskLimits {
    /// Units one contact may hold in unpaid reservations of one SKU (0 = no limit).
    pub reserved_units_per_contact_max: u32,
    /// Units one IP may hold in unpaid reservations of one SKU (0 = no limit).
    pub reserved_units_per_ip_max: u32,
    /// Orders one contact may create per `purchase_window_ms` (0 = no limit).
    pub orders_per_contact_per_window_max: u32,
    pub purchase_window_ms: u64,
    /// Orders one IP may create per minute (0 = no limit).
    pub orders_per_ip_per_minute_max: u32,
    pub blocked_contacts: BTreeSet<String>,
    pub blocked_ips: BTreeSet<String>,
}

impl Default for RiskLimits {
    fn default() -> Self {
        Self {
            reserved_units_per_contact_max: 10,
            reserved_units_per_ip_max: 30,
            orders_per_contact_per_window_max: 20,
            purchase_window_ms: 60 * 60 * 1000,
            orders_per_ip_per_minute_max: 60,
            blocked_contacts: BTreeSet::new(),
            blocked_ips: BTreeSet::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RiskRule {
    BlockedContact,
    BlockedIp,
    TooManyReserved,
    PurchaseLimit,
    Velocity,
}

impl RiskRule {
    pub fn code(self) -> &'static str {
        match self {
            RiskRule::BlockedContact => "blocked_contact",
            RiskRule::BlockedIp => "blocked_ip",
            RiskRule::TooManyReserved => "too_many_reserved",
            RiskRule::PurchaseLimit => "purchase_limit",
            RiskRule::Velocity => "velocity_limit",
        }
    }
}

/// Who is ordering: the contact as given (compared case-insensitively) and the client IP.
#[derive(Clone, Debug)]
pub struct Buyer {
    pub contact: String,
    pub ip: Option<String>,
}

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
enum Key {
    Contact(String),
    Ip(String),
}

#[derive(Default, Debug)]
struct Track {
    /// Creation times of recent orders, oldest first.
    orders_ms: VecDeque<u64>,
    /// Units held in unpaid reservations, per SKU.
    reserved: HashMap<Sku, u32>,
    last_seen_ms: u64,
}

#[derive(Default, Debug)]
pub struct RiskBook {
    limits: RiskLimits,
    tracks: HashMap<Key, Track>,
    /// Live reservations: what to release when the order is paid or lapses.
    live: HashMap<OrderId, (Vec<Key>, Sku, u32)>,
}

impl RiskBook {
    pub fn new(limits: RiskLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether any counting limit is on. With all four at 0 (a shop behind its own fraud
    /// checks, or a load test) nothing needs counting: `check` only looks at the block
    /// lists, and `reserved` keeps no track (it was 0.6% of a purchase's CPU for nothing).
    fn counts(&self) -> bool {
        let limits = &self.limits;
        limits.reserved_units_per_contact_max > 0
            || limits.reserved_units_per_ip_max > 0
            || limits.orders_per_contact_per_window_max > 0
            || limits.orders_per_ip_per_minute_max > 0
    }

    fn keys(buyer: &Buyer) -> Vec<Key> {
        let mut keys = vec![Key::Contact(buyer.contact.trim().to_lowercase())];
        keys.extend(buyer.ip.clone().map(Key::Ip));
        keys
    }

    /// Whether this buyer may reserve `quantity` of `sku` now.
    pub fn check(
        &mut self,
        buyer: &Buyer,
        sku: &Sku,
        quantity: u32,
        now_ms: u64,
    ) -> Result<(), RiskRule> {
        let contact = buyer.contact.trim().to_lowercase();
        if self
            .limits
            .blocked_contacts
            .iter()
            .any(|c| c.to_lowercase() == contact)
        {
            return Err(RiskRule::BlockedContact);
        }
        if buyer
            .ip
            .as_ref()
            .is_some_and(|ip| self.limits.blocked_ips.contains(ip))
        {
            return Err(RiskRule::BlockedIp);
        }
        if !self.counts() {
            return Ok(());
        }
        for key in Self::keys(buyer) {
            self.check_key(&key, sku, quantity, now_ms)?;
        }
        Ok(())
    }

    fn check_key(
        &mut self,
        key: &Key,
        sku: &Sku,
        quantity: u32,
        now_ms: u64,
    ) -> Result<(), RiskRule> {
        let (held_max, window_ms, orders_max, rule) = match key {
            Key::Contact(_) => (
                self.limits.reserved_units_per_contact_max,
                self.limits.purchase_window_ms,
                self.limits.orders_per_contact_per_window_max,
                RiskRule::PurchaseLimit,
            ),
            Key::Ip(_) => (
                self.limits.reserved_units_per_ip_max,
                VELOCITY_WINDOW_MS,
                self.limits.orders_per_ip_per_minute_max,
                RiskRule::Velocity,
            ),
        };
        let Some(track) = self.tracks.get_mut(key) else {
            return Ok(());
        };
        while track
            .orders_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= window_ms)
        {
            track.orders_ms.pop_front();
        }
        let held = track.reserved.get(sku).copied().unwrap_or(0);
        if held_max > 0 && held + quantity > held_max {
            return Err(RiskRule::TooManyReserved);
        }
        if orders_max > 0 && track.orders_ms.len() as u32 >= orders_max {
            return Err(rule);
        }
        Ok(())
    }

    /// Records a created order and the units it holds until `released`.
    pub fn reserved(
        &mut self,
        order_id: &OrderId,
        buyer: &Buyer,
        sku: &Sku,
        quantity: u32,
        now_ms: u64,
    ) {
        if !self.counts() {
            return;
        }
        let keys = Self::keys(buyer);
        for key in &keys {
            let track = self.tracks.entry(key.clone()).or_default();
            track.orders_ms.push_back(now_ms);
            *track.reserved.entry(sku.clone()).or_default() += quantity;
            track.last_seen_ms = now_ms;
        }
        self.live
            .insert(order_id.clone(), (keys, sku.clone(), quantity));
        self.evict_if_full();
    }

    /// The order was paid or lapsed: its units no longer count as held.
    pub fn released(&mut self, order_id: &OrderId) {
        let Some((keys, sku, quantity)) = self.live.remove(order_id) else {
            return;
        };
        for key in keys {
            if let Some(track) = self.tracks.get_mut(&key) {
                if let Some(held) = track.reserved.get_mut(&sku) {
                    *held = held.saturating_sub(quantity);
                    if *held == 0 {
                        track.reserved.remove(&sku);
                    }
                }
            }
        }
    }

    fn evict_if_full(&mut self) {
        if self.tracks.len() <= RISK_KEYS_MAX {
            return;
        }
        let mut seen: Vec<u64> = self.tracks.values().map(|t| t.last_seen_ms).collect();
        let cut = seen.len() - RISK_KEYS_MAX * 9 / 10;
        seen.select_nth_unstable(cut);
        let threshold = seen[cut];
        self.tracks
            .retain(|_, t| t.last_seen_ms > threshold || !t.reserved.is_empty());
    }

    pub fn tracked_count(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buyer(contact: &str, ip: &str) -> Buyer {
        Buyer {
            contact: contact.into(),
            ip: Some(ip.into()),
        }
    }

    fn sku() -> Sku {
        Sku::parse("s").unwrap()
    }

    fn order(n: u64) -> OrderId {
        OrderId::generate(1, n)
    }

    /// With every counting limit at 0 the book keeps nothing, and still refuses the
    /// blocked.
    #[test]
    fn a_book_without_limits_tracks_nothing_and_still_blocks() {
        let mut book = RiskBook::new(RiskLimits {
            reserved_units_per_contact_max: 0,
            reserved_units_per_ip_max: 0,
            orders_per_contact_per_window_max: 0,
            orders_per_ip_per_minute_max: 0,
            blocked_contacts: BTreeSet::from(["bad@x.com".to_owned()]),
            ..RiskLimits::default()
        });
        for n in 0..1_000 {
            let b = buyer("a@x.com", "1.1.1.1");
            assert_eq!(book.check(&b, &sku(), 5, n), Ok(()));
            book.reserved(&order(n), &b, &sku(), 5, n);
        }
        assert_eq!(book.tracked_count(), 0);
        assert_eq!(
            book.check(&buyer("BAD@x.com", "2.2.2.2"), &sku(), 1, 0),
            Err(RiskRule::BlockedContact)
        );
    }

    #[test]
    fn reservations_are_capped_per_contact_and_released() {
        let mut book = RiskBook::new(RiskLimits {
            reserved_units_per_contact_max: 3,
            ..RiskLimits::default()
        });
        let b = buyer("A@x.com", "1.1.1.1");
        assert_eq!(book.check(&b, &sku(), 2, 0), Ok(()));
        book.reserved(&order(1), &b, &sku(), 2, 0);
        let same_contact_other_case = buyer("a@X.com", "2.2.2.2");
        assert_eq!(
            book.check(&same_contact_other_case, &sku(), 2, 1),
            Err(RiskRule::TooManyReserved)
        );
        assert_eq!(book.check(&same_contact_other_case, &sku(), 1, 1), Ok(()));
        book.released(&order(1));
        assert_eq!(book.check(&same_contact_other_case, &sku(), 3, 2), Ok(()));
    }

    #[test]
    fn velocity_and_purchase_limits_clear_when_their_windows_pass() {
        let limits = RiskLimits {
            orders_per_ip_per_minute_max: 2,
            orders_per_contact_per_window_max: 3,
            purchase_window_ms: 120_000,
            reserved_units_per_contact_max: 0,
            reserved_units_per_ip_max: 0,
            ..RiskLimits::default()
        };
        let mut book = RiskBook::new(limits);
        for n in 0..2 {
            assert_eq!(book.check(&buyer("a", "ip"), &sku(), 1, n), Ok(()));
            book.reserved(&order(n), &buyer("a", "ip"), &sku(), 1, n);
        }
        assert_eq!(
            book.check(&buyer("b", "ip"), &sku(), 1, 10),
            Err(RiskRule::Velocity)
        );
        assert_eq!(book.check(&buyer("b", "ip"), &sku(), 1, 60_001), Ok(()));
        book.reserved(&order(3), &buyer("a", "ip2"), &sku(), 1, 60_002);
        assert_eq!(
            book.check(&buyer("a", "ip3"), &sku(), 1, 60_003),
            Err(RiskRule::PurchaseLimit)
        );
        assert_eq!(book.check(&buyer("a", "ip3"), &sku(), 1, 120_001), Ok(()));
    }

    #[test]
    fn blacklists_refuse_first() {
        let mut limits = RiskLimits::default();
        limits.blocked_contacts.insert("Bad@x.com".into());
        limits.blocked_ips.insert("6.6.6.6".into());
        let mut book = RiskBook::new(limits);
        assert_eq!(
            book.check(&buyer("bad@x.com", "1.1.1.1"), &sku(), 1, 0),
            Err(RiskRule::BlockedContact)
        );
        assert_eq!(
            book.check(&buyer("ok@x.com", "6.6.6.6"), &sku(), 1, 0),
            Err(RiskRule::BlockedIp)
        );
    }
}
