//! The demo's OpenAPI document against what its stack sends: for every documented error, the
//! example is the body byte for byte and the documented headers are the headers sent.

use std::{collections::BTreeSet, time::Duration};

use axum::{Router, body::Body, routing::get};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use nat_demo::Demo;
use serde_json::Value;
use tower::ServiceExt;
use tower_nat::{
    auth::ApiKey,
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
};

/// The demo in January 2025 (the 402 example's reset date is 2025-02-01), with Pro allowed
/// one functional scan (to reach its 402 in one step).
fn demo() -> (Demo, FakeClock) {
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 15).unwrap());
    let plans =
        Plans::from_json(r#"{"plans": {"pro": {"functional_scans_per_month": 1}}}"#).unwrap();
    let demo = Demo::new(
        plans,
        std::sync::Arc::new(clock.clone()),
        BillingConfiguredLayer::new(false),
        [None, None, None, None],
        Duration::from_secs(3600),
    );
    (demo, clock)
}

struct Sent {
    status: StatusCode,
    headers: BTreeSet<String>,
    body: Vec<u8>,
}

async fn send(app: &Router, method: Method, path: &str, key: Option<&ApiKey>, body: &str) -> Sent {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header("x-api-key", key.expose());
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        // The body's own headers are the envelope's, not the error's.
        .filter(|k| k != "content-type" && k != "content-length")
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Sent {
        status,
        headers,
        body,
    }
}

/// The statuses documented on `method` `path`, in order.
fn statuses(doc: &Value, path: &str, method: &str) -> Vec<String> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// The documented response of `method` `path` for `status`.
fn documented<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} documents no {status}"
    );
    response
}

/// Asserts that `sent` is the documented example `example` of `status` on `method` `path`.
fn assert_documented(doc: &Value, path: &str, method: &str, example: &str, sent: &Sent) {
    let response = documented(doc, path, method, sent.status.as_u16());
    let content = &response["content"]["application/json"];
    assert_eq!(content["schema"]["$ref"], "#/components/schemas/NatError");
    let documented = &content["examples"][example];
    assert!(
        documented.is_object(),
        "{method} {path}: no example {example}"
    );
    let body = String::from_utf8(sent.body.clone()).unwrap();
    assert_eq!(
        documented["description"],
        format!("The body, byte for byte: `{body}`"),
        "{method} {path} {example}"
    );
    let value: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(documented["value"], value);
    let headers: BTreeSet<String> = response["headers"]
        .as_object()
        .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default();
    assert_eq!(headers, sent.headers, "{method} {path} {example}");
}

#[tokio::test]
async fn every_documented_error_is_what_the_stack_sends() {
    let (demo, _clock) = demo();
    let app = demo.router(demo.nat());
    let doc = send(&app, Method::GET, "/openapi.json", None, "").await;
    assert_eq!(doc.status, 200);
    let doc: Value = serde_json::from_slice(&doc.body).unwrap();
    let free = demo.key(&Plan::FREE).unwrap();
    let pro = demo.key(&Plan::PRO).unwrap();

    let sent = send(&app, Method::GET, "/api/v1/usage", None, "").await;
    assert_documented(&doc, "/api/v1/usage", "get", "unauthorized", &sent);

    let sent = send(&app, Method::POST, "/api/v1/scan", Some(pro), "{}").await;
    assert_eq!(sent.status, 400);
    assert_documented(&doc, "/api/v1/scan", "post", "missing_url", &sent);

    let security = r#"{"url":"https://example.com","mode":"security"}"#;
    let sent = send(&app, Method::POST, "/api/v1/scan", Some(free), security).await;
    assert_eq!(sent.status, 403);
    assert_documented(&doc, "/api/v1/scan", "post", "feature_not_available", &sent);

    let scan = r#"{"url":"https://example.com"}"#;
    let first = send(&app, Method::POST, "/api/v1/scan", Some(free), scan).await;
    assert_eq!(first.status, 202);
    let sent = send(&app, Method::POST, "/api/v1/scan", Some(free), scan).await;
    assert_eq!(sent.status, 429);
    assert_documented(&doc, "/api/v1/scan", "post", "scans_running", &sent);

    assert_eq!(
        send(&app, Method::POST, "/api/v1/scan", Some(pro), scan)
            .await
            .status,
        202
    );
    let sent = send(&app, Method::POST, "/api/v1/scan", Some(pro), scan).await;
    assert_eq!(sent.status, 402);
    assert_documented(&doc, "/api/v1/scan", "post", "quota_exceeded", &sent);

    let sent = send(&app, Method::GET, "/api/v1/scan/scan_0", Some(pro), "").await;
    assert_eq!(sent.status, 404);
    assert_documented(&doc, "/api/v1/scan/{id}", "get", "not_found", &sent);

    let sent = send(
        &app,
        Method::POST,
        "/api/v1/billing/checkout",
        Some(pro),
        "{}",
    )
    .await;
    assert_eq!(sent.status, 503);
    assert_documented(
        &doc,
        "/api/v1/billing/checkout",
        "post",
        "stripe_not_configured",
        &sent,
    );

    // Free's 30 requests a minute: the clock stands still, so the 31st of this minute (three
    // were spent above) is the documented 429.
    let mut sent = send(&app, Method::GET, "/api/v1/scans", Some(free), "").await;
    while sent.status == 200 {
        sent = send(&app, Method::GET, "/api/v1/scans", Some(free), "").await;
    }
    assert_eq!(sent.status, 429);
    assert_documented(&doc, "/api/v1/scans", "get", "rate_limited", &sent);

    // A panic behind the same stack is the documented 500.
    let boom: Router = Router::new()
        .route("/api/v1/boom", get(boom_handler))
        .layer(demo.nat());
    let sent = send(&boom, Method::GET, "/api/v1/boom", Some(pro), "").await;
    assert_eq!(sent.status, 500);
    assert_documented(&doc, "/api/v1/usage", "get", "internal_error", &sent);
}

