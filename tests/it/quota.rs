//! QuotaGuard with a fake clock: exact quotas, period boundaries, release on every failure
//! path, no overdraft under concurrency, `full` all-or-nothing, usage snapshots.

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{
    Gated, INTERNAL, UNAUTHORIZED, assert_envelope, handler, quota_body, scan, send,
    stores::{Broken, Later},
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{Clock, FakeClock, UtcDate},
    plan::{Plan, Plans},
    quota::{MemoryQuotaStore, QuotaGuardLayer, UsageCounts},
    scan_request::ValidateScanRequestLayer,
    store::OnStoreError,
    tenant::Tenant,
};

type Resp = Response<tower_nat::NatBody<tower_nat::NatBody<tower_nat::NatBody<Full<Bytes>>>>>;

struct Setup {
    clock: FakeClock,
    quota: QuotaGuardLayer,
}

fn setup(date: UtcDate, plans: Plans) -> Setup {
    let clock = FakeClock::at_date(date);
    let quota = QuotaGuardLayer::new(plans).clock(Arc::new(clock.clone()));
    Setup { clock, quota }
}

fn stack(
    quota: &QuotaGuardLayer,
) -> impl Service<Request<Full<Bytes>>, Response = Resp, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(tower_nat::internal_error::InternalErrorGuardLayer::new())
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(handler())
}

fn free() -> Tenant {
    Tenant::new("acme", Plan::FREE, "key_1")
}

async fn used(quota: &QuotaGuardLayer, tenant: &Tenant) -> (u64, u64) {
    let u = quota.usage(tenant).await.unwrap();
    (u.scans_used, u.security_scan_count)
}

#[tokio::test]
async fn free_gets_exactly_50_then_the_exact_402() {
    let s = setup(UtcDate::new(2025, 1, 14).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    for i in 0..50 {
        assert_eq!(
            send(&svc, scan(&free(), "functional", None)).await.0,
            202,
            "scan {i}"
        );
    }
    let got = send(&svc, scan(&free(), "functional", None)).await;
    assert_envelope(&got, 402, &quota_body("2025-02-01"));
    assert_eq!(used(&s.quota, &free()).await, (50, 0));
}

#[tokio::test]
async fn period_boundaries_and_the_reset() {
    let plans =
        Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 2}}}"#).unwrap();
    for (start, reset) in [
        ((2025, 12, 31), "2026-01-01"),
        ((2024, 2, 29), "2024-03-01"),
        ((2024, 2, 1), "2024-03-01"),
        ((2025, 1, 31), "2025-02-01"),
    ] {
        let date = UtcDate::new(start.0, start.1, start.2).unwrap();
        let s = setup(date, plans.clone());
        let svc = stack(&s.quota);
        // Go to the last second of the day.
        s.clock.advance(Duration::from_secs(86_399));
        for _ in 0..2 {
            assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 202);
        }
        assert_envelope(
            &send(&svc, scan(&free(), "functional", None)).await,
            402,
            &quota_body(reset),
        );
        if date.first_of_next_month().to_string() == reset && date.day() != 1 {
            // The last day of the month: one second later the quota has reset.
            s.clock.advance(Duration::from_secs(1));
            assert_eq!(UtcDate::from_unix(s.clock.now()).to_string(), reset);
            assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 202);
            let usage = s.quota.usage(&free()).await.unwrap();
            assert_eq!(usage.scans_used, 1);
            assert_eq!(usage.period_start, format!("{reset}T00:00:00Z"));
        }
    }
}

