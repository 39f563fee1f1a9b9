//! Resellers in the simulator: accounts opened, balances topped up and corrected, bulk
//! purchases straight from the pools, webhook deliveries settled or parked, keys rotated and
//! discounts changed, a rare revocation, all under the same crashes and torn tails as the
//! buyers' orders.
//!
//! The model is what the simulated operators and resellers were told was durable: per
//! account its balance, stream seq, webhook cursor, key hash, discount, revocation, and its
//! webhook secret, which is sealed as the actors seal it and must open after any crash.
//! After every step the recovered state must equal it; after a crash around one commit the
//! state must be exactly the account before that event or exactly after it, never anything
//! else (a half-applied purchase, a lost top-up, a gap in the stream).

use std::collections::{BTreeMap, BTreeSet};

use actors::seal::Sealer;
use engine::events::{BalanceChange, NewReseller, ResellerChange, ResellerOrder};
use engine::ledger::wholesale_charge_cents;
use engine::{Event, OrderId, ResellerId, Sku};

use super::cards::SEALING_KEY;
use super::{give_back, Crashed, World, PRODUCTS};

/// Accounts the simulator opens.
const RESELLERS: u64 = 2;
/// The largest bulk purchase it tries.
const QUANTITY_MAX: u64 = 5;

/// One account as acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Account {
    balance_cents: u64,
    stream_seq: u64,
    webhook_cursor: u64,
    /// Settled seqs past the cursor (each event has its own retry schedule).
    settled_ahead: BTreeSet<u64>,
    parked: u64,
    /// The API key hash's first 8 bytes (enough to tell keys apart, short to print).
    key: u64,
    /// The webhook secret, opened (what it must still open to after any crash).
    webhook_secret: String,
    discount_bp: u32,
    revoked: bool,
}

#[derive(Default)]
pub(super) struct Model {
    accounts: BTreeMap<ResellerId, Account>,
}

