//! The served OpenAPI document describes the routes the server really has: every documented
//! operation is routed (not the 404 of an unknown route, not a 405), and a method the
//! document does not give a path is 405 with the `Allow` header it does give.
//! (CI also fuzzes the document with schemathesis: .ci/run.)

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_and_every_operation_in_it_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    // Every callback channel configured: an unconfigured one's callback route is absent.
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_EPUSDT__GATEWAY_URL", "http://127.0.0.1:9/epusdt"),
            ("PANSHI_EPUSDT__TOKEN", "epusdt-test-token"),
            ("PANSHI_STRIPE__WEBHOOK_SECRET", "whsec_test_0123456789"),
        ],
    );
    let (code, document) = answer(
        server
            .http
            .get(server.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{document}");
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document["components"]["schemas"]["WebhookEvent"].is_object());
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 39, "{} paths", paths.len());
    for (template, item) in paths {
        let path = template.replace('{', "x").replace('}', "");
        for method in ["get", "post", "put", "delete", "patch"] {
            let response = server
                .http
                .request(method.to_uppercase().parse().unwrap(), server.url(&path))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if item.get(method).is_some() {
                assert_ne!(
                    status, 405,
                    "{method} {template} is documented but not routed"
                );
                assert!(
                    !(status == 404
                        && body["message"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("no route")),
                    "{method} {template} is documented but not routed"
                );
            } else {
                assert_eq!(status, 405, "{method} {template}: {body}");
                let allow = allow.unwrap_or_else(|| panic!("{method} {template}: no Allow"));
                for documented in ["get", "post"] {
                    assert_eq!(
                        allow.contains(&documented.to_uppercase()),
                        item.get(documented).is_some(),
                        "{template}: Allow {allow}"
                    );
                }
            }
        }
    }
}
