//! Checks every request meets before routing, and headers every API answer carries.
//!
//! - Methods: metrics name a method outside `KNOWN_METHODS` `other`, so a flood of made-up
//!   methods neither grows a label set nor memory; like any method a path does not take, it
//!   is answered 405 with `Allow` (the API document's methods).
//! - Bodies: an `/api/` request with a body must declare it `application/json` (415
//!   otherwise), so a cross-site form or `text/plain` POST, which a browser sends without
//!   asking, never creates an order. Gateway callbacks (their own formats) and the card
//!   import (`text/plain` by contract, operator-only) are exempt.
//! - Form posts to the pages must come from this site: a `Sec-Fetch-Site` other than
//!   `same-origin`/`none`, or an `Origin` whose host is not the request's, is refused (403).
//! - Every `/api/` answer is `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`
//!   (answers carry keys and tokens; caches and sniffing have no business with them).

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};

use crate::error::ApiError;

/// The methods metrics name; any other is `other`.
pub const KNOWN_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The method as a metric label: one of `KNOWN_METHODS`, or `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records one answered request in the request metrics.
///
/// Handles are kept per worker thread for the routes with a static label (every route but
/// the few made without `resource`): looking a labelled handle up in the registry hashed
/// and compared its labels on every request (about 4% of an HTTP worker's time in a
/// purchase). The set is bounded: routes x methods x status classes.
#[allow(clippy::ptr_arg)] // a borrowed route is a static one: the variant is the point
pub fn record_request(
    route: &std::borrow::Cow<'static, str>,
    method: &'static str,
    class: &'static str,
    elapsed: std::time::Duration,
) {
    use std::borrow::Cow;
    use std::cell::RefCell;
    use std::collections::HashMap;
    type Handles = (metrics::Counter, metrics::Histogram);
    /// The route's text (pointer, length), the method and the status class.
    type Key = (usize, usize, &'static str, &'static str);
    thread_local! {
        static HANDLES: RefCell<HashMap<Key, Handles>> = RefCell::new(HashMap::new());
    }
    let seconds = elapsed.as_secs_f64();
    let Cow::Borrowed(route) = route else {
        let route = route.to_string();
        metrics::counter!("panshi_http_requests_total", "route" => route.clone(), "method" => method, "status" => class).increment(1);
        metrics::histogram!("panshi_http_request_duration_seconds", "route" => route, "method" => method)
            .record(seconds);
        return;
    };
    let route: &'static str = route;
    HANDLES.with_borrow_mut(|handles| {
        let (requests, duration) = handles
            .entry((route.as_ptr() as usize, route.len(), method, class))
            .or_insert_with(|| {
                (
                    metrics::counter!("panshi_http_requests_total", "route" => route, "method" => method, "status" => class),
                    metrics::histogram!("panshi_http_request_duration_seconds", "route" => route, "method" => method),
                )
            });
        requests.increment(1);
        duration.record(seconds);
    });
}

/// Why a request is refused before routing, if it is.
pub fn refusal(request: &ServiceRequest) -> Option<ApiError> {
    let path = request.path();
    if path.starts_with("/api/") {
        return undeclared_body(request, path);
    }
    if request.method() == Method::POST && !same_site(request) {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_post",
            "forms post only from this site's own pages",
        ));
    }
    None
}

/// An API request body that is not declared JSON, outside the exempt routes.
fn undeclared_body(request: &ServiceRequest, path: &str) -> Option<ApiError> {
    let exempt = path.starts_with("/api/v1/payments/")
        || (path.starts_with("/api/v1/admin/products/") && path.ends_with("/cards"));
    if exempt || !has_body(request) {
        return None;
    }
    let declared_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    (!declared_json).then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        )
    })
}

fn has_body(request: &ServiceRequest) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// Whether a page's form post comes from this site, as far as the browser tells: the
/// fetch metadata first, else the `Origin` against the request's own host. A client that
/// sends neither (no browser does that on a cross-site post today) is let through; the
/// operator forms also carry a CSRF token.
fn same_site(request: &ServiceRequest) -> bool {
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text("origin") else {
        return true;
    };
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    let host = text("host");
    origin_host.is_some() && origin_host == host
}

/// Adds the API answers' headers.
pub fn harden(response: &mut ServiceResponse) {
    if !response.request().path().starts_with("/api/") {
        return;
    }
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}
