//! Requests on a node that is not the active leader: writes go to the leader (this node
//! returns its answer), reads first wait until this node has applied everything the leader
//! had committed (`Node::read_barrier`).
//!
//! What counts as a write is decided by the route, not only the method: Epay's notify may
//! be a GET, and the operator pages (whose sessions live on the leader) go there whole.
//! WebSocket upgrades are never passed on: the live feeds work on every node.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::Cluster;
use crate::error::ApiError;

/// Largest body passed on to the leader (the largest any route takes: a key import).
pub const FORWARD_BODY_BYTES_MAX: usize = crate::routes::admin::IMPORT_REQUEST_BYTES_MAX;
/// How long the leader may take to answer a passed-on request.
pub const FORWARD_TIMEOUT_MS: u64 = 30_000;
/// Set on a request passed on by another node: signed, and naming the original client.
pub const FORWARDED_HEADER: &str = "Panshi-Forwarded";

/// Headers that belong to one connection, never passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub(crate) fn client(source: Option<std::net::IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .connect_timeout(Duration::from_millis(super::transport::CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client")
}

/// What a request needs on a node that is not the active leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered here as it is (node-local views, node-to-node calls).
    Local,
    /// Answered here once this node has caught up with the leader.
    Read,
    /// Passed on to the leader.
    Write,
}

pub fn classify(method: &actix_web::http::Method, path: &str, upgrade: bool) -> Route {
    const LOCAL: [&str; 8] = [
        "/internal/",
        "/livez",
        "/readyz",
        "/leaderz",
        "/metrics",
        "/status",
        "/assets/",
        "/api/v1/ops/",
    ];
    if LOCAL.iter().any(|prefix| path.starts_with(prefix)) {
        return Route::Local;
    }
    if upgrade {
        // Queue tickets live in the leader's memory; order and reseller feeds everywhere.
        return if path.starts_with("/api/v1/queue/") {
            Route::Local
        } else {
            Route::Read
        };
    }
    let whole_on_leader = [
        "/admin",
        "/demo/",
        "/api/v1/payments/",
        "/queue/",
        "/api/v1/queue/",
    ];
    if whole_on_leader
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        return Route::Write;
    }
    match *method {
        actix_web::http::Method::GET | actix_web::http::Method::HEAD => Route::Read,
        _ => Route::Write,
    }
}

/// The client a request came from: the original client of a request another node passed
/// on (its header verified), else the peer.
pub fn client_ip(request: &HttpRequest) -> Option<IpAddr> {
    if let Some(ForwardedFor(ip)) = request.extensions().get::<ForwardedFor>() {
        return Some(*ip);
    }
    request.peer_addr().map(|a| a.ip())
}

/// The original client of a request passed on by another node.
#[derive(Clone, Copy)]
pub struct ForwardedFor(pub IpAddr);

