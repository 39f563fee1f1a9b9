//! The resellers' prepaid money: a pure double-entry ledger.
//!
//! Every movement is one `Entry` that debits one account and credits another by the same
//! amount, so the accounts always sum to zero. A reseller's prepaid balance is what the shop
//! owes them (a liability): a top-up moves money from `Funding` to the reseller, a correction
//! moves it back, a charge moves it from the reseller to `Sales`.
//!
//! Invariants (asserted on every post, re-derived by `check`): a reseller's balance is the sum
//! of its entries and never below 0; per reseller, top-ups - corrections = charges + balance.
//!
//! Key decision: the wholesale discount is integer basis points and one rounding rule,
//! `charge = floor(price * quantity * (10000 - discount_bp) / 10000)`, computed in u128: the
//! reseller never pays more than the discounted price and no float touches an amount.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use crate::ids::{OrderId, ResellerId};
use crate::money::AMOUNT_CENTS_MAX;

/// Basis points in one whole (100 %).
pub const BASIS_POINTS_PER_UNIT: u32 = 10_000;
/// Largest wholesale discount: 100 % (free keys) is allowed, more is not.
pub const DISCOUNT_BP_MAX: u32 = BASIS_POINTS_PER_UNIT;
/// Largest balance a reseller may hold (ten million units of the currency).
pub const BALANCE_CENTS_MAX: u64 = 1_000_000_000;
/// Largest single top-up or correction.
pub const ADJUSTMENT_CENTS_MAX: u64 = AMOUNT_CENTS_MAX;
const _: () = assert!(ADJUSTMENT_CENTS_MAX <= BALANCE_CENTS_MAX);
const _: () = assert!(BALANCE_CENTS_MAX <= i64::MAX as u64);

/// What a wholesale purchase of `quantity` keys at `price_cents` costs a reseller with
/// `discount_bp`: rounded down (in the reseller's favour). `None` above `DISCOUNT_BP_MAX`
/// or when the amount does not fit in u64.
pub fn wholesale_charge_cents(price_cents: u64, quantity: u32, discount_bp: u32) -> Option<u64> {
    if discount_bp > DISCOUNT_BP_MAX {
        return None;
    }
    let gross = u128::from(price_cents) * u128::from(quantity);
    let net =
        gross * u128::from(BASIS_POINTS_PER_UNIT - discount_bp) / u128::from(BASIS_POINTS_PER_UNIT);
    debug_assert!(net <= gross);
    u64::try_from(net).ok()
}

/// An account of the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum Account {
    /// Money from outside (the reseller's bank transfer) and back out.
    Funding,
    /// A reseller's prepaid balance.
    Reseller(ResellerId),
    /// The shop's revenue from wholesale purchases.
    Sales,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum EntryKind {
    TopUp,
    Correction,
    /// The one charge of a reseller order.
    Charge(OrderId),
}

/// One posted movement, numbered from 1 in posting order.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Entry {
    pub number: u64,
    pub kind: EntryKind,
    pub debit: Account,
    pub credit: Account,
    pub amount_cents: u64,
    /// The reseller's balance right after this entry (the answer it was given).
    pub balance_after_cents: u64,
}

impl Entry {
    /// The reseller whose balance the entry moves.
    pub fn reseller(&self) -> ResellerId {
        match (self.debit, self.credit) {
            (Account::Reseller(id), _) | (_, Account::Reseller(id)) => id,
            _ => unreachable!("every entry moves a reseller's balance"),
        }
    }
}

/// Why an entry cannot be posted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerRefusal {
    #[error("no such reseller account")]
    UnknownAccount,
    #[error("the balance would go below 0")]
    InsufficientBalance,
    #[error("the balance would exceed its maximum")]
    BalanceTooLarge,
    #[error("a top-up or correction must be 1 to {ADJUSTMENT_CENTS_MAX} cents")]
    BadAmount,
}

/// Sums of one reseller's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Totals {
    pub topped_up_cents: u128,
    pub corrected_cents: u128,
    pub charged_cents: u128,
    pub balance_cents: u64,
}

impl Totals {
    fn after(mut self, kind: &EntryKind, amount_cents: u64) -> Result<Totals, LedgerRefusal> {
        let amount = u128::from(amount_cents);
        match kind {
            EntryKind::TopUp => {
                self.topped_up_cents += amount;
                self.balance_cents = self
                    .balance_cents
                    .checked_add(amount_cents)
                    .filter(|b| *b <= BALANCE_CENTS_MAX)
                    .ok_or(LedgerRefusal::BalanceTooLarge)?;
            }
            EntryKind::Correction | EntryKind::Charge(_) => {
                self.balance_cents = self
                    .balance_cents
                    .checked_sub(amount_cents)
                    .ok_or(LedgerRefusal::InsufficientBalance)?;
                if matches!(kind, EntryKind::Correction) {
                    self.corrected_cents += amount;
                } else {
                    self.charged_cents += amount;
                }
            }
        }
        Ok(self)
    }

