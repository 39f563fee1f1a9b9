//! Operators' changes in the simulation: key deletions racing reservations, coupons used
//! by buyers up to and past their limits, price edits, all under crashes.
//!
//! Deletion follows the actors' order (`actors/src/products.rs`): keys leave the pool shards
//! first, only those the shards gave up are deleted, and a key taken by a reservation still
//! under way is kept. After every step: every acknowledged deletion is in the log, no shard
//! holds a deleted key, and each coupon's use count is at least its acknowledged orders and
//! never above its limit. The engine must refuse an order holding a deleted key and an order
//! past a coupon's limit: if it accepts one, that is a violation.

use std::collections::BTreeSet;

use engine::coupon::{Coupon, CouponUse, Discount};
use engine::listing::ProductChange;
use engine::{CardId, Event, NewOrder, PlacedOrder, Sku};

use super::{give_back, Crashed, Protocol, World, PRODUCTS};

/// The simulated coupon's code.
pub const COUPON_CODE: &str = "SIM-10";
/// A stand-in for a lookup password's hash (the engine carries it opaque).
const LOOKUP_HASH: &str = "pbkdf2-sha256$1$00$00";

/// What the simulation was told was durable about operators' changes.
#[derive(Default)]
pub(super) struct Model {
    /// Keys whose deletion was acknowledged.
    pub(super) deleted: BTreeSet<CardId>,
    /// Orders acknowledged with the coupon.
    pub(super) coupon_orders: u64,
    pub(super) coupon_uses_max: u32,
}

impl World {
    pub(super) fn setup_listings(&mut self) {
        let uses_max = 3 + self.rng.below(10) as u32;
        let coupon = Coupon {
            code: COUPON_CODE.into(),
            discount: Discount::Percent {
                basis_points: 1_000,
            },
            sku: None,
            uses_max,
            expires_at_ms: self.now_ms + 1_000 * 24 * 3600 * 1000,
            created_at_ms: self.now_ms,
        };
        while self.commit(&Event::CouponCreated(coupon.clone())).is_err() {
            if self.store().state().coupon(COUPON_CODE).is_some() {
                break;
            }
        }
        self.listings.coupon_uses_max = uses_max;
    }

    fn random_sku(&mut self) -> Sku {
        Sku::parse(PRODUCTS[self.rng.below(2) as usize].0).expect("simulated sku")
    }

    /// An operator's change: mostly a key deletion, sometimes a price edit.
    pub(super) fn listing_step(&mut self) {
        if self.rng.percent(20) {
            self.edit_price();
        } else {
            self.delete_keys();
        }
    }

    fn edit_price(&mut self) {
        let sku = self.random_sku();
        let price = 50 + self.rng.below(300);
        let event = Event::ProductEdited {
            sku,
            changes: vec![ProductChange::PriceCents(price)],
            at_ms: self.now_ms,
        };
        let _ = self.commit(&event);
    }

    /// Deletes a few available keys while, sometimes, a reservation of some of them is
    /// under way: those stay, the order commits with them.
    fn delete_keys(&mut self) {
        let sku = self.random_sku();
        let in_flight = if self.rng.percent(40) {
            self.reserve(&sku, 1)
        } else {
            None
        };
        let available = self.store().state().available_cards(&sku);
        let count = available.len() as u64;
        let mut candidates: Vec<CardId> = (0..count.min(4))
            .map(|_| available[self.rng.below(count) as usize])
            .collect();
        candidates.extend(in_flight.iter().flatten().copied());
        candidates.sort_unstable();
        candidates.dedup();
        let shards = self.pools.get_mut(&sku).expect("pool");
        let mut removed: Vec<CardId> = shards
            .iter_mut()
            .flat_map(|shard| shard.remove(&candidates))
            .collect();
        removed.sort_unstable();
        if let Some(reserved) = &in_flight {
            if reserved.iter().any(|c| removed.contains(c)) {
                self.violation(format!(
                    "a key reserved for an order was removed from its shard: {reserved:?}"
                ));
            }
        }
        if !removed.is_empty() {
            let event = Event::CardsDeleted {
                sku: sku.clone(),
                cards: removed.clone(),
                at_ms: self.now_ms,
            };
            if self.commit(&event).is_err() {
                // The process died: the pools were rebuilt from the log, and the reservation
                // under way died with it (its keys are in the pools again).
                return;
            }
            self.listings.deleted.extend(removed);
        }
        if let Some(cards) = in_flight {
            self.commit_order(&sku, cards, false, Protocol::Epay);
        }
        self.try_sell_deleted(&sku);
    }

    /// The engine must refuse an order holding a deleted key.
    fn try_sell_deleted(&mut self, sku: &Sku) {
        let deleted = {
            let state = self.store().state();
            self.listings
                .deleted
                .iter()
                .copied()
                .find(|card| state.sku_of(*card).as_ref() == Some(sku))
        };
        let Some(card) = deleted else { return };
        let order = self.new_order(sku, 1, vec![card], Protocol::Epay);
        match self
            .store()
            .commit(&Event::OrderCreated(std::sync::Arc::new(order)))
        {
            Err(storage::Error::Violation(_)) => {}
            Ok(durable) => {
                let _ = durable.wait_blocking();
                self.violation(format!("the engine sold deleted key {card:?}"));
            }
            // A failed log: the next step's crash handling restarts the store.
            Err(_) => self.crash(None),
        }
    }

