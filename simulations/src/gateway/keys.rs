//! The simulator's identities for the direct channels: test key pairs (in
//! `simulations/keys/`, generated for these tests and never used anywhere real) and test
//! merchant ids. A shop under test is configured with the merchant halves, the simulator
//! holds the provider halves, and each side verifies the other with the public keys.

use engine::keys::{PrivateKey, PublicKey};
use engine::wechatpay::ApiV3Key;

/// The merchant's Alipay application key (PKCS#1): the shop signs requests with it.
pub const ALIPAY_APP_PRIVATE_PEM: &str = include_str!("../../keys/alipay_app.private.pem");
pub const ALIPAY_APP_PUBLIC_PEM: &str = include_str!("../../keys/alipay_app.public.pem");
/// "Alipay's" key (PKCS#8): the simulator signs answers and notifies with it.
pub const ALIPAY_GATEWAY_PRIVATE_PEM: &str = include_str!("../../keys/alipay_gateway.private.pem");
pub const ALIPAY_GATEWAY_PUBLIC_PEM: &str = include_str!("../../keys/alipay_gateway.public.pem");
/// The merchant's WeChat Pay API key (PKCS#8, like `apiclient_key.pem`).
pub const WECHAT_MERCHANT_PRIVATE_PEM: &str =
    include_str!("../../keys/wechat_merchant.private.pem");
pub const WECHAT_MERCHANT_PUBLIC_PEM: &str = include_str!("../../keys/wechat_merchant.public.pem");
/// "WeChat Pay's" platform key: the simulator signs answers and notifies with it.
pub const WECHAT_PLATFORM_PRIVATE_PEM: &str =
    include_str!("../../keys/wechat_platform.private.pem");
pub const WECHAT_PLATFORM_PUBLIC_PEM: &str = include_str!("../../keys/wechat_platform.public.pem");

pub const ALIPAY_APP_ID: &str = "2021000000000001";
pub const WECHAT_MCH_ID: &str = "1900000001";
pub const WECHAT_APP_ID: &str = "wx00000000000000a1";
/// 32 characters, as the merchant platform issues an APIv3 key.
pub const WECHAT_API_V3_KEY: &str = "panshi-simulator-apiv3-key-32byt";
pub const WECHAT_MERCHANT_SERIAL_NO: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
/// The id of the "WeChat Pay public key" (what `Wechatpay-Serial` carries in that mode).
pub const WECHAT_PLATFORM_SERIAL: &str = "PUB_KEY_ID_0119000000000001";

const _: () = assert!(WECHAT_API_V3_KEY.len() == 32);

/// The simulator's side of the direct channels.
#[derive(Debug)]
pub struct DirectIdentity {
    pub alipay_app_id: String,
    /// Signs Alipay answers and notifies.
    pub alipay_gateway_key: PrivateKey,
    /// Verifies the merchant's Alipay requests.
    pub alipay_app_public_key: PublicKey,
    pub wechat_mch_id: String,
    pub wechat_app_id: String,
    pub wechat_api_v3_key: ApiV3Key,
    pub wechat_merchant_serial_no: String,
    /// Verifies the merchant's WeChat Pay requests.
    pub wechat_merchant_public_key: PublicKey,
    /// Signs WeChat Pay answers and notifies.
    pub wechat_platform_key: PrivateKey,
    pub wechat_platform_serial: String,
    /// Signs forged notifies: a key that is neither provider's.
    pub forger_key: PrivateKey,
}

impl DirectIdentity {
    /// The built-in test identity.
    pub fn test() -> Self {
        let private = |pem| PrivateKey::parse(pem).expect("the test keys parse");
        let public = |pem| PublicKey::parse(pem).expect("the test keys parse");
        Self {
            alipay_app_id: ALIPAY_APP_ID.into(),
            alipay_gateway_key: private(ALIPAY_GATEWAY_PRIVATE_PEM),
            alipay_app_public_key: public(ALIPAY_APP_PUBLIC_PEM),
            wechat_mch_id: WECHAT_MCH_ID.into(),
            wechat_app_id: WECHAT_APP_ID.into(),
            wechat_api_v3_key: ApiV3Key::parse(WECHAT_API_V3_KEY).expect("32 bytes"),
            wechat_merchant_serial_no: WECHAT_MERCHANT_SERIAL_NO.into(),
            wechat_merchant_public_key: public(WECHAT_MERCHANT_PUBLIC_PEM),
            wechat_platform_key: private(WECHAT_PLATFORM_PRIVATE_PEM),
            wechat_platform_serial: WECHAT_PLATFORM_SERIAL.into(),
            forger_key: private(WECHAT_MERCHANT_PRIVATE_PEM),
        }
    }
}

/// The shop's environment for the built-in identity: `PANSHI_ALIPAY__*` and
/// `PANSHI_WECHAT__*` pointing at a simulator at `base_url`.
pub fn shop_env(base_url: &str) -> Vec<(String, String)> {
    [
        ("PANSHI_ALIPAY__APP_ID", ALIPAY_APP_ID.to_owned()),
        (
            "PANSHI_ALIPAY__PRIVATE_KEY",
            ALIPAY_APP_PRIVATE_PEM.to_owned(),
        ),
        (
            "PANSHI_ALIPAY__ALIPAY_PUBLIC_KEY",
            ALIPAY_GATEWAY_PUBLIC_PEM.to_owned(),
        ),
        (
            "PANSHI_ALIPAY__GATEWAY_URL",
            format!("{base_url}/gateway.do"),
        ),
        ("PANSHI_WECHAT__MCH_ID", WECHAT_MCH_ID.to_owned()),
        ("PANSHI_WECHAT__APP_ID", WECHAT_APP_ID.to_owned()),
        ("PANSHI_WECHAT__API_V3_KEY", WECHAT_API_V3_KEY.to_owned()),
        (
            "PANSHI_WECHAT__MERCHANT_PRIVATE_KEY",
            WECHAT_MERCHANT_PRIVATE_PEM.to_owned(),
        ),
        (
            "PANSHI_WECHAT__MERCHANT_SERIAL_NO",
            WECHAT_MERCHANT_SERIAL_NO.to_owned(),
        ),
        (
            "PANSHI_WECHAT__PLATFORM_PUBLIC_KEY",
            WECHAT_PLATFORM_PUBLIC_PEM.to_owned(),
        ),
        ("PANSHI_WECHAT__API_BASE", base_url.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