/// Verifies a passed-on request's header and records its client; a forged one is ignored.
pub fn note_forwarded(cluster: &Cluster, request: &ServiceRequest) {
    let Some(value) = request
        .headers()
        .get(FORWARDED_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let Some((client, signature)) = value
        .strip_prefix("for=")
        .and_then(|rest| rest.split_once(';'))
    else {
        return;
    };
    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
    let parts: [&[u8]; 3] = [
        client.as_bytes(),
        request.method().as_str().as_bytes(),
        target.as_bytes(),
    ];
    if cluster.verify(Some(signature), &parts) {
        if let Ok(ip) = client.parse() {
            request.extensions_mut().insert(ForwardedFor(ip));
        }
    }
}

fn no_leader() -> ApiError {
    ApiError::unavailable(
        "no_leader",
        "no leader is reachable right now; retry shortly",
    )
}

fn not_committed() -> ApiError {
    ApiError::unavailable(
        "not_committed",
        "the leader was asked but its answer was lost; retry with the same Idempotency-Key",
    )
}

/// Every request goes through here first: on a node of a cluster that is not the active
/// leader, writes go to the leader and reads wait for this node to catch up.
pub async fn middleware(
    request: ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::ResponseError;
    let Some(state) = request
        .app_data::<actix_web::web::Data<crate::AppState>>()
        .cloned()
    else {
        return next.call(request).await;
    };
    let cluster = &state.cluster;
    note_forwarded(cluster, &request);
    if !cluster.is_replicated() || cluster.node.is_active() {
        return next.call(request).await;
    }
    let upgrade = request.headers().contains_key(header::UPGRADE);
    match classify(request.method(), request.path(), upgrade) {
        Route::Local => next.call(request).await,
        Route::Read => match cluster.node.read_barrier().await {
            Ok(()) => next.call(request).await,
            Err(_) => Ok(request.into_response(no_leader().error_response())),
        },
        Route::Write => {
            let (http_request, payload) = request.into_parts();
            let mut request = ServiceRequest::from_parts(http_request, payload);
            let response = forward(cluster, &mut request).await;
            Ok(request.into_response(response))
        }
    }
}

/// Passes a write to the leader and answers with the leader's answer.
pub async fn forward(cluster: &Cluster, request: &mut ServiceRequest) -> HttpResponse {
    use actix_web::ResponseError;
    match forward_inner(cluster, request).await {
        Ok(response) => response,
        Err(error) => error.error_response(),
    }
}

async fn forward_inner(
    cluster: &Cluster,
    request: &mut ServiceRequest,
) -> Result<HttpResponse, ApiError> {
    if request.headers().contains_key(FORWARDED_HEADER) {
        // Passed on to a node that no longer leads: never passed on twice.
        return Err(no_leader());
    }
    let (leader, url) = cluster.node.leader().ok_or_else(no_leader)?;
    if leader == cluster.node.node_id() || url.is_empty() {
        return Err(no_leader());
    }
    let mut body = Vec::new();
    let mut payload = request.take_payload();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
        if body.len() + chunk.len() > FORWARD_BODY_BYTES_MAX {
            return Err(crate::payload_too_large(FORWARD_BODY_BYTES_MAX));
        }
        body.extend_from_slice(&chunk);
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // The client as this node sees it: its trusted proxies' header counted.
    let client_ip = request
        .app_data::<actix_web::web::Data<crate::AppState>>()
        .and_then(|state| state.client(request.request()))
        .or_else(|| client_ip(request.request()))
        .map_or_else(String::new, |ip| ip.to_string());
    let method = request.method().clone();
    let signature = cluster
        .sign(&[
            client_ip.as_bytes(),
            method.as_str().as_bytes(),
            target.as_bytes(),
        ])
        .ok_or_else(no_leader)?;
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| ApiError::bad_request("bad_method", "unknown method"))?;
    let mut outgoing = cluster.client.request(method, format!("{url}{target}"));
    for (name, value) in request.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name == header::CONTENT_LENGTH {
            continue;
        }
        outgoing = outgoing.header(name.as_str(), value.as_bytes());
    }
    outgoing = outgoing
        .header(FORWARDED_HEADER, format!("for={client_ip};{signature}"))
        .body(body);
    let answer = outgoing.send().await.map_err(|e| {
        if e.is_connect() {
            no_leader()
        } else {
            not_committed()
        }
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).map_err(|_| not_committed())?;
    let mut response = HttpResponse::build(status);
    for (name, value) in answer.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "content-length" {
            continue;
        }
        response.append_header((name.as_str(), value.as_bytes()));
    }
    let bytes = answer.bytes().await.map_err(|_| not_committed())?;
    Ok(response.body(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn writes_go_to_the_leader_reads_wait_local_views_stay() {
        let cases = [
            (Method::POST, "/api/v1/orders", false, Route::Write),
            (Method::GET, "/api/v1/orders/abc", false, Route::Read),
            (
                Method::GET,
                "/api/v1/payments/epay/notify",
                false,
                Route::Write,
            ),
            (Method::GET, "/admin/orders", false, Route::Write),
            (Method::GET, "/api/v1/orders/abc/live", true, Route::Read),
            (Method::GET, "/api/v1/reseller/stream", true, Route::Read),
            (Method::GET, "/api/v1/queue/7/live", true, Route::Local),
            (Method::POST, "/internal/raft/append", false, Route::Local),
            (Method::GET, "/readyz", false, Route::Local),
            (Method::GET, "/api/v1/ops/cluster", false, Route::Local),
            (Method::GET, "/", false, Route::Read),
            (
                Method::DELETE,
                "/api/v1/admin/cluster/members/3",
                false,
                Route::Write,
            ),
        ];
        for (method, path, upgrade, route) in cases {
            assert_eq!(classify(&method, path, upgrade), route, "{method} {path}");
        }
    }
}
