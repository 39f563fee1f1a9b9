//! `shop.coupons()`: operators create, list and withdraw coupons; `create_order` prices an
//! order with one (`price_with_coupon`).
//!
//! Invariant: the use limit is enforced where orders are serialised, by `ShopState` when
//! the order commits (a use counts at creation and is never given back); the check here only
//! spares a doomed order its reservation, and an order that lost the race for the last use
//! is refused with the coupon's reason and its keys go back.

use engine::coupon::{normalize_code, Coupon, CouponUse, Discount};
use engine::state::CouponState;
use engine::{Event, Rejection, Sku};

use crate::{Shop, ShopError};

/// A coupon as an operator asks for it; the code is normalised here.
#[derive(Clone, Debug)]
pub struct NewCoupon {
    pub code: String,
    pub discount: Discount,
    pub sku: Option<Sku>,
    pub uses_max: u32,
    pub expires_at_ms: u64,
}

/// The operators' handle on coupons (`shop.coupons()`).
pub struct Coupons<'a> {
    shop: &'a Shop,
}

impl Shop {
    pub fn coupons(&self) -> Coupons<'_> {
        Coupons { shop: self }
    }
}

impl Coupons<'_> {
    pub async fn create(&self, new: NewCoupon) -> Result<Coupon, ShopError> {
        let coupon = Coupon {
            code: normalize_code(&new.code)?,
            discount: new.discount,
            sku: new.sku,
            uses_max: new.uses_max,
            expires_at_ms: new.expires_at_ms,
            created_at_ms: self.shop.now_ms(),
        };
        coupon.check_shape()?;
        {
            let state = self.shop.store().state();
            if state.coupon(&coupon.code).is_some() {
                return Err(Rejection::CouponExists.into());
            }
            if let Some(sku) = &coupon.sku {
                state.product(sku).ok_or(Rejection::UnknownSku)?;
            }
        }
        match self
            .shop
            .commit(&Event::CouponCreated(coupon.clone()))
            .await
        {
            Ok(_) => Ok(coupon),
            // Another operator created the same code a moment before.
            Err(ShopError::Storage(storage::Error::Violation(_)))
                if self.shop.store().state().coupon(&coupon.code).is_some() =>
            {
                Err(Rejection::CouponExists.into())
            }
            Err(error) => Err(error),
        }
    }

    /// Withdraws a coupon: orders made from now on may not use it.
    pub async fn disable(&self, code: &str) -> Result<(), ShopError> {
        let code = normalize_code(code)?;
        match self.shop.store().state().coupon(&code) {
            None => return Err(Rejection::Coupon(engine::coupon::CouponRefusal::Unknown).into()),
            Some(state) if state.disabled_at_ms.is_some() => return Ok(()),
            Some(_) => {}
        }
        let event = Event::CouponDisabled {
            code,
            at_ms: self.shop.now_ms(),
        };
        self.shop.commit(&event).await.map(|_| ())
    }

    /// Every coupon, by code.
    pub fn list(&self) -> Vec<CouponState> {
        self.shop.store().state().coupons().cloned().collect()
    }
}

impl Shop {
    /// What a coupon takes off an order of `gross_cents` for `sku` made now, or why it
    /// does not apply.
    pub(crate) fn price_with_coupon(
        &self,
        code: &str,
        sku: &Sku,
        gross_cents: u64,
        now_ms: u64,
    ) -> Result<CouponUse, ShopError> {
        let code = normalize_code(code)?;
        let state = self.store().state();
        if let Some(refusal) = state.coupon_refusal(&code, sku, now_ms) {
            return Err(Rejection::Coupon(refusal).into());
        }
        let coupon = &state.coupon(&code).expect("no refusal: it exists").coupon;
        Ok(CouponUse {
            discount_cents: coupon.discount_cents(gross_cents),
            code,
        })
    }
}
