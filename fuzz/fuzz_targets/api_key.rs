//! Arbitrary bytes as the `X-API-Key` header through `ApiKeyAuth`: never a panic, always the
//! one 401 (no input equals the live key).
#![no_main]

use std::{
    convert::Infallible,
    future::Future,
    sync::OnceLock,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower_layer::Layer;
use tower_nat::{
    auth::{ApiKey, ApiKeyAuthLayer, MemoryKeyStore},
    plan::Plan,
};
use tower_service::Service;

fn store() -> &'static (MemoryKeyStore, ApiKey) {
    static STORE: OnceLock<(MemoryKeyStore, ApiKey)> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = MemoryKeyStore::new();
        store.insert_tenant("t", Plan::PRO);
        let key = store.issue_key("t", None).unwrap().key;
        (store, key)
    })
}

fuzz_target!(|data: &[u8]| {
    let (store, live) = store();
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut service = ApiKeyAuthLayer::new(store.clone()).layer(tower_service_fn());
    let mut req = Request::new(Full::<Bytes>::default());
    req.headers_mut().insert("x-api-key", value);
    let mut future = std::pin::pin!(service.call(req));
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("the in-memory store answers at once");
    };
    let expected = if data == live.expose().as_bytes() { 200 } else { 401 };
    assert_eq!(response.status().as_u16(), expected);
});

#[derive(Clone)]
struct Ok200;

impl Service<Request<Full<Bytes>>> for Ok200 {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

fn tower_service_fn() -> Ok200 {
    Ok200
}