fn key_id(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

impl World {
    fn random_key(&mut self) -> [u8; 32] {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        key
    }

    /// The account as the recovered state has it.
    fn observed(&self, id: ResellerId) -> Option<Account> {
        let state = self.store().state();
        let account = state.reseller(id)?;
        Some(Account {
            balance_cents: state.ledger().balance_cents(id)?,
            stream_seq: state.stream_seq(id),
            webhook_cursor: account.webhook_cursor,
            settled_ahead: account.webhook_settled_ahead.clone(),
            parked: account.webhook_parked.len() as u64,
            key: key_id(&account.reseller.api_key_sha256),
            webhook_secret: Sealer::new(&SEALING_KEY)
                .open(&account.reseller.webhook_secret, &id.to_string())
                .unwrap_or_else(|error| format!("does not open: {error}")),
            discount_bp: account.reseller.discount_bp,
            revoked: account.revoked_at_ms.is_some(),
        })
    }

    /// A fresh webhook secret, and its sealed form for `id`, as the actors make them.
    fn sealed_secret(&mut self, id: ResellerId) -> (String, String) {
        let secret = format!("whsec_{:016x}", self.rng.next_u64());
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes()[..4]);
        let sealed = Sealer::new(&SEALING_KEY).seal(&secret, &id.to_string(), nonce);
        (secret, sealed)
    }

    pub(super) fn setup_resellers(&mut self) {
        for n in 1..=RESELLERS {
            let id = ResellerId(n);
            while self.observed(id).is_none() {
                let (_, sealed) = self.sealed_secret(id);
                let new = NewReseller {
                    reseller_id: id,
                    name: format!("simulated reseller {n}"),
                    api_key_sha256: self.random_key(),
                    webhook_secret: sealed,
                    webhook_url: Some("http://hooks.invalid/".into()),
                    discount_bp: self.rng.below(3_000) as u32,
                    created_at_ms: self.now_ms,
                };
                let _ = self.commit(&Event::ResellerCreated(Box::new(new)));
            }
            let opened = self.observed(id).expect("opened");
            self.resellers.accounts.insert(id, opened);
        }
    }

    /// Commits one event about `id` that should turn the account into `after`. On a crash
    /// around it, the recovered account must be the one before or `after`, and is adopted.
    fn commit_reseller(&mut self, id: ResellerId, event: &Event, after: Account) -> bool {
        let before = self.resellers.accounts[&id].clone();
        match self.commit(event) {
            Ok(()) => {
                self.resellers.accounts.insert(id, after);
                true
            }
            Err(Crashed) => self.adopt_reseller(id, &before, after),
        }
    }

    /// After a crash around one event about `id`: the recovered account must be the one
    /// before it or `after`, and becomes the acknowledged one. True if the event survived.
    fn adopt_reseller(&mut self, id: ResellerId, before: &Account, after: Account) -> bool {
        let now = self.observed(id);
        if now.as_ref() != Some(before) && now.as_ref() != Some(&after) {
            self.violation(format!(
                "reseller {id} after a crash around one event: {now:?}, \
                 neither {before:?} nor {after:?}"
            ));
        }
        let Some(now) = now else { return false };
        let applied = now == after;
        self.resellers.accounts.insert(id, now);
        applied
    }

    /// A top-up committed but not yet acknowledged when the process dies: its frame may
    /// survive, be cut or be torn. Returns what to adopt after the restart.
    pub(super) fn top_up_in_flight(&mut self) -> Option<(ResellerId, Account, Account)> {
        let id = ResellerId(1);
        let before = self.resellers.accounts.get(&id)?.clone();
        let amount_cents = 1 + self.rng.below(1_000);
        let change = BalanceChange::TopUp { amount_cents };
        let (event, after) = self.balance_event(id, &before, change, "in flight at the crash");
        let durable = self.store().commit(&event).ok()?;
        drop(durable);
        Some((id, before, after))
    }

    /// An operator's balance change of `account`, and the account it leaves.
    fn balance_event(
        &self,
        id: ResellerId,
        account: &Account,
        change: BalanceChange,
        note: &str,
    ) -> (Event, Account) {
        let balance_cents = match change {
            BalanceChange::TopUp { amount_cents } => account.balance_cents + amount_cents,
            BalanceChange::Correction { amount_cents } => account.balance_cents - amount_cents,
        };
        let event = Event::BalanceChanged {
            reseller_id: id,
            change,
            note: note.into(),
            at_ms: self.now_ms,
        };
        let after = Account {
            balance_cents,
            ..account.clone()
        };
        (event, after)
    }

    pub(super) fn adopt_in_flight(&mut self, in_flight: Option<(ResellerId, Account, Account)>) {
        if let Some((id, before, after)) = in_flight {
            self.adopt_reseller(id, &before, after);
        }
    }

    pub(super) fn reseller_step(&mut self) {
        let id = ResellerId(1 + self.rng.below(RESELLERS));
        let account = self.resellers.accounts[&id].clone();
        let at_ms = self.now_ms;
        match self.rng.below(100) {
            0..=24 => {
                let amount_cents = 100 + self.rng.below(3_000);
                let change = BalanceChange::TopUp { amount_cents };
                let (event, after) = self.balance_event(id, &account, change, "simulated top-up");
                self.commit_reseller(id, &event, after);
            }
            25..=34 if account.balance_cents > 0 => {
                let amount_cents = 1 + self.rng.below(account.balance_cents);
                let change = BalanceChange::Correction { amount_cents };
                let (event, after) =
                    self.balance_event(id, &account, change, "simulated correction");
                self.commit_reseller(id, &event, after);
            }
            35..=74 if !account.revoked => self.bulk_purchase(id, account),
            75..=89 if account.webhook_cursor < account.stream_seq => {
                // Half the time the next seq, else any unsettled one: deliveries settle in
                // any order.
                let unsettled: Vec<u64> = (account.webhook_cursor + 1..=account.stream_seq)
                    .filter(|seq| !account.settled_ahead.contains(seq))
                    .collect();
                let seq = if self.rng.percent(50) {
                    unsettled[0]
                } else {
                    unsettled[self.rng.below(unsettled.len() as u64) as usize]
                };
                let parked = self.rng.percent(20);
                let event = if parked {
                    Event::WebhookParked {
                        reseller_id: id,
                        seq,
                        attempts: 10,
                        at_ms,
                    }
                } else {
                    Event::WebhookDelivered {
                        reseller_id: id,
                        seq,
                        at_ms,
                    }
                };
                let mut settled_ahead = account.settled_ahead.clone();
                settled_ahead.insert(seq);
                let mut webhook_cursor = account.webhook_cursor;
                while settled_ahead.remove(&(webhook_cursor + 1)) {
                    webhook_cursor += 1;
                }
                let after = Account {
                    webhook_cursor,
                    settled_ahead,
                    parked: account.parked + u64::from(parked),
                    ..account
                };
                self.commit_reseller(id, &event, after);
            }
            90..=98 if !account.revoked => {
                let choice = self.rng.below(3);
                let (change, after) = if choice == 2 {
                    let (secret, sealed) = self.sealed_secret(id);
                    let after = Account {
                        webhook_secret: secret,
                        ..account.clone()
                    };
                    let change = ResellerChange::WebhookSecretRotated {
                        webhook_secret: sealed,
                    };
                    (change, after)
                } else if choice == 1 {
                    let key = self.random_key();
                    let after = Account {
                        key: key_id(&key),
                        ..account.clone()
                    };
                    (
                        ResellerChange::ApiKeyRotated {
                            api_key_sha256: key,
                        },
                        after,
                    )
                } else {
                    let discount_bp = self.rng.below(5_000) as u32;
                    let after = Account {
                        discount_bp,
                        ..account.clone()
                    };
                    (ResellerChange::DiscountSet { discount_bp }, after)
                };
                let event = Event::ResellerUpdated {
                    reseller_id: id,
                    change,
                    at_ms,
                };
                self.commit_reseller(id, &event, after);
            }
            99 if !account.revoked && self.rng.percent(10) => {
                let event = Event::ResellerRevoked {
                    reseller_id: id,
                    at_ms,
                };
                let after = Account {
                    revoked: true,
                    ..account
                };
                self.commit_reseller(id, &event, after);
            }
            _ => {}
        }
    }

    /// Keys straight from the pools to the reseller, charged at its discount, only when the
    /// balance covers them (as the actors plan it).
    fn bulk_purchase(&mut self, id: ResellerId, account: Account) {
        let sku = Sku::parse(PRODUCTS[self.rng.below(2) as usize].0).unwrap();
        let quantity = 1 + self.rng.below(QUANTITY_MAX) as u32;
        let price = self
            .store()
            .state()
            .product(&sku)
            .expect("sku")
            .product
            .price_cents;
        let amount_cents =
            wholesale_charge_cents(price, quantity, account.discount_bp).expect("small amounts");
        if amount_cents > account.balance_cents {
            return;
        }
        let Some(cards) = self.reserve(&sku, quantity as usize) else {
            return;
        };
        let order = ResellerOrder {
            order_id: OrderId::generate(self.now_ms, self.rng.next_u64()),
            reseller_id: id,
            token: engine::ids::token_digest(&engine::ids::hex128(u128::from(self.rng.next_u64()))),
            trace_id: engine::ids::hex128(u128::from(self.rng.next_u64())),
            sku: sku.clone(),
            cards: cards.clone(),
            amount_cents,
            idempotency: None,
            stream_seq: account.stream_seq + 1,
            created_at_ms: self.now_ms,
        };
        let after = Account {
            balance_cents: account.balance_cents - amount_cents,
            stream_seq: account.stream_seq + 1,
            ..account
        };
        let event = Event::ResellerOrderPlaced(Box::new(order));
        let (crashes, rebuilds) = (self.outcome.crashes, self.pool_rebuilds);
        if self.commit_reseller(id, &event, after) {
            self.outcome.reseller_orders += 1;
        } else if self.outcome.crashes == crashes && self.pool_rebuilds == rebuilds {
            // Refused, or of unknown outcome on the same leader: the cards go back. After a
            // crash or a change of leader the pools were rebuilt from the state instead, and
            // hold them already (giving them back again returned a key twice).
            let shards = self.pools.get_mut(&sku).expect("pool");
            give_back(shards, &cards);
        }
    }

    /// Every account as acknowledged.
    pub(super) fn check_resellers(&mut self, step: u64) {
        let mut lost = Vec::new();
        for (id, acked) in &self.resellers.accounts {
            let now = self.observed(*id);
            if now.as_ref() != Some(acked) {
                lost.push(format!(
                    "step {step}: reseller {id} is {now:?}, acknowledged {acked:?}"
                ));
            }
        }
        for problem in lost {
            self.violation(problem);
        }
    }
}
