//! The operator's credentials on a request: the bearer token, checked in constant time,
//! with a back-off for addresses that keep guessing (`auth_backoff`).

use actix_web::HttpRequest;
use engine::payment::signatures_equal;

use crate::error::ApiError;
use crate::AppState;

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

/// Refuses anything but the operator token (compared in constant time); an address that
/// sent too many wrong tokens is refused before its token is looked at (`auth_backoff`).
pub fn require_operator(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    operator_token_ok(request, state, bearer(request).unwrap_or(""))
}

/// Checks `token` as the operator token from `request`'s address, with the back-off.
pub fn operator_token_ok(
    request: &HttpRequest,
    state: &AppState,
    token: &str,
) -> Result<(), ApiError> {
    let client = state.client(request);
    let now = std::time::Instant::now();
    if let Err(wait) = state.auth_backoff.check(client, now) {
        return Err(locked_out(wait));
    }
    if !token.is_empty() && signatures_equal(token, &state.admin_token) {
        state.auth_backoff.succeeded(client);
        return Ok(());
    }
    // No token at all is no guess: only a wrong one counts towards the lockout.
    if !token.is_empty() {
        metrics::counter!("panshi_operator_auth_failures_total").increment(1);
        state.auth_backoff.failed(client, now);
    }
    Err(ApiError::unauthorized())
}

fn locked_out(wait: std::time::Duration) -> ApiError {
    ApiError {
        retry_after_secs: Some(wait.as_secs().max(1) as u32),
        ..ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many wrong operator tokens from this address; wait before trying again",
        )
    }
}
