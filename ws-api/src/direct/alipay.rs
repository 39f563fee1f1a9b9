//! Alipay Open Platform over HTTP: the signed page and wap URLs (built here, no call), the
//! precreate call whose `qr_code` the order page shows, and `alipay.trade.query` and
//! `alipay.trade.close` for reconciliation and expiry.
//!
//! Every answer is JSON `{"<method>_response": {...}, "sign": "..."}`; it is believed only
//! when `sign` verifies with Alipay's public key over the exact text of the response object,
//! as Alipay's SDKs check it.

use std::sync::Arc;

use actors::channel::{
    BoxFuture, CreateRequest, CreatedPayment, GatewayClient, GatewayError, QueryAnswer,
};
use actors::Clock;
use engine::keys::{PrivateKey, PublicKey};
use engine::money::{format_cents, parse_decimal_cents};
use engine::payment::percent_encode;
use engine::{OrderId, Payment};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::gateways::{bounded_answer, http_client};
use crate::settings::AlipaySection;

/// Alipay's production gateway.
pub const ALIPAY_GATEWAY_URL_DEFAULT: &str = "https://openapi.alipay.com/gateway.do";
/// Longest `subject` Alipay takes, in characters.
pub const SUBJECT_CHARS_MAX: usize = 256;
/// The code of a call that succeeded.
const CODE_SUCCESS: &str = "10000";
/// The code of a business refusal (`sub_code` says which).
const CODE_BUSINESS_FAILED: &str = "40004";
/// `sub_code` of a query or close for a trade Alipay never saw (the buyer never scanned).
const SUB_CODE_TRADE_NOT_EXIST: &str = "ACQ.TRADE_NOT_EXIST";

/// Which Alipay product creates payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlipayProduct {
    /// `alipay.trade.page.pay` (desktop cashier); phone buyers get `alipay.trade.wap.pay`.
    Page,
    /// `alipay.trade.wap.pay` for every buyer.
    Wap,
    /// `alipay.trade.precreate`: a QR code the order page shows.
    Precreate,
}

impl AlipayProduct {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "page" => Some(Self::Page),
            "wap" => Some(Self::Wap),
            "precreate" => Some(Self::Precreate),
            _ => None,
        }
    }
}

/// Alipay's configuration, keys parsed.
#[derive(Debug)]
pub struct AlipayConfig {
    pub app_id: String,
    pub private_key: PrivateKey,
    pub alipay_public_key: PublicKey,
    pub gateway_url: String,
    pub product: AlipayProduct,
}

impl AlipayConfig {
    /// The section checked whole: `None` when nothing of it is set; an error naming the
    /// setting that is missing or malformed otherwise.
    pub fn from_settings(section: &AlipaySection) -> anyhow::Result<Option<Self>> {
        let private_key = super::key_text(
            "alipay.private_key",
            section.private_key.as_ref(),
            section.private_key_file.as_deref(),
        )?;
        let public_key = super::key_text(
            "alipay.alipay_public_key",
            section.alipay_public_key.as_ref(),
            section.alipay_public_key_file.as_deref(),
        )?;
        let app_id = section.app_id.as_ref().filter(|a| !a.trim().is_empty());
        if app_id.is_none() && private_key.is_none() && public_key.is_none() {
            return Ok(None);
        }
        let app_id = super::required("alipay.app_id", app_id)?.to_owned();
        let private_key = super::private_key("alipay.private_key", private_key)?;
        let alipay_public_key = super::public_key("alipay.alipay_public_key", public_key)?;
        let product = AlipayProduct::parse(&section.product)
            .ok_or_else(|| anyhow::anyhow!("alipay.product must be page, wap or precreate"))?;
        super::http_url("alipay.gateway_url", &section.gateway_url)?;
        Ok(Some(Self {
            app_id,
            private_key,
            alipay_public_key,
            gateway_url: section.gateway_url.clone(),
            product,
        }))
    }
}

/// Alipay's server-to-server API and its signed payment URLs.
pub struct AlipayClient {
    http: reqwest::Client,
    config: Arc<AlipayConfig>,
    clock: Arc<dyn Clock>,
}

/// A method's answer object, once its signature verified.
type Verified = serde_json::Map<String, Value>;

impl AlipayClient {
    pub fn new(config: Arc<AlipayConfig>, clock: Arc<dyn Clock>) -> Self {
        Self {
            http: http_client(),
            config,
            clock,
        }
    }

