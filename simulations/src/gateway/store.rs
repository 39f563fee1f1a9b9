//! The simulator's memory: orders (bounded, oldest evicted first), the fault switches and the
//! seeded random generator. All of it sits behind one lock (`Shared::world`), so random
//! choices are drawn in the order requests arrive.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Most orders kept; creating one more evicts the oldest (paid or not).
pub const ORDERS_MAX: usize = 100_000;
/// Longest injected delay, for notifies and queries alike.
pub const FAULT_DELAY_MS_MAX: u64 = 10 * 60 * 1000;
/// Most deliveries recorded per order: one, two when duplicated, and a forged copy.
pub const DELIVERIES_PER_ORDER_MAX: usize = 3;

/// Which protocol an order came through.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Epay,
    Epusdt,
    Alipay,
    Wechat,
}

/// The fault switches; every one is off by default. Percentages are 0 to 100.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of payments whose notify is never sent, not even retried.
    pub notify_drop_percent: u32,
    /// Share of payments whose notify is sent twice, each copy with its own retries.
    pub notify_duplicate_percent: u32,
    /// How long each notify copy waits before its first attempt.
    pub notify_delay_ms: u64,
    /// Share of payments whose notify is preceded by a forged copy (signed with a key that
    /// is not the gateway's, the amount lowered to 0.01): the shop must refuse it.
    pub notify_forge_percent: u32,
    /// Share of create calls (`mapi.php`, epusdt create) answered with HTTP 500.
    pub create_fail_percent: u32,
    /// Share of order queries (`api.php`) answered with HTTP 500.
    pub query_fail_percent: u32,
    /// Every protocol endpoint answers 503; control endpoints keep working.
    pub outage: bool,
    /// How long each order query waits before answering, to test client timeouts.
    pub query_delay_ms: u64,
}

impl Faults {
    pub fn validate(&self) -> Result<(), &'static str> {
        let percents = [
            self.notify_drop_percent,
            self.notify_duplicate_percent,
            self.notify_forge_percent,
            self.create_fail_percent,
            self.query_fail_percent,
        ];
        if percents.iter().any(|p| *p > 100) {
            return Err("percentages must be between 0 and 100");
        }
        if self.notify_delay_ms > FAULT_DELAY_MS_MAX || self.query_delay_ms > FAULT_DELAY_MS_MAX {
            return Err("delays must be at most FAULT_DELAY_MS_MAX (600000 ms)");
        }
        Ok(())
    }
}

/// Where one copy of an order's notify stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOutcome {
    /// Queued, waiting or retrying.
    Pending,
    /// The shop answered the expected body (`success` or `ok`).
    Delivered,
    /// The drop fault fired: never sent.
    Dropped,
    /// Every attempt failed.
    GaveUp,
    /// The notify queue was full: never sent.
    Shed,
    /// A forged copy that the shop refused, as it must.
    Refused,
    /// A forged copy that the shop accepted: a bug in the shop.
    Accepted,
}

/// One copy of an order's notify, as `GET /control/orders` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// A forged copy (sent once, never retried).
    #[serde(default)]
    pub forged: bool,
    pub attempts: u32,
    pub outcome: NotifyOutcome,
    /// Why the last attempt failed, while it is pending or after giving up.
    pub last_error: Option<String>,
}

impl DeliveryView {
    fn new(outcome: NotifyOutcome) -> Self {
        Self {
            forged: false,
            attempts: 0,
            outcome,
            last_error: None,
        }
    }
}

