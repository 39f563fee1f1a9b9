//! The gateways' server-to-server APIs, spoken over HTTP: the edge's implementations of
//! `actors::channel::GatewayClient`. Merchant secrets travel only to the gateway and are
//! never logged (URLs carrying them are not logged either).

use std::time::Duration;

use actors::channel::{
    BoxFuture, CreateRequest, CreatedPayment, GatewayClient, GatewayError, QueryAnswer,
    GATEWAY_CALL_TIMEOUT_MS,
};
use engine::money::{format_cents_shortest, parse_decimal_cents};
use engine::payment::{epusdt_sign, percent_encode};
use engine::{OrderId, Payment};
use serde_json::Value;

/// Largest gateway answer read.
pub const GATEWAY_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Epay's order query: `api.php?act=order&pid=..&key=..&out_trade_no=..`; `code` 1 and
/// `status` 1 mean paid.
pub struct EpayClient {
    http: reqwest::Client,
    gateway_url: String,
    pid: String,
    key: String,
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(GATEWAY_CALL_TIMEOUT_MS))
        .pool_max_idle_per_host(8)
        .build()
        .expect("an HTTP client without TLS builds")
}

pub(crate) fn failed(error: reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::Timeout
    } else {
        GatewayError::Failed(error.without_url().to_string())
    }
}

