//! Criterion benches of every layer, the whole stack, and tower_governor on the same request
//! stream, in one run. `cargo bench --bench layers`; BENCHMARKS.md has the figures.
//!
//! Requests are built outside the timed routine (criterion's `iter_batched`); every service
//! answers at once, so futures are polled once without a runtime. The inner service is the
//! same everywhere: a handler that answers with a body and a content type.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

mod common;

use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Fixture, HeaderResolver, fixture, governor_headers, governor_plain, handler, now};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_nat::{
    auth::ApiKeyAuthLayer, billing::BillingConfiguredLayer, feature_gate::FeatureGateLayer,
    internal_error::InternalErrorGuardLayer, quota::QuotaGuardLayer,
    rate_limit::PlanRateLimitLayer, scan_request::ValidateScanRequestLayer,
};

fn bench<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    f: &Fixture,
    mut service: S,
) where
    S: Service<Request<Full<Bytes>>>,
{
    let mut next = f.stream();
    group.bench_function(name, |b| {
        b.iter_batched(
            &mut next,
            |req| now(service.call(req)),
            BatchSize::SmallInput,
        )
    });
}

/// Each layer alone, over 1,000 tenants.
fn layers(c: &mut Criterion) {
    let f = fixture(1_000);
    let mut group = c.benchmark_group("layers");
    bench(&mut group, "bare handler", &f, handler());
    bench(
        &mut group,
        "InternalErrorGuard",
        &f,
        InternalErrorGuardLayer::new().layer(handler()),
    );
    bench(
        &mut group,
        "BillingConfigured",
        &f,
        BillingConfiguredLayer::new(false).layer(handler()),
    );
    let auth = ApiKeyAuthLayer::new(f.keys.clone()).clock(Arc::new(f.clock.clone()));
    let fresh = f.fresh();
    bench(
        &mut group,
        "bare handler (fresh requests)",
        &fresh,
        handler(),
    );
    bench(
        &mut group,
        "ApiKeyAuth (SHA-256 + lookup)",
        &fresh,
        auth.layer(handler()),
    );
    let cached = ApiKeyAuthLayer::new(fresh.cached_keys()).clock(Arc::new(f.clock.clone()));
    bench(
        &mut group,
        "ApiKeyAuth (SHA-256 + CachedKeyStore hit)",
        &fresh,
        cached.layer(handler()),
    );
    let rate = PlanRateLimitLayer::new(f.plans.clone()).clock(Arc::new(f.clock.clone()));
    bench(&mut group, "PlanRateLimit", &f, rate.layer(handler()));
    bench(
        &mut group,
        "ValidateScanRequest (not a scan)",
        &f,
        ValidateScanRequestLayer::new().layer(handler()),
    );
    bench(
        &mut group,
        "FeatureGate (scans, not a scan)",
        &f,
        FeatureGateLayer::scans(f.plans.clone()).layer(handler()),
    );
    let quota = QuotaGuardLayer::new(f.plans.clone()).clock(Arc::new(f.clock.clone()));
    bench(
        &mut group,
        "QuotaGuard (not a scan)",
        &f,
        quota.layer(handler()),
    );
    group.finish();
}

/// Our limiter against tower_governor on the same request stream.
fn rate_limit(c: &mut Criterion) {
    let f = fixture(1_000);
    let mut group = c.benchmark_group("rate_limit");
    bench(&mut group, "bare handler", &f, handler());
    bench(
        &mut group,
        "tower_governor (header key)",
        &f,
        governor_plain(handler()),
    );
    bench(
        &mut group,
        "tower_governor (header key, use_headers)",
        &f,
        governor_headers(handler()),
    );
    let limiter = || PlanRateLimitLayer::new(f.plans.clone()).clock(Arc::new(f.clock.clone()));
    bench(
        &mut group,
        "PlanRateLimit (tenant)",
        &f,
        limiter().layer(handler()),
    );
    let by_header = limiter().with_resolver(HeaderResolver(4_000));
    bench(
        &mut group,
        "PlanRateLimit (header key)",
        &f,
        by_header.layer(handler()),
    );
    group.finish();
}

/// The whole stack against one tower_governor layer, at 1,000 and 1,000,000 tenants.
fn stack(c: &mut Criterion) {
    for tenants in [1_000usize, 1_000_000] {
        let f = fixture(tenants).fresh();
        let mut group = c.benchmark_group(format!("stack/{tenants} tenants"));
        bench(&mut group, "bare handler", &f, handler());
        bench(
            &mut group,
            "tower_governor (header key)",
            &f,
            governor_plain(handler()),
        );
        bench(
            &mut group,
            "NatLayer (whole stack, not a scan)",
            &f,
            f.nat().layer(handler()),
        );
        group.finish();
    }
}

