//! The order state machine: one transition table, and the order as its actor holds it.

use bincode::{Decode, Encode};

use crate::events::{Fulfilment, Payment, ReviewReason};
use crate::ids::{CardId, OrderId, Sku};
use crate::money::Currency;
use crate::Rejection;

/// Default time a buyer has to pay: 15 minutes.
pub const ORDER_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;
/// Most keys one order may buy.
pub const ORDER_QUANTITY_MAX: u32 = 100;
/// How long a buyer's `Idempotency-Key` answers with its first order: 24 hours, after
/// which the key may start a new one.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Longest buyer contact (an e-mail address or a phone number).
pub const CONTACT_LEN_MAX: usize = 254;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Encode, Decode)]
pub enum OrderStatus {
    AwaitingPayment,
    Paid,
    Delivered,
    Expired,
    ManualReview,
    Refunded,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        Self::AwaitingPayment,
        Self::Paid,
        Self::Delivered,
        Self::Expired,
        Self::ManualReview,
        Self::Refunded,
        Self::Cancelled,
    ];

    /// The contract's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingPayment => "awaiting_payment",
            Self::Paid => "paid",
            Self::Delivered => "delivered",
            Self::Expired => "expired",
            Self::ManualReview => "manual_review",
            Self::Refunded => "refunded",
            Self::Cancelled => "cancelled",
        }
    }

    /// Terminal statuses end the live lifecycle (the WebSocket closes after them).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Expired | Self::Refunded | Self::Cancelled
        )
    }

    /// Whether a confirmed payment has reached this order.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            Self::Paid | Self::Delivered | Self::ManualReview | Self::Refunded
        )
    }
}

/// What can happen to an order; the inputs of the transition table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OrderEventKind {
    PaymentConfirmed,
    Deliver,
    SendToReview,
    Expire,
    Cancel,
    Refund,
}

impl OrderEventKind {
    pub const ALL: [OrderEventKind; 6] = [
        Self::PaymentConfirmed,
        Self::Deliver,
        Self::SendToReview,
        Self::Expire,
        Self::Cancel,
        Self::Refund,
    ];
}

/// The one transition table. Every status change in Panshi goes through it.
pub fn transition(from: OrderStatus, event: OrderEventKind) -> Result<OrderStatus, Rejection> {
    use OrderEventKind as E;
    use OrderStatus as S;
    let to = match (from, event) {
        (S::AwaitingPayment, E::PaymentConfirmed) => S::Paid,
        (S::AwaitingPayment, E::Expire) => S::Expired,
        (S::AwaitingPayment, E::Cancel) => S::Cancelled,
        // A payment that lands after expiry or cancellation is never dropped.
        (S::Expired, E::PaymentConfirmed) => S::Paid,
        (S::Cancelled, E::PaymentConfirmed) => S::Paid,
        (S::Paid, E::Deliver) => S::Delivered,
        (S::Paid, E::SendToReview) => S::ManualReview,
        (S::ManualReview, E::Deliver) => S::Delivered,
        (S::ManualReview, E::Refund) => S::Refunded,
        _ => return Err(Rejection::InvalidTransition { from, event }),
    };
    Ok(to)
}

/// A live order as its actor holds it: everything needed to decide the next step.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Order {
    pub order_id: OrderId,
    pub sku: Sku,
    pub quantity: u32,
    pub amount_cents: u64,
    pub currency: Currency,
    pub status: OrderStatus,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Keys held for this order: reserved while awaiting payment, its own once delivered.
    pub cards: Vec<CardId>,
    /// The payment that was applied, once one was.
    pub payment: Option<Payment>,
}

/// What to do with a verified payment for this order.
#[derive(Debug, PartialEq, Eq)]
pub enum PaymentDecision {
    /// The same transaction was applied before: acknowledge, change nothing.
    AlreadyApplied,
    /// The order holds its keys: deliver them.
    DeliverReserved,
    /// The order's keys were released (late payment): reserve `quantity` again, then deliver,
    /// or send the order to manual review if the stock is gone.
    ReserveAgain { quantity: u32 },
    /// Paid, but not fulfilled on its own: an operator decides (the keys held go back).
    Review(ReviewReason),
}

