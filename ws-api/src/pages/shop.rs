//! The storefront: the catalogue with live stock (by category, hidden products left out), a
//! product page with the buy form (coupon, lookup password), the order page that follows the
//! order live and counts down to its expiry, the lookup by order id and token or by contact
//! and lookup password, and the shop's terms.
//!
//! Buying posts a form here; the order is made exactly as `POST /api/v1/orders` makes it
//! (with an idempotency key from the form, so a double submit makes one order), and the
//! buyer lands on the order page, which links to the channel's payment URL and shows the
//! keys the moment they are committed. When the product has a waiting room (a flash sale,
//! or a saturated pipeline) the buyer lands on the ticket's page instead, which shows the
//! position live and moves on to the order page once admitted.

use std::hash::{Hash, Hasher};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::flash::TicketUpdate;
use actors::products::ProductListing;
use actors::{BuyerTerms, OrderRequest};
use engine::money::format_cents;
use engine::order::{CONTACT_LEN_MAX, ORDER_QUANTITY_MAX};
use engine::{OrderId, OrderRecord, OrderStatus, Product, Sku};
use maud::{html, Markup};
use serde::Deserialize;

use crate::error::ApiError;
use crate::pages::i18n::{status_label, Lang};
use crate::pages::session::random_hex128;
use crate::pages::{document, message_page, respond, see_other, url_encode, Frame};
use crate::{payload_too_large, read_body, AppState};

/// Largest buy form body; the fields are short.
pub const BUY_FORM_BYTES_MAX: usize = 4 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(catalogue))
        .route("/product/{sku}", web::get().to(product_page))
        .route("/buy", web::post().to(buy))
        .route("/order/{order_id}", web::get().to(order_page))
        .route("/queue/{ticket}", web::get().to(queue_page))
        .route("/lookup", web::get().to(lookup))
        .route("/lookup", web::post().to(lookup_by_contact))
        .route("/terms", web::get().to(terms));
}

fn price(product: &Product) -> String {
    format!(
        "{} {}",
        format_cents(product.price_cents),
        product.currency.as_str()
    )
}

fn stock_text(lang: Lang, available: u64) -> Markup {
    html! {
        span.stock.out[available == 0] data-stock=(available) {
            @if available == 0 { (lang.pick("Sold out", "已售罄")) }
            @else { (lang.pick("In stock: ", "库存：")) (available) }
        }
    }
}

/// Listed products by category (uncategorised first), then name, so the catalogue reads
/// the same on every visit.
fn sorted_products(state: &AppState) -> Vec<ProductListing> {
    let mut products = state.shop.products().listed();
    products.sort_by(|a, b| {
        (&a.details.category, &a.product.name, &a.product.sku).cmp(&(
            &b.details.category,
            &b.product.name,
            &b.product.sku,
        ))
    });
    products
}

fn catalogue_item(lang: Lang, listing: &ProductListing) -> Markup {
    let product = &listing.product;
    html! {
        li.product data-sku=(product.sku.as_str()) {
            @if !listing.details.image_url.is_empty() {
                img.thumb src=(listing.details.image_url) alt="" loading="lazy" width="64" height="64";
            }
            a href=(format!("/product/{}", product.sku.as_str())) {
                span.name { (product.name) }
            }
            span.price { (price(product)) }
            (stock_text(lang, listing.stock.available))
        }
    }
}

async fn catalogue(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = Lang::of(&request);
    let products = sorted_products(&state);
    let mut categories: Vec<(&str, Vec<&ProductListing>)> = Vec::new();
    for listing in &products {
        let category = listing.details.category.as_str();
        match categories.last_mut() {
            Some((name, items)) if *name == category => items.push(listing),
            _ => categories.push((category, vec![listing])),
        }
    }
    let main = html! {
        h1 { (lang.pick("Catalogue", "商品列表")) }
        p.lead { (lang.pick("Pay, and your keys appear on your order page at once.",
                            "付款后，卡密立即显示在订单页面。")) }
        @if products.is_empty() {
            p { (lang.pick("Nothing for sale yet.", "暂无商品。")) }
        }
        div #catalogue data-sold-out=(lang.pick("Sold out", "已售罄"))
            data-in-stock=(lang.pick("In stock: ", "库存：")) {
            @for (category, items) in &categories {
                @if !category.is_empty() { h2.category { (category) } }
                ul.products {
                    @for listing in items { (catalogue_item(lang, listing)) }
                }
            }
        }
    };
    let title = lang.pick("Catalogue", "商品列表");
    respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    )
}

