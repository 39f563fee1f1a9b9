//! epusdt (USDT on TRC20): `POST /api/v1/order/create-transaction` and the buyer's page
//! `GET|POST /pay/{trade_id}`.
//!
//! Answers follow the real epusdt: always HTTP 200, with the outcome in `status_code`
//! (200 success, 401 bad signature, 10002 order exists, 10004 bad amount, 10009 unreadable
//! request). Numbers are read and written by their exact text, never through a float.

use actix_web::{web, HttpResponse};
use engine::money::{parse_decimal_cents, AMOUNT_CENTS_MAX};
use engine::payment::{epusdt_sign, shortest_decimal, signatures_equal, JsonField};
use serde::Serialize;
use serde_json::value::RawValue;

use super::epay::is_http_url;
use super::json::json_fields;
use super::notify::{self, Payment};
use super::store::{Channel, Details, EpusdtDetails, Order};
use super::{now_secs, outage_answer, page, Shared};

/// epusdt's `order_id` holds at most 32 characters.
pub const ORDER_ID_BYTES_MAX: usize = 32;
/// The simulated exchange rate: 7.20 CNY per USDT, in CNY cents.
pub const CNY_CENTS_PER_USDT: u64 = 720;
/// USDT amounts carry four decimals, as real epusdt's `actual_amount` does.
pub const USDT_DECIMALS: u32 = 4;
/// How long a real epusdt keeps an order open; only reported, never enforced here.
pub const EXPIRATION_SECS: u64 = 10 * 60;

const STATUS_OK: u32 = 200;
const STATUS_BAD_SIGNATURE: u32 = 401;
const STATUS_ORDER_EXISTS: u32 = 10_002;
const STATUS_BAD_AMOUNT: u32 = 10_004;
const STATUS_UNREADABLE: u32 = 10_009;

/// A refusal: an epusdt `status_code` and its message.
type Refusal = (u32, &'static str);

#[derive(Serialize)]
struct Answer<T: Serialize> {
    status_code: u32,
    message: &'static str,
    data: Option<T>,
    request_id: &'static str,
}

#[derive(Serialize)]
struct Created<'a> {
    trade_id: &'a str,
    order_id: &'a str,
    amount: Box<RawValue>,
    actual_amount: Box<RawValue>,
    token: &'a str,
    expiration_time: u64,
    payment_url: String,
}

fn answer<T: Serialize>(status_code: u32, message: &'static str, data: Option<T>) -> HttpResponse {
    HttpResponse::Ok().json(Answer {
        status_code,
        message,
        data,
        request_id: "",
    })
}

/// A checked create request.
struct NewOrder {
    order_id: String,
    /// The amount in shortest decimal form.
    amount: String,
    amount_cents: u64,
    notify_url: String,
    redirect_url: String,
}

/// Every field but `signature`, numbers in shortest decimal form; then the signature check.
fn verify_signature(fields: &[JsonField], token: &str) -> Result<(), Refusal> {
    let mut canonical = Vec::with_capacity(fields.len());
    for field in fields {
        let text = if field.is_number {
            shortest_decimal(&field.text)
                .ok_or((STATUS_UNREADABLE, "a number is not a plain decimal"))?
        } else {
            field.text.clone()
        };
        canonical.push((field.name.as_str(), text));
    }
    let signature = fields
        .iter()
        .find(|f| f.name == "signature")
        .ok_or((STATUS_BAD_SIGNATURE, "签名认证错误 (signature is missing)"))?;
    let expected = epusdt_sign(canonical.iter().map(|(k, v)| (*k, v.as_str())), token);
    if !signatures_equal(&expected, &signature.text.to_ascii_lowercase()) {
        return Err((STATUS_BAD_SIGNATURE, "签名认证错误 (bad signature)"));
    }
    Ok(())
}

fn check_create(fields: &[JsonField], token: &str) -> Result<NewOrder, Refusal> {
    verify_signature(fields, token)?;
    let text = |name: &str, is_number: bool| {
        fields
            .iter()
            .find(|f| f.name == name && f.is_number == is_number)
            .map_or("", |f| f.text.as_str())
    };
    let order_id = text("order_id", false);
    if order_id.is_empty() || order_id.len() > ORDER_ID_BYTES_MAX {
        return Err((
            STATUS_UNREADABLE,
            "order_id must be a string of 1 to 32 bytes",
        ));
    }
    let notify_url = text("notify_url", false);
    let redirect_url = text("redirect_url", false);
    if !is_http_url(notify_url) || !(redirect_url.is_empty() || is_http_url(redirect_url)) {
        return Err((
            STATUS_UNREADABLE,
            "notify_url and redirect_url must be http(s) URLs",
        ));
    }
    let amount = shortest_decimal(text("amount", true))
        .ok_or((STATUS_UNREADABLE, "amount must be a JSON number"))?;
    let amount_cents = parse_decimal_cents(&amount)
        .filter(|cents| (1..=AMOUNT_CENTS_MAX).contains(cents))
        .ok_or((
            STATUS_BAD_AMOUNT,
            "支付金额有误 (amount must be positive, two decimals at most)",
        ))?;
    Ok(NewOrder {
        order_id: order_id.to_owned(),
        amount,
        amount_cents,
        notify_url: notify_url.to_owned(),
        redirect_url: redirect_url.to_owned(),
    })
}