/// A gateway's answer, its body read up to [`GATEWAY_ANSWER_BYTES_MAX`].
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Sends a request and reads its answer whatever the status, refusing one that is too large.
pub(crate) async fn bounded_answer(
    request: reqwest::RequestBuilder,
) -> Result<Answer, GatewayError> {
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > GATEWAY_ANSWER_BYTES_MAX {
            return Err(GatewayError::Failed("answer too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends a request and reads a bounded JSON answer; a non-2xx status is a failure.
async fn json_answer(request: reqwest::RequestBuilder) -> Result<Value, GatewayError> {
    let answer = bounded_answer(request).await?;
    if !answer.status.is_success() {
        return Err(GatewayError::Failed(format!("HTTP {}", answer.status)));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|_| GatewayError::Failed("answer is not JSON".into()))
}

impl EpayClient {
    pub fn new(gateway_url: &str, pid: &str, key: &str) -> Self {
        let http = http_client();
        Self {
            http,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            pid: pid.to_owned(),
            key: key.to_owned(),
        }
    }

    fn query_url(&self, order_id: &OrderId) -> String {
        let mut url = format!("{}/api.php?act=order&pid=", self.gateway_url);
        percent_encode(&self.pid, &mut url);
        url.push_str("&key=");
        percent_encode(&self.key, &mut url);
        url.push_str("&out_trade_no=");
        percent_encode(order_id.as_str(), &mut url);
        url
    }
}

/// `1` or `"1"`: Epay implementations differ on the type.
fn is_one(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        Some(Value::String(s)) => s == "1",
        _ => false,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads an Epay query answer. A known order that is paid is `Paid`; anything else the
/// gateway answers cleanly (unpaid, unknown order) is `NotPaid`.
pub fn epay_query_answer(answer: &Value) -> Result<QueryAnswer, GatewayError> {
    if !is_one(answer.get("code")) || !is_one(answer.get("status")) {
        return Ok(QueryAnswer::NotPaid);
    }
    let trade_no = text(answer.get("trade_no")).filter(|t| !t.is_empty());
    let money = text(answer.get("money")).and_then(|m| parse_decimal_cents(&m));
    match (trade_no, money) {
        (Some(gateway_trade_no), Some(amount_cents)) => Ok(QueryAnswer::Paid(Payment {
            channel: "epay".into(),
            gateway_trade_no: gateway_trade_no.into(),
            amount_cents,
        })),
        _ => Err(GatewayError::Failed(
            "a paid answer without trade_no or money".into(),
        )),
    }
}

impl EpayClient {
    /// The signed `mapi.php` form for a payment; empty fields are left out.
    pub fn mapi_form(&self, request: &CreateRequest) -> Vec<(String, String)> {
        let money = engine::money::format_cents(request.amount_cents);
        let fields = [
            ("pid", self.pid.as_str()),
            ("type", request.method.as_str()),
            ("out_trade_no", request.order_id.as_str()),
            ("notify_url", request.notify_url.as_str()),
            ("return_url", request.return_url.as_str()),
            ("name", request.name.as_str()),
            ("money", money.as_str()),
        ];
        let mut form: Vec<(String, String)> = fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        form.push(("sign".into(), engine::payment::epay_sign(fields, &self.key)));
        form.push(("sign_type".into(), "MD5".into()));
        form
    }
}

impl GatewayClient for EpayClient {
    /// `mapi.php`: the gateway creates the payment; `code` 1 and a `payurl` (or a QR-code
    /// URL) mean created.
    fn create(&self, request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        let call = self
            .http
            .post(format!("{}/mapi.php", self.gateway_url))
            .form(&self.mapi_form(request));
        Box::pin(async move {
            let answer = json_answer(call).await?;
            if !is_one(answer.get("code")) {
                let message = text(answer.get("msg")).unwrap_or_else(|| "mapi.php refused".into());
                return Err(GatewayError::Failed(message));
            }
            let url = ["payurl", "qrcode", "urlscheme"]
                .iter()
                .find_map(|k| text(answer.get(*k)).filter(|u| !u.is_empty()))
                .ok_or_else(|| {
                    GatewayError::Failed("mapi.php answered without a payment URL".into())
                })?;
            let reference = text(answer.get("trade_no")).unwrap_or_default();
            Ok(CreatedPayment { url, reference })
        })
    }

    fn query(
        &self,
        order_id: &OrderId,
        _reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
        let request = self.http.get(self.query_url(order_id));
        Box::pin(async move {
            let response = request.send().await.map_err(|e| {
                if e.is_timeout() {
                    GatewayError::Timeout
                } else {
                    GatewayError::Failed(e.without_url().to_string())
                }
            })?;
            if !response.status().is_success() {
                return Err(GatewayError::Failed(format!("HTTP {}", response.status())));
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| GatewayError::Failed(e.without_url().to_string()))?;
            if body.len() > GATEWAY_ANSWER_BYTES_MAX {
                return Err(GatewayError::Failed("answer too large".into()));
            }
            let answer: Value = serde_json::from_slice(&body)
                .map_err(|_| GatewayError::Failed("answer is not JSON".into()))?;
            epay_query_answer(&answer)
        })
    }
}

/// epusdt: `POST {gateway_url}/api/v1/order/create-transaction`; the answer's
/// `data.payment_url` is where the buyer pays. epusdt has no query API that Panshi uses.
pub struct EpusdtClient {
    http: reqwest::Client,
    gateway_url: String,
    token: String,
}

impl EpusdtClient {
    pub fn new(gateway_url: &str, token: &str) -> Self {
        Self {
            http: http_client(),
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// The request body: `amount` a JSON number in its shortest decimal form, written as
    /// text (never through a float), and the signature over the same text.
    pub fn create_body(&self, request: &CreateRequest) -> String {
        let amount = format_cents_shortest(request.amount_cents);
        let fields = [
            ("amount", amount.as_str()),
            ("notify_url", request.notify_url.as_str()),
            ("order_id", request.order_id.as_str()),
            ("redirect_url", request.return_url.as_str()),
        ];
        let signature = epusdt_sign(fields, &self.token);
        let quoted = |text: &str| Value::String(text.to_owned()).to_string();
        format!(
            r#"{{"order_id":{},"amount":{amount},"notify_url":{},"redirect_url":{},"signature":{}}}"#,
            quoted(request.order_id.as_str()),
            quoted(&request.notify_url),
            quoted(&request.return_url),
            quoted(&signature)
        )
    }
}

impl GatewayClient for EpusdtClient {
    fn query(
        &self,
        _order_id: &OrderId,
        _reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
        Box::pin(async { Ok(QueryAnswer::NotPaid) })
    }

    fn create(&self, request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        let url = format!("{}/api/v1/order/create-transaction", self.gateway_url);
        let call = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .body(self.create_body(request));
        Box::pin(async move {
            let answer = json_answer(call).await?;
            let data = answer.get("data");
            let url = data
                .and_then(|d| text(d.get("payment_url")))
                .filter(|u| !u.is_empty());
            let reference = data
                .and_then(|d| text(d.get("trade_id")))
                .unwrap_or_default();
            match url {
                Some(url) => Ok(CreatedPayment { url, reference }),
                None => Err(GatewayError::Failed(
                    "create-transaction answered without a payment_url".into(),
                )),
            }
        })
    }
}

/// Stripe Checkout: `POST {api_base}/v1/checkout/sessions` (form, Bearer secret key) to
/// create, `GET {api_base}/v1/checkout/sessions/{id}` to query, over TLS for an https
/// base (rustls with the Mozilla roots built in; tests point it at an http double).
pub struct StripeClient {
    http: reqwest::Client,
    api_base: String,
    secret_key: String,
}

impl StripeClient {
    pub fn new(api_base: &str, secret_key: &str) -> Self {
        Self {
            http: http_client(),
            api_base: api_base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
        }
    }

    pub fn create_form(request: &CreateRequest) -> Vec<(&'static str, String)> {
        vec![
            ("mode", "payment".into()),
            ("client_reference_id", request.order_id.as_str().into()),
            ("success_url", request.return_url.clone()),
            ("line_items[0][quantity]", "1".into()),
            (
                "line_items[0][price_data][currency]",
                request.currency.to_ascii_lowercase(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                request.amount_cents.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                request.name.clone(),
            ),
            ("metadata[order_id]", request.order_id.as_str().into()),
        ]
    }
}

/// A Checkout Session as a query answers it: paid when `payment_status` is `paid`.
pub fn stripe_session_answer(session: &Value) -> Result<QueryAnswer, GatewayError> {
    if session.get("payment_status").and_then(Value::as_str) != Some("paid") {
        return Ok(QueryAnswer::NotPaid);
    }
    let id = text(session.get("id")).filter(|i| !i.is_empty());
    let amount = session.get("amount_total").and_then(Value::as_u64);
    match (id, amount) {
        (Some(gateway_trade_no), Some(amount_cents)) => Ok(QueryAnswer::Paid(Payment {
            channel: "stripe".into(),
            gateway_trade_no: gateway_trade_no.into(),
            amount_cents,
        })),
        _ => Err(GatewayError::Failed(
            "a paid session without id or amount_total".into(),
        )),
    }
}

impl GatewayClient for StripeClient {
    /// `POST /v1/checkout/sessions/{id}/expire`: the buyer can no longer pay this session.
    fn close(&self, _order_id: &OrderId, reference: &str) -> BoxFuture<Result<(), GatewayError>> {
        if reference.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let mut url = format!("{}/v1/checkout/sessions/", self.api_base);
        percent_encode(reference, &mut url);
        url.push_str("/expire");
        let call = self.http.post(url).bearer_auth(&self.secret_key);
        Box::pin(async move { json_answer(call).await.map(|_| ()) })
    }

    fn query(
        &self,
        _order_id: &OrderId,
        reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
        if reference.is_empty() {
            return Box::pin(async { Ok(QueryAnswer::NotPaid) });
        }
        let mut url = format!("{}/v1/checkout/sessions/", self.api_base);
        percent_encode(reference, &mut url);
        let call = self.http.get(url).bearer_auth(&self.secret_key);
        Box::pin(async move { stripe_session_answer(&json_answer(call).await?) })
    }

    fn create(&self, request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        let url = format!("{}/v1/checkout/sessions", self.api_base);
        let call = self
            .http
            .post(url)
            .bearer_auth(&self.secret_key)
            .form(&Self::create_form(request));
        Box::pin(async move {
            let session = json_answer(call).await?;
            let url = text(session.get("url")).filter(|u| !u.is_empty());
            let reference = text(session.get("id")).filter(|i| !i.is_empty());
            match (url, reference) {
                (Some(url), Some(reference)) => Ok(CreatedPayment { url, reference }),
                _ => Err(GatewayError::Failed("a session without url or id".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn epay_answers_are_read_as_gateways_send_them() {
        let paid = json!({"code": 1, "status": "1", "trade_no": "G1", "money": "12.50"});
        assert_eq!(
            epay_query_answer(&paid),
            Ok(QueryAnswer::Paid(Payment {
                channel: "epay".into(),
                gateway_trade_no: "G1".into(),
                amount_cents: 1250
            }))
        );
        let unpaid = json!({"code": 1, "status": 0, "trade_no": "G1", "money": "0"});
        assert_eq!(epay_query_answer(&unpaid), Ok(QueryAnswer::NotPaid));
        let unknown = json!({"code": -1, "msg": "order not found"});
        assert_eq!(epay_query_answer(&unknown), Ok(QueryAnswer::NotPaid));
        assert!(epay_query_answer(&json!({"code": 1, "status": 1})).is_err());
    }

    #[test]
    fn epusdt_requests_carry_the_amount_as_shortest_decimal_text_and_sign_it() {
        let client = EpusdtClient::new("http://gw", "TOKEN");
        let request = CreateRequest {
            method: String::new(),
            order_id: OrderId::parse("o1").unwrap(),
            amount_cents: 2880,
            currency: "CNY".into(),
            name: "x".into(),
            notify_url: "http://shop/n".into(),
            return_url: "http://shop/".into(),
            phone: false,
        };
        let body: Value = serde_json::from_str(&client.create_body(&request)).unwrap();
        assert_eq!(body["amount"].to_string(), "28.8");
        let signed =
            "amount=28.8&notify_url=http://shop/n&order_id=o1&redirect_url=http://shop/TOKEN";
        let want =
            engine::payment::hex_lower(&<md5::Md5 as md5::Digest>::digest(signed.as_bytes()));
        assert_eq!(body["signature"], want.as_str());
    }

    #[test]
    fn stripe_sessions_are_read_as_stripe_sends_them() {
        let paid = json!({"id": "cs_1", "payment_status": "paid", "amount_total": 1250});
        assert_eq!(
            stripe_session_answer(&paid),
            Ok(QueryAnswer::Paid(Payment {
                channel: "stripe".into(),
                gateway_trade_no: "cs_1".into(),
                amount_cents: 1250
            }))
        );
        assert_eq!(
            stripe_session_answer(&json!({"payment_status": "unpaid"})),
            Ok(QueryAnswer::NotPaid)
        );
    }
}
