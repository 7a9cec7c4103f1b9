//! Shadow mode: each layer, and the whole stack, decides as usual, reports what it would have
//! refused, and lets every request through untouched (no refusal, no rate-limit headers, no
//! quota charge).

use std::sync::Arc;

use tower::{Layer, ServiceBuilder};
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Allowance, LimitOverrides, Plan, Plans},
    quota::QuotaGuardLayer,
    rate_limit::PlanRateLimitLayer,
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

use crate::common::{Counted, empty, get, plain, scan, send, tenant};

fn limited(plan: Plan, overrides: LimitOverrides) -> Tenant {
    let mut t = tenant("acme", plan);
    t.set_overrides(overrides);
    t
}

#[tokio::test]
async fn the_rate_limit_in_shadow_mode_sends_no_headers_and_refuses_nothing() {
    let handler = Counted::default();
    let clock = Arc::new(FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap()));
    let one = LimitOverrides {
        requests_per_minute: Some(1),
        ..LimitOverrides::default()
    };
    let t = limited(Plan::PRO, one);
    for shadow in [false, true] {
        let layer = PlanRateLimitLayer::new(Plans::default())
            .clock(clock.clone())
            .shadow(shadow);
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(handler.service());
        let first = send(&service, plain(&t, "/")).await;
        let second = send(&service, plain(&t, "/")).await;
        assert_eq!(first.0, 200);
        if shadow {
            assert_eq!(second.0, 200);
            assert_eq!(second.2, "ok");
            assert!(first.1.get("x-ratelimit-limit").is_none());
            assert!(second.1.get("x-ratelimit-remaining").is_none());
        } else {
            assert_eq!(second.0, 429);
            assert_eq!(first.1["x-ratelimit-limit"], "1");
        }
    }
    assert_eq!(handler.calls(), 1 + 2);
}

#[tokio::test]
async fn the_quota_in_shadow_mode_charges_nothing() {
    let clock = Arc::new(FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap()));
    let one = LimitOverrides {
        functional_scans_per_month: Some(Allowance::Limited(1)),
        ..LimitOverrides::default()
    };
    let t = limited(Plan::PRO, one);
    let quota = QuotaGuardLayer::new(Plans::default())
        .clock(clock)
        .shadow(true);
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(crate::common::handler());
    for _ in 0..3 {
        let reply = send(&service, scan(&t, "functional", None)).await;
        assert_eq!(reply.0, 202);
        assert_eq!(reply.2, "ok");
    }
    assert_eq!(quota.usage(&t).await.unwrap().scans_used, 0);
}

#[tokio::test]
async fn billing_and_validation_in_shadow_mode_let_requests_through() {
    let handler = Counted::default();
    let billing = BillingConfiguredLayer::new(false).shadow(true);
    let service = billing.layer(handler.service());
    let reply = send(&service, empty(get("/api/v1/billing/checkout"))).await;
    assert_eq!((reply.0.as_u16(), &reply.2[..]), (200, &b"ok"[..]));

    let validation = ValidateScanRequestLayer::new().shadow(true);
    let service = validation.layer(handler.service());
    let t = tenant("acme", Plan::PRO);
    let mut bad = scan(&t, "functional", None);
    *bad.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{"));
    assert_eq!(send(&service, bad).await.0, 200);
    assert_eq!(handler.calls(), 2);
}

#[tokio::test]
async fn the_whole_stack_in_shadow_mode_reaches_the_server_every_time() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    let key = keys.issue_key("free", None).unwrap().key;
    let handler = Counted::default();
    let nat = NatLayer::new(keys).shadow(true);
    let service = nat.layer(handler.service());
    let requests = vec![
        empty(get("/api/v1/usage")),
        empty(get("/api/v1/usage").header("x-api-key", key.expose())),
        http::Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"url":"https://a.example","mode":"security"}"#,
            )))
            .unwrap(),
        empty(get("/api/v1/billing/checkout").header("x-api-key", key.expose())),
    ];
    for req in requests {
        let reply = send(&service, req).await;
        assert_eq!(reply.0, 200);
        assert_eq!(reply.2, "ok");
        assert!(reply.1.get("x-ratelimit-limit").is_none());
    }
    assert_eq!(handler.calls(), 4);
}

#[tokio::test]
async fn auth_the_feature_gate_and_the_concurrency_limit_in_shadow_mode() {
    use tower_nat::{
        auth::{ApiKeyAuthLayer, MemoryKeyStore},
        concurrency::ConcurrentScansLayer,
        feature_gate::FeatureGateLayer,
    };
    let handler = Counted::default();

    // Auth: no key reaches the server, without a tenant.
    let auth = ApiKeyAuthLayer::new(MemoryKeyStore::new()).shadow(true);
    let service = auth.layer(handler.service());
    let reply = send(&service, empty(get("/api/v1/usage"))).await;
    assert_eq!((reply.0.as_u16(), &reply.2[..]), (200, &b"ok"[..]));

    // The feature gate: a security scan on Free reaches the server.
    let gate = FeatureGateLayer::scans(Plans::default()).shadow(true);
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(gate)
        .service(handler.service());
    let free = tenant("acme", Plan::FREE);
    assert_eq!(send(&service, scan(&free, "security", None)).await.0, 200);

    // Concurrency: Free runs one scan at a time; in shadow mode every creation passes, the
    // first holds the slot (running scans are still counted) and the others run without.
    let slots = ConcurrentScansLayer::new(Plans::default()).shadow(true);
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(slots.clone())
        .service(crate::common::handler());
    for _ in 0..3 {
        let mut req = scan(&free, "functional", None);
        req.headers_mut()
            .insert("x-slot", http::HeaderValue::from_static("keep"));
        assert_eq!(send(&service, req).await.0, 202);
    }
    assert_eq!(slots.running(free.id()).await.unwrap(), 1);
    assert_eq!(handler.calls(), 2);
}
