//! The `RateStore` suite: GCRA's burst, `X-RateLimit-Remaining`, `Retry-After` and long-run
//! rate, plan changes, independent tenants, peeking, and concurrency, through the layer.

use std::{sync::Arc, time::Duration};

use tower::ServiceBuilder;
use tower_nat::{
    plan::{Plan, Plans},
    rate_limit::{PlanRateLimitLayer, RateStore},
};

use super::{Stores, conformance};
use crate::common::{handler, header, plain, send, tenant};

async fn burst_remaining_and_retry_after<R: RateStore, Q, C>(s: Stores<R, Q, C>) {
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

async fn upgrades_and_independent_tenants<R: RateStore, Q, C>(s: Stores<R, Q, C>) {
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

async fn peeking_spends_nothing<R: RateStore, Q, C>(s: Stores<R, Q, C>) {
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

/// 50 requests at once from a Free tenant (30 a minute): exactly 30 pass, and the
/// remaining counts they carry are 29 down to 0, each once.
async fn concurrent_requests_never_admit_extra<R: RateStore, Q, C>(s: Stores<R, Q, C>) {
    let svc = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(s.rate.clone())
                .clock(Arc::new(s.clock.clone())),
        )
        .service(handler());
    let free = tenant("t-burst", Plan::FREE);
    let mut sends = Vec::new();
    for _ in 0..50 {
        let (svc, req) = (svc.clone(), plain(&free, "/api/v1/scans"));
        sends.push(tokio::spawn(async move {
            let response = tower::ServiceExt::oneshot(svc, req).await.unwrap();
            let remaining = response
                .headers()
                .get("x-ratelimit-remaining")
                .map(|v| v.to_str().unwrap().parse::<u32>().unwrap());
            (response.status().as_u16(), remaining)
        }));
    }
    let mut remaining = Vec::new();
    let mut refused = 0;
    for s in sends {
        match s.await.unwrap() {
            (200, Some(left)) => remaining.push(left),
            (429, _) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..30).collect::<Vec<_>>());
    assert_eq!(refused, 20);
}

macro_rules! rate_suite {
    ($($backend:ident),+) => {
        $(conformance!($backend =>
            burst_remaining_and_retry_after,
            upgrades_and_independent_tenants,
            peeking_spends_nothing,
            concurrent_requests_never_admit_extra,
        );)+
    };
}

rate_suite!(memory, later, fallback);
#[cfg(feature = "redis")]
rate_suite!(redis, redis_cluster, fallback_redis);
