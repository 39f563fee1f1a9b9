//! The wire forms of the simulated notifies and their verification as the shop's edge
//! verifies them: Epay (MD5), Alipay (RSA2 over the form) and WeChat Pay (signed headers
//! with a timestamp, the transaction encrypted with the APIv3 key). Signing and checking
//! both go through the engine's rules (`engine::payment`, `engine::alipay`,
//! `engine::wechatpay`) with the gateway simulator's test keys.
//!
//! RSA signatures are deterministic and AES-GCM nonces come from the seed, so a seed's
//! messages are the same on every run (ring's blinding randomness changes no output).

use engine::alipay::{notify_content, verify_notify, SIGN_TYPE_RSA2};
use engine::keys::{PrivateKey, PublicKey};
use engine::wechatpay::{self, ApiV3Key, Resource, SignedHeaders};
use engine::OrderId;
use serde_json::{json, Value};

use super::gateway::{self, Notify, Protocol};
use super::{MERCHANT_KEY, MERCHANT_PID};
use crate::gateway::keys as test_keys;

/// The providers' keys and the merchant's ids, parsed once per run.
pub struct Keys {
    alipay: PrivateKey,
    alipay_public: PublicKey,
    platform: PrivateKey,
    platform_public: PublicKey,
    api_v3: ApiV3Key,
    forger: PrivateKey,
}

impl Keys {
    pub fn new() -> Self {
        let identity = test_keys::DirectIdentity::test();
        Self {
            alipay_public: identity.alipay_gateway_key.public_key(),
            alipay: identity.alipay_gateway_key,
            platform_public: identity.wechat_platform_key.public_key(),
            platform: identity.wechat_platform_key,
            api_v3: identity.wechat_api_v3_key,
            forger: identity.forger_key,
        }
    }
}

/// A notify the shop verified: what it pays.
pub struct Verified {
    pub order_id: OrderId,
    pub trade_no: String,
    pub amount_cents: u64,
}

fn blinding() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

/// Builds `notify` as its gateway sends it (signed at `signed_at_ms`) and verifies it at
/// `now_ms` as the edge does; the error says why it was refused.
pub fn verify(
    keys: &Keys,
    notify: &Notify,
    nonce: u64,
    (signed_at_ms, now_ms): (u64, u64),
) -> Result<Verified, String> {
    match notify.protocol {
        Protocol::Epay => {
            let params = gateway::signed_params(notify);
            let v = engine::payment::verify_epay_notify(&params, MERCHANT_PID, MERCHANT_KEY)
                .map_err(|e| e.to_string())?;
            Ok(Verified {
                order_id: v.order_id,
                trade_no: v.trade_no.to_string(),
                amount_cents: v.amount_cents,
            })
        }
        Protocol::Alipay => alipay(keys, notify, signed_at_ms),
        Protocol::Wechat => wechat(keys, notify, nonce, (signed_at_ms, now_ms)),
    }
}

/// A forged notify lowers the amount, as a forger would.
fn money(notify: &Notify) -> u64 {
    if notify.forged {
        1
    } else {
        notify.amount_cents
    }
}

fn alipay(keys: &Keys, notify: &Notify, signed_at_ms: u64) -> Result<Verified, String> {
    let amount = engine::money::format_cents(money(notify));
    let time = engine::alipay::beijing_timestamp(signed_at_ms / 1000);
    let mut params: Vec<(&str, &str)> = vec![
        ("app_id", test_keys::ALIPAY_APP_ID),
        ("out_trade_no", notify.order_id.as_str()),
        ("trade_no", &notify.trade_no),
        ("total_amount", &amount),
        ("trade_status", "TRADE_SUCCESS"),
        ("notify_time", &time),
        ("subject", "simulated 商品"),
        ("sign_type", SIGN_TYPE_RSA2),
    ];
    let key = if notify.forged {
        &keys.forger
    } else {
        &keys.alipay
    };
    let sign = key.sign_base64(notify_content(&params, false).as_bytes(), &blinding());
    params.push(("sign", &sign));
    let v = verify_notify(&params, &keys.alipay_public, test_keys::ALIPAY_APP_ID)
        .map_err(|e| e.to_string())?;
    if !v.paid {
        return Err("a paid notify read as unpaid".into());
    }
    Ok(Verified {
        order_id: v.order_id,
        trade_no: v.trade_no,
        amount_cents: v.amount_cents,
    })
}

fn wechat(
    keys: &Keys,
    notify: &Notify,
    nonce: u64,
    (signed_at_ms, now_ms): (u64, u64),
) -> Result<Verified, String> {
    let transaction = json!({
        "appid": test_keys::WECHAT_APP_ID, "mchid": test_keys::WECHAT_MCH_ID,
        "out_trade_no": notify.order_id.as_str(), "transaction_id": notify.trade_no,
        "trade_state": "SUCCESS", "amount": {"total": money(notify), "currency": "CNY"},
    })
    .to_string();
    let resource_nonce = format!("{:012x}", nonce & 0xffff_ffff_ffff);
    let ciphertext = wechatpay::encrypt_resource(
        &keys.api_v3,
        &resource_nonce,
        "transaction",
        transaction.as_bytes(),
    )
    .expect("a 12-byte nonce");
    let body = json!({"resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
        "associated_data": "transaction", "nonce": resource_nonce}})
    .to_string();
    let timestamp = (signed_at_ms / 1000).to_string();
    let key = if notify.forged {
        &keys.forger
    } else {
        &keys.platform
    };
    let header_nonce = format!("{nonce:016X}");
    let signature =
        wechatpay::sign_answer(key, &timestamp, &header_nonce, body.as_bytes(), &blinding());
    // The shop's side: the headers first, then the resource, then the transaction.
    let headers = SignedHeaders {
        timestamp: &timestamp,
        nonce: &header_nonce,
        signature: &signature,
    };
    wechatpay::verify_signed(
        &headers,
        body.as_bytes(),
        &keys.platform_public,
        now_ms / 1000,
    )
    .map_err(|e| e.to_string())?;
    let received: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let resource = &received["resource"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let plain = wechatpay::decrypt_resource(
        &keys.api_v3,
        &Resource {
            nonce: &text(&resource["nonce"]),
            associated_data: &text(&resource["associated_data"]),
            ciphertext: &text(&resource["ciphertext"]),
        },
    )
    .map_err(|e| e.to_string())?;
    let paid: Value = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
    if paid["mchid"] != test_keys::WECHAT_MCH_ID || paid["appid"] != test_keys::WECHAT_APP_ID {
        return Err("another merchant's transaction".into());
    }
    let amount_cents = wechatpay::parse_fen(&paid["amount"]["total"].to_string())
        .ok_or("amount.total is not fen")?;
    Ok(Verified {
        order_id: OrderId::parse(&text(&paid["out_trade_no"])).map_err(|e| e.to_string())?,
        trade_no: text(&paid["transaction_id"]),
        amount_cents,
    })
}
