//! `NatLayer` decides inside one service (`NatService`); the same layers composed one by one
//! must give the same answers: status, headers and body bytes, request after request, for
//! every refusal the stack makes and for the requests it lets through. Run with stores that
//! answer at once (in memory) and with stores that answer later (as Redis and PostgreSQL
//! do), so every wait of the engine is compared too.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::{Layer, ServiceBuilder};
use tower_nat::{
    NatLayer,
    auth::{ApiKeyAuthLayer, KeyStore, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    concurrency::{ConcurrentScansLayer, MemorySlotStore, SlotStore},
    envelope::ErrorEnvelopeLayer,
    feature_gate::FeatureGateLayer,
    internal_error::InternalErrorGuardLayer,
    plan::{Plan, Plans},
    quota::{MemoryQuotaStore, QuotaGuardLayer, QuotaStore},
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateStore},
    scan_request::ValidateScanRequestLayer,
};

use crate::common::{handler, send, stores::Later};

fn request(
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn one_service_answers_as_the_layers_one_by_one() {
    compare(
        |keys| keys,
        || {
            (
                MemoryRateStore::new(),
                MemoryQuotaStore::new(),
                MemorySlotStore::new(),
            )
        },
    )
    .await;
}

#[tokio::test]
async fn one_service_answers_as_the_layers_one_by_one_with_stores_that_answer_later() {
    compare(Later, || {
        (
            Later(MemoryRateStore::new()),
            Later(MemoryQuotaStore::new()),
            Later(MemorySlotStore::new()),
        )
    })
    .await;
}

/// The stack and the layers one by one, each with its own stores from `stores` and the key
/// store `keys` makes, request after request.
async fn compare<K, R, Q, C>(keys: impl Fn(MemoryKeyStore) -> K, stores: impl Fn() -> (R, Q, C))
where
    K: KeyStore,
    R: RateStore,
    Q: QuotaStore,
    C: SlotStore,
{
    // Free: 8 requests a minute, 2 functional scans a month, one scan at a time.
    let plans = Arc::new(
        Plans::from_json(
            r#"{"plans": {"free": {"requests_per_minute": 8, "functional_scans_per_month": 2}}}"#,
        )
        .unwrap(),
    );
    let memory = MemoryKeyStore::new();
    memory.insert_tenant("acme", Plan::FREE).unwrap();
    let key = memory.issue_key("acme", None).unwrap().key;
    let key = key.expose().to_owned();
    let clock = FakeClock::at_date(UtcDate::new(2026, 2, 10).unwrap());
    let shared = || Arc::new(clock.clone());

    let (rates, quotas, slots) = stores();
    let fused = NatLayer::new(keys(memory.clone()))
        .with_rate_store(rates)
        .with_quota_store(quotas)
        .with_slot_store(slots)
        .plans(plans.clone())
        .clock(shared())
        .billing(BillingConfiguredLayer::new(false))
        .exempt("/healthz")
        .layer(handler());
    let (rates, quotas, slots) = stores();
    let layered = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(InternalErrorGuardLayer::new())
        .layer(BillingConfiguredLayer::new(false))
        .layer(
            ApiKeyAuthLayer::new(keys(memory))
                .clock(shared())
                .exempt("/healthz"),
        )
        .layer(
            PlanRateLimitLayer::new(plans.clone())
                .with_store(rates)
                .clock(shared()),
        )
        .layer(ValidateScanRequestLayer::new())
        .layer(FeatureGateLayer::scans(plans.clone()))
        .layer(
            ConcurrentScansLayer::new(plans.clone())
                .with_store(slots)
                .clock(shared()),
        )
        .layer(
            QuotaGuardLayer::new(plans)
                .with_store(quotas)
                .clock(shared()),
        )
        .service(handler());

    let k = Some(key.as_str());
    let scan = r#"{"url":"https://example.com","mode":"functional"}"#;
    let steps: Vec<(&str, &str, Option<&str>, &'static str)> = vec![
        ("GET", "/api/v1/scans", k, ""),                         // 200
        ("POST", "/api/v1/scan", k, scan),                       // 202
        ("POST", "/api/v1/scan", k, r#"{"mode":"functional"}"#), // 400
        (
            "POST",
            "/api/v1/scan",
            k,
            r#"{"url":"https://e.com","mode":"security"}"#,
        ), // 403
        ("POST", "/api/v1/scan", k, scan),                       // 202
        ("POST", "/api/v1/scan", k, scan),                       // 402
        ("GET", "/api/v1/scans", None, ""),                      // 401
        (
            "GET",
            "/api/v1/scans",
            Some("nat_pk_not_a_real_key_at_all_00000"),
            "",
        ), // 401
        ("POST", "/api/v1/billing/checkout", k, ""),             // 503
        ("GET", "/healthz", None, ""),                           // exempt
        ("GET", "/api/v1/scans", k, ""),                         // 200 (7th)
        ("GET", "/api/v1/scans", k, ""),                         // 200 (8th)
        ("GET", "/api/v1/scans", k, ""),                         // 429 from here
        ("POST", "/api/v1/scan", k, scan),
    ];
    let mut statuses = Vec::new();
    for (i, (method, path, key, body)) in steps.iter().enumerate() {
        let one = send(&fused, request(method, path, *key, body)).await;
        let other = send(&layered, request(method, path, *key, body)).await;
        assert_eq!(one.0, other.0, "step {i}: status");
        assert_eq!(one.1, other.1, "step {i}: headers");
        assert_eq!(one.2, other.2, "step {i}: body");
        statuses.push(one.0.as_u16());
    }
    assert_eq!(
        statuses,
        [
            200, 202, 400, 403, 202, 402, 401, 401, 503, 200, 200, 200, 429, 429
        ]
    );
    // A minute on, both admit again, with the same headers.
    clock.advance(Duration::from_secs(60));
    let one = send(&fused, request("GET", "/api/v1/scans", k, "")).await;
    let other = send(&layered, request("GET", "/api/v1/scans", k, "")).await;
    assert_eq!((one.0, &one.1, &one.2), (other.0, &other.1, &other.2));
    assert_eq!(one.0, 200);
}
