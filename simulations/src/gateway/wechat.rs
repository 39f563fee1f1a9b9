//! WeChat Pay API v3: `POST /v3/pay/transactions/native` (its `code_url` is
//! `weixin://wxpay/bizpayurl?pr=<trade_no>`; a test "scans" it with `POST /control/pay`),
//! `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=` and
//! `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close`.
//!
//! Requests must carry a `WECHATPAY2-SHA256-RSA2048` authorisation that verifies with the
//! merchant's public key (mchid and serial ours, timestamp within 300 s); every answer and
//! notify is signed with the platform key, and a notify's transaction is encrypted with the
//! APIv3 key, all through `engine::wechatpay`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::money::format_cents;
use engine::payment::signatures_equal;
use engine::wechatpay::{self, ApiV3Key, RequestToSign};
use serde_json::{json, Value};

use super::epay::is_http_url;
use super::store::{Channel, Details, Order, PayRefusal, WechatDetails};
use super::{now_secs, outage_answer, query_faults, Shared};

/// WeChat Pay's `out_trade_no` is 6 to 32 characters.
pub const OUT_TRADE_NO_BYTES_MAX: usize = 32;
/// The APIv3 key a forger encrypts with: not the merchant's.
const FORGER_API_V3_KEY: &str = "forger-apiv3-key-0123456789abcde";

fn rng() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

/// The headers WeChat Pay signs `body` with, now; `forged` signs with another key.
fn signed_headers(shared: &Shared, body: &[u8], forged: bool) -> Vec<(&'static str, String)> {
    let timestamp = now_secs().to_string();
    let nonce = shared.world().nonce();
    let key = if forged {
        &shared.direct.forger_key
    } else {
        &shared.direct.wechat_platform_key
    };
    let signature = wechatpay::sign_answer(key, &timestamp, &nonce, body, &rng());
    vec![
        ("Wechatpay-Timestamp", timestamp),
        ("Wechatpay-Nonce", nonce),
        ("Wechatpay-Signature", signature),
        (
            "Wechatpay-Serial",
            shared.direct.wechat_platform_serial.clone(),
        ),
        (
            "Wechatpay-Signature-Type",
            wechatpay::AUTH_SCHEME.to_owned(),
        ),
    ]
}

/// An answer signed as WeChat Pay signs its answers (every status, 204 included).
fn signed(shared: &Shared, status: StatusCode, body: Option<Value>) -> HttpResponse {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut answer = HttpResponse::build(status);
    for (name, value) in signed_headers(shared, text.as_bytes(), false) {
        answer.insert_header((name, value));
    }
    if text.is_empty() {
        answer.finish()
    } else {
        answer.content_type("application/json").body(text)
    }
}

fn failure(shared: &Shared, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    signed(
        shared,
        status,
        Some(json!({"code": code, "message": message})),
    )
}

/// Checks the merchant's `Authorization` over the request as received.
fn verify_request(shared: &Shared, request: &HttpRequest, body: &[u8]) -> Result<(), &'static str> {
    let header = request
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let fields = wechatpay::parse_authorization(header).ok_or("malformed Authorization")?;
    if !signatures_equal(&fields.mch_id, &shared.direct.wechat_mch_id) {
        return Err("mchid is not the merchant's");
    }
    if fields.serial_no != shared.direct.wechat_merchant_serial_no {
        return Err("serial_no is not the merchant certificate's");
    }
    let timestamp: u64 = fields.timestamp.parse().map_err(|_| "bad timestamp")?;
    if now_secs().abs_diff(timestamp) > wechatpay::WECHATPAY_TOLERANCE_SECS {
        return Err("the request's timestamp is stale");
    }
    let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let message = wechatpay::request_message(&RequestToSign {
        method: request.method().as_str(),
        path_and_query,
        timestamp_secs: timestamp,
        nonce: &fields.nonce,
        body,
    });
    if !shared
        .direct
        .wechat_merchant_public_key
        .verify_base64(message.as_bytes(), &fields.signature)
    {
        return Err("签名错误 (the signature does not verify with the merchant's key)");
    }
    Ok(())
}

/// The common gate of every protocol call: outage, then the merchant's signature.
fn gate(shared: &Shared, request: &HttpRequest, body: &[u8]) -> Option<HttpResponse> {
    if let Some(answer) = outage_answer(shared) {
        return Some(answer);
    }
    verify_request(shared, request, body)
        .err()
        .map(|message| failure(shared, StatusCode::UNAUTHORIZED, "SIGN_ERROR", message))
}

struct NewNative {
    out_trade_no: String,
    amount_cents: u64,
    description: String,
    notify_url: String,
}