    /// A buyer's order: plain, or with the coupon (and a lookup password) while it has uses.
    /// Returns whether it was acknowledged.
    pub(super) fn commit_order(
        &mut self,
        sku: &Sku,
        cards: Vec<CardId>,
        with_coupon: bool,
        protocol: Protocol,
    ) -> bool {
        let created = self.new_order(sku, cards.len() as u32, cards.clone(), protocol);
        let event = match with_coupon.then(|| self.coupon_use(&created)).flatten() {
            Some(coupon) => {
                let mut order = created.clone();
                order.amount_cents -= coupon.discount_cents;
                Event::OrderPlaced(Box::new(PlacedOrder {
                    order: order.into(),
                    coupon: Some(coupon),
                    lookup_password_hash: Some(LOOKUP_HASH.into()),
                }))
            }
            None => Event::OrderCreated(std::sync::Arc::new(created.clone())),
        };
        let with_coupon = matches!(event, Event::OrderPlaced(_));
        let placed = match &event {
            Event::OrderPlaced(placed) => NewOrder::clone(&placed.order),
            _ => created,
        };
        match self.commit(&event) {
            Ok(()) => {
                if with_coupon {
                    self.listings.coupon_orders += 1;
                }
                self.order_acknowledged(placed);
                true
            }
            Err(Crashed) => false,
        }
    }

    /// The coupon's discount for an order, when it has a use left.
    fn coupon_use(&self, order: &NewOrder) -> Option<CouponUse> {
        let state = self.store().state();
        if state
            .coupon_refusal(COUPON_CODE, &order.sku, order.created_at_ms)
            .is_some()
        {
            return None;
        }
        let coupon = &state.coupon(COUPON_CODE)?.coupon;
        Some(CouponUse {
            code: COUPON_CODE.into(),
            discount_cents: coupon.discount_cents(order.amount_cents),
        })
    }

    /// A buyer tries the coupon once its uses are gone: the engine must refuse the order,
    /// and its keys go back to the pool.
    pub(super) fn try_coupon_past_limit(&mut self, sku: &Sku) {
        let used_up = {
            let state = self.store().state();
            state
                .coupon(COUPON_CODE)
                .is_some_and(|c| c.used >= c.coupon.uses_max)
        };
        if !used_up {
            return;
        }
        let Some(cards) = self.reserve(sku, 1) else {
            return;
        };
        let mut order = self.new_order(sku, 1, cards.clone(), Protocol::Epay);
        let discount_cents = order.amount_cents / 10;
        order.amount_cents -= discount_cents;
        let event = Event::OrderPlaced(Box::new(PlacedOrder {
            order: order.into(),
            coupon: Some(CouponUse {
                code: COUPON_CODE.into(),
                discount_cents,
            }),
            lookup_password_hash: None,
        }));
        match self.store().commit(&event) {
            Err(storage::Error::Violation(_)) => {
                give_back(self.pools.get_mut(sku).expect("pool"), &cards);
            }
            Ok(durable) => {
                let _ = durable.wait_blocking();
                self.violation("the engine let a coupon past its limit".into());
            }
            Err(_) => self.crash(None),
        }
    }

    /// A deletion or a coupon order in flight when the process dies: after the restart it
    /// is in the log whole or not at all (the pools are rebuilt from the log). Returns
    /// whether an event was queued (so the crash may tear it).
    pub(super) fn listing_in_flight(&mut self) -> bool {
        let sku = self.random_sku();
        if self.rng.percent(50) {
            let Some(cards) = self.reserve(&sku, 1) else {
                return false;
            };
            let mut created = self.new_order(&sku, 1, cards, Protocol::Epay);
            let Some(coupon) = self.coupon_use(&created) else {
                return false;
            };
            created.amount_cents -= coupon.discount_cents;
            let event = Event::OrderPlaced(Box::new(PlacedOrder {
                order: created.into(),
                coupon: Some(coupon),
                lookup_password_hash: None,
            }));
            return self.store().commit(&event).is_ok();
        }
        let available = self.store().state().available_cards(&sku);
        let Some(card) = available.first().copied() else {
            return false;
        };
        let shards = self.pools.get_mut(&sku).expect("pool");
        for shard in shards.iter_mut() {
            shard.remove(&[card]);
        }
        let event = Event::CardsDeleted {
            sku,
            cards: vec![card],
            at_ms: self.now_ms,
        };
        self.store().commit(&event).is_ok()
    }

    /// After each step: acknowledged deletions hold, no shard offers a deleted key, the
    /// coupon counted every acknowledged use and stayed within its limit.
    pub(super) fn check_listings(&mut self, step: u64) {
        let mut problems = Vec::new();
        {
            let state = self.store().state();
            for card in &self.listings.deleted {
                if !state.is_deleted(*card) {
                    problems.push(format!(
                        "step {step}: acknowledged deletion of {card:?} lost"
                    ));
                }
            }
            for (sku, shards) in &self.pools {
                for card in shards.iter().flat_map(|shard| shard.cards()) {
                    if state.is_deleted(*card) {
                        problems.push(format!(
                            "step {step}: a {sku} shard offers deleted {card:?}"
                        ));
                    }
                }
            }
            if let Some(coupon) = state.coupon(COUPON_CODE) {
                if u64::from(coupon.used) < self.listings.coupon_orders {
                    problems.push(format!(
                        "step {step}: coupon used {} times, {} uses acknowledged",
                        coupon.used, self.listings.coupon_orders
                    ));
                }
                if coupon.used > self.listings.coupon_uses_max {
                    problems.push(format!("step {step}: coupon used past its limit"));
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }
}
