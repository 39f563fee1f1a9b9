//! Coupons and order terms inside `ShopState`.
//!
//! Invariants (refused by `apply`, re-derived by `check_coupons`): an order uses a coupon
//! only when the coupon exists, is not withdrawn, fits the order's product, had not expired
//! when the order was made, and has a use left; the discount is exactly what the coupon
//! computes for the order's gross amount; a coupon's `used` equals the number of orders that
//! carry its code and never exceeds `uses_max`, however many orders raced for the last use
//! (they are serialised by the state's write lock, and the loser is refused).

use std::collections::{BTreeMap, HashMap};

use bincode::{Decode, Encode};

use super::{ShopState, Touched, Violation};
use crate::coupon::{Coupon, CouponRefusal, CouponUse, COUPONS_COUNT_MAX};
use crate::events::{NewOrder, PlacedOrder};

/// A coupon and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CouponState {
    pub coupon: Coupon,
    /// Orders created with it so far.
    pub used: u32,
    pub disabled_at_ms: Option<u64>,
}

/// What an order carries beyond `NewOrder`.
#[derive(Clone, Debug, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct OrderTerms {
    pub coupon: Option<CouponUse>,
    pub lookup_password_hash: Option<String>,
}

/// How a contact is compared for lookups: trimmed, case folded (e-mail addresses are
/// typed in any case).
pub fn contact_key(contact: &str) -> String {
    contact.trim().to_lowercase()
}

#[derive(Default, Encode, Decode)]
pub(super) struct Terms {
    coupons: BTreeMap<String, CouponState>,
    /// Order index -> its terms (orders placed with a coupon or a lookup password).
    by_order: HashMap<u32, OrderTerms>,
    /// `contact_key` -> indexes of the orders that have a lookup password, oldest first.
    by_contact: HashMap<String, Vec<u32>>,
}

impl ShopState {
    pub fn coupon(&self, code: &str) -> Option<&CouponState> {
        self.terms.coupons.get(code)
    }

    pub fn coupons(&self) -> impl Iterator<Item = &CouponState> {
        self.terms.coupons.values()
    }

