//! The HTML routes: the storefront and the operator pages (in `crate::pages`), the public
//! status page, and the manual-payment page. Every value is escaped; no external assets.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::time::format_rfc3339_ms;
use maud::{html, PreEscaped, DOCTYPE};

use crate::observe::{self, Level};
use crate::pages::i18n::Lang;
use crate::pages::{assets, document, respond, Frame};
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    crate::pages::configure(config);
    config
        .route("/status", web::get().to(status))
        .route("/pay/manual/{order_id}", web::get().to(manual_payment));
}

/// Where a buyer lands when every payment channel of the method was down: the order is
/// held and an operator confirms the payment by hand. Only a real order in the manual
/// queue gets the page; any other text in the path is 404 (the page must never carry a
/// stranger's words inside the shop's payment instructions).
async fn manual_payment(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let lang = Lang::of(&request);
    let in_manual_queue =
        engine::OrderId::parse(&path).ok().is_some_and(|id| {
            state.shop.store().state().order(&id).is_some_and(|record| {
                record.created.payment_channel == actors::payment::MANUAL_CHANNEL
            })
        });
    if !in_manual_queue {
        let title = lang.pick("Unknown order", "订单不存在");
        let text = lang.pick(
            "There is no order waiting for payment by hand at this address.",
            "此地址没有等待人工付款的订单。",
        );
        return crate::pages::message_page(&request, StatusCode::NOT_FOUND, title, text);
    }
    let title = lang.pick("Payment by hand", "人工付款");
    let main = html! {
        h1 { (title) }
        p { (lang.pick("Our payment gateways are busy right now, so your order ",
                       "支付通道暂时繁忙，您的订单 "))
            code { (path.as_str()) }
            (lang.pick(" was put in the manual payment queue and its keys are held for you until \
                        it expires. The shop will contact you at the address you gave with payment \
                        details; once an operator confirms your payment, your keys appear on your \
                        order page at once.",
                       " 已进入人工收款队列，卡密会为您保留到订单过期。店家会通过您留下的联系方式\
                        告知付款方式；客服确认收款后，卡密会立即显示在订单页面。")) }
    };
    respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    )
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page around `body`, HTML its caller has already escaped (the demo gateway's).
pub fn page(title: &str, body: &str) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) }
                link rel="stylesheet" href=(assets::css_url());
                link rel="icon" type="image/svg+xml" href=(assets::icon_url());
            }
            body { main #main { (PreEscaped(body)) } }
        }
    };
    respond(StatusCode::OK, markup)
}

pub fn level_label(lang: Lang, level: Level) -> &'static str {
    match level {
        Level::Operational => lang.pick("Operational", "正常"),
        Level::Degraded => lang.pick("Degraded", "性能下降"),
        Level::Down => lang.pick("Down", "中断"),
    }
}

async fn status(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = Lang::of(&request);
    let components = observe::components(
        state.is_ready(),
        state.epay.is_some(),
        &state.observatory.active(),
    );
    let incident = state.observatory.incident();
    let title = lang.pick("Status", "服务状态");
    let main = html! {
        h1 { (title) }
        @if let Some(incident) = &incident {
            div.note role="note" {
                strong { (lang.pick("Notice", "公告")) } " (" (format_rfc3339_ms(incident.at_ms)) ")"
                p #incident { (incident.note) }
            }
        }
        div.scroll { table {
            thead { tr { th scope="col" { (lang.pick("Component", "组件")) }
                         th scope="col" { (lang.pick("State", "状态")) } } }
            tbody { @for (name, level) in &components { tr {
                td { (name) } td class=(level.as_str()) { (level_label(lang, *level)) }
            } } }
        } }
        p { (lang.pick("Updated ", "更新于 ")) (format_rfc3339_ms(state.shop.now_ms())) }
    };
    respond(
        StatusCode::OK,
        document(&Frame::new(&request, lang, title), main),
    )
}
