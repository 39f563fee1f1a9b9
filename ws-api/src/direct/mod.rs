//! The direct channels, Alipay (Open Platform, RSA2) and WeChat Pay (API v3): their
//! configuration, checked whole at start (a malformed or missing key stops the server and
//! is named), and their HTTP clients, the edge's implementations of
//! `actors::channel::GatewayClient`. The signature rules are the engine's (`engine::alipay`,
//! `engine::wechatpay`); this module only knows the wire.
//!
//! Invariants: private keys and the APIv3 key are `Secret`s in the settings and opaque
//! types once parsed, never logged; every answer from a provider is verified with its
//! public key before anything in it is believed; amounts go out and come in as integer fen
//! or as two-decimal yuan text, never through a float.

pub mod alipay;
pub mod wechat;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::settings::Secret;

/// The direct channels that are configured.
#[derive(Clone, Default)]
pub struct DirectChannels {
    pub alipay: Option<Arc<alipay::AlipayConfig>>,
    pub wechat: Option<Arc<wechat::WechatConfig>>,
}

/// Longest key file read.
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A key given inline (`name`) or as a file (`name_file`): exactly one of them, or neither.
pub(crate) fn key_text(
    name: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> anyhow::Result<Option<Secret>> {
    let inline = inline.filter(|s| !s.0.trim().is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => anyhow::bail!("set one of {name} and {name}_file, not both"),
        (Some(secret), None) => Ok(Some(secret.clone())),
        (None, Some(path)) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("{name}_file: reading {}", path.display()))?
                .len();
            anyhow::ensure!(
                size <= KEY_FILE_BYTES_MAX,
                "{name}_file: {} is larger than {KEY_FILE_BYTES_MAX} bytes",
                path.display()
            );
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{name}_file: reading {}", path.display()))?;
            Ok(Some(Secret(text)))
        }
        (None, None) => Ok(None),
    }
}

/// A private key that must be there, parsed; the error names the setting.
pub(crate) fn private_key(
    name: &str,
    text: Option<Secret>,
) -> anyhow::Result<engine::keys::PrivateKey> {
    let text = text.with_context(|| format!("{name} is missing"))?;
    engine::keys::PrivateKey::parse(&text.0).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// A public key that must be there, parsed; the error names the setting.
pub(crate) fn public_key(
    name: &str,
    text: Option<Secret>,
) -> anyhow::Result<engine::keys::PublicKey> {
    let text = text.with_context(|| format!("{name} is missing"))?;
    engine::keys::PublicKey::parse(&text.0).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// An http or https base URL (`post::web_url`'s rules, as for every URL setting), or an
/// error naming the setting.
pub(crate) fn http_url(name: &str, url: &str) -> anyhow::Result<()> {
    crate::post::web_url(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// A required setting, or an error naming it.
pub(crate) fn required<'a>(name: &str, value: Option<&'a String>) -> anyhow::Result<&'a str> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{name} is missing"))
}

/// Whether a User-Agent is a phone's or a tablet's browser (Alipay's wap flow suits it).
pub fn is_phone(user_agent: &str) -> bool {
    const MARKERS: [&str; 6] = ["Mobile", "Android", "iPhone", "iPad", "iPod", "HarmonyOS"];
    MARKERS.iter().any(|marker| user_agent.contains(marker))
}

/// The request's User-Agent says it comes from a phone.
pub fn from_phone(request: &actix_web::HttpRequest) -> bool {
    request
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_phone)
}

/// 32 hexadecimal digits from the system's CSPRNG: a request nonce.
pub(crate) fn nonce() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    engine::payment::hex_lower(&bytes).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_told_from_desktops() {
        assert!(is_phone(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
        ));
        assert!(is_phone(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36"
        ));
        assert!(!is_phone(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
        ));
    }

    #[test]
    fn a_key_comes_from_one_place_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pem");
        std::fs::write(&file, "KEY").unwrap();
        let inline = Secret("INLINE".into());
        assert!(key_text("x.key", Some(&inline), Some(&file)).is_err());
        assert_eq!(
            key_text("x.key", None, Some(&file)).unwrap(),
            Some(Secret("KEY".into()))
        );
        assert_eq!(
            key_text("x.key", Some(&inline), None).unwrap(),
            Some(inline)
        );
        assert_eq!(key_text("x.key", None, None).unwrap(), None);
        let missing = key_text("x.key", None, Some(&dir.path().join("none"))).unwrap_err();
        assert!(format!("{missing:#}").contains("x.key_file"), "{missing:#}");
    }
}