fn check_native(shared: &Shared, body: &[u8]) -> Result<NewNative, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON")?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
    if text("mchid") != shared.direct.wechat_mch_id || text("appid") != shared.direct.wechat_app_id
    {
        return Err("appid和mch_id不匹配 (appid or mchid is not the merchant's)");
    }
    let out_trade_no = text("out_trade_no");
    if out_trade_no.is_empty() || out_trade_no.len() > OUT_TRADE_NO_BYTES_MAX {
        return Err("out_trade_no must be 1 to 32 bytes");
    }
    if !is_http_url(text("notify_url")) {
        return Err("notify_url must be an http or https URL");
    }
    let amount = value.get("amount").ok_or("amount is missing")?;
    if amount
        .get("currency")
        .and_then(Value::as_str)
        .unwrap_or("CNY")
        != "CNY"
    {
        return Err("currency must be CNY");
    }
    // An integer JSON number is read exactly; anything else is refused.
    let amount_cents = amount
        .get("total")
        .and_then(Value::as_u64)
        .filter(|fen| (1..=engine::money::AMOUNT_CENTS_MAX).contains(fen))
        .ok_or("amount.total must be a positive whole number of fen")?;
    Ok(NewNative {
        out_trade_no: out_trade_no.to_owned(),
        amount_cents,
        description: text("description").to_owned(),
        notify_url: text("notify_url").to_owned(),
    })
}

/// `POST /v3/pay/transactions/native`.
pub async fn native(
    request: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(answer) = gate(&shared, &request, &body) {
        return answer;
    }
    if shared.world().chance_of(|f| f.create_fail_percent) {
        return HttpResponse::InternalServerError().body("create failed (fault injected)");
    }
    let new = match check_native(&shared, &body) {
        Ok(new) => new,
        Err(message) => return failure(&shared, StatusCode::BAD_REQUEST, "PARAM_ERROR", message),
    };
    let key = (Channel::Wechat, new.out_trade_no.as_str());
    let order = |trade_no| {
        Order::new(
            trade_no,
            new.out_trade_no.clone(),
            new.amount_cents,
            format_cents(new.amount_cents),
            new.notify_url.clone(),
            Details::Wechat(WechatDetails {
                description: new.description.clone(),
            }),
        )
    };
    let trade_no = shared.world().create_or_reuse(key, new.amount_cents, order);
    match trade_no {
        Some(trade_no) => signed(
            &shared,
            StatusCode::OK,
            Some(json!({"code_url": format!("weixin://wxpay/bizpayurl?pr={trade_no}")})),
        ),
        None => failure(
            &shared,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "订单号重复 (out_trade_no used with another amount)",
        ),
    }
}

/// The transaction as WeChat Pay describes it (in a query's answer and a notify's resource).
fn transaction(shared: &Shared, order: &Order) -> Value {
    let trade_state = match (order.paid, order.closed) {
        (true, _) => "SUCCESS",
        (false, true) => "CLOSED",
        (false, false) => "NOTPAY",
    };
    let mut value = json!({
        "appid": shared.direct.wechat_app_id,
        "mchid": shared.direct.wechat_mch_id,
        "out_trade_no": order.out_trade_no,
        "trade_type": "NATIVE",
        "trade_state": trade_state,
        "trade_state_desc": trade_state,
        "amount": {"total": order.amount_cents, "payer_total": order.amount_cents,
                   "currency": "CNY", "payer_currency": "CNY"},
    });
    if order.paid {
        value["transaction_id"] = Value::String(order.trade_no.clone());
        value["bank_type"] = Value::String("OTHERS".into());
        value["payer"] = json!({"openid": "oSimulatorBuyer000000000000"});
    }
    value
}

/// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=`.
pub async fn query(
    request: HttpRequest,
    path: web::Path<String>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(answer) = gate(&shared, &request, &[]) {
        return answer;
    }
    if let Some(answer) = query_faults(&shared).await {
        return answer;
    }
    let found = shared.world().store.find(Channel::Wechat, &path).cloned();
    match found {
        Some(order) => signed(&shared, StatusCode::OK, Some(transaction(&shared, &order))),
        None => failure(
            &shared,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "订单不存在",
        ),
    }
}

/// `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close`: 204 when closed.
pub async fn close(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(answer) = gate(&shared, &request, &body) {
        return answer;
    }
    let closed = {
        let mut world = shared.world();
        match world
            .store
            .find(Channel::Wechat, &path)
            .map(|o| o.trade_no.clone())
        {
            Some(trade_no) => world.close(&trade_no),
            None => Err(PayRefusal::Unknown),
        }
    };
    match closed {
        Ok(()) => signed(&shared, StatusCode::NO_CONTENT, None),
        Err(PayRefusal::AlreadyPaid) => {
            failure(&shared, StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付")
        }
        Err(_) => failure(
            &shared,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "订单不存在",
        ),
    }
}

/// The notify: its JSON body and signed headers, built now. A forged one is signed with a
/// key that is not the platform's and encrypted with an APIv3 key that is not the merchant's.
pub fn notify(
    shared: &Shared,
    order: &Order,
    forged: bool,
) -> (String, Vec<(&'static str, String)>) {
    let plaintext = transaction(shared, order).to_string();
    let (nonce, id) = {
        let mut world = shared.world();
        (world.nonce()[..12].to_owned(), world.nonce())
    };
    let forger_key = ApiV3Key::parse(FORGER_API_V3_KEY).expect("32 bytes");
    let key = if forged {
        &forger_key
    } else {
        &shared.direct.wechat_api_v3_key
    };
    let ciphertext = wechatpay::encrypt_resource(key, &nonce, "transaction", plaintext.as_bytes())
        .expect("a 12-byte nonce");
    let body = json!({
        "id": id,
        "create_time": engine::time::format_rfc3339_ms(now_secs() * 1000),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": "transaction",
            "nonce": nonce,
        },
    })
    .to_string();
    let headers = signed_headers(shared, body.as_bytes(), forged);
    (body, headers)
}
