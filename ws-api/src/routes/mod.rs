//! The routes of CONTRACT.md, one module per audience.

pub mod admin;
pub mod demo;
pub mod direct_notify;
pub mod live;
pub mod observability;
pub mod ops;
pub mod orders;
pub mod pages;
pub mod payments;
pub mod queue;
pub mod resellers;
pub mod webhooks;

use actix_web::{web, HttpRequest};
use engine::payment::signatures_equal;

use crate::error::ApiError;
use crate::AppState;

/// Routes are tried in registration order, and every dynamic pattern passed costs a regex
/// match: the buyer's hot path (orders, payment callbacks, live sockets) goes first.
pub fn configure(config: &mut web::ServiceConfig) {
    orders::configure(config);
    payments::configure(config);
    direct_notify::configure(config);
    live::configure(config);
    admin::configure(config);
    queue::configure(config);
    resellers::configure(config);
    webhooks::configure(config);
    crate::openapi::configure(config);
    ops::configure(config);
    observability::configure(config);
    pages::configure(config);
    demo::configure(config);
}

/// The bearer token of a request, if any: exactly `Bearer <token>`, one space and a token
/// without whitespace (RFC 6750's form; anything looser is refused, not repaired).
pub fn bearer(request: &HttpRequest) -> Option<&str> {
    let token = request
        .headers()
        .get("Authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let well_formed = !token.is_empty() && !token.bytes().any(|b| b.is_ascii_whitespace());
    well_formed.then_some(token)
}

/// Refuses anything but the operator token (compared in constant time).
pub fn require_operator(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    match bearer(request) {
        Some(token) if signatures_equal(token, &state.admin_token) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}