/// The payment methods whose channels are configured, with their names for buyers.
/// The payment methods buyers can choose now: those with a configured channel.
pub(crate) async fn payment_methods(state: &AppState) -> Vec<String> {
    let live: Vec<String> = state
        .shop
        .channel_health()
        .await
        .into_iter()
        .map(|c| c.name)
        .collect();
    let configured = |channel: &str| match channel {
        "epay" => state.epay.is_some(),
        other => live.iter().any(|name| name == other),
    };
    state
        .shop
        .settings()
        .payment_methods
        .iter()
        .filter(|(_, channels)| channels.iter().any(|c| configured(c)))
        .map(|(method, _)| method.clone())
        .collect()
}

fn method_label(lang: Lang, method: &str) -> String {
    let label = match method {
        "alipay" => lang.pick("Alipay", "支付宝"),
        "wxpay" => lang.pick("WeChat Pay", "微信支付"),
        "qqpay" => lang.pick("QQ Pay", "QQ 钱包"),
        "usdt" => "USDT (TRC20)",
        "card" => lang.pick("Bank card", "银行卡"),
        other => return other.to_owned(),
    };
    label.to_owned()
}

/// What the buy form sends back, also used to fill it again after a refusal.
#[derive(Deserialize, Default)]
struct BuyForm {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    quantity: String,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    method: String,
    /// A random key per rendering of the form: a double submit makes one order.
    #[serde(default)]
    key: String,
    #[serde(default)]
    coupon: String,
    /// Never shown again, never hashed into the fingerprint.
    #[serde(default)]
    lookup_password: String,
    /// A VIP invite code, if the buyer has one.
    #[serde(default)]
    vip_code: String,
}

/// The form's fingerprint (kept in the log with the idempotency key) leaves the lookup
/// password out: even a fast hash of it must never be stored.
impl Hash for BuyForm {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (
            &self.sku,
            &self.quantity,
            &self.contact,
            &self.method,
            &self.key,
        )
            .hash(state);
        self.coupon.hash(state);
        self.vip_code.hash(state);
    }
}

struct ProductView {
    listing: ProductListing,
    product: Product,
    available: u64,
    methods: Vec<String>,
}

async fn product_view(state: &AppState, sku: &str) -> Option<ProductView> {
    let sku = Sku::parse(sku).ok()?;
    let listing = state.shop.products().get(&sku)?;
    if listing.details.hidden {
        return None;
    }
    Some(ProductView {
        product: listing.product.clone(),
        available: listing.stock.available,
        methods: payment_methods(state).await,
        listing,
    })
}

async fn product_page(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(view) = product_view(&state, &path).await else {
        return not_found(&request);
    };
    let form = BuyForm {
        quantity: "1".into(),
        ..BuyForm::default()
    };
    render_product(&request, &view, &form, None, StatusCode::OK)
}

fn render_product(
    request: &HttpRequest,
    view: &ProductView,
    form: &BuyForm,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let lang = Lang::of(request);
    let product = &view.product;
    let main = html! {
        p.crumbs { a href="/" { "← " (lang.pick("Catalogue", "商品列表")) } }
        h1 { (product.name) }
        @if !view.listing.details.image_url.is_empty() {
            img.picture src=(view.listing.details.image_url) alt="" width="320" height="180";
        }
        p.price-line { span.price { (price(product)) } " " (stock_text(lang, view.available)) }
        @if !view.listing.details.description.is_empty() {
            div.description #description { @for line in view.listing.details.description.lines() {
                @if !line.trim().is_empty() { p { (line) } }
            } }
        }
        @if let Some(error) = &error {
            p.error role="alert" { (error) }
        }
        (buy_form(lang, view, form))
    };
    respond(
        status,
        document(&Frame::new(request, lang, &product.name), main),
    )
}