/// An order as `GET /control/orders` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub channel: Channel,
    /// The gateway's id: Epay `trade_no`, epusdt `trade_id`.
    pub trade_no: String,
    /// The merchant's id: Epay `out_trade_no`, epusdt `order_id`.
    pub out_trade_no: String,
    /// The amount as the merchant sent it (epusdt: in shortest decimal form).
    pub money: String,
    pub notify_url: String,
    /// How the merchant created it: Alipay's method, WeChat Pay's `NATIVE`; empty for the
    /// aggregators.
    #[serde(default)]
    pub product: String,
    /// What was sold: Epay's `name`, Alipay's `subject`, WeChat Pay's `description`.
    #[serde(default)]
    pub subject: String,
    pub paid: bool,
    /// Closed by the merchant (Alipay's and WeChat Pay's close): it can no longer be paid.
    #[serde(default)]
    pub closed: bool,
    /// Empty until paid; then one entry per notify copy, a forged copy first.
    pub deliveries: Vec<DeliveryView>,
}

/// What only Epay orders carry.
#[derive(Clone, Debug)]
pub struct EpayDetails {
    pub pay_type: String,
    pub name: String,
    /// Passed back untouched in the notify, as real gateways do.
    pub param: String,
}

/// What only epusdt orders carry.
#[derive(Clone, Debug)]
pub struct EpusdtDetails {
    /// USDT due, in shortest decimal form.
    pub actual_amount: String,
    /// The fake TRC20 address the buyer pays to.
    pub address: String,
    /// Unix seconds after which a real epusdt would expire the order.
    pub expiration_time: u64,
    pub redirect_url: String,
    /// The fake chain transaction; set when paid.
    pub block_transaction_id: String,
}

/// What only Alipay orders carry.
#[derive(Clone, Debug)]
pub struct AlipayDetails {
    pub subject: String,
    /// The method that created it: `alipay.trade.page.pay`, `.wap.pay` or `.precreate`.
    pub method: String,
    pub return_url: String,
}

/// What only WeChat Pay orders carry.
#[derive(Clone, Debug)]
pub struct WechatDetails {
    pub description: String,
}

#[derive(Clone, Debug)]
pub enum Details {
    Epay(EpayDetails),
    Epusdt(EpusdtDetails),
    Alipay(AlipayDetails),
    Wechat(WechatDetails),
}

#[derive(Clone, Debug)]
pub struct Order {
    pub trade_no: String,
    pub out_trade_no: String,
    pub money: String,
    pub amount_cents: u64,
    pub notify_url: String,
    pub paid: bool,
    pub closed: bool,
    pub deliveries: Vec<DeliveryView>,
    pub details: Details,
}

impl Order {
    /// A new, unpaid order.
    pub fn new(
        trade_no: String,
        out_trade_no: String,
        amount_cents: u64,
        money: String,
        notify_url: String,
        details: Details,
    ) -> Self {
        Self {
            trade_no,
            out_trade_no,
            money,
            amount_cents,
            notify_url,
            paid: false,
            closed: false,
            deliveries: Vec::new(),
            details,
        }
    }

    pub fn channel(&self) -> Channel {
        match self.details {
            Details::Epay(_) => Channel::Epay,
            Details::Epusdt(_) => Channel::Epusdt,
            Details::Alipay(_) => Channel::Alipay,
            Details::Wechat(_) => Channel::Wechat,
        }
    }

    fn view(&self) -> OrderView {
        OrderView {
            channel: self.channel(),
            trade_no: self.trade_no.clone(),
            out_trade_no: self.out_trade_no.clone(),
            money: self.money.clone(),
            notify_url: self.notify_url.clone(),
            product: match &self.details {
                Details::Alipay(details) => details.method.clone(),
                Details::Wechat(_) => "NATIVE".into(),
                _ => String::new(),
            },
            subject: match &self.details {
                Details::Epay(details) => details.name.clone(),
                Details::Alipay(details) => details.subject.clone(),
                Details::Wechat(details) => details.description.clone(),
                Details::Epusdt(_) => String::new(),
            },
            paid: self.paid,
            closed: self.closed,
            deliveries: self.deliveries.clone(),
        }
    }
}

