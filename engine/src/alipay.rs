//! Alipay Open Platform (RSA2) rules that need no I/O: the content a request signs, and a
//! notify's verification exactly as Alipay's official SDK (`alipay-sdk` for Node.js,
//! `checkNotifySignV2`) verifies one.
//!
//! Invariants: a notify pays nothing unless SHA256withRSA by Alipay's public key verifies
//! over its parameters and its `app_id` is ours; parameters are unique and bounded; the
//! amount is read digit by digit (`money::parse_decimal_cents`), never through a float.

use ring::rand::SecureRandom;

use crate::ids::OrderId;
use crate::keys::{PrivateKey, PublicKey};
use crate::money::parse_decimal_cents;
use crate::payment::signatures_equal;
use crate::Rejection;

/// Most parameters a notify may carry (real ones carry about 30).
pub const ALIPAY_PARAMS_COUNT_MAX: usize = 64;
/// The only signature type Panshi speaks: SHA256withRSA.
pub const SIGN_TYPE_RSA2: &str = "RSA2";

/// Sorted by key in byte order, `k=v` joined with `&`, values as they are (not encoded).
fn joined<'a>(mut pairs: Vec<(&'a str, &'a str)>) -> String {
    pairs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut content = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            content.push('&');
        }
        content.push_str(key);
        content.push('=');
        content.push_str(value);
    }
    content
}

/// What a request signs: every parameter with a non-empty value except `sign` (so
/// `sign_type` is signed), sorted by key, `k=v` joined by `&`.
pub fn request_content(params: &[(&str, &str)]) -> String {
    joined(
        params
            .iter()
            .copied()
            .filter(|(k, v)| !v.is_empty() && *k != "sign")
            .collect(),
    )
}

/// The `sign` of a request: RSA2 over [`request_content`] with the merchant's application key.
pub fn sign_request(params: &[(&str, &str)], key: &PrivateKey, rng: &dyn SecureRandom) -> String {
    key.sign_base64(request_content(params).as_bytes(), rng)
}

/// What a notify signs, as Alipay documents it: every parameter but `sign` and `sign_type`,
/// sorted, `k=v` joined by `&`, the decoded values. With `with_sign_type` the content keeps
/// `sign_type` (`RSA2` when absent): the SDK accepts either form (its `rsaCheckV2` and
/// `rsaCheckV1` merged), and so does Panshi.
pub fn notify_content(params: &[(&str, &str)], with_sign_type: bool) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .copied()
        .filter(|(k, _)| !k.is_empty() && *k != "sign" && *k != "sign_type")
        .collect();
    if with_sign_type {
        let sign_type = params
            .iter()
            .find(|(k, v)| *k == "sign_type" && !v.is_empty())
            .map_or(SIGN_TYPE_RSA2, |(_, v)| *v);
        pairs.push(("sign_type", sign_type));
    }
    joined(pairs)
}

/// An Alipay notify whose signature and `app_id` checked out.
#[derive(Debug, PartialEq, Eq)]
pub struct AlipayNotify {
    pub order_id: OrderId,
    /// Alipay's transaction number.
    pub trade_no: String,
    pub amount_cents: u64,
    /// `trade_status` is `TRADE_SUCCESS` or `TRADE_FINISHED`.
    pub paid: bool,
}

/// The value of `name`, `None` when absent; a parameter given twice is malformed.
fn single<'a>(params: &'a [(&'a str, &'a str)], name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut found = params.iter().filter(|(k, _)| *k == name);
    let first = found.next().map(|(_, v)| *v);
    if found.next().is_some() {
        return Err(Rejection::MalformedNotify("a parameter appears twice"));
    }
    Ok(first)
}

/// Verifies an Alipay notify (its form parameters, decoded once) as the SDK does: RSA2 by
/// Alipay's public key over [`notify_content`] with `sign_type`, else without it; then the
/// `app_id`, then the fields. The amount is checked against the order by the order's owner.
pub fn verify_notify(
    params: &[(&str, &str)],
    alipay_key: &PublicKey,
    app_id: &str,
) -> Result<AlipayNotify, Rejection> {
    if params.len() > ALIPAY_PARAMS_COUNT_MAX {
        return Err(Rejection::MalformedNotify("too many parameters"));
    }
    for (name, _) in params {
        single(params, name)?;
    }
    let sign = single(params, "sign")?
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::MalformedNotify("sign is missing"))?;
    if let Some(sign_type) = single(params, "sign_type")?.filter(|t| !t.is_empty()) {
        if sign_type != SIGN_TYPE_RSA2 {
            return Err(Rejection::MalformedNotify("sign_type must be RSA2"));
        }
    }
    let verified = [true, false]
        .into_iter()
        .any(|with| alipay_key.verify_base64(notify_content(params, with).as_bytes(), sign));
    if !verified {
        return Err(Rejection::BadSignature);
    }
    if !signatures_equal(single(params, "app_id")?.unwrap_or(""), app_id) {
        return Err(Rejection::WrongMerchant);
    }
    let required = |name: &'static str| match single(params, name) {
        Ok(Some(value)) if !value.is_empty() => Ok(value),
        Ok(_) => Err(Rejection::MalformedNotify(name)),
        Err(rejection) => Err(rejection),
    };
    let order_id = OrderId::parse(required("out_trade_no")?)?;
    let trade_no = required("trade_no")?.to_owned();
    let amount_cents = parse_decimal_cents(required("total_amount")?).ok_or(
        Rejection::MalformedNotify("total_amount is not a decimal amount"),
    )?;
    let paid = matches!(
        required("trade_status")?,
        "TRADE_SUCCESS" | "TRADE_FINISHED"
    );
    Ok(AlipayNotify {
        order_id,
        trade_no,
        amount_cents,
        paid,
    })
}

