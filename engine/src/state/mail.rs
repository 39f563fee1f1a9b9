//! The mail outbox inside `ShopState`: the delivery mails of orders delivered to an e-mail
//! contact since the outbox opened, each waiting, sent, or given up.
//!
//! Invariants (refused by `apply`, re-derived by `check_outbox`): every mail queued is
//! exactly one of waiting, sent or given up (queued = sent + waiting + given up); only a
//! delivered order to an e-mail contact has a mail; failed tries are numbered 1, 2, 3, ...
//! and a mail is given up at the `MAIL_ATTEMPTS_MAX`th, never before; a mail is sent or
//! given up once.
//!
//! Key decision: the outbox is derived from the log (a delivery queues its mail as it is
//! applied), so a `kill -9` right after a delivery loses no mail and costs no extra commit
//! on the purchase path; only the sender's outcomes are events of their own.

use std::collections::BTreeMap;

use super::{ShopState, Touched, Violation};
use crate::ids::OrderId;
use crate::mail::{is_email, MAIL_ATTEMPTS_MAX, MAIL_ERROR_BYTES_MAX};
use crate::order::OrderStatus;

/// The failed tries of one mail.
#[derive(Clone, Debug, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct MailTries {
    pub attempts: u32,
    pub last_failed_at_ms: u64,
    pub last_error: String,
}

#[derive(Default, bincode::Encode, bincode::Decode)]
pub struct Outbox {
    /// When the outbox opened; no mail is queued before.
    pub opened_at_ms: Option<u64>,
    /// Order index -> its mail's failed tries, for mails not yet sent nor given up.
    waiting: BTreeMap<u32, MailTries>,
    /// Order index -> the tries of mails that failed `MAIL_ATTEMPTS_MAX` times.
    given_up: BTreeMap<u32, MailTries>,
    pub queued_count: u64,
    pub sent_count: u64,
}

impl Outbox {
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    pub fn given_up_count(&self) -> usize {
        self.given_up.len()
    }
}

impl ShopState {
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Waiting mails, oldest order first: (order id, its tries).
    pub fn mails_waiting(&self) -> impl Iterator<Item = (&OrderId, &MailTries)> {
        self.mails_of(&self.outbox.waiting)
    }

    /// Given-up mails, oldest order first.
    pub fn mails_given_up(&self) -> impl Iterator<Item = (&OrderId, &MailTries)> {
        self.mails_of(&self.outbox.given_up)
    }