fn buy_form(lang: Lang, view: &ProductView, form: &BuyForm) -> Markup {
    let limit = view.listing.details.order_quantity_max();
    let quantity_max = view
        .available
        .clamp(1, u64::from(limit.min(ORDER_QUANTITY_MAX)));
    // No way to pay is not "sold out": the buyer may come back, the keys are there.
    let unpayable = view.methods.is_empty();
    let sold_out = view.available == 0;
    let chosen = if view.methods.contains(&form.method) {
        form.method.as_str()
    } else {
        view.methods.first().map_or("", String::as_str)
    };
    html! {
        form.buy method="post" action="/buy" {
            input type="hidden" name="sku" value=(view.product.sku.as_str());
            input type="hidden" name="key" value=(random_hex128());
            label for="contact" { (lang.pick("Contact (e-mail or phone)", "联系方式（邮箱或手机）")) }
            input #contact type="text" name="contact" required maxlength=(CONTACT_LEN_MAX)
                autocomplete="email" value=(form.contact) aria-describedby="contact-help";
            p.help #contact-help { (lang.pick("With the lookup password below, it finds your order again if you lose its link.",
                                              "配合下方的查询密码，丢失订单链接时可凭此找回订单。")) }
            label for="lookup_password" { (lang.pick("Lookup password (optional)", "查询密码（可选）")) }
            input #lookup_password type="password" name="lookup_password" minlength="4" maxlength="64"
                autocomplete="new-password" aria-describedby="password-help";
            p.help #password-help { (lang.pick("4 to 64 characters. Only a scrambled form is kept; we cannot tell it to you.",
                                               "4 到 64 个字符。店家只保存其加密摘要，无法告诉您原文。")) }
            label for="quantity" { (lang.pick("Quantity", "数量")) }
            input #quantity type="number" name="quantity" required min="1"
                max=(quantity_max) inputmode="numeric" value=(form.quantity);
            @if limit < ORDER_QUANTITY_MAX {
                p.help #limit-help { (lang.pick("At most ", "每单最多 ")) (limit) (lang.pick(" per order.", " 件。")) }
            }
            label for="coupon" { (lang.pick("Coupon code (optional)", "优惠码（可选）")) }
            input #coupon type="text" name="coupon" maxlength="32" autocomplete="off" value=(form.coupon);
            label for="vip_code" { (lang.pick("VIP invite code (optional)", "VIP 邀请码（可选）")) }
            input #vip_code type="text" name="vip_code" maxlength="200" autocomplete="off"
                value=(form.vip_code);
            fieldset {
                legend { (lang.pick("Payment method", "支付方式")) }
                @for method in &view.methods {
                    label.choice {
                        input type="radio" name="method" value=(method) checked[method == chosen];
                        " " (method_label(lang, method))
                    }
                }
            }
            @if unpayable && !sold_out {
                p.help #unavailable { (lang.pick(
                    "Buying is temporarily unavailable. Please come back later.",
                    "暂时无法购买，请稍后再来。")) }
            }
            button type="submit" disabled[sold_out || unpayable] {
                @if sold_out { (lang.pick("Sold out", "已售罄")) }
                @else if unpayable { (lang.pick("Temporarily unavailable", "暂时无法购买")) }
                @else { (lang.pick("Buy and pay", "购买并付款")) }
            }
        }
    }
}

fn not_found(request: &HttpRequest) -> HttpResponse {
    let lang = Lang::of(request);
    message_page(
        request,
        StatusCode::NOT_FOUND,
        lang.pick("Not found", "未找到"),
        lang.pick(
            "There is nothing here, or the link is incomplete.",
            "这里什么都没有，或者链接不完整。",
        ),
    )
}

/// A refusal of the shop, in the buyer's words.
fn refusal_text(lang: Lang, error: &ApiError) -> String {
    let text = match error.code {
        "sold_out" => lang.pick("Not enough keys left for that quantity.", "库存不足。"),
        "unknown_sku" => lang.pick("This product is no longer sold.", "该商品已下架。"),
        "coupon_unknown" => lang.pick("That coupon code does not exist.", "优惠码不存在。"),
        "coupon_disabled" | "coupon_expired" => {
            lang.pick("That coupon is no longer valid.", "该优惠码已失效。")
        }
        "coupon_used_up" => lang.pick("That coupon has been used up.", "该优惠码已被用完。"),
        "coupon_other_product" => lang.pick(
            "That coupon is for another product.",
            "该优惠码不适用于此商品。",
        ),
        "unknown_channel" | "channel_unavailable" => lang.pick(
            "That payment method is not available; choose another.",
            "该支付方式暂不可用，请选择其他方式。",
        ),
        "busy" | "unavailable" | "storage_unavailable" | "request_in_progress" | "rate_limited" => {
            lang.pick(
                "The shop is busy; please try again in a moment.",
                "系统繁忙，请稍后再试。",
            )
        }
        _ => {
            return format!(
                "{} ({})",
                lang.pick("Please check the form.", "请检查填写的内容。"),
                error.message
            )
        }
    };
    text.to_owned()
}

