//! The durable side of reseller webhooks: which stream event a reseller's webhook worker
//! must deliver next, and the facts that settle a delivery (delivered, parked, replayed).
//!
//! Invariants: deliveries settle in seq order, one seq at a time (`ShopState::apply` refuses
//! anything but the cursor + 1); a parked event stays visible until an operator's replay is
//! acknowledged. Delivery is at least once: a crash between the receiver's 2xx and the
//! `WebhookDelivered` commit sends that event again, with the same `id`.
//!
//! Key decision: the cursor and the parked list are log events, so they survive kill -9 and
//! replay like everything else; the worker (HTTP, in ws-api) only reads the state and commits
//! these small facts, so a slow receiver never holds the reseller's purchase lock.

use std::sync::Arc;

use engine::events::Event;
use engine::{Rejection, ResellerId};
use tokio::sync::Notify;

use crate::reseller::StreamEvent;
use crate::{Shop, ShopError};

/// Where and how a reseller's webhook is sent.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The receiver answered 2xx.
    Delivered,
    /// Every try failed; the event is parked for operators.
    Parked { attempts: u32 },
}

impl Shop {
    /// The resellers that have a webhook URL (their workers start with the server).
    pub fn resellers_with_webhooks(&self) -> Vec<ResellerId> {
        let state = self.store().state();
        state
            .resellers()
            .filter(|account| account.reseller.webhook_url.is_some())
            .map(|account| account.reseller.reseller_id)
            .collect()
    }

    /// Whether the reseller has a webhook URL (no secret is opened to tell).
    pub fn has_webhook(&self, id: ResellerId) -> bool {
        let state = self.store().state();
        state
            .reseller(id)
            .is_some_and(|account| account.reseller.webhook_url.is_some())
    }

    /// Where and how to deliver: the URL and the opened secret, read afresh for each try
    /// so that a rotated secret signs the next one.
    pub fn webhook_target(&self, id: ResellerId) -> Option<WebhookTarget> {
        let state = self.store().state();
        let account = state.reseller(id)?;
        let url = account.reseller.webhook_url.clone()?;
        // Checked at start; a failure here would be a bug, not a configuration.
        let secret = self
            .webhook_secret(account)
            .inspect_err(|error| tracing::error!(reseller = %id, %error, "webhook secret"))
            .ok()?;
        Some(WebhookTarget { url, secret })
    }

    /// Notified whenever one of the reseller's stream events becomes durable. A permit is
    /// stored when nobody waits, so a worker never misses an event it has not yet read.
    pub fn webhook_waker(&self, id: ResellerId) -> Arc<Notify> {
        let mut wakers = self.resellers().webhook_wakers.lock();
        wakers.entry(id).or_default().clone()
    }

    /// Up to `limit` stream events still to deliver, oldest first: every unsettled seq past
    /// the cursor that `skip` does not hold (those being delivered now), once durable.
    /// The reseller's lock is taken only to read: under it no purchase sits between its
    /// commit and its durability, so an event is never sent that a crash could still undo.
    pub async fn webhook_pending(
        &self,
        id: ResellerId,
        limit: usize,
        skip: &std::collections::BTreeSet<u64>,
    ) -> Vec<StreamEvent> {
        let lock = self.reseller_lock(id);
        let _serial = lock.lock().await;
        let seqs: Vec<u64> = {
            let state = self.store().state();
            let Some(account) = state.reseller(id) else {
                return Vec::new();
            };
            let last = account.stream.len() as u64;
            (account.webhook_cursor + 1..=last)
                .filter(|seq| !account.webhook_settled_ahead.contains(seq) && !skip.contains(seq))
                .take(limit)
                .collect()
        };
        seqs.into_iter()
            .filter_map(|seq| self.stream_event(id, seq))
            .collect()
    }

    /// One durable stream event by seq.
    pub fn stream_event(&self, id: ResellerId, seq: u64) -> Option<StreamEvent> {
        if seq == 0 {
            return None;
        }
        let state = self.store().state();
        let item = state.reseller_stream(id, seq - 1, seq, 1).pop()?;
        let record = item.record;
        Some(StreamEvent {
            seq: item.seq,
            order_id: record.created.order_id.clone(),
            status: item.status,
            sku: record.created.sku.clone(),
            amount_cents: record.created.amount_cents,
            cards: crate::cards::keys_of(&state, self.sealer(), &record.cards),
        })
    }

    /// Commits how the delivery of `seq` (any unsettled seq) ended.
    pub async fn webhook_settle(
        &self,
        id: ResellerId,
        seq: u64,
        settlement: Settlement,
    ) -> Result<(), ShopError> {
        let at_ms = self.now_ms();
        let event = match settlement {
            Settlement::Delivered => Event::WebhookDelivered {
                reseller_id: id,
                seq,
                at_ms,
            },
            Settlement::Parked { attempts } => Event::WebhookParked {
                reseller_id: id,
                seq,
                attempts,
                at_ms,
            },
        };
        self.commit(&event).await.map(|_| ())
    }

    /// The parked events of a reseller, oldest first.
    pub fn webhook_parked(&self, id: ResellerId) -> Result<Vec<StreamEvent>, ShopError> {
        let seqs: Vec<u64> = {
            let state = self.store().state();
            let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
            account.webhook_parked.iter().copied().collect()
        };
        Ok(seqs
            .into_iter()
            .filter_map(|seq| self.stream_event(id, seq))
            .collect())
    }

    /// Whether `seq` is parked for the reseller.
    pub fn webhook_is_parked(&self, id: ResellerId, seq: u64) -> Result<bool, ShopError> {
        let state = self.store().state();
        let account = state.reseller(id).ok_or(Rejection::UnknownReseller)?;
        Ok(account.webhook_parked.contains(&seq))
    }

    /// Records that an operator's replay of parked `seq` was acknowledged.
    pub async fn webhook_replayed(&self, id: ResellerId, seq: u64) -> Result<(), ShopError> {
        let event = Event::WebhookReplayed {
            reseller_id: id,
            seq,
            at_ms: self.now_ms(),
        };
        self.commit(&event).await.map(|_| ())
    }
}