    /// The common parameters and `biz_content` of a call, and its `sign` last.
    fn signed_params(
        &self,
        method: &str,
        biz_content: &str,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let timestamp = engine::alipay::beijing_timestamp(self.clock.now_ms() / 1000);
        let mut params: Vec<(&str, &str)> = vec![
            ("app_id", &self.config.app_id),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", engine::alipay::SIGN_TYPE_RSA2),
            ("timestamp", &timestamp),
            ("version", "1.0"),
            ("biz_content", biz_content),
        ];
        params.extend(extra.iter().filter(|(_, v)| !v.is_empty()));
        let sign = engine::alipay::sign_request(
            &params,
            &self.config.private_key,
            &ring::rand::SystemRandom::new(),
        );
        let mut owned: Vec<(String, String)> = params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        owned.push(("sign".into(), sign));
        owned
    }

    /// `biz_content` of a payment: amount in yuan with two decimals, never a float.
    fn payment_biz_content(request: &CreateRequest, product_code: Option<&str>) -> String {
        let subject: String = request.name.chars().take(SUBJECT_CHARS_MAX).collect();
        let mut biz = serde_json::json!({
            "out_trade_no": request.order_id.as_str(),
            "total_amount": format_cents(request.amount_cents),
            "subject": if subject.is_empty() { request.order_id.as_str().to_owned() } else { subject },
        });
        if let Some(code) = product_code {
            biz["product_code"] = Value::String(code.to_owned());
        }
        biz.to_string()
    }

    /// The signed `alipay.trade.page.pay` or `alipay.trade.wap.pay` URL: the buyer's browser
    /// opens it on the gateway.
    pub fn page_url(&self, request: &CreateRequest, wap: bool) -> String {
        let (method, product_code) = if wap {
            ("alipay.trade.wap.pay", "QUICK_WAP_WAY")
        } else {
            ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY")
        };
        let biz = Self::payment_biz_content(request, Some(product_code));
        let params = self.signed_params(
            method,
            &biz,
            &[
                ("notify_url", &request.notify_url),
                ("return_url", &request.return_url),
            ],
        );
        let mut url = self.config.gateway_url.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        for (index, (key, value)) in params.iter().enumerate() {
            if index > 0 {
                url.push('&');
            }
            url.push_str(key);
            url.push('=');
            percent_encode(value, &mut url);
        }
        url
    }

    /// Calls `method` (a form POST to the gateway) and returns its verified answer object.
    fn call(
        &self,
        method: &str,
        biz_content: String,
        extra: &[(&str, &str)],
    ) -> BoxFuture<Result<Verified, GatewayError>> {
        let form = self.signed_params(method, &biz_content, extra);
        let request = self
            .http
            .post(&self.config.gateway_url)
            .header("Accept", "application/json")
            .form(&form);
        let config = self.config.clone();
        let response_key = format!("{}_response", method.replace('.', "_"));
        Box::pin(async move {
            let answer = bounded_answer(request).await?;
            if !answer.status.is_success() {
                return Err(GatewayError::Failed(format!("HTTP {}", answer.status)));
            }
            verified_answer(&answer.body, &response_key, &config.alipay_public_key)
        })
    }
}

/// The answer object of `response_key`, when the answer's `sign` verifies with Alipay's
/// public key over that object's exact text (or over `error_response`'s, as the SDK reads an
/// error). An unsigned or badly signed answer is a failure: it is not believed.
pub fn verified_answer(
    body: &[u8],
    response_key: &str,
    alipay_key: &PublicKey,
) -> Result<Verified, GatewayError> {
    let envelope: std::collections::HashMap<&str, &RawValue> = serde_json::from_slice(body)
        .map_err(|_| GatewayError::Failed("the answer is not a JSON object".into()))?;
    let object = envelope
        .get(response_key)
        .or_else(|| envelope.get("error_response"))
        .ok_or_else(|| GatewayError::Failed(format!("the answer has no {response_key}")))?;
    let sign = envelope
        .get("sign")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .ok_or_else(|| GatewayError::Failed("the answer is not signed".into()))?;
    if !alipay_key.verify_base64(object.get().as_bytes(), &sign) {
        return Err(GatewayError::Failed(
            "the answer's signature does not verify with Alipay's public key".into(),
        ));
    }
    serde_json::from_str(object.get())
        .map_err(|_| GatewayError::Failed("the answer object is not a JSON object".into()))
}

fn field<'a>(answer: &'a Verified, name: &str) -> &'a str {
    answer.get(name).and_then(Value::as_str).unwrap_or("")
}

fn refusal(answer: &Verified) -> GatewayError {
    GatewayError::Failed(format!(
        "Alipay answered {} {} {}",
        field(answer, "code"),
        field(answer, "sub_code"),
        field(answer, "sub_msg")
    ))
}

