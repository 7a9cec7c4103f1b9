//! End to end: the demo server (the `nat-demo` crate, as `cargo run --example server` runs
//! it) on an ephemeral loopback port, spoken to over real HTTP by a real client. Every code of
//! the contract, with exact bytes and headers.

use std::{ops::Deref, sync::Arc, time::Duration};

use axum::{Router, routing::get};
use http::Method;
use nat_demo::Demo;
use tower_nat::{
    auth::ApiKey,
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
};

use crate::common::{STRIPE, UNAUTHORIZED, wire::Wire};

struct Running {
    wire: Wire,
    keys: Vec<(Plan, ApiKey)>,
    clock: FakeClock,
}

impl Deref for Running {
    type Target = Wire;
    fn deref(&self) -> &Wire {
        &self.wire
    }
}

impl Running {
    fn key(&self, plan: Plan) -> &str {
        self.keys
            .iter()
            .find(|(p, _)| *p == plan)
            .unwrap()
            .1
            .expose()
    }
}

async fn demo(billing: BillingConfiguredLayer) -> Running {
    let plans = Plans::from_json(
        r#"{"plans": {"free": {"requests_per_minute": 8, "functional_scans_per_month": 2}}}"#,
    )
    .unwrap();
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap());
    let fixed_free = ApiKey::parse("nat_pk_FreeFreeFreeFreeFreeFreeFree0000").unwrap();
    let demo = Demo::new(
        plans,
        Arc::new(clock.clone()),
        billing,
        [Some(fixed_free), None, None, None],
        Duration::from_secs(3),
    );
    let wire = Wire::start(demo.router(demo.nat())).await;
    Running {
        wire,
        keys: demo.keys,
        clock,
    }
}

