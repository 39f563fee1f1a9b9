//! Resellers inside `ShopState`: their accounts, their ledger, their orders and their stream.
//!
//! Invariants (refused by `apply`, re-derived by `check_resellers`): a reseller order takes
//! only Available keys, sells them at once and is charged exactly once, by the discounted
//! price; no balance goes below 0; each reseller's stream numbers its events 1, 2, 3, ...
//! without a gap.
//!
//! Key decision: a reseller order is an ordinary delivered `OrderRecord` (lookups, card
//! conservation and "no key in two orders" treat it like any other), with the reseller's
//! own facts (owner, charge, stream seq, idempotency) kept beside it here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use subtle::ConstantTimeEq;

use super::{Holder, OrderRecord, ShopState, Touched, Violation};
use crate::events::{
    BalanceChange, Idempotency, NewOrder, NewReseller, Payment, ResellerChange, ResellerOrder,
};
use crate::ids::{OrderId, ResellerId};
use crate::ledger::{wholesale_charge_cents, Entry, EntryKind, Ledger, DISCOUNT_BP_MAX};
use crate::order::OrderStatus;

/// Most keys one reseller order may buy.
pub const RESELLER_ORDER_QUANTITY_MAX: u32 = 1_000;
/// Longest reseller name, in bytes.
pub const RESELLER_NAME_LEN_MAX: usize = 200;
/// The channel (and payment channel) recorded on a reseller order.
pub const RESELLER_CHANNEL: &str = "reseller";

/// What is stored of a reseller's API key: its SHA-256. The key has 256 random bits, so a
/// plain (unsalted) hash is as strong as the key.
pub fn api_key_sha256(api_key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(api_key.as_bytes()).into()
}

/// One event of a reseller's stream: an order reached `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct StreamEntry {
    pub seq: u64,
    pub order_index: u32,
    pub status: OrderStatus,
}

#[derive(bincode::Encode, bincode::Decode)]
pub struct ResellerState {
    pub reseller: NewReseller,
    pub revoked_at_ms: Option<u64>,
    /// Indexes of the reseller's orders, in commit order.
    pub orders: Vec<u32>,
    /// Idempotency keys (scoped to this reseller) -> (order index, request fingerprint).
    idempotency: HashMap<String, (u32, u64)>,
    /// The stream; entry `i` has seq `i + 1`.
    pub stream: Vec<StreamEntry>,
    /// Every stream seq up to here has its webhook delivery settled (delivered or parked);
    /// 0 at first. Only moves forward, and never past the stream.
    pub webhook_cursor: u64,
    /// Seqs past the cursor whose delivery settled already: each event has its own retry
    /// schedule, so a later one may settle while an earlier one still waits for its retry.
    /// The cursor absorbs them as the gap before them closes.
    pub webhook_settled_ahead: BTreeSet<u64>,
    /// Stream seqs whose webhook exhausted its retries and awaits an operator's replay.
    pub webhook_parked: BTreeSet<u64>,
}

#[derive(Default, bincode::Encode, bincode::Decode)]
pub struct Resellers {
    accounts: BTreeMap<ResellerId, ResellerState>,
    by_key: HashMap<[u8; 32], ResellerId>,
    ledger: Ledger,
    /// Reseller orders: order index -> (owner, ledger entry number of its charge).
    charges: HashMap<u32, (ResellerId, u64)>,
}

/// A reseller order's stream event, as replay hands it out.
pub struct StreamItem<'a> {
    pub seq: u64,
    pub status: OrderStatus,
    pub record: &'a OrderRecord,
}

impl ShopState {
    /// A reseller's account for an event about it; an unknown reseller is a violation.
    fn account_mut(
        &mut self,
        id: ResellerId,
        event: &str,
    ) -> Result<&mut ResellerState, Violation> {
        self.resellers
            .accounts
            .get_mut(&id)
            .ok_or_else(|| Violation(format!("{event} {id}")))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.resellers.ledger
    }

    pub fn reseller(&self, id: ResellerId) -> Option<&ResellerState> {
        self.resellers.accounts.get(&id)
    }

    pub fn resellers(&self) -> impl Iterator<Item = &ResellerState> {
        self.resellers.accounts.values()
    }

    pub fn next_reseller_id(&self) -> ResellerId {
        ResellerId(self.resellers.accounts.len() as u64 + 1)
    }

