//! The operator pages under `/admin`: sign-in with the operator token, the dashboard
//! (orders, open alerts, payment channel health, the status page's incident note), products
//! and key imports, an order's trace, and the manual-review and manual-payment queues.
//!
//! Invariants: every page but the sign-in form refuses without a session (401); every form
//! carries its session's CSRF token and a POST without it changes nothing (403); the
//! sign-in form itself is protected by a double-submit cookie. Actions call the same `Shop`
//! methods as the operator API and land in the same durable audit trail.

use std::time::Instant;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use engine::money::{format_cents, parse_decimal_cents};
use engine::payment::signatures_equal;
use engine::time::format_rfc3339_ms;
use engine::{OrderId, OrderRecord, OrderStatus, Sku};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;
use crate::pages::i18n::Lang;
use crate::pages::session::{
    random_hex128, sessions, OperatorSession, SESSION_COOKIE, SESSION_LIFETIME, SIGN_IN_CSRF_COOKIE,
};
use crate::pages::{cookie, document, is_secure, respond, see_other, url_encode, Frame};
use crate::AppState;

/// Largest operator form body other than an import.
pub const FORM_BYTES_MAX: usize = 16 * 1024;
/// Largest import form body: the keys travel form-encoded in a textarea.
pub const IMPORT_FORM_BYTES_MAX: usize = engine::import::IMPORT_BODY_BYTES_MAX;
/// Orders the dashboard lists, newest first.
pub const DASHBOARD_ORDERS_MAX: usize = 30;
/// Orders each queue lists.
pub const QUEUE_ORDERS_MAX: usize = 200;
/// Longest operator note on a confirmation or refund.
pub const NOTE_BYTES_MAX: usize = 200;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/admin", web::get().to(dashboard))
        .route("/admin/sign-in", web::post().to(sign_in))
        .route("/admin/sign-out", web::post().to(sign_out))
        .route("/admin/products", web::get().to(products))
        .route("/admin/products", web::post().to(create_product))
        .route("/admin/import", web::post().to(import))
        .route("/admin/queues", web::get().to(queues))
        .route("/admin/order", web::get().to(find_order))
        .route("/admin/orders/{order_id}", web::get().to(order_trace))
        .route("/admin/orders/{order_id}/confirm", web::post().to(confirm))
        .route("/admin/orders/{order_id}/refund", web::post().to(refund))
        .route("/admin/incident", web::post().to(incident));
}

/// The operators' navigation, with the sign-out form.
pub fn nav(lang: Lang, session: &OperatorSession) -> Markup {
    html! {
        a href="/admin" { (lang.pick("Dashboard", "概览")) }
        a href="/admin/products" { (lang.pick("Products", "商品")) }
        a href="/admin/queues" { (lang.pick("Queues", "待处理")) }
        form.inline method="post" action="/admin/sign-out" {
            (csrf_field(session))
            button.link type="submit" { (lang.pick("Sign out", "退出")) }
        }
    }
}

