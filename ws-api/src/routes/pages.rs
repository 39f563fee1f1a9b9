//! The HTML pages: storefront, operator sign-in, public status. Server-rendered, every value
//! escaped, no external assets.

use actix_web::{web, HttpResponse};
use engine::money::format_cents;

use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(storefront))
        .route("/admin", web::get().to(admin))
        .route("/status", web::get().to(status));
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

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#111}\
table{border-collapse:collapse;width:100%}td,th{padding:.4rem;border-bottom:1px solid #ccc;text-align:left}\
.ok{color:#0a6b2d}.down{color:#a00}";

pub fn page(title: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape_html(title)
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(html)
}

async fn storefront(state: web::Data<AppState>) -> HttpResponse {
    let mut rows = String::new();
    for (product, stock) in state.shop.products() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{} {}</td><td>{}</td></tr>",
            escape_html(&product.name),
            escape_html(product.sku.as_str()),
            format_cents(product.price_cents),
            product.currency.as_str(),
            stock.available
        ));
    }
    let body = format!(
        "<h1>磐石 Panshi shop</h1><table><thead><tr><th>Product</th><th>SKU</th><th>Price</th>\
         <th>In stock</th></tr></thead><tbody>{rows}</tbody></table>\
         <p>Buy through <code>POST /api/v1/orders</code>; see the README's walk-through.</p>"
    );
    page("Panshi shop", &body)
}

async fn admin() -> HttpResponse {
    page(
        "Panshi operators",
        "<h1>Operators</h1><p>No session. Operator pages need a sign-in with the operator \
         token; until then use the operator API with <code>Authorization: Bearer</code>.</p>",
    )
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let component = |name: &str, up: bool| {
        let (class, word) = if up {
            ("ok", "operational")
        } else {
            ("down", "down")
        };
        format!("<tr><td>{name}</td><td class=\"{class}\">{word}</td></tr>")
    };
    let ready = state.shop.is_ready();
    let body = format!(
        "<h1>Status</h1><table>{}{}{}</table>",
        component("Ordering", ready),
        component("Payment: Epay", ready && state.epay.is_some()),
        component("Delivery", ready),
    );
    page("Panshi status", &body)
}
