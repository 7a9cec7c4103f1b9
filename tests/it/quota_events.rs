//! Quota events: once per tenant, quota, threshold and period, on a fake clock across a
//! month boundary; nothing for released or refused scans; and the store's "once" across
//! instances (memory, and two clients of one Redis).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tower::ServiceBuilder;
use tower_nat::{
    clock::{FakeClock, UtcDate},
    plan::{Allowance, LimitOverrides, Plan, Plans},
    quota::{MemoryQuotaStore, QuotaEvent, QuotaGuardLayer, QuotaKind, QuotaStore, Threshold},
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

use crate::common::{handler, scan, send, tenant};

/// (kind, threshold, used, limit, period start) of each event, in order.
type Seen = Arc<Mutex<Vec<(QuotaKind, Threshold, u64, u64, String)>>>;

fn pro_with(functional: u64, security: u64) -> Tenant {
    let mut t = tenant("acme", Plan::PRO);
    t.set_overrides(LimitOverrides {
        functional_scans_per_month: Some(Allowance::Limited(functional)),
        security_scans_per_month: Some(Allowance::Limited(security)),
        ..LimitOverrides::default()
    });
    t
}

#[tokio::test]
async fn eighty_and_a_hundred_percent_once_a_period_across_a_month_boundary() {
    let clock = FakeClock::at_date(UtcDate::new(2026, 1, 30).unwrap());
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let quota = QuotaGuardLayer::new(Plans::default())
        .clock(Arc::new(clock.clone()))
        .events(move |e: QuotaEvent| {
            assert_eq!((e.tenant.as_str(), e.plan.name()), ("acme", "pro"));
            let start = e.period.start.to_string();
            record
                .lock()
                .unwrap()
                .push((e.kind, e.threshold, e.used, e.limit, start));
        });
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota)
        .service(handler());
    let t = pro_with(10, 2);
    let events = || seen.lock().unwrap().clone();
    let jan = "2026-01-01".to_owned();

    for _ in 0..8 {
        assert_eq!(send(&service, scan(&t, "functional", None)).await.0, 202);
    }
    assert_eq!(events(), []);
    // A scan the handler fails is released: no event.
    assert_eq!(
        send(&service, scan(&t, "functional", Some("500"))).await.0,
        500
    );
    assert_eq!(events(), []);
    // The 9th: over 80 % (9 of 10).
    assert_eq!(send(&service, scan(&t, "functional", None)).await.0, 202);
    let approaching = (
        QuotaKind::Functional,
        Threshold::Approaching,
        9,
        10,
        jan.clone(),
    );
    assert_eq!(events(), std::slice::from_ref(&approaching));
    // The 10th: exhausted. Then 402s, and nothing more.
    assert_eq!(send(&service, scan(&t, "functional", None)).await.0, 202);
    let exhausted = (
        QuotaKind::Functional,
        Threshold::Exhausted,
        10,
        10,
        jan.clone(),
    );
    assert_eq!(events(), [approaching.clone(), exhausted.clone()]);
    for _ in 0..3 {
        assert_eq!(send(&service, scan(&t, "functional", None)).await.0, 402);
    }
    // Security scans: 1 of 2 is not over 80 %; the second crosses both thresholds.
    assert_eq!(send(&service, scan(&t, "security", None)).await.0, 202);
    assert_eq!(events().len(), 2);
    assert_eq!(send(&service, scan(&t, "security", None)).await.0, 202);
    assert_eq!(
        events()[2..],
        [
            (
                QuotaKind::Security,
                Threshold::Approaching,
                2,
                2,
                jan.clone()
            ),
            (QuotaKind::Security, Threshold::Exhausted, 2, 2, jan.clone()),
        ]
    );

    // February: a new period, the same thresholds once more.
    clock.set(Duration::from_secs(
        UtcDate::new(2026, 2, 1).unwrap().unix_seconds(),
    ));
    for _ in 0..10 {
        assert_eq!(send(&service, scan(&t, "functional", None)).await.0, 202);
    }
    let feb = "2026-02-01".to_owned();
    assert_eq!(
        events()[4..],
        [
            (
                QuotaKind::Functional,
                Threshold::Approaching,
                9,
                10,
                feb.clone()
            ),
            (QuotaKind::Functional, Threshold::Exhausted, 10, 10, feb),
        ]
    );
}

#[tokio::test]
async fn the_memory_store_runs_each_mark_once_until_it_expires() {
    let store = MemoryQuotaStore::new();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let run = |name: &'static str| {
        let runs = runs.clone();
        Box::new(move || runs.lock().unwrap().push(name)) as Box<dyn FnOnce() + Send>
    };
    let (now, until) = (Duration::from_secs(100), Duration::from_secs(200));
    store.once("a", now, until, run("a1"));
    store.clone().once("a", now, until, run("a2"));
    store.once("b", now, until, run("b1"));
    store.once("a", until - Duration::from_secs(1), until, run("a3"));
    store.once("a", until, Duration::from_secs(300), run("a4"));
    assert_eq!(*runs.lock().unwrap(), ["a1", "b1", "a4"]);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_clients_of_one_redis_run_each_mark_once() {
    use tower_nat::{quota::RedisQuotaStore, store::redis::RedisBackend};
    let Some(server) = crate::common::redis_server::RedisServer::start() else {
        return;
    };
    let client = || {
        let backend = RedisBackend::open_with_timeout(&server.url(), Duration::from_secs(2))
            .unwrap()
            .prefix("events:");
        RedisQuotaStore::new(backend)
    };
    let (a, b) = (client(), client());
    let (now, until) = (Duration::from_secs(100), Duration::from_secs(10_000));
    let (x, y) = tokio::join!(
        a.once_async("2026-01-01:functional:exhausted:acme", now, until),
        b.once_async("2026-01-01:functional:exhausted:acme", now, until),
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].iter().filter(|set| **set).count(),
        1
    );
    assert!(
        a.once_async("2026-01-01:security:exhausted:acme", now, until)
            .await
            .unwrap()
    );
    assert!(
        !b.once_async("2026-01-01:security:exhausted:acme", now, until)
            .await
            .unwrap()
    );
}