/// A stable fingerprint of the form, to tell a resubmission from a changed one.
fn fingerprint(form: &BuyForm) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    form.hash(&mut hasher);
    hasher.finish()
}

async fn buy(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, BUY_FORM_BYTES_MAX, payload_too_large).await?;
    let form: BuyForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let Some(view) = product_view(&state, &form.sku).await else {
        return Ok(not_found(&request));
    };
    let lang = Lang::of(&request);
    let client = state.client(&request);
    // The buy form makes orders like the API does, so the same per-client limit applies.
    if let Err(error) = state.limits.check(crate::limits::Lane::Create, client) {
        let text = refusal_text(lang, &error);
        return Ok(render_product(
            &request,
            &view,
            &form,
            Some(text),
            error.status,
        ));
    }
    let quantity = match form.quantity.trim().parse::<u32>() {
        Ok(q) if (1..=ORDER_QUANTITY_MAX).contains(&q) => q,
        _ => {
            let error = lang.pick(
                "Quantity must be a whole number from 1 to 100.",
                "数量须为 1 到 100 的整数。",
            );
            return Ok(render_product(
                &request,
                &view,
                &form,
                Some(error.into()),
                StatusCode::BAD_REQUEST,
            ));
        }
    };
    let order_request = OrderRequest {
        sku: view.product.sku.clone(),
        quantity,
        contact: form.contact.trim().to_owned(),
        channel: form.method.clone(),
        idempotency_key: match form.key.is_empty() {
            true => None,
            false => Some(crate::routes::orders::scoped_idempotency_key(
                client,
                &format!("page:{}", form.key),
            )?),
        },
        fingerprint: fingerprint(&form),
        client_ip: client.map(|ip| ip.to_string()),
        terms: BuyerTerms {
            coupon: Some(form.coupon.trim().to_owned()).filter(|c| !c.is_empty()),
            lookup_password: Some(form.lookup_password.clone()).filter(|p| !p.is_empty()),
        },
        vip: crate::routes::orders::vip_lane(&state, Some(form.vip_code.trim()))?,
        phone: crate::direct::from_phone(&request),
    };
    let order_request = match state.shop.queue_if_needed(order_request) {
        Ok(Ok(queued)) => {
            return Ok(see_other(&queue_path(queued.ticket.0, &queued.token)));
        }
        Ok(Err(direct)) => direct,
        Err(error) => {
            let error = ApiError::from(error);
            let text = refusal_text(lang, &error);
            return Ok(render_product(
                &request,
                &view,
                &form,
                Some(text),
                error.status,
            ));
        }
    };
    match state.shop.create_order(order_request).await {
        Ok(order) => Ok(see_other(&order_path(
            order.order_id.as_str(),
            &state.shop.order_token(&order.order_id),
        ))),
        Err(error) => {
            let error = ApiError::from(error);
            let text = refusal_text(lang, &error);
            Ok(render_product(
                &request,
                &view,
                &form,
                Some(text),
                error.status,
            ))
        }
    }
}

/// The order page's address: the token is the buyer's proof, so it rides in the link.
pub fn order_path(order_id: &str, token: &str) -> String {
    format!(
        "/order/{}?token={}",
        url_encode(order_id),
        url_encode(token)
    )
}

/// A waiting-room ticket's page address; the token rides in the link as an order's does.
pub fn queue_path(ticket: u64, token: &str) -> String {
    format!("/queue/{ticket}?token={}", url_encode(token))
}

