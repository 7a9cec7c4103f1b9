//! Redis stores against a real `redis-server` that each test starts on a free loopback port:
//! two instances sharing one Redis, and faults (down, frozen, restarted).
#![cfg(feature = "redis")]

use std::{sync::Arc, time::Duration};

use crate::common::redis_server::RedisServer;
use crate::common::{INTERNAL, assert_envelope, handler, plain, scan, send};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
    quota::{QuotaGuardLayer, RedisQuotaStore},
    rate_limit::{PlanRateLimitLayer, RedisRateStore},
    scan_request::ValidateScanRequestLayer,
    store::OnStoreError,
    store::redis::{RedisBackend, TimeSource},
    tenant::Tenant,
};

/// One "instance": its own connection, its own layers, the same Redis and prefix.
fn instance(
    url: &str,
    clock: &FakeClock,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = StatusCode,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let backend = RedisBackend::open_with_timeout(url, Duration::from_secs(2))
        .unwrap()
        .prefix("shared:");
    let rate = RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller);
    let quota = RedisQuotaStore::new(backend).time_source(TimeSource::Caller);
    // Free gets 1,000 requests a minute here, so the quota part is not rate limited.
    let plans = Arc::new(
        Plans::from_json(r#"{"plans": {"free": {"requests_per_minute": 1000}}}"#).unwrap(),
    );
    ServiceBuilder::new()
        .layer(tower::util::MapResponseLayer::new(|r: Response<_>| {
            r.status()
        }))
        .layer(
            PlanRateLimitLayer::new(plans.clone())
                .with_store(rate)
                .clock(Arc::new(clock.clone())),
        )
        .layer(ValidateScanRequestLayer::new())
        .layer(
            QuotaGuardLayer::new(plans)
                .with_store(quota)
                .clock(Arc::new(clock.clone())),
        )
        .service(handler())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_limits_and_quotas() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2025, 3, 1).unwrap());
    let a = instance(&server.url(), &clock);
    let b = instance(&server.url(), &clock);
    // Rate limit: a Team tenant (300 a minute) sends 600 requests at once, split across both
    // instances: exactly 300 are admitted.
    let team = Tenant::new("hot", Plan::TEAM, "k");
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let team = team.clone();
            tokio::spawn(async move { svc.oneshot(plain(&team, "/api/v1/scans")).await.unwrap() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let status: StatusCode = t.await.unwrap();
        if status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(admitted, 300);

    // Quota: 80 concurrent scans of a Free tenant (50 a month) across both: exactly 50.
    let free = Tenant::new("scanner", Plan::FREE, "k");
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let free = free.clone();
            tokio::spawn(async move { svc.oneshot(scan(&free, "functional", None)).await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().as_u16());
    }
    let created = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(created + refused, 80);
    assert_eq!(created, 50, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_survives_a_new_instance() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2025, 3, 1).unwrap());
    let open = || {
        let backend = RedisBackend::open(&server.url())
            .unwrap()
            .prefix("restart:");
        QuotaGuardLayer::new(Plans::default())
            .with_store(RedisQuotaStore::new(backend).time_source(TimeSource::Caller))
            .clock(Arc::new(clock.clone()))
    };
    let first = open();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(first.clone())
        .service(handler());
    let t = Tenant::new("durable", Plan::FREE, "k");
    for _ in 0..3 {
        assert_eq!(send(&svc, scan(&t, "functional", None)).await.0, 202);
    }
    drop(svc);
    drop(first);
    // A fresh instance (new connection, new layer) reads the same usage.
    let second = open();
    let mut used = 0;
    for _ in 0..1000 {
        used = second.usage(&t).await.unwrap().scans_used;
        if used == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(used, 3);
}

struct Faulty {
    server: RedisServer,
    rate: PlanRateLimitLayer<RedisRateStore>,
    quota: QuotaGuardLayer<RedisQuotaStore>,
}

fn faulty(server: RedisServer, timeout: Duration) -> Faulty {
    let backend = RedisBackend::open_with_timeout(&server.url(), timeout)
        .unwrap()
        .prefix("faults:");
    let rate =
        PlanRateLimitLayer::new(Plans::default()).with_store(RedisRateStore::new(backend.clone()));
    let quota = QuotaGuardLayer::new(Plans::default()).with_store(RedisQuotaStore::new(backend));
    Faulty {
        server,
        rate,
        quota,
    }
}

async fn statuses(f: &Faulty, t: &Tenant) -> (u16, bool, u16) {
    let rate = ServiceBuilder::new()
        .layer(f.rate.clone())
        .service(handler());
    let got = send(&rate, plain(t, "/api/v1/scans")).await;
    let quota = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(f.quota.clone())
        .service(handler());
    let q = send(&quota, scan(t, "functional", None)).await;
    if q.0 == 500 {
        assert_envelope(&q, 500, INTERNAL);
    }
    (
        got.0.as_u16(),
        got.1.contains_key("x-ratelimit-limit"),
        q.0.as_u16(),
    )
}

/// Retries (bounded) until Redis answers again after a fault.
async fn recovered(f: &Faulty, t: &Tenant) -> bool {
    for _ in 0..200 {
        if statuses(f, t).await == (200, true, 202) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_for_limits_and_closed_for_quotas_then_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut f = faulty(server, Duration::from_millis(200));
    let t = Tenant::new("f", Plan::PRO, "k");
    assert_eq!(statuses(&f, &t).await, (200, true, 202));
    f.server.stop();
    // Down: requests pass without rate-limit headers; scans are refused with 500.
    for _ in 0..3 {
        assert_eq!(statuses(&f, &t).await, (200, false, 500));
    }
    f.server.restart();
    assert!(
        recovered(&f, &t).await,
        "the stores reconnect by themselves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_instead_of_hanging() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = faulty(server, Duration::from_millis(150));
    let t = Tenant::new("slow", Plan::PRO, "k");
    assert_eq!(statuses(&f, &t).await, (200, true, 202));
    f.server.pause();
    // Every call is bounded by the timeout: the answers come, they do not hang.
    let answered = tokio::time::timeout(Duration::from_secs(10), statuses(&f, &t)).await;
    assert_eq!(
        answered.expect("answered within the bound"),
        (200, false, 500)
    );
    f.server.resume();
    assert!(recovered(&f, &t).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_choices_are_configurable() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend =
        RedisBackend::open_with_timeout(&server.url(), Duration::from_millis(200)).unwrap();
    let rate = PlanRateLimitLayer::new(Plans::default())
        .with_store(RedisRateStore::new(backend.clone()))
        .on_store_error(OnStoreError::Reject);
    let quota = QuotaGuardLayer::new(Plans::default())
        .with_store(RedisQuotaStore::new(backend))
        .on_store_error(OnStoreError::Allow);
    let mut f = Faulty {
        server,
        rate,
        quota,
    };
    f.server.stop();
    let t = Tenant::new("choice", Plan::PRO, "k");
    let rate = ServiceBuilder::new()
        .layer(f.rate.clone())
        .service(handler());
    assert_envelope(
        &send(&rate, plain(&t, "/api/v1/scans")).await,
        500,
        INTERNAL,
    );
    let quota = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(f.quota.clone())
        .service(handler());
    assert_eq!(send(&quota, scan(&t, "functional", None)).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letting_scans_through_an_outage_takes_both_scan_choices() {
    use tower::Layer;
    use tower_nat::{NatLayer, auth::MemoryKeyStore, concurrency::RedisSlotStore};
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("outage", Plan::PRO).unwrap();
    let key = keys.issue_key("outage", None).unwrap().key;
    let backend =
        RedisBackend::open_with_timeout(&server.url(), Duration::from_millis(200)).unwrap();
    let nat = || {
        NatLayer::new(keys.clone())
            .with_quota_store(RedisQuotaStore::new(backend.clone()))
            .with_slot_store(RedisSlotStore::new(backend.clone()))
            .quota_on_store_error(OnStoreError::Allow)
    };
    let request = || {
        Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"url":"https://example.com","mode":"functional"}"#,
            )))
            .unwrap()
    };
    server.stop();
    // The quota would let the scan through, but the slot check comes first: 500.
    let quota_only = nat().layer(handler());
    assert_envelope(&send(&quota_only, request()).await, 500, INTERNAL);
    let both = nat()
        .slots_on_store_error(OnStoreError::Allow)
        .layer(handler());
    assert_eq!(send(&both, request()).await.0, 202);
}
