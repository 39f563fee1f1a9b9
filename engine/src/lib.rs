//! Panshi's engine: the pure, deterministic domain of an auto-delivery card shop.
//!
//! It holds the order state machine (one transition table), the card-pool shard logic, money
//! parsing, card-import parsing, payment-signature rules, the events committed to the log,
//! and `ShopState`, which folds those events and checks every invariant.
//!
//! Invariants: no key is ever held by two orders; per SKU, imported = available + reserved +
//! sold; a paid order ends delivered or in manual review; money is integer minor units.
//!
//! Design decision: the engine does no I/O, reads no clock and draws no randomness. Time, ids
//! and random values come in as arguments and effects go out as values, so the same inputs
//! always give the same outputs: the simulator replays a seed exactly, and `panshi audit`
//! re-derives the shop from the log with the very code that ran it.

pub mod alipay;
pub mod breaker;
pub mod coupon;
pub mod error;
pub mod events;
pub mod ids;
pub mod import;
pub mod keys;
pub mod ledger;
pub mod listing;
pub mod mail;
pub mod money;
pub mod order;
pub mod overload;
pub mod payment;
pub mod pool;
pub mod risk;
pub mod sharded;
pub mod state;
pub mod time;
pub mod waiting_room;
pub mod wechatpay;

pub use error::Rejection;
pub use events::{
    BalanceChange, Event, Fulfilment, Idempotency, NewOrder, NewReseller, OperatorAction, Payment,
    PlacedOrder, Product, ResellerChange, ResellerOrder, ReviewReason, SealedCard,
};
pub use ids::{CardId, OrderId, ResellerId, Sku};
pub use money::Currency;
pub use order::{Order, OrderStatus};
pub use state::{CardKey, OrderRecord, ShopState, Stock, Violation};