/// A ticket's page: its position now (then live, by the script), the order page once
/// admitted, or the sold-out or failed outcome.
async fn queue_page(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<OrderQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let lang = Lang::of(&request);
    let Ok(ticket) = path.parse::<u64>() else {
        return not_found(&request);
    };
    let now = state
        .shop
        .ticket_now(engine::waiting_room::TicketId(ticket), &query.token);
    let (position, wait_secs) = match now {
        // Waiting rooms live in memory: a restart (or a long-settled ticket) forgets it.
        Err(_) => {
            return message_page(
                &request,
                StatusCode::NOT_FOUND,
                lang.pick("Your place in line is gone", "您的排队位置已失效"),
                lang.pick(
                    "The shop restarted or the ticket has expired. Nothing was charged; please buy again.",
                    "商店已重启或排队凭证已过期。未产生任何费用，请重新购买。",
                ),
            );
        }
        Ok(TicketUpdate::Admitted(order)) => {
            let token = state.shop.order_token(&order.order_id);
            return see_other(&order_path(order.order_id.as_str(), &token));
        }
        Ok(TicketUpdate::SoldOut) => {
            return message_page(
                &request,
                StatusCode::CONFLICT,
                lang.pick("Sold out", "已售罄"),
                lang.pick(
                    "The keys ran out before your turn came. Nothing was charged.",
                    "轮到您之前库存已售完，未产生任何费用。",
                ),
            );
        }
        Ok(TicketUpdate::Failed(reason)) => {
            return message_page(
                &request,
                StatusCode::CONFLICT,
                lang.pick(
                    "Your turn came, but the order failed",
                    "轮到您了，但下单失败",
                ),
                &reason,
            );
        }
        Ok(TicketUpdate::Queued {
            position,
            estimated_wait_secs,
        }) => (position, estimated_wait_secs),
    };
    let title = lang.pick("You are in line", "您正在排队");
    let main = html! {
        h1 { (title) }
        section #queue data-ticket=(ticket) data-token=(query.token)
            data-wait-label=(lang.pick("about {} s", "约 {} 秒")) {
            p { (lang.pick("Position in line:", "当前排位：")) " " strong #position { (position) } }
            p { (lang.pick("Estimated wait:", "预计等待：")) " " span #wait {
                (lang.pick("about {} s", "约 {} 秒").replace("{}", &wait_secs.to_string()))
            } }
            p { (lang.pick(
                "Keep this page open: it moves on to your order as soon as it is your turn.",
                "请保持本页打开：轮到您时会自动进入订单页面。",
            )) }
            p #conn hidden { (lang.pick("Reconnecting…", "正在重新连接…")) }
        }
    };
    respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    )
}

#[derive(Deserialize)]
struct OrderQuery {
    #[serde(default)]
    token: String,
}

async fn order_page(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<OrderQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Ok(order_id) = OrderId::parse(&path) else {
        return not_found(&request);
    };
    // The link's token, or the one this browser kept when it first opened the order (a
    // gateway returns the buyer to the page without one).
    let token = match query.token.as_str() {
        "" => super::cookie(&request, ORDER_TOKEN_COOKIE).unwrap_or_default(),
        token => token.to_owned(),
    };
    let Ok(view) = state.shop.lookup(&order_id, &token) else {
        return not_found(&request);
    };
    let listing = state.shop.products().get(&view.record.created.sku);
    let name = listing.as_ref().map_or_else(
        || view.record.created.sku.as_str().to_owned(),
        |l| l.product.name.clone(),
    );
    let usage_note = listing.map(|l| l.details.usage_note).unwrap_or_default();
    let lang = Lang::of(&request);
    let shown = OrderShown {
        record: &view.record,
        token: &token,
        name: &name,
        keys: &view.keys,
        usage_note: &usage_note,
        coupon: view.coupon.as_ref(),
        now_ms: state.shop.now_ms(),
    };
    let main = order_main(lang, &shown);
    let title = lang.pick("Your order", "您的订单");
    let mut response = respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    );
    // Tokens are hex: nothing to escape in the cookie.
    let secure = if super::is_secure(&request) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{ORDER_TOKEN_COOKIE}={token}; Path=/order/{}; Max-Age={ORDER_TOKEN_COOKIE_SECS}; \
         HttpOnly; SameSite=Lax{secure}",
        order_id.as_str()
    );
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .append(actix_web::http::header::SET_COOKIE, value);
    }
    response
}