fn csrf_field(session: &OperatorSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The session the request's cookie names, if it is live.
fn operator(request: &HttpRequest) -> Option<OperatorSession> {
    let id = cookie(request, SESSION_COOKIE)?;
    sessions().get(&id, Instant::now())
}

fn admin_page(
    request: &HttpRequest,
    session: &OperatorSession,
    title: &str,
    status: StatusCode,
    main: Markup,
) -> HttpResponse {
    let lang = Lang::of(request);
    let mut frame = Frame::new(request, lang, title);
    frame.admin_nav = Some(session);
    respond(status, document(&frame, main))
}

/// The answer to an operator page without a session.
fn refuse(request: &HttpRequest) -> HttpResponse {
    let lang = Lang::of(request);
    let title = lang.pick("Sign-in required", "需要登录");
    let main = html! {
        h1 { (title) }
        p { a href="/admin" { (lang.pick("Sign in with the operator token", "使用运营令牌登录")) } }
    };
    respond(
        StatusCode::UNAUTHORIZED,
        document(&Frame::new(request, lang, title), main),
    )
}

fn forbidden(request: &HttpRequest) -> HttpResponse {
    let lang = Lang::of(request);
    let title = lang.pick("Form expired", "表单已失效");
    let main = html! {
        h1 { (title) }
        p { (lang.pick("The form's security token is missing or stale; nothing was changed. \
                        Go back, reload the page and try again.",
                       "表单安全令牌缺失或已过期，未做任何更改。请返回并刷新页面后重试。")) }
        p { a href="/admin" { (lang.pick("Dashboard", "概览")) } }
    };
    respond(
        StatusCode::FORBIDDEN,
        document(&Frame::new(request, lang, title), main),
    )
}

/// Reads a form posted by a signed-in operator, checking the session and the CSRF token
/// before anything is parsed or done.
async fn signed_form<T: DeserializeOwned>(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<(OperatorSession, T), HttpResponse> {
    let Some(session) = operator(request) else {
        return Err(refuse(request));
    };
    let body = crate::read_body(payload, limit, crate::payload_too_large)
        .await
        .map_err(|e| actix_web::ResponseError::error_response(&e))?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    if !session.csrf_matches(csrf) {
        return Err(forbidden(request));
    }
    let form = serde_urlencoded::from_bytes(&body).map_err(|e| {
        message(
            request,
            &session,
            StatusCode::BAD_REQUEST,
            "Bad form",
            &e.to_string(),
        )
    })?;
    Ok((session, form))
}

/// A result or error page for a signed-in operator.
fn message(
    request: &HttpRequest,
    session: &OperatorSession,
    status: StatusCode,
    title: &str,
    text: &str,
) -> HttpResponse {
    let main = html! { h1 { (title) } p.result { (text) } };
    admin_page(request, session, title, status, main)
}

fn sign_in_page(request: &HttpRequest, error: bool) -> HttpResponse {
    let lang = Lang::of(request);
    let csrf = random_hex128();
    let title = lang.pick("Operator sign-in", "运营登录");
    let main = html! {
        h1 { (title) }
        @if error { p.error role="alert" { (lang.pick("That token is not the operator token.", "令牌不正确。")) } }
        form.stack method="post" action="/admin/sign-in" {
            input type="hidden" name="csrf" value=(csrf);
            label for="token" { (lang.pick("Operator token", "运营令牌")) }
            input #token type="password" name="token" required autocomplete="current-password";
            button type="submit" { (lang.pick("Sign in", "登录")) }
        }
    };
    let status = if error {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = respond(status, document(&Frame::new(request, lang, title), main));
    let cookie = session_cookie(request, SIGN_IN_CSRF_COOKIE, &csrf, 3600);
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// An `HttpOnly`, `SameSite=Strict` cookie for `/admin` only.
fn session_cookie(request: &HttpRequest, name: &str, value: &str, max_age_secs: u64) -> String {
    let secure = if is_secure(request) { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path=/admin; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    )
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn sign_in(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Ok(body) = crate::read_body(payload, FORM_BYTES_MAX, crate::payload_too_large).await else {
        return sign_in_page(&request, true);
    };
    let form: SignInForm = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(_) => return sign_in_page(&request, true),
    };
    let expected_csrf = cookie(&request, SIGN_IN_CSRF_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || !signatures_equal(&expected_csrf, &form.csrf) {
        return forbidden(&request);
    }
    if let Err(error) = crate::routes::operator_token_ok(&request, &state, form.token.trim()) {
        let mut page = sign_in_page(&request, true);
        *page.status_mut() = error.status;
        return page;
    }
    let session = sessions().create(Instant::now());
    tracing::info!(peer = ?request.peer_addr(), "operator signed in");
    let mut response = see_other("/admin");
    for cookie in [
        session_cookie(
            &request,
            SESSION_COOKIE,
            &session.id,
            SESSION_LIFETIME.as_secs(),
        ),
        session_cookie(&request, SIGN_IN_CSRF_COOKIE, "", 0),
    ] {
        if let Ok(value) = header::HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
struct Empty {}

async fn sign_out(request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let (session, Empty {}) = match signed_form(&request, payload, FORM_BYTES_MAX).await {
        Ok(signed) => signed,
        Err(refusal) => return refusal,
    };
    sessions().remove(&session.id);
    let mut response = see_other("/admin");
    if let Ok(value) =
        header::HeaderValue::from_str(&session_cookie(&request, SESSION_COOKIE, "", 0))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn money(record: &OrderRecord) -> String {
    format!(
        "{} {}",
        format_cents(record.created.amount_cents),
        record.created.currency.as_str()
    )
}

fn order_link(order_id: &str) -> Markup {
    html! { a href=(format!("/admin/orders/{}", url_encode(order_id))) { code { (order_id) } } }
}

/// A table of orders, each row ending with `actions`.
fn orders_table(
    lang: Lang,
    records: &[OrderRecord],
    actions: impl Fn(&OrderRecord) -> Markup,
) -> Markup {
    html! {
        div.scroll { table {
            thead { tr {
                th scope="col" { (lang.pick("Order", "订单")) }
                th scope="col" { (lang.pick("Status", "状态")) }
                th scope="col" { (lang.pick("Product", "商品")) }
                th scope="col" { (lang.pick("Amount", "金额")) }
                th scope="col" { (lang.pick("Created", "创建时间")) }
                th scope="col" { (lang.pick("Action", "操作")) }
            } }
            tbody {
                @for record in records {
                    tr {
                        td { (order_link(record.created.order_id.as_str())) }
                        td { span.tag { (record.status.as_str()) } }
                        td { (record.created.sku.as_str()) " × " (record.created.quantity) }
                        td { (money(record)) }
                        td { (format_rfc3339_ms(record.created.created_at_ms)) }
                        td { (actions(record)) }
                    }
                }
            }
        } }
    }
}

async fn dashboard(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return sign_in_page(&request, false);
    };
    let lang = Lang::of(&request);
    let (recent, counts) = recent_orders(&state);
    let unpayable = payments_missing(lang, &state).await;
    let main = html! {
        h1 { (lang.pick("Dashboard", "概览")) }
        (unpayable)
        (status_counts(lang, &counts))
        (alerts_section(lang, &state))
        (channels_section(lang, &state).await)
        (incident_section(lang, &state, &session))
        section aria-labelledby="orders-h" {
            h2 #orders-h { (lang.pick("Latest orders", "最新订单")) }
            form.inline-form method="get" action="/admin/order" {
                label for="find" { (lang.pick("Order id", "订单号")) }
                input #find type="text" name="order_id" required maxlength="32";
                button type="submit" { (lang.pick("Show trace", "查看追踪")) }
            }
            (orders_table(lang, &recent, |_| html! {}))
        }
    };
    admin_page(
        &request,
        &session,
        lang.pick("Dashboard", "概览"),
        StatusCode::OK,
        main,
    )
}

/// The newest orders and the count of orders per status.
/// Tells the operator when buyers cannot pay at all (no payment channel configured), which
/// buyers only see as "temporarily unavailable".
async fn payments_missing(lang: Lang, state: &AppState) -> Markup {
    if !crate::pages::shop::payment_methods(state).await.is_empty() {
        return html! {};
    }
    html! {
        p.error #payments-missing role="alert" { (lang.pick(
            "Payments are not set up: buyers see every product as temporarily unavailable. \
             Configure a payment channel ([alipay], [wechat], [epay], [epusdt] or [stripe]; \
             see panshi.example.toml) and restart.",
            "尚未配置支付：买家看到所有商品都暂时无法购买。请配置支付渠道（[alipay]、[wechat]、\
             [epay]、[epusdt] 或 [stripe]，见 panshi.example.toml）后重启。")) }
    }
}

fn recent_orders(state: &AppState) -> (Vec<OrderRecord>, Vec<(OrderStatus, usize)>) {
    let shop_state = state.shop.store().state();
    let orders = shop_state.orders();
    let recent = orders
        .iter()
        .rev()
        .take(DASHBOARD_ORDERS_MAX)
        .cloned()
        .collect();
    let counts = OrderStatus::ALL
        .iter()
        .map(|s| (*s, orders.iter().filter(|r| r.status == *s).count()))
        .collect();
    (recent, counts)
}

fn status_counts(lang: Lang, counts: &[(OrderStatus, usize)]) -> Markup {
    html! {
        section aria-labelledby="counts-h" {
            h2 #counts-h { (lang.pick("Orders by status", "订单状态")) }
            ul.counts { @for (status, count) in counts {
                li { span.count { (count) } " " (status.as_str()) }
            } }
        }
    }
}

fn alerts_section(lang: Lang, state: &AppState) -> Markup {
    let alerts = state.observatory.alerts_json();
    let active = alerts["active"].as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    html! {
        section aria-labelledby="alerts-h" {
            h2 #alerts-h { (lang.pick("Open alerts", "未解决告警")) }
            @if active.is_empty() { p.ok { (lang.pick("None.", "无。")) } }
            ul.alerts { @for alert in &active {
                li.alert {
                    strong { (text(&alert["rule"])) } " " (text(&alert["subject"])) ": "
                    (text(&alert["message"])) " " small { "(" (text(&alert["since"])) ")" }
                }
            } }
        }
    }
}

async fn channels_section(lang: Lang, state: &AppState) -> Markup {
    let channels = state.shop.channel_health().await;
    let components = crate::observe::components(
        state.shop.is_ready(),
        state.epay.is_some(),
        &state.observatory.active(),
    );
    html! {
        section aria-labelledby="channels-h" {
            h2 #channels-h { (lang.pick("Payment channels", "支付通道")) }
            ul { @for (name, level) in &components {
                li { (name) ": " span class=(level.as_str()) { (level.as_str()) } }
            } }
            @if !channels.is_empty() {
                div.scroll { table {
                    thead { tr { th scope="col" { "Channel" } th scope="col" { "Breaker" }
                                 th scope="col" { "Success %" } th scope="col" { "Calls" }
                                 th scope="col" { "Failures" } } }
                    tbody { @for c in &channels { tr {
                        td { (c.name) } td { (c.breaker) } td { (c.success_percent) }
                        td { (c.calls) } td { (c.failures) }
                    } } }
                } }
            }
        }
    }
}

fn incident_section(lang: Lang, state: &AppState, session: &OperatorSession) -> Markup {
    let note = state
        .observatory
        .incident()
        .map(|i| i.note)
        .unwrap_or_default();
    html! {
        section aria-labelledby="incident-h" {
            h2 #incident-h { (lang.pick("Incident note on /status", "状态页公告")) }
            form.stack method="post" action="/admin/incident" {
                (csrf_field(session))
                label for="note" { (lang.pick("Note (empty clears it)", "公告内容（留空即清除）")) }
                textarea #note name="note" rows="3"
                    maxlength=(crate::observe::INCIDENT_NOTE_BYTES_MAX) { (note) }
                button type="submit" { (lang.pick("Publish", "发布")) }
            }
        }
    }
}

#[derive(Deserialize)]
struct NoteForm {
    #[serde(default)]
    note: String,
}

async fn incident(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, NoteForm) = match signed_form(&request, payload, FORM_BYTES_MAX).await
    {
        Ok(signed) => signed,
        Err(refusal) => return refusal,
    };
    match state
        .observatory
        .set_incident(&form.note, state.shop.now_ms())
    {
        Ok(()) => see_other("/admin"),
        Err(text) => message(
            &request,
            &session,
            StatusCode::BAD_REQUEST,
            "Incident note",
            text,
        ),
    }
}

async fn products(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let mut products = state.shop.products();
    products.sort_by(|a, b| a.0.sku.cmp(&b.0.sku));
    let unpayable = payments_missing(lang, &state).await;
    let main = html! {
        h1 { (lang.pick("Products", "商品")) }
        (unpayable)
        div.scroll { table {
            thead { tr {
                th scope="col" { "SKU" } th scope="col" { (lang.pick("Name", "名称")) }
                th scope="col" { (lang.pick("Price", "价格")) }
                th scope="col" { (lang.pick("Available", "可售")) }
                th scope="col" { (lang.pick("Reserved", "预留")) }
                th scope="col" { (lang.pick("Sold", "已售")) }
            } }
            tbody { @for (product, stock) in &products { tr {
                td { code { (product.sku.as_str()) } } td { (product.name) }
                td { (format_cents(product.price_cents)) " " (product.currency.as_str()) }
                td { (stock.available) } td { (stock.reserved) } td { (stock.sold) }
            } } }
        } }
        (import_form(lang, &session, &products))
        (product_form(lang, &session, state.shop.settings().currency.as_str()))
    };
    admin_page(
        &request,
        &session,
        lang.pick("Products", "商品"),
        StatusCode::OK,
        main,
    )
}

fn import_form(
    lang: Lang,
    session: &OperatorSession,
    products: &[(engine::Product, engine::Stock)],
) -> Markup {
    html! {
        section aria-labelledby="import-h" {
            h2 #import-h { (lang.pick("Import keys", "导入卡密")) }
            form.stack method="post" action="/admin/import" {
                (csrf_field(session))
                label for="import-sku" { (lang.pick("Product", "商品")) }
                select #import-sku name="sku" required {
                    @for (product, _) in products {
                        option value=(product.sku.as_str()) { (product.sku.as_str()) " — " (product.name) }
                    }
                }
                label for="keys" { (lang.pick("Keys, one per line", "卡密，每行一个")) }
                textarea #keys name="keys" rows="8" required spellcheck="false" {}
                button type="submit" { (lang.pick("Import", "导入")) }
            }
        }
    }
}

fn product_form(lang: Lang, session: &OperatorSession, currency: &str) -> Markup {
    html! {
        section aria-labelledby="new-h" {
            h2 #new-h { (lang.pick("New product", "新建商品")) }
            form.stack method="post" action="/admin/products" {
                (csrf_field(session))
                label for="new-sku" { "SKU" }
                input #new-sku type="text" name="sku" required maxlength="64";
                label for="new-name" { (lang.pick("Name", "名称")) }
                input #new-name type="text" name="name" required maxlength="200";
                label for="new-price" { (lang.pick("Price (e.g. 12.50)", "价格（如 12.50）")) }
                input #new-price type="text" name="price" required inputmode="decimal";
                label for="new-currency" { (lang.pick("Currency", "币种")) }
                input #new-currency type="text" name="currency" required maxlength="3" value=(currency);
                button type="submit" { (lang.pick("Create", "创建")) }
            }
        }
    }
}

#[derive(Deserialize)]
struct ProductForm {
    sku: String,
    name: String,
    price: String,
    currency: String,
}

async fn create_product(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, ProductForm) =
        match signed_form(&request, payload, FORM_BYTES_MAX).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let body = crate::wire::ProductBody {
        sku: form.sku.trim().to_owned(),
        name: form.name.trim().to_owned(),
        price_cents: parse_decimal_cents(form.price.trim()).unwrap_or(0),
        currency: form.currency.trim().to_owned(),
    };
    let created = match body.into_product(state.shop.now_ms()) {
        Ok(product) => state
            .shop
            .create_product(product)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    match created {
        Ok(()) => see_other("/admin/products"),
        Err(error) => message(
            &request,
            &session,
            error.status,
            "Product not created",
            &error.message,
        ),
    }
}

#[derive(Deserialize)]
struct ImportForm {
    sku: String,
    keys: String,
}

async fn import(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, ImportForm) =
        match signed_form(&request, payload, IMPORT_FORM_BYTES_MAX).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let lang = Lang::of(&request);
    let outcome = match Sku::parse(form.sku.trim()) {
        Ok(sku) => state
            .shop
            .import_cards(sku, form.keys.into_bytes())
            .await
            .map_err(ApiError::from),
        Err(rejection) => Err(ApiError::from(rejection)),
    };
    let title = lang.pick("Import result", "导入结果");
    let (status, imported, duplicates, rejected) = match &outcome {
        Ok(o) => (StatusCode::OK, o.imported, o.duplicates, None),
        Err(e) => (e.status, 0, 0, Some(e.message.as_str())),
    };
    let main = html! {
        h1 { (title) }
        dl.facts #import-result {
            dt { (lang.pick("Product", "商品")) } dd { code { (form.sku) } }
            dt { (lang.pick("Imported", "已导入")) } dd #imported { (imported) }
            dt { (lang.pick("Duplicates skipped", "重复跳过")) } dd #duplicates { (duplicates) }
            dt { (lang.pick("Rejected", "被拒")) }
            dd #rejected { @match rejected {
                None => "0",
                Some(reason) => { (lang.pick("the whole upload, nothing imported: ", "整批被拒，未导入：")) (reason) },
            } }
        }
        p { a href="/admin/products" { (lang.pick("Back to products", "返回商品")) } }
    };
    admin_page(&request, &session, title, status, main)
}