    /// The reseller whose API key hashes to `key_sha256`, revoked or not. The map is keyed
    /// by a hash of the secret, so its timing says nothing about the key; the final
    /// comparison is constant-time all the same.
    pub fn reseller_by_key_hash(&self, key_sha256: &[u8; 32]) -> Option<&ResellerState> {
        let id = self.resellers.by_key.get(key_sha256)?;
        let state = &self.resellers.accounts[id];
        bool::from(state.reseller.api_key_sha256.ct_eq(key_sha256)).then_some(state)
    }

    /// The reseller that placed an order, if a reseller did.
    pub fn reseller_of_order(&self, order_id: &OrderId) -> Option<ResellerId> {
        let index = self.order_index.get(order_id)?;
        self.resellers.charges.get(index).map(|(id, _)| *id)
    }

    /// A reseller order's charge (its amount and the balance it left).
    pub fn reseller_charge(&self, order_id: &OrderId) -> Option<&Entry> {
        let index = self.order_index.get(order_id)?;
        let (_, number) = self.resellers.charges.get(index)?;
        self.resellers.ledger.entry(*number)
    }

    /// The order a reseller first placed with an idempotency key, and that request's
    /// fingerprint.
    pub fn reseller_order_by_idempotency_key(
        &self,
        reseller: ResellerId,
        key: &str,
    ) -> Option<(&OrderRecord, u64)> {
        let (index, fingerprint) = self.reseller(reseller)?.idempotency.get(key)?;
        Some((self.orders.hot(*index)?, *fingerprint))
    }

    /// Whether the order at `index` is a reseller's (reseller orders stay in memory).
    pub(super) fn is_reseller_order(&self, index: u32) -> bool {
        self.resellers.charges.contains_key(&index)
    }

    /// The last seq of a reseller's stream (0 when empty).
    pub fn stream_seq(&self, reseller: ResellerId) -> u64 {
        self.reseller(reseller)
            .map_or(0, |state| state.stream.len() as u64)
    }

