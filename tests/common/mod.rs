//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// A handler that counts its calls and answers 200 `ok`.
#[derive(Clone, Default)]
pub struct Counted {
    calls: Arc<AtomicUsize>,
}

impl Counted {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let calls = self.calls.clone();
        tower::service_fn(move |_req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        })
    }
}

/// Sends `req` through a clone of `service` and returns status, headers and body bytes.
pub async fn send<S, B>(
    service: &S,
    req: Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

pub fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

pub fn empty(builder: http::request::Builder) -> Request<Full<Bytes>> {
    builder.body(Full::default()).unwrap()
}

pub const UNAUTHORIZED: &str =
    r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#;
pub const STRIPE: &str = r#"{"error":"STRIPE_NOT_CONFIGURED","message":"Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."}"#;
pub const INTERNAL: &str = r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#;

/// Asserts a NAT envelope response: status, JSON content type and exact body.
pub fn assert_envelope(got: &(http::StatusCode, http::HeaderMap, Bytes), status: u16, body: &str) {
    assert_eq!(got.0.as_u16(), status, "status; body {:?}", got.2);
    assert_eq!(got.1.get("content-type").unwrap(), "application/json");
    assert_eq!(std::str::from_utf8(&got.2).unwrap(), body);
}
