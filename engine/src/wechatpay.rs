//! WeChat Pay API v3 rules that need no I/O: the message a merchant request signs and its
//! `Authorization` header, the check of a signed answer or notify (SHA256withRSA by WeChat
//! Pay's public key over `TIMESTAMP\nNONCE\nBODY\n`, timestamp within 300 s of now), and
//! the AES-256-GCM resource a notify carries.
//!
//! Invariants: nothing from WeChat Pay is believed before its signature verifies; a stale
//! timestamp is refused even with a valid signature; the APIv3 key is exactly 32 bytes and
//! its `Debug` prints nothing.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SecureRandom;

use crate::keys::{aes256gcm_open, aes256gcm_seal, KeyError, PrivateKey, PublicKey};
use crate::Rejection;

/// How far a signed answer's or notify's timestamp may be from now.
pub const WECHATPAY_TOLERANCE_SECS: u64 = 300;
/// The authorisation scheme, in the `Authorization` header and `Wechatpay-Signature-Type`.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";
/// Longest encrypted resource read, in base64 characters (a transaction is about 1 KB).
pub const RESOURCE_BASE64_BYTES_MAX: usize = 16 * 1024;

/// The APIv3 key: 32 bytes, as the merchant platform issues it (32 ASCII characters).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiV3Key([u8; 32]);

impl std::fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiV3Key(..)")
    }
}

impl ApiV3Key {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = text.trim().as_bytes();
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| KeyError::Encoding("the APIv3 key must be exactly 32 bytes"))
    }
}

/// A request as WeChat Pay's signature covers it.
pub struct RequestToSign<'a> {
    pub method: &'a str,
    /// The absolute path with its query string, as sent: `/v3/pay/transactions/native`.
    pub path_and_query: &'a str,
    pub timestamp_secs: u64,
    pub nonce: &'a str,
    /// Empty for a GET.
    pub body: &'a str,
}

/// `METHOD\nPATH\nTIMESTAMP\nNONCE\nBODY\n`.
pub fn request_message(request: &RequestToSign<'_>) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n",
        request.method, request.path_and_query, request.timestamp_secs, request.nonce, request.body
    )
}

/// Who signs a request: the merchant and its certificate's serial number.
pub struct Merchant<'a> {
    pub mch_id: &'a str,
    pub serial_no: &'a str,
    pub key: &'a PrivateKey,
}

/// The `Authorization` header of a request, fields in the order WeChat Pay's Node.js SDK
/// writes them (the server accepts any order).
pub fn authorization(
    merchant: &Merchant<'_>,
    request: &RequestToSign<'_>,
    rng: &dyn SecureRandom,
) -> String {
    let signature = merchant
        .key
        .sign_base64(request_message(request).as_bytes(), rng);
    format!(
        "{AUTH_SCHEME} mchid=\"{}\",nonce_str=\"{}\",timestamp=\"{}\",serial_no=\"{}\",signature=\"{signature}\"",
        merchant.mch_id, request.nonce, request.timestamp_secs, merchant.serial_no
    )
}

/// An `Authorization` header's fields; `None` for another scheme or a malformed header.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthorizationFields {
    pub mch_id: String,
    pub nonce: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

pub fn parse_authorization(header: &str) -> Option<AuthorizationFields> {
    let fields = header.strip_prefix(AUTH_SCHEME)?.strip_prefix(' ')?;
    let mut found: [Option<&str>; 5] = [None; 5];
    const NAMES: [&str; 5] = ["mchid", "nonce_str", "timestamp", "serial_no", "signature"];
    for part in fields.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        let slot = NAMES.iter().position(|n| *n == name)?;
        if found[slot].replace(value).is_some() {
            return None;
        }
    }
    let [mch_id, nonce, timestamp, serial_no, signature] = found;
    Some(AuthorizationFields {
        mch_id: mch_id?.to_owned(),
        nonce: nonce?.to_owned(),
        timestamp: timestamp?.to_owned(),
        serial_no: serial_no?.to_owned(),
        signature: signature?.to_owned(),
    })
}