#[tokio::test]
async fn each_operation_documents_what_the_stack_can_answer_to_it() {
    let (demo, _clock) = demo();
    let doc = nat_demo::openapi(&demo.nat());
    let doc: Value = serde_json::to_value(&doc).unwrap();
    assert_eq!(
        statuses(&doc, "/api/v1/scan", "post"),
        ["202", "400", "401", "402", "403", "429", "500"]
    );
    assert_eq!(
        statuses(&doc, "/api/v1/usage", "get"),
        ["200", "401", "429", "500"]
    );
    assert_eq!(
        statuses(&doc, "/api/v1/scan/{id}", "get"),
        ["200", "401", "404", "429", "500"]
    );
    assert_eq!(
        statuses(&doc, "/api/v1/billing/checkout", "post"),
        ["200", "400", "401", "429", "500", "503"]
    );
    // Exempt from keys, still behind the billing check.
    assert_eq!(
        statuses(&doc, "/api/v1/billing/webhook", "post"),
        ["200", "500", "503"]
    );
    assert_eq!(statuses(&doc, "/healthz", "get"), ["200", "500"]);
    assert!(doc["components"]["schemas"]["NatError"].is_object());
    // The key: required by every operation that is not exempt.
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    assert_eq!(
        doc["paths"]["/api/v1/usage"]["get"]["security"][0]["api_key"],
        serde_json::json!([])
    );
    assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    assert!(doc["paths"]["/api/v1/billing/webhook"]["post"]["security"].is_null());
    // Success responses behind the limiter carry its headers.
    let usage_200 = &doc["paths"]["/api/v1/usage"]["get"]["responses"]["200"]["headers"];
    assert!(
        usage_200["X-RateLimit-Limit"].is_object()
            && usage_200["X-RateLimit-Remaining"].is_object()
    );
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["200"]["headers"].is_null());
    // An exempt route never passes the limiter: no rate-limit headers on its errors.
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["500"]["headers"].is_null());
    assert!(
        doc["paths"]["/api/v1/billing/webhook"]["post"]["responses"]["503"]["headers"].is_null()
    );
    // A body's 400 that is not a scan's has no example: its message is the framework's.
    let checkout_400 = &doc["paths"]["/api/v1/billing/checkout"]["post"]["responses"]["400"];
    assert!(checkout_400["content"]["application/json"]["examples"].is_null());
    assert!(checkout_400["headers"]["X-RateLimit-Limit"].is_object());

    // Security scanning on every plan: no 403; billing configured: no 503.
    let all_secure = Plans::from_json(
        r#"{"plans": {"free": {"features": ["security_scanning"], "security_scans_per_month": 5}}}"#,
    )
    .unwrap();
    let nat = demo
        .nat()
        .plans(all_secure)
        .billing(BillingConfiguredLayer::new(true));
    let doc: Value = serde_json::to_value(nat_demo::openapi(&nat)).unwrap();
    assert_eq!(
        statuses(&doc, "/api/v1/scan", "post"),
        ["202", "400", "401", "402", "429", "500"]
    );
    assert_eq!(
        statuses(&doc, "/api/v1/billing/checkout", "post"),
        ["200", "400", "401", "429", "500"]
    );
    // No finite quota on any plan: no 402.
    let unlimited = Plans::from_json(
        r#"{"plans": {"free": {"functional_scans_per_month": "unlimited"}, "pro": {"functional_scans_per_month": "unlimited", "security_scans_per_month": "unlimited"}, "team": {"functional_scans_per_month": "unlimited", "security_scans_per_month": "unlimited"}}}"#,
    )
    .unwrap();
    let doc: Value = serde_json::to_value(nat_demo::openapi(&demo.nat().plans(unlimited))).unwrap();
    assert_eq!(
        statuses(&doc, "/api/v1/scan", "post"),
        ["202", "400", "401", "403", "429", "500"]
    );
    // A route's own gate added by hand; in shadow mode only what handlers answer stays.
    use tower_nat::openapi::{ErrorKind, ErrorSet};
    let extra: ErrorSet = [ErrorKind::FeatureNotAvailable, ErrorKind::NotFound]
        .into_iter()
        .collect();
    let errors = demo
        .nat()
        .openapi_errors()
        .add(Method::GET, "/api/v1/usage", extra);
    let set = errors.errors_for(&Method::GET, "/api/v1/usage", false);
    assert!(set.contains(ErrorKind::FeatureNotAvailable) && set.contains(ErrorKind::NotFound));
    let errors = demo
        .nat()
        .shadow(true)
        .openapi_errors()
        .add(Method::GET, "/api/v1/usage", extra);
    let set = errors.errors_for(&Method::GET, "/api/v1/usage", false);
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        [ErrorKind::NotFound, ErrorKind::Internal]
    );
    // Shadow mode: no refusal.
    let shadow: Value = serde_json::to_value(nat_demo::openapi(&demo.nat().shadow(true))).unwrap();
    assert_eq!(
        statuses(&shadow, "/api/v1/scan", "post"),
        ["202", "400", "500"]
    );
}