#[tokio::test]
async fn failures_leave_usage_unchanged() {
    let s = setup(UtcDate::new(2025, 3, 3).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    let tenant = free();
    for outcome in ["500", "503", "400", "404", "302", "error", "panic"] {
        let got = send(&svc, scan(&tenant, "functional", Some(outcome))).await;
        assert!(got.0.as_u16() >= 300, "{outcome}: {}", got.0);
        if outcome == "error" || outcome == "panic" {
            assert_envelope(&got, 500, INTERNAL);
        }
        assert_eq!(used(&s.quota, &tenant).await, (0, 0), "{outcome}");
        assert_eq!(
            s.quota.store().in_flight("acme"),
            UsageCounts::default(),
            "{outcome}"
        );
    }
    for outcome in ["200", "201", "202", "204"] {
        send(&svc, scan(&tenant, "functional", Some(outcome))).await;
    }
    assert_eq!(used(&s.quota, &tenant).await, (4, 0));
}

#[tokio::test]
async fn a_dropped_request_future_is_not_charged() {
    let s = setup(UtcDate::new(2025, 3, 3).unwrap(), Plans::default());
    let mut svc = stack(&s.quota);
    let tenant = free();
    let mut future = Box::pin(svc.ready().await.unwrap().call(scan(
        &tenant,
        "functional",
        Some("pending"),
    )));
    // Poll once: the request is inside the handler, its scan reserved.
    let waker = std::task::Waker::noop();
    assert!(
        future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_pending()
    );
    assert_eq!(s.quota.store().in_flight("acme").functional, 1);
    drop(future);
    assert_eq!(s.quota.store().in_flight("acme"), UsageCounts::default());
    assert_eq!(used(&s.quota, &tenant).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_never_overdraw() {
    let s = setup(UtcDate::new(2025, 5, 5).unwrap(), Plans::default());
    // Every admitted request stays in flight until the test opens the gate.
    let gated = Gated::default();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(s.quota.clone())
        .service(gated.service());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.oneshot(scan(&free(), "functional", None))
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    gated.until(|| gated.inside() >= 50).await;
    assert_eq!(s.quota.store().in_flight("acme").functional, 50);
    gated.open(64);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 50);
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 14);
    assert_eq!(gated.inside(), 50);
    assert_eq!(used(&s.quota, &free()).await, (50, 0));
}

#[tokio::test]
async fn full_reserves_both_or_neither() {
    let plans = Plans::from_json(
        r#"{"plans": {"pro": {"functional_scans_per_month": 3, "security_scans_per_month": 1}}}"#,
    )
    .unwrap();
    let s = setup(UtcDate::new(2025, 7, 1).unwrap(), plans);
    let svc = stack(&s.quota);
    let pro = Tenant::new("p", Plan::PRO, "k");
    assert_eq!(send(&svc, scan(&pro, "full", None)).await.0, 202);
    assert_eq!(used(&s.quota, &pro).await, (1, 1));
    // Security is used up: a second full scan takes neither kind.
    assert_envelope(
        &send(&svc, scan(&pro, "full", None)).await,
        402,
        &quota_body("2025-08-01"),
    );
    assert_envelope(
        &send(&svc, scan(&pro, "security", None)).await,
        402,
        &quota_body("2025-08-01"),
    );
    assert_eq!(used(&s.quota, &pro).await, (1, 1));
    // Functional scans still have room.
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    assert_envelope(
        &send(&svc, scan(&pro, "functional", None)).await,
        402,
        &quota_body("2025-08-01"),
    );
    assert_eq!(used(&s.quota, &pro).await, (3, 1));
}

#[tokio::test]
async fn polling_listing_and_usage_are_never_charged_or_blocked() {
    let plans =
        Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 1}}}"#).unwrap();
    let s = setup(UtcDate::new(2025, 7, 1).unwrap(), plans);
    let svc = stack(&s.quota);
    assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 202);
    assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 402);
    for (method, path) in [
        ("GET", "/api/v1/scan/s1"),
        ("GET", "/api/v1/scans"),
        ("GET", "/api/v1/usage"),
        ("DELETE", "/api/v1/scan/s1"),
    ] {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::default())
            .unwrap();
        req.extensions_mut().insert(free());
        assert_eq!(send(&svc, req).await.0, 200, "{method} {path}");
    }
    assert_eq!(used(&s.quota, &free()).await, (1, 0));
}

