//! The operator pages under `/admin`: sign-in with the operator token, the dashboard
//! (orders, revenue per day and per product, open alerts, payment channel health, the status
//! page's incident note), an order in full (keys, the buyer's link, trace), and the
//! manual-review and manual-payment queues. Products and keys (`products.rs`), the order
//! search (`orders.rs`), coupons and the shop's identity (`settings.rs`) have their own
//! modules. Statuses, channels and alerts are shown in words, times in local time.
//!
//! Invariants: every page but the sign-in form refuses without a session (401); every form
//! carries its session's CSRF token and a POST without it changes nothing (403); the
//! sign-in form itself is protected by a double-submit cookie. Actions call the same `Shop`
//! methods as the operator API and land in the same durable audit trail.

mod orders;
mod products;
mod settings;

use std::time::Instant;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use engine::money::format_cents;
use engine::payment::signatures_equal;
use engine::{OrderId, OrderRecord, OrderStatus};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;
use crate::pages::i18n::{alert_word, channel_word, local_time, status_word, Lang};
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
/// Days of revenue the dashboard shows.
pub const REVENUE_DAYS: u32 = 14;
/// Orders each queue lists.
pub const QUEUE_ORDERS_MAX: usize = 200;
/// Longest operator note on a confirmation or refund.
pub const NOTE_BYTES_MAX: usize = 200;