/// Orders waiting for an operator: paid but in review, and unpaid in the manual queue.
fn queue_orders(state: &AppState) -> (Vec<OrderRecord>, Vec<OrderRecord>) {
    let shop_state = state.shop.store().state();
    let pick = |wanted: fn(&OrderRecord) -> bool| -> Vec<OrderRecord> {
        shop_state
            .orders()
            .iter()
            .filter(|r| wanted(r))
            .take(QUEUE_ORDERS_MAX)
            .cloned()
            .collect()
    };
    let review = pick(|r| r.status == OrderStatus::ManualReview);
    let manual = pick(|r| {
        r.status == OrderStatus::AwaitingPayment
            && r.created.payment_channel == actors::payment::MANUAL_CHANNEL
    });
    (review, manual)
}

fn action_form(
    lang: Lang,
    session: &OperatorSession,
    record: &OrderRecord,
    action: &str,
) -> Markup {
    let id = record.created.order_id.as_str();
    let (label, placeholder) = match action {
        "confirm" => (
            lang.pick("Confirm payment", "确认收款"),
            lang.pick("Bank or receipt reference", "收款凭证号"),
        ),
        _ => (
            lang.pick("Refund", "退款"),
            lang.pick("Why, and where the money went", "退款原因及去向"),
        ),
    };
    let field = format!("note-{action}-{id}");
    html! {
        form.action method="post" action=(format!("/admin/orders/{}/{action}", url_encode(id))) {
            (csrf_field(session))
            label.visually-hidden for=(field) { (label) " — " (lang.pick("note", "备注")) }
            input id=(field) type="text" name="note" required maxlength=(NOTE_BYTES_MAX)
                placeholder=(placeholder);
            button type="submit" { (label) }
        }
    }
}