fn is_trade_not_exist(answer: &Verified) -> bool {
    field(answer, "code") == CODE_BUSINESS_FAILED
        && field(answer, "sub_code") == SUB_CODE_TRADE_NOT_EXIST
}

/// Reads a verified `alipay.trade.query` answer for `order_id`.
pub fn query_answer(answer: &Verified, order_id: &OrderId) -> Result<QueryAnswer, GatewayError> {
    if is_trade_not_exist(answer) {
        return Ok(QueryAnswer::NotPaid);
    }
    if field(answer, "code") != CODE_SUCCESS {
        return Err(refusal(answer));
    }
    if field(answer, "out_trade_no") != order_id.as_str() {
        return Err(GatewayError::Failed(
            "the answer is about another order".into(),
        ));
    }
    if !matches!(
        field(answer, "trade_status"),
        "TRADE_SUCCESS" | "TRADE_FINISHED"
    ) {
        return Ok(QueryAnswer::NotPaid);
    }
    let trade_no = field(answer, "trade_no");
    let amount = parse_decimal_cents(field(answer, "total_amount"));
    match (trade_no.is_empty(), amount) {
        (false, Some(amount_cents)) => Ok(QueryAnswer::Paid(Payment {
            channel: engine::Payment::channel_named("alipay"),
            gateway_trade_no: trade_no.into(),
            amount_cents,
        })),
        _ => Err(GatewayError::Failed(
            "a paid trade without trade_no or total_amount".into(),
        )),
    }
}

fn out_trade_no_biz(order_id: &OrderId) -> String {
    serde_json::json!({"out_trade_no": order_id.as_str()}).to_string()
}

impl GatewayClient for AlipayClient {
    fn creates_locally(&self, _request: &CreateRequest) -> bool {
        self.config.product != AlipayProduct::Precreate
    }

    fn create(&self, request: &CreateRequest) -> BoxFuture<Result<CreatedPayment, GatewayError>> {
        if request.currency != "CNY" {
            return Box::pin(async { Err(GatewayError::Failed("Alipay takes CNY only".into())) });
        }
        let wap = match self.config.product {
            AlipayProduct::Page => request.phone,
            AlipayProduct::Wap => true,
            AlipayProduct::Precreate => {
                let call = self.call(
                    "alipay.trade.precreate",
                    Self::payment_biz_content(request, None),
                    &[("notify_url", &request.notify_url)],
                );
                let order_id = request.order_id.clone();
                return Box::pin(async move {
                    let answer = call.await?;
                    if field(&answer, "code") != CODE_SUCCESS {
                        return Err(refusal(&answer));
                    }
                    if field(&answer, "out_trade_no") != order_id.as_str() {
                        return Err(GatewayError::Failed(
                            "the answer is about another order".into(),
                        ));
                    }
                    match field(&answer, "qr_code") {
                        "" => Err(GatewayError::Failed(
                            "precreate answered without a qr_code".into(),
                        )),
                        qr_code => Ok(CreatedPayment {
                            url: qr_code.to_owned(),
                            reference: String::new(),
                        }),
                    }
                });
            }
        };
        let url = self.page_url(request, wap);
        Box::pin(async move {
            Ok(CreatedPayment {
                url,
                reference: String::new(),
            })
        })
    }

    fn query(
        &self,
        order_id: &OrderId,
        _reference: &str,
    ) -> BoxFuture<Result<QueryAnswer, GatewayError>> {
        let call = self.call("alipay.trade.query", out_trade_no_biz(order_id), &[]);
        let order_id = order_id.clone();
        Box::pin(async move { query_answer(&call.await?, &order_id) })
    }