/// Orders by the gateway's id, indexed by the merchant's id, evicted oldest first.
#[derive(Default)]
pub struct Store {
    orders: HashMap<String, Order>,
    /// (channel, merchant's id) -> gateway's id.
    by_merchant: HashMap<(Channel, String), String>,
    /// Gateway ids, oldest first.
    arrival: VecDeque<String>,
}

impl Store {
    pub fn insert(&mut self, order: Order) {
        let key = (order.channel(), order.out_trade_no.clone());
        assert!(!self.by_merchant.contains_key(&key), "merchant id is new");
        assert!(
            !self.orders.contains_key(&order.trade_no),
            "gateway id is new"
        );
        if self.arrival.len() >= ORDERS_MAX {
            self.evict_oldest();
        }
        self.by_merchant.insert(key, order.trade_no.clone());
        self.arrival.push_back(order.trade_no.clone());
        self.orders.insert(order.trade_no.clone(), order);
        assert!(self.arrival.len() <= ORDERS_MAX);
        assert_eq!(self.arrival.len(), self.orders.len());
    }

    fn evict_oldest(&mut self) {
        let oldest = self.arrival.pop_front().expect("the store is full");
        let order = self
            .orders
            .remove(&oldest)
            .expect("arrival lists kept orders");
        self.by_merchant
            .remove(&(order.channel(), order.out_trade_no))
            .expect("every order is indexed");
    }

    pub fn get(&self, trade_no: &str) -> Option<&Order> {
        self.orders.get(trade_no)
    }

    pub fn get_mut(&mut self, trade_no: &str) -> Option<&mut Order> {
        self.orders.get_mut(trade_no)
    }

    pub fn find(&self, channel: Channel, out_trade_no: &str) -> Option<&Order> {
        let trade_no = self.by_merchant.get(&(channel, out_trade_no.to_owned()))?;
        self.orders.get(trade_no)
    }

    /// Updates one notify copy's record, unless the order was evicted meanwhile.
    pub fn record(&mut self, trade_no: &str, copy: usize, update: impl FnOnce(&mut DeliveryView)) {
        if let Some(delivery) = self
            .orders
            .get_mut(trade_no)
            .and_then(|order| order.deliveries.get_mut(copy))
        {
            update(delivery);
        }
    }

    /// The newest `limit` orders (only those of `out_trade_no` when given), oldest first.
    pub fn views(&self, limit: usize, out_trade_no: Option<&str>) -> Vec<OrderView> {
        let mut views: Vec<OrderView> = self
            .arrival
            .iter()
            .rev()
            .filter_map(|trade_no| self.orders.get(trade_no))
            .filter(|order| match out_trade_no {
                Some(id) => order.out_trade_no == id,
                None => true,
            })
            .take(limit)
            .map(Order::view)
            .collect();
        views.reverse();
        views
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }
}

/// SplitMix64: tiny, fast, and good enough to pick which payments meet a fault.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `bound`; the modulo bias is far below what a fault percentage notices.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }
}

/// Alphabet of base58 (Bitcoin and Tron): no 0, O, I or l.
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// A Tron address is 34 base58 characters starting with `T`.
const TRON_ADDRESS_LEN: usize = 34;
/// A chain transaction id is 32 bytes in hex.
const TRANSACTION_ID_HEX_LEN: usize = 64;

