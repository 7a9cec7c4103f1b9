//! Criterion benches of the layers, one group per question. `cargo bench` runs them all.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use std::{sync::Arc, time::Duration};

use tower::{Layer, Service, ServiceBuilder};
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};
use tower_nat::{
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::FakeClock,
    internal_error::InternalErrorGuardLayer,
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateKeyResolver, RateTarget},
    tenant::{Plan, PlanLimits, Plans, Tenant, TenantId},
};

type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

fn ok_service() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Ready,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    })
}

/// Drives a ready future to completion without a runtime.
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the benched stack must answer at once"),
    }
}

fn foundation(c: &mut Criterion) {
    let store = MemoryKeyStore::new();
    let keys: Vec<String> = (0..1_000)
        .map(|i| {
            let id = format!("tenant-{i}");
            store.insert_tenant(id.as_str(), Plan::Pro);
            store.issue_key(&id, None).unwrap().expose().to_owned()
        })
        .collect();
    let mut group = c.benchmark_group("foundation");
    let mut bare = ok_service();
    let mut auth = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(store.clone()))
        .service(ok_service());
    let mut guarded = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .layer(BillingConfiguredLayer::new(false))
        .layer(ApiKeyAuthLayer::new(store))
        .service(ok_service());
    let mut i = 0usize;
    let mut request = move || {
        i = (i + 1) % keys.len();
        Request::get("/api/v1/usage")
            .header("x-api-key", &keys[i])
            .body(Full::default())
            .unwrap()
    };
    group.bench_function("bare service_fn", |b| {
        b.iter_batched(
            &mut request,
            |req| now(bare.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("ApiKeyAuth", |b| {
        b.iter_batched(
            &mut request,
            |req| now(auth.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("guard + billing + ApiKeyAuth", |b| {
        b.iter_batched(
            &mut request,
            |req| now(guarded.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A tower_governor key extractor that keys by the `X-API-Key` header, as a server without
/// tenant-aware middleware would.
#[derive(Clone)]
struct HeaderKey;

impl tower_governor::key_extractor::KeyExtractor for HeaderKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// Our resolver keyed by the same header, for a like-for-like comparison.
#[derive(Clone)]
struct HeaderResolver(u32);

impl RateKeyResolver for HeaderResolver {
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Option<RateTarget<'r>> {
        let key = req.headers().get("x-api-key")?.to_str().ok()?;
        Some(RateTarget {
            key: std::borrow::Cow::Owned(TenantId::from(key)),
            limit: self.0,
        })
    }
}

type AxumReady = std::future::Ready<Result<Response<axum::body::Body>, Infallible>>;

/// The inner service of the rate-limit group: tower_governor needs an axum body.
fn axum_ok() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<axum::body::Body>,
    Error = Infallible,
    Future = AxumReady,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        // Like a real handler's answer: a body and its content type.
        let mut response = Response::new(axum::body::Body::empty());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(response))
    })
}

/// Our limiter against tower_governor on the same request stream: 1,000 keys, round robin,
/// limits high enough that every request is admitted (the common path).
fn rate_limit(c: &mut Criterion) {
    const KEYS: usize = 1_000;
    const LIMIT: u32 = 1_000_000_000;
    const OUR_LIMIT: u32 = 4_000;
    let requests: Vec<Request<Full<Bytes>>> = (0..KEYS)
        .map(|i| {
            let mut req = Request::get("/api/v1/scans")
                .header("x-api-key", format!("nat_pk_{i:032}"))
                .body(Full::default())
                .unwrap();
            req.extensions_mut().insert(Tenant::new(
                format!("tenant-{i}"),
                Plan::Enterprise,
                "key",
            ));
            req
        })
        .collect();
    // Our limiter runs on a fake clock that advances 15 µs a request, outside the timed
    // routine: with 1,000 keys in turn each key sees 4,000 requests a minute, exactly its
    // limit, so every request is admitted and the headers carry realistic numbers.
    let clock = FakeClock::new(Duration::from_secs(1_750_000_000));
    let mut next = {
        let mut i = 0usize;
        let clock = clock.clone();
        move || {
            i = (i + 1) % KEYS;
            clock.advance(Duration::from_micros(15));
            requests[i].clone()
        }
    };
    let mut plans_limits = PlanLimits::default_for(Plan::Enterprise);
    plans_limits.requests_per_minute = OUR_LIMIT;
    let plans = Plans::default().with(Plan::Enterprise, plans_limits);

    let governor = GovernorConfigBuilder::default()
        .key_extractor(HeaderKey)
        .per_nanosecond(1)
        .burst_size(LIMIT)
        .finish()
        .unwrap();
    let governor_headers = GovernorConfigBuilder::default()
        .key_extractor(HeaderKey)
        .per_nanosecond(1)
        .burst_size(LIMIT)
        .use_headers()
        .finish()
        .unwrap();
    let mut gov = GovernorLayer {
        config: Arc::new(governor),
    }
    .layer(axum_ok());
    let mut gov_headers = GovernorLayer {
        config: Arc::new(governor_headers),
    }
    .layer(axum_ok());
    let store = || MemoryRateStore::with_clock(Arc::new(clock.clone()));
    let mut ours = PlanRateLimitLayer::with_store(store(), plans).layer(axum_ok());
    let mut ours_header = PlanRateLimitLayer::with_store(store(), Plans::default())
        .resolver(HeaderResolver(OUR_LIMIT))
        .layer(axum_ok());

    let mut bare = axum_ok();
    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("bare inner service", |b| {
        b.iter_batched(&mut next, |req| now(bare.call(req)), BatchSize::SmallInput)
    });
    group.bench_function("tower_governor (header key)", |b| {
        b.iter_batched(&mut next, |req| now(gov.call(req)), BatchSize::SmallInput)
    });
    group.bench_function("tower_governor (header key, use_headers)", |b| {
        b.iter_batched(
            &mut next,
            |req| now(gov_headers.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("PlanRateLimit (tenant)", |b| {
        b.iter_batched(&mut next, |req| now(ours.call(req)), BatchSize::SmallInput)
    });
    group.bench_function("PlanRateLimit (header key)", |b| {
        b.iter_batched(
            &mut next,
            |req| now(ours_header.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, foundation, rate_limit);
criterion_main!(benches);
