//! The HTTP API as one OpenAPI 3.1 document, served at `GET /api/v1/openapi.json` (no token
//! needed: it describes, it reveals nothing): the buyers', operators', gateways', ops and
//! resellers' routes, each with the answers it really gives and the limits it enforces.
//! CI runs schemathesis against the served document (.ci/run).
//!
//! Invariant: every JSON route of CONTRACT.md is described; the test below checks the paths,
//! and 405 answers take their `Allow` header from this document.
//!
//! Key decision: the document is built by utoipa from the schema types and the stub
//! functions in `shop.rs` and `resellers.rs` rather than from annotations on the handlers,
//! so the handlers (and their wire conversions) stay as they are; the price is that a route
//! change must be mirrored here, which the path test catches for added or renamed paths.

mod manage;
mod resellers;
mod shop;

use std::sync::OnceLock;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpResponse};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi as Document, Response};
use utoipa::OpenApi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

pub fn configure(config: &mut web::ServiceConfig) {
    config.route(OPENAPI_PATH, web::get().to(document));
}

/// The whole document: the shop's routes and the resellers', with the bearer scheme on the
/// protected ones and the answers every route shares.
pub fn api() -> Document {
    let mut document = shop::ShopApi::openapi();
    document.merge(resellers::ResellerApi::openapi());
    document.merge(manage::ManageApi::openapi());
    document.info.title = "Panshi API".into();
    document.info.description = Some(
        "An auto-delivery card shop: buyers, operators, payment gateways, resellers and ops. \
         Amounts are integer minor units. Errors are {\"error\", \"message\"}."
            .into(),
    );
    bearer_scheme(&mut document);
    for (path, item) in document.paths.paths.iter_mut() {
        let protected = PROTECTED_PREFIXES.iter().any(|p| path.starts_with(p));
        for operation in operations(item) {
            common_answers(operation, protected);
        }
    }
    document
}

/// Paths that need `Authorization: Bearer` (the operator token, or a reseller's key).
const PROTECTED_PREFIXES: [&str; 3] = ["/api/v1/admin/", "/api/v1/reseller/", "/api/v1/ops/"];

fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| api().to_json().expect("the document serialises"))
}

async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

fn bearer_scheme(document: &mut Document) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = document.components.get_or_insert_with(Default::default);
    let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
    components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// What any route may answer besides its own: 401 where a token is needed; 400, 408 and 413
/// where a body is read; 429 (rate limits, and the per-address connection cap, on any route);
/// 503 (the log is busy or refuses writes).
fn common_answers(operation: &mut Operation, protected: bool) {
    use utoipa::openapi::security::SecurityRequirement;
    let mut add = |status: &str, description: &str| {
        let error = utoipa::openapi::RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Error"));
        let content = utoipa::openapi::content::ContentBuilder::new()
            .schema(Some(error))
            .build();
        let response: Response = utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build();
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(response.into());
    };
    if protected {
        add("401", "unauthorized: a valid bearer token is required");
    }
    if operation.request_body.is_some() {
        add("400", "bad_json or bad_request");
        add("408", "request_timeout: the body arrived too slowly");
        add("413", "payload_too_large");
    }
    add("429", "rate_limited or too_many_connections (Retry-After)");
    add("503", "busy or storage_unavailable (Retry-After)");
    if protected {
        operation.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The methods the document gives `path`, for a 405's `Allow` header; `None` for a path it
/// does not describe.
pub fn allowed_methods(path: &str) -> Option<String> {
    static ROUTES: OnceLock<Vec<(ResourceDef, String)>> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let mut document = api();
        document
            .paths
            .paths
            .iter_mut()
            .map(|(pattern, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("PATCH", item.patch.is_some()),
                ];
                let allowed: Vec<&str> = methods
                    .iter()
                    .filter(|(_, present)| *present)
                    .map(|(method, _)| *method)
                    .collect();
                (ResourceDef::new(pattern.as_str()), allowed.join(", "))
            })
            .collect()
    });
    routes
        .iter()
        .find(|(pattern, _)| pattern.is_match(path))
        .map(|(_, allowed)| allowed.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_contract_path_is_described() {
        let json: serde_json::Value = serde_json::from_str(super::json()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/api/v1/products",
            "/api/v1/orders",
            "/api/v1/orders/{order_id}",
            "/api/v1/orders/{order_id}/live",
            "/api/v1/admin/products",
            "/api/v1/admin/products/{sku}/cards",
            "/api/v1/admin/products/{sku}/stock",
            "/api/v1/payments/epay/notify",
            "/api/v1/payments/epusdt/notify",
            "/api/v1/payments/stripe/webhook",
            "/livez",
            "/readyz",
            "/metrics",
            "/api/v1/reseller/me",
            "/api/v1/reseller/orders",
            "/api/v1/reseller/orders/{order_id}",
            "/api/v1/reseller/stream",
            "/api/v1/admin/resellers",
            "/api/v1/admin/resellers/{id}/revoke",
            "/api/v1/admin/resellers/{id}/balance",
            "/api/v1/admin/resellers/{id}/rotate-key",
            "/api/v1/admin/resellers/{id}/rotate-webhook-secret",
            "/api/v1/admin/resellers/{id}/discount",
            "/api/v1/admin/resellers/{id}/webhooks/dead",
            "/api/v1/admin/resellers/{id}/webhooks/dead/{seq}/replay",
        ] {
            assert!(json["paths"].get(path).is_some(), "{path} is missing");
        }
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }
}
