//! Identifiers. Each is a newtype so that two of them can never be swapped silently.

use bincode::{Decode, Encode};
use std::fmt;
use std::sync::Arc;

use crate::Rejection;

/// Longest order id: the payment protocols' `out_trade_no` (epusdt takes at most 32).
pub const ORDER_ID_LEN_MAX: usize = 32;
/// Longest SKU.
pub const SKU_LEN_MAX: usize = 64;

fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn valid_id(text: &str, len_max: usize) -> bool {
    !text.is_empty() && text.len() <= len_max && text.bytes().all(is_id_char)
}

/// The prefix of a stored token: what follows is the token's SHA-256 in lower hex.
pub const TOKEN_DIGEST_PREFIX: &str = "sha256:";

/// How a buyer's token (an order's or a waiting-room ticket's secret) is stored: only its
/// SHA-256, so a copy of the log, sled or memory does not let anyone look an order up.
pub fn token_digest(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(TOKEN_DIGEST_PREFIX.len() + 64);
    out.push_str(TOKEN_DIGEST_PREFIX);
    out.push_str(&crate::payment::hex_lower(&digest));
    out
}

/// Whether `token` is in its stored form (a digest), not in the clear.
pub fn is_token_digest(token: &str) -> bool {
    token.starts_with(TOKEN_DIGEST_PREFIX)
}

/// The stored form of `token`: a digest stays as it is; a token an older version stored
/// in the clear becomes its digest.
pub fn stored_token(token: &str) -> String {
    if is_token_digest(token) {
        token.to_owned()
    } else {
        token_digest(token)
    }
}

/// Whether `presented` is the token whose stored form is `stored` (constant time).
pub fn token_matches(stored: &str, presented: &str) -> bool {
    !presented.is_empty()
        && crate::payment::signatures_equal(&stored_token(stored), &token_digest(presented))
}

/// An order's id, `^[A-Za-z0-9._-]{1,32}$`; it is the gateways' `out_trade_no`. Shared, not
/// copied, when cloned: a purchase passes its id to a dozen owners (the state's maps, the
/// actor, traces, the mirror), and each copy was an allocation freed on another thread.
/// Encoded as a string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct OrderId(Arc<str>);

impl OrderId {
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        if valid_id(text, ORDER_ID_LEN_MAX) {
            Ok(Self(text.into()))
        } else {
            Err(Rejection::InvalidOrderId)
        }
    }

    /// Builds the id of a new order from its creation time and 64 random bits: sortable by
    /// time, and unique without coordination (27 characters).
    pub fn generate(created_at_ms: u64, random: u64) -> Self {
        // `{created_at_ms:011x}{random:016x}`; times past 11 hex digits (after the year
        // 2527) keep every digit, as the format would.
        let time_digits = (64 - created_at_ms.leading_zeros()).div_ceil(4).max(11);
        let mut id = [0; ORDER_ID_LEN_MAX];
        let digits = hex_digits(u128::from(created_at_ms), time_digits)
            .chain(hex_digits(u128::from(random), 16));
        let mut len = 0;
        for (at, digit) in id.iter_mut().zip(digits) {
            *at = digit;
            len += 1;
        }
        let id = std::str::from_utf8(&id[..len]).expect("hex digits are ASCII");
        debug_assert!(valid_id(id, ORDER_ID_LEN_MAX));
        Self(Arc::from(id))
    }

    /// The creation time an id made by `generate` begins with; `None` for an id of another
    /// form (one a caller chose). The time is the one `generate` was given, which is not
    /// always the order's (check before relying on it).
    pub fn created_at_ms(&self) -> Option<u64> {
        let time_digits = self
            .0
            .len()
            .checked_sub(16)
            .filter(|n| (11..=16).contains(n))?;
        if !self
            .0
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        u64::from_str_radix(&self.0[..time_digits], 16).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product's stock-keeping unit, `^[A-Za-z0-9._-]{1,64}$`. Shared when cloned, as
/// `OrderId` is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct Sku(Arc<str>);

impl Sku {
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        if valid_id(text, SKU_LEN_MAX) {
            Ok(Self(text.into()))
        } else {
            Err(Rejection::InvalidSku)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A card key's identity: dense, assigned at import from 1 upwards, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Debug)]
pub struct CardId(pub u64);

macro_rules! display_as_str {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    )*};
}
display_as_str!(OrderId, Sku);

/// A reseller's identity: dense, assigned at creation from 1 upwards, never reused. On the
/// wire it reads `rs-<n>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Debug)]
pub struct ResellerId(pub u64);

/// The wire prefix of a reseller id.
pub const RESELLER_ID_PREFIX: &str = "rs-";

impl ResellerId {
    /// Parses `rs-<n>` with `n` a positive decimal without leading zeros.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(RESELLER_ID_PREFIX)?;
        if digits.is_empty() || digits.len() > 19 || digits.starts_with('0') {
            return None;
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Self)
    }
}

