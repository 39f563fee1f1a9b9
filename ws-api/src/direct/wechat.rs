//! WeChat Pay API v3 over HTTP: Native payments (`code_url`, shown as a QR code), the order
//! query for reconciliation and the close at expiry. Requests carry the
//! `WECHATPAY2-SHA256-RSA2048` authorisation; answers are believed only once their
//! `Wechatpay-Signature` verifies with WeChat Pay's public key and their timestamp is fresh.

use std::sync::Arc;

use anyhow::Context;

use actors::channel::{
    BoxFuture, CreateRequest, CreatedPayment, GatewayClient, GatewayError, QueryAnswer,
};
use actors::Clock;
use engine::keys::{PrivateKey, PublicKey};
use engine::payment::{percent_encode, signatures_equal};
use engine::wechatpay::{self, ApiV3Key, Merchant, RequestToSign, SignedHeaders};
use engine::{OrderId, Payment};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::gateways::{bounded_answer, http_client, Answer};
use crate::settings::WechatSection;

/// WeChat Pay's production API.
pub const WECHAT_API_BASE_DEFAULT: &str = "https://api.mch.weixin.qq.com";
/// Longest `description` WeChat Pay takes, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 127;

/// WeChat Pay's configuration, keys parsed.
#[derive(Debug)]
pub struct WechatConfig {
    pub mch_id: String,
    pub app_id: String,
    pub api_v3_key: ApiV3Key,
    pub merchant_private_key: PrivateKey,
    pub merchant_serial_no: String,
    pub platform_public_key: PublicKey,
    pub api_base: String,
}

impl WechatConfig {
    /// The section checked whole: `None` when nothing of it is set; an error naming the
    /// setting that is missing or malformed otherwise.
    pub fn from_settings(section: &WechatSection) -> anyhow::Result<Option<Self>> {
        let private_key = super::key_text(
            "wechat.merchant_private_key",
            section.merchant_private_key.as_ref(),
            section.merchant_private_key_file.as_deref(),
        )?;
        let platform_key = super::key_text(
            "wechat.platform_public_key",
            section.platform_public_key.as_ref(),
            section.platform_public_key_file.as_deref(),
        )?;
        let api_v3_key = super::key_text(
            "wechat.api_v3_key",
            section.api_v3_key.as_ref(),
            section.api_v3_key_file.as_deref(),
        )?;
        let mch_id = section.mch_id.as_ref().filter(|m| !m.trim().is_empty());
        if mch_id.is_none()
            && private_key.is_none()
            && platform_key.is_none()
            && api_v3_key.is_none()
        {
            return Ok(None);
        }
        let merchant_private_key = super::private_key("wechat.merchant_private_key", private_key)?;
        let platform_public_key = super::public_key("wechat.platform_public_key", platform_key)?;
        let api_v3_key = api_v3_key.context("wechat.api_v3_key is missing")?;
        let api_v3_key = ApiV3Key::parse(&api_v3_key.0)
            .map_err(|e| anyhow::anyhow!("wechat.api_v3_key: {e}"))?;
        super::http_url("wechat.api_base", &section.api_base)?;
        Ok(Some(Self {
            mch_id: super::required("wechat.mch_id", mch_id)?.to_owned(),
            app_id: super::required("wechat.app_id", section.app_id.as_ref())?.to_owned(),
            api_v3_key,
            merchant_private_key,
            merchant_serial_no: super::required(
                "wechat.merchant_serial_no",
                section.merchant_serial_no.as_ref(),
            )?
            .to_owned(),
            platform_public_key,
            api_base: section.api_base.trim_end_matches('/').to_owned(),
        }))
    }
}

/// WeChat Pay's server-to-server API.
pub struct WechatClient {
    http: reqwest::Client,
    config: Arc<WechatConfig>,
    clock: Arc<dyn Clock>,
}

impl WechatClient {
    pub fn new(config: Arc<WechatConfig>, clock: Arc<dyn Clock>) -> Self {
        Self {
            http: http_client(),
            config,
            clock,
        }
    }

