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
    if state.lifecycle.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining: stopping soon");
    }
    if !state.shop.is_ready() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("the log refuses writes");
    }
    if !state.cluster.node.is_ready() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("no cluster leader is known");
    }
    match free_bytes(&state) {
        Some(free) if free < state.free_bytes_min => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!(
                "the data dir's disk has {free} bytes free, under the {} required",
                state.free_bytes_min
            )),
        _ => HttpResponse::Ok().content_type("text/plain").body("ready"),
    }
}

/// Free bytes on the data dir's disk, when the file system answers.
pub fn free_bytes(state: &AppState) -> Option<u64> {
    storage::disk::free_bytes(state.shop.store().data_dir()).ok()
}

/// With `metrics.token` set, a scrape must carry it (or the operator token) as a bearer
/// token: the text names SKUs, their stock and payment counts.
fn scrape_allowed(request: &HttpRequest, state: &AppState) -> bool {
    let Some(required) = &state.metrics_token else {
        return true;
    };
    let presented = crate::operator::bearer(request).unwrap_or("");
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
    storage_gauges(&state, &mut text);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

/// The data dir's free space and sled's lag behind the log, read at scrape time.
fn storage_gauges(state: &AppState, text: &mut String) {
    use std::fmt::Write;
    let lag = state.shop.store().mirror_lag();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    let mut gauge = |name: &str, help: &str, value: String| metric(name, "gauge", help, value);
    if let Some(free) = free_bytes(state) {
        gauge(
            "panshi_data_dir_free_bytes",
            "Free bytes on the data dir's file system.",
            free.to_string(),
        );
    }
    gauge(
        "panshi_sled_lag_records",
        "Durable log records not yet written to sled.",
        lag.records.to_string(),
    );
    gauge(
        "panshi_sled_lag_seconds",
        "How long the oldest durable change not yet in sled has waited.",
        format!("{:.3}", lag.age.as_secs_f64()),
    );
    metric(
        "panshi_sled_rebuilds_total",
        "counter",
        "Times sled was rebuilt with only the rows memory holds since the start.",
        lag.rebuilds.to_string(),
    );
}
