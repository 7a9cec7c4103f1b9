//! Redis failing under concurrent load, with two instances on one Redis: nothing charged is
//! lost, nothing is charged twice, and no reservation or slot outlives the request that made
//! it. Redis is frozen (SIGSTOP) or killed (SIGKILL, with an append-only file fsynced on
//! every write, as a production Redis that keeps charges) while requests run.
#![cfg(feature = "redis")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::redis_server::RedisServer;
use crate::common::{handler, scan};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{Clock, FakeClock, UtcDate},
    plan::{Plan, Plans},
    quota::{Period, QuotaGuardLayer, RedisQuotaStore},
    rate_limit::{PlanRateLimitLayer, RedisRateStore},
    scan_request::ValidateScanRequestLayer,
    store::redis::{RedisBackend, TimeSource},
    tenant::Tenant,
};

struct Instance {
    quota: RedisQuotaStore,
    service: tower::util::BoxCloneService<Request<Full<Bytes>>, StatusCode, std::io::Error>,
}

/// One instance: its own connection (timeout `timeout`), the rate limiter and the quota
/// guard, on `plans`, with time from `clock`.
fn instance(url: &str, timeout: Duration, plans: &Arc<Plans>, clock: &FakeClock) -> Instance {
    let backend = RedisBackend::open_with_timeout(url, timeout)
        .unwrap()
        .prefix("faults:");
    let rate = RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller);
    let quota = RedisQuotaStore::new(backend).time_source(TimeSource::Caller);
    let service = ServiceBuilder::new()
        .map_response(|r: Response<_>| r.status())
        .layer(
            PlanRateLimitLayer::new(plans.clone())
                .with_store(rate)
                .clock(Arc::new(clock.clone())),
        )
        .layer(ValidateScanRequestLayer::new())
        .layer(
            QuotaGuardLayer::new(plans.clone())
                .with_store(quota.clone())
                .clock(Arc::new(clock.clone())),
        )
        .service(handler());
    Instance {
        quota,
        service: tower::util::BoxCloneService::new(service),
    }
}

