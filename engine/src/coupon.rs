//! Coupons: percentage or fixed-amount discounts, shop-wide or for one product, with a use
//! limit and an expiry. Pure: the discount of an order is a function of the coupon and the
//! order's gross amount, so `ShopState` re-computes and checks what an order claims.
//!
//! Invariants: a coupon is used at most `uses_max` times (a use counts when its order is
//! created, and is never given back, so the count is exactly the number of orders that carry
//! the code); an order never costs less than 1 minor unit (gateways refuse 0).

use bincode::{Decode, Encode};

use crate::ids::Sku;
use crate::Rejection;

/// Longest coupon code.
pub const COUPON_CODE_LEN_MAX: usize = 32;
/// A percentage discount in basis points: 1 (0.01 %) to 10,000 (100 %).
pub const PERCENT_BP_MAX: u32 = 10_000;
/// Most uses a coupon may allow.
pub const COUPON_USES_MAX: u32 = 1_000_000;
/// Most coupons a shop holds (each is a line in memory and a row in sled).
pub const COUPONS_COUNT_MAX: usize = 10_000;

/// How much a coupon takes off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Discount {
    /// A share of the order's amount, in basis points, rounded down.
    Percent { basis_points: u32 },
    /// A fixed amount off the whole order, in minor units.
    Fixed { amount_cents: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Coupon {
    /// Upper case, `[A-Z0-9_-]`; buyers may type it in any case.
    pub code: String,
    pub discount: Discount,
    /// Only orders of this product, or every product when `None`.
    pub sku: Option<Sku>,
    pub uses_max: u32,
    /// Orders created at or after this instant may not use it.
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
}

/// The coupon an order used, and what it took off the order's gross amount.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CouponUse {
    pub code: String,
    pub discount_cents: u64,
}

/// A code as stored: trimmed, upper case, `[A-Z0-9_-]{1,32}`.
pub fn normalize_code(text: &str) -> Result<String, Rejection> {
    let code = text.trim().to_ascii_uppercase();
    let valid = !code.is_empty()
        && code.len() <= COUPON_CODE_LEN_MAX
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(code)
    } else {
        Err(Rejection::InvalidInput(
            "a coupon code is 1 to 32 letters, digits, '-' or '_'",
        ))
    }
}

impl Coupon {
    /// The coupon's own shape: a valid code, a discount within bounds, a positive limit.
    pub fn check_shape(&self) -> Result<(), Rejection> {
        if normalize_code(&self.code)? != self.code {
            return Err(Rejection::InvalidInput(
                "a coupon code is stored upper case",
            ));
        }
        match self.discount {
            Discount::Percent { basis_points } if (1..=PERCENT_BP_MAX).contains(&basis_points) => {}
            Discount::Fixed { amount_cents }
                if (1..=crate::money::AMOUNT_CENTS_MAX).contains(&amount_cents) => {}
            _ => return Err(Rejection::InvalidInput("the discount is out of range")),
        }
        if self.uses_max == 0 || self.uses_max > COUPON_USES_MAX {
            return Err(Rejection::InvalidInput("uses_max must be 1 to 1000000"));
        }
        if self.expires_at_ms <= self.created_at_ms {
            return Err(Rejection::InvalidInput(
                "the coupon expires before it starts",
            ));
        }
        Ok(())
    }

    /// What the coupon takes off an order of `gross_cents`: never all of it (an order
    /// costs at least 1 minor unit).
    pub fn discount_cents(&self, gross_cents: u64) -> u64 {
        let raw = match self.discount {
            Discount::Percent { basis_points } => {
                // u128: gross (<= 1e9 x 100) times 10,000 does not fit u64 comfortably.
                (u128::from(gross_cents) * u128::from(basis_points) / u128::from(PERCENT_BP_MAX))
                    as u64
            }
            Discount::Fixed { amount_cents } => amount_cents,
        };
        raw.min(gross_cents.saturating_sub(1))
    }

    /// Why an order of `sku` made at `now_ms`, with `used` uses so far, may not use it.
    pub fn refusal(&self, sku: &Sku, now_ms: u64, used: u32) -> Option<CouponRefusal> {
        if self.sku.as_ref().is_some_and(|only| only != sku) {
            Some(CouponRefusal::OtherProduct)
        } else if now_ms >= self.expires_at_ms {
            Some(CouponRefusal::Expired)
        } else if used >= self.uses_max {
            Some(CouponRefusal::UsedUp)
        } else {
            None
        }
    }
}

/// Why a coupon does not apply to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CouponRefusal {
    Unknown,
    Disabled,
    OtherProduct,
    Expired,
    UsedUp,
}

impl CouponRefusal {
    pub fn code(self) -> &'static str {
        match self {
            CouponRefusal::Unknown => "coupon_unknown",
            CouponRefusal::Disabled => "coupon_disabled",
            CouponRefusal::OtherProduct => "coupon_other_product",
            CouponRefusal::Expired => "coupon_expired",
            CouponRefusal::UsedUp => "coupon_used_up",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(discount: Discount) -> Coupon {
        Coupon {
            code: "SPRING".into(),
            discount,
            sku: None,
            uses_max: 2,
            expires_at_ms: 2_000,
            created_at_ms: 1_000,
        }
    }

    #[test]
    fn discounts_round_down_and_never_take_the_whole_amount() {
        let ten_percent = coupon(Discount::Percent {
            basis_points: 1_000,
        });
        assert_eq!(ten_percent.discount_cents(4_999), 499);
        let all = coupon(Discount::Percent {
            basis_points: 10_000,
        });
        assert_eq!(all.discount_cents(4_900), 4_899);
        let fixed = coupon(Discount::Fixed { amount_cents: 500 });
        assert_eq!(fixed.discount_cents(4_900), 500);
        assert_eq!(fixed.discount_cents(300), 299);
        assert_eq!(fixed.discount_cents(1), 0);
    }

    #[test]
    fn refusals_name_their_reason() {
        let sku = Sku::parse("game-1").unwrap();
        let mut c = coupon(Discount::Fixed { amount_cents: 1 });
        assert_eq!(c.refusal(&sku, 1_500, 1), None);
        assert_eq!(c.refusal(&sku, 1_500, 2), Some(CouponRefusal::UsedUp));
        assert_eq!(c.refusal(&sku, 2_000, 0), Some(CouponRefusal::Expired));
        c.sku = Some(Sku::parse("other").unwrap());
        assert_eq!(c.refusal(&sku, 1_500, 0), Some(CouponRefusal::OtherProduct));
    }

    #[test]
    fn codes_are_normalised() {
        assert_eq!(normalize_code(" spring-25 ").unwrap(), "SPRING-25");
        assert!(normalize_code("").is_err());
        assert!(normalize_code("no spaces").is_err());
        assert!(normalize_code(&"A".repeat(33)).is_err());
    }
}
