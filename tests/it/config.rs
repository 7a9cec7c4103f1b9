//! Configuration: builders never panic, also after a clone (and a clone keeps its own
//! configuration); scan routes add up; the usage handle names no store.

use std::sync::Arc;

use http::Method;
use tower::ServiceBuilder;
use tower_nat::{
    NatLayer,
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
    quota::{QuotaGuardLayer, UsageReader},
    rate_limit::PlanRateLimitLayer,
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

use crate::common::{
    Counted, UNAUTHORIZED, assert_envelope, empty, get, handler, invalid, plain, scan, send, tenant,
};

#[tokio::test]
async fn layers_are_configured_after_a_clone_and_clones_keep_theirs() {
    let counted = Counted::default();
    let auth = ApiKeyAuthLayer::new(MemoryKeyStore::new());
    let kept = auth.clone();
    let auth = auth.exempt("/healthz");
    let open = ServiceBuilder::new().layer(auth).service(counted.service());
    let closed = ServiceBuilder::new().layer(kept).service(counted.service());
    assert_eq!(send(&open, empty(get("/healthz"))).await.0, 200);
    assert_envelope(
        &send(&closed, empty(get("/healthz"))).await,
        401,
        UNAUTHORIZED,
    );

    // The server keeps a clone for usage queries, then sets the clock: no panic, and the
    // clone reads the period of its own clock.
    let plans = Arc::new(Plans::default());
    let quota = QuotaGuardLayer::new(plans.clone());
    let for_usage = quota.clone();
    let clock = FakeClock::at_date(UtcDate::new(2030, 5, 9).unwrap());
    let quota = quota.clock(Arc::new(clock));
    let t = tenant("t", Plan::FREE);
    assert_eq!(
        quota.usage(&t).await.unwrap().period_start,
        "2030-05-01T00:00:00Z"
    );
    assert_ne!(
        for_usage.usage(&t).await.unwrap().period_start,
        "2030-05-01T00:00:00Z"
    );

    let rate = PlanRateLimitLayer::new(plans);
    let plain_headers = rate.clone();
    let rate = rate.draft_headers(true);
    let with = ServiceBuilder::new().layer(rate).service(handler());
    let without = ServiceBuilder::new()
        .layer(plain_headers)
        .service(handler());
    let got = send(&with, plain(&t, "/x")).await;
    assert_eq!(got.1["ratelimit-policy"], "\"default\";q=30;w=60");
    let got = send(&without, plain(&t, "/x")).await;
    assert!(got.1.get("ratelimit-policy").is_none());
}

#[tokio::test]
async fn scan_routes_add_up() {
    let validation = ValidateScanRequestLayer::new();
    let default = validation.clone();
    let both = validation
        .route(Method::POST, "/api/v1/scan")
        .route(Method::POST, "/v2/scan");
    let svc = ServiceBuilder::new().layer(both).service(handler());
    let t = tenant("t", Plan::PRO);
    let at = |path: &str| {
        let mut req = scan(&t, "functional", None);
        *req.uri_mut() = path.parse().unwrap();
        *req.body_mut() = "[]".into();
        req
    };
    for path in ["/api/v1/scan", "/v2/scan"] {
        assert_envelope(
            &send(&svc, at(path)).await,
            400,
            &invalid("Request body must be a JSON object."),
        );
    }
    assert_eq!(send(&svc, at("/v3/scan")).await.0, 202);
    // One route of its own replaces the default.
    let own = ServiceBuilder::new()
        .layer(default.clone().route(Method::PUT, "/scans"))
        .service(handler());
    assert_eq!(send(&own, at("/api/v1/scan")).await.0, 202);
    let mut put = at("/scans");
    *put.method_mut() = Method::PUT;
    assert_eq!(send(&own, put).await.0, 400);
}

/// The usage handle's type names no store: it fits a field of a plain struct.
struct AppState {
    usage: UsageReader,
}

#[tokio::test]
async fn the_usage_handle_reads_what_the_layer_reads() {
    let plans = Arc::new(Plans::default());
    let nat = NatLayer::new(MemoryKeyStore::new()).plans(plans.clone());
    assert!(Arc::ptr_eq(&nat.plan_table(), &plans));
    let state = AppState {
        usage: nat.usage_reader(),
    };
    let t = Tenant::new("t", Plan::TEAM, "k");
    let svc = ServiceBuilder::new()
        .layer(nat.scan_creation())
        .service(handler());
    assert_eq!(send(&svc, scan(&t, "full", None)).await.0, 202);
    let from_handle = state.usage.clone().usage(&t).await.unwrap();
    assert_eq!(from_handle, nat.usage(&t).await.unwrap());
    assert_eq!(
        (from_handle.scans_used, from_handle.security_scan_count),
        (1, 1)
    );
}