/// Waits (bounded) until neither instance has a settlement or release left to retry.
async fn retries_done(instances: &[&Instance]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while instances
        .iter()
        .any(|i| i.quota.backend().background_retries() > 0)
    {
        assert!(
            Instant::now() < deadline,
            "background retries did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` scan creations of `tenant` at once, alternating between the instances; the statuses.
async fn creations(instances: [&Instance; 2], tenant: &Tenant, n: usize) -> Vec<u16> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let service = instances[i % 2].service.clone();
            let req = scan(tenant, "functional", None);
            tokio::spawn(async move { service.oneshot(req).await.unwrap().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// The scans charged to `tenant` this period, and the reservations left in flight.
async fn charged(instance: &Instance, tenant: &Tenant, clock: &FakeClock) -> (u64, (u64, u64)) {
    let period = Period::calendar_month(clock.now());
    let used = instance
        .quota
        .usage_async(tenant.id(), period)
        .await
        .unwrap();
    let in_flight = instance
        .quota
        .in_flight_async(tenant.id(), period)
        .await
        .unwrap();
    (used.functional, in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_leaves_no_orphaned_reservation() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    // Free's 50 scans a month; requests are not rate limited here.
    let plans = Arc::new(
        Plans::from_json(r#"{"plans": {"free": {"requests_per_minute": 1000000}}}"#).unwrap(),
    );
    let timeout = Duration::from_millis(300);
    let a = instance(&server.url(), timeout, &plans, &clock);
    let b = instance(&server.url(), timeout, &plans, &clock);
    // A Free tenant (50 scans a month) has used 20.
    let free = Tenant::new("frozen", Plan::FREE, "k");
    let first = creations([&a, &b], &free, 20).await;
    assert_eq!(count(&first, 202), 20);

    // Redis freezes: 30 creations time out and are answered 500; each sent a reservation
    // that Redis runs when it wakes.
    server.pause();
    let frozen = creations([&a, &b], &free, 30).await;
    assert_eq!(count(&frozen, 500), 30, "{frozen:?}");
    server.resume();
    retries_done(&[&a, &b]).await;

    // None of them holds a reservation: 20 charged, nothing in flight, and the tenant gets
    // exactly its 30 remaining scans.
    assert_eq!(charged(&a, &free, &clock).await, (20, (0, 0)));
    let after = creations([&a, &b], &free, 30).await;
    assert_eq!(count(&after, 202), 30, "{after:?}");
    let over = creations([&a, &b], &free, 2).await;
    assert_eq!(over, [402, 402]);
    assert_eq!(charged(&b, &free, &clock).await, (50, (0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_under_load_loses_no_charge_and_charges_nothing_twice() {
    let Some(mut server) = RedisServer::start_durable() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    // Enough budget that only Redis's failure refuses anything.
    let plans = Arc::new(
        Plans::from_json(
            r#"{"plans": {"free": {"requests_per_minute": 1000000, "functional_scans_per_month": 100000}}}"#,
        )
        .unwrap(),
    );
    let timeout = Duration::from_millis(300);
    let a = instance(&server.url(), timeout, &plans, &clock);
    let b = instance(&server.url(), timeout, &plans, &clock);
    let tenant = Tenant::new("killed", Plan::FREE, "k");
    let mut total_created = 0u64;
    for round in 0..3 {
        // 40 clients create scans in a loop; Redis is killed and restarted under them.
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..40)
            .map(|i| {
                let service = if i % 2 == 0 {
                    a.service.clone()
                } else {
                    b.service.clone()
                };
                let (stop, answered, tenant) = (stop.clone(), answered.clone(), tenant.clone());
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let status = service
                            .clone()
                            .oneshot(scan(&tenant, "functional", None))
                            .await
                            .unwrap();
                        statuses.push(status.as_u16());
                        answered.fetch_add(1, Ordering::AcqRel);
                    }
                    statuses
                })
            })
            .collect();
        let wait_for = |n: usize| {
            let answered = answered.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while answered.load(Ordering::Acquire) < n {
                    assert!(Instant::now() < deadline, "the clients stalled");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        wait_for(200).await;
        server.stop();
        let at_kill = answered.load(Ordering::Acquire);
        server.restart();
        wait_for(at_kill + 200).await;
        stop.store(true, Ordering::Release);
        let mut statuses = Vec::new();
        for client in clients {
            statuses.extend(client.await.unwrap());
        }
        retries_done(&[&a, &b]).await;
        let created = count(&statuses, 202);
        let failed = count(&statuses, 500);
        assert_eq!(created + failed, statuses.len(), "{statuses:?}");
        assert!(failed > 0, "round {round}: the kill failed no request");
        total_created += u64::try_from(created).unwrap();
        // Every 202 is charged exactly once (none lost, none twice), and nothing is left
        // reserved.
        assert_eq!(
            charged(&a, &tenant, &clock).await,
            (total_created, (0, 0)),
            "round {round}"
        );
        eprintln!("round {round}: {created} created, {failed} failed");
    }
    // The next scan counts from the true usage.
    assert_eq!(
        a.service
            .clone()
            .oneshot(scan(&tenant, "functional", None))
            .await
            .unwrap(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        charged(&b, &tenant, &clock).await,
        (total_created + 1, (0, 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_leaves_no_orphaned_scan_slot() {
    use tower_nat::concurrency::{ConcurrentScansLayer, RedisSlotStore, SlotStore};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    let instance = || {
        let backend = RedisBackend::open_with_timeout(&server.url(), Duration::from_millis(300))
            .unwrap()
            .prefix("faults:");
        let store = RedisSlotStore::new(backend.clone()).time_source(TimeSource::Caller);
        let service = ServiceBuilder::new()
            .map_response(|r: Response<_>| r.status())
            .layer(ValidateScanRequestLayer::new())
            .layer(
                ConcurrentScansLayer::new(Plans::default())
                    .with_store(store.clone())
                    .clock(Arc::new(clock.clone())),
            )
            .service(handler());
        (backend, store, tower::util::BoxCloneService::new(service))
    };
    let (a, b) = (instance(), instance());
    // A Team tenant may run 10 scans at a time; each request here keeps its slot.
    let team = Tenant::new("frozen-slots", Plan::TEAM, "k");
    let running_scan = || {
        let mut req = scan(&team, "functional", None);
        req.headers_mut()
            .insert("x-slot", http::HeaderValue::from_static("keep"));
        req
    };
    let start = |n: usize| {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let service = if i % 2 == 0 { a.2.clone() } else { b.2.clone() };
                let req = running_scan();
                tokio::spawn(async move { service.oneshot(req).await.unwrap().as_u16() })
            })
            .collect();
        async move {
            let mut statuses = Vec::new();
            for call in calls {
                statuses.push(call.await.unwrap());
            }
            statuses
        }
    };
    assert_eq!(count(&start(4).await, 202), 4);
    server.pause();
    let frozen = start(12).await;
    assert_eq!(count(&frozen, 500), 12, "{frozen:?}");
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.0.background_retries() + b.0.background_retries() > 0 {
        assert!(
            Instant::now() < deadline,
            "background retries did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let running = match a.1.running(team.id(), clock.now()) {
        tower_nat::store::Answer::Pending(count) => count.await.unwrap(),
        tower_nat::store::Answer::Ready(count) => count.unwrap(),
    };
    assert_eq!(running, 4, "only the four scans that started hold a slot");
    let after = start(8).await;
    assert_eq!(
        (count(&after, 202), count(&after, 429)),
        (6, 2),
        "{after:?}"
    );
}