    /// Stream events with `after < seq <= through`, at most `count_max` of them.
    pub fn reseller_stream(
        &self,
        reseller: ResellerId,
        after: u64,
        through: u64,
        count_max: usize,
    ) -> Vec<StreamItem<'_>> {
        let Some(state) = self.reseller(reseller) else {
            return Vec::new();
        };
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(state.stream.len());
        let end = usize::try_from(through)
            .unwrap_or(usize::MAX)
            .min(state.stream.len());
        state.stream[start..end.max(start)]
            .iter()
            .take(count_max)
            .filter_map(|entry| {
                Some(StreamItem {
                    seq: entry.seq,
                    status: entry.status,
                    record: self.orders.hot(entry.order_index)?,
                })
            })
            .collect()
    }

    pub(super) fn apply_reseller_created(
        &mut self,
        new: &NewReseller,
    ) -> Result<Touched, Violation> {
        let id = new.reseller_id;
        ensure!(id == self.next_reseller_id(), "reseller {id} out of order");
        ensure!(
            !new.name.trim().is_empty() && new.name.len() <= RESELLER_NAME_LEN_MAX,
            "reseller {id} has a bad name"
        );
        ensure!(new.discount_bp <= DISCOUNT_BP_MAX, "reseller {id} discount");
        ensure!(
            !self.resellers.by_key.contains_key(&new.api_key_sha256),
            "reseller {id} reuses an API key"
        );
        self.resellers.ledger.open(id);
        self.resellers.by_key.insert(new.api_key_sha256, id);
        self.resellers.accounts.insert(
            id,
            ResellerState {
                reseller: new.clone(),
                revoked_at_ms: None,
                orders: Vec::new(),
                idempotency: HashMap::new(),
                stream: Vec::new(),
                webhook_cursor: 0,
                webhook_settled_ahead: BTreeSet::new(),
                webhook_parked: BTreeSet::new(),
            },
        );
        Ok(Touched {
            reseller: Some(id),
            ..Touched::default()
        })
    }

    pub(super) fn apply_reseller_revoked(
        &mut self,
        id: ResellerId,
        at_ms: u64,
    ) -> Result<Touched, Violation> {
        let state = self.account_mut(id, "revoke of unknown reseller")?;
        ensure!(state.revoked_at_ms.is_none(), "reseller {id} revoked twice");
        state.revoked_at_ms = Some(at_ms);
        Ok(Touched {
            reseller: Some(id),
            ..Touched::default()
        })
    }

    /// A live reseller's new key, webhook secret or discount. A revoked account keeps its
    /// key and discount; only its webhook secret may be written again (sealing a secret
    /// stored in the clear by an older version) and its balance moved.
    pub(super) fn apply_reseller_updated(
        &mut self,
        id: ResellerId,
        change: &ResellerChange,
    ) -> Result<Touched, Violation> {
        let key_in_use = |hash: &[u8; 32]| self.resellers.by_key.contains_key(hash);
        if let ResellerChange::ApiKeyRotated { api_key_sha256 } = change {
            ensure!(
                !key_in_use(api_key_sha256),
                "reseller {id} reuses an API key"
            );
        }
        let state = self.account_mut(id, "update of unknown reseller")?;
        let resealing = matches!(change, ResellerChange::WebhookSecretRotated { .. });
        ensure!(
            state.revoked_at_ms.is_none() || resealing,
            "update of revoked {id}"
        );
        match change {
            ResellerChange::ApiKeyRotated { api_key_sha256 } => {
                let old = std::mem::replace(&mut state.reseller.api_key_sha256, *api_key_sha256);
                self.resellers.by_key.remove(&old);
                self.resellers.by_key.insert(*api_key_sha256, id);
            }
            ResellerChange::WebhookSecretRotated { webhook_secret } => {
                state.reseller.webhook_secret.clone_from(webhook_secret);
            }
            ResellerChange::DiscountSet { discount_bp } => {
                ensure!(*discount_bp <= DISCOUNT_BP_MAX, "reseller {id} discount");
                state.reseller.discount_bp = *discount_bp;
            }
        }
        Ok(Touched {
            reseller: Some(id),
            ..Touched::default()
        })
    }

    /// Balance changes apply to revoked resellers too: paying out what is left is one.
    pub(super) fn apply_balance_changed(
        &mut self,
        id: ResellerId,
        change: BalanceChange,
    ) -> Result<Touched, Violation> {
        let (kind, amount_cents) = match change {
            BalanceChange::TopUp { amount_cents } => (EntryKind::TopUp, amount_cents),
            BalanceChange::Correction { amount_cents } => (EntryKind::Correction, amount_cents),
        };
        let entry = self
            .resellers
            .ledger
            .plan(id, kind, amount_cents)
            .map_err(|refusal| Violation(format!("balance of {id}: {refusal}")))?;
        let number = entry.number;
        self.resellers.ledger.post(entry);
        Ok(Touched {
            reseller: Some(id),
            ledger_entry: Some(number),
            ..Touched::default()
        })
    }

    /// Validates a reseller order against the whole shop; returns the charge to post.
    fn check_reseller_order(&self, order: &ResellerOrder) -> Result<Entry, Violation> {
        let (id, reseller) = (&order.order_id, order.reseller_id);
        let state = self
            .reseller(reseller)
            .ok_or_else(|| Violation(format!("order {id} of unknown reseller {reseller}")))?;
        ensure!(
            state.revoked_at_ms.is_none(),
            "order {id} of revoked {reseller}"
        );
        ensure!(self.index_of(id).is_none(), "order {id} created twice");
        let product = self
            .products
            .get(&order.sku)
            .ok_or_else(|| Violation(format!("order {id} of unknown sku")))?;
        let quantity = u32::try_from(order.cards.len()).unwrap_or(u32::MAX);
        ensure!(
            (1..=RESELLER_ORDER_QUANTITY_MAX).contains(&quantity),
            "order {id} buys {quantity} keys"
        );
        let price = product.product.price_cents;
        ensure!(
            wholesale_charge_cents(price, quantity, state.reseller.discount_bp)
                == Some(order.amount_cents),
            "order {id} is not charged the discounted price"
        );
        if let Some(Idempotency { key, .. }) = &order.idempotency {
            ensure!(
                !state.idempotency.contains_key(key),
                "idempotency key of order {id} used twice by {reseller}"
            );
        }
        ensure!(
            order.stream_seq == state.stream.len() as u64 + 1,
            "order {id} has stream seq {} after {}",
            order.stream_seq,
            state.stream.len()
        );
        self.check_cards(&order.sku, &order.cards, Holder::Available)?;
        let kind = EntryKind::Charge(id.clone());
        self.resellers
            .ledger
            .plan(reseller, kind, order.amount_cents)
            .map_err(|refusal| Violation(format!("order {id}: {refusal}")))
    }

    pub(super) fn apply_reseller_order(
        &mut self,
        order: &ResellerOrder,
    ) -> Result<Touched, Violation> {
        let charge = self.check_reseller_order(order)?;
        let (reseller, charge_number) = (order.reseller_id, charge.number);
        let index = self.orders.made();
        self.set_holders(&order.cards, Holder::Sold(index));
        let product = self.products.get_mut(&order.sku).expect("checked");
        product.stock.available -= order.cards.len() as u64;
        product.stock.sold += order.cards.len() as u64;
        let currency = product.product.currency;
        self.order_index.insert(order.order_id.clone(), index);
        self.orders.push(reseller_order_record(order, currency));
        self.resellers.ledger.post(charge);
        self.resellers
            .charges
            .insert(index, (reseller, charge_number));
        let state = self.resellers.accounts.get_mut(&reseller).expect("checked");
        state.orders.push(index);
        if let Some(idempotency) = &order.idempotency {
            let first = (index, idempotency.fingerprint);
            state.idempotency.insert(idempotency.key.clone(), first);
        }
        state.stream.push(StreamEntry {
            seq: order.stream_seq,
            order_index: index,
            status: OrderStatus::Delivered,
        });
        Ok(Touched {
            sku: Some(order.sku.clone()),
            order: Some(order.order_id.clone()),
            order_created: true,
            cards: order.cards.clone(),
            reseller: Some(reseller),
            ledger_entry: Some(charge_number),
            stream: Some((reseller, order.stream_seq)),
            ..Touched::default()
        })
    }

    /// A webhook delivery settled: any unsettled seq of the stream (each event has its own
    /// retry schedule); the cursor then moves past every settled seq right after it, and a
    /// parked event joins the parked list. Touches no row: the webhook state lives in the
    /// log only.
    pub(super) fn apply_webhook_settled(
        &mut self,
        id: ResellerId,
        seq: u64,
        parked: bool,
    ) -> Result<Touched, Violation> {
        let state = self.account_mut(id, "webhook of unknown reseller")?;
        ensure!(
            seq > state.webhook_cursor && !state.webhook_settled_ahead.contains(&seq),
            "webhook {id}-{seq} settled twice (cursor {})",
            state.webhook_cursor
        );
        ensure!(
            seq <= state.stream.len() as u64,
            "webhook {id}-{seq} is past the stream"
        );
        state.webhook_settled_ahead.insert(seq);
        while state
            .webhook_settled_ahead
            .remove(&(state.webhook_cursor + 1))
        {
            state.webhook_cursor += 1;
        }
        if parked {
            state.webhook_parked.insert(seq);
        }
        Ok(Touched::default())
    }

    /// An operator's replay of a parked webhook was acknowledged.
    pub(super) fn apply_webhook_replayed(
        &mut self,
        id: ResellerId,
        seq: u64,
    ) -> Result<Touched, Violation> {
        let state = self.account_mut(id, "webhook of unknown reseller")?;
        ensure!(
            state.webhook_parked.remove(&seq),
            "webhook {id}-{seq} replayed but not parked"
        );
        Ok(Touched::default())
    }

    /// Re-derives the resellers' invariants: the ledger, one charge per reseller order,
    /// streams without gaps.
    pub(super) fn check_resellers(&self, violations: &mut Vec<Violation>) {
        violations.extend(self.resellers.ledger.check().into_iter().map(Violation));
        if self.resellers.by_key.len() != self.resellers.accounts.len() {
            violations.push(Violation(format!(
                "{} API keys indexed for {} resellers",
                self.resellers.by_key.len(),
                self.resellers.accounts.len()
            )));
        }
        let mut charged: HashMap<&OrderId, u32> = HashMap::new();
        for entry in self.resellers.ledger.entries() {
            if let EntryKind::Charge(order_id) = &entry.kind {
                *charged.entry(order_id).or_default() += 1;
                let owner = self.reseller_of_order(order_id);
                if owner != Some(entry.reseller()) {
                    violations.push(Violation(format!(
                        "charge {} is for {order_id}, not an order of {}",
                        entry.number,
                        entry.reseller()
                    )));
                }
            }
        }
        for state in self.resellers.accounts.values() {
            self.check_reseller(state, &charged, violations);
        }
    }

    fn check_reseller(
        &self,
        state: &ResellerState,
        charged: &HashMap<&OrderId, u32>,
        violations: &mut Vec<Violation>,
    ) {
        let reseller = state.reseller.reseller_id;
        if self.resellers.by_key.get(&state.reseller.api_key_sha256) != Some(&reseller) {
            violations.push(Violation(format!(
                "{reseller}: its API key is not the one indexed"
            )));
        }
        for index in &state.orders {
            let Some(record) = self.orders.hot(*index) else {
                violations.push(Violation(format!(
                    "{reseller}: order {index} is not in memory"
                )));
                continue;
            };
            let id = &record.created.order_id;
            if charged.get(id).copied() != Some(1) {
                violations.push(Violation(format!(
                    "{reseller}: order {id} not charged once"
                )));
            }
            let amount = self.reseller_charge(id).map(|e| e.amount_cents);
            if amount != Some(record.created.amount_cents) {
                violations.push(Violation(format!("{reseller}: order {id} charge differs")));
            }
        }
        if state.webhook_cursor > state.stream.len() as u64 {
            violations.push(Violation(format!(
                "{reseller}: webhook cursor {} past the stream",
                state.webhook_cursor
            )));
        }
        if let Some(last) = state.webhook_settled_ahead.last() {
            if *last > state.stream.len() as u64 {
                violations.push(Violation(format!(
                    "{reseller}: webhook {last} settled past the stream"
                )));
            }
        }
        let cursor = state.webhook_cursor;
        if state
            .webhook_settled_ahead
            .first()
            .is_some_and(|first| *first <= cursor + 1)
        {
            violations.push(Violation(format!(
                "{reseller}: a webhook settled ahead is not past the cursor's gap"
            )));
        }
        for seq in &state.webhook_parked {
            if *seq > state.webhook_cursor && !state.webhook_settled_ahead.contains(seq) {
                violations.push(Violation(format!(
                    "{reseller}: parked webhook {seq} never settled"
                )));
            }
        }
        for (position, entry) in state.stream.iter().enumerate() {
            if entry.seq != position as u64 + 1 {
                violations.push(Violation(format!(
                    "{reseller}: stream seq {} at position {}",
                    entry.seq,
                    position + 1
                )));
            }
            if self.resellers.charges.get(&entry.order_index).map(|c| c.0) != Some(reseller) {
                violations.push(Violation(format!(
                    "{reseller}: stream event {} for another's order",
                    entry.seq
                )));
            }
        }
    }
}

