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
    quota::{
        MemoryQuotaStore, OnceMark, QuotaEvent, QuotaGuardLayer, QuotaKind, QuotaStore, Threshold,
    },
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
    let mark = |mark: &str, name: &'static str| {
        vec![OnceMark {
            mark: mark.to_owned(),
            then: run(name),
        }]
    };
    let (now, until) = (Duration::from_secs(100), Duration::from_secs(200));
    store.once(mark("a", "a1"), now, until);
    store.clone().once(mark("a", "a2"), now, until);
    store.once(mark("b", "b1"), now, until);
    store.once(mark("a", "a3"), until - Duration::from_secs(1), until);
    store.once(mark("a", "a4"), until, Duration::from_secs(300));
    // Several marks run in order, each once.
    let both = [("c", "c1"), ("b", "b2"), ("d", "d1")]
        .into_iter()
        .flat_map(|(m, n)| mark(m, n))
        .collect();
    store.once(both, now, until);
    assert_eq!(*runs.lock().unwrap(), ["a1", "b1", "a4", "c1", "d1"]);
}

/// The trial's finding: with Redis, 10 scans at once per tenant, `exhausted` came before
/// `approaching` for 6 of 8 crossings. Now the scan that exhausts a quota claims its
/// `approaching` event first when no scan has yet: each tenant hears both, once, in order.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_approaching_always_comes_before_exhausted() {
    use tower_nat::{quota::RedisQuotaStore, store::redis::RedisBackend};
    let Some(server) = crate::common::redis_server::RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::open_with_timeout(&server.url(), Duration::from_secs(2))
        .unwrap()
        .prefix("order:");
    type Heard = Arc<Mutex<Vec<(String, Threshold)>>>;
    let heard: Heard = Arc::default();
    let record = heard.clone();
    let quota = QuotaGuardLayer::new(Plans::default())
        .with_store(RedisQuotaStore::new(backend))
        .events(move |e: QuotaEvent| {
            record
                .lock()
                .unwrap()
                .push((e.tenant.to_string(), e.threshold));
        });
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota)
        .service(handler());
    let tenants: Vec<Tenant> = (0..8)
        .map(|i| {
            let mut t = tenant(&format!("t{i}"), Plan::PRO);
            t.set_overrides(LimitOverrides {
                functional_scans_per_month: Some(Allowance::Limited(10)),
                ..LimitOverrides::default()
            });
            t
        })
        .collect();
    let mut sends = Vec::new();
    for t in &tenants {
        for _ in 0..10 {
            let (service, req) = (service.clone(), scan(t, "functional", None));
            sends.push(tokio::spawn(async move {
                tower::ServiceExt::oneshot(service, req)
                    .await
                    .unwrap()
                    .status()
            }));
        }
    }
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
    // The events are sent in the background: wait (bounded) for all 16.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while heard.lock().unwrap().len() < 16 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 16, "{heard:?}");
    for t in &tenants {
        let mine: Vec<Threshold> = heard
            .iter()
            .filter(|(id, _)| id == t.id().as_str())
            .map(|(_, th)| *th)
            .collect();
        assert_eq!(
            mine,
            [Threshold::Approaching, Threshold::Exhausted],
            "{}",
            t.id()
        );
    }
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
