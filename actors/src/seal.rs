//! Sealing: secrets the shop must keep but must not store in the clear. A reseller's
//! webhook secret signs every delivery, so unlike the API key it cannot be kept as a hash;
//! it is kept sealed (ChaCha20-Poly1305, from ring) under the operator's 256-bit sealing
//! key, with the reseller's id as associated data, so that a sealed secret neither reads
//! without the key nor opens under another account. Card keys are sealed the same way
//! (`cards.rs`, the card id as associated data). A key derived from the sealing key makes
//! buyers' tokens (`derive_token`) and the keyed digests imports deduplicate by (`digest`).
//!
//! Form: `sealed1:` then hex(nonce ‖ ciphertext ‖ tag) for secrets, the same bytes unencoded
//! for card keys. The nonce is 96 random bits per seal, passed in (the caller owns
//! randomness). A secret without the prefix was written before sealing existed and reads as
//! itself.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;

/// What the token key is derived with from the sealing key (a separate key per use).
const TOKEN_KEY_LABEL: &[u8] = b"panshi token key v1";

/// The prefix of a sealed value; the digit is the format's version.
pub const SEALED_PREFIX: &str = "sealed1:";
/// Whether `value` is in the sealed form (else it is a secret an older version stored in
/// the clear).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Bytes of a sealing key.
pub const SEALING_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value does not open with this sealing key (was the key changed?)")]
    WrongKey,
}

