//! InternalErrorGuard: panics and inner errors become the 500 envelope and leak nothing.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::common::{INTERNAL, assert_envelope, empty, get, send};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_nat::internal_error::InternalErrorGuardLayer;

const SECRET: &str = "postgres://admin:hunter2@db";

#[tokio::test]
async fn inner_error_becomes_500_without_its_text() {
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other(SECRET))
        });
    let got = send(&service, empty(get("/"))).await;
    assert_envelope(&got, 500, INTERNAL);
}

#[tokio::test]
async fn panic_in_the_future_becomes_500_without_its_message() {
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .service_fn(|req: Request<Full<Bytes>>| async move {
            if req.uri().path() == "/boom" {
                panic!("{SECRET}");
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"fine"))))
        });
    assert_envelope(&send(&service, empty(get("/boom"))).await, 500, INTERNAL);
    // The same service keeps answering.
    let got = send(&service, empty(get("/ok"))).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"fine"[..]));
}

/// A service that panics in `call` itself, before returning a future.
#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<Full<Bytes>>> for PanicsInCall {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        panic!("{SECRET}")
    }
}

/// A service whose `poll_ready` fails.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<Full<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Err(std::io::Error::other(SECRET)))
    }
    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        panic!("called although not ready")
    }
}

#[tokio::test]
async fn panic_in_call_and_failed_readiness_become_500() {
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .service(PanicsInCall);
    assert_envelope(&send(&service, empty(get("/"))).await, 500, INTERNAL);
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .service(NeverReady);
    assert_envelope(&send(&service, empty(get("/"))).await, 500, INTERNAL);
}

#[tokio::test]
async fn successful_responses_pass_untouched() {
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .service_fn(|_: Request<Full<Bytes>>| async {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
            *r.status_mut() = http::StatusCode::CREATED;
            r.headers_mut().insert("x-mine", "1".parse().unwrap());
            Ok::<_, Infallible>(r)
        });
    let got = send(&service, empty(get("/"))).await;
    assert_eq!(got.0, 201);
    assert_eq!(got.1["x-mine"], "1");
    assert_eq!(&got.2[..], b"{}");
}