/// `TIMESTAMP\nNONCE\nBODY\n`: what WeChat Pay signs in its answers and notifies.
pub fn answer_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    for part in [
        timestamp.as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        body,
        b"\n",
    ] {
        message.extend_from_slice(part);
    }
    message
}

/// The headers WeChat Pay signs an answer or a notify with.
pub struct SignedHeaders<'a> {
    /// `Wechatpay-Timestamp`: Unix seconds.
    pub timestamp: &'a str,
    /// `Wechatpay-Nonce`.
    pub nonce: &'a str,
    /// `Wechatpay-Signature`: base64.
    pub signature: &'a str,
}

/// Unix seconds written as plain digits.
fn digits_u64(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Verifies a signed answer or notify: the signature by WeChat Pay's public key, then the
/// timestamp within [`WECHATPAY_TOLERANCE_SECS`] of `now_secs`.
pub fn verify_signed(
    headers: &SignedHeaders<'_>,
    body: &[u8],
    platform_key: &PublicKey,
    now_secs: u64,
) -> Result<(), Rejection> {
    if headers.signature.is_empty() || headers.nonce.is_empty() {
        return Err(Rejection::MalformedNotify(
            "the signature headers are missing",
        ));
    }
    let timestamp = digits_u64(headers.timestamp).ok_or(Rejection::MalformedNotify(
        "Wechatpay-Timestamp is not Unix seconds",
    ))?;
    let message = answer_message(headers.timestamp, headers.nonce, body);
    if !platform_key.verify_base64(&message, headers.signature) {
        return Err(Rejection::BadSignature);
    }
    if now_secs.abs_diff(timestamp) > WECHATPAY_TOLERANCE_SECS {
        return Err(Rejection::StaleSignature);
    }
    Ok(())
}

/// Signs an answer or a notify as WeChat Pay does (the simulators' side).
pub fn sign_answer(
    key: &PrivateKey,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
    rng: &dyn SecureRandom,
) -> String {
    key.sign_base64(&answer_message(timestamp, nonce, body), rng)
}

/// A notify's `resource`: `AEAD_AES_256_GCM` under the APIv3 key.
pub struct Resource<'a> {
    pub nonce: &'a str,
    pub associated_data: &'a str,
    /// Base64 of the ciphertext with its 16-byte tag appended.
    pub ciphertext: &'a str,
}

/// Decrypts a notify's resource to the transaction's JSON text.
pub fn decrypt_resource(key: &ApiV3Key, resource: &Resource<'_>) -> Result<Vec<u8>, Rejection> {
    if resource.ciphertext.len() > RESOURCE_BASE64_BYTES_MAX {
        return Err(Rejection::MalformedNotify("the resource is too large"));
    }
    let sealed = BASE64
        .decode(resource.ciphertext.as_bytes())
        .map_err(|_| Rejection::MalformedNotify("the resource ciphertext is not base64"))?;
    aes256gcm_open(
        &key.0,
        resource.nonce.as_bytes(),
        resource.associated_data.as_bytes(),
        &sealed,
    )
    .ok_or(Rejection::BadSignature)
}

