//! The buyers' delivery mail in the simulator: the outbox opens at set-up, every order
//! delivered to an e-mail contact queues a mail, and a simulated mail server accepts or
//! refuses each try (`Faults::mail_failure_percent`), all under the same crashes as the
//! orders.
//!
//! The model is what the simulated sender was told was durable: per order, its mail's
//! failed tries, or that it was sent or given up. After every step the recovered outbox
//! must equal it (the one try in flight at a crash may have landed either way), and its
//! counts must add up: queued = the model's mails. After the faults stop, every waiting
//! mail must settle within bounded simulated time (liveness).

use std::collections::BTreeMap;

use engine::mail::{is_email, next_try_at_ms, MAIL_ATTEMPTS_MAX};
use engine::{Event, OrderId};

use super::World;

/// The simulated sender's first retry delay (the cap is 64 times it).
pub const MAIL_RETRY_FIRST_MS: u64 = 1_000;
/// Mails the sender tries per step at most.
const MAILS_PER_STEP_MAX: usize = 8;

/// One mail as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mail {
    Waiting { attempts: u32 },
    Sent,
    GivenUp,
}

#[derive(Default)]
pub(super) struct Model {
    mails: BTreeMap<OrderId, Mail>,
    /// The try whose outcome was being committed when the shop crashed: (order, after).
    in_flight: Option<(OrderId, Mail)>,
}

impl World {
    pub(super) fn setup_mail(&mut self) {
        while self.store().state().outbox().opened_at_ms.is_none() {
            let _ = self.commit(&Event::MailOutboxOpened { at_ms: self.now_ms });
        }
    }

    /// A delivery was acknowledged: its mail is queued if its contact is an e-mail address.
    pub(super) fn mail_queued(&mut self, id: &OrderId) {
        let contact = self
            .store()
            .state()
            .order(id)
            .map(|record| record.created.contact.clone());
        if contact.is_some_and(|contact| is_email(&contact)) {
            self.mail
                .mails
                .insert(id.clone(), Mail::Waiting { attempts: 0 });
        }
    }

    /// The sender's round: each due mail is tried once, its outcome committed.
    pub(super) fn mail_step(&mut self) {
        let due: Vec<(OrderId, u32)> = self
            .store()
            .state()
            .mails_waiting()
            .filter(|(_, tries)| {
                next_try_at_ms(MAIL_RETRY_FIRST_MS, tries.attempts, tries.last_failed_at_ms)
                    <= self.now_ms
            })
            .take(MAILS_PER_STEP_MAX)
            .map(|(id, tries)| (id.clone(), tries.attempts))
            .collect();
        for (id, attempts) in due {
            let failed = self.rng.percent(self.faults.mail_failure_percent);
            let (event, after) = if failed {
                let attempt = attempts + 1;
                let after = if attempt == MAIL_ATTEMPTS_MAX {
                    Mail::GivenUp
                } else {
                    Mail::Waiting { attempts: attempt }
                };
                let event = Event::MailFailed {
                    order_id: id.clone(),
                    attempt,
                    error: "451 simulated".into(),
                    at_ms: self.now_ms,
                };
                (event, after)
            } else {
                let event = Event::MailSent {
                    order_id: id.clone(),
                    at_ms: self.now_ms,
                };
                (event, Mail::Sent)
            };
            self.mail.in_flight = Some((id.clone(), after));
            if self.commit(&event).is_err() {
                return;
            }
            self.mail.in_flight = None;
            self.mail.mails.insert(id, after);
        }
    }

    /// After a restart: the try in flight may have landed; deliveries whose acknowledgement
    /// was lost may have queued mails. Take the log's word for exactly those.
    pub(super) fn adopt_mails(&mut self) {
        let in_flight = self.mail.in_flight.take();
        let state = self.store().state();
        let mut adopted = Vec::new();
        if let Some((id, after)) = in_flight {
            if observed(&state, &id) == Some(after) {
                adopted.push((id, after));
            }
        }
        for (id, tries) in state.mails_waiting() {
            if !self.mail.mails.contains_key(id) {
                adopted.push((
                    id.clone(),
                    Mail::Waiting {
                        attempts: tries.attempts,
                    },
                ));
            }
        }
        drop(state);
        self.mail.mails.extend(adopted);
    }

    /// After each step: every acknowledged mail is as acknowledged, and none is extra.
    pub(super) fn check_mail(&mut self, step: u64) {
        let mut problems = Vec::new();
        {
            let state = self.store().state();
            for (id, mail) in &self.mail.mails {
                let now = observed(&state, id);
                if now != Some(*mail) {
                    problems.push(format!(
                        "step {step}: mail of {id} is {now:?}, acknowledged {mail:?}"
                    ));
                }
            }
            let queued = state.outbox().queued_count;
            if queued != self.mail.mails.len() as u64 {
                problems.push(format!(
                    "step {step}: {queued} mails queued, {} acknowledged",
                    self.mail.mails.len()
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// Faults off: send until nothing waits (bounded simulated time).
    pub(super) fn settle_mail(&mut self, deadline_ms: u64) {
        while self.store().state().outbox().waiting_count() > 0 && self.now_ms < deadline_ms {
            self.mail_step();
            self.advance(MAIL_RETRY_FIRST_MS);
        }
        let waiting: Vec<OrderId> = self
            .store()
            .state()
            .mails_waiting()
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.violation(format!(
                "liveness: the mail of {id} still waits after the faults stopped"
            ));
        }
    }
}

/// An order's mail as the state holds it (`None`: it has none).
fn observed(state: &engine::ShopState, id: &OrderId) -> Option<Mail> {
    if let Some(tries) = state.mail_waiting(id) {
        return Some(Mail::Waiting {
            attempts: tries.attempts,
        });
    }
    if state.mails_given_up().any(|(given_up, _)| given_up == id) {
        return Some(Mail::GivenUp);
    }
    let record = state.order(id)?;
    let delivered = record.status == engine::OrderStatus::Delivered;
    (delivered && is_email(&record.created.contact)).then_some(Mail::Sent)
}
