//! `shop.order_book()`: the operators' view of orders: search with filters and paging, the
//! queues, revenue per day and per product.
//!
//! Invariant: a scan never holds the state's read lock for more than `ORDER_SCAN_CHUNK`
//! orders, so a search over a long history never stalls checkouts (which need the write
//! lock); results are bounded by `ORDERS_PAGE_MAX`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use engine::time::civil_from_days;
use engine::{Currency, OrderRecord, OrderStatus, Sku};

use crate::{OrderView, Shop, ShopError};

/// Orders examined per hold of the state's read lock.
pub const ORDER_SCAN_CHUNK: usize = 10_000;
/// Most orders one page or export returns.
pub const ORDERS_PAGE_MAX: usize = 100_000;
/// Most days a revenue report covers.
pub const REVENUE_DAYS_MAX: u32 = 366;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Which orders a search shows; every field narrows it.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub sku: Option<Sku>,
    /// The payment channel the order went to (`epay`, `manual`, `reseller`, ...).
    pub channel: Option<String>,
    /// Created at or after (Unix ms).
    pub from_ms: Option<u64>,
    /// Created before (Unix ms).
    pub until_ms: Option<u64>,
    /// An order id (whole or its start), or part of the contact, any case.
    pub text: Option<String>,
}

impl OrderFilter {
    pub fn matches(&self, record: &OrderRecord) -> bool {
        let created = &record.created;
        if self.status.is_some_and(|s| s != record.status)
            || self.sku.as_ref().is_some_and(|s| *s != created.sku)
            || self
                .channel
                .as_ref()
                .is_some_and(|c| *c != created.payment_channel)
            || self
                .from_ms
                .is_some_and(|from| created.created_at_ms < from)
            || self
                .until_ms
                .is_some_and(|until| created.created_at_ms >= until)
        {
            return false;
        }
        match &self.text {
            None => true,
            Some(text) => {
                let text = text.trim().to_lowercase();
                created.order_id.as_str().to_lowercase().starts_with(&text)
                    || created.contact.to_lowercase().contains(&text)
            }
        }
    }
}

/// A page of orders, newest first, and how many match in all.
#[derive(Clone, Debug, Default)]
pub struct OrderPage {
    pub total: usize,
    pub orders: Vec<OrderRecord>,
}

/// Revenue of one day or one product in one currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevenueLine {
    /// `YYYY-MM-DD` (the shop's time zone) or a SKU.
    pub key: String,
    pub currency: Currency,
    pub amount_cents: u64,
    pub orders_count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Revenue {
    /// Newest day first; days without sales are left out.
    pub per_day: Vec<RevenueLine>,
    /// Largest first.
    pub per_product: Vec<RevenueLine>,
}

/// The operators' handle on orders (`shop.order_book()`).
pub struct OrderBook<'a> {
    shop: &'a Shop,
}

impl Shop {
    pub fn order_book(&self) -> OrderBook<'_> {
        OrderBook { shop: self }
    }
}

/// The day of `ms` as `YYYY-MM-DD`, `offset_minutes` east of UTC.
pub fn local_day(ms: u64, offset_minutes: i16) -> String {
    let local = ms as i64 + i64::from(offset_minutes) * 60_000;
    let (year, month, day) = civil_from_days(local.div_euclid(DAY_MS));
    format!("{year:04}-{month:02}-{day:02}")
}

