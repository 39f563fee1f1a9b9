//! What an operator edits about a product beyond its key pool (its listing), and about the
//! shop itself (its identity). Pure types with their bounds; `ShopState` applies them.
//!
//! Invariant: a listing or identity change never touches stock or order history; a product's
//! price changes orders made from then on only (every order carries its own amount).
//!
//! Key decision: changes travel as a list of small variants (`ProductChange`,
//! `IdentityChange`) rather than a whole struct, so one edit is one atomic event and a later
//! field is a new variant appended at the end, which existing logs still decode.

use bincode::{Decode, Encode};

use crate::money::AMOUNT_CENTS_MAX;
use crate::order::ORDER_QUANTITY_MAX;

/// Longest product name, in bytes.
pub const PRODUCT_NAME_LEN_MAX: usize = 200;
/// Longest product description or usage note, in bytes.
pub const PRODUCT_TEXT_LEN_MAX: usize = 4_000;
/// Longest image or logo URL, in bytes.
pub const URL_LEN_MAX: usize = 500;
/// Longest category name, in bytes.
pub const CATEGORY_LEN_MAX: usize = 60;
/// Longest shop name, in bytes.
pub const SHOP_NAME_LEN_MAX: usize = 100;
/// Longest announcement, footer, support contact or terms text, in bytes.
pub const SHOP_TEXT_LEN_MAX: usize = 4_000;
/// Most changes one edit event may carry.
pub const CHANGES_PER_EDIT_MAX: usize = 16;
/// The shop's time zone, as minutes east of UTC, within the real world's range.
pub const UTC_OFFSET_MINUTES_MAX: i16 = 14 * 60;

/// One change to a product's listing.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ProductChange {
    Name(String),
    /// The price of orders made from now on.
    PriceCents(u64),
    Description(String),
    /// A hidden product is not listed and takes no buyer orders; its stock stays.
    Hidden(bool),
    /// Most keys one buyer order may take (0: the shop-wide `ORDER_QUANTITY_MAX`).
    QuantityMax(u32),
    /// Shown to the buyer next to the delivered keys (how to redeem them).
    UsageNote(String),
    /// An `https://` image shown in the catalogue (empty: none).
    ImageUrl(String),
    Category(String),
}

/// A product's listing beyond the fields `ProductCreated` fixed at creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ProductDetails {
    pub description: String,
    pub hidden: bool,
    /// 0: no limit beyond `ORDER_QUANTITY_MAX`.
    pub quantity_max: u32,
    pub usage_note: String,
    pub image_url: String,
    pub category: String,
}

impl ProductDetails {
    /// The most keys one buyer order of this product may take.
    pub fn order_quantity_max(&self) -> u32 {
        match self.quantity_max {
            0 => ORDER_QUANTITY_MAX,
            limit => limit.min(ORDER_QUANTITY_MAX),
        }
    }
}

/// Text an operator may store: bounded, and free of control characters but line breaks.
pub fn valid_text(text: &str, len_max: usize) -> bool {
    text.len() <= len_max
        && !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
}

/// A one-line text: bounded, no control characters at all.
pub fn valid_line(text: &str, len_max: usize) -> bool {
    text.len() <= len_max && !text.chars().any(char::is_control)
}

impl ProductChange {
    /// Whether the change's value is within its bounds (the shape the engine accepts).
    pub fn is_valid(&self) -> bool {
        match self {
            ProductChange::Name(name) => {
                !name.trim().is_empty() && valid_line(name, PRODUCT_NAME_LEN_MAX)
            }
            ProductChange::PriceCents(cents) => (1..=AMOUNT_CENTS_MAX).contains(cents),
            ProductChange::Description(text) | ProductChange::UsageNote(text) => {
                valid_text(text, PRODUCT_TEXT_LEN_MAX)
            }
            ProductChange::Hidden(_) => true,
            ProductChange::QuantityMax(limit) => *limit <= ORDER_QUANTITY_MAX,
            ProductChange::ImageUrl(url) => valid_line(url, URL_LEN_MAX),
            ProductChange::Category(category) => valid_line(category, CATEGORY_LEN_MAX),
        }
    }
}

/// One change to the shop's identity.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum IdentityChange {
    Name(String),
    LogoUrl(String),
    /// A banner on every storefront page (empty: none).
    Announcement(String),
    Footer(String),
    SupportContact(String),
    Terms(String),
    /// Minutes east of UTC: the days of the operators' revenue figures.
    UtcOffsetMinutes(i16),
}

impl IdentityChange {
    pub fn is_valid(&self) -> bool {
        match self {
            IdentityChange::Name(name) => valid_line(name, SHOP_NAME_LEN_MAX),
            IdentityChange::LogoUrl(url) => valid_line(url, URL_LEN_MAX),
            IdentityChange::SupportContact(text) => valid_line(text, SHOP_NAME_LEN_MAX * 2),
            IdentityChange::Announcement(text)
            | IdentityChange::Footer(text)
            | IdentityChange::Terms(text) => valid_text(text, SHOP_TEXT_LEN_MAX),
            IdentityChange::UtcOffsetMinutes(minutes) => {
                minutes.unsigned_abs() <= UTC_OFFSET_MINUTES_MAX as u16
            }
        }
    }
}

/// The shop as its operator names it; empty fields mean "not set" (the pages then show
/// their defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ShopIdentity {
    pub name: String,
    pub logo_url: String,
    pub announcement: String,
    pub footer: String,
    pub support_contact: String,
    pub terms: String,
    pub utc_offset_minutes: i16,
}

impl ShopIdentity {
    pub fn apply(&mut self, change: &IdentityChange) {
        match change {
            IdentityChange::Name(v) => self.name = v.clone(),
            IdentityChange::LogoUrl(v) => self.logo_url = v.clone(),
            IdentityChange::Announcement(v) => self.announcement = v.clone(),
            IdentityChange::Footer(v) => self.footer = v.clone(),
            IdentityChange::SupportContact(v) => self.support_contact = v.clone(),
            IdentityChange::Terms(v) => self.terms = v.clone(),
            IdentityChange::UtcOffsetMinutes(v) => self.utc_offset_minutes = *v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_bounded() {
        assert!(ProductChange::Name("Game key".into()).is_valid());
        assert!(!ProductChange::Name("  ".into()).is_valid());
        assert!(!ProductChange::Name("a\u{7}b".into()).is_valid());
        assert!(!ProductChange::PriceCents(0).is_valid());
        assert!(ProductChange::Description("line one\nline two".into()).is_valid());
        assert!(!ProductChange::QuantityMax(ORDER_QUANTITY_MAX + 1).is_valid());
        assert!(IdentityChange::UtcOffsetMinutes(480).is_valid());
        assert!(!IdentityChange::UtcOffsetMinutes(15 * 60).is_valid());
    }

    #[test]
    fn a_quantity_limit_of_zero_is_the_shop_wide_one() {
        let mut details = ProductDetails::default();
        assert_eq!(details.order_quantity_max(), ORDER_QUANTITY_MAX);
        details.quantity_max = 3;
        assert_eq!(details.order_quantity_max(), 3);
    }
}
