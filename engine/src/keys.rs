//! The RSA keys and the AES-256-GCM of the direct payment channels (Alipay RSA2, WeChat Pay
//! API v3): parsed once, at start, from PEM or from the bare base64 body that Alipay's key
//! tool writes; then used to sign and verify SHA256withRSA (PKCS#1 v1.5) and to open WeChat
//! Pay's encrypted resources.
//!
//! Invariants: a key that parses is an RSA key of 2048 to 8192 bits (what both providers
//! issue and what ring accepts); a private key's `Debug` prints nothing of it.
//!
//! Pure: ring wants randomness to blind a signing operation, so the caller passes it in
//! (the signature itself is deterministic: PKCS#1 v1.5 has no random part).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SecureRandom;
use ring::signature::{self, RsaKeyPair, RsaPublicKeyComponents};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};

/// Smallest RSA modulus accepted, in bits: both providers issue 2048-bit keys.
pub const RSA_BITS_MIN: usize = 2048;
/// Largest RSA modulus accepted, in bits (ring's own ceiling).
pub const RSA_BITS_MAX: usize = 8192;
/// Longest key text read (a 8192-bit private key in PEM is about 6.5 KB).
pub const KEY_TEXT_BYTES_MAX: usize = 16 * 1024;
/// An AES-256-GCM tag.
pub const AEAD_TAG_BYTES: usize = 16;
/// WeChat Pay's resource nonces are 12 characters, GCM's standard nonce length.
pub const AEAD_NONCE_BYTES: usize = 12;

/// Why a key was refused; the caller names the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty")]
    Empty,
    #[error("longer than {KEY_TEXT_BYTES_MAX} bytes")]
    TooLong,
    #[error("neither PEM nor base64 DER: {0}")]
    Encoding(&'static str),
    #[error("not an RSA key: {0}")]
    NotRsa(String),
    #[error("an RSA key of {0} bits; {RSA_BITS_MIN} to {RSA_BITS_MAX} bits are accepted")]
    Size(usize),
}

/// A merchant's RSA private key: it signs requests (and, in the simulators, notifies).
pub struct PrivateKey {
    pair: RsaKeyPair,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// The body of a key given without PEM armour: base64 DER, whitespace ignored.
fn bare_der(text: &str) -> Result<Vec<u8>, KeyError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|_| KeyError::Encoding("the text is not valid base64"))
}

fn checked_text(text: &str) -> Result<&str, KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.len() > KEY_TEXT_BYTES_MAX {
        return Err(KeyError::TooLong);
    }
    Ok(text)
}

fn checked_bits(bits: usize) -> Result<(), KeyError> {
    if (RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size(bits))
    }
}

impl PrivateKey {
    /// Parses `-----BEGIN PRIVATE KEY-----` (PKCS#8), `-----BEGIN RSA PRIVATE KEY-----`
    /// (PKCS#1), or either one's base64 body without the armour.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = checked_text(text)?;
        let rejected = |e: ring::error::KeyRejected| KeyError::NotRsa(e.to_string());
        let pair = if text.starts_with("-----BEGIN") {
            match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
                Ok(PrivateKeyDer::Pkcs8(der)) => {
                    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(rejected)?
                }
                Ok(PrivateKeyDer::Pkcs1(der)) => {
                    RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(rejected)?
                }
                Ok(_) => return Err(KeyError::NotRsa("an elliptic-curve key".into())),
                Err(_) => return Err(KeyError::Encoding("no PRIVATE KEY section in the PEM")),
            }
        } else {
            let der = bare_der(text)?;
            RsaKeyPair::from_pkcs8(&der)
                .or_else(|_| RsaKeyPair::from_der(&der))
                .map_err(rejected)?
        };
        checked_bits(pair.public().modulus_len() * 8)?;
        Ok(Self { pair })
    }

    /// SHA256withRSA (PKCS#1 v1.5) over `message`, base64 (standard alphabet, padded).
    pub fn sign_base64(&self, message: &[u8], rng: &dyn SecureRandom) -> String {
        let mut signature = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(&signature::RSA_PKCS1_SHA256, rng, message, &mut signature)
            .expect("signing with a parsed RSA key and an output of its modulus length");
        BASE64.encode(signature)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let components: RsaPublicKeyComponents<Vec<u8>> = self.pair.public().into();
        PublicKey {
            modulus: components.n,
            exponent: components.e,
        }
    }
}

/// A provider's RSA public key: it verifies their notifies and answers.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Big-endian, without leading zeros.
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(RSA {} bits)", self.modulus.len() * 8)
    }
}