    /// top-ups - corrections = charges + balance.
    pub fn is_balanced(&self) -> bool {
        self.topped_up_cents
            == self.corrected_cents + self.charged_cents + u128::from(self.balance_cents)
    }
}

#[derive(Default, Debug, Encode, Decode)]
pub struct Ledger {
    entries: Vec<Entry>,
    accounts: BTreeMap<ResellerId, Totals>,
}

impl Ledger {
    /// Opens a reseller's account at 0. Opening one twice is a caller bug.
    pub fn open(&mut self, reseller: ResellerId) {
        let previous = self.accounts.insert(reseller, Totals::default());
        assert!(previous.is_none(), "account {reseller} opened twice");
    }

    pub fn totals(&self, reseller: ResellerId) -> Option<Totals> {
        self.accounts.get(&reseller).copied()
    }

    pub fn balance_cents(&self, reseller: ResellerId) -> Option<u64> {
        self.totals(reseller).map(|t| t.balance_cents)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, number: u64) -> Option<&Entry> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.entries.get(index)
    }

    /// The entry `kind` of `amount_cents` would post, without posting it.
    pub fn plan(
        &self,
        reseller: ResellerId,
        kind: EntryKind,
        amount_cents: u64,
    ) -> Result<Entry, LedgerRefusal> {
        let totals = self
            .accounts
            .get(&reseller)
            .ok_or(LedgerRefusal::UnknownAccount)?;
        let adjustment = !matches!(kind, EntryKind::Charge(_));
        if adjustment && !(1..=ADJUSTMENT_CENTS_MAX).contains(&amount_cents) {
            return Err(LedgerRefusal::BadAmount);
        }
        let after = totals.after(&kind, amount_cents)?;
        let account = Account::Reseller(reseller);
        let (debit, credit) = match kind {
            EntryKind::TopUp => (Account::Funding, account),
            EntryKind::Correction => (account, Account::Funding),
            EntryKind::Charge(_) => (account, Account::Sales),
        };
        Ok(Entry {
            number: self.entries.len() as u64 + 1,
            kind,
            debit,
            credit,
            amount_cents,
            balance_after_cents: after.balance_cents,
        })
    }

    /// Posts an entry `plan` returned (and nothing posted since). Panics on anything else:
    /// a posted entry that breaks the ledger is corruption, never a refusal.
    pub fn post(&mut self, entry: Entry) {
        assert_eq!(
            entry.number,
            self.entries.len() as u64 + 1,
            "entry out of order"
        );
        let reseller = entry.reseller();
        let totals = self.accounts.get_mut(&reseller).expect("planned account");
        let after = totals
            .after(&entry.kind, entry.amount_cents)
            .expect("planned entry posts");
        assert_eq!(after.balance_cents, entry.balance_after_cents);
        assert!(after.is_balanced(), "ledger of {reseller} unbalanced");
        *totals = after;
        self.entries.push(entry);
    }

    /// Re-derives every account from the entries; returns each broken invariant.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut derived: BTreeMap<ResellerId, Totals> = BTreeMap::new();
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.number != index as u64 + 1 {
                problems.push(format!("ledger entry {} out of order", entry.number));
            }
            if entry.debit == entry.credit {
                problems.push(format!("ledger entry {} moves nothing", entry.number));
            }
            let reseller = entry.reseller();
            let totals = derived.entry(reseller).or_default();
            match totals.after(&entry.kind, entry.amount_cents) {
                Ok(after) if after.balance_cents == entry.balance_after_cents => *totals = after,
                Ok(_) => problems.push(format!("ledger entry {} balance wrong", entry.number)),
                Err(refusal) => problems.push(format!("ledger entry {}: {refusal}", entry.number)),
            }
        }
        for (reseller, totals) in &self.accounts {
            let want = derived.get(reseller).copied().unwrap_or_default();
            if *totals != want {
                problems.push(format!(
                    "{reseller}: totals {totals:?} but entries say {want:?}"
                ));
            }
            if !totals.is_balanced() {
                problems.push(format!(
                    "{reseller}: top-ups - corrections != charges + balance"
                ));
            }
        }
        if derived.keys().any(|id| !self.accounts.contains_key(id)) {
            problems.push("ledger entries for an account never opened".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order(n: u64) -> OrderId {
        OrderId::generate(n, n)
    }

    #[test]
    fn discount_rounds_down_in_integer_arithmetic() {
        assert_eq!(wholesale_charge_cents(1000, 3, 0), Some(3000));
        assert_eq!(wholesale_charge_cents(999, 1, 1500), Some(849)); // 849.15
        assert_eq!(wholesale_charge_cents(1, 1, 5000), Some(0)); // 0.5
        assert_eq!(wholesale_charge_cents(1000, 1, 10_000), Some(0));
        assert_eq!(wholesale_charge_cents(1000, 1, 10_001), None);
        assert_eq!(wholesale_charge_cents(u64::MAX, u32::MAX, 0), None);
    }

    #[test]
    fn charges_never_overdraw() {
        let mut ledger = Ledger::default();
        let id = ResellerId(1);
        ledger.open(id);
        let top_up = ledger.plan(id, EntryKind::TopUp, 500).unwrap();
        ledger.post(top_up);
        assert_eq!(
            ledger.plan(id, EntryKind::Charge(order(1)), 501),
            Err(LedgerRefusal::InsufficientBalance)
        );
        let charge = ledger.plan(id, EntryKind::Charge(order(1)), 500).unwrap();
        ledger.post(charge);
        assert_eq!(ledger.balance_cents(id), Some(0));
        assert_eq!(
            ledger.plan(id, EntryKind::Correction, 1),
            Err(LedgerRefusal::InsufficientBalance)
        );
        assert!(ledger.check().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        TopUp(u8, u64),
        Correct(u8, u64),
        Charge(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let amount = prop_oneof![0u64..2_000, 0u64..=ADJUSTMENT_CENTS_MAX + 1];
        (0u8..3, 0u8..4, amount).prop_map(|(kind, who, amount)| match kind {
            0 => Op::TopUp(who, amount),
            1 => Op::Correct(who, amount),
            _ => Op::Charge(who, amount),
        })
    }

    proptest! {
        /// The ledger against a model of plain signed balances: the same operations are
        /// accepted, balances agree and never go below 0, and `check` finds nothing.
        #[test]
        fn ledger_matches_a_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut ledger = Ledger::default();
            let mut model: BTreeMap<u8, i128> = BTreeMap::new();
            for who in 0..3u8 {
                ledger.open(ResellerId(u64::from(who)));
                model.insert(who, 0);
            }
            for (n, op) in ops.into_iter().enumerate() {
                let (who, kind, amount, sign) = match op {
                    Op::TopUp(w, a) => (w, EntryKind::TopUp, a, 1i128),
                    Op::Correct(w, a) => (w, EntryKind::Correction, a, -1),
                    Op::Charge(w, a) => (w, EntryKind::Charge(order(n as u64)), a, -1),
                };
                let adjustment = !matches!(kind, EntryKind::Charge(_));
                let planned = ledger.plan(ResellerId(u64::from(who)), kind, amount);
                let Some(balance) = model.get(&who).copied() else {
                    prop_assert_eq!(planned, Err(LedgerRefusal::UnknownAccount));
                    continue;
                };
                let next = balance + sign * i128::from(amount);
                let bad_amount = adjustment && !(1..=ADJUSTMENT_CENTS_MAX).contains(&amount);
                let fits = next >= 0 && next <= i128::from(BALANCE_CENTS_MAX);
                prop_assert_eq!(planned.is_ok(), !bad_amount && fits);
                if let Ok(entry) = planned {
                    ledger.post(entry);
                    model.insert(who, next);
                }
            }
            for (who, balance) in model {
                prop_assert_eq!(
                    ledger.balance_cents(ResellerId(u64::from(who))).map(i128::from),
                    Some(balance)
                );
            }
            prop_assert!(ledger.check().is_empty());
        }

        /// The discount never charges more than list price, and never less than the exact
        /// discounted price minus one cent.
        #[test]
        fn discount_is_floor_of_exact(
            price in 1u64..=AMOUNT_CENTS_MAX, quantity in 1u32..1000, bp in 0u32..=DISCOUNT_BP_MAX
        ) {
            let charge = u128::from(wholesale_charge_cents(price, quantity, bp).unwrap());
            let gross = u128::from(price) * u128::from(quantity);
            let exact_times_unit = gross * u128::from(BASIS_POINTS_PER_UNIT - bp);
            prop_assert!(charge <= gross);
            prop_assert!(charge * 10_000 <= exact_times_unit);
            prop_assert!(exact_times_unit < (charge + 1) * 10_000);
        }
    }
}
