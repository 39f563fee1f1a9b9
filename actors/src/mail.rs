//! The durable side of the buyers' delivery mail: which mails are due, what goes in them,
//! and the facts that settle a try (sent, failed). The SMTP sender lives in ws-api.
//!
//! Invariants: a mail is read for sending only once its delivery is durable (the outbox is
//! `ShopState`, which holds only committed events); every try ends in a committed
//! `MailSent` or `MailFailed`, numbered after the tries before it, so the backoff and the
//! give-up count continue across restarts. Sending is at least once: a crash between the
//! server's acceptance and the `MailSent` commit sends the mail again, with the same
//! `Message-ID`, so the buyer's mail program can tell the copy.
//!
//! Key decision: the outbox is derived from the log, not a queue of its own: a delivery
//! queues its mail as it is applied, so the purchase path commits nothing more for it and a
//! failing mail server can never hold a purchase.

use std::sync::Arc;

use engine::events::Event;
use engine::mail::{bounded_error, next_try_at_ms};
use engine::OrderId;
use tokio::sync::Notify;

use crate::{Shop, ShopError};

/// Everything one delivery mail holds, read from the state at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryMail {
    pub order_id: OrderId,
    /// The order's access token, for the order page's link (empty for an order whose token
    /// only its buyer holds: see `mail_token`).
    pub token: String,
    pub to: String,
    pub product_name: String,
    pub keys: Vec<String>,
    /// Failed tries so far; this try is `attempts + 1`.
    pub attempts: u32,
}

/// How one try ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailOutcome {
    Sent,
    Failed { error: String },
}

/// The outbox as operators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxView {
    pub open: bool,
    pub queued: u64,
    pub sent: u64,
    pub waiting: u64,
    /// Waiting mails that failed at least once, oldest order first: (order id, tries, last
    /// error).
    pub retrying: Vec<(OrderId, u32, String)>,
    /// Given-up mails, the most recent: (order id, tries, last error).
    pub given_up: Vec<(OrderId, u32, String)>,
}

/// Mails of each list shown to operators at most.
pub const MAILS_LISTED_MAX: usize = 100;

impl Shop {
    /// Notified when a delivery may have queued a mail. A permit is kept when nobody waits,
    /// so the sender never misses one.
    pub fn mail_waker(&self) -> Arc<Notify> {
        self.0.mail_waker.clone()
    }

    /// Opens the outbox unless it is open: deliveries from now on queue their mails.
    pub async fn open_mail_outbox(&self) -> Result<(), ShopError> {
        if self.store().state().outbox().opened_at_ms.is_some() {
            return Ok(());
        }
        let event = Event::MailOutboxOpened {
            at_ms: self.now_ms(),
        };
        self.commit(&event).await.map(|_| ())
    }

    /// Mails due at `now_ms`, at most `count_max`, oldest order first; and when the next
    /// one not yet due will be (`None` when nothing else waits).
    pub fn mails_due(
        &self,
        now_ms: u64,
        retry_first_ms: u64,
        count_max: usize,
    ) -> (Vec<DeliveryMail>, Option<u64>) {
        let state = self.store().state();
        let mut due = Vec::new();
        let mut next_at_ms: Option<u64> = None;
        for (order_id, tries) in state.mails_waiting() {
            let at_ms = next_try_at_ms(retry_first_ms, tries.attempts, tries.last_failed_at_ms);
            if at_ms > now_ms {
                next_at_ms = Some(next_at_ms.map_or(at_ms, |next| next.min(at_ms)));
                continue;
            }
            if due.len() == count_max {
                next_at_ms = Some(now_ms);
                continue;
            }
            let Some(record) = state.order(order_id) else {
                continue;
            };
            due.push(DeliveryMail {
                order_id: order_id.clone(),
                // Empty for an order from before tokens were derived: the mail links to
                // the lookup page instead.
                token: self.buyer_token(&record),
                to: record.created.contact.clone(),
                product_name: state
                    .product(&record.created.sku)
                    .map_or_else(String::new, |p| p.product.name.clone()),
                keys: crate::cards::keys_of(&state, self.sealer(), &record.cards),
                attempts: tries.attempts,
            });
        }
        (due, next_at_ms)
    }

    /// Commits how a try of an order's mail ended.
    pub async fn mail_settle(
        &self,
        mail: &DeliveryMail,
        outcome: MailOutcome,
    ) -> Result<(), ShopError> {
        let at_ms = self.now_ms();
        let event = match outcome {
            MailOutcome::Sent => Event::MailSent {
                order_id: mail.order_id.clone(),
                at_ms,
            },
            MailOutcome::Failed { error } => Event::MailFailed {
                order_id: mail.order_id.clone(),
                attempt: mail.attempts + 1,
                error: bounded_error(&error),
                at_ms,
            },
        };
        self.commit(&event).await.map(|_| ())
    }

    /// The outbox's counts, the mails being retried and the given-up ones (at most
    /// `MAILS_LISTED_MAX` of each).
    pub fn outbox_view(&self) -> OutboxView {
        let state = self.store().state();
        let outbox = state.outbox();
        let listed = |(id, tries): (&OrderId, &engine::state::MailTries)| {
            (id.clone(), tries.attempts, tries.last_error.clone())
        };
        let retrying = state
            .mails_waiting()
            .filter(|(_, tries)| tries.attempts > 0)
            .take(MAILS_LISTED_MAX)
            .map(listed)
            .collect();
        let skip = outbox.given_up_count().saturating_sub(MAILS_LISTED_MAX);
        let given_up = state.mails_given_up().skip(skip).map(listed).collect();
        OutboxView {
            open: outbox.opened_at_ms.is_some(),
            queued: outbox.queued_count,
            sent: outbox.sent_count,
            waiting: outbox.waiting_count() as u64,
            retrying,
            given_up,
        }
    }
}