/// Alipay's `timestamp` parameter: `yyyy-MM-dd HH:mm:ss` in China Standard Time (UTC+8,
/// no daylight saving), from Unix seconds.
pub fn beijing_timestamp(unix_secs: u64) -> String {
    const CST_OFFSET_SECS: u64 = 8 * 3600;
    let local = unix_secs + CST_OFFSET_SECS;
    let (days, seconds) = (local / 86_400, local % 86_400);
    let (year, month, day) = crate::time::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_ID: &str = "2021000000000001";

    fn gateway_key() -> PrivateKey {
        PrivateKey::parse(include_str!(
            "../../simulations/keys/alipay_gateway.private.pem"
        ))
        .unwrap()
    }

    fn gateway_public() -> PublicKey {
        PublicKey::parse(include_str!(
            "../../simulations/keys/alipay_gateway.public.pem"
        ))
        .unwrap()
    }

    fn notify(amount: &str, app_id: &str) -> Vec<(String, String)> {
        [
            ("app_id", app_id),
            ("out_trade_no", "o1"),
            ("trade_no", "2026120222001"),
            ("total_amount", amount),
            ("trade_status", "TRADE_SUCCESS"),
            ("subject", "a b+c%d 商品"),
            ("charset", "utf-8"),
            ("notify_time", "2026-12-02 16:00:00"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn signed(mut params: Vec<(String, String)>, with_sign_type: bool) -> Vec<(String, String)> {
        params.push(("sign_type".into(), "RSA2".into()));
        let view: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let content = notify_content(&view, with_sign_type);
        let sign = gateway_key().sign_base64(content.as_bytes(), &ring::rand::SystemRandom::new());
        params.push(("sign".into(), sign));
        params
    }

    fn verify(params: &[(String, String)], app_id: &str) -> Result<AlipayNotify, Rejection> {
        let view: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        verify_notify(&view, &gateway_public(), app_id)
    }

    #[test]
    fn contents_follow_the_published_rules() {
        let params = [
            ("sign_type", "RSA2"),
            ("b", "2"),
            ("sign", "x"),
            ("a", "1 +&"),
            ("empty", ""),
        ];
        assert_eq!(request_content(&params), "a=1 +&&b=2&sign_type=RSA2");
        assert_eq!(notify_content(&params, false), "a=1 +&&b=2&empty=");
        assert_eq!(
            notify_content(&params, true),
            "a=1 +&&b=2&empty=&sign_type=RSA2"
        );
        assert_eq!(
            notify_content(&[("a", "1")], true),
            "a=1&sign_type=RSA2",
            "the SDK adds sign_type RSA2 when it is absent"
        );
    }

    #[test]
    fn signed_notifies_verify_in_either_form_and_forged_ones_do_not() {
        for with_sign_type in [false, true] {
            let got = verify(&signed(notify("12.50", APP_ID), with_sign_type), APP_ID).unwrap();
            assert_eq!((got.amount_cents, got.paid), (1250, true));
            assert_eq!(got.order_id.as_str(), "o1");
        }
        let mut tampered = signed(notify("12.50", APP_ID), false);
        tampered[3].1 = "0.01".into();
        assert_eq!(verify(&tampered, APP_ID), Err(Rejection::BadSignature));
        assert_eq!(
            verify(&signed(notify("12.50", "2021000000000002"), false), APP_ID),
            Err(Rejection::WrongMerchant)
        );
        let mut twice = signed(notify("12.50", APP_ID), false);
        twice.push(("total_amount".into(), "1".into()));
        assert!(matches!(
            verify(&twice, APP_ID),
            Err(Rejection::MalformedNotify(_))
        ));
        let mut rsa1 = signed(notify("12.50", APP_ID), false);
        rsa1.retain(|(k, _)| k != "sign_type");
        rsa1.push(("sign_type".into(), "RSA".into()));
        assert!(matches!(
            verify(&rsa1, APP_ID),
            Err(Rejection::MalformedNotify(_))
        ));
        assert!(matches!(
            verify(&notify("12.50", APP_ID), APP_ID),
            Err(Rejection::MalformedNotify(_))
        ));
    }

    #[test]
    fn timestamps_are_beijing_time() {
        assert_eq!(beijing_timestamp(0), "1970-01-01 08:00:00");
        // 2026-12-02 16:08:50 UTC, as `date -u -d @1796227730` prints it.
        assert_eq!(beijing_timestamp(1_796_227_730), "2026-12-03 00:08:50");
        assert_eq!(beijing_timestamp(951_782_400), "2000-02-29 08:00:00");
    }
}