/// Everything behind the lock.
pub struct World {
    pub store: Store,
    pub faults: Faults,
    rng: SplitMix64,
    /// Numbers the gateway's ids; together with the seed it makes them unique per run.
    sequence: u64,
    /// Eight digits from the seed, so two runs with different seeds mint different ids.
    id_prefix: u64,
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let id_prefix = rng.below(100_000_000);
        Self {
            store: Store::default(),
            faults: Faults::default(),
            rng,
            sequence: 0,
            id_prefix,
        }
    }

    /// A new gateway id: all digits, like real Epay `trade_no`s and epusdt `trade_id`s.
    pub fn next_trade_no(&mut self) -> String {
        self.sequence += 1;
        format!("{:08}{:012}", self.id_prefix, self.sequence)
    }

    /// True for `percent` out of 100 draws; always draws, so the stream of random numbers
    /// does not depend on the fault settings.
    pub fn chance(&mut self, percent: u32) -> bool {
        let roll = self.rng.below(100);
        roll < u64::from(percent)
    }

    /// `chance` with a percentage read from the current faults.
    pub fn chance_of(&mut self, percent: impl Fn(&Faults) -> u32) -> bool {
        let percent = percent(&self.faults);
        self.chance(percent)
    }

    pub fn tron_address(&mut self) -> String {
        let mut address = String::with_capacity(TRON_ADDRESS_LEN);
        address.push('T');
        while address.len() < TRON_ADDRESS_LEN {
            address.push(BASE58[self.rng.below(BASE58.len() as u64) as usize] as char);
        }
        address
    }

    /// 32 upper-case hexadecimal digits: a WeChat Pay nonce.
    pub fn nonce(&mut self) -> String {
        format!("{:016X}{:016X}", self.rng.next_u64(), self.rng.next_u64())
    }

    pub fn transaction_id(&mut self) -> String {
        let mut id = String::with_capacity(TRANSACTION_ID_HEX_LEN);
        while id.len() < TRANSACTION_ID_HEX_LEN {
            id.push_str(&format!("{:016x}", self.rng.next_u64()));
        }
        id
    }

    /// Marks an order paid and decides, by the faults, how many notify copies go out (0
    /// when dropped) and whether a forged copy goes first.
    pub fn mark_paid(&mut self, trade_no: &str) -> Result<PaidOrder, PayRefusal> {
        let order = self.store.get(trade_no).ok_or(PayRefusal::Unknown)?;
        if order.paid {
            return Err(PayRefusal::AlreadyPaid);
        }
        if order.closed {
            return Err(PayRefusal::Closed);
        }
        // Draw before borrowing the order, and the same values for every payment.
        let dropped = self.chance(self.faults.notify_drop_percent);
        let duplicated = self.chance(self.faults.notify_duplicate_percent);
        let forged = self.chance(self.faults.notify_forge_percent);
        let transaction_id = self.transaction_id();
        let delay_ms = self.faults.notify_delay_ms;
        let order = self.store.get_mut(trade_no).expect("looked up above");
        order.paid = true;
        if let Details::Epusdt(details) = &mut order.details {
            details.block_transaction_id = transaction_id;
        }
        let copies = match (dropped, duplicated) {
            (true, _) => 0,
            (false, true) => 2,
            (false, false) => 1,
        };
        order.deliveries = Vec::with_capacity(DELIVERIES_PER_ORDER_MAX);
        if forged {
            order.deliveries.push(DeliveryView {
                forged: true,
                ..DeliveryView::new(NotifyOutcome::Pending)
            });
        }
        if copies == 0 {
            order
                .deliveries
                .push(DeliveryView::new(NotifyOutcome::Dropped));
        }
        for _ in 0..copies {
            order
                .deliveries
                .push(DeliveryView::new(NotifyOutcome::Pending));
        }
        assert!(order.deliveries.len() <= DELIVERIES_PER_ORDER_MAX);
        Ok(PaidOrder {
            order: order.clone(),
            copies,
            forged,
            delay_ms,
        })
    }

    /// The order `out_trade_no` of `channel` when it exists with the same amount (a merchant
    /// retrying, a buyer reloading the cashier), else a new one made by `build` from a new
    /// gateway id. `None` when the id was used with another amount.
    pub fn create_or_reuse(
        &mut self,
        (channel, out_trade_no): (Channel, &str),
        amount_cents: u64,
        build: impl FnOnce(String) -> Order,
    ) -> Option<String> {
        if let Some(existing) = self.store.find(channel, out_trade_no) {
            return (existing.amount_cents == amount_cents).then(|| existing.trade_no.clone());
        }
        let trade_no = self.next_trade_no();
        let order = build(trade_no.clone());
        assert_eq!(order.channel(), channel);
        self.store.insert(order);
        Some(trade_no)
    }

    /// Closes an unpaid order (the merchant's close call): it can no longer be paid.
    pub fn close(&mut self, trade_no: &str) -> Result<(), PayRefusal> {
        let order = self.store.get_mut(trade_no).ok_or(PayRefusal::Unknown)?;
        if order.paid {
            return Err(PayRefusal::AlreadyPaid);
        }
        order.closed = true;
        Ok(())
    }
}

