//! The sled rows of operators' edits: product listings (details and deleted count), coupons
//! with their use counts, orders' terms (coupon, lookup-password hash) and the shop's
//! identity. Like every row they hold absolute values from the replayed state, so
//! re-applying a suffix of the log is idempotent; `audit` compares them with the log.

use bincode::{Decode, Encode};
use engine::coupon::Coupon;
use engine::listing::{ProductDetails, ShopIdentity};
use engine::state::{OrderTerms, ShopState, Touched};
use engine::{OrderId, Sku};

use crate::rows::TouchedSet;
use crate::rows::{self, Change, Row, TreeName};
use crate::Error;

/// The key of the identity's one row in the `shop` tree.
const IDENTITY_KEY: &[u8] = b"identity";

/// A product's listing row.
#[derive(Encode, Decode, Debug, PartialEq, Eq, Clone)]
pub struct ListingRow {
    pub details: ProductDetails,
    pub deleted: u64,
}

/// A coupon's row.
#[derive(Encode, Decode, Debug, PartialEq, Eq, Clone)]
pub struct CouponRow {
    pub coupon: Coupon,
    pub used: u32,
    pub disabled_at_ms: Option<u64>,
}

pub fn listing_row(state: &ShopState, sku: &Sku) -> Row {
    let product = state.product(sku).expect("touched sku exists");
    let row = ListingRow {
        details: product.details.clone(),
        deleted: product.deleted,
    };
    Row {
        tree: TreeName::Listings,
        key: sku.as_str().as_bytes().to_vec(),
        value: rows::encode(&row),
    }
}

fn coupon_record(state: &ShopState, code: &str) -> CouponRow {
    let coupon = state.coupon(code).expect("touched coupon exists");
    CouponRow {
        coupon: coupon.coupon.clone(),
        used: coupon.used,
        disabled_at_ms: coupon.disabled_at_ms,
    }
}

pub fn coupon_row(state: &ShopState, code: &str) -> Row {
    Row {
        tree: TreeName::Coupons,
        key: code.as_bytes().to_vec(),
        value: rows::encode(&coupon_record(state, code)),
    }
}

pub fn terms_row(state: &ShopState, order_id: &OrderId) -> Row {
    let terms = state.terms_of(order_id).expect("touched terms exist");
    Row {
        tree: TreeName::OrderTerms,
        key: order_id.as_str().as_bytes().to_vec(),
        value: rows::encode(terms),
    }
}

pub fn identity_row(state: &ShopState) -> Row {
    Row {
        tree: TreeName::Shop,
        key: IDENTITY_KEY.to_vec(),
        value: rows::encode(state.identity()),
    }
}

/// The rows an applied event changed, as the state now has them.
pub(crate) fn changes(state: &ShopState, touched: &Touched, out: &mut Vec<Change>) {
    if let Some(sku) = &touched.listing {
        out.push(Change::Encoded(listing_row(state, sku)));
    }
    if let Some(code) = &touched.coupon {
        out.push(Change::Encoded(coupon_row(state, code)));
    }
    if let (true, Some(order_id)) = (touched.order_terms, &touched.order) {
        out.push(Change::Encoded(terms_row(state, order_id)));
    }
    if touched.identity {
        out.push(Change::Encoded(identity_row(state)));
    }
}

/// The rows of a replayed suffix of the log.
pub(crate) fn replayed_rows(state: &ShopState, touched: &TouchedSet, out: &mut Vec<Row>) {
    for sku in &touched.listings {
        out.push(listing_row(state, sku));
    }
    for code in &touched.coupons {
        out.push(coupon_row(state, code));
    }
    for order_id in &touched.order_terms {
        out.push(terms_row(state, order_id));
    }
    if touched.identity {
        out.push(identity_row(state));
    }
}

fn read<T: Decode<()>>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, Error> {
    tree.get(key)?.map(|b| rows::decode(&b)).transpose()
}

/// What `audit` finds where sled disagrees with the log on listings, coupons, terms and the
/// identity. Rows the log touched after sled's applied lsn are skipped.
pub(crate) fn compare(
    db: &sled::Db,
    state: &ShopState,
    unmirrored: &TouchedSet,
    violations: &mut Vec<String>,
) -> Result<(), Error> {
    let listings = db.open_tree(TreeName::Listings.as_string())?;
    for product in state.products() {
        let sku = &product.product.sku;
        let want = ListingRow {
            details: product.details.clone(),
            deleted: product.deleted,
        };
        let untouched = want
            == ListingRow {
                details: ProductDetails::default(),
                deleted: 0,
            };
        let row: Option<ListingRow> = read(&listings, sku.as_str().as_bytes())?;
        // A product never edited has no row; its listing is the default one.
        let agrees = row.as_ref() == Some(&want) || (row.is_none() && untouched);
        if !agrees && !unmirrored.listings.contains(sku) {
            violations.push(format!(
                "sled disagrees with the log on the listing of {sku}"
            ));
        }
    }
    let coupons = db.open_tree(TreeName::Coupons.as_string())?;
    for coupon in state.coupons() {
        let code = &coupon.coupon.code;
        let row: Option<CouponRow> = read(&coupons, code.as_bytes())?;
        if row != Some(coupon_record(state, code)) && !unmirrored.coupons.contains(code) {
            violations.push(format!("sled disagrees with the log on coupon {code}"));
        }
    }
    let terms = db.open_tree(TreeName::OrderTerms.as_string())?;
    crate::rows::try_for_each_order(state, |record| {
        let id = &record.created.order_id;
        let Some(want) = state.terms_of(id) else {
            return Ok(());
        };
        let row: Option<OrderTerms> = read(&terms, id.as_str().as_bytes())?;
        if row.as_ref() != Some(want) && !unmirrored.order_terms.contains(id) {
            violations.push(format!("sled disagrees with the log on the terms of {id}"));
        }
        Ok(())
    })?;
    let shop = db.open_tree(TreeName::Shop.as_string())?;
    let identity: Option<ShopIdentity> = read(&shop, IDENTITY_KEY)?;
    let agrees = identity.as_ref() == Some(state.identity())
        || (identity.is_none() && *state.identity() == ShopIdentity::default());
    if !agrees && !unmirrored.identity {
        violations.push("sled disagrees with the log on the shop identity".into());
    }
    Ok(())
}
