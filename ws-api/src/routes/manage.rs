//! Operator endpoints for running the shop day to day: product listings, keys (list, search,
//! export, delete), orders (search, export, one order in full), revenue, coupons and the
//! shop's identity. Bearer token like every operator route; every change is a log event and
//! an entry in the operators' audit trail.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::coupons::NewCoupon;
use actors::products::ProductListing;
use engine::coupon::{Discount, PERCENT_BP_MAX};
use engine::listing::{IdentityChange, ProductChange, ShopIdentity};
use engine::money::format_cents;
use engine::time::format_rfc3339_ms;
use engine::{CardId, OrderId, OrderRecord, Sku};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::export::{self, CardsQueryText, OrdersQueryText, EXPORT_ROWS_MAX, PAGE_ROWS_MAX};
use crate::operator::require_operator;
use crate::routes::admin::record_action;
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/admin/products", web::get().to(products))
        .route(
            "/api/v1/admin/products/{sku}",
            web::patch().to(edit_product),
        )
        .route("/api/v1/admin/products/{sku}/cards", web::get().to(cards))
        .route(
            "/api/v1/admin/products/{sku}/cards/export",
            web::get().to(export_cards),
        )
        .route(
            "/api/v1/admin/products/{sku}/cards/delete",
            web::post().to(delete_cards),
        )
        .route("/api/v1/admin/orders", web::get().to(orders))
        .route("/api/v1/admin/orders/export", web::get().to(export_orders))
        .route("/api/v1/admin/orders/{order_id}", web::get().to(order))
        .route("/api/v1/admin/revenue", web::get().to(revenue))
        .route("/api/v1/admin/coupons", web::get().to(coupons))
        .route("/api/v1/admin/coupons", web::post().to(create_coupon))
        .route(
            "/api/v1/admin/coupons/{code}/disable",
            web::post().to(disable_coupon),
        )
        .route("/api/v1/admin/shop", web::get().to(identity))
        .route("/api/v1/admin/shop", web::put().to(set_identity));
}

pub fn listing_json(listing: &ProductListing) -> Value {
    let (product, details, stock) = (&listing.product, &listing.details, &listing.stock);
    json!({
        "sku": product.sku.as_str(),
        "name": product.name,
        "price_cents": product.price_cents,
        "currency": product.currency.as_str(),
        "description": details.description,
        "hidden": details.hidden,
        "quantity_max": details.quantity_max,
        "usage_note": details.usage_note,
        "image_url": details.image_url,
        "category": details.category,
        "stock": crate::wire::StockBody::new(*stock, listing.deleted),
    })
}

async fn products(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let listings: Vec<Value> = state
        .shop
        .products()
        .list()
        .iter()
        .map(listing_json)
        .collect();
    Ok(HttpResponse::Ok().json(listings))
}

/// A product edit: only the fields present change.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProductEdit {
    pub name: Option<String>,
    pub price_cents: Option<u64>,
    pub description: Option<String>,
    pub hidden: Option<bool>,
    pub quantity_max: Option<u32>,
    pub usage_note: Option<String>,
    pub image_url: Option<String>,
    pub category: Option<String>,
}

/// An image or logo address: empty, or `https://` (the pages' policy loads images from
/// this origin and https only), or a path on this site.
pub fn valid_image_url(url: &str) -> bool {
    url.is_empty()
        || (url.starts_with("https://") && url.len() > "https://".len())
        || (url.starts_with('/') && !url.starts_with("//"))
}

impl ProductEdit {
    pub fn into_changes(self) -> Result<Vec<ProductChange>, ApiError> {
        if let Some(url) = &self.image_url {
            if !valid_image_url(url.trim()) {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "image_url must be https:// or a path on this site",
                ));
            }
        }
        let trim = |text: Option<String>| text.map(|t| t.trim().to_owned());
        let changes: Vec<ProductChange> = [
            trim(self.name).map(ProductChange::Name),
            self.price_cents.map(ProductChange::PriceCents),
            trim(self.description).map(ProductChange::Description),
            self.hidden.map(ProductChange::Hidden),
            self.quantity_max.map(ProductChange::QuantityMax),
            trim(self.usage_note).map(ProductChange::UsageNote),
            trim(self.image_url).map(ProductChange::ImageUrl),
            trim(self.category).map(ProductChange::Category),
        ]
        .into_iter()
        .flatten()
        .collect();
        if changes.is_empty() {
            return Err(ApiError::bad_request("bad_request", "nothing to change"));
        }
        Ok(changes)
    }
}