/// The cookie that keeps an order's token for its page only (`Path=/order/{id}`), so that a
/// gateway returns the buyer there with no token in any URL. `SameSite=Lax`: sent on the
/// gateway's redirect (a top-level navigation), never on another site's requests.
const ORDER_TOKEN_COOKIE: &str = "order_token";
const ORDER_TOKEN_COOKIE_SECS: u64 = 30 * 24 * 3600;

/// Every status's label, for the script to show what the socket says.
fn status_labels(lang: Lang) -> String {
    let labels: serde_json::Map<String, serde_json::Value> = OrderStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), status_label(lang, *s).into()))
        .collect();
    serde_json::Value::Object(labels).to_string()
}

/// What the order page shows.
struct OrderShown<'a> {
    record: &'a OrderRecord,
    /// The token the buyer proved (the record keeps only its digest), for the live
    /// status script.
    token: &'a str,
    name: &'a str,
    keys: &'a [String],
    /// The product's note on using the keys, shown with them.
    usage_note: &'a str,
    coupon: Option<&'a engine::coupon::CouponUse>,
    now_ms: u64,
}

/// Time left to pay, counted down by the script from `data-expires-at`.
fn countdown(lang: Lang, expires_at_ms: u64, now_ms: u64) -> Markup {
    let left_secs = expires_at_ms.saturating_sub(now_ms) / 1000;
    html! {
        p.countdown #countdown data-expires-at=(expires_at_ms) data-expired=(lang.pick("Time is up: the order has expired.", "时间已到：订单已过期。")) {
            (lang.pick("Time left to pay: ", "剩余付款时间："))
            strong #time-left { (format!("{}:{:02}", left_secs / 60, left_secs % 60)) }
        }
    }
}

fn order_main(lang: Lang, shown: &OrderShown<'_>) -> Markup {
    let (record, token, name, keys) = (shown.record, shown.token, shown.name, shown.keys);
    let created = &record.created;
    let status = record.status;
    html! {
        h1 { (lang.pick("Your order", "您的订单")) }
        p.help { (lang.pick("Keep this page's link: it is the only way back to your keys.",
                            "请保存本页链接：这是找回卡密的凭证。")) }
        dl.facts {
            dt { (lang.pick("Order", "订单号")) } dd { code { (created.order_id.as_str()) } }
            dt { (lang.pick("Product", "商品")) } dd { (name) " × " (created.quantity) }
            dt { (lang.pick("Amount", "金额")) }
            dd { (format_cents(created.amount_cents)) " " (created.currency.as_str()) }
            @if let Some(coupon) = shown.coupon {
                dt { (lang.pick("Coupon", "优惠码")) }
                dd #coupon-used { code { (coupon.code) } " −" (format_cents(coupon.discount_cents)) " " (created.currency.as_str()) }
            }
        }
        section #order data-order=(created.order_id.as_str()) data-token=(token)
            data-status=(status.as_str()) data-labels=(status_labels(lang))
            data-copy=(lang.pick("Copy", "复制")) data-copied=(lang.pick("Copied", "已复制"))
            aria-labelledby="status-heading" {
            h2 #status-heading { (lang.pick("Status", "状态")) }
            p.status #status role="status" aria-live="polite" { (status_label(lang, status)) }
            p.conn #conn hidden { (lang.pick("Connection lost; reconnecting…", "连接中断，正在重新连接…")) }
            (steps(lang, status))
            @if status == OrderStatus::AwaitingPayment {
                (countdown(lang, created.expires_at_ms, shown.now_ms))
                (payment_qr(lang, &created.payment_channel, &created.payment_url))
            }
            @if status == OrderStatus::AwaitingPayment && is_web_url(&created.payment_url) {
                p #pay {
                    a.button href=(created.payment_url) target="_blank" rel="noopener noreferrer" {
                        (lang.pick("Pay now", "立即付款"))
                    }
                    " " span.help { (lang.pick("Opens the payment page; this page updates by itself.",
                                               "将打开付款页面；本页会自动更新。")) }
                }
            }
            h2 { (lang.pick("Your keys", "您的卡密")) }
            ul.keys #keys aria-live="polite" {
                @for key in keys { (key_item(lang, key)) }
            }
            @if keys.is_empty() {
                p.help #keys-empty { (lang.pick("Keys appear here as soon as the payment is confirmed.",
                                                "付款确认后，卡密会立即显示在这里。")) }
            }
            @if !shown.usage_note.is_empty() {
                section.usage #usage-note hidden[keys.is_empty()] aria-labelledby="usage-h" {
                    h3 #usage-h { (lang.pick("How to use your keys", "使用说明")) }
                    @for line in shown.usage_note.lines() {
                        @if !line.trim().is_empty() { p { (line) } }
                    }
                }
            }
        }
    }
}

