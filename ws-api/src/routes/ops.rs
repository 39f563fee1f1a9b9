//! Liveness, readiness, metrics.

use actix_web::{web, HttpResponse};

use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text));
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shop.is_ready() {
        HttpResponse::Ok().content_type("text/plain").body("ready")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("the log refuses writes")
    }
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    let mut text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    // Stock per SKU is read at scrape time; the SKU is a bounded operator-chosen label.
    text.push_str(
        "# HELP panshi_stock_keys Card keys per SKU and state.\n# TYPE panshi_stock_keys gauge\n",
    );
    for listing in state.shop.products().list() {
        let (product, stock) = (&listing.product, listing.stock);
        let sku = product.sku.as_str();
        for (name, value) in [
            ("available", stock.available),
            ("reserved", stock.reserved),
            ("sold", stock.sold),
        ] {
            text.push_str(&format!(
                "panshi_stock_keys{{sku=\"{sku}\",state=\"{name}\"}} {value}\n"
            ));
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}