pub fn configure(config: &mut web::ServiceConfig) {
    // Fixed paths (`/admin/orders/export`) before the patterns they would match.
    orders::configure(config);
    products::configure(config);
    settings::configure(config);
    config
        .route("/admin", web::get().to(dashboard))
        .route("/admin/sign-in", web::post().to(sign_in))
        .route("/admin/sign-out", web::post().to(sign_out))
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
        a href="/admin/orders" { (lang.pick("Orders", "订单")) }
        a href="/admin/products" { (lang.pick("Products", "商品")) }
        a href="/admin/coupons" { (lang.pick("Coupons", "优惠码")) }
        a href="/admin/queues" { (lang.pick("Queues", "待处理")) }
        a href="/admin/shop" { (lang.pick("Shop settings", "店铺设置")) }
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
    if let Err(error) = crate::operator::operator_token_ok(&request, &state, form.token.trim()) {
        let mut page = sign_in_page(&request, true);
        *page.status_mut() = error.status;
        return page;
    }
    let session = sessions().create(Instant::now());
    tracing::info!(peer = ?crate::cluster::forward::client_ip(&request), "operator signed in");
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

/// Every product's SKU, for the filters and forms that pick one.
fn skus(state: &AppState) -> Vec<String> {
    let products = state.shop.products().list();
    products
        .into_iter()
        .map(|l| l.product.sku.as_str().to_owned())
        .collect()
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

/// A table of orders, each row ending with `actions`; times in the shop's time zone
/// (`offset_minutes`), then the reader's.
fn orders_table(
    lang: Lang,
    offset_minutes: i16,
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
                th scope="col" { (lang.pick("Contact", "联系方式")) }
                th scope="col" { (lang.pick("Payment", "支付方式")) }
                th scope="col" { (lang.pick("Created", "创建时间")) }
                th scope="col" { (lang.pick("Action", "操作")) }
            } }
            tbody {
                @for record in records {
                    tr {
                        td { (order_link(record.created.order_id.as_str())) }
                        td { span.tag data-status=(record.status.as_str()) { (status_word(lang, record.status)) } }
                        td { (record.created.sku.as_str()) " × " (record.created.quantity) }
                        td { (money(record)) }
                        td { (record.created.contact) }
                        td { (channel_word(lang, &record.created.payment_channel)) }
                        td { (local_time(record.created.created_at_ms, offset_minutes)) }
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
    let offset = crate::routes::manage::utc_offset(&state);
    let main = html! {
        h1 { (lang.pick("Dashboard", "概览")) }
        (unpayable)
        (status_counts(lang, &counts))
        (revenue_section(lang, &state, offset))
        (alerts_section(lang, &state))
        (channels_section(lang, &state).await)
        (incident_section(lang, &state, &session))
        section aria-labelledby="orders-h" {
            h2 #orders-h { (lang.pick("Latest orders", "最新订单")) }
            form.inline-form method="get" action="/admin/order" {
                label for="find" { (lang.pick("Order id", "订单号")) }
                input #find type="text" name="order_id" required maxlength="32";
                button type="submit" { (lang.pick("Show order", "查看订单")) }
            }
            p { a href="/admin/orders" { (lang.pick("Search all orders", "搜索全部订单")) } }
            (orders_table(lang, offset, &recent, |_| html! {}))
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
    let recent = shop_state
        .orders_before(u32::MAX, DASHBOARD_ORDERS_MAX)
        .into_iter()
        .map(|(_, record)| record.into_owned())
        .collect();
    let counts = shop_state
        .orders_by_status()
        .map(|(status, count)| (status, count as usize))
        .collect();
    (recent, counts)
}

fn status_counts(lang: Lang, counts: &[(OrderStatus, usize)]) -> Markup {
    html! {
        section aria-labelledby="counts-h" {
            h2 #counts-h { (lang.pick("Orders by status", "订单状态")) }
            ul.counts { @for (status, count) in counts {
                li { span.count { (count) } " " (status_word(lang, *status)) }
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
                // The message names its subject already (`game-1: 3 keys available`).
                li.alert {
                    strong { (alert_word(lang, &text(&alert["rule"]))) } ": "
                    (text(&alert["message"])) " " small {
                        "(" (lang.pick("since ", "始于 "))
                        time datetime=(text(&alert["since"])) data-local="" { (text(&alert["since"])) } ")"
                    }
                }
            } }
        }
    }
}

async fn channels_section(lang: Lang, state: &AppState) -> Markup {
    let channels = state.shop.channel_health().await;
    let components = crate::observe::components(
        state.is_ready(),
        state.epay.is_some(),
        &state.observatory.active(),
    );
    html! {
        section aria-labelledby="channels-h" {
            h2 #channels-h { (lang.pick("Payment channels", "支付通道")) }
            ul { @for (name, level) in &components {
                li { (name) ": " span class=(level.as_str()) { (crate::routes::pages::level_label(lang, *level)) } }
            } }
            @if !channels.is_empty() {
                div.scroll { table {
                    thead { tr { th scope="col" { (lang.pick("Channel", "通道")) }
                                 th scope="col" { (lang.pick("Circuit breaker", "熔断器")) }
                                 th scope="col" { (lang.pick("Success %", "成功率 %")) }
                                 th scope="col" { (lang.pick("Calls", "调用次数")) }
                                 th scope="col" { (lang.pick("Failures", "失败次数")) } } }
                    tbody { @for c in &channels { tr {
                        td { (channel_word(lang, &c.name)) } td { (breaker_word(lang, c.breaker)) }
                        td { (c.success_percent) } td { (c.calls) } td { (c.failures) }
                    } } }
                } }
            }
        }
    }
}

fn breaker_word(lang: Lang, breaker: &str) -> String {
    let word = match breaker {
        "closed" => lang.pick("Working", "正常"),
        "open" => lang.pick("Paused after failures", "故障暂停"),
        "half_open" => lang.pick("Testing again", "试探恢复中"),
        other => return other.to_owned(),
    };
    word.to_owned()
}

/// Revenue per day (the last `REVENUE_DAYS` days) and per product, in the shop's time zone.
fn revenue_section(lang: Lang, state: &AppState, offset_minutes: i16) -> Markup {
    let revenue =
        state
            .shop
            .order_book()
            .revenue(REVENUE_DAYS, state.shop.now_ms(), offset_minutes);
    let table = |id: &str, head: &str, lines: &[actors::order_book::RevenueLine]| {
        html! {
            div.scroll { table id=(id) {
                thead { tr {
                    th scope="col" { (head) } th scope="col" { (lang.pick("Orders", "订单数")) }
                    th scope="col" { (lang.pick("Revenue", "收入")) }
                } }
                tbody { @for line in lines { tr {
                    td { (line.key) } td { (line.orders_count) }
                    td { (format_cents(line.amount_cents)) " " (line.currency.as_str()) }
                } } }
            } }
        }
    };
    html! {
        section aria-labelledby="revenue-h" {
            h2 #revenue-h { (lang.pick("Revenue, last 14 days", "近 14 天收入")) }
            p.help { (lang.pick("Paid orders (refunds left out), by the day they were paid.",
                                "已付款订单（不含退款），按付款日期统计。")) }
            @if revenue.per_day.is_empty() { p { (lang.pick("No sales yet.", "暂无销售。")) } }
            @else {
                (table("revenue-days", lang.pick("Day", "日期"), &revenue.per_day))
                (table("revenue-products", lang.pick("Product", "商品"), &revenue.per_product))
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

/// Orders waiting for an operator: paid but in review, and unpaid in the manual queue.
fn queue_orders(state: &AppState) -> (Vec<OrderRecord>, Vec<OrderRecord>) {
    let shop_state = state.shop.store().state();
    // Orders in review or unpaid are never archived: all are in memory.
    let pick = |wanted: fn(&OrderRecord) -> bool| -> Vec<OrderRecord> {
        shop_state
            .hot_orders()
            .map(|(_, r)| r)
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
    let offset = crate::routes::manage::utc_offset(&state);
    let main = html! {
        h1 { (lang.pick("Queues", "待处理")) }
        section aria-labelledby="manual-h" {
            h2 #manual-h { (lang.pick("Manual payment queue", "人工收款队列")) }
            p.help { (lang.pick("Every channel was down when these were made; confirm once the money is in.",
                                "下单时所有支付通道都不可用；确认收到款项后再确认收款。")) }
            @if manual.is_empty() { p { (lang.pick("Empty.", "无。")) } }
            @else { (orders_table(lang, offset, &manual, |r| action_form(lang, &session, r, "confirm"))) }
        }
        section aria-labelledby="review-h" {
            h2 #review-h { (lang.pick("Manual review", "人工审核")) }
            p.help { (lang.pick("Paid orders that could not be delivered; refund at the gateway, then here.",
                                "已付款但无法发货的订单；先在支付平台退款，再在此登记。")) }
            @if review.is_empty() { p { (lang.pick("Empty.", "无。")) } }
            @else { (orders_table(lang, offset, &review, |r| action_form(lang, &session, r, "refund"))) }
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
        let view = state.shop.order_book().order(&id).ok().flatten()?;
        let trace = state.shop.order_trace(&id).ok()?;
        Some((view, trace))
    });
    let Some((
        actors::OrderView {
            record,
            keys,
            coupon,
        },
        trace,
    )) = found
    else {
        return message(
            &request,
            &session,
            StatusCode::NOT_FOUND,
            lang.pick("Unknown order", "订单不存在"),
            &path,
        );
    };
    let offset = crate::routes::manage::utc_offset(&state);
    let link = crate::routes::manage::buyer_link(&state, &record);
    let main = html! {
        h1 { (lang.pick("Order", "订单")) " " code { (record.created.order_id.as_str()) } }
        (order_facts(lang, offset, &record, coupon.as_ref(), &trace.trace_id))
        section aria-labelledby="buyer-h" {
            h2 #buyer-h { (lang.pick("The buyer's order page", "买家的订单页面")) }
            p.help { (lang.pick("Send this link to a buyer who lost theirs: it shows the order and its keys.",
                                "把此链接发给丢失链接的买家：可查看订单及卡密。")) }
            p { a #buyer-link href=(link) { (link) } " "
                button.copy type="button" data-copy-text=(link) { (lang.pick("Copy", "复制")) } }
        }
        section aria-labelledby="keys-h" {
            h2 #keys-h { (lang.pick("Delivered keys", "已发卡密")) }
            @if keys.is_empty() { p { (lang.pick("None delivered.", "尚未发货。")) } }
            ul.keys #order-keys { @for key in &keys { li { code.key { (key) } } } }
        }
        @if record.status == OrderStatus::AwaitingPayment {
            section aria-labelledby="confirm-h" {
                h2 #confirm-h { (lang.pick("Confirm a payment received by hand", "确认人工收款")) }
                p.help { (lang.pick("Only once the money is in: the keys are delivered at once.",
                                    "确认款项到账后再操作：卡密会立即发出。")) }
                (action_form(lang, &session, &record, "confirm"))
            }
        }
        @if record.status == OrderStatus::ManualReview {
            section aria-labelledby="refund-h" {
                h2 #refund-h { (lang.pick("Record a refund", "登记退款")) }
                p.help { (lang.pick("Refund at the gateway first, then record it here.",
                                    "请先在支付平台退款，再在此登记。")) }
                (action_form(lang, &session, &record, "refund"))
            }
        }
        h2 { (lang.pick("Trace", "追踪")) }
        div.scroll { table #trace {
            thead { tr { th scope="col" { (lang.pick("Stage", "阶段")) } th scope="col" { (lang.pick("At", "时间")) }
                         th scope="col" { (lang.pick("Duration (µs)", "耗时（微秒）")) } } }
            tbody { @for stage in &trace.stages { tr {
                td data-stage=(stage.stage.as_str()) { (crate::pages::i18n::stage_word(lang, stage.stage)) }
                td { (local_time(stage.at_ms, offset)) }
                td { @if let Some(us) = stage.duration_us { (us) } @else { "—" } }
            } } }
        } }
    };
    admin_page(
        &request,
        &session,
        lang.pick("Order", "订单"),
        StatusCode::OK,
        main,
    )
}

fn order_facts(
    lang: Lang,
    offset: i16,
    record: &OrderRecord,
    coupon: Option<&engine::coupon::CouponUse>,
    trace_id: &str,
) -> Markup {
    let created = &record.created;
    let time =
        |ms: Option<u64>| html! { @match ms { Some(ms) => (local_time(ms, offset)), None => "—" } };
    html! {
        dl.facts {
            dt { (lang.pick("Status", "状态")) }
            dd #order-status data-status=(record.status.as_str()) { (status_word(lang, record.status)) }
            dt { (lang.pick("Product", "商品")) } dd { (created.sku.as_str()) " × " (created.quantity) }
            dt { (lang.pick("Amount", "金额")) } dd { (money(record)) }
            @if let Some(coupon) = coupon {
                dt { (lang.pick("Coupon", "优惠码")) }
                dd { code { (coupon.code) } " −" (format_cents(coupon.discount_cents)) }
            }
            dt { (lang.pick("Contact", "联系方式")) } dd { (created.contact) }
            dt { (lang.pick("Payment", "支付")) }
            dd { (channel_word(lang, &created.channel)) " → " (channel_word(lang, &created.payment_channel)) }
            dt { (lang.pick("Created", "创建")) } dd { (local_time(created.created_at_ms, offset)) }
            dt { (lang.pick("Expires", "过期")) } dd { (local_time(created.expires_at_ms, offset)) }
            dt { (lang.pick("Paid", "付款")) } dd { (time(record.paid_at_ms)) }
            dt { (lang.pick("Settled", "结束")) } dd { (time(record.settled_at_ms)) }
            @if let Some(reason) = record.review_reason {
                dt { (lang.pick("Review reason", "审核原因")) } dd { (review_word(lang, reason)) }
            }
            dt { (lang.pick("Trace id", "追踪号")) } dd { code { (trace_id) } }
        }
    }
}

fn review_word(lang: Lang, reason: engine::ReviewReason) -> &'static str {
    match reason {
        engine::ReviewReason::SoldOutAfterLapse => lang.pick(
            "Paid after it expired, and the stock was gone",
            "过期后才付款，且库存已售完",
        ),
        engine::ReviewReason::ForeignChannel => lang.pick(
            "Paid through a channel the order was not made for",
            "付款渠道与订单所选渠道不符",
        ),
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
    let ip =
        crate::cluster::forward::client_ip(request).map_or("unknown".into(), |ip| ip.to_string());
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
        gateway_trade_no: format!("manual:{order_id}").into(),
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
        record
            .map(|r| r.status)
            .ok_or_else(|| ApiError::not_found("unknown order"))
    }
    .await;
    let title = lang.pick("Operator action", "运营操作");
    let main = match &result {
        Ok(status) => html! {
            h1 { (title) }
            p.result role="status" { (order_link(&path)) ": "
                span #result-status data-status=(status.as_str()) { (status_word(lang, *status)) } }
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
