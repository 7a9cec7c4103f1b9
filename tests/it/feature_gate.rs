//! FeatureGate alone and the composed order of SPEC section 2 in an axum router.

use std::sync::Arc;

use crate::common::SECURITY_ON_FREE;
use crate::common::{Counted, UNAUTHORIZED, assert_envelope, send};
use axum::{
    Router,
    body::Body,
    routing::{get, post},
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    feature_gate::FeatureGateLayer,
    internal_error::InternalErrorGuardLayer,
    plan::{Feature, Plan, Plans},
    quota::QuotaGuardLayer,
    rate_limit::PlanRateLimitLayer,
    scan_request::ValidateScanRequestLayer,
    tenant::{AuthExempt, Tenant},
};

fn scan(plan: &Plan, mode: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/api/v1/scan")
        .body(Full::new(Bytes::from(format!(
            r#"{{"url":"https://e.example","mode":"{mode}"}}"#
        ))))
        .unwrap();
    req.extensions_mut()
        .insert(Tenant::new("t", plan.clone(), "k"));
    req
}

#[tokio::test]
async fn scan_kinds_need_their_feature() {
    let handler = Counted::default();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(FeatureGateLayer::scans(Plans::default()))
        .service(handler.service());
    assert_envelope(
        &send(&svc, scan(&Plan::FREE, "security")).await,
        403,
        SECURITY_ON_FREE,
    );
    assert_envelope(
        &send(&svc, scan(&Plan::FREE, "full")).await,
        403,
        SECURITY_ON_FREE,
    );
    assert_eq!(handler.calls(), 0);
    assert_eq!(send(&svc, scan(&Plan::FREE, "functional")).await.0, 200);
    for plan in [Plan::PRO, Plan::TEAM, Plan::ENTERPRISE] {
        assert_eq!(send(&svc, scan(&plan, "security")).await.0, 200, "{plan}");
        assert_eq!(send(&svc, scan(&plan, "full")).await.0, 200, "{plan}");
    }
    assert_eq!(handler.calls(), 7);
    // A plan table can grant the feature to Free.
    let generous =
        Plans::from_json(r#"{"plans": {"free": {"features": ["security_scanning"]}}}"#).unwrap();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(FeatureGateLayer::scans(generous))
        .service(handler.service());
    assert_eq!(send(&svc, scan(&Plan::FREE, "security")).await.0, 200);
}

#[tokio::test]
async fn route_level_gate() {
    let handler = Counted::default();
    let svc = ServiceBuilder::new()
        .layer(FeatureGateLayer::require(
            Feature::WEBHOOKS,
            Plans::default(),
        ))
        .service(handler.service());
    let req = |plan: Option<Plan>| {
        let mut r = Request::post("/api/v1/webhooks")
            .body(Full::default())
            .unwrap();
        if let Some(p) = plan {
            r.extensions_mut().insert(Tenant::new("t", p, "k"));
        }
        r
    };
    for plan in [Plan::FREE, Plan::PRO] {
        assert_envelope(
            &send(&svc, req(Some(plan.clone()))).await,
            403,
            &format!(
                r#"{{"error":"FEATURE_NOT_AVAILABLE","message":"Webhooks is not available on the {} plan. Upgrade to access.","feature":"webhooks","plan":"{}"}}"#,
                plan.display_name(),
                plan.name()
            ),
        );
    }
    assert_eq!(send(&svc, req(Some(Plan::TEAM))).await.0, 200);
    assert_eq!(send(&svc, req(Some(Plan::ENTERPRISE))).await.0, 200);
    assert_envelope(&send(&svc, req(None)).await, 401, UNAUTHORIZED);
    let mut exempt = req(None);
    exempt.extensions_mut().insert(AuthExempt);
    assert_eq!(send(&svc, exempt).await.0, 200);
    assert_eq!(handler.calls(), 3);
}

/// The whole stack in SPEC order in an axum router, with the Free plan's quota at 1.
#[tokio::test]
async fn composed_order_403_before_402_and_429_before_the_quota() {
    let plans = Arc::new(
        Plans::from_json(
            r#"{"plans": {"free": {"functional_scans_per_month": 1, "requests_per_minute": 5}}}"#,
        )
        .unwrap(),
    );
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 10).unwrap());
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::FREE).unwrap();
    let key = keys.issue_key("acme", None).unwrap().key;
    let quota = QuotaGuardLayer::new(plans.clone()).clock(Arc::new(clock.clone()));
    let router = Router::new()
        .route(
            "/api/v1/scan",
            post(|| async { (StatusCode::ACCEPTED, "{}") }),
        )
        .route("/api/v1/billing/webhook", post(|| async { "hook" }))
        .route("/healthz", get(|| async { "up" }))
        .layer(quota.clone())
        .layer(FeatureGateLayer::scans(plans.clone()))
        .layer(ValidateScanRequestLayer::new())
        .layer(PlanRateLimitLayer::new(plans.clone()).clock(Arc::new(clock.clone())))
        .layer(
            ApiKeyAuthLayer::new(keys)
                .exempt("/healthz")
                .exempt("/api/v1/billing/webhook"),
        )
        .layer(BillingConfiguredLayer::new(false))
        .layer(InternalErrorGuardLayer::new());
    let call = |req: Request<Body>| {
        let router = router.clone();
        async move {
            let response = router.oneshot(req).await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            (
                status,
                headers,
                response.into_body().collect().await.unwrap().to_bytes(),
            )
        }
    };
    let scan = |mode: &str| {
        Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .header("content-type", "application/json")
            .body(Body::from(format!(
                r#"{{"url":"https://e.example","mode":"{mode}"}}"#
            )))
            .unwrap()
    };
    // Use the one functional scan, then: security on Free with no quota left is 403, not 402.
    assert_eq!(call(scan("functional")).await.0, 202);
    let got = call(scan("functional")).await;
    assert_eq!(got.0, 402);
    let got = call(scan("security")).await;
    assert_eq!(
        (got.0, std::str::from_utf8(&got.2).unwrap()),
        (403, SECURITY_ON_FREE)
    );
    assert_eq!(
        got.1["x-ratelimit-remaining"], "2",
        "passed the limiter, so it has the headers"
    );
    // A malformed body is 400 before the feature gate and the quota.
    let bad = Request::post("/api/v1/scan")
        .header("x-api-key", key.expose())
        .body(Body::from("{"))
        .unwrap();
    assert_eq!(call(bad).await.0, 400);
    // The fifth request a minute uses the last of the limit; the sixth is 429 and never
    // reaches the quota.
    assert_eq!(call(scan("functional")).await.0, 402);
    let got = call(scan("functional")).await;
    assert_eq!(got.0, 429);
    assert_eq!(got.1["retry-after"], "12");
    assert_eq!(
        quota
            .usage(&Tenant::new("acme", Plan::FREE, "k"))
            .await
            .unwrap()
            .scans_used,
        1
    );
    // Exempt routes are not rate limited and need no key; the webhook is 503 while billing is off.
    assert_eq!(
        &call(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .2[..],
        b"up"
    );
    let hook = call(
        Request::post("/api/v1/billing/webhook")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(hook.0, 503);
    assert_eq!(
        call(Request::get("/api/v1/scans").body(Body::empty()).unwrap())
            .await
            .0,
        401
    );
}
