//! Business refusals. A `Rejection` is an answer to a client (sold out, bad input, a forged
//! notify), never an operational failure; those are the other crates' `Error`s.

use crate::order::{OrderEventKind, OrderStatus};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("order id must match ^[A-Za-z0-9._-]{{1,32}}$")]
    InvalidOrderId,
    #[error("sku must match ^[A-Za-z0-9._-]{{1,64}}$")]
    InvalidSku,
    #[error("currency must be a three-letter ISO 4217 code")]
    InvalidCurrency,
    #[error("{0}")]
    InvalidInput(&'static str),
    #[error("unknown payment channel or method")]
    UnknownChannel,
    #[error("the payment channel is not configured")]
    ChannelUnavailable,
    #[error("refused by the shop's risk rules: {}", .0.code())]
    Risk(crate::risk::RiskRule),
    #[error("unknown sku")]
    UnknownSku,
    #[error("a product with this sku exists")]
    SkuExists,
    #[error("not enough keys in stock")]
    SoldOut,
    #[error("unknown order")]
    UnknownOrder,
    #[error("card import refused: {0}")]
    BadImport(String),
    #[error("order is {from:?}; {event:?} does not apply")]
    InvalidTransition {
        from: OrderStatus,
        event: OrderEventKind,
    },
    #[error("payment amount {paid_cents} does not equal the order amount {order_cents}")]
    AmountMismatch { paid_cents: u64, order_cents: u64 },
    #[error("payment signature is invalid")]
    BadSignature,
    #[error("the signature's timestamp is outside the tolerance")]
    StaleSignature,
    #[error("merchant id does not match")]
    WrongMerchant,
    #[error("payment notification is malformed: {0}")]
    MalformedNotify(&'static str),
    #[error("the payment is not a success")]
    NotPaid,
    #[error("the order was already paid through another transaction")]
    PaidByOtherTransaction,
    #[error("the balance is too low")]
    InsufficientBalance,
    #[error("unknown reseller")]
    UnknownReseller,
    #[error("the reseller is revoked; its account no longer changes")]
    ResellerRevoked,
    #[error("the coupon does not apply: {}", .0.code())]
    Coupon(crate::coupon::CouponRefusal),
    #[error("a coupon with this code exists")]
    CouponExists,
}
