//! One suite, run against every store: the in-memory stores and (with the `redis` feature)
//! the Redis stores, so the backends agree on every number.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{Gated, handler, header, plain, scan, send, tenant};
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
    quota::{MemoryQuotaStore, QuotaGuardLayer, QuotaStore},
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateStore},
    scan_request::ValidateScanRequestLayer,
};

/// The stores under test, on a shared fake clock.
struct Stores<R, Q> {
    rate: R,
    quota: Q,
    clock: FakeClock,
    #[allow(dead_code)]
    guard: Option<Box<dyn std::any::Any + Send>>,
}

fn clock() -> FakeClock {
    FakeClock::at_date(UtcDate::new(2025, 6, 10).unwrap())
}

async fn memory() -> Option<Stores<MemoryRateStore, MemoryQuotaStore>> {
    let clock = clock();
    Some(Stores {
        rate: MemoryRateStore::new(),
        quota: MemoryQuotaStore::new(),
        clock,
        guard: None,
    })
}

#[cfg(feature = "redis")]
async fn redis()
-> Option<Stores<tower_nat::rate_limit::RedisRateStore, tower_nat::quota::RedisQuotaStore>> {
    use tower_nat::{
        quota::RedisQuotaStore,
        rate_limit::RedisRateStore,
        store::redis::{RedisBackend, TimeSource},
    };
    let server = crate::common::redis_server::RedisServer::start()?;
    let clock = clock();
    let backend = RedisBackend::open_with_timeout(&server.url(), Duration::from_secs(2))
        .unwrap()
        .prefix("suite:");
    Some(Stores {
        rate: RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller),
        quota: RedisQuotaStore::new(backend).time_source(TimeSource::Caller),
        clock,
        guard: Some(Box::new(server)),
    })
}

/// The same stores on a three-master Redis Cluster.
#[cfg(feature = "redis")]
async fn redis_cluster()
-> Option<Stores<tower_nat::rate_limit::RedisRateStore, tower_nat::quota::RedisQuotaStore>> {
    use tower_nat::{
        quota::RedisQuotaStore,
        rate_limit::RedisRateStore,
        store::redis::{RedisBackend, TimeSource},
    };
    let cluster = crate::common::redis_cluster::RedisCluster::start()?;
    let backend = RedisBackend::open_cluster_with_timeout(&cluster.urls(), Duration::from_secs(2))
        .unwrap()
        .prefix("suite:");
    assert!(backend.is_cluster());
    Some(Stores {
        rate: RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller),
        quota: RedisQuotaStore::new(backend).time_source(TimeSource::Caller),
        clock: clock(),
        guard: Some(Box::new(cluster)),
    })
}

async fn burst_remaining_and_retry_after<R: RateStore, Q>(s: Stores<R, Q>) {
    let svc = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(s.rate.clone())
                .clock(Arc::new(s.clock.clone())),
        )
        .service(handler());
    let free = tenant("t-free", Plan::FREE);
    for i in 0..30u64 {
        let got = send(&svc, plain(&free, "/api/v1/scans")).await;
        assert_eq!(got.0, 200);
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), 29 - i);
    }
    let got = send(&svc, plain(&free, "/api/v1/scans")).await;
    assert_eq!(got.0, 429);
    assert_eq!(got.1["retry-after"], "2");
    s.clock.advance(Duration::from_millis(1_500));
    let got = send(&svc, plain(&free, "/api/v1/scans")).await;
    assert_eq!(
        (got.0.as_u16(), got.1["retry-after"].to_str().unwrap()),
        (429, "1")
    );
    s.clock.advance(Duration::from_secs(1));
    let got = send(&svc, plain(&free, "/api/v1/scans")).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 0)
    );
    // Half a minute later, 15 intervals have drained.
    s.clock.advance(Duration::from_secs(30));
    let got = send(&svc, plain(&free, "/api/v1/scans")).await;
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 14);
    for _ in 0..14 {
        assert_eq!(send(&svc, plain(&free, "/api/v1/scans")).await.0, 200);
    }
    assert_eq!(send(&svc, plain(&free, "/api/v1/scans")).await.0, 429);
}

async fn upgrades_and_independent_tenants<R: RateStore, Q>(s: Stores<R, Q>) {
    let svc = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(s.rate.clone())
                .clock(Arc::new(s.clock.clone())),
        )
        .service(handler());
    for _ in 0..30 {
        send(&svc, plain(&tenant("a", Plan::FREE), "/api/v1/scans")).await;
    }
    assert_eq!(
        send(&svc, plain(&tenant("a", Plan::FREE), "/api/v1/scans"))
            .await
            .0,
        429
    );
    let other = send(&svc, plain(&tenant("b", Plan::FREE), "/api/v1/scans")).await;
    assert_eq!(header(&other.1, "x-ratelimit-remaining"), 29);
    let up = send(&svc, plain(&tenant("a", Plan::PRO), "/api/v1/scans")).await;
    assert_eq!(
        (up.0.as_u16(), header(&up.1, "x-ratelimit-remaining")),
        (200, 89)
    );
}