#[test]
fn paths_relative_to_a_server_prefix_are_classified_with_it() {
    use utoipa::openapi::{
        HttpMethod, OpenApiBuilder, PathItem, PathsBuilder, path::OperationBuilder,
    };
    let (demo, _clock) = demo();
    let relative = || {
        OpenApiBuilder::new()
            .paths(PathsBuilder::new().path(
                "/scan",
                PathItem::new(HttpMethod::Post, OperationBuilder::new()),
            ))
            .build()
    };
    let statuses = |doc: &utoipa::openapi::OpenApi| -> Vec<String> {
        doc.paths.paths["/scan"]
            .post
            .as_ref()
            .unwrap()
            .responses
            .responses
            .keys()
            .cloned()
            .collect()
    };
    let mut doc = relative();
    demo.nat().openapi_errors().apply(&mut doc);
    assert_eq!(statuses(&doc), ["401", "429", "500"]);
    let mut doc = relative();
    demo.nat()
        .openapi_errors()
        .base_path("/api/v1/")
        .apply(&mut doc);
    assert_eq!(statuses(&doc), ["400", "401", "402", "403", "429", "500"]);
}

#[tokio::test]
async fn the_draft_headers_are_documented_when_they_are_sent() {
    let (demo, _clock) = demo();
    let nat = demo.nat().draft_rate_limit_headers(true);
    let app = demo.router(nat);
    let doc = send(&app, Method::GET, "/openapi.json", None, "").await;
    let doc: Value = serde_json::from_slice(&doc.body).unwrap();
    let free = demo.key(&Plan::FREE).unwrap();
    let mut sent = send(&app, Method::GET, "/api/v1/scans", Some(free), "").await;
    while sent.status == 200 {
        sent = send(&app, Method::GET, "/api/v1/scans", Some(free), "").await;
    }
    assert_eq!(sent.status, 429);
    assert!(sent.headers.contains("ratelimit") && sent.headers.contains("ratelimit-policy"));
    assert_documented(&doc, "/api/v1/scans", "get", "rate_limited", &sent);
    let sent = send(
        &app,
        Method::GET,
        "/api/v1/scan/scan_0",
        Some(demo.key(&Plan::PRO).unwrap()),
        "",
    )
    .await;
    assert_documented(&doc, "/api/v1/scan/{id}", "get", "not_found", &sent);
}

async fn boom_handler() -> &'static str {
    panic!("boom")
}

#[tokio::test]
async fn the_documents_exemption_opens_nothing_else() {
    let (demo, _clock) = demo();
    let app = demo.router(demo.nat());
    for path in [
        "/openapi.json/../api/v1/usage",
        "/openapi.json/%2e%2e/api/v1/usage",
        "/openapi.json/",
        "/OPENAPI.JSON",
        "//openapi.json",
        "/api/v1/usage?/openapi.json",
        "/api/v1/usage#/openapi.json",
        "/api/v1/openapi.json",
    ] {
        let sent = send(&app, Method::GET, path, None, "").await;
        assert!(
            matches!(sent.status.as_u16(), 401 | 404),
            "{path}: {}",
            sent.status
        );
    }
    // Said to be gRPC, forwarded, or rewritten: the refusals in gRPC form (HTTP 200 with a
    // non-zero grpc-status), never the document's exemption applied elsewhere.
    for (method, path, grpc_status) in [
        (Method::POST, "/openapi.json", "12"),
        (Method::GET, "/api/v1/scans", "16"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-forwarded-for", "127.0.0.1")
            .header("content-type", "application/grpc")
            .header("x-original-url", "/openapi.json");
        let response = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], grpc_status, "{path}");
    }
}
