//! `/openapi.json` is OpenAPI 3.1 and describes exactly what the router serves: every route it
//! serves is in the document with its methods, every operation in the document is served.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// A concrete path for a template: every parameter an id that exists nowhere.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "nothing-here"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_document_describes_every_route_the_router_serves_and_no_other() {
    let app = spawn_app(Backend::Embedded).await;
    let answer = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let document = answer.body;
    assert_eq!(document["openapi"], "3.1.0");
    let documented = documented(&document);
    let (served, internal) = holdfast_server::api::served_routes();
    let served: BTreeSet<_> = served.into_iter().collect();
    let public: BTreeSet<_> = served
        .difference(&internal.into_iter().collect())
        .cloned()
        .collect();
    let undocumented: Vec<_> = public.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&public).collect();
    assert!(
        undocumented.is_empty(),
        "served, not in the document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in the document, not served: {unserved:?}"
    );

    // And the router really answers each of them: never with "no such endpoint" or "method
    // not allowed" (the list of served routes is written beside each route; this checks it).
    for (method, path) in &public {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), format!("{}{}", app.base, concrete(path)))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !(status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && code == "not_found")),
            "{method} {path}: {status} {body}"
        );
    }
}

/// Every schema the document names is in it, and every operation answers errors in the
/// documented error format.
#[tokio::test]
async fn every_reference_resolves_and_errors_have_one_shape() {
    let app = spawn_app(Backend::Embedded).await;
    let document = app
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let text = document.to_string();
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "{name} is referred to but missing"
        );
    }
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let public_page = path.starts_with("/dashboard") || path == "/openapi.json";
            let operations_page = path == "/health" || path == "/metrics";
            if !(public_page || operations_page) {
                assert!(
                    responses.contains_key("default"),
                    "{method} {path} documents its errors"
                );
            }
        }
    }
}