/// Why an order cannot be paid (or closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayRefusal {
    Unknown,
    AlreadyPaid,
    Closed,
}

/// An order just paid, and how its notify goes out.
pub struct PaidOrder {
    pub order: Order,
    pub copies: usize,
    /// A forged copy goes out first (it is `deliveries[0]`).
    pub forged: bool,
    pub delay_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: usize) -> Order {
        Order {
            trade_no: format!("T{n}"),
            out_trade_no: format!("o{n}"),
            money: "1.00".into(),
            amount_cents: 100,
            notify_url: "http://shop/notify".into(),
            paid: false,
            closed: false,
            deliveries: Vec::new(),
            details: Details::Epay(EpayDetails {
                pay_type: "alipay".into(),
                name: "item".into(),
                param: String::new(),
            }),
        }
    }

    #[test]
    fn the_oldest_order_is_evicted_at_the_bound() {
        let mut store = Store::default();
        for n in 0..=ORDERS_MAX {
            store.insert(order(n));
        }
        assert_eq!(store.len(), ORDERS_MAX);
        assert!(store.find(Channel::Epay, "o0").is_none());
        assert!(store.get("T0").is_none());
        assert!(store
            .find(Channel::Epay, &format!("o{ORDERS_MAX}"))
            .is_some());
    }

    #[test]
    fn the_same_seed_draws_the_same_values() {
        let mut a = World::new(7);
        let mut b = World::new(7);
        assert_eq!(a.next_trade_no(), b.next_trade_no());
        assert_eq!(a.tron_address(), b.tron_address());
        assert_eq!(a.transaction_id(), b.transaction_id());
        assert_ne!(World::new(8).next_trade_no(), World::new(7).next_trade_no());
    }

    #[test]
    fn a_closed_order_cannot_be_paid_and_a_paid_one_cannot_be_closed() {
        let mut world = World::new(1);
        let build = |trade_no: String| Order {
            trade_no,
            ..order(1)
        };
        let first = world
            .create_or_reuse((Channel::Epay, "o1"), 100, build)
            .unwrap();
        assert_eq!(
            world.create_or_reuse((Channel::Epay, "o1"), 100, |_| unreachable!()),
            Some(first.clone()),
            "the same id and amount is the same order"
        );
        assert_eq!(
            world.create_or_reuse((Channel::Epay, "o1"), 101, |_| unreachable!()),
            None
        );
        world.close(&first).unwrap();
        assert_eq!(world.mark_paid(&first).err(), Some(PayRefusal::Closed));
        let second = world
            .create_or_reuse((Channel::Epay, "o2"), 100, |trade_no| Order {
                trade_no,
                out_trade_no: "o2".into(),
                ..order(2)
            })
            .unwrap();
        world.faults.notify_forge_percent = 100;
        let paid = world.mark_paid(&second).unwrap();
        assert!(paid.forged && paid.order.deliveries[0].forged);
        assert_eq!(world.close(&second), Err(PayRefusal::AlreadyPaid));
        assert_eq!(
            world.mark_paid(&second).err(),
            Some(PayRefusal::AlreadyPaid)
        );
    }

    #[test]
    fn faults_are_validated() {
        assert!(Faults::default().validate().is_ok());
        let too_much = Faults {
            notify_drop_percent: 101,
            ..Faults::default()
        };
        assert!(too_much.validate().is_err());
    }
}
