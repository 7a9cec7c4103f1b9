//! Criterion benches of the layers, one group per question. `cargo bench` runs them all.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_nat::{
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    internal_error::InternalErrorGuardLayer,
    tenant::Plan,
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

criterion_group!(benches, foundation);
criterion_main!(benches);