/// The QR code a buyer scans with WeChat or Alipay, drawn here, for the payments that are
/// scanned (WeChat Pay Native, Alipay precreate); nothing for the others.
fn payment_qr(lang: Lang, channel: &str, url: &str) -> Markup {
    if !super::qr::is_scanned(channel, url) {
        return html! {};
    }
    let (label, caption) = if channel == "wechat" {
        (
            lang.pick("WeChat Pay QR code", "微信支付二维码"),
            lang.pick("Scan with WeChat to pay.", "请使用微信扫码付款。"),
        )
    } else {
        (
            lang.pick("Alipay QR code", "支付宝二维码"),
            lang.pick("Scan with Alipay to pay.", "请使用支付宝扫码付款。"),
        )
    };
    match super::qr::svg(url, label) {
        Some(code) => html! {
            figure #pay-qr data-channel=(channel) {
                (code)
                figcaption.help { (caption) }
            }
        },
        None => html! {},
    }
}

/// Whether a gateway's payment URL is a web address: escaping keeps it inside the attribute,
/// this keeps a `javascript:` URL from a misbehaving gateway out of the link.
fn is_web_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

fn steps(lang: Lang, status: OrderStatus) -> Markup {
    let reached = match status {
        OrderStatus::AwaitingPayment => 0,
        OrderStatus::Paid | OrderStatus::ManualReview => 1,
        OrderStatus::Delivered => 2,
        _ => 0,
    };
    let names = [
        (
            "awaiting_payment",
            lang.pick("Waiting for payment", "等待付款"),
        ),
        ("paid", lang.pick("Paid", "已付款")),
        ("delivered", lang.pick("Delivered", "已发货")),
    ];
    html! {
        ol.steps #steps {
            @for (index, (key, label)) in names.iter().enumerate() {
                li data-step=(key) .done[index <= reached]
                    aria-current=[(index == reached).then_some("step")] { (label) }
            }
        }
    }
}

/// One key with its copy button; the script builds the same markup for keys that arrive live.
fn key_item(lang: Lang, key: &str) -> Markup {
    html! {
        li {
            code.key { (key) }
            button.copy type="button" data-copy-text=(key) { (lang.pick("Copy", "复制")) }
        }
    }
}

#[derive(Deserialize)]
struct LookupQuery {
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    token: String,
}

/// `GET /lookup`: the forms, or, with both fields, the way to the order page.
async fn lookup(request: HttpRequest, query: web::Query<LookupQuery>) -> HttpResponse {
    let (order_id, token) = (query.order_id.trim(), query.token.trim());
    if !order_id.is_empty() && !token.is_empty() {
        return see_other(&order_path(order_id, token));
    }
    lookup_page(&request, order_id, token, None, StatusCode::OK)
}

/// What a lookup by contact found, to show under the forms.
enum Found {
    /// Each order with the token that opens it.
    Orders(Vec<(std::sync::Arc<OrderRecord>, String)>),
    Refused(String),
}

