//! Alipay Open Platform (RSA2): `GET|POST /gateway.do` takes `alipay.trade.page.pay` and
//! `alipay.trade.wap.pay` (the buyer's browser: a cashier), `alipay.trade.precreate` (its
//! `qr_code` leads to `/alipay/qr/{trade_no}`), `alipay.trade.query` and
//! `alipay.trade.close`; `POST /alipay/pay/{trade_no}` is the cashier's Pay button.
//!
//! Requests are verified with the merchant's application public key (`app_id`, `sign_type`
//! RSA2, the signature over every non-empty parameter but `sign`); answers and notifies are
//! signed with "Alipay's" key, all through `engine::alipay`, as the real gateway does.

use actix_web::{web, HttpRequest, HttpResponse};
use engine::alipay::{notify_content, request_content, SIGN_TYPE_RSA2};
use engine::money::{parse_decimal_cents, AMOUNT_CENTS_MAX};
use engine::payment::signatures_equal;
use serde_json::{json, Value};

use super::epay::{is_http_url, Params, OUT_TRADE_NO_BYTES_MAX};
use super::notify::{self, Payment};
use super::store::{AlipayDetails, Channel, Details, Order, PayRefusal};
use super::{now_secs, outage_answer, page, query_faults, Shared};

/// Longest `subject`, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 1_024;

fn rng() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

/// `{"<method>_response": object, "sign": ...}`, the sign over the object's exact text.
fn signed_answer(shared: &Shared, method: &str, object: &Value) -> HttpResponse {
    let inner = object.to_string();
    let sign = shared
        .direct
        .alipay_gateway_key
        .sign_base64(inner.as_bytes(), &rng());
    let key = format!("{}_response", method.replace('.', "_"));
    HttpResponse::Ok()
        .content_type("application/json;charset=utf-8")
        .body(format!(r#"{{"{key}":{inner},"sign":"{sign}"}}"#))
}

fn business_failed(sub_code: &str, sub_msg: &str) -> Value {
    json!({"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg})
}

/// The request's merchant and signature, as the gateway checks them.
fn verify_request(shared: &Shared, params: &Params) -> Result<(), &'static str> {
    if params.get("sign_type") != SIGN_TYPE_RSA2 {
        return Err("sign_type must be RSA2");
    }
    if !signatures_equal(params.get("app_id"), &shared.direct.alipay_app_id) {
        return Err("unknown app_id");
    }
    let view: Vec<(&str, &str)> = params
        .0
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let content = request_content(&view);
    if !shared
        .direct
        .alipay_app_public_key
        .verify_base64(content.as_bytes(), params.get("sign"))
    {
        return Err("验签出错 (the signature does not verify with the application's public key)");
    }
    Ok(())
}

/// A payment's `biz_content`, checked.
struct NewPayment {
    out_trade_no: String,
    total_amount: String,
    amount_cents: u64,
    subject: String,
}

fn biz_content(params: &Params) -> Result<Value, &'static str> {
    serde_json::from_str(params.get("biz_content")).map_err(|_| "biz_content is not JSON")
}

fn biz_text<'a>(biz: &'a Value, name: &str) -> &'a str {
    biz.get(name).and_then(Value::as_str).unwrap_or("")
}

fn check_payment(params: &Params) -> Result<NewPayment, &'static str> {
    let biz = biz_content(params)?;
    let out_trade_no = biz_text(&biz, "out_trade_no");
    if out_trade_no.is_empty() || out_trade_no.len() > OUT_TRADE_NO_BYTES_MAX {
        return Err("out_trade_no must be 1 to 64 bytes");
    }
    let total_amount = biz_text(&biz, "total_amount");
    let amount_cents = parse_decimal_cents(total_amount)
        .filter(|cents| (1..=AMOUNT_CENTS_MAX).contains(cents))
        .ok_or("total_amount must be a positive amount with at most two decimals")?;
    let subject = biz_text(&biz, "subject");
    if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX {
        return Err("subject must be 1 to 1024 bytes");
    }
    if !is_http_url(params.get("notify_url")) {
        return Err("notify_url must be an http or https URL");
    }
    Ok(NewPayment {
        out_trade_no: out_trade_no.to_owned(),
        total_amount: total_amount.to_owned(),
        amount_cents,
        subject: subject.to_owned(),
    })
}