impl Order {
    /// An order as its creation leaves it: awaiting payment, holding `cards`.
    pub fn created(order: &crate::NewOrder, cards: Vec<CardId>) -> Order {
        Order {
            order_id: order.order_id.clone(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            amount_cents: order.amount_cents,
            currency: order.currency,
            status: OrderStatus::AwaitingPayment,
            created_at_ms: order.created_at_ms,
            expires_at_ms: order.expires_at_ms,
            cards,
            payment: None,
        }
    }

    /// Decides what a verified payment does to this order. Pure: the caller performs it.
    /// `channel_allowed` says whether the payment's channel may pay this order (its own
    /// channel, its method's fallbacks, or an operator): any other is sent to review.
    ///
    /// The amount is checked first, before "already applied": a replay is acknowledged only
    /// when it says what was paid, so a signed notify with another amount never reads as
    /// success (every channel comes through here).
    pub fn decide_payment(
        &self,
        payment: &Payment,
        channel_allowed: bool,
    ) -> Result<PaymentDecision, Rejection> {
        if payment.amount_cents != self.amount_cents {
            return Err(Rejection::AmountMismatch {
                paid_cents: payment.amount_cents,
                order_cents: self.amount_cents,
            });
        }
        if let Some(applied) = &self.payment {
            return if applied.same_transaction(payment) {
                Ok(PaymentDecision::AlreadyApplied)
            } else {
                Err(Rejection::PaidByOtherTransaction)
            };
        }
        transition(self.status, OrderEventKind::PaymentConfirmed)?;
        if !channel_allowed {
            return Ok(PaymentDecision::Review(ReviewReason::ForeignChannel));
        }
        if self.status == OrderStatus::AwaitingPayment {
            debug_assert_eq!(self.cards.len(), self.quantity as usize);
            Ok(PaymentDecision::DeliverReserved)
        } else {
            debug_assert!(self.cards.is_empty(), "a lapsed order holds no keys");
            Ok(PaymentDecision::ReserveAgain {
                quantity: self.quantity,
            })
        }
    }

    /// Whether the expiry timer may expire the order now.
    pub fn decide_expiry(&self, now_ms: u64) -> Result<(), Rejection> {
        transition(self.status, OrderEventKind::Expire)?;
        if now_ms < self.expires_at_ms {
            return Err(Rejection::InvalidInput("order has not expired yet"));
        }
        Ok(())
    }

    /// Applies a committed payment; returns the keys to release to the pool (those an order
    /// held when its payment went to review). Panics if the table forbids it: a committed
    /// event that the table rejects means corrupted state, and a restart from the log is
    /// safer.
    pub fn apply_payment(&mut self, payment: &Payment, fulfilment: &Fulfilment) -> Vec<CardId> {
        let paid = transition(self.status, OrderEventKind::PaymentConfirmed)
            .expect("committed payment follows the table");
        self.payment = Some(payment.clone());
        match fulfilment {
            Fulfilment::Delivered { newly_reserved } => {
                self.cards.extend_from_slice(newly_reserved);
                assert_eq!(self.cards.len(), self.quantity as usize);
                self.status = transition(paid, OrderEventKind::Deliver).expect("paid -> delivered");
            }
            Fulfilment::ManualReview { .. } => {
                self.status =
                    transition(paid, OrderEventKind::SendToReview).expect("paid -> manual_review");
                return std::mem::take(&mut self.cards);
            }
        }
        Vec::new()
    }

    /// Whether an operator may refund this order now.
    pub fn decide_refund(&self) -> Result<(), Rejection> {
        transition(self.status, OrderEventKind::Refund).map(|_| ())
    }

    /// Applies a committed refund.
    pub fn apply_refund(&mut self) {
        self.status = transition(self.status, OrderEventKind::Refund).expect("committed refund");
    }

    /// Applies a committed expiry; returns the keys to release to the pool.
    pub fn apply_expiry(&mut self) -> Vec<CardId> {
        self.status = transition(self.status, OrderEventKind::Expire).expect("committed expiry");
        std::mem::take(&mut self.cards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use std::fmt::Write;

    /// Every (status, event) pair of the table, as a snapshot: a change to the table shows
    /// up here as a diff to review (refresh with UPDATE_EXPECT=1).
    #[test]
    fn transition_table_covers_every_pair() {
        let mut table = String::new();
        for from in OrderStatus::ALL {
            for event in OrderEventKind::ALL {
                let to = match transition(from, event) {
                    Ok(to) => to.as_str(),
                    Err(_) => "-",
                };
                writeln!(
                    table,
                    "{:<16} {:<16} {}",
                    from.as_str(),
                    format!("{event:?}"),
                    to
                )
                .unwrap();
            }
        }
        expect![[r#"
            awaiting_payment PaymentConfirmed paid
            awaiting_payment Deliver          -
            awaiting_payment SendToReview     -
            awaiting_payment Expire           expired
            awaiting_payment Cancel           cancelled
            awaiting_payment Refund           -
            paid             PaymentConfirmed -
            paid             Deliver          delivered
            paid             SendToReview     manual_review
            paid             Expire           -
            paid             Cancel           -
            paid             Refund           -
            delivered        PaymentConfirmed -
            delivered        Deliver          -
            delivered        SendToReview     -
            delivered        Expire           -
            delivered        Cancel           -
            delivered        Refund           -
            expired          PaymentConfirmed paid
            expired          Deliver          -
            expired          SendToReview     -
            expired          Expire           -
            expired          Cancel           -
            expired          Refund           -
            manual_review    PaymentConfirmed -
            manual_review    Deliver          delivered
            manual_review    SendToReview     -
            manual_review    Expire           -
            manual_review    Cancel           -
            manual_review    Refund           refunded
            refunded         PaymentConfirmed -
            refunded         Deliver          -
            refunded         SendToReview     -
            refunded         Expire           -
            refunded         Cancel           -
            refunded         Refund           -
            cancelled        PaymentConfirmed paid
            cancelled        Deliver          -
            cancelled        SendToReview     -
            cancelled        Expire           -
            cancelled        Cancel           -
            cancelled        Refund           -
        "#]]
        .assert_eq(&table);
    }

    #[test]
    fn terminal_statuses_never_leave_except_by_late_payment() {
        for from in OrderStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in OrderEventKind::ALL {
                if let Ok(to) = transition(from, event) {
                    assert_eq!(
                        event,
                        OrderEventKind::PaymentConfirmed,
                        "{from:?} -> {to:?}"
                    );
                    assert!(matches!(
                        from,
                        OrderStatus::Expired | OrderStatus::Cancelled
                    ));
                }
            }
        }
    }

    fn order(status: OrderStatus, cards: Vec<CardId>) -> Order {
        Order {
            order_id: OrderId::parse("o1").unwrap(),
            sku: Sku::parse("s").unwrap(),
            quantity: 1,
            amount_cents: 1250,
            currency: Currency::parse("CNY").unwrap(),
            status,
            created_at_ms: 0,
            expires_at_ms: 1000,
            cards,
            payment: None,
        }
    }

    fn payment(trade: &str, amount_cents: u64) -> Payment {
        Payment {
            channel: "epay".into(),
            gateway_trade_no: trade.into(),
            amount_cents,
        }
    }

    #[test]
    fn payment_decisions() {
        let live = order(OrderStatus::AwaitingPayment, vec![CardId(7)]);
        assert_eq!(
            live.decide_payment(&payment("T1", 1250), true),
            Ok(PaymentDecision::DeliverReserved)
        );
        assert!(matches!(
            live.decide_payment(&payment("T1", 1249), true),
            Err(Rejection::AmountMismatch { .. })
        ));
        let lapsed = order(OrderStatus::Expired, vec![]);
        assert_eq!(
            lapsed.decide_payment(&payment("T1", 1250), true),
            Ok(PaymentDecision::ReserveAgain { quantity: 1 })
        );
        let mut done = live.clone();
        let released = done.apply_payment(
            &payment("T1", 1250),
            &Fulfilment::Delivered {
                newly_reserved: vec![],
            },
        );
        assert_eq!(done.status, OrderStatus::Delivered);
        assert!(released.is_empty());
        assert_eq!(
            done.decide_payment(&payment("T1", 1250), false),
            Ok(PaymentDecision::AlreadyApplied)
        );
        assert_eq!(
            done.decide_payment(&payment("T2", 1250), true),
            Err(Rejection::PaidByOtherTransaction)
        );
        // A replay of the applied transaction with another amount is no replay.
        for cents in [1, 1249, 9900] {
            assert_eq!(
                done.decide_payment(&payment("T1", cents), true),
                Err(Rejection::AmountMismatch {
                    paid_cents: cents,
                    order_cents: 1250
                })
            );
        }
    }

    /// Postmortem: a valid Stripe event paid an order created on Epay. A payment from a
    /// channel the order may not be paid through goes to review and frees the held keys.
    #[test]
    fn a_payment_from_a_foreign_channel_goes_to_review() {
        let mut live = order(OrderStatus::AwaitingPayment, vec![CardId(7)]);
        assert_eq!(
            live.decide_payment(&payment("T1", 1250), false),
            Ok(PaymentDecision::Review(ReviewReason::ForeignChannel))
        );
        let released = live.apply_payment(
            &payment("T1", 1250),
            &Fulfilment::ManualReview {
                reason: ReviewReason::ForeignChannel,
            },
        );
        assert_eq!(released, vec![CardId(7)]);
        assert_eq!(live.status, OrderStatus::ManualReview);
        assert!(live.cards.is_empty());
        // The amount is still checked first, and a replay is still a replay.
        let fresh = order(OrderStatus::AwaitingPayment, vec![CardId(7)]);
        assert!(matches!(
            fresh.decide_payment(&payment("T1", 1), false),
            Err(Rejection::AmountMismatch { .. })
        ));
        assert_eq!(
            live.decide_payment(&payment("T1", 1250), false),
            Ok(PaymentDecision::AlreadyApplied)
        );
    }

    #[test]
    fn expiry_waits_for_the_deadline_and_releases_keys() {
        let mut live = order(OrderStatus::AwaitingPayment, vec![CardId(7)]);
        assert!(live.decide_expiry(999).is_err());
        assert!(live.decide_expiry(1000).is_ok());
        assert_eq!(live.apply_expiry(), vec![CardId(7)]);
        assert_eq!(live.status, OrderStatus::Expired);
        assert!(live.decide_expiry(2000).is_err());
    }
}
