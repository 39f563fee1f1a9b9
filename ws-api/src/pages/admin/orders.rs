//! The operators' order search: filters (status, product, payment channel, days), search by
//! order id or contact, paging, and the same selection as CSV.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::OrderStatus;
use maud::{html, Markup};

use super::{admin_page, message, operator, orders_table, refuse};
use crate::export::OrdersQueryText;
use crate::pages::i18n::{channel_word, status_word, Lang};
use crate::pages::url_encode;
use crate::routes::manage::{orders_export, utc_offset};
use crate::AppState;

/// The payment channels an operator may filter by.
const CHANNELS: [&str; 6] = ["epay", "epusdt", "stripe", "manual", "reseller", "alipay"];

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/admin/orders", web::get().to(orders))
        .route("/admin/orders/export", web::get().to(export));
}

/// The query string of this search, with another offset.
fn search_query(query: &OrdersQueryText, offset: usize) -> String {
    format!(
        "status={}&sku={}&channel={}&from={}&until={}&q={}&offset={offset}",
        url_encode(&query.status),
        url_encode(&query.sku),
        url_encode(&query.channel),
        url_encode(&query.from),
        url_encode(&query.until),
        url_encode(&query.q),
    )
}

async fn orders(
    request: HttpRequest,
    query: web::Query<OrdersQueryText>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let offset_minutes = utc_offset(&state);
    let filter = match query.to_filter(offset_minutes) {
        Ok(filter) => filter,
        Err(error) => {
            return message(&request, &session, error.status, "Orders", &error.message);
        }
    };
    let limit = query.limit();
    let page = state.shop.order_book().search(&filter, query.offset, limit);
    let skus = super::skus(&state);
    let shown_to = query.offset + page.orders.len();
    let main = html! {
        h1 { (lang.pick("Orders", "订单")) }
        (search_form(lang, &query, &skus))
        p #orders-total { (lang.pick("Matching orders: ", "符合条件的订单：")) (page.total)
            @if page.total > 0 { " (" (query.offset + 1) "–" (shown_to) ")" }
            " · " a #export href=(format!("/admin/orders/export?{}", search_query(&query, 0))) download {
                (lang.pick("Export CSV", "导出 CSV")) }
        }
        (orders_table(lang, offset_minutes, &page.orders, |_| html! {}))
        nav.pager aria-label=(lang.pick("Pages", "分页")) {
            @if query.offset > 0 {
                a href=(format!("/admin/orders?{}", search_query(&query, query.offset.saturating_sub(limit)))) {
                    (lang.pick("← Newer", "← 较新")) }
            }
            @if shown_to < page.total {
                " " a href=(format!("/admin/orders?{}", search_query(&query, shown_to))) {
                    (lang.pick("Older →", "较早 →")) }
            }
        }
    };
    admin_page(
        &request,
        &session,
        lang.pick("Orders", "订单"),
        StatusCode::OK,
        main,
    )
}

fn search_form(lang: Lang, query: &OrdersQueryText, skus: &[String]) -> Markup {
    html! {
        form.filters method="get" action="/admin/orders" role="search" {
            div {
                label for="q" { (lang.pick("Order id or contact", "订单号或联系方式")) }
                input #q type="text" name="q" maxlength="254" value=(query.q);
            }
            div {
                label for="status" { (lang.pick("Status", "状态")) }
                select #status name="status" {
                    option value="" { (lang.pick("Any", "全部")) }
                    @for status in OrderStatus::ALL {
                        option value=(status.as_str()) selected[query.status == status.as_str()] { (status_word(lang, status)) }
                    }
                }
            }
            div {
                label for="sku" { (lang.pick("Product", "商品")) }
                select #sku name="sku" {
                    option value="" { (lang.pick("Any", "全部")) }
                    @for sku in skus { option value=(sku) selected[&query.sku == sku] { (sku) } }
                }
            }
            div {
                label for="channel" { (lang.pick("Payment channel", "支付通道")) }
                select #channel name="channel" {
                    option value="" { (lang.pick("Any", "全部")) }
                    @for channel in CHANNELS {
                        option value=(channel) selected[query.channel == channel] { (channel_word(lang, channel)) }
                    }
                }
            }
            div {
                label for="from" { (lang.pick("From (day)", "起始日期")) }
                input #from type="date" name="from" value=(query.from);
            }
            div {
                label for="until" { (lang.pick("Until (day, included)", "截止日期（含）")) }
                input #until type="date" name="until" value=(query.until);
            }
            div { button type="submit" { (lang.pick("Search", "搜索")) } }
        }
    }
}

async fn export(
    request: HttpRequest,
    query: web::Query<OrdersQueryText>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    match orders_export(&state, &query) {
        Ok(csv) => csv,
        Err(error) => message(&request, &session, error.status, "Export", &error.message),
    }
}