impl fmt::Display for ResellerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RESELLER_ID_PREFIX}{}", self.0)
    }
}

/// Formats 128 random bits as 32 lowercase hex digits (tokens and trace ids).
pub fn hex128(random: u128) -> String {
    hex_digits(random, 32).map(char::from).collect()
}

/// The low `digits` hex digits of `value`, lower case, zero-padded, highest first
/// (`{:0digits$x}` without the formatting machinery: ids and tokens are made on every order).
fn hex_digits(value: u128, digits: u32) -> impl Iterator<Item = u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..digits)
        .rev()
        .map(move |shift| DIGITS[(value >> (4 * shift)) as usize & 0xf])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_match_the_format() {
        for (time, random) in [
            (0, 0),
            (1, u64::MAX),
            (1_764_162_585_123, 0x0123_4567_89ab_cdef),
            (0xfff_ffff_ffff, 7),
            (0x1000_0000_0000, 7),
            (u64::MAX, u64::MAX),
        ] {
            let id = OrderId::generate(time, random);
            assert_eq!(id.as_str(), format!("{time:011x}{random:016x}"));
            assert_eq!(id.created_at_ms(), Some(time));
        }
        for other in [
            "reseller-42",
            "0123456789abcdef",
            "0123456789ABCDEF0123456789a",
        ] {
            assert_eq!(
                OrderId::parse(other).unwrap().created_at_ms(),
                None,
                "{other}"
            );
        }
        for value in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(hex128(value), format!("{value:032x}"));
        }
    }

    #[test]
    fn order_ids_follow_the_contract_pattern() {
        assert!(OrderId::parse("abc-DEF_1.2").is_ok());
        assert!(OrderId::parse("").is_err());
        assert!(OrderId::parse(&"a".repeat(33)).is_err());
        assert!(OrderId::parse("a b").is_err());
        assert!(OrderId::parse("a/b").is_err());
        let id = OrderId::generate(u64::MAX >> 20, u64::MAX);
        assert!(id.as_str().len() <= ORDER_ID_LEN_MAX);
        assert!(OrderId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn shared_ids_encode_as_the_strings_they_were() {
        // Logs, snapshots and sled rows written when ids were `String`s must read the same.
        let config = bincode::config::standard();
        for (text, id, sku) in [
            ("o-1", OrderId::parse("o-1"), Sku::parse("o-1")),
            (
                "0123456789abcdef0123456789abcdef",
                OrderId::parse("0123456789abcdef0123456789abcdef"),
                Sku::parse("0123456789abcdef0123456789abcdef"),
            ),
        ] {
            let as_string = bincode::encode_to_vec(text.to_owned(), config).expect("encodes");
            let (id, sku) = (id.expect("valid"), sku.expect("valid"));
            assert_eq!(
                bincode::encode_to_vec(&id, config).expect("encodes"),
                as_string
            );
            assert_eq!(
                bincode::encode_to_vec(&sku, config).expect("encodes"),
                as_string
            );
            let (decoded, _): (OrderId, usize) =
                bincode::decode_from_slice(&as_string, config).expect("decodes");
            assert_eq!(decoded, id);
        }
    }
}