/// The ordinary order record of a reseller order: delivered at creation, paid from the
/// balance (the payment's trade number is the reseller id).
fn reseller_order_record(order: &ResellerOrder, currency: crate::Currency) -> OrderRecord {
    let payment = Payment {
        channel: RESELLER_CHANNEL.into(),
        gateway_trade_no: order.reseller_id.to_string().into(),
        amount_cents: order.amount_cents,
    };
    OrderRecord {
        created: std::sync::Arc::new(NewOrder {
            order_id: order.order_id.clone(),
            token: crate::ids::stored_token(&order.token),
            trace_id: order.trace_id.clone(),
            sku: order.sku.clone(),
            quantity: order.cards.len() as u32,
            amount_cents: order.amount_cents,
            currency,
            contact: order.reseller_id.to_string(),
            channel: RESELLER_CHANNEL.into(),
            payment_channel: RESELLER_CHANNEL.into(),
            payment_url: String::new(),
            payment_ref: String::new(),
            created_at_ms: order.created_at_ms,
            expires_at_ms: order.created_at_ms,
            cards: order.cards.clone(),
            // The reseller's key lives in its own scope, never in the buyers' one.
            idempotency: None,
        }),
        status: OrderStatus::Delivered,
        cards: order.cards.clone(),
        payment: Some(payment),
        paid_at_ms: Some(order.created_at_ms),
        settled_at_ms: Some(order.created_at_ms),
        review_reason: None,
    }
}