    /// A request to `path_and_query` with its `Authorization` over the exact body sent.
    fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: String,
    ) -> reqwest::RequestBuilder {
        let nonce = super::nonce();
        let to_sign = RequestToSign {
            method: method.as_str(),
            path_and_query,
            timestamp_secs: self.clock.now_ms() / 1000,
            nonce: &nonce,
            body: &body,
        };
        let merchant = Merchant {
            mch_id: &self.config.mch_id,
            serial_no: &self.config.merchant_serial_no,
            key: &self.config.merchant_private_key,
        };
        let authorization =
            wechatpay::authorization(&merchant, &to_sign, &ring::rand::SystemRandom::new());
        let url = format!("{}{path_and_query}", self.config.api_base);
        let mut builder = self
            .http
            .request(method, url)
            .header("Authorization", authorization)
            .header("Accept", "application/json")
            .header("User-Agent", concat!("panshi/", env!("CARGO_PKG_VERSION")));
        if !body.is_empty() {
            builder = builder
                .header("Content-Type", "application/json")
                .body(body);
        }
        builder
    }

    /// Sends and verifies: the answer's signature and timestamp, whatever its status.
    fn send(&self, request: reqwest::RequestBuilder) -> BoxFuture<Result<Answer, GatewayError>> {
        let config = self.config.clone();
        let clock = self.clock.clone();
        Box::pin(async move {
            let answer = bounded_answer(request).await?;
            verify_answer(&answer, &config.platform_public_key, clock.now_ms() / 1000)?;
            Ok(answer)
        })
    }

    fn out_trade_no_path(order_id: &OrderId) -> String {
        let mut path = String::from("/v3/pay/transactions/out-trade-no/");
        percent_encode(order_id.as_str(), &mut path);
        path
    }

    /// The Native create body: the amount is integer fen.
    pub fn native_body(&self, request: &CreateRequest) -> String {
        let description: String = request.name.chars().take(DESCRIPTION_CHARS_MAX).collect();
        serde_json::json!({
            "appid": self.config.app_id,
            "mchid": self.config.mch_id,
            "description": if description.is_empty() { request.order_id.as_str().to_owned() } else { description },
            "out_trade_no": request.order_id.as_str(),
            "notify_url": request.notify_url,
            "amount": {"total": request.amount_cents, "currency": "CNY"},
        })
        .to_string()
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An answer is believed only when WeChat Pay signed it, recently.
pub(crate) fn verify_answer(
    answer: &Answer,
    platform_key: &PublicKey,
    now_secs: u64,
) -> Result<(), GatewayError> {
    let headers = SignedHeaders {
        timestamp: header(answer, "Wechatpay-Timestamp"),
        nonce: header(answer, "Wechatpay-Nonce"),
        signature: header(answer, "Wechatpay-Signature"),
    };
    wechatpay::verify_signed(&headers, &answer.body, platform_key, now_secs).map_err(|rejection| {
        GatewayError::Failed(format!(
            "HTTP {}: the answer is not believed: {rejection}",
            answer.status
        ))
    })
}

/// The JSON fields of a transaction, with `amount.total` as its exact text.
#[derive(serde::Deserialize)]
pub struct Transaction<'a> {
    #[serde(default)]
    pub mchid: String,
    #[serde(default)]
    pub appid: String,
    #[serde(default)]
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: String,
    #[serde(default)]
    pub trade_state: String,
    #[serde(borrow, default)]
    pub amount: Option<Amount<'a>>,
}

#[derive(serde::Deserialize)]
pub struct Amount<'a> {
    #[serde(borrow)]
    pub total: Option<&'a RawValue>,
    #[serde(default)]
    pub currency: String,
}

/// What a verified transaction (from a query or a decrypted notify) says.
#[derive(Debug, PartialEq, Eq)]
pub enum TransactionState {
    /// `trade_state` SUCCESS: this payment.
    Paid { order_id: OrderId, payment: Payment },
    /// Any other state: pays nothing.
    NotPaid,
}

/// Reads a transaction that WeChat Pay signed: `mchid` and `appid` must be ours, the amount
/// in fen is read digit by digit and must be in CNY.
pub fn transaction_state(
    text: &[u8],
    config: &WechatConfig,
) -> Result<TransactionState, &'static str> {
    let transaction: Transaction<'_> =
        serde_json::from_slice(text).map_err(|_| "the transaction is not JSON")?;
    if !signatures_equal(&transaction.mchid, &config.mch_id)
        || !signatures_equal(&transaction.appid, &config.app_id)
    {
        return Err("the transaction is another merchant's (mchid or appid)");
    }
    if transaction.trade_state != "SUCCESS" {
        return Ok(TransactionState::NotPaid);
    }
    let order_id =
        OrderId::parse(&transaction.out_trade_no).map_err(|_| "out_trade_no is not an order id")?;
    let amount = transaction.amount.ok_or("the transaction has no amount")?;
    if amount.currency != "CNY" {
        return Err("the amount is not in CNY");
    }
    let amount_cents = amount
        .total
        .and_then(|raw| wechatpay::parse_fen(raw.get()))
        .ok_or("amount.total is not a whole number of fen")?;
    if transaction.transaction_id.is_empty() {
        return Err("the transaction has no transaction_id");
    }
    Ok(TransactionState::Paid {
        order_id,
        payment: Payment {
            channel: engine::Payment::channel_named("wechat"),
            gateway_trade_no: transaction.transaction_id.into(),
            amount_cents,
        },
    })
}