async fn edit_product(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let edit: ProductEdit = crate::json_body(payload, &state).await?;
    let listing = edit_listing(&state, &request, &sku, edit.into_changes()?).await?;
    Ok(HttpResponse::Ok().json(listing_json(&listing)))
}

/// Edits a listing and records what changed in the audit trail (shared with the pages).
pub async fn edit_listing(
    state: &AppState,
    request: &HttpRequest,
    sku: &Sku,
    changes: Vec<ProductChange>,
) -> Result<ProductListing, ApiError> {
    let (listing, made) = state.shop.products().edit(sku, changes).await?;
    if !made.is_empty() {
        let note = describe_changes(&made);
        record_action(state, request, "edit_product", sku.as_str(), &note).await?;
    }
    Ok(listing)
}

/// A short account of an edit for the audit trail (field names, and the new price).
pub fn describe_changes(changes: &[ProductChange]) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|change| match change {
            ProductChange::Name(_) => "name".into(),
            ProductChange::PriceCents(cents) => format!("price {}", format_cents(*cents)),
            ProductChange::Description(_) => "description".into(),
            ProductChange::Hidden(true) => "hidden".into(),
            ProductChange::Hidden(false) => "shown".into(),
            ProductChange::QuantityMax(limit) => format!("limit {limit}"),
            ProductChange::UsageNote(_) => "usage note".into(),
            ProductChange::ImageUrl(_) => "image".into(),
            ProductChange::Category(_) => "category".into(),
        })
        .collect();
    parts.join(", ")
}

async fn cards(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<CardsQueryText>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let page = state
        .shop
        .products()
        .cards(&sku, &query.to_query(PAGE_ROWS_MAX)?)?;
    let cards: Vec<Value> = page
        .cards
        .iter()
        .map(|line| {
            json!({
                "card_id": line.card.0,
                "key": line.key,
                "status": line.status.as_str(),
                "order_id": line.order_id.as_ref().map(|id| id.as_str()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"total": page.total, "cards": cards})))
}

async fn export_cards(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<CardsQueryText>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    cards_export(&state, &request, &sku, &query).await
}

/// The CSV of a product's keys (shared with the pages); the export is in the audit trail.
pub async fn cards_export(
    state: &AppState,
    request: &HttpRequest,
    sku: &Sku,
    query: &CardsQueryText,
) -> Result<HttpResponse, ApiError> {
    let mut card_query = query.to_query(EXPORT_ROWS_MAX)?;
    card_query.offset = 0;
    card_query.limit = EXPORT_ROWS_MAX;
    let page = state.shop.products().cards(sku, &card_query)?;
    let note = format!("{} keys", page.cards.len());
    record_action(state, request, "export_keys", sku.as_str(), &note).await?;
    export::cards_csv(sku, &page.cards, page.total > page.cards.len())
}

#[derive(Deserialize)]
struct DeleteBody {
    card_ids: Vec<u64>,
}

async fn delete_cards(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let body: DeleteBody = crate::json_body(payload, &state).await?;
    let cards = body.card_ids.into_iter().map(CardId).collect();
    let outcome = state
        .shop
        .products()
        .delete_cards(sku.clone(), cards)
        .await?;
    if !outcome.deleted.is_empty() {
        let note = format!("{} keys", outcome.deleted.len());
        record_action(&state, &request, "delete_keys", sku.as_str(), &note).await?;
    }
    let kept: Vec<Value> = outcome
        .kept
        .iter()
        .map(|(card, status)| json!({"card_id": card.0, "status": status.as_str()}))
        .collect();
    let deleted: Vec<u64> = outcome.deleted.iter().map(|c| c.0).collect();
    Ok(HttpResponse::Ok().json(json!({"deleted": deleted, "kept": kept})))
}

/// The shop's time zone, for days in filters and reports.
pub fn utc_offset(state: &AppState) -> i16 {
    state.shop.storefront().identity().utc_offset_minutes
}

/// An order as operators see it in a listing (no keys).
pub fn order_line_json(record: &OrderRecord) -> Value {
    let created = &record.created;
    json!({
        "order_id": created.order_id.as_str(),
        "status": record.status.as_str(),
        "sku": created.sku.as_str(),
        "quantity": created.quantity,
        "amount_cents": created.amount_cents,
        "currency": created.currency.as_str(),
        "contact": created.contact,
        "channel": created.channel,
        "payment_channel": created.payment_channel,
        "created_at": format_rfc3339_ms(created.created_at_ms),
        "paid_at": record.paid_at_ms.map(format_rfc3339_ms),
    })
}

async fn orders(
    request: HttpRequest,
    query: web::Query<OrdersQueryText>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let filter = query.to_filter(utc_offset(&state))?;
    let page = state
        .shop
        .order_book()
        .search(&filter, query.offset, query.limit());
    let orders: Vec<Value> = page.orders.iter().map(order_line_json).collect();
    Ok(HttpResponse::Ok().json(json!({"total": page.total, "orders": orders})))
}

async fn export_orders(
    request: HttpRequest,
    query: web::Query<OrdersQueryText>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    orders_export(&state, &query)
}

/// The CSV of the orders a search finds (shared with the pages).
pub fn orders_export(state: &AppState, query: &OrdersQueryText) -> Result<HttpResponse, ApiError> {
    let filter = query.to_filter(utc_offset(state))?;
    let page = state.shop.order_book().search(&filter, 0, EXPORT_ROWS_MAX);
    export::orders_csv(&page.orders, page.total > page.orders.len())
}

/// The buyer's own link to an order (what an operator sends a buyer who lost it).
pub fn buyer_link(state: &AppState, record: &OrderRecord) -> String {
    let base = state.shop.settings().public_url.trim_end_matches('/');
    format!(
        "{base}{}",
        crate::pages::shop::order_path(
            record.created.order_id.as_str(),
            &state.shop.buyer_token(record)
        )
    )
}

async fn order(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let view = state
        .shop
        .order_book()
        .order(&order_id)?
        .ok_or_else(|| ApiError::not_found("unknown order"))?;
    let record = &view.record;
    let mut answer = order_line_json(record);
    answer["keys"] = json!(view.keys);
    answer["order_url"] = json!(buyer_link(&state, record));
    answer["trace_id"] = json!(record.created.trace_id);
    answer["expires_at"] = json!(format_rfc3339_ms(record.created.expires_at_ms));
    answer["coupon"] = view.coupon.as_ref().map_or(
        Value::Null,
        |c| json!({"code": c.code, "discount_cents": c.discount_cents}),
    );
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Deserialize)]
struct RevenueQuery {
    #[serde(default = "thirty")]
    days: u32,
}