#[tokio::test]
async fn every_code_over_the_wire() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let free = s.key(Plan::FREE).to_owned();
    assert_eq!(
        free, "nat_pk_FreeFreeFreeFreeFreeFreeFree0000",
        "NAT_DEMO_KEY_* style fixed key"
    );

    // 200: usage.
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    a.assert_envelope(
        200,
        r#"{"tenant_id":"demo-free","plan":"free","scans_used":0,"scans_limit":2,"security_scan_count":0,"monthly_security_scan_quota":0,"approaching_limit":false,"quota_reset_date":"2025-02-01T00:00:00Z","period_start":"2025-01-01T00:00:00Z","period_end":"2025-01-31T23:59:59Z"}"#,
    );
    assert_eq!(a.headers["x-ratelimit-limit"], "8");
    assert_eq!(a.headers["x-ratelimit-remaining"], "7");

    // 401: no key, a bad key, Bearer.
    s.call(Method::GET, "/api/v1/usage", None, None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
    s.call(Method::GET, "/api/v1/usage", Some("nat_pk_nope"), None)
        .await
        .assert_envelope(401, UNAUTHORIZED);

    // 400: malformed and incomplete scan bodies.
    let a = s
        .call(Method::POST, "/api/v1/scan", Some(&free), Some("{"))
        .await;
    a.assert_envelope(
        400,
        r#"{"error":"INVALID_REQUEST","message":"Malformed JSON in request body."}"#,
    );
    assert_eq!(a.headers["x-ratelimit-remaining"], "6");
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"mode":"functional"}"#),
        )
        .await;
    a.assert_envelope(
        400,
        r#"{"error":"INVALID_REQUEST","message":"Missing required field: url."}"#,
    );

    // 403: security scans on Free.
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"url":"https://e.example","mode":"security"}"#),
        )
        .await;
    a.assert_envelope(
        403,
        r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Security scanning is not available on the Free plan. Upgrade to access.","feature":"security_scanning","plan":"free"}"#,
    );

    // 202 twice, then 402: the Free quota is 2 here.
    for _ in 0..2 {
        let a = s
            .call(
                Method::POST,
                "/api/v1/scan",
                Some(&free),
                Some(r#"{"url":"https://e.example"}"#),
            )
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"url":"https://e.example"}"#),
        )
        .await;
    a.assert_envelope(
        402,
        r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}"#,
    );

    // 404: unknown route (with a key), unknown scan.
    let a = s
        .call(Method::GET, "/api/v1/nothing-here", Some(&free), None)
        .await;
    a.assert_envelope(
        404,
        r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#,
    );

    // That was the 8th request this minute: 429 with every header.
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    a.assert_envelope(
        429,
        r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 8 seconds.","retry_after":8}"#,
    );
    assert_eq!(a.headers["retry-after"], "8");
    assert_eq!(a.headers["x-ratelimit-limit"], "8");
    assert_eq!(a.headers["x-ratelimit-remaining"], "0");
    // Waiting Retry-After seconds is enough.
    s.clock.advance(Duration::from_secs(8));
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains(r#""scans_used":2"#), "{}", a.body);

    // 503: billing routes while Stripe is not configured, the webhook included.
    let pro = s.key(Plan::PRO);
    s.call(
        Method::POST,
        "/api/v1/billing/checkout",
        Some(pro),
        Some(r#"{"plan":"team"}"#),
    )
    .await
    .assert_envelope(503, STRIPE);
    s.call(Method::POST, "/api/v1/billing/webhook", None, Some("{}"))
        .await
        .assert_envelope(503, STRIPE);

    // Health is exempt.
    let a = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
}

#[tokio::test]
async fn a_scan_polled_to_completion_and_tenants_cannot_see_each_other() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let (pro, team) = (s.key(Plan::PRO).to_owned(), s.key(Plan::TEAM).to_owned());
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&pro),
            Some(r#"{"url":"https://e.example","mode":"full"}"#),
        )
        .await;
    assert_eq!(a.status, 202);
    let created: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(created["status"], "running");
    assert_eq!(created["created_at"], "2025-01-20T00:00:00Z");
    let id = created["scan_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/scan/{id}");

    let mut polls = 0;
    let status = loop {
        let a = s.call(Method::GET, &path, Some(&pro), None).await;
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        polls += 1;
        if v["status"] == "completed" || polls == 10 {
            break v;
        }
        s.clock.advance(Duration::from_secs(1));
    };
    assert_eq!(status["status"], "completed");
    assert_eq!(status["completed_at"], "2025-01-20T00:00:03Z");
    assert_eq!(polls, 4);

    // Polling was never charged: one full scan is one of each.
    let usage = s.call(Method::GET, "/api/v1/usage", Some(&pro), None).await;
    let usage: serde_json::Value = serde_json::from_str(&usage.body).unwrap();
    assert_eq!(
        (
            usage["scans_used"].as_u64(),
            usage["security_scan_count"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Another tenant's scan and a scan that never existed: the same bytes.
    let foreign = s.call(Method::GET, &path, Some(&team), None).await;
    let missing = s
        .call(
            Method::GET,
            "/api/v1/scan/scan_0000000000000000",
            Some(&team),
            None,
        )
        .await;
    foreign.assert_envelope(404, r#"{"error":"NOT_FOUND","message":"Scan not found."}"#);
    assert_eq!(
        (foreign.status, &foreign.body),
        (missing.status, &missing.body)
    );

    // Listing shows only the tenant's own scans.
    let own = s.call(Method::GET, "/api/v1/scans", Some(&pro), None).await;
    let own: serde_json::Value = serde_json::from_str(&own.body).unwrap();
    assert_eq!(own["scans"].as_array().unwrap().len(), 1);
    let other = s
        .call(Method::GET, "/api/v1/scans", Some(&team), None)
        .await;
    assert_eq!(other.body, r#"{"scans":[]}"#);
}

#[tokio::test]
async fn configured_billing_answers_as_a_demo_and_the_webhook_needs_no_key() {
    let s = demo(BillingConfiguredLayer::new(true)).await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/billing/webhook",
            None,
            Some(r#"{"type":"invoice.paid"}"#),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, r#"{"demo":true,"received":true}"#)
    );
    let a = s
        .call(Method::POST, "/api/v1/billing/checkout", None, Some("{}"))
        .await;
    a.assert_envelope(401, UNAUTHORIZED);
    let a = s
        .call(
            Method::POST,
            "/api/v1/billing/checkout",
            Some(s.key(Plan::FREE)),
            Some(r#"{"plan":"pro"}"#),
        )
        .await;
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (v["demo"].as_bool(), v["plan"].as_str()),
        (Some(true), Some("pro"))
    );
}

async fn boom() -> &'static str {
    panic!("database password is hunter2")
}

#[tokio::test]
async fn internal_errors_over_the_wire() {
    let d = Demo::new(
        Plans::default(),
        Arc::new(FakeClock::default()),
        BillingConfiguredLayer::new(false),
        Default::default(),
        Duration::from_secs(1),
    );
    let router: Router = Router::new().route("/boom", get(boom)).layer(d.nat());
    let s = Running {
        wire: Wire::start(router).await,
        keys: d.keys,
        clock: FakeClock::default(),
    };
    let a = s
        .call(Method::GET, "/boom", Some(s.key(Plan::TEAM)), None)
        .await;
    a.assert_envelope(
        500,
        r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#,
    );
    // The server keeps serving after the panic.
    let a = s.call(Method::GET, "/boom", None, None).await;
    a.assert_envelope(401, UNAUTHORIZED);
}
