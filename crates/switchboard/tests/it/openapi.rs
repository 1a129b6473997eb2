//! `GET /openapi.json` (DESIGN §12): the served document is the committed `docs/openapi.json`,
//! and every operation it describes is served.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::TestApp;

const REFRESH: &str = "cargo run -- openapi > docs/openapi.json";

#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .expect("docs/openapi.json");
    assert!(
        served == committed,
        "docs/openapi.json is not what the server serves; refresh it with `{REFRESH}`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["webhooks"]["event"]["post"]["requestBody"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

/// Each operation of the document, on a concrete path, reaches a handler: without a key the
/// API answers 401 (the operations endpoints answer), never "no such route" nor 405.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn().await;
    let doc: Value = serde_json::from_str(switchboard::api::doc::document()).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{tenant}", "default")
            .replace("{id}", "x")
            .replace("{username}", "jdoe");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!body.contains("no such route"), "{method} {path}: {body}");
            if path.starts_with("/v1/") {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            }
            operations += 1;
        }
    }
    assert_eq!(operations, 54, "every operation of the API");
    // And what is not in the document is not served.
    let r = app.client.get(app.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