fn lookup_page(
    request: &HttpRequest,
    order_id: &str,
    token: &str,
    found: Option<(&str, Found)>,
    status: StatusCode,
) -> HttpResponse {
    let lang = Lang::of(request);
    let contact = found.as_ref().map_or("", |(contact, _)| *contact);
    let main = html! {
        h1 { (lang.pick("Find my order", "查询订单")) }
        section aria-labelledby="by-contact-h" {
            h2 #by-contact-h { (lang.pick("With your contact and lookup password", "凭联系方式和查询密码")) }
            p.help { (lang.pick("The contact and the lookup password you gave when buying.",
                                "购买时填写的联系方式和查询密码。")) }
            form.lookup method="post" action="/lookup" {
                label for="contact" { (lang.pick("Contact (e-mail or phone)", "联系方式（邮箱或手机）")) }
                input #contact type="text" name="contact" required maxlength=(CONTACT_LEN_MAX)
                    autocomplete="email" value=(contact);
                label for="lookup_password" { (lang.pick("Lookup password", "查询密码")) }
                input #lookup_password type="password" name="lookup_password" required
                    maxlength="64" autocomplete="current-password";
                button type="submit" { (lang.pick("Find my orders", "查找订单")) }
            }
            @if let Some((_, found)) = &found { (found_orders(lang, found)) }
        }
        section aria-labelledby="by-token-h" {
            h2 #by-token-h { (lang.pick("With the order number and access code", "凭订单号和访问码")) }
            p.help { (lang.pick("Both are in your order link (the access code is the part after token=).",
                                "两者都在订单链接中（访问码是 token= 后面的部分）。")) }
            form.lookup method="get" action="/lookup" {
                label for="order_id" { (lang.pick("Order number", "订单号")) }
                input #order_id type="text" name="order_id" required maxlength="32"
                    autocomplete="off" value=(order_id);
                label for="token" { (lang.pick("Access code", "访问码")) }
                input #token type="text" name="token" required maxlength="64"
                    autocomplete="off" value=(token);
                button type="submit" { (lang.pick("Show my order", "查看订单")) }
            }
        }
    };
    let title = lang.pick("Find my order", "查询订单");
    respond(status, document(&Frame::new(request, lang, title), main))
}

fn found_orders(lang: Lang, found: &Found) -> Markup {
    match found {
        Found::Refused(text) => html! { p.error role="alert" { (text) } },
        Found::Orders(orders) if orders.is_empty() => html! {
            p.error #found-none role="alert" { (lang.pick(
                "No order matches that contact and password.",
                "没有与该联系方式和密码匹配的订单。")) }
        },
        Found::Orders(orders) => html! {
            ul.found #found role="status" {
                @for (record, token) in orders {
                    li {
                        a href=(order_path(record.created.order_id.as_str(), token)) {
                            code { (record.created.order_id.as_str()) }
                        }
                        " · " (record.created.sku.as_str()) " × " (record.created.quantity)
                        " · " (status_label(lang, record.status))
                    }
                }
            }
        },
    }
}

#[derive(Deserialize, Default)]
struct ContactLookupForm {
    #[serde(default)]
    contact: String,
    #[serde(default)]
    lookup_password: String,
}

/// `POST /lookup`: the orders of that contact whose lookup password this is, rate-limited.
async fn lookup_by_contact(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let lang = Lang::of(&request);
    let form: ContactLookupForm =
        match read_body(payload, BUY_FORM_BYTES_MAX, payload_too_large).await {
            Ok(body) => serde_urlencoded::from_bytes(&body).unwrap_or_default(),
            Err(_) => ContactLookupForm::default(),
        };
    let contact = form.contact.trim();
    let client = request.peer_addr().map(|a| a.ip());
    if let Err(error) = state.limits.contact_lookup.check(client, contact) {
        let text = lang
            .pick(
                "Too many tries; wait a minute and try again.",
                "尝试次数过多，请一分钟后再试。",
            )
            .to_owned();
        return lookup_page(
            &request,
            "",
            "",
            Some((contact, Found::Refused(text))),
            error.status,
        );
    }
    let found = match state
        .shop
        .find_orders_by_contact(contact, &form.lookup_password)
        .await
    {
        Ok(orders) => Found::Orders(
            orders
                .into_iter()
                .map(|record| {
                    let token = state.shop.buyer_token(&record);
                    (record, token)
                })
                .collect(),
        ),
        Err(error) => Found::Refused(refusal_text(lang, &ApiError::from(error))),
    };
    lookup_page(&request, "", "", Some((contact, found)), StatusCode::OK)
}

/// `GET /terms`: the shop's terms of sale as its operator wrote them.
async fn terms(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = Lang::of(&request);
    let identity = state.shop.storefront().identity();
    if identity.terms.is_empty() {
        return not_found(&request);
    }
    let title = lang.pick("Terms of sale", "购买须知");
    let main = html! {
        h1 { (title) }
        div #terms { @for line in identity.terms.lines() {
            @if !line.trim().is_empty() { p { (line) } }
        } }
    };
    respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    )
}