fn error_code(answer: &Answer) -> String {
    serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

impl GatewayClient for WechatClient {
    fn create(&self, request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        if request.currency != "CNY" {
            return Box::pin(async {
                Err(GatewayError::Failed("WeChat Pay takes CNY only".into()))
            });
        }
        let body = self.native_body(request);
        let send =
            self.send(self.request(reqwest::Method::POST, "/v3/pay/transactions/native", body));
        Box::pin(async move {
            let answer = send.await?;
            if !answer.status.is_success() {
                return Err(GatewayError::Failed(format!(
                    "HTTP {} {}",
                    answer.status,
                    error_code(&answer)
                )));
            }
            let code_url = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("code_url").and_then(Value::as_str).map(str::to_owned))
                .filter(|u| !u.is_empty())
                .ok_or_else(|| GatewayError::Failed("native answered without a code_url".into()))?;
            Ok(CreatedPayment {
                url: code_url,
                reference: String::new(),
            })
        })
    }

    fn query(
        &self,
        order_id: &OrderId,
        _reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
        let mut path = Self::out_trade_no_path(order_id);
        path.push_str("?mchid=");
        percent_encode(&self.config.mch_id, &mut path);
        let send = self.send(self.request(reqwest::Method::GET, &path, String::new()));
        let config = self.config.clone();
        let order_id = order_id.clone();
        Box::pin(async move {
            let answer = send.await?;
            if answer.status == reqwest::StatusCode::NOT_FOUND
                && error_code(&answer) == "ORDER_NOT_EXIST"
            {
                return Ok(QueryAnswer::NotPaid);
            }
            if !answer.status.is_success() {
                return Err(GatewayError::Failed(format!(
                    "HTTP {} {}",
                    answer.status,
                    error_code(&answer)
                )));
            }
            match transaction_state(&answer.body, &config)
                .map_err(|e| GatewayError::Failed(e.into()))?
            {
                TransactionState::Paid {
                    order_id: paid,
                    payment,
                } if paid == order_id => Ok(QueryAnswer::Paid(payment)),
                TransactionState::Paid { .. } => Err(GatewayError::Failed(
                    "the answer is about another order".into(),
                )),
                TransactionState::NotPaid => Ok(QueryAnswer::NotPaid),
            }
        })
    }

    /// `POST .../{out_trade_no}/close`: 204 when closed; an order WeChat Pay never saw
    /// needs no closing.
    fn close(&self, order_id: &OrderId, _reference: &str) -> BoxFuture<Result<(), GatewayError>> {
        let path = format!("{}/close", Self::out_trade_no_path(order_id));
        let body = serde_json::json!({"mchid": self.config.mch_id}).to_string();
        let send = self.send(self.request(reqwest::Method::POST, &path, body));
        Box::pin(async move {
            let answer = send.await?;
            if answer.status.is_success() || error_code(&answer) == "ORDER_NOT_EXIST" {
                Ok(())
            } else {
                Err(GatewayError::Failed(format!(
                    "HTTP {} {}",
                    answer.status,
                    error_code(&answer)
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WechatConfig {
        let section = WechatSection {
            mch_id: Some("1900000001".into()),
            app_id: Some("wx00000000000000a1".into()),
            api_v3_key: Some(crate::settings::Secret(
                "panshi-simulator-apiv3-key-32byt".into(),
            )),
            merchant_private_key: Some(crate::settings::Secret(
                include_str!("../../../simulations/keys/wechat_merchant.private.pem").into(),
            )),
            merchant_serial_no: Some("5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into()),
            platform_public_key: Some(crate::settings::Secret(
                include_str!("../../../simulations/keys/wechat_platform.public.pem").into(),
            )),
            ..WechatSection::default()
        };
        WechatConfig::from_settings(&section).unwrap().unwrap()
    }

    fn transaction(mchid: &str, total: &str, currency: &str) -> String {
        format!(
            r#"{{"mchid":"{mchid}","appid":"wx00000000000000a1","out_trade_no":"o1","transaction_id":"42001","trade_state":"SUCCESS","amount":{{"total":{total},"currency":"{currency}"}}}}"#
        )
    }

    #[test]
    fn transactions_are_ours_in_cny_and_whole_fen() {
        let config = config();
        let paid = transaction_state(transaction("1900000001", "1250", "CNY").as_bytes(), &config);
        assert_eq!(
            paid,
            Ok(TransactionState::Paid {
                order_id: OrderId::parse("o1").unwrap(),
                payment: Payment {
                    channel: "wechat".into(),
                    gateway_trade_no: "42001".into(),
                    amount_cents: 1250
                }
            })
        );
        for refused in [
            transaction("1900000999", "1250", "CNY"),
            transaction("1900000001", "12.5", "CNY"),
            transaction("1900000001", "1.25e3", "CNY"),
            transaction("1900000001", "1250", "USD"),
        ] {
            assert!(
                transaction_state(refused.as_bytes(), &config).is_err(),
                "{refused}"
            );
        }
        let waiting = transaction("1900000001", "1250", "CNY").replace("SUCCESS", "NOTPAY");
        assert_eq!(
            transaction_state(waiting.as_bytes(), &config),
            Ok(TransactionState::NotPaid)
        );
    }

    #[test]
    fn the_configuration_prints_no_key() {
        let printed = format!("{:?}", config());
        assert!(!printed.contains("MII"), "{printed}");
        assert!(!printed.contains("apiv3-key"), "{printed}");
    }
}