async fn queues(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let (review, manual) = queue_orders(&state);
    let main = html! {
        h1 { (lang.pick("Queues", "待处理")) }
        section aria-labelledby="manual-h" {
            h2 #manual-h { (lang.pick("Manual payment queue", "人工收款队列")) }
            p.help { (lang.pick("Every channel was down when these were made; confirm once the money is in.",
                                "下单时所有支付通道都不可用；确认收到款项后再确认收款。")) }
            @if manual.is_empty() { p { (lang.pick("Empty.", "无。")) } }
            @else { (orders_table(lang, &manual, |r| action_form(lang, &session, r, "confirm"))) }
        }
        section aria-labelledby="review-h" {
            h2 #review-h { (lang.pick("Manual review", "人工审核")) }
            p.help { (lang.pick("Paid orders that could not be delivered; refund at the gateway, then here.",
                                "已付款但无法发货的订单；先在支付平台退款，再在此登记。")) }
            @if review.is_empty() { p { (lang.pick("Empty.", "无。")) } }
            @else { (orders_table(lang, &review, |r| action_form(lang, &session, r, "refund"))) }
        }
    };
    admin_page(
        &request,
        &session,
        lang.pick("Queues", "待处理"),
        StatusCode::OK,
        main,
    )
}

#[derive(Deserialize)]
struct FindQuery {
    #[serde(default)]
    order_id: String,
}