async fn exact_quota_reset_date_and_release<R, Q: QuotaStore>(s: Stores<R, Q>) {
    let plans = Plans::from_json(
        r#"{"plans": {"pro": {"functional_scans_per_month": 3, "security_scans_per_month": 1}}}"#,
    )
    .unwrap();
    let quota = QuotaGuardLayer::new(plans)
        .with_store(s.quota.clone())
        .clock(Arc::new(s.clock.clone()));
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(handler());
    let pro = tenant("q-pro", Plan::PRO);
    assert_eq!(
        send(&svc, scan(&pro, "functional", Some("500"))).await.0,
        500
    );
    assert_eq!(send(&svc, scan(&pro, "full", None)).await.0, 202);
    assert_eq!(send(&svc, scan(&pro, "full", None)).await.0, 402);
    assert_eq!(send(&svc, scan(&pro, "security", None)).await.0, 402);
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    assert_eq!(
        send(&svc, scan(&pro, "functional", Some("404"))).await.0,
        404
    );
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    let got = send(&svc, scan(&pro, "functional", None)).await;
    assert_eq!(
        std::str::from_utf8(&got.2).unwrap(),
        r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-07-01.","quota_reset_date":"2025-07-01T00:00:00Z"}"#
    );
    // Commits may settle in the background: the usage read waits for them by polling a
    // bounded number of times.
    let mut usage = quota.usage(&pro).await.unwrap();
    for _ in 0..100 {
        if (usage.scans_used, usage.security_scan_count) == (3, 1) {
            break;
        }
        tokio::task::yield_now().await;
        usage = quota.usage(&pro).await.unwrap();
    }
    assert_eq!((usage.scans_used, usage.security_scan_count), (3, 1));
    // A new month starts from zero.
    s.clock.set(Duration::from_secs(
        UtcDate::new(2025, 7, 1).unwrap().unix_seconds(),
    ));
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
}

async fn concurrent_creations_never_overdraw<R, Q: QuotaStore>(s: Stores<R, Q>) {
    let quota = QuotaGuardLayer::new(Plans::default())
        .with_store(s.quota.clone())
        .clock(Arc::new(s.clock.clone()));
    // Admitted requests are held in flight until every request has been decided.
    let gated = Gated::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(gated.service());
    let free = tenant("c-free", Plan::FREE);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (svc, free) = (svc.clone(), free.clone());
            let (refused, gated) = (refused.clone(), gated.clone());
            tokio::spawn(async move {
                let status = svc
                    .oneshot(scan(&free, "functional", None))
                    .await
                    .unwrap()
                    .status();
                if status == StatusCode::PAYMENT_REQUIRED {
                    refused.fetch_add(1, Ordering::SeqCst);
                    gated.notify();
                }
                status
            })
        })
        .collect();
    gated
        .until(|| gated.inside() + refused.load(Ordering::SeqCst) >= 64)
        .await;
    assert_eq!((gated.inside(), refused.load(Ordering::SeqCst)), (50, 14));
    gated.open(64);
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::ACCEPTED {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
    let mut used = 0;
    for _ in 0..1000 {
        used = quota.usage(&free).await.unwrap().scans_used;
        if used == 50 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(used, 50);
}

async fn peeking_spends_nothing<R: RateStore, Q>(s: Stores<R, Q>) {
    let layer = PlanRateLimitLayer::new(Plans::default())
        .with_store(s.rate.clone())
        .clock(Arc::new(s.clock.clone()));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(handler());
    let free = tenant("t-peek", Plan::FREE);
    for _ in 0..3 {
        let now = layer.peek(&free).await.unwrap().unwrap();
        assert_eq!((now.allowed, now.limit, now.remaining), (true, 30, 30));
        assert_eq!(now.reset, Duration::ZERO);
    }
    // After one request the status says what its headers said.
    let got = send(&svc, plain(&free, "/")).await;
    let now = layer.peek(&free).await.unwrap().unwrap();
    assert_eq!(
        u64::from(now.remaining),
        header(&got.1, "x-ratelimit-remaining")
    );
    assert_eq!(now.reset, Duration::from_secs(2));
    for _ in 0..29 {
        assert_eq!(send(&svc, plain(&free, "/")).await.0, 200);
    }
    let now = layer.peek(&free).await.unwrap().unwrap();
    assert_eq!((now.allowed, now.remaining), (false, 0));
    assert_eq!(now.retry_after, Duration::from_secs(2));
    assert_eq!(now.reset, Duration::from_secs(60));
    s.clock.advance(Duration::from_secs(2));
    let now = layer.peek(&free).await.unwrap().unwrap();
    assert_eq!((now.allowed, now.remaining), (true, 1));
    // Peeking took nothing: the one request the two seconds earned still passes.
    assert_eq!(send(&svc, plain(&free, "/")).await.0, 200);
    assert_eq!(send(&svc, plain(&free, "/")).await.0, 429);
    // A plan the table lacks has no answer.
    let unknown = tenant("t-peek", Plan::named("gold", "Gold"));
    assert_eq!(layer.peek(&unknown).await.unwrap(), None);
}

macro_rules! store_suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn burst_remaining_and_retry_after() {
                if let Some(s) = super::$backend().await {
                    super::burst_remaining_and_retry_after(s).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn upgrades_and_independent_tenants() {
                if let Some(s) = super::$backend().await {
                    super::upgrades_and_independent_tenants(s).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exact_quota_reset_date_and_release() {
                if let Some(s) = super::$backend().await {
                    super::exact_quota_reset_date_and_release(s).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peeking_spends_nothing() {
                if let Some(s) = super::$backend().await {
                    super::peeking_spends_nothing(s).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_creations_never_overdraw() {
                if let Some(s) = super::$backend().await {
                    super::concurrent_creations_never_overdraw(s).await;
                }
            }
        }
    };
}

store_suite!(memory);
#[cfg(feature = "redis")]
store_suite!(redis);
#[cfg(feature = "redis")]
store_suite!(redis_cluster);
