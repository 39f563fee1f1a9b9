//! The HTML pages: storefront, operator sign-in, public status. Server-rendered, every value
//! escaped, no external assets.

use actix_web::{web, HttpResponse};
use engine::money::format_cents;
use engine::time::format_rfc3339_ms;

use crate::observe::{self, Level};
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(storefront))
        .route("/admin", web::get().to(admin))
        .route("/status", web::get().to(status))
        .route("/pay/manual/{order_id}", web::get().to(manual_payment));
}

/// Where a buyer lands when every payment channel of the method was down: the order is
/// held and an operator confirms the payment by hand.
async fn manual_payment(path: web::Path<String>) -> HttpResponse {
    let body = format!(
        "<h1>Payment by hand</h1><p>Our payment gateways are busy right now, so your order \
         <code>{}</code> was put in the manual payment queue and its keys are held for you \
         until it expires. The shop will contact you at the address you gave with payment \
         details; once an operator confirms your payment, your keys appear on your order \
         page at once.</p>",
        escape_html(&path)
    );
    page("Payment by hand", &body)
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
.ok{color:#0a6b2d}.down{color:#a00}.degraded{color:#8a5a00}\
.note{border-left:4px solid #8a5a00;padding:.2rem .8rem;margin:1rem 0;background:#fff8e6;overflow-wrap:anywhere}";

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
    let components = observe::components(
        state.shop.is_ready(),
        state.epay.is_some(),
        &state.observatory.active(),
    );
    let mut rows = String::new();
    for (name, level) in components {
        let class = match level {
            Level::Operational => "ok",
            Level::Degraded => "degraded",
            Level::Down => "down",
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=\"{class}\">{}</td></tr>",
            escape_html(name),
            level.as_str()
        ));
    }
    let incident = state
        .observatory
        .incident()
        .map(|incident| {
            format!(
                "<div class=\"note\"><strong>Notice</strong> ({})<p>{}</p></div>",
                escape_html(&format_rfc3339_ms(incident.at_ms)),
                escape_html(&incident.note)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Status</h1>{incident}<table><thead><tr><th>Component</th><th>State</th></tr>\
         </thead><tbody>{rows}</tbody></table><p>Updated {}.</p>",
        escape_html(&format_rfc3339_ms(state.shop.now_ms()))
    );
    page("Panshi status", &body)
}