async fn find_order(request: HttpRequest, query: web::Query<FindQuery>) -> HttpResponse {
    if operator(&request).is_none() {
        return refuse(&request);
    }
    see_other(&format!(
        "/admin/orders/{}",
        url_encode(query.order_id.trim())
    ))
}

async fn order_trace(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let found = OrderId::parse(&path).ok().and_then(|id| {
        let record = state.shop.store().order(&id).ok().flatten()?;
        let trace = state.shop.order_trace(&id).ok()?;
        Some((record, trace))
    });
    let Some((record, trace)) = found else {
        return message(
            &request,
            &session,
            StatusCode::NOT_FOUND,
            lang.pick("Unknown order", "订单不存在"),
            &path,
        );
    };
    let main = html! {
        h1 { (lang.pick("Order", "订单")) " " code { (record.created.order_id.as_str()) } }
        (order_facts(lang, &record, &trace.trace_id))
        h2 { (lang.pick("Trace", "追踪")) }
        div.scroll { table #trace {
            thead { tr { th scope="col" { "Stage" } th scope="col" { "At" } th scope="col" { "Duration (µs)" } } }
            tbody { @for stage in &trace.stages { tr {
                td { (stage.stage.as_str()) } td { (format_rfc3339_ms(stage.at_ms)) }
                td { @if let Some(us) = stage.duration_us { (us) } @else { "—" } }
            } } }
        } }
        @if record.status == OrderStatus::AwaitingPayment { (action_form(lang, &session, &record, "confirm")) }
        @if record.status == OrderStatus::ManualReview { (action_form(lang, &session, &record, "refund")) }
    };
    admin_page(
        &request,
        &session,
        lang.pick("Order", "订单"),
        StatusCode::OK,
        main,
    )
}

