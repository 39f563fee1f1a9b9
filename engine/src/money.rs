//! Money is integer minor units (`u64` named `*_cents`) everywhere; no float touches an amount.
//! Decimal strings from gateways are parsed exactly, digit by digit.

use crate::Rejection;
use bincode::{Decode, Encode};

/// The most an order may cost, in minor units: 10,000,000.00. Keeps every sum far from overflow.
pub const AMOUNT_CENTS_MAX: u64 = 1_000_000_000;

/// An ISO 4217 currency code, three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Debug)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        let bytes = text.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_alphabetic) {
            Ok(Self([
                bytes[0].to_ascii_uppercase(),
                bytes[1].to_ascii_uppercase(),
                bytes[2].to_ascii_uppercase(),
            ]))
        } else {
            Err(Rejection::InvalidCurrency)
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).expect("currency is ASCII")
    }
}

/// Parses a non-negative decimal amount with at most two significant decimals ("10", "10.5",
/// "10.50", "10.500") into minor units. Anything else (signs, exponents, spaces, three
/// significant decimals, empty parts) is `None`.
pub fn parse_decimal_cents(text: &str) -> Option<u64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    if whole.is_empty() || whole.len() > 15 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.contains('.') && fraction.is_empty() {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (significant, rest) = fraction.split_at(fraction.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return None;
    }
    let mut cents: u64 = whole.parse().ok()?;
    cents = cents.checked_mul(100)?;
    let mut digits = significant.bytes();
    let tens = digits.next().map_or(0, |b| u64::from(b - b'0'));
    let ones = digits.next().map_or(0, |b| u64::from(b - b'0'));
    cents.checked_add(tens * 10 + ones)
}

/// Formats minor units as a decimal with two places: 1250 -> "12.50".
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Formats minor units in their shortest decimal form: 1000 -> "10", 1050 -> "10.5",
/// 2888 -> "28.88" (the epusdt signature rule).
pub fn format_cents_shortest(cents: u64) -> String {
    match cents % 100 {
        0 => format!("{}", cents / 100),
        f if f % 10 == 0 => format!("{}.{}", cents / 100, f / 10),
        f => format!("{}.{:02}", cents / 100, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_parse_exactly() {
        let cases = [
            ("10", Some(1000)),
            ("10.5", Some(1050)),
            ("10.00", Some(1000)),
            ("10.50", Some(1050)),
            ("10.500", Some(1050)),
            ("0.01", Some(1)),
            ("12.345", None),
            ("-1", None),
            ("+1", None),
            ("1e3", None),
            ("", None),
            (".5", None),
            ("5.", None),
            (" 5", None),
            ("1.2.3", None),
            ("99999999999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_decimal_cents(text), want, "{text:?}");
        }
    }

    #[test]
    fn shortest_form_drops_trailing_zeros() {
        assert_eq!(format_cents_shortest(1000), "10");
        assert_eq!(format_cents_shortest(1050), "10.5");
        assert_eq!(format_cents_shortest(2888), "28.88");
        assert_eq!(format_cents_shortest(1), "0.01");
        assert_eq!(format_cents(1250), "12.50");
    }

    #[test]
    fn currency_codes_are_three_letters() {
        assert_eq!(Currency::parse("cny").unwrap().as_str(), "CNY");
        assert!(Currency::parse("CN").is_err());
        assert!(Currency::parse("C1Y").is_err());
    }
}