/// Creates the order, or finds the one created before with the same id and amount.
fn create_or_reuse(
    shared: &Shared,
    params: &Params,
    new: NewPayment,
) -> Result<String, &'static str> {
    let key = (Channel::Alipay, new.out_trade_no.as_str());
    let order = |trade_no| {
        Order::new(
            trade_no,
            new.out_trade_no.clone(),
            new.amount_cents,
            new.total_amount.clone(),
            params.get("notify_url").to_owned(),
            Details::Alipay(AlipayDetails {
                subject: new.subject.clone(),
                method: params.get("method").to_owned(),
                return_url: params.get("return_url").to_owned(),
            }),
        )
    };
    shared
        .world()
        .create_or_reuse(key, new.amount_cents, order)
        .ok_or("ACQ.CONTEXT_INCONSISTENT (out_trade_no used with another amount)")
}

fn refusal_page(message: &str) -> HttpResponse {
    page::refusal("Alipay simulator", message)
}

/// `GET|POST /gateway.do`.
pub async fn gateway(
    request: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    let params = match Params::parse(request.query_string(), &body) {
        Ok(params) => params,
        Err(message) => return refusal_page(message),
    };
    let method = params.get("method").to_owned();
    let checked = verify_request(&shared, &params);
    match method.as_str() {
        "alipay.trade.page.pay" | "alipay.trade.wap.pay" => match checked {
            Ok(()) => cashier(&shared, &params),
            Err(message) => refusal_page(message),
        },
        "alipay.trade.precreate" | "alipay.trade.query" | "alipay.trade.close" => {
            if let Err(message) = checked {
                let invalid = json!({"code": "40002", "msg": "Invalid Arguments",
                    "sub_code": "isv.invalid-signature", "sub_msg": message});
                return signed_answer(&shared, &method, &invalid);
            }
            server_call(&shared, &method, &params).await
        }
        _ => refusal_page("unknown method"),
    }
}

/// The buyer's cashier for a page or wap payment.
fn cashier(shared: &Shared, params: &Params) -> HttpResponse {
    let new = match check_payment(params) {
        Ok(new) => new,
        Err(message) => return refusal_page(message),
    };
    let lines = [
        ("Merchant order", new.out_trade_no.clone()),
        ("Subject", new.subject.clone()),
        ("Amount (CNY)", new.total_amount.clone()),
        ("Method", params.get("method").to_owned()),
    ];
    match create_or_reuse(shared, params, new) {
        Ok(trade_no) => {
            let lines: Vec<(&str, &str)> = lines.iter().map(|(k, v)| (*k, v.as_str())).collect();
            page::cashier("Alipay cashier", &lines, &format!("/alipay/pay/{trade_no}"))
        }
        Err(message) => refusal_page(message),
    }
}

async fn server_call(shared: &Shared, method: &str, params: &Params) -> HttpResponse {
    if method == "alipay.trade.precreate" {
        if shared.world().chance_of(|f| f.create_fail_percent) {
            return HttpResponse::InternalServerError().body("create failed (fault injected)");
        }
        return signed_answer(shared, method, &precreate(shared, params));
    }
    if method == "alipay.trade.query" {
        if let Some(answer) = query_faults(shared).await {
            return answer;
        }
    }
    let out_trade_no = biz_content(params)
        .map(|biz| biz_text(&biz, "out_trade_no").to_owned())
        .unwrap_or_default();
    let answer = if method == "alipay.trade.query" {
        query(shared, &out_trade_no)
    } else {
        close(shared, &out_trade_no)
    };
    signed_answer(shared, method, &answer)
}

fn precreate(shared: &Shared, params: &Params) -> Value {
    let new = match check_payment(params) {
        Ok(new) => new,
        Err(message) => {
            return json!({"code": "40002", "msg": "Invalid Arguments",
                "sub_code": "isv.invalid-parameter", "sub_msg": message})
        }
    };
    let out_trade_no = new.out_trade_no.clone();
    match create_or_reuse(shared, params, new) {
        Ok(trade_no) => json!({
            "code": "10000",
            "msg": "Success",
            "out_trade_no": out_trade_no,
            "qr_code": format!("{}/alipay/qr/{trade_no}", shared.base_url),
        }),
        Err(message) => business_failed("ACQ.CONTEXT_INCONSISTENT", message),
    }
}