fn order_facts(lang: Lang, record: &OrderRecord, trace_id: &str) -> Markup {
    let created = &record.created;
    let time = |ms: Option<u64>| ms.map_or_else(|| "—".to_owned(), format_rfc3339_ms);
    html! {
        dl.facts {
            dt { (lang.pick("Status", "状态")) } dd #order-status { (record.status.as_str()) }
            dt { (lang.pick("Product", "商品")) } dd { (created.sku.as_str()) " × " (created.quantity) }
            dt { (lang.pick("Amount", "金额")) } dd { (money(record)) }
            dt { (lang.pick("Contact", "联系方式")) } dd { (created.contact) }
            dt { (lang.pick("Payment", "支付")) } dd { (created.channel) " → " (created.payment_channel) }
            dt { (lang.pick("Created", "创建")) } dd { (format_rfc3339_ms(created.created_at_ms)) }
            dt { (lang.pick("Expires", "过期")) } dd { (format_rfc3339_ms(created.expires_at_ms)) }
            dt { (lang.pick("Paid", "付款")) } dd { (time(record.paid_at_ms)) }
            dt { (lang.pick("Settled", "结束")) } dd { (time(record.settled_at_ms)) }
            @if let Some(reason) = record.review_reason {
                dt { (lang.pick("Review reason", "审核原因")) } dd { (reason.as_str()) }
            }
            dt { "Trace id" } dd { code { (trace_id) } }
        }
    }
}