impl OrderBook<'_> {
    /// Visits the orders newest first, a chunk per hold of the read lock: every order, or
    /// with `in_memory_only` those in memory (every unsettled one:
    /// `engine::state::may_be_archived`). `visit` returns false to stop.
    fn scan_newest_first(&self, in_memory_only: bool, mut visit: impl FnMut(&OrderRecord) -> bool) {
        let mut before = u32::MAX;
        loop {
            let state = self.shop.store().state();
            let page: Vec<(u32, Cow<'_, OrderRecord>)> = match in_memory_only {
                true => state
                    .hot_orders_before(before)
                    .take(ORDER_SCAN_CHUNK)
                    .map(|(index, record)| (index, Cow::Borrowed(record)))
                    .collect(),
                false => state.orders_before(before, ORDER_SCAN_CHUNK),
            };
            let Some((oldest, _)) = page.last() else {
                return;
            };
            before = *oldest;
            for (_, record) in &page {
                if !visit(record) {
                    return;
                }
            }
        }
    }

    /// One order in full, for an operator (no token needed): its keys and coupon.
    pub fn order(&self, order_id: &engine::OrderId) -> Result<Option<OrderView>, ShopError> {
        let record = self.shop.store().order(order_id)?;
        Ok(record.map(|record| self.shop.view_of(record)))
    }

    /// Orders matching `filter`, newest first: `limit` of them after skipping `offset`. A
    /// status that is never archived is looked for in memory only.
    pub fn search(&self, filter: &OrderFilter, offset: usize, limit: usize) -> OrderPage {
        let limit = limit.min(ORDERS_PAGE_MAX);
        let mut page = OrderPage::default();
        let visit = |record: &OrderRecord| {
            if filter.matches(record) {
                page.total += 1;
                if page.total > offset && page.orders.len() < limit {
                    page.orders.push(record.clone());
                }
            }
            true
        };
        let in_memory_only = filter
            .status
            .is_some_and(|status| !engine::state::may_be_archived(status));
        self.scan_newest_first(in_memory_only, visit);
        page
    }

    /// Orders waiting for an operator: paid but not deliverable (manual review).
    pub fn manual_review(&self) -> Vec<OrderRecord> {
        let filter = OrderFilter {
            status: Some(OrderStatus::ManualReview),
            ..OrderFilter::default()
        };
        let mut orders = self.search(&filter, 0, ORDERS_PAGE_MAX).orders;
        orders.reverse();
        orders
    }

    /// The manual-review queue size, and when the oldest paid but undelivered order (not in
    /// review) was paid. Scans the orders in memory (neither status is ever archived): called
    /// every few seconds, not per request.
    pub fn delivery_backlog(&self) -> (u64, Option<u64>) {
        let mut review_count = 0;
        let mut oldest_paid_at_ms: Option<u64> = None;
        self.scan_newest_first(true, |record| {
            match record.status {
                OrderStatus::ManualReview => review_count += 1,
                OrderStatus::Paid => {
                    let paid_at_ms = record.paid_at_ms.unwrap_or(record.created.created_at_ms);
                    oldest_paid_at_ms =
                        Some(oldest_paid_at_ms.map_or(paid_at_ms, |o| o.min(paid_at_ms)));
                }
                _ => {}
            }
            true
        });
        (review_count, oldest_paid_at_ms)
    }

    /// Money taken: orders paid (delivered, in review or delivering; refunds left out), by
    /// the day they were paid in the shop's time zone over the last `days` days, and by
    /// product over the same days.
    pub fn revenue(&self, days: u32, now_ms: u64, offset_minutes: i16) -> Revenue {
        let days = days.clamp(1, REVENUE_DAYS_MAX);
        let today_start = {
            let local = now_ms as i64 + i64::from(offset_minutes) * 60_000;
            local.div_euclid(DAY_MS) * DAY_MS - i64::from(offset_minutes) * 60_000
        };
        let since_ms = (today_start - i64::from(days - 1) * DAY_MS).max(0) as u64;
        let mut per_day: BTreeMap<(String, Currency), (u64, u64)> = BTreeMap::new();
        let mut per_product: BTreeMap<(Sku, Currency), (u64, u64)> = BTreeMap::new();
        self.scan_newest_first(false, |record| {
            let counted = matches!(
                record.status,
                OrderStatus::Paid | OrderStatus::Delivered | OrderStatus::ManualReview
            );
            let paid_at_ms = record.paid_at_ms.unwrap_or(0);
            if counted && paid_at_ms >= since_ms {
                let created = &record.created;
                let day = local_day(paid_at_ms, offset_minutes);
                for entry in [
                    per_day.entry((day, created.currency)).or_default(),
                    per_product
                        .entry((created.sku.clone(), created.currency))
                        .or_default(),
                ] {
                    entry.0 += created.amount_cents;
                    entry.1 += 1;
                }
            }
            true
        });
        let line = |key: String, currency, (amount_cents, orders_count): (u64, u64)| RevenueLine {
            key,
            currency,
            amount_cents,
            orders_count,
        };
        let mut revenue = Revenue {
            per_day: per_day
                .into_iter()
                .rev()
                .map(|((day, currency), sums)| line(day, currency, sums))
                .collect(),
            per_product: per_product
                .into_iter()
                .map(|((sku, currency), sums)| line(sku.as_str().to_owned(), currency, sums))
                .collect(),
        };
        revenue
            .per_product
            .sort_by(|a, b| b.amount_cents.cmp(&a.amount_cents).then(a.key.cmp(&b.key)));
        revenue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_counted_in_the_shops_time_zone() {
        // 2026-03-01T20:00:00Z is already 2 March in Beijing (UTC+8).
        let ms = 1_772_395_200_000;
        assert_eq!(local_day(ms, 0), "2026-03-01");
        assert_eq!(local_day(ms, 480), "2026-03-02");
        assert_eq!(local_day(ms, -300), "2026-03-01");
    }
}
