//! Epay (易支付): the buyer's cashier `submit.php`, the server-side create `mapi.php`, and the
//! order query `api.php?act=order`.
//!
//! Parameters come from the query string and, for POST, a form body too. `submit.php`
//! decides by where they came from: a POST whose parameters are in the query string is the
//! cashier's own Pay button and pays; a GET, or a POST carrying them in its body (how
//! merchants' auto-submitting forms arrive), shows the cashier.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::money::{parse_decimal_cents, AMOUNT_CENTS_MAX};
use engine::payment::{epay_sign, epay_submit_url, signatures_equal};
use serde_json::json;

use super::notify::{self, Payment};
use super::store::{Channel, Details, EpayDetails, Order};
use super::{outage_answer, page, query_faults, Shared, PARAMS_COUNT_MAX, URL_BYTES_MAX};

/// Longest `out_trade_no`; real Epay columns are 64 characters.
pub const OUT_TRADE_NO_BYTES_MAX: usize = 64;
/// Longest `name`, `type` or `param`.
pub const TEXT_BYTES_MAX: usize = 256;

/// Request parameters, each name at most once.
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(query: &str, body: &[u8]) -> Result<Self, &'static str> {
        let mut pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|_| "the query string is malformed")?;
        if !body.is_empty() {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|_| "the body is not a form")?;
            pairs.extend(form);
        }
        if pairs.len() > PARAMS_COUNT_MAX {
            return Err("too many parameters");
        }
        for (index, (name, _)) in pairs.iter().enumerate() {
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err("a parameter appears twice");
            }
        }
        Ok(Self(pairs))
    }

    /// The value, or "" when absent (which Epay treats the same as empty).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn verify_signature(&self, key: &str) -> Result<(), &'static str> {
        let sign_type = self.get("sign_type");
        if !sign_type.is_empty() && !sign_type.eq_ignore_ascii_case("MD5") {
            return Err("sign_type must be MD5");
        }
        let expected = epay_sign(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())), key);
        if !signatures_equal(&expected, &self.get("sign").to_ascii_lowercase()) {
            return Err("签名校验失败 (bad signature)");
        }
        Ok(())
    }
}

/// A checked create request.
struct NewOrder {
    out_trade_no: String,
    notify_url: String,
    money: String,
    amount_cents: u64,
    details: EpayDetails,
}

fn check_create(shared: &Shared, params: &Params) -> Result<NewOrder, &'static str> {
    params.verify_signature(&shared.key)?;
    if !signatures_equal(params.get("pid"), &shared.pid) {
        return Err("unknown merchant (pid)");
    }
    let out_trade_no = params.get("out_trade_no");
    if out_trade_no.is_empty() || out_trade_no.len() > OUT_TRADE_NO_BYTES_MAX {
        return Err("out_trade_no must be 1 to 64 bytes");
    }
    let notify_url = params.get("notify_url");
    if !is_http_url(notify_url) {
        return Err("notify_url must be an http or https URL");
    }
    let return_url = params.get("return_url");
    if !return_url.is_empty() && !is_http_url(return_url) {
        return Err("return_url must be an http or https URL");
    }
    let money = params.get("money");
    let amount_cents = parse_decimal_cents(money)
        .filter(|cents| (1..=AMOUNT_CENTS_MAX).contains(cents))
        .ok_or("money must be a positive decimal amount with at most two decimals")?;
    let texts = [params.get("name"), params.get("type"), params.get("param")];
    if texts.iter().any(|t| t.len() > TEXT_BYTES_MAX) {
        return Err("name, type and param must be at most 256 bytes");
    }
    Ok(NewOrder {
        out_trade_no: out_trade_no.to_owned(),
        notify_url: notify_url.to_owned(),
        money: money.to_owned(),
        amount_cents,
        details: EpayDetails {
            pay_type: params.get("type").to_owned(),
            name: params.get("name").to_owned(),
            param: params.get("param").to_owned(),
        },
    })
}

pub(crate) fn is_http_url(text: &str) -> bool {
    text.len() <= URL_BYTES_MAX && (text.starts_with("http://") || text.starts_with("https://"))
}

/// Creates the order, or finds the one already created with the same id and amount (a
/// merchant retrying, or the buyer reloading the cashier). Returns its `trade_no`.
fn create_or_reuse(shared: &Shared, params: &Params) -> Result<String, &'static str> {
    let new = check_create(shared, params)?;
    let key = (Channel::Epay, new.out_trade_no.as_str());
    let order = |trade_no| {
        Order::new(
            trade_no,
            new.out_trade_no.clone(),
            new.amount_cents,
            new.money.clone(),
            new.notify_url.clone(),
            Details::Epay(new.details.clone()),
        )
    };
    shared
        .world()
        .create_or_reuse(key, new.amount_cents, order)
        .ok_or("订单号已存在 (out_trade_no already used with another amount)")
}