    /// A list's mails with their orders' ids (orders with a mail stay in memory).
    fn mails_of<'a>(
        &'a self,
        list: &'a BTreeMap<u32, MailTries>,
    ) -> impl Iterator<Item = (&'a OrderId, &'a MailTries)> {
        list.iter().filter_map(|(index, tries)| {
            let record = self.orders.hot(*index)?;
            Some((&record.created.order_id, tries))
        })
    }

    /// Whether the order at `index` has a mail waiting or given up.
    pub(super) fn has_mail(&self, index: u32) -> bool {
        self.outbox.waiting.contains_key(&index) || self.outbox.given_up.contains_key(&index)
    }

    /// The tries of an order's mail while it waits.
    pub fn mail_waiting(&self, order_id: &OrderId) -> Option<&MailTries> {
        let index = self.order_index.get(order_id)?;
        self.outbox.waiting.get(index)
    }

    /// Called as an order is delivered: queues its mail when the outbox is open and the
    /// contact is an e-mail address.
    pub(super) fn enqueue_delivery_mail(&mut self, index: u32) {
        let contact = &self.orders.hot(index).expect("delivered").created.contact;
        if self.outbox.opened_at_ms.is_some() && is_email(contact) {
            self.outbox.waiting.insert(index, MailTries::default());
            self.outbox.queued_count += 1;
        }
    }

    pub(super) fn apply_outbox_opened(&mut self, at_ms: u64) -> Result<Touched, Violation> {
        ensure!(
            self.outbox.opened_at_ms.is_none(),
            "the mail outbox opened twice"
        );
        self.outbox.opened_at_ms = Some(at_ms);
        Ok(Touched::default())
    }

    fn waiting_index(&self, order_id: &OrderId, event: &str) -> Result<u32, Violation> {
        // An order whose mail waits is in memory.
        let index = self.order_index.get(order_id).copied();
        let index = index.filter(|index| self.outbox.waiting.contains_key(index));
        index.ok_or_else(|| {
            Violation(format!(
                "{event} for order {order_id}, whose mail is not waiting"
            ))
        })
    }

    pub(super) fn apply_mail_sent(&mut self, order_id: &OrderId) -> Result<Touched, Violation> {
        let index = self.waiting_index(order_id, "mail sent")?;
        self.outbox.waiting.remove(&index);
        self.outbox.sent_count += 1;
        Ok(Touched::default())
    }

    pub(super) fn apply_mail_failed(
        &mut self,
        order_id: &OrderId,
        attempt: u32,
        error: &str,
        at_ms: u64,
    ) -> Result<Touched, Violation> {
        let index = self.waiting_index(order_id, "mail failure")?;
        let tries = &self.outbox.waiting[&index];
        ensure!(
            attempt == tries.attempts + 1,
            "mail of {order_id}: try {attempt} after {}",
            tries.attempts
        );
        ensure!(
            attempt <= MAIL_ATTEMPTS_MAX,
            "mail of {order_id}: try {attempt} beyond {MAIL_ATTEMPTS_MAX}"
        );
        ensure!(
            error.len() <= MAIL_ERROR_BYTES_MAX,
            "mail of {order_id}: error text too long"
        );
        let tries = MailTries {
            attempts: attempt,
            last_failed_at_ms: at_ms,
            last_error: error.to_owned(),
        };
        if attempt == MAIL_ATTEMPTS_MAX {
            self.outbox.waiting.remove(&index);
            self.outbox.given_up.insert(index, tries);
        } else {
            self.outbox.waiting.insert(index, tries);
        }
        Ok(Touched::default())
    }

    pub(super) fn check_outbox(&self, violations: &mut Vec<Violation>) {
        let outbox = &self.outbox;
        let settled =
            outbox.sent_count + outbox.waiting.len() as u64 + outbox.given_up.len() as u64;
        if outbox.queued_count != settled {
            violations.push(Violation(format!(
                "mail outbox: {} queued but {} sent, {} waiting, {} given up",
                outbox.queued_count,
                outbox.sent_count,
                outbox.waiting.len(),
                outbox.given_up.len()
            )));
        }
        if outbox.opened_at_ms.is_none() && outbox.queued_count > 0 {
            violations.push(Violation("mails queued before the outbox opened".into()));
        }
        let lists = [(&outbox.waiting, false), (&outbox.given_up, true)];
        for (list, given_up) in lists {
            for (index, tries) in list {
                let Some(record) = self.orders.hot(*index) else {
                    violations.push(Violation(format!(
                        "the order of mail {index} is not in memory"
                    )));
                    continue;
                };
                let id = &record.created.order_id;
                if record.status != OrderStatus::Delivered || !is_email(&record.created.contact) {
                    violations.push(Violation(format!(
                        "order {id} has a mail but is not delivered to an e-mail address"
                    )));
                }
                if given_up != (tries.attempts == MAIL_ATTEMPTS_MAX) {
                    violations.push(Violation(format!(
                        "mail of {id}: {} tries, given up: {given_up}",
                        tries.attempts
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Fulfilment, NewOrder, Payment, Product};
    use crate::ids::{CardId, Sku};
    use crate::money::Currency;

    /// A shop with one key, one order `o-1` for it by `contact`, not yet paid.
    fn shop_with_order(contact: &str, outbox_open: bool) -> ShopState {
        let mut state = ShopState::default();
        let sku = Sku::parse("mail-sku").unwrap();
        let currency = Currency::parse("CNY").unwrap();
        let mut events = vec![
            Event::ProductCreated(Product {
                sku: sku.clone(),
                name: "Mail".into(),
                price_cents: 100,
                currency,
                created_at_ms: 0,
            }),
            Event::CardsImported {
                sku: sku.clone(),
                first_card_id: CardId(1),
                keys: vec!["KEY-1".into()],
            },
        ];
        if outbox_open {
            events.push(Event::MailOutboxOpened { at_ms: 1 });
        }
        events.push(Event::OrderCreated(std::sync::Arc::new(NewOrder {
            order_id: OrderId::parse("o-1").unwrap(),
            token: "t".into(),
            trace_id: "tr".into(),
            sku,
            quantity: 1,
            amount_cents: 100,
            currency,
            contact: contact.into(),
            channel: "epay".into(),
            payment_channel: "epay".into(),
            payment_url: String::new(),
            payment_ref: String::new(),
            created_at_ms: 2,
            expires_at_ms: 60_000,
            cards: vec![CardId(1)],
            idempotency: None,
        })));
        for event in events {
            state.apply(&event).unwrap();
        }
        state
    }

    fn deliver(state: &mut ShopState) {
        state
            .apply(&Event::PaymentApplied {
                order_id: OrderId::parse("o-1").unwrap(),
                payment: Payment {
                    channel: "epay".into(),
                    gateway_trade_no: "T1".into(),
                    amount_cents: 100,
                },
                at_ms: 3,
                fulfilment: Fulfilment::Delivered {
                    newly_reserved: Vec::new(),
                },
            })
            .unwrap();
    }

    fn failed(attempt: u32) -> Event {
        Event::MailFailed {
            order_id: OrderId::parse("o-1").unwrap(),
            attempt,
            error: "421 try later".into(),
            at_ms: 10 + u64::from(attempt),
        }
    }

    fn sent() -> Event {
        Event::MailSent {
            order_id: OrderId::parse("o-1").unwrap(),
            at_ms: 100,
        }
    }

    #[test]
    fn a_delivery_to_an_e_mail_contact_queues_one_mail_once_open() {
        let mut state = shop_with_order("buyer@example.com", true);
        assert_eq!(
            state.outbox().queued_count,
            0,
            "queued at delivery, not creation"
        );
        deliver(&mut state);
        assert_eq!(state.outbox().waiting_count(), 1);
        state.apply(&sent()).unwrap();
        assert!(state.apply(&sent()).is_err(), "sent twice");
        assert_eq!(state.outbox().sent_count, 1);
        assert!(state.check().is_empty(), "{:?}", state.check());

        let mut phone = shop_with_order("13800138000", true);
        deliver(&mut phone);
        assert_eq!(phone.outbox().queued_count, 0);
        assert!(phone.apply(&sent()).is_err(), "no mail to send");

        let mut closed = shop_with_order("buyer@example.com", false);
        deliver(&mut closed);
        assert_eq!(closed.outbox().queued_count, 0, "the outbox was not open");
        assert!(closed.apply(&Event::MailOutboxOpened { at_ms: 5 }).is_ok());
        assert!(closed.apply(&Event::MailOutboxOpened { at_ms: 6 }).is_err());
    }

    #[test]
    fn failed_tries_count_up_and_the_last_gives_the_mail_up() {
        let mut state = shop_with_order("buyer@example.com", true);
        deliver(&mut state);
        assert!(state.apply(&failed(2)).is_err(), "try 2 before try 1");
        for attempt in 1..MAIL_ATTEMPTS_MAX {
            state.apply(&failed(attempt)).unwrap();
            assert_eq!(state.outbox().waiting_count(), 1);
        }
        let tries = state.mail_waiting(&OrderId::parse("o-1").unwrap()).unwrap();
        assert_eq!(tries.attempts, MAIL_ATTEMPTS_MAX - 1);
        assert_eq!(tries.last_error, "421 try later");
        state.apply(&failed(MAIL_ATTEMPTS_MAX)).unwrap();
        assert_eq!(state.outbox().waiting_count(), 0);
        assert_eq!(state.outbox().given_up_count(), 1);
        assert!(state.apply(&sent()).is_err(), "a given-up mail is settled");
        assert!(state.apply(&failed(MAIL_ATTEMPTS_MAX + 1)).is_err());
        assert!(state.check().is_empty(), "{:?}", state.check());
    }

    #[test]
    fn an_overlong_error_text_is_refused() {
        let mut state = shop_with_order("buyer@example.com", true);
        deliver(&mut state);
        let event = Event::MailFailed {
            order_id: OrderId::parse("o-1").unwrap(),
            attempt: 1,
            error: "x".repeat(MAIL_ERROR_BYTES_MAX + 1),
            at_ms: 1,
        };
        assert!(state.apply(&event).is_err());
    }
}