/// `service` over requests from `next`, built outside the timed routine.
fn bench_with<S, N>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut next: N,
    mut service: S,
) where
    S: Service<Request<Full<Bytes>>>,
    N: FnMut() -> Request<Full<Bytes>>,
{
    group.bench_function(name, |b| {
        b.iter_batched(
            &mut next,
            |req| now(service.call(req)),
            BatchSize::SmallInput,
        )
    });
}

/// Requests as a server receives them (each built anew, no `Tenant`, no extensions map, the
/// tenants in a scattered order), at 1,000 and 100,000 tenants: the bare handler, one
/// tower_governor layer keyed by the header, our limiter keyed by the same header, and the
/// whole stack. Own cost = time − the bare handler's.
fn as_received(c: &mut Criterion) {
    for tenants in [1_000usize, 100_000] {
        let f = fixture(tenants);
        let mut group = c.benchmark_group(format!("as received/{tenants} tenants"));
        bench_with(&mut group, "bare handler", f.scattered(), handler());
        bench_with(
            &mut group,
            "tower_governor (header key)",
            f.scattered(),
            governor_plain(handler()),
        );
        let limiter = PlanRateLimitLayer::new(f.plans.clone())
            .clock(Arc::new(f.clock.clone()))
            .with_resolver(HeaderResolver(4_000));
        bench_with(
            &mut group,
            "PlanRateLimit (header key)",
            f.scattered(),
            limiter.layer(handler()),
        );
        bench_with(
            &mut group,
            "glue: SHA-256 + HashMap auth, tower_governor by tenant (use_headers)",
            f.scattered(),
            f.glue(handler()),
        );
        bench_with(
            &mut group,
            "floor: the contract's work inline",
            f.scattered(),
            f.floor(handler()),
        );
        bench_with(
            &mut group,
            "duties: the floor and the stack's other duties inline",
            f.scattered(),
            f.floor_with_duties(handler()),
        );
        bench_with(
            &mut group,
            "NatLayer (whole stack, not a scan)",
            f.scattered(),
            f.nat().layer(handler()),
        );
        group.finish();
    }
}

/// Wall time for `iters` requests split over `threads` threads sharing the same state.
fn run<S, F>(f: &Fixture, threads: usize, make: &F, iters: u64) -> Duration
where
    F: Fn() -> S,
    S: Service<Request<Full<Bytes>>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut service = make();
            let barrier = barrier.clone();
            // Each thread sends its own share of the tenants, prebuilt.
            let requests: Vec<_> = (0..(iters as usize).div_ceil(threads))
                .map(|i| f.requests[(i * threads + t) % f.requests.len()].clone())
                .collect();
            std::thread::spawn(move || {
                barrier.wait();
                for req in requests {
                    let _ = now(service.call(req));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

/// Time per request with one thread and with two threads sharing the same state.
fn threads(c: &mut Criterion) {
    // 100,000 tenants: without the clock moving, none reaches its limit in a run.
    let f = fixture(100_000).fresh();
    let mut group = c.benchmark_group("threads");
    // One state for all threads: the limiter state is shared, as in a server.
    let nat = f.nat();
    let ours = || nat.layer(handler());
    let theirs = governor_plain(handler());
    let theirs = || theirs.clone();
    for threads in [1usize, 2] {
        group.bench_with_input(BenchmarkId::new("NatLayer", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run(&f, t, &ours, iters))
        });
        group.bench_with_input(
            BenchmarkId::new("tower_governor", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run(&f, t, &theirs, iters)),
        );
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40)
}

/// A key lookup alone, by hash, over 1,000 keys: the in-memory store against a cache hit.
fn key_lookup(c: &mut Criterion) {
    use tower_nat::{
        auth::{KeyHash, KeyStore},
        store::Answer,
    };
    let f = fixture(1_000).fresh();
    let hashes: Vec<KeyHash> = f
        .requests
        .iter()
        .map(|r| KeyHash::of(r.headers()["x-api-key"].as_bytes()))
        .collect();
    fn hit<K: KeyStore>(store: &K, hash: &KeyHash) -> bool {
        match store.lookup(hash) {
            Answer::Ready(answer) => answer.is_ok_and(|r| r.is_some()),
            Answer::Pending(_) => panic!("a hit answers at once"),
        }
    }
    let mut group = c.benchmark_group("key_lookup");
    let cache = f.cached_keys();
    let mut i = 0;
    group.bench_function("MemoryKeyStore", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            hit(&f.keys, &hashes[i])
        })
    });
    group.bench_function("CachedKeyStore hit", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            hit(&cache, &hashes[i])
        })
    });
    // The same on the system clock (one clock read per lookup), as servers run it.
    let system = tower_nat::auth::CachedKeyStore::new(f.keys.clone());
    for hash in &hashes {
        if let Answer::Pending(lookup) = system.lookup(hash) {
            assert!(common::now(lookup).unwrap().is_some());
        }
    }
    group.bench_function("CachedKeyStore hit, system clock", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            hit(&system, &hashes[i])
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = layers, rate_limit, stack, as_received, threads, key_lookup
}
criterion_main!(benches);