fn thirty() -> u32 {
    30
}

async fn revenue(
    request: HttpRequest,
    query: web::Query<RevenueQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    if !(1..=actors::order_book::REVENUE_DAYS_MAX).contains(&query.days) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("days is 1 to {}", actors::order_book::REVENUE_DAYS_MAX),
        ));
    }
    let revenue =
        state
            .shop
            .order_book()
            .revenue(query.days, state.shop.now_ms(), utc_offset(&state));
    let lines = |lines: &[actors::order_book::RevenueLine], key: &str| -> Vec<Value> {
        lines
            .iter()
            .map(|l| {
                json!({key: l.key, "currency": l.currency.as_str(),
                       "amount_cents": l.amount_cents, "orders": l.orders_count})
            })
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "per_day": lines(&revenue.per_day, "day"),
        "per_product": lines(&revenue.per_product, "sku"),
    })))
}

pub fn coupon_json(state: &engine::state::CouponState) -> Value {
    let coupon = &state.coupon;
    let (kind, value) = match coupon.discount {
        Discount::Percent { basis_points } => ("percent", u64::from(basis_points)),
        Discount::Fixed { amount_cents } => ("fixed", amount_cents),
    };
    json!({
        "code": coupon.code,
        "kind": kind,
        "percent_bp": (kind == "percent").then_some(value),
        "amount_off_cents": (kind == "fixed").then_some(value),
        "sku": coupon.sku.as_ref().map(|s| s.as_str()),
        "uses_max": coupon.uses_max,
        "used": state.used,
        "expires_at": format_rfc3339_ms(coupon.expires_at_ms),
        "disabled": state.disabled_at_ms.is_some(),
    })
}

async fn coupons(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let coupons: Vec<Value> = state
        .shop
        .coupons()
        .list()
        .iter()
        .map(coupon_json)
        .collect();
    Ok(HttpResponse::Ok().json(coupons))
}