/// `GET|POST /submit.php`: the buyer's cashier, and its Pay button.
pub async fn submit(
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
    let trade_no = match create_or_reuse(&shared, &params) {
        Ok(trade_no) => trade_no,
        Err(message) => return refusal_page(message),
    };
    let pay_button = request.method() == Method::POST && !request.query_string().is_empty();
    if !pay_button {
        let query = serde_urlencoded::to_string(&params.0).expect("pairs of strings encode");
        let lines = [
            ("Merchant order", params.get("out_trade_no")),
            ("Item", params.get("name")),
            ("Amount (CNY)", params.get("money")),
            ("Method", params.get("type")),
        ];
        return page::cashier("Epay cashier", &lines, &format!("submit.php?{query}"));
    }
    let return_url = params.get("return_url");
    match notify::pay(&shared, &trade_no) {
        Payment::Paid { .. } => page::paid("Epay cashier", false, return_url),
        Payment::AlreadyPaid => page::paid("Epay cashier", true, return_url),
        // Evicted between the two locks: only under a flood of new orders.
        Payment::Unknown => refusal_page("the order was evicted; create it again"),
        Payment::Closed => refusal_page("the order is closed"),
    }
}

fn refusal_page(message: &str) -> HttpResponse {
    page::refusal("gateway simulator", message)
}

/// `GET|POST /mapi.php`: the server-side create; answers the cashier's URL.
pub async fn mapi(
    request: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    if shared.world().chance_of(|f| f.create_fail_percent) {
        return HttpResponse::InternalServerError().body("create failed (fault injected)");
    }
    let created = Params::parse(request.query_string(), &body)
        .and_then(|params| Ok((create_or_reuse(&shared, &params)?, params)));
    match created {
        Ok((trade_no, params)) => HttpResponse::Ok().json(json!({
            "code": 1,
            "msg": "succ",
            "trade_no": trade_no,
            "payurl": payurl(&shared, &params),
        })),
        Err(message) => HttpResponse::Ok().json(json!({"code": -1, "msg": message})),
    }
}

/// The cashier's URL for a created order, signed like a merchant's own link.
fn payurl(shared: &Shared, params: &Params) -> String {
    let fields: Vec<(&str, &str)> = ["pid", "type", "out_trade_no", "notify_url", "return_url"]
        .into_iter()
        .chain(["name", "money", "param"])
        .map(|name| (name, params.get(name)))
        .collect();
    epay_submit_url(&shared.base_url, &shared.key, &fields)
}

/// `GET /api.php?act=order&pid=..&key=..&out_trade_no=..` (or `trade_no=..`).
pub async fn query(request: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(answer) = outage_answer(&shared) {
        return answer;
    }
    if let Some(answer) = query_faults(&shared).await {
        return answer;
    }
    let answer = Params::parse(request.query_string(), &[])
        .and_then(|params| order_status(&shared, &params));
    match answer {
        Ok(status) => HttpResponse::Ok().json(status),
        Err(message) => HttpResponse::Ok().json(json!({"code": -1, "msg": message})),
    }
}

fn order_status(shared: &Shared, params: &Params) -> Result<serde_json::Value, &'static str> {
    if params.get("act") != "order" {
        return Err("unknown act; only act=order is simulated");
    }
    let merchant_ok = signatures_equal(params.get("pid"), &shared.pid)
        & signatures_equal(params.get("key"), &shared.key);
    if !merchant_ok {
        return Err("商户ID或密钥错误 (wrong pid or key)");
    }
    let world = shared.world();
    let order = match (params.get("out_trade_no"), params.get("trade_no")) {
        ("", "") => return Err("out_trade_no or trade_no is required"),
        ("", trade_no) => world.store.get(trade_no),
        (out_trade_no, _) => world.store.find(Channel::Epay, out_trade_no),
    }
    .filter(|order| order.channel() == Channel::Epay)
    .ok_or("订单号不存在 (unknown order)")?;
    let Details::Epay(details) = &order.details else {
        unreachable!("filtered to Epay orders");
    };
    Ok(json!({
        "code": 1,
        "msg": "succ",
        "trade_no": order.trade_no,
        "out_trade_no": order.out_trade_no,
        "type": details.pay_type,
        "pid": shared.pid,
        "name": details.name,
        "money": order.money,
        "param": details.param,
        "status": u8::from(order.paid),
    }))
}
