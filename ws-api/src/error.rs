//! The one error shape of the HTTP API: `{"error": "<code>", "message": "<text>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::ShopError;
use engine::Rejection;

/// `Retry-After` of a live socket refused because its order or reseller has too many.
pub const TOO_MANY_SOCKETS_RETRY_AFTER_SECS: u32 = 30;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header on 429 and 503.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(serde_json::json!({"error": self.code, "message": self.message}))
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        let (status, code) = match rejection {
            Rejection::UnknownSku => (StatusCode::NOT_FOUND, "unknown_sku"),
            Rejection::UnknownOrder => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::SkuExists => (StatusCode::CONFLICT, "sku_exists"),
            Rejection::SoldOut => (StatusCode::CONFLICT, "sold_out"),
            Rejection::BadImport(_) => (StatusCode::BAD_REQUEST, "bad_import"),
            Rejection::UnknownChannel => (StatusCode::BAD_REQUEST, "unknown_channel"),
            Rejection::ChannelUnavailable => (StatusCode::BAD_REQUEST, "channel_unavailable"),
            Rejection::InvalidSku => (StatusCode::BAD_REQUEST, "invalid_sku"),
            Rejection::InvalidOrderId => (StatusCode::BAD_REQUEST, "invalid_order_id"),
            Rejection::InvalidCurrency => (StatusCode::BAD_REQUEST, "invalid_currency"),
            Rejection::AmountMismatch { .. } => (StatusCode::BAD_REQUEST, "amount_mismatch"),
            Rejection::BadSignature => (StatusCode::BAD_REQUEST, "bad_signature"),
            Rejection::StaleSignature => (StatusCode::BAD_REQUEST, "stale_signature"),
            Rejection::WrongMerchant => (StatusCode::BAD_REQUEST, "wrong_merchant"),
            Rejection::MalformedNotify(_) => (StatusCode::BAD_REQUEST, "malformed_notify"),
            Rejection::NotPaid => (StatusCode::BAD_REQUEST, "not_paid"),
            Rejection::PaidByOtherTransaction => (StatusCode::CONFLICT, "already_paid"),
            Rejection::InvalidTransition { .. } => (StatusCode::CONFLICT, "invalid_state"),
            Rejection::InvalidInput(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Rejection::InsufficientBalance => (StatusCode::CONFLICT, "insufficient_balance"),
            Rejection::UnknownReseller => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::ResellerRevoked => (StatusCode::CONFLICT, "reseller_revoked"),
            Rejection::CouponExists => (StatusCode::CONFLICT, "coupon_exists"),
            Rejection::Coupon(engine::coupon::CouponRefusal::Unknown) => {
                (StatusCode::NOT_FOUND, "coupon_unknown")
            }
            Rejection::Coupon(refusal) => (StatusCode::CONFLICT, refusal.code()),
            Rejection::Risk(rule) => return risk_refusal(rule, message),
        };
        Self::new(status, code, message)
    }
}

fn risk_refusal(rule: engine::risk::RiskRule, message: String) -> ApiError {
    use engine::risk::RiskRule;
    let (status, retry_after_secs) = match rule {
        RiskRule::BlockedContact | RiskRule::BlockedIp => (StatusCode::FORBIDDEN, None),
        RiskRule::TooManyReserved => (StatusCode::CONFLICT, None),
        RiskRule::PurchaseLimit | RiskRule::Velocity => (StatusCode::TOO_MANY_REQUESTS, Some(60)),
    };
    ApiError {
        retry_after_secs,
        ..ApiError::new(status, rule.code(), message)
    }
}

/// What a client is told of a storage failure: a stable code and sentence. The detail
/// (which may name files and paths) goes to the log only.
pub const STORAGE_UNAVAILABLE_MESSAGE: &str = "the shop cannot read or write its data right now";

impl From<storage::Error> for ApiError {
    fn from(error: storage::Error) -> Self {
        tracing::error!(%error, "storage failure");
        Self::unavailable("storage_unavailable", STORAGE_UNAVAILABLE_MESSAGE)
    }
}

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        match error {
            ShopError::Rejected(rejection) => rejection.into(),
            ShopError::Busy => Self::unavailable("busy", error.to_string()),
            ShopError::InProgress => Self {
                retry_after_secs: Some(1),
                ..Self::new(
                    StatusCode::CONFLICT,
                    "request_in_progress",
                    error.to_string(),
                )
            },
            ShopError::IdempotencyMismatch => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                error.to_string(),
            ),
            ShopError::Storage(inner) => inner.into(),
            ShopError::Unavailable(_) => Self::unavailable("unavailable", error.to_string()),
            // Refused before the upgrade, with a wait long enough that a client does not
            // loop reconnecting (a socket refused after its upgrade reconnects at once).
            ShopError::TooManySubscribers => Self {
                retry_after_secs: Some(TOO_MANY_SOCKETS_RETRY_AFTER_SECS),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sockets",
                    error.to_string(),
                )
            },
            ShopError::NotLeader { .. } => Self::unavailable("no_leader", error.to_string()),
            ShopError::OutcomeUnknown => Self::unavailable("not_committed", error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Postmortem: storage errors passed `e.to_string()`, with file paths, to clients.
    #[test]
    fn storage_failures_tell_clients_a_stable_code_and_no_paths() {
        let io = std::io::Error::other("open /srv/panshi-data/log/0000000042.seg: EIO");
        for error in [
            ApiError::from(storage::Error::Io(io)),
            ApiError::from(ShopError::Storage(storage::Error::Corrupt(
                "/srv/panshi-data/sled/db".into(),
            ))),
        ] {
            assert_eq!(
                (error.status.as_u16(), error.code),
                (503, "storage_unavailable")
            );
            assert_eq!(error.message, STORAGE_UNAVAILABLE_MESSAGE);
        }
    }
}