    /// Indexes of the orders that have terms (hot or archived), in no order.
    pub fn orders_with_terms(&self) -> impl Iterator<Item = u32> + '_ {
        self.terms.by_order.keys().copied()
    }

    pub fn order_terms(&self, order_index: u32) -> Option<&OrderTerms> {
        self.terms.by_order.get(&order_index)
    }

    /// An order's terms, by id.
    pub fn terms_of(&self, order_id: &crate::OrderId) -> Option<&OrderTerms> {
        let index = self.index_of(order_id)?;
        self.terms.by_order.get(&index)
    }

    /// Indexes of the orders with a lookup password whose contact is `contact` (compared
    /// by `contact_key`), oldest first.
    pub fn lookup_candidates(&self, contact: &str) -> &[u32] {
        self.terms
            .by_contact
            .get(&contact_key(contact))
            .map_or(&[], Vec::as_slice)
    }

    /// Why `code` may not be used by an order of `sku` made at `now_ms` (`None`: it may).
    pub fn coupon_refusal(
        &self,
        code: &str,
        sku: &crate::Sku,
        now_ms: u64,
    ) -> Option<CouponRefusal> {
        let Some(state) = self.coupon(code) else {
            return Some(CouponRefusal::Unknown);
        };
        if state.disabled_at_ms.is_some() {
            return Some(CouponRefusal::Disabled);
        }
        state.coupon.refusal(sku, now_ms, state.used)
    }

    pub(super) fn check_coupon_use(
        &self,
        order: &NewOrder,
        coupon: Option<&CouponUse>,
        gross_cents: u64,
    ) -> Result<(), Violation> {
        let id = &order.order_id;
        let Some(used) = coupon else {
            ensure!(
                order.amount_cents == gross_cents,
                "order {id} amount is not price x quantity"
            );
            return Ok(());
        };
        if let Some(refusal) = self.coupon_refusal(&used.code, &order.sku, order.created_at_ms) {
            return Err(Violation(format!(
                "order {id} uses coupon {}: {}",
                used.code,
                refusal.code()
            )));
        }
        let coupon = &self.terms.coupons[&used.code].coupon;
        ensure!(
            used.discount_cents == coupon.discount_cents(gross_cents),
            "order {id} claims a discount coupon {} does not give",
            used.code
        );
        ensure!(
            order.amount_cents == gross_cents - used.discount_cents,
            "order {id} amount is not price x quantity less its discount"
        );
        Ok(())
    }

    /// Records a placed order's terms (its checks passed); returns the coupon it used.
    pub(super) fn add_terms(&mut self, index: u32, placed: &PlacedOrder) -> Option<String> {
        let terms = &mut self.terms;
        let code = placed.coupon.as_ref().map(|c| c.code.clone());
        if let Some(code) = &code {
            terms.coupons.get_mut(code).expect("checked").used += 1;
        }
        if placed.lookup_password_hash.is_some() {
            terms
                .by_contact
                .entry(contact_key(&placed.order.contact))
                .or_default()
                .push(index);
        }
        terms.by_order.insert(
            index,
            OrderTerms {
                coupon: placed.coupon.clone(),
                lookup_password_hash: placed.lookup_password_hash.clone(),
            },
        );
        code
    }

    pub(super) fn apply_coupon_created(&mut self, coupon: &Coupon) -> Result<Touched, Violation> {
        let code = &coupon.code;
        coupon
            .check_shape()
            .map_err(|e| Violation(format!("coupon {code}: {e}")))?;
        ensure!(
            !self.terms.coupons.contains_key(code),
            "coupon {code} created twice"
        );
        ensure!(
            self.terms.coupons.len() < COUPONS_COUNT_MAX,
            "more than {COUPONS_COUNT_MAX} coupons"
        );
        if let Some(sku) = &coupon.sku {
            ensure!(
                self.products.contains_key(sku),
                "coupon {code} for unknown {sku}"
            );
        }
        self.terms.coupons.insert(
            code.clone(),
            CouponState {
                coupon: coupon.clone(),
                used: 0,
                disabled_at_ms: None,
            },
        );
        Ok(Touched {
            coupon: Some(code.clone()),
            ..Touched::default()
        })
    }

    pub(super) fn apply_coupon_disabled(
        &mut self,
        code: &str,
        at_ms: u64,
    ) -> Result<Touched, Violation> {
        let state = self
            .terms
            .coupons
            .get_mut(code)
            .ok_or_else(|| Violation(format!("withdrawal of unknown coupon {code}")))?;
        ensure!(
            state.disabled_at_ms.is_none(),
            "coupon {code} withdrawn twice"
        );
        state.disabled_at_ms = Some(at_ms);
        Ok(Touched {
            coupon: Some(code.to_owned()),
            ..Touched::default()
        })
    }

    /// Every coupon's use count equals the orders carrying it, and stays within its limit.
    pub(super) fn check_coupons(&self, violations: &mut Vec<Violation>) {
        let mut counted: HashMap<&str, u32> = HashMap::new();
        for (index, terms) in &self.terms.by_order {
            if *index >= self.orders.made() {
                violations.push(Violation(format!("terms of unknown order index {index}")));
            }
            if let Some(used) = &terms.coupon {
                *counted.entry(used.code.as_str()).or_default() += 1;
            }
        }
        for (code, state) in &self.terms.coupons {
            let orders = counted.remove(code.as_str()).unwrap_or(0);
            if state.used != orders {
                violations.push(Violation(format!(
                    "coupon {code}: used {} but {orders} orders carry it",
                    state.used
                )));
            }
            if state.used > state.coupon.uses_max {
                violations.push(Violation(format!(
                    "coupon {code}: used {} times, its limit is {}",
                    state.used, state.coupon.uses_max
                )));
            }
        }
        for code in counted.keys() {
            violations.push(Violation(format!("orders carry unknown coupon {code}")));
        }
    }
}
