//! Liveness, readiness, metrics.

use actix_web::{web, HttpRequest, HttpResponse};
use engine::payment::signatures_equal;

use crate::error::ApiError;
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

/// With `metrics.token` set, a scrape must carry it (or the operator token) as a bearer
/// token: the text names SKUs, their stock and payment counts.
fn scrape_allowed(request: &HttpRequest, state: &AppState) -> bool {
    let Some(required) = &state.metrics_token else {
        return true;
    };
    let presented = crate::routes::bearer(request).unwrap_or("");
    !presented.is_empty()
        && (signatures_equal(presented, required)
            || signatures_equal(presented, &state.admin_token))
}

async fn metrics_text(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !scrape_allowed(&request, &state) {
        return Err(ApiError::unauthorized());
    }
    let mut text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    // Stock per SKU is read at scrape time; the SKU is a bounded operator-chosen label.
    text.push_str(
        "# HELP panshi_stock_keys Card keys per SKU and state.\n# TYPE panshi_stock_keys gauge\n",
    );
    for (product, stock) in state.shop.products() {
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
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}