/// Encrypts a transaction as WeChat Pay does (the simulators' side): the base64 ciphertext.
/// `None` for a nonce that is not 12 bytes.
pub fn encrypt_resource(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Option<String> {
    aes256gcm_seal(
        &key.0,
        nonce.as_bytes(),
        associated_data.as_bytes(),
        plaintext,
    )
    .map(|sealed| BASE64.encode(sealed))
}

/// An amount in fen written as plain digits (WeChat Pay's `amount.total`), read digit by
/// digit: no sign, no fraction, no exponent.
pub fn parse_fen(text: &str) -> Option<u64> {
    digits_u64(text).filter(|fen| *fen <= crate::money::AMOUNT_CENTS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> (PrivateKey, PublicKey) {
        let key = PrivateKey::parse(include_str!(
            "../../simulations/keys/wechat_platform.private.pem"
        ))
        .unwrap();
        let public = PublicKey::parse(include_str!(
            "../../simulations/keys/wechat_platform.public.pem"
        ))
        .unwrap();
        (key, public)
    }

    #[test]
    fn requests_sign_the_published_message_and_the_header_round_trips() {
        let request = RequestToSign {
            method: "GET",
            path_and_query: "/v3/pay/transactions/out-trade-no/o1?mchid=1900000001",
            timestamp_secs: 1_554_208_460,
            nonce: "593BEC0C930BF1AFEB40B4A08C8FB242",
            body: "",
        };
        assert_eq!(
            request_message(&request),
            "GET\n/v3/pay/transactions/out-trade-no/o1?mchid=1900000001\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
        );
        let key = PrivateKey::parse(include_str!(
            "../../simulations/keys/wechat_merchant.private.pem"
        ))
        .unwrap();
        let merchant = Merchant {
            mch_id: "1900000001",
            serial_no: "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            key: &key,
        };
        let header = authorization(&merchant, &request, &ring::rand::SystemRandom::new());
        let fields = parse_authorization(&header).unwrap();
        assert_eq!(fields.mch_id, "1900000001");
        assert_eq!(fields.timestamp, "1554208460");
        assert!(key
            .public_key()
            .verify_base64(request_message(&request).as_bytes(), &fields.signature));
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_authorization(&header.replace("mchid", "mchid2")).is_none());
    }

    #[test]
    fn answers_verify_only_when_signed_and_fresh() {
        let (key, public) = platform();
        let rng = ring::rand::SystemRandom::new();
        let body = br#"{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}"#;
        let signature = sign_answer(&key, "1700000000", "n1", body, &rng);
        let headers = SignedHeaders {
            timestamp: "1700000000",
            nonce: "n1",
            signature: &signature,
        };
        assert_eq!(
            verify_signed(&headers, body, &public, 1_700_000_300),
            Ok(())
        );
        assert_eq!(
            verify_signed(&headers, body, &public, 1_700_000_301),
            Err(Rejection::StaleSignature)
        );
        assert_eq!(
            verify_signed(&headers, b"{}", &public, 1_700_000_000),
            Err(Rejection::BadSignature)
        );
        let other = SignedHeaders {
            nonce: "n2",
            ..headers
        };
        assert_eq!(
            verify_signed(&other, body, &public, 1_700_000_000),
            Err(Rejection::BadSignature)
        );
        let bad_time = SignedHeaders {
            timestamp: "17e8",
            nonce: "n1",
            signature: &signature,
        };
        assert!(matches!(
            verify_signed(&bad_time, body, &public, 1_700_000_000),
            Err(Rejection::MalformedNotify(_))
        ));
    }

    #[test]
    fn resources_decrypt_under_the_apiv3_key_only() {
        let key = ApiV3Key::parse("0123456789abcdef0123456789abcdef").unwrap();
        let ciphertext =
            encrypt_resource(&key, "fdasflkja484", "transaction", b"{\"a\":1}").unwrap();
        let resource = Resource {
            nonce: "fdasflkja484",
            associated_data: "transaction",
            ciphertext: &ciphertext,
        };
        assert_eq!(decrypt_resource(&key, &resource).unwrap(), b"{\"a\":1}");
        let other = ApiV3Key::parse("0123456789abcdef0123456789abcdeX").unwrap();
        assert_eq!(
            decrypt_resource(&other, &resource),
            Err(Rejection::BadSignature)
        );
        let wrong_aad = Resource {
            associated_data: "refund",
            ..resource
        };
        assert_eq!(
            decrypt_resource(&key, &wrong_aad),
            Err(Rejection::BadSignature)
        );
        assert!(ApiV3Key::parse("short").is_err());
        assert_eq!(format!("{key:?}"), "ApiV3Key(..)");
    }

    #[test]
    fn fen_amounts_are_plain_digits() {
        assert_eq!(parse_fen("1250"), Some(1250));
        for bad in ["", "-1", "12.5", "1e3", " 1", "+1"] {
            assert_eq!(parse_fen(bad), None, "{bad}");
        }
    }
}
