//! The gateways' server-to-server APIs, spoken over HTTP: the edge's implementations of
//! `actors::channel::GatewayClient`. Merchant secrets travel only to the gateway and are
//! never logged (URLs carrying them are not logged either).

use std::time::Duration;

use actors::channel::{
    BoxFuture, GatewayClient, GatewayError, QueryAnswer, GATEWAY_CALL_TIMEOUT_MS,
};
use engine::money::parse_decimal_cents;
use engine::payment::percent_encode;
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

impl EpayClient {
    pub fn new(gateway_url: &str, pid: &str, key: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(GATEWAY_CALL_TIMEOUT_MS))
            .pool_max_idle_per_host(8)
            .build()
            .expect("an HTTP client without TLS builds");
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
            gateway_trade_no,
            amount_cents,
        })),
        _ => Err(GatewayError::Failed(
            "a paid answer without trade_no or money".into(),
        )),
    }
}

impl GatewayClient for EpayClient {
    fn query(&self, order_id: &OrderId) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
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
}
