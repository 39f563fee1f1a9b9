//! The resellers' OpenAPI document is served, without a key, as JSON naming their routes.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let r = server
        .http
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    let (code, document) = answer(r).await;
    assert_eq!(code, 200, "{document}");
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document["paths"]["/api/v1/reseller/orders"]["post"].is_object());
    assert!(document["components"]["schemas"]["WebhookEvent"].is_object());
    server.stop();
}