/// A new coupon: exactly one of `percent_off` (1 to 100, two decimals at most, as basis
/// points `percent_bp`) or `amount_off_cents`; `expires_at_ms` (Unix ms) or `expires_on`
/// (`YYYY-MM-DD`, the shop's time zone, the coupon works through that day).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponBody {
    pub code: String,
    #[serde(default)]
    pub percent_bp: Option<u32>,
    #[serde(default)]
    pub amount_off_cents: Option<u64>,
    #[serde(default)]
    pub sku: Option<String>,
    pub uses_max: u32,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    #[serde(default)]
    pub expires_on: Option<String>,
}

impl CouponBody {
    pub fn into_coupon(self, offset_minutes: i16) -> Result<NewCoupon, ApiError> {
        let discount = match (self.percent_bp, self.amount_off_cents) {
            (Some(basis_points), None) if (1..=PERCENT_BP_MAX).contains(&basis_points) => {
                Discount::Percent { basis_points }
            }
            (None, Some(amount_cents)) if amount_cents > 0 => Discount::Fixed { amount_cents },
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "give either percent_bp (1 to 10000) or amount_off_cents (> 0)",
                ))
            }
        };
        let expires_at_ms = match (self.expires_at_ms, self.expires_on.as_deref()) {
            (Some(ms), None) => ms,
            (None, Some(day)) => engine::time::parse_day_ms(day, offset_minutes)
                .map(|start| start + 86_400_000)
                .ok_or_else(|| ApiError::bad_request("bad_request", "expires_on is YYYY-MM-DD"))?,
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "give either expires_at_ms or expires_on",
                ))
            }
        };
        let sku = match self.sku.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(Sku::parse(text)?),
        };
        Ok(NewCoupon {
            code: self.code,
            discount,
            sku,
            uses_max: self.uses_max,
            expires_at_ms,
        })
    }
}

async fn create_coupon(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: CouponBody = crate::json_body(payload, &state).await?;
    let new = body.into_coupon(utc_offset(&state))?;
    let coupon = state.shop.coupons().create(new).await?;
    record_action(&state, &request, "create_coupon", &coupon.code, "").await?;
    let created = state
        .shop
        .store()
        .state()
        .coupon(&coupon.code)
        .map(coupon_json);
    Ok(HttpResponse::Created().json(created))
}

async fn disable_coupon(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    state.shop.coupons().disable(&path).await?;
    record_action(&state, &request, "disable_coupon", &path, "").await?;
    Ok(
        HttpResponse::Ok()
            .json(json!({"code": path.trim().to_ascii_uppercase(), "disabled": true})),
    )
}

pub fn identity_json(identity: &ShopIdentity) -> Value {
    json!({
        "name": identity.name,
        "logo_url": identity.logo_url,
        "announcement": identity.announcement,
        "footer": identity.footer,
        "support_contact": identity.support_contact,
        "terms": identity.terms,
        "utc_offset_minutes": identity.utc_offset_minutes,
    })
}

async fn identity(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    Ok(HttpResponse::Ok().json(identity_json(&state.shop.storefront().identity())))
}

/// The shop's identity: only the fields present change.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentityBody {
    pub name: Option<String>,
    pub logo_url: Option<String>,
    pub announcement: Option<String>,
    pub footer: Option<String>,
    pub support_contact: Option<String>,
    pub terms: Option<String>,
    pub utc_offset_minutes: Option<i16>,
}

impl IdentityBody {
    pub fn into_changes(self) -> Result<Vec<IdentityChange>, ApiError> {
        if let Some(url) = &self.logo_url {
            if !valid_image_url(url.trim()) {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "logo_url must be https:// or a path on this site",
                ));
            }
        }
        let trim = |text: Option<String>| text.map(|t| t.trim().to_owned());
        Ok([
            trim(self.name).map(IdentityChange::Name),
            trim(self.logo_url).map(IdentityChange::LogoUrl),
            trim(self.announcement).map(IdentityChange::Announcement),
            trim(self.footer).map(IdentityChange::Footer),
            trim(self.support_contact).map(IdentityChange::SupportContact),
            trim(self.terms).map(IdentityChange::Terms),
            self.utc_offset_minutes
                .map(IdentityChange::UtcOffsetMinutes),
        ]
        .into_iter()
        .flatten()
        .collect())
    }
}

async fn set_identity(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: IdentityBody = crate::json_body(payload, &state).await?;
    let identity = state
        .shop
        .storefront()
        .set_identity(body.into_changes()?)
        .await?;
    record_action(&state, &request, "set_identity", "shop", "").await?;
    Ok(HttpResponse::Ok().json(identity_json(&identity)))
}
