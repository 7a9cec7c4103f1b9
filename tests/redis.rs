//! Redis stores against a real `redis-server` that each test starts on a free loopback port:
//! two instances sharing one Redis, and faults (down, frozen, restarted).
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{INTERNAL, assert_envelope, send};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use redis_server::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{FakeClock, UtcDate},
    quota::{OnStoreError, QuotaGuardLayer, RedisQuotaStore},
    rate_limit::{PlanRateLimitLayer, RedisRateStore},
    scan_request::ValidateScanRequestLayer,
    store::redis::RedisBackend,
    tenant::{Plan, Plans, Tenant},
};

fn ok() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let mut r = Response::new(Full::default());
        *r.status_mut() = StatusCode::ACCEPTED;
        Ok::<_, Infallible>(r)
    })
}

fn plain(t: &Tenant) -> Request<Full<Bytes>> {
    let mut req = Request::get("/api/v1/scans").body(Full::default()).unwrap();
    req.extensions_mut().insert(t.clone());
    req
}

fn scan(t: &Tenant) -> Request<Full<Bytes>> {
    let mut req = Request::post("/api/v1/scan")
        .body(Full::new(Bytes::from_static(
            br#"{"url":"https://e.example"}"#,
        )))
        .unwrap();
    req.extensions_mut().insert(t.clone());
    req
}

/// One "instance": its own connection, its own layers, the same Redis and prefix.
fn instance(
    url: &str,
    clock: &FakeClock,
) -> impl Service<Request<Full<Bytes>>, Response = StatusCode, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    let backend = RedisBackend::open_with_timeout(url, Duration::from_secs(2))
        .unwrap()
        .prefix("shared:");
    let rate = RedisRateStore::new(backend.clone()).with_clock(Arc::new(clock.clone()));
    let quota = RedisQuotaStore::new(backend).with_clock(Arc::new(clock.clone()));
    // Free gets 1,000 requests a minute here, so the quota part is not rate limited.
    let plans = Arc::new(Plans::from_json(r#"{"free": {"requests_per_minute": 1000}}"#).unwrap());
    ServiceBuilder::new()
        .layer(tower::util::MapResponseLayer::new(|r: Response<_>| {
            r.status()
        }))
        .layer(PlanRateLimitLayer::with_store(rate, plans.clone()))
        .layer(ValidateScanRequestLayer::new())
        .layer(QuotaGuardLayer::with_store(quota, plans).clock(Arc::new(clock.clone())))
        .service(ok())
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
    let team = Tenant::new("hot", Plan::Team, "k");
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let team = team.clone();
            tokio::spawn(async move { svc.oneshot(plain(&team)).await.unwrap() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let status: StatusCode = t.await.unwrap();
        if status == StatusCode::ACCEPTED {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(admitted, 300);

    // Quota: 80 concurrent scans of a Free tenant (50 a month) across both: exactly 50.
    let free = Tenant::new("scanner", Plan::Free, "k");
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let free = free.clone();
            tokio::spawn(async move { svc.oneshot(scan(&free)).await.unwrap() })
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
        QuotaGuardLayer::with_store(
            RedisQuotaStore::new(backend).with_clock(Arc::new(clock.clone())),
            Plans::default(),
        )
        .clock(Arc::new(clock.clone()))
    };
    let first = open();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(first.clone())
        .service(ok());
    let t = Tenant::new("durable", Plan::Free, "k");
    for _ in 0..3 {
        assert_eq!(send(&svc, scan(&t)).await.0, 202);
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
        PlanRateLimitLayer::with_store(RedisRateStore::new(backend.clone()), Plans::default());
    let quota = QuotaGuardLayer::with_store(RedisQuotaStore::new(backend), Plans::default());
    Faulty {
        server,
        rate,
        quota,
    }
}

async fn statuses(f: &Faulty, t: &Tenant) -> (u16, bool, u16) {
    let rate = ServiceBuilder::new().layer(f.rate.clone()).service(ok());
    let got = send(&rate, plain(t)).await;
    let quota = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(f.quota.clone())
        .service(ok());
    let q = send(&quota, scan(t)).await;
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
        if statuses(f, t).await == (202, true, 202) {
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
    let t = Tenant::new("f", Plan::Pro, "k");
    assert_eq!(statuses(&f, &t).await, (202, true, 202));
    f.server.stop();
    // Down: requests pass without rate-limit headers; scans are refused with 500.
    for _ in 0..3 {
        assert_eq!(statuses(&f, &t).await, (202, false, 500));
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
    let t = Tenant::new("slow", Plan::Pro, "k");
    assert_eq!(statuses(&f, &t).await, (202, true, 202));
    f.server.pause();
    // Every call is bounded by the timeout: the answers come, they do not hang.
    let answered = tokio::time::timeout(Duration::from_secs(10), statuses(&f, &t)).await;
    assert_eq!(
        answered.expect("answered within the bound"),
        (202, false, 500)
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
    let rate =
        PlanRateLimitLayer::with_store(RedisRateStore::new(backend.clone()), Plans::default())
            .on_store_error(OnStoreError::Reject);
    let quota = QuotaGuardLayer::with_store(RedisQuotaStore::new(backend), Plans::default())
        .on_store_error(OnStoreError::Allow);
    let mut f = Faulty {
        server,
        rate,
        quota,
    };
    f.server.stop();
    let t = Tenant::new("choice", Plan::Pro, "k");
    let rate = ServiceBuilder::new().layer(f.rate.clone()).service(ok());
    assert_envelope(&send(&rate, plain(&t)).await, 500, INTERNAL);
    let quota = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(f.quota.clone())
        .service(ok());
    assert_eq!(send(&quota, scan(&t)).await.0, 202);
}