/// A note on an operator action: 1 to `NOTE_BYTES_MAX` printable bytes.
fn valid_note(note: &str) -> Option<&str> {
    let note = note.trim();
    let valid =
        !note.is_empty() && note.len() <= NOTE_BYTES_MAX && !note.chars().any(char::is_control);
    valid.then_some(note)
}

/// Appends an operator action to the durable audit trail, as the operator API does.
async fn record_action(
    state: &AppState,
    request: &HttpRequest,
    action: &str,
    subject: &str,
    note: &str,
) -> Result<(), ApiError> {
    let ip = request
        .peer_addr()
        .map_or("unknown".into(), |a| a.ip().to_string());
    let entry = engine::OperatorAction {
        by: format!("operator@{ip} (pages)"),
        action: action.to_owned(),
        subject: subject.to_owned(),
        note: note.to_owned(),
        at_ms: state.shop.now_ms(),
    };
    tracing::warn!(audit = true, action, subject, note, by = %entry.by, "operator action");
    state.shop.record_operator_action(entry).await?;
    Ok(())
}

/// Confirms a payment received outside the gateways: applied exactly as a gateway's would be.
async fn apply_confirmation(state: &AppState, order_id: &OrderId) -> Result<(), ApiError> {
    let record = state
        .shop
        .store()
        .order(order_id)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("unknown order"))?;
    let payment = engine::Payment {
        channel: actors::payment::MANUAL_CHANNEL.into(),
        gateway_trade_no: format!("manual:{order_id}"),
        amount_cents: record.created.amount_cents,
    };
    state.shop.apply_payment(order_id, payment).await?;
    Ok(())
}

async fn operator_action(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    action: &'static str,
) -> HttpResponse {
    let (session, form): (_, NoteForm) = match signed_form(&request, payload, FORM_BYTES_MAX).await
    {
        Ok(signed) => signed,
        Err(refusal) => return refusal,
    };
    let lang = Lang::of(&request);
    let result = async {
        let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
        let note = valid_note(&form.note).ok_or_else(|| {
            ApiError::bad_request("bad_request", "note must be 1 to 200 printable bytes")
        })?;
        match action {
            "confirm_payment" => apply_confirmation(&state, &order_id).await?,
            _ => {
                state.shop.refund(&order_id).await?;
            }
        }
        record_action(&state, &request, action, order_id.as_str(), note).await?;
        let record = state.shop.store().order(&order_id).ok().flatten();
        Ok::<_, ApiError>(record.map_or("unknown", |r| r.status.as_str()))
    }
    .await;
    let title = lang.pick("Operator action", "运营操作");
    let main = match &result {
        Ok(status) => html! {
            h1 { (title) }
            p.result role="status" { (order_link(&path)) ": " span #result-status { (status) } }
            p { a href="/admin/queues" { (lang.pick("Back to the queues", "返回待处理")) } }
        },
        Err(error) => html! {
            h1 { (title) }
            p.error role="alert" { (error.message) }
            p { a href="/admin/queues" { (lang.pick("Back to the queues", "返回待处理")) } }
        },
    };
    let status = result
        .as_ref()
        .map_or_else(|e| e.status, |_| StatusCode::OK);
    admin_page(&request, &session, title, status, main)
}

async fn confirm(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    operator_action(request, path, payload, state, "confirm_payment").await
}

async fn refund(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    operator_action(request, path, payload, state, "refund").await
}
