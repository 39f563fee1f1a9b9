//! The simulated gateways (Epay, Alipay and WeChat Pay direct): they take payments, send
//! signed notifies (delayed, duplicated, reordered by their delays, sometimes forged,
//! sometimes replayed later by someone who captured one), and retry with backoff until the
//! shop answers `success`, as real gateways do. The wire forms are in `direct.rs`.

use std::collections::BTreeMap;

use engine::money::format_cents;
use engine::payment::epay_sign;
use engine::OrderId;

use super::{Faults, Rng, MERCHANT_KEY, MERCHANT_PID};

/// First retry delay; it doubles per attempt up to `RETRY_MS_MAX`.
pub const RETRY_MS_FIRST: u64 = 5_000;
pub const RETRY_MS_MAX: u64 = 10 * 60 * 1000;

/// The protocol an order pays through (its `payment_channel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Epay,
    Alipay,
    Wechat,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Epay, Protocol::Alipay, Protocol::Wechat];

    pub fn channel(self) -> &'static str {
        match self {
            Protocol::Epay => "epay",
            Protocol::Alipay => "alipay",
            Protocol::Wechat => "wechat",
        }
    }

    pub fn of_channel(channel: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| p.channel() == channel)
            .unwrap_or(Protocol::Epay)
    }
}

#[derive(Clone, Debug)]
pub struct Notify {
    pub order_id: OrderId,
    pub protocol: Protocol,
    pub trade_no: String,
    pub amount_cents: u64,
    /// Signed with the wrong key or carrying a tampered amount: must be refused.
    pub forged: bool,
    /// A genuine notify captured when it was signed (at this simulated time) and replayed
    /// unchanged by someone else: WeChat Pay's refuse it once its timestamp is stale.
    pub replay_signed_at_ms: Option<u64>,
    pub attempt: u32,
}

/// How late a captured notify may be replayed.
pub const REPLAY_DELAY_MS_MAX: u64 = 15 * 60 * 1000;

#[derive(Default)]
pub struct Gateway {
    queue: BTreeMap<(u64, u64), Notify>,
    paid: BTreeMap<OrderId, String>,
    sequence: u64,
}

impl Gateway {
    pub fn is_paid(&self, id: &OrderId) -> bool {
        self.paid.contains_key(id)
    }

    pub fn paid_orders(&self) -> Vec<OrderId> {
        self.paid.keys().cloned().collect()
    }

    fn schedule(&mut self, at_ms: u64, notify: Notify) {
        self.sequence += 1;
        self.queue.insert((at_ms, self.sequence), notify);
    }

    /// The buyer pays; notifies are scheduled with the seed's faults.
    pub fn pay(
        &mut self,
        rng: &mut Rng,
        faults: &Faults,
        now_ms: u64,
        (id, protocol): (&OrderId, Protocol),
        amount_cents: u64,
    ) {
        let trade_no = format!("T{id}");
        self.paid.insert(id.clone(), trade_no.clone());
        let notify = Notify {
            order_id: id.clone(),
            protocol,
            trade_no,
            amount_cents,
            forged: false,
            replay_signed_at_ms: None,
            attempt: 0,
        };
        if rng.percent(faults.notify_replay_percent) {
            let signed_at_ms = now_ms + rng.below(faults.notify_delay_ms_max + 1);
            let replay = Notify {
                replay_signed_at_ms: Some(signed_at_ms),
                ..notify.clone()
            };
            self.schedule(signed_at_ms + rng.below(REPLAY_DELAY_MS_MAX + 1), replay);
        }
        let copies = if rng.percent(faults.notify_duplicate_percent) {
            2 + rng.below(2)
        } else {
            1
        };
        for _ in 0..copies {
            let delay = rng.below(faults.notify_delay_ms_max + 1);
            self.schedule(now_ms + delay, notify.clone());
        }
        if rng.percent(faults.notify_forge_percent) {
            let forged = Notify {
                forged: true,
                ..notify
            };
            let delay = rng.below(faults.notify_delay_ms_max + 1);
            self.schedule(now_ms + delay, forged);
        }
    }

    pub fn next_due(&self) -> Option<u64> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    pub fn pop_due(&mut self, now_ms: u64) -> Option<Notify> {
        let (&key, _) = self
            .queue
            .iter()
            .next()
            .filter(|((at, _), _)| *at <= now_ms)?;
        self.queue.remove(&key)
    }

    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The shop answered `success`: this notify is done.
    pub fn acknowledged(&mut self, _notify: &Notify) {}

    /// No `success` (dropped, or the shop was down): try again later.
    pub fn retry(&mut self, mut notify: Notify, now_ms: u64) {
        let backoff = RETRY_MS_FIRST
            .saturating_mul(1 << notify.attempt.min(16))
            .min(RETRY_MS_MAX);
        notify.attempt += 1;
        self.schedule(now_ms + backoff, notify);
    }
}

/// The Epay notify's parameters as the gateway sends them, signed per the Epay rule.
pub fn signed_params(notify: &Notify) -> Vec<(String, String)> {
    let money = format_cents(notify.amount_cents);
    let mut params: Vec<(String, String)> = [
        ("pid", MERCHANT_PID),
        ("trade_no", notify.trade_no.as_str()),
        ("out_trade_no", notify.order_id.as_str()),
        ("type", "alipay"),
        ("name", "simulated"),
        ("money", money.as_str()),
        ("trade_status", "TRADE_SUCCESS"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let key = if notify.forged {
        "not-the-merchant-key"
    } else {
        MERCHANT_KEY
    };
    let sign = epay_sign(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), key);
    params.push(("sign".into(), sign));
    params.push(("sign_type".into(), "MD5".into()));
    params
}