pub struct Sealer {
    key: LessSafeKey,
    /// Derives buyers' tokens (HMAC-SHA256), so that a token is stored only as a digest
    /// yet can be given again to whoever may have it (an idempotent retry).
    tokens: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &SealingKey) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("a 256-bit key");
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.0), TOKEN_KEY_LABEL);
        Self {
            key: LessSafeKey::new(unbound),
            tokens: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The token of `purpose` (`order`, `ticket`) for `id`: 128 bits of HMAC-SHA256 under
    /// a key derived from the sealing key, in hex. The same for the same id, unguessable
    /// without the key.
    pub fn derive_token(&self, purpose: &str, id: &str) -> String {
        let mut context = hmac::Context::with_key(&self.tokens);
        context.update(purpose.as_bytes());
        context.update(b":");
        context.update(id.as_bytes());
        let tag = context.sign();
        let bytes: [u8; 16] = tag.as_ref()[..16].try_into().expect("SHA-256 is 32 bytes");
        engine::ids::hex128(u128::from_be_bytes(bytes))
    }

    /// Seals `secret` for `owner` (the associated data) with a fresh `nonce`.
    pub fn seal(&self, secret: &str, owner: &str, nonce: [u8; NONCE_LEN]) -> String {
        let sealed = self.seal_bytes(secret.as_bytes(), owner.as_bytes(), nonce);
        let mut out = String::with_capacity(SEALED_PREFIX.len() + 2 * sealed.len());
        out.push_str(SEALED_PREFIX);
        out.push_str(&hex::encode(sealed));
        out
    }

    /// The secret `seal` sealed for `owner`; a value from before sealing reads as itself.
    pub fn open(&self, value: &str, owner: &str) -> Result<String, SealError> {
        let Some(sealed) = value.strip_prefix(SEALED_PREFIX) else {
            return Ok(value.to_owned());
        };
        let bytes = hex::decode(sealed).map_err(|_| SealError::Malformed)?;
        let plain = self.open_bytes(&bytes, owner.as_bytes())?;
        String::from_utf8(plain).map_err(|_| SealError::Malformed)
    }

    /// Seals `plain` bound to `context` (the associated data): nonce ‖ ciphertext ‖ tag.
    pub fn seal_bytes(&self, plain: &[u8], context: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let (head, body) = sealed.split_at_mut(NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(head.try_into().expect("a nonce")),
                Aad::from(context),
                body,
            )
            .expect("a value far below ChaCha20-Poly1305's length limit");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// What `seal_bytes` sealed for `context`.
    pub fn open_bytes(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| SealError::WrongKey)?;
        let length = plain.len();
        buffer.truncate(length);
        Ok(buffer)
    }

    /// A keyed digest (HMAC-SHA256 under a key derived from the sealing key) of `value` in
    /// `scope`: equal values give equal digests, and nobody without the key can test a guess.
    pub fn digest(&self, purpose: &str, scope: &str, value: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.tokens);
        for part in [purpose.as_bytes(), b"\0", scope.as_bytes(), b"\0", value] {
            context.update(part);
        }
        context
            .sign()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

/// The operator's sealing key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealingKey(pub [u8; SEALING_KEY_LEN]);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A key from its 64 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        bytes.try_into().ok().map(Self)
    }

    /// The key as 64 hex digits (to write a new key file).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = [3; NONCE_LEN];

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_owner() {
        let sealer = Sealer::new(&SealingKey([1; SEALING_KEY_LEN]));
        let sealed = sealer.seal("whsec_abc", "rs-1", NONCE);
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(sealer.open(&sealed, "rs-1").unwrap(), "whsec_abc");
        assert_eq!(sealer.open(&sealed, "rs-2"), Err(SealError::WrongKey));
        let other = Sealer::new(&SealingKey([2; SEALING_KEY_LEN]));
        assert_eq!(other.open(&sealed, "rs-1"), Err(SealError::WrongKey));
        // Any flipped digit is caught by the tag.
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(sealer.open(&tampered, "rs-1"), Err(SealError::WrongKey));
        assert_eq!(sealer.open("sealed1:zz", "rs-1"), Err(SealError::Malformed));
        assert_eq!(sealer.open("sealed1:00", "rs-1"), Err(SealError::Malformed));
    }

    #[test]
    fn bytes_seal_bound_to_their_context() {
        let sealer = Sealer::new(&SealingKey([1; SEALING_KEY_LEN]));
        let sealed = sealer.seal_bytes(b"CARD-KEY-1", b"card:7", NONCE);
        assert_eq!(sealed.len(), NONCE_LEN + 10 + 16);
        assert!(!sealed.windows(10).any(|w| w == b"CARD-KEY-1"));
        assert_eq!(
            sealer.open_bytes(&sealed, b"card:7").unwrap(),
            b"CARD-KEY-1"
        );
        assert_eq!(
            sealer.open_bytes(&sealed, b"card:8"),
            Err(SealError::WrongKey)
        );
        assert_eq!(
            sealer.open_bytes(&sealed[..20], b"card:7"),
            Err(SealError::Malformed)
        );
        let a = sealer.digest("card", "sku-1", b"K");
        assert_eq!(a, sealer.digest("card", "sku-1", b"K"));
        assert_ne!(a, sealer.digest("card", "sku-2", b"K"));
    }

    #[test]
    fn tokens_are_derived_per_purpose_id_and_key() {
        let sealer = Sealer::new(&SealingKey([1; SEALING_KEY_LEN]));
        let token = sealer.derive_token("order", "o1");
        assert_eq!(token.len(), 32);
        assert_eq!(token, sealer.derive_token("order", "o1"));
        assert_ne!(token, sealer.derive_token("order", "o2"));
        assert_ne!(token, sealer.derive_token("ticket", "o1"));
        let other = Sealer::new(&SealingKey([2; SEALING_KEY_LEN]));
        assert_ne!(token, other.derive_token("order", "o1"));
    }

    #[test]
    fn a_secret_from_before_sealing_reads_as_itself() {
        let sealer = Sealer::new(&SealingKey([1; SEALING_KEY_LEN]));
        assert_eq!(sealer.open("whsec_plain", "rs-1").unwrap(), "whsec_plain");
    }

    #[test]
    fn keys_parse_from_64_hex_digits_only_and_never_print() {
        let key = SealingKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(key, SealingKey([0xab; 32]));
        assert_eq!(key.to_hex(), "ab".repeat(32));
        assert_eq!(format!("{key:?}"), "SealingKey(..)");
        assert_eq!(SealingKey::parse(&"ab".repeat(31)), None);
        assert_eq!(SealingKey::parse(&"zz".repeat(32)), None);
    }
}