#[tokio::test]
async fn unlimited_plans_are_never_blocked_but_counted() {
    let s = setup(UtcDate::new(2025, 7, 1).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    let ent = Tenant::new("big", Plan::ENTERPRISE, "k");
    for _ in 0..600 {
        assert_eq!(send(&svc, scan(&ent, "full", None)).await.0, 202);
    }
    let usage = s.quota.usage(&ent).await.unwrap();
    assert_eq!((usage.scans_used, usage.scans_limit), (600, None));
    assert!(!usage.approaching_limit);
}

#[tokio::test]
async fn an_upgrade_applies_at_once() {
    let s = setup(UtcDate::new(2025, 7, 1).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    for _ in 0..50 {
        send(&svc, scan(&free(), "functional", None)).await;
    }
    assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 402);
    let upgraded = Tenant::new("acme", Plan::PRO, "key_1");
    assert_eq!(send(&svc, scan(&upgraded, "functional", None)).await.0, 202);
    assert_eq!(used(&s.quota, &upgraded).await, (51, 0));
}

#[tokio::test]
async fn usage_snapshot_after_a_known_sequence() {
    let s = setup(UtcDate::new(2024, 2, 10).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    let pro = Tenant::new("tenant_42", Plan::PRO, "k");
    for _ in 0..399 {
        send(&svc, scan(&pro, "functional", None)).await;
    }
    for _ in 0..2 {
        send(&svc, scan(&pro, "full", None)).await;
    }
    send(&svc, scan(&pro, "security", Some("500"))).await;
    let usage = s.quota.usage(&pro).await.unwrap();
    assert_eq!(
        serde_json::to_string(&usage).unwrap(),
        r#"{"tenant_id":"tenant_42","plan":"pro","scans_used":401,"scans_limit":500,"security_scan_count":2,"monthly_security_scan_quota":100,"approaching_limit":true,"quota_reset_date":"2024-03-01T00:00:00Z","period_start":"2024-02-01T00:00:00Z","period_end":"2024-02-29T23:59:59Z","scans_running":0,"concurrent_scans_limit":3}"#
    );
    // Exactly 80% is not "over 80%".
    let s = setup(UtcDate::new(2024, 2, 10).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    for _ in 0..40 {
        send(&svc, scan(&free(), "functional", None)).await;
    }
    assert!(!s.quota.usage(&free()).await.unwrap().approaching_limit);
    send(&svc, scan(&free(), "functional", None)).await;
    assert!(s.quota.usage(&free()).await.unwrap().approaching_limit);
}

#[tokio::test]
async fn no_tenant_fails_closed() {
    let s = setup(UtcDate::new(2025, 7, 1).unwrap(), Plans::default());
    let svc = stack(&s.quota);
    let req = Request::post("/api/v1/scan")
        .body(Full::new(Bytes::from_static(br#"{"url":"u"}"#)))
        .unwrap();
    assert_envelope(&send(&svc, req).await, 401, UNAUTHORIZED);
}

#[tokio::test]
async fn failing_store_rejects_by_default_and_allows_when_told() {
    let scan_stack = |layer: QuotaGuardLayer<Broken>| {
        ServiceBuilder::new()
            .layer(ValidateScanRequestLayer::new())
            .layer(layer)
            .service(handler())
    };
    let closed = scan_stack(QuotaGuardLayer::new(Plans::default()).with_store(Broken::Now));
    assert_envelope(
        &send(&closed, scan(&free(), "functional", None)).await,
        500,
        INTERNAL,
    );
    let open = scan_stack(
        QuotaGuardLayer::new(Plans::default())
            .with_store(Broken::Now)
            .on_store_error(OnStoreError::Allow),
    );
    assert_eq!(send(&open, scan(&free(), "functional", None)).await.0, 202);
    assert!(
        QuotaGuardLayer::new(Plans::default())
            .with_store(Broken::Now)
            .usage(&free())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn asynchronous_stores_give_the_same_answers() {
    let plans =
        Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 3}}}"#).unwrap();
    let store = Later(MemoryQuotaStore::new());
    let layer = QuotaGuardLayer::new(plans)
        .with_store(store.clone())
        .clock(Arc::new(FakeClock::at_date(
            UtcDate::new(2025, 4, 9).unwrap(),
        )));
    let svc = ServiceBuilder::new()
        .layer(tower_nat::internal_error::InternalErrorGuardLayer::new())
        .layer(ValidateScanRequestLayer::new())
        .layer(layer.clone())
        .service(handler());
    assert_eq!(
        send(&svc, scan(&free(), "functional", Some("500"))).await.0,
        500
    );
    assert_eq!(
        send(&svc, scan(&free(), "functional", Some("panic")))
            .await
            .0,
        500
    );
    for _ in 0..3 {
        assert_eq!(send(&svc, scan(&free(), "functional", None)).await.0, 202);
    }
    assert_envelope(
        &send(&svc, scan(&free(), "functional", None)).await,
        402,
        &quota_body("2025-05-01"),
    );
    assert_eq!(layer.usage(&free()).await.unwrap().scans_used, 3);
    assert_eq!(store.0.in_flight("acme"), UsageCounts::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_some_dropped_some_failing_charge_exactly_the_2xx() {
    let plans =
        Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 100000}}}"#).unwrap();
    let s = setup(UtcDate::new(2025, 9, 9).unwrap(), plans);
    let in_handler = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let (count, notify) = (in_handler.clone(), entered.clone());
    let svc = ServiceBuilder::new()
        .layer(tower_nat::internal_error::InternalErrorGuardLayer::new())
        .layer(ValidateScanRequestLayer::new())
        .layer(s.quota.clone())
        .service(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let (count, notify) = (count.clone(), notify.clone());
            async move {
                let outcome = req.headers()["x-outcome"].to_str().unwrap().to_owned();
                count.fetch_add(1, Ordering::SeqCst);
                notify.notify_one();
                tokio::task::yield_now().await;
                let status = match outcome.as_str() {
                    "error" => return Err(std::io::Error::other("backend down")),
                    "panic" => panic!("handler panicked"),
                    "hang" => std::future::pending::<StatusCode>().await,
                    code => StatusCode::from_bytes(code.as_bytes()).unwrap(),
                };
                let mut r = Response::new(Full::<Bytes>::default());
                *r.status_mut() = status;
                Ok(r)
            }
        }));
    let outcomes = ["202", "201", "500", "404", "error", "panic", "hang"];
    let tenant = free();
    let mut hanging = Vec::new();
    let mut finishing = Vec::new();
    for i in 0..700 {
        let outcome = outcomes[i % outcomes.len()];
        let (svc, tenant) = (svc.clone(), tenant.clone());
        let task = tokio::spawn(async move {
            svc.oneshot(scan(&tenant, "functional", Some(outcome)))
                .await
                .unwrap()
                .status()
        });
        if outcome == "hang" {
            hanging.push(task);
        } else {
            finishing.push(task);
        }
    }
    // Every request reaches the handler (the quota has room for all), then the hanging ones
    // are dropped mid-flight, as when clients go away.
    while in_handler.load(Ordering::SeqCst) < 700 {
        entered.notified().await;
    }
    for task in &hanging {
        task.abort();
    }
    let mut accepted = 0;
    for task in finishing {
        if task.await.unwrap().is_success() {
            accepted += 1;
        }
    }
    for task in hanging {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(accepted, 200, "202 and 201, 100 of each");
    assert_eq!(used(&s.quota, &tenant).await, (200, 0));
    assert_eq!(
        s.quota.store().in_flight("acme"),
        UsageCounts::default(),
        "no reservation left"
    );
}