    /// `alipay.trade.close`: a trade Alipay never saw needs no closing.
    fn close(&self, order_id: &OrderId, _reference: &str) -> BoxFuture<Result<(), GatewayError>> {
        let call = self.call("alipay.trade.close", out_trade_no_biz(order_id), &[]);
        Box::pin(async move {
            let answer = call.await?;
            if field(&answer, "code") == CODE_SUCCESS || is_trade_not_exist(&answer) {
                Ok(())
            } else {
                Err(refusal(&answer))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (PrivateKey, PublicKey) {
        let alipay = PrivateKey::parse(include_str!(
            "../../../simulations/keys/alipay_gateway.private.pem"
        ))
        .unwrap();
        let public = alipay.public_key();
        (alipay, public)
    }

    fn signed(object: &str, key: &PrivateKey) -> String {
        let sign = key.sign_base64(object.as_bytes(), &ring::rand::SystemRandom::new());
        format!(r#"{{"alipay_trade_query_response":{object},"sign":"{sign}"}}"#)
    }

    #[test]
    fn answers_are_believed_only_when_signed_by_alipay() {
        let (alipay, public) = keys();
        let object = r#"{"code":"10000","msg":"Success","out_trade_no":"o1","trade_no":"T1","trade_status":"TRADE_SUCCESS","total_amount":"12.50"}"#;
        let body = signed(object, &alipay);
        let answer =
            verified_answer(body.as_bytes(), "alipay_trade_query_response", &public).unwrap();
        assert_eq!(
            query_answer(&answer, &OrderId::parse("o1").unwrap()),
            Ok(QueryAnswer::Paid(Payment {
                channel: "alipay".into(),
                gateway_trade_no: "T1".into(),
                amount_cents: 1250
            }))
        );
        assert!(query_answer(&answer, &OrderId::parse("o2").unwrap()).is_err());
        let tampered = body.replace("12.50", "0.01");
        assert!(
            verified_answer(tampered.as_bytes(), "alipay_trade_query_response", &public).is_err()
        );
        let unsigned = format!(r#"{{"alipay_trade_query_response":{object}}}"#);
        assert!(
            verified_answer(unsigned.as_bytes(), "alipay_trade_query_response", &public).is_err()
        );
        let forger = PrivateKey::parse(include_str!(
            "../../../simulations/keys/wechat_platform.private.pem"
        ))
        .unwrap();
        assert!(verified_answer(
            signed(object, &forger).as_bytes(),
            "alipay_trade_query_response",
            &public
        )
        .is_err());
    }

    fn client(product: &str) -> AlipayClient {
        let section = AlipaySection {
            app_id: Some("2021000000000001".into()),
            private_key: Some(crate::settings::Secret(
                include_str!("../../../simulations/keys/alipay_app.private.pem").into(),
            )),
            alipay_public_key: Some(crate::settings::Secret(
                include_str!("../../../simulations/keys/alipay_gateway.public.pem").into(),
            )),
            gateway_url: "https://gw.example/gateway.do".into(),
            product: product.into(),
            ..AlipaySection::default()
        };
        let config = AlipayConfig::from_settings(&section).unwrap().unwrap();
        AlipayClient::new(Arc::new(config), Arc::new(actors::SystemClock))
    }

    fn request(phone: bool) -> CreateRequest {
        CreateRequest {
            order_id: OrderId::parse("o1").unwrap(),
            method: "alipay".into(),
            amount_cents: 1250,
            currency: "CNY".into(),
            name: "VPN 30 天 & more".into(),
            notify_url: "https://shop.example/api/v1/payments/alipay/notify".into(),
            return_url: "https://shop.example/".into(),
            phone,
        }
    }

    /// The URL's parameters, decoded.
    fn params(url: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap()
    }

    #[test]
    fn page_urls_are_signed_and_phones_get_wap() {
        let app_public = PublicKey::parse(include_str!(
            "../../../simulations/keys/alipay_app.public.pem"
        ))
        .unwrap();
        let cases = [
            (
                "page",
                false,
                "alipay.trade.page.pay",
                "FAST_INSTANT_TRADE_PAY",
            ),
            ("page", true, "alipay.trade.wap.pay", "QUICK_WAP_WAY"),
            ("wap", false, "alipay.trade.wap.pay", "QUICK_WAP_WAY"),
        ];
        for (product, phone, method, product_code) in cases {
            let client = client(product);
            assert!(client.creates_locally(&request(phone)));
            let wap = client.config.product == AlipayProduct::Wap || phone;
            let params = params(&client.page_url(&request(phone), wap));
            let get = |name: &str| params.iter().find(|(k, _)| k == name).unwrap().1.clone();
            assert_eq!(get("method"), method);
            let biz: Value = serde_json::from_str(&get("biz_content")).unwrap();
            assert_eq!(
                biz["total_amount"], "12.50",
                "yuan with two decimals, as text"
            );
            assert_eq!(biz["product_code"], product_code);
            let view: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let content = engine::alipay::request_content(&view);
            assert!(app_public.verify_base64(content.as_bytes(), &get("sign")));
        }
        assert!(!client("precreate").creates_locally(&request(false)));
    }

    #[test]
    fn a_trade_alipay_never_saw_is_not_paid() {
        let (alipay, public) = keys();
        let object = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"x"}"#;
        let body = signed(object, &alipay);
        let answer =
            verified_answer(body.as_bytes(), "alipay_trade_query_response", &public).unwrap();
        assert_eq!(
            query_answer(&answer, &OrderId::parse("o1").unwrap()),
            Ok(QueryAnswer::NotPaid)
        );
    }
}