/// The USDT due for a CNY amount at the simulated rate, rounded up, in shortest form.
pub fn usdt_due(amount_cents: u64) -> String {
    let scale = 10u64.pow(USDT_DECIMALS);
    let units = (amount_cents * scale).div_ceil(CNY_CENTS_PER_USDT);
    let whole = units / scale;
    let fraction = format!("{:0width$}", units % scale, width = USDT_DECIMALS as usize);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{fraction}")
    }
}

/// `POST /api/v1/order/create-transaction`.
pub async fn create(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    if shared.world().chance_of(|f| f.create_fail_percent) {
        return HttpResponse::InternalServerError().body("create failed (fault injected)");
    }
    let checked = json_fields(&body)
        .map_err(|_| (STATUS_UNREADABLE, "无法解析请求参数 (unreadable request)"))
        .and_then(|fields| check_create(&fields, &shared.epusdt_token));
    let new = match checked {
        Ok(new) => new,
        Err((status, message)) => return answer::<()>(status, message, None),
    };
    let order = {
        let mut world = shared.world();
        if world.store.find(Channel::Epusdt, &new.order_id).is_some() {
            return answer::<()>(
                STATUS_ORDER_EXISTS,
                "支付交易已存在，请勿重复创建 (order exists)",
                None,
            );
        }
        let order = Order {
            trade_no: world.next_trade_no(),
            out_trade_no: new.order_id,
            money: new.amount,
            amount_cents: new.amount_cents,
            notify_url: new.notify_url,
            paid: false,
            closed: false,
            deliveries: Vec::new(),
            details: Details::Epusdt(EpusdtDetails {
                actual_amount: usdt_due(new.amount_cents),
                address: world.tron_address(),
                expiration_time: now_secs() + EXPIRATION_SECS,
                redirect_url: new.redirect_url,
                block_transaction_id: String::new(),
            }),
        };
        world.store.insert(order.clone());
        order
    };
    answer(STATUS_OK, "success", Some(created(&shared, &order)))
}

fn created<'a>(shared: &Shared, order: &'a Order) -> Created<'a> {
    let Details::Epusdt(details) = &order.details else {
        unreachable!("an epusdt order");
    };
    let number = |text: &str| RawValue::from_string(text.to_owned()).expect("a JSON number");
    Created {
        trade_id: &order.trade_no,
        order_id: &order.out_trade_no,
        amount: number(&order.money),
        actual_amount: number(&details.actual_amount),
        token: &details.address,
        expiration_time: details.expiration_time,
        payment_url: format!("{}/pay/{}", shared.base_url, order.trade_no),
    }
}

/// `GET /pay/{trade_id}`: what to pay, where, and a Pay button.
pub async fn cashier(trade_id: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    let world = shared.world();
    let Some(order) = world
        .store
        .get(&trade_id)
        .filter(|o| o.channel() == Channel::Epusdt)
    else {
        return HttpResponse::NotFound().body("订单不存在 (unknown order)");
    };
    let Details::Epusdt(details) = &order.details else {
        unreachable!("filtered to epusdt orders");
    };
    let lines = [
        ("Merchant order", order.out_trade_no.as_str()),
        ("Amount (CNY)", order.money.as_str()),
        ("Pay (USDT, TRC20)", details.actual_amount.as_str()),
        ("To address", details.address.as_str()),
    ];
    page::cashier("epusdt cashier", &lines, "")
}

/// `POST /pay/{trade_id}`: the buyer paid; the callback goes out.
pub async fn pay(trade_id: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    let redirect_url = match shared.world().store.get(&trade_id).map(|o| &o.details) {
        Some(Details::Epusdt(details)) => details.redirect_url.clone(),
        _ => return HttpResponse::NotFound().body("订单不存在 (unknown order)"),
    };
    match notify::pay(&shared, &trade_id) {
        Payment::Paid { .. } => page::paid("epusdt cashier", false, &redirect_url),
        Payment::AlreadyPaid => page::paid("epusdt cashier", true, &redirect_url),
        Payment::Unknown => HttpResponse::NotFound().body("订单不存在 (unknown order)"),
        Payment::Closed => HttpResponse::Conflict().body("订单已关闭 (closed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usdt_is_rounded_up_and_written_shortest() {
        assert_eq!(usdt_due(720), "1");
        assert_eq!(usdt_due(1000), "1.3889");
        assert_eq!(usdt_due(360), "0.5");
        assert_eq!(usdt_due(1), "0.0014");
    }
}