fn query(shared: &Shared, out_trade_no: &str) -> Value {
    let world = shared.world();
    let Some(order) = world.store.find(Channel::Alipay, out_trade_no) else {
        return business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在");
    };
    let trade_status = match (order.paid, order.closed) {
        (true, _) => "TRADE_SUCCESS",
        (false, true) => "TRADE_CLOSED",
        (false, false) => "WAIT_BUYER_PAY",
    };
    json!({
        "code": "10000",
        "msg": "Success",
        "out_trade_no": order.out_trade_no,
        "trade_no": order.trade_no,
        "trade_status": trade_status,
        "total_amount": order.money,
        "buyer_logon_id": "sim***@example.com",
    })
}

fn close(shared: &Shared, out_trade_no: &str) -> Value {
    let mut world = shared.world();
    let Some(trade_no) = world
        .store
        .find(Channel::Alipay, out_trade_no)
        .map(|order| order.trade_no.clone())
    else {
        return business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在");
    };
    match world.close(&trade_no) {
        Ok(()) => {
            json!({"code": "10000", "msg": "Success", "out_trade_no": out_trade_no, "trade_no": trade_no})
        }
        Err(PayRefusal::AlreadyPaid) => business_failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
        Err(_) => business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在"),
    }
}

/// `GET /alipay/qr/{trade_no}`: what scanning a precreate QR code opens.
pub async fn qr(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let lines = {
        let world = shared.world();
        let Some(order) = world
            .store
            .get(&path)
            .filter(|o| o.channel() == Channel::Alipay)
        else {
            return HttpResponse::NotFound().body("unknown trade");
        };
        [
            ("Merchant order", order.out_trade_no.clone()),
            ("Amount (CNY)", order.money.clone()),
        ]
    };
    let lines: Vec<(&str, &str)> = lines.iter().map(|(k, v)| (*k, v.as_str())).collect();
    page::cashier("Alipay cashier", &lines, &format!("/alipay/pay/{path}"))
}

/// `POST /alipay/pay/{trade_no}`: the cashier's Pay button.
pub async fn pay(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    let return_url = shared
        .world()
        .store
        .get(&path)
        .and_then(|order| match &order.details {
            Details::Alipay(details) => Some(details.return_url.clone()),
            _ => None,
        });
    let Some(return_url) = return_url else {
        return HttpResponse::NotFound().body("unknown trade");
    };
    match notify::pay(&shared, &path) {
        Payment::Paid { .. } => page::paid("Alipay cashier", false, &return_url),
        Payment::AlreadyPaid => page::paid("Alipay cashier", true, &return_url),
        Payment::Closed => refusal_page("交易已关闭 (the merchant closed this trade)"),
        Payment::Unknown => refusal_page("the trade was evicted"),
    }
}

/// The notify's form body, signed as Alipay signs (every parameter but `sign` and
/// `sign_type`); `forged` signs with a key that is not Alipay's.
pub fn notify_form(shared: &Shared, order: &Order, forged: bool) -> String {
    let Details::Alipay(details) = &order.details else {
        unreachable!("an Alipay order");
    };
    let (notify_id, now) = (shared.world().nonce(), now_secs());
    let now = engine::alipay::beijing_timestamp(now);
    let fund_bill_list = format!(
        r#"[{{"amount":"{}","fundChannel":"ALIPAYACCOUNT"}}]"#,
        order.money
    );
    let mut params: Vec<(&str, &str)> = vec![
        ("gmt_create", &now),
        ("charset", "utf-8"),
        ("gmt_payment", &now),
        ("notify_time", &now),
        ("subject", &details.subject),
        ("buyer_id", "2088102177846880"),
        ("invoice_amount", &order.money),
        ("version", "1.0"),
        ("notify_id", &notify_id),
        ("fund_bill_list", &fund_bill_list),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", &order.out_trade_no),
        ("total_amount", &order.money),
        ("trade_status", "TRADE_SUCCESS"),
        ("trade_no", &order.trade_no),
        ("auth_app_id", &shared.direct.alipay_app_id),
        ("receipt_amount", &order.money),
        ("point_amount", "0.00"),
        ("app_id", &shared.direct.alipay_app_id),
        ("buyer_pay_amount", &order.money),
        ("seller_id", "2088102177649450"),
        ("sign_type", SIGN_TYPE_RSA2),
    ];
    let key = if forged {
        &shared.direct.forger_key
    } else {
        &shared.direct.alipay_gateway_key
    };
    let sign = key.sign_base64(notify_content(&params, false).as_bytes(), &rng());
    params.push(("sign", &sign));
    serde_urlencoded::to_string(&params).expect("pairs of strings encode")
}
