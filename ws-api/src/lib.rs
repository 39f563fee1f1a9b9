//! Panshi's edge: HTTP and WebSocket (actix-web with actix-ws, on the actors' runtime), and
//! the `panshi` binary. The only crate that knows JSON, HTTP status codes or URLs.
//!
//! Invariants: an answer that acknowledges a change (2xx, `success` to a gateway) is sent
//! only after the actors report the change durable; every body, connection and socket is
//! bounded; one client's bad input is answered with a 4xx and touches no one else.
//!
//! Design decision: request bodies are read by hand up to a limit and parsed with serde, so
//! every failure, including an oversized or malformed body, gets the contract's error shape.

pub mod auth_backoff;
pub mod backup;
pub mod client;
pub mod client_faults;
pub mod cluster;
pub mod connections;
pub mod contact_lookup;
pub mod direct;
pub mod drain;
pub mod edge;
pub mod error;
pub mod export;
pub mod gateways;
pub mod limits;
pub mod log_gate;
pub mod mail;
pub mod notify;
pub mod observe;
pub mod openapi;
pub mod operator;
pub mod pages;
pub mod post;
pub mod recorder;
pub mod routes;
pub mod sentry_transport;
pub mod settings;
pub mod socket;
pub mod ssrf;
pub mod watch;
pub mod webhooks;
pub mod wire;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::web;
use actix_web::ResponseError;
use actors::{EpaySettings, Shop};
use futures_util::{FutureExt, StreamExt};

use crate::error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub shop: Shop,
    pub admin_token: String,
    pub epay: Option<EpaySettings>,
    pub metrics: Option<recorder::MetricsHandle>,
    pub websockets_open: Arc<AtomicUsize>,
    pub websockets_max: usize,
    pub json_body_bytes_max: usize,
    pub demo: bool,
    /// Alerts, incident note and HTTP totals.
    pub observatory: Arc<observe::Observatory>,
    /// epusdt's API token (the callbacks' signing secret), when epusdt is configured.
    pub epusdt_token: Option<String>,
    /// Stripe's webhook signing secret, when Stripe is configured.
    pub stripe_webhook_secret: Option<String>,
    /// Stripe event ids seen lately (deduplication; the order's own idempotency is the
    /// guarantee across restarts).
    pub stripe_events: parking_lot::Mutex<routes::payments::RecentIds>,
    /// Buyer-side rate limits (never applied to payment callbacks).
    pub limits: limits::EdgeLimits,
    /// The payment channels configured (by name): only these get a callback route.
    pub payment_channels: Vec<String>,
    /// Proxies whose forwarding headers name the client (`client.rs`).
    pub proxies: client::TrustedProxies,
    /// The shop's public URL is `https://`: cookies get `Secure` (never from a header).
    pub public_https: bool,
    /// Back-off on failed operator authentication, per address.
    pub auth_backoff: auth_backoff::AuthBackoff,
    /// When set, `/metrics` needs this bearer token (or the operator token).
    pub metrics_token: Option<String>,
    /// Serving, or draining towards a stop (`drain.rs`).
    pub lifecycle: Arc<drain::Lifecycle>,
    /// Below this many free bytes on the data dir's disk the server is not ready.
    pub free_bytes_min: u64,
    /// Alipay and WeChat Pay direct, where configured (their notifies' keys).
    pub direct: direct::DirectChannels,
    /// This node and the others (a single node is a cluster of one).
    pub cluster: Arc<cluster::Cluster>,
}

impl AppState {
    /// Whether this node can take orders: its store takes writes and it leads or knows the
    /// leader to pass them to.
    pub fn is_ready(&self) -> bool {
        self.shop.is_ready() && self.cluster.node.is_ready()
    }

    /// The client's key for limits, risk rules and idempotency scopes (`client.rs`).
    pub fn client(&self, request: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
        client::client_of(request, &self.proxies)
    }
}

/// How long a request body may take to arrive, before the allowance for its size
/// (`http.body_read_timeout_secs`, set once at start).
static BODY_READ_TIMEOUT_MS: AtomicU64 = AtomicU64::new(BODY_READ_TIMEOUT_SECS_DEFAULT * 1000);
pub const BODY_READ_TIMEOUT_SECS_DEFAULT: u64 = 10;
/// A body earns this many bytes per second on top of the timeout, so a large import over a
/// slow link still arrives while a body trickled a byte at a time does not.
pub const BODY_BYTES_PER_SEC_MIN: u64 = 64 * 1024;

pub fn set_body_read_timeout(timeout: Duration) {
    BODY_READ_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
}

/// Reads a request body up to `limit` bytes; more is refused with `too_large` before it is
/// all read, and a body slower than the timeout (plus its size's allowance) gets 408.
pub async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    too_large: fn(usize) -> ApiError,
) -> Result<web::BytesMut, ApiError> {
    let started = Instant::now();
    let timeout_ms = BODY_READ_TIMEOUT_MS.load(Ordering::Relaxed);
    let mut body = web::BytesMut::new();
    loop {
        let allowed_ms = timeout_ms + body.len() as u64 * 1000 / BODY_BYTES_PER_SEC_MIN;
        let remaining = Duration::from_millis(allowed_ms).saturating_sub(started.elapsed());
        let Ok(next) = actix_web::rt::time::timeout(remaining, payload.next()).await else {
            metrics::counter!("panshi_http_body_timeouts_total").increment(1);
            return Err(ApiError::new(
                actix_web::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {allowed_ms} ms"),
            ));
        };
        let Some(chunk) = next else {
            return Ok(body);
        };
        let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
}

/// Reads and parses a JSON request body, bounded by the configured limit.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    payload: web::Payload,
    state: &AppState,
) -> Result<T, ApiError> {
    let body = read_body(payload, state.json_body_bytes_max, payload_too_large).await?;
    wire::parse_json(&body)
}

pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is over {limit} bytes"),
    )
}

/// Wraps an app with per-route request metrics.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let observatory = state.observatory.clone();
    let routes_state = state.clone();
    let lifecycle = state.lifecycle.clone();
    actix_web::App::new()
        .app_data(state)
        // Innermost: passing a write to the leader is what this node does for it, after the
        // edge's own gates (drain, connection cap) and inside the request metrics.
        .wrap(actix_web::middleware::from_fn(cluster::forward::middleware))
        .wrap_fn(move |request, service| {
            // While draining every answer closes its connection: keep-alive clients come
            // back on a new one, which the balancer sends elsewhere once it saw /readyz.
            let draining = lifecycle.is_draining();
            service.call(request).map(move |result| {
                result.map(|mut answer| {
                    let head = answer.response_mut().head_mut();
                    if draining && !head.upgrade() {
                        head.set_connection_type(actix_web::http::ConnectionType::Close);
                    }
                    answer
                })
            })
        })
        .wrap_fn(|request, service| {
            use futures_util::future::{ready, Either};
            // A connection over its address's cap gets this answer, and is closed.
            if request.conn_data::<connections::OverCap>().is_some() {
                let mut response =
                    actix_web::ResponseError::error_response(&connections::refusal());
                response
                    .head_mut()
                    .set_connection_type(actix_web::http::ConnectionType::Close);
                return Either::Left(ready(Ok(request.into_response(response))));
            }
            Either::Right(service.call(request))
        })
        .wrap_fn(move |request, service| {
            let observatory = observatory.clone();
            let started = Instant::now();
            let method = edge::method_label(request.method());
            let answer = match edge::refusal(&request) {
                Some(refusal) => {
                    let response = request.into_response(refusal.error_response());
                    futures_util::future::Either::Left(futures_util::future::ready(Ok(response)))
                }
                None => futures_util::future::Either::Right(service.call(request)),
            };
            answer.map(move |mut result| {
                if let Ok(response) = &mut result {
                    edge::harden(response);
                }
                let status = match &result {
                    Ok(response) => response.status().as_u16(),
                    Err(error) => error.as_response_error().status_code().as_u16(),
                };
                let class = match status {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                let route = match &result {
                    Ok(response) => route_label(response.request()),
                    Err(_) => "unmatched".into(),
                };
                let elapsed = started.elapsed();
                edge::record_request(&route, method, class, elapsed);
                observatory.http.record(status, elapsed);
                result
            })
        })
        .configure(|config| routes::configure(config, &routes_state))
        .configure(edge_answers)
}

/// A resource's pattern, kept in its app data (`resource`), so that the request metrics
/// read their `route` label after routing instead of matching the path a second time
/// (a regex per dynamic route passed: 2% of a purchase's CPU).
#[derive(Clone, Copy, Debug)]
pub struct RoutePattern(pub &'static str);

/// A resource labelled with its own pattern; the buyer's and the gateways' routes use it.
/// Give it its method as a guard (as `ServiceConfig::route` does): a resource without one
/// would answer other methods itself, with actix's empty 405, instead of `unrouted`'s.
pub fn resource(pattern: &'static str) -> actix_web::Resource {
    web::resource(pattern).app_data(RoutePattern(pattern))
}

/// The `route` label of an answered request: its resource's pattern, found by matching
/// again only for resources not made with `resource`.
fn route_label(request: &actix_web::HttpRequest) -> std::borrow::Cow<'static, str> {
    match request.app_data::<RoutePattern>() {
        Some(pattern) => pattern.0.into(),
        None => request
            .match_pattern()
            .map_or("unmatched".into(), std::borrow::Cow::Owned),
    }
}

/// Answers no handler gives, in the contract's error shape: bad query strings and paths, and
/// whatever no route takes.
fn edge_answers(config: &mut web::ServiceConfig) {
    config
        .app_data(web::PayloadConfig::new(
            routes::admin::IMPORT_REQUEST_BYTES_MAX,
        ))
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            ApiError::bad_request("bad_query", format!("bad query string: {error}")).into()
        }))
        .app_data(
            web::PathConfig::default()
                .error_handler(|_, _| ApiError::not_found("no such resource").into()),
        )
        .default_service(web::to(unrouted));
}

/// Whatever no route takes: 405 on a known path (another method), else 404; both in the
/// contract's error shape (actix's own answers have empty bodies).
async fn unrouted(request: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    if !request.resource_map().has_resource(request.path()) {
        return ApiError::not_found(format!("no route for {}", request.path())).error_response();
    }
    let mut response = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.path()),
    )
    .error_response();
    // The API document knows each path's methods (the pages are not in it).
    if let Some(allowed) = openapi::allowed_methods(request.path()) {
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed) {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
    }
    response
}