impl PublicKey {
    /// Parses `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), or the base64 body of a
    /// SubjectPublicKeyInfo or of a PKCS#1 RSAPublicKey without the armour.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = checked_text(text)?;
        let der = if text.starts_with("-----BEGIN") {
            SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes())
                .map_err(|_| KeyError::Encoding("no PUBLIC KEY section in the PEM"))?
                .as_ref()
                .to_vec()
        } else {
            bare_der(text)?
        };
        let rsa_der = match spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()) {
            Ok(info) if info.algorithm.oid == pkcs1::ALGORITHM_OID => info
                .subject_public_key
                .as_bytes()
                .ok_or_else(|| KeyError::NotRsa("the key's bit string is not whole bytes".into()))?
                .to_vec(),
            Ok(info) => {
                return Err(KeyError::NotRsa(format!(
                    "the algorithm is {}",
                    info.algorithm.oid
                )))
            }
            // Not a SubjectPublicKeyInfo: perhaps a bare PKCS#1 RSAPublicKey.
            Err(_) => der,
        };
        let key = pkcs1::RsaPublicKeyRef::try_from(rsa_der.as_slice())
            .map_err(|e| KeyError::NotRsa(e.to_string()))?;
        let modulus = key.modulus.as_bytes().to_vec();
        let exponent = key.public_exponent.as_bytes().to_vec();
        checked_bits(modulus_bits(&modulus))?;
        if exponent.last().is_none_or(|low| low & 1 == 0) || exponent == [1] {
            return Err(KeyError::NotRsa(
                "the public exponent is not odd and above 1".into(),
            ));
        }
        Ok(Self { modulus, exponent })
    }

    /// Whether `signature_base64` is SHA256withRSA (PKCS#1 v1.5) over `message` by this key.
    /// A signature that is not base64 does not verify.
    pub fn verify_base64(&self, message: &[u8], signature_base64: &str) -> bool {
        let Ok(signature) = BASE64.decode(signature_base64.trim().as_bytes()) else {
            return false;
        };
        RsaPublicKeyComponents {
            n: &self.modulus,
            e: &self.exponent,
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, &signature)
        .is_ok()
    }
}

fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.first() {
        Some(high) => modulus.len() * 8 - high.leading_zeros() as usize,
        None => 0,
    }
}

/// AES-256-GCM: opens `ciphertext_and_tag` (the tag is its last 16 bytes) under `key` with
/// a 12-byte `nonce` and `associated_data`; `None` when it does not authenticate.
pub fn aes256gcm_open(
    key: &[u8; 32],
    nonce: &[u8],
    associated_data: &[u8],
    ciphertext_and_tag: &[u8],
) -> Option<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut buffer = ciphertext_and_tag.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(associated_data), &mut buffer)
        .ok()?;
    Some(plain.to_vec())
}

/// AES-256-GCM seal, the counterpart of [`aes256gcm_open`] (the simulators encrypt what
/// WeChat Pay would). `None` only for a nonce that is not 12 bytes.
pub fn aes256gcm_seal(
    key: &[u8; 32],
    nonce: &[u8],
    associated_data: &[u8],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(associated_data), &mut buffer)
        .ok()?;
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS1_PRIVATE: &str = include_str!("../../simulations/keys/alipay_app.private.pem");
    const PKCS1_PUBLIC: &str = include_str!("../../simulations/keys/alipay_app.public.pem");
    const PKCS8_PRIVATE: &str = include_str!("../../simulations/keys/wechat_merchant.private.pem");

    fn body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn pem_and_bare_keys_parse_and_sign_verifiably() {
        let signer = PrivateKey::parse(PKCS1_PRIVATE).unwrap();
        let public = PublicKey::parse(PKCS1_PUBLIC).unwrap();
        assert_eq!(signer.public_key(), public);
        assert_eq!(PublicKey::parse(&body(PKCS1_PUBLIC)).unwrap(), public);
        let bare = PrivateKey::parse(&body(PKCS1_PRIVATE)).unwrap();
        let signature = signer.sign_base64(b"a=1&b=2", &ring::rand::SystemRandom::new());
        assert_eq!(
            bare.sign_base64(b"a=1&b=2", &ring::rand::SystemRandom::new()),
            signature,
            "PKCS#1 v1.5 is deterministic"
        );
        assert!(public.verify_base64(b"a=1&b=2", &signature));
        assert!(!public.verify_base64(b"a=1&b=3", &signature));
        assert!(!public.verify_base64(b"a=1&b=2", "not base64!"));
        let other = PrivateKey::parse(PKCS8_PRIVATE).unwrap();
        assert!(!public.verify_base64(
            b"a=1&b=2",
            &other.sign_base64(b"a=1&b=2", &ring::rand::SystemRandom::new())
        ));
        assert!(format!("{signer:?}").find("MII").is_none());
    }

    #[test]
    fn malformed_keys_say_why() {
        assert_eq!(PrivateKey::parse("  ").unwrap_err(), KeyError::Empty);
        assert!(matches!(
            PrivateKey::parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
            Err(KeyError::NotRsa(_))
        ));
        assert!(matches!(
            PrivateKey::parse("not a key, at all!"),
            Err(KeyError::Encoding(_))
        ));
        assert!(matches!(
            PublicKey::parse(PKCS8_PRIVATE),
            Err(KeyError::Encoding(_))
        ));
        // A truncated public key: the DER ends early.
        let mut truncated = body(PKCS1_PUBLIC);
        truncated.truncate(200);
        assert!(PublicKey::parse(&truncated).is_err());
    }

    #[test]
    fn aes_gcm_round_trips_and_refuses_tampering() {
        let key = [9u8; 32];
        let sealed = aes256gcm_seal(&key, b"0123456789ab", b"transaction", b"{}").unwrap();
        assert_eq!(sealed.len(), 2 + AEAD_TAG_BYTES);
        assert_eq!(
            aes256gcm_open(&key, b"0123456789ab", b"transaction", &sealed).as_deref(),
            Some(&b"{}"[..])
        );
        assert!(aes256gcm_open(&key, b"0123456789ab", b"other", &sealed).is_none());
        assert!(aes256gcm_open(&[8u8; 32], b"0123456789ab", b"transaction", &sealed).is_none());
        assert!(aes256gcm_open(&key, b"short", b"transaction", &sealed).is_none());
    }
}
