//! gRPC answers: every refusal to a gRPC request through `NatLayer` is a trailers-only gRPC
//! status with the envelope's message and the NAT code as metadata; REST requests to the
//! same stack get JSON, and both share the tenant's rate limit and quota.

use std::sync::Arc;

use http::{HeaderMap, Request};
use tower::{Layer, ServiceBuilder};
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    grpc::{ErrorFormat, ErrorFormatLayer},
    plan::{Allowance, LimitOverrides, Plan, Plans},
    scan_request::ValidateScanRequestLayer,
};

use crate::common::{UNAUTHORIZED, assert_envelope, handler, send};

fn grpc(path: &str, key: Option<&str>) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = Request::post(path).header("content-type", "application/grpc+proto");
    if let Some(key) = key {
        b = b.header("x-api-key", key);
    }
    // A protobuf frame the stack must not read.
    b.body(http_body_util::Full::new(bytes::Bytes::from_static(
        b"\0\0\0\0\x02\x08\x01",
    )))
    .unwrap()
}

/// Asserts a trailers-only gRPC status: HTTP 200, no body, the status, message and code.
fn assert_status(
    got: &(http::StatusCode, HeaderMap, bytes::Bytes),
    code: &str,
    message: &str,
    nat: &str,
) {
    assert_eq!(got.0, 200);
    assert_eq!(got.1["content-type"], "application/grpc");
    assert_eq!(got.1["grpc-status"], code, "{:?}", got.1);
    assert_eq!(got.1["grpc-message"], message);
    assert_eq!(got.1["x-nat-error"], nat);
    assert!(got.2.is_empty());
}

#[tokio::test]
async fn every_refusal_is_a_grpc_status_and_rest_shares_the_limits() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE);
    keys.set_overrides(
        "free",
        LimitOverrides {
            requests_per_minute: Some(6),
            functional_scans_per_month: Some(Allowance::Limited(1)),
            concurrent_scans: Some(5),
            ..LimitOverrides::default()
        },
    );
    let key = keys.issue_key("free", None).unwrap().key;
    let k = Some(key.expose());
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    let nat = NatLayer::new(keys).clock(Arc::new(clock));
    // The scan method gets its meaning by placement; REST scans by path.
    use axum::routing::{get, post};
    let service = axum::Router::new()
        .route(
            "/nat.v1.Scans/Create",
            post(crate::common::instant_scan).route_layer(nat.scan_creation()),
        )
        .route("/nat.v1.Usage/Get", post(|| async { "" }))
        .route("/api/v1/usage", get(|| async { "{}" }))
        .route("/api/v1/scan", post(crate::common::instant_scan))
        .layer(nat);

    let none = send(&service, grpc("/nat.v1.Usage/Get", None)).await;
    assert_status(&none, "16", "Missing or invalid API key.", "UNAUTHORIZED");
    // REST on the same stack: JSON.
    let rest = send(
        &service,
        Request::get("/api/v1/usage")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_envelope(&rest, 401, UNAUTHORIZED);

    // A scan over gRPC (its body never read) is charged: the second hits the quota.
    let ok = send(&service, grpc("/nat.v1.Scans/Create", k)).await;
    assert_eq!(ok.0, 202, "{:?}", ok.1);
    let quota = send(&service, grpc("/nat.v1.Scans/Create", k)).await;
    assert_status(
        &quota,
        "8",
        "Monthly scan quota exhausted. Quota resets on 2026-04-01.",
        "QUOTA_EXCEEDED",
    );
    assert_eq!(quota.1["x-nat-quota-reset"], "2026-04-01T00:00:00Z");
    // The same quota over REST.
    let rest = send(
        &service,
        Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"url":"https://a.example"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(rest.0, 402);

    // Six requests a minute in all, gRPC and REST together: three so far (202, 402, 402),
    // three more, then RESOURCE_EXHAUSTED with its metadata.
    for _ in 0..3 {
        assert_eq!(send(&service, grpc("/nat.v1.Usage/Get", k)).await.0, 200);
    }
    let limited = send(&service, grpc("/nat.v1.Usage/Get", k)).await;
    assert_status(
        &limited,
        "8",
        "Rate limit exceeded. Retry after 10 seconds.",
        "RATE_LIMITED",
    );
    assert_eq!(limited.1["retry-after"], "10");
    assert_eq!(limited.1["x-ratelimit-limit"], "6");
    assert_eq!(limited.1["x-ratelimit-remaining"], "0");
}

#[tokio::test]
async fn the_format_can_be_forced_and_every_code_maps() {
    let plans = Arc::new(Plans::default());
    // Billing (503 → 14) and a feature gate (403 → 7), forced to gRPC for a JSON request.
    let service = ServiceBuilder::new()
        .layer(ErrorFormatLayer::new(ErrorFormat::Grpc))
        .layer(BillingConfiguredLayer::new(false))
        .service(handler());
    let req = Request::post("/api/v1/billing/checkout")
        .body(Default::default())
        .unwrap();
    let got = send(&service, req).await;
    assert_status(
        &got,
        "14",
        "Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET.",
        "STRIPE_NOT_CONFIGURED",
    );
    let gate = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(tower_nat::feature_gate::FeatureGateLayer::scans(plans))
        .service(handler());
    let free = crate::common::tenant("t", Plan::FREE);
    let mut req = grpc("/api/v1/scan", None);
    req.extensions_mut().insert(free);
    req.extensions_mut()
        .insert(tower_nat::plan::ScanKind::Security);
    let got = send(&gate, req).await;
    assert_status(
        &got,
        "7",
        "Security scanning is not available on the Free plan. Upgrade to access.",
        "FEATURE_NOT_AVAILABLE",
    );
    // And forced to JSON for a gRPC request.
    let json = ServiceBuilder::new()
        .layer(ErrorFormatLayer::new(ErrorFormat::Json))
        .layer(BillingConfiguredLayer::new(false))
        .service(handler());
    let got = send(&json, grpc("/api/v1/billing/checkout", None)).await;
    assert_eq!(got.0, 503);
    // A handler's panic behind the stack is INTERNAL (13) for gRPC.
    let nat = NatLayer::new(MemoryKeyStore::new()).exempt("/boom");
    let service = nat.layer(handler());
    let mut req = grpc("/boom", None);
    req.headers_mut()
        .insert("x-outcome", http::HeaderValue::from_static("panic"));
    let got = send(&service, req).await;
    assert_status(
        &got,
        "13",
        "An unexpected error occurred. Retry after a short delay.",
        "INTERNAL_ERROR",
    );
}
