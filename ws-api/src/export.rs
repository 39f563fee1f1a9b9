//! Operators' CSV exports (keys, orders), and the query shapes the JSON routes and the pages
//! share to pick them.
//!
//! Invariant: a cell that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab,
//! carriage return first) is prefixed with `'`, so an exported key or a buyer's contact can
//! never run in the operator's spreadsheet.

use actix_web::http::header;
use actix_web::HttpResponse;
use actors::order_book::OrderFilter;
use actors::products::{CardLine, CardQuery, CardStatus};
use engine::time::{format_rfc3339_ms, parse_day_ms};
use engine::{OrderRecord, OrderStatus, Sku};
use serde::Deserialize;

use crate::error::ApiError;

/// Rows one listing page shows by default, and at most.
pub const PAGE_ROWS_DEFAULT: usize = 50;
pub const PAGE_ROWS_MAX: usize = 1_000;
/// Rows one export holds at most (the rest is cut, and the answer says so in a header).
pub const EXPORT_ROWS_MAX: usize = 100_000;
/// Longest search text.
pub const SEARCH_LEN_MAX: usize = 254;

/// A cell safe to open in a spreadsheet.
fn cell(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

fn csv_answer(name: &str, rows: Vec<Vec<String>>, cut: bool) -> Result<HttpResponse, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .write_record(row.iter().map(|c| cell(c)))
            .map_err(|e| ApiError::bad_request("export_failed", e.to_string()))?;
    }
    let body = writer
        .into_inner()
        .map_err(|e| ApiError::bad_request("export_failed", e.to_string()))?;
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if cut {
        answer.insert_header(("X-Panshi-Export-Truncated", EXPORT_ROWS_MAX.to_string()));
    }
    Ok(answer.body(body))
}

/// A key listing's query string: `q` (part of a key), `status`, `offset`, `limit`.
#[derive(Deserialize, Default, Clone)]
pub struct CardsQueryText {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub status: String,
    /// 0 to `i32::MAX`, as the API document says: anything else is a bad query (400).
    #[serde(default, deserialize_with = "u32_count")]
    pub offset: usize,
    #[serde(default, deserialize_with = "u32_count_opt")]
    pub limit: Option<usize>,
}

impl CardsQueryText {
    pub fn to_query(&self, limit_max: usize) -> Result<CardQuery, ApiError> {
        if self.q.len() > SEARCH_LEN_MAX {
            return Err(ApiError::bad_request("bad_request", "q is too long"));
        }
        let status = match self.status.trim() {
            "" | "all" => None,
            text => Some(CardStatus::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_request",
                    "status is available, reserved, sold or deleted",
                )
            })?),
        };
        Ok(CardQuery {
            search: self.q.clone(),
            status,
            offset: self.offset,
            limit: self.limit.unwrap_or(PAGE_ROWS_DEFAULT).min(limit_max),
        })
    }
}

pub fn cards_csv(sku: &Sku, cards: &[CardLine], cut: bool) -> Result<HttpResponse, ApiError> {
    let mut rows = vec![vec![
        "card_id".to_owned(),
        "key".into(),
        "status".into(),
        "order_id".into(),
    ]];
    rows.extend(cards.iter().map(|line| {
        vec![
            line.card.0.to_string(),
            line.key.clone(),
            line.status.as_str().to_owned(),
            line.order_id
                .as_ref()
                .map_or(String::new(), |id| id.as_str().to_owned()),
        ]
    }));
    csv_answer(&format!("keys-{sku}.csv"), rows, cut)
}

/// An order search's query string: `status`, `sku`, `channel`, `from` and `until` (days,
/// `YYYY-MM-DD` in the shop's time zone; `until` included), `q` (order id or contact),
/// `offset`, `limit`.
#[derive(Deserialize, Default, Clone)]
pub struct OrdersQueryText {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub q: String,
    /// 0 to `i32::MAX`, as the API document says: anything else is a bad query (400).
    #[serde(default, deserialize_with = "u32_count")]
    pub offset: usize,
    #[serde(default, deserialize_with = "u32_count_opt")]
    pub limit: Option<usize>,
}

/// A count in a query string: 0 to `i32::MAX`, what the API document promises (int32).
fn u32_count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = <i64 as serde::Deserialize>::deserialize(deserializer)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= i32::MAX as usize)
        .ok_or_else(|| serde::de::Error::custom("a count is 0 to 2147483647"))
}

fn u32_count_opt<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    u32_count(deserializer).map(Some)
}

fn day(text: &str, name: &str, offset_minutes: i16) -> Result<Option<u64>, ApiError> {
    match text.trim() {
        "" => Ok(None),
        text => parse_day_ms(text, offset_minutes)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("bad_request", format!("{name} is YYYY-MM-DD"))),
    }
}

impl OrdersQueryText {
    pub fn to_filter(&self, offset_minutes: i16) -> Result<OrderFilter, ApiError> {
        let status = match self.status.trim() {
            "" | "all" => None,
            text => Some(
                OrderStatus::ALL
                    .into_iter()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| ApiError::bad_request("bad_request", "unknown status"))?,
            ),
        };
        let sku = match self.sku.trim() {
            "" => None,
            text => Some(Sku::parse(text)?),
        };
        if self.q.len() > SEARCH_LEN_MAX || self.channel.len() > SEARCH_LEN_MAX {
            return Err(ApiError::bad_request("bad_request", "q is too long"));
        }
        let channel = Some(self.channel.trim().to_owned()).filter(|c| !c.is_empty());
        let text = Some(self.q.trim().to_owned()).filter(|q| !q.is_empty());
        let until = day(&self.until, "until", offset_minutes)?;
        Ok(OrderFilter {
            status,
            sku,
            channel,
            from_ms: day(&self.from, "from", offset_minutes)?,
            // The `until` day is included: orders before the next day's start.
            until_ms: until.map(|ms| ms + 86_400_000),
            text,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE_ROWS_DEFAULT).min(PAGE_ROWS_MAX)
    }
}

pub fn orders_csv(orders: &[OrderRecord], cut: bool) -> Result<HttpResponse, ApiError> {
    let mut rows = vec![[
        "order_id",
        "status",
        "sku",
        "quantity",
        "amount",
        "currency",
        "contact",
        "channel",
        "payment_channel",
        "created_at",
        "paid_at",
    ]
    .map(str::to_owned)
    .to_vec()];
    let time = |ms: Option<u64>| ms.map_or(String::new(), format_rfc3339_ms);
    rows.extend(orders.iter().map(|record| {
        let created = &record.created;
        vec![
            created.order_id.as_str().to_owned(),
            record.status.as_str().to_owned(),
            created.sku.as_str().to_owned(),
            created.quantity.to_string(),
            engine::money::format_cents(created.amount_cents),
            created.currency.as_str().to_owned(),
            created.contact.clone(),
            created.channel.clone(),
            created.payment_channel.clone(),
            format_rfc3339_ms(created.created_at_ms),
            time(record.paid_at_ms),
        ]
    }));
    csv_answer("orders.csv", rows, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("KEY-1"), "KEY-1");
    }
}
