//! Helpers shared by the integration tests: a handler whose answer the request picks, a
//! counting handler, request builders, exact-envelope assertions, and store doubles.

#[cfg(feature = "postgres")]
pub mod pg_server;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "redis")]
pub mod redis_server;
pub mod stores;
#[cfg(feature = "axum")]
pub mod wire;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_nat::{plan::Plan, tenant::Tenant};

pub const UNAUTHORIZED: &str =
    r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#;
pub const STRIPE: &str = r#"{"error":"STRIPE_NOT_CONFIGURED","message":"Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."}"#;
pub const INTERNAL: &str = r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#;
#[cfg(feature = "axum")]
pub const NOT_FOUND: &str =
    r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#;
pub const SECURITY_ON_FREE: &str = r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Security scanning is not available on the Free plan. Upgrade to access.","feature":"security_scanning","plan":"free"}"#;

/// The 400 envelope with `message`.
pub fn invalid(message: &str) -> String {
    format!(
        r#"{{"error":"INVALID_REQUEST","message":{}}}"#,
        serde_json::to_string(message).unwrap()
    )
}

/// The 402 envelope for a quota that resets on `date` (`YYYY-MM-DD`).
pub fn quota_body(date: &str) -> String {
    format!(
        r#"{{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on {date}.","quota_reset_date":"{date}T00:00:00Z"}}"#
    )
}

/// A handler of the tests: a cloneable service answering with a `Full<Bytes>` body.
pub type Handler<E = std::convert::Infallible> =
    tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, E>;

/// The handler of most tests. It answers `ok`, with 202 to a `POST` and 200 otherwise, unless
/// the request's `x-outcome` header says otherwise: a status code, `error` (the service
/// fails), `panic`, or `pending` (it never answers). Its scans end at once: it frees the
/// scan's concurrency slot before answering (a held slot stays held with `x-slot: keep`).
pub fn handler() -> Handler<std::io::Error> {
    Handler::new(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        if req.headers().get("x-slot").is_none_or(|v| v != "keep") {
            end_scan(req.extensions());
        }
        let outcome = req
            .headers()
            .get("x-outcome")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = match outcome.as_deref() {
            Some("error") => return Err(std::io::Error::other("backend down")),
            Some("panic") => panic!("handler panicked"),
            Some("pending") => std::future::pending::<StatusCode>().await,
            Some(code) => StatusCode::from_bytes(code.as_bytes()).unwrap(),
            None if req.method() == http::Method::POST => StatusCode::ACCEPTED,
            None => StatusCode::OK,
        };
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status;
        Ok(r)
    }))
}

/// Ends the request's scan at once, if it holds a concurrency slot.
pub fn end_scan(extensions: &http::Extensions) {
    if let Some(slot) = extensions.get::<tower_nat::concurrency::ScanSlot>() {
        slot.release();
    }
}

/// An axum scan handler whose scans end at once: 202 `{"scan_id":"s1"}`, slot freed.
#[cfg(feature = "axum")]
pub async fn instant_scan(
    slot: Option<axum::Extension<tower_nat::concurrency::ScanSlot>>,
) -> (StatusCode, &'static str) {
    if let Some(axum::Extension(slot)) = slot {
        slot.release();
    }
    (StatusCode::ACCEPTED, r#"{"scan_id":"s1"}"#)
}

/// A handler that counts its calls and answers 200 `ok`.
#[derive(Clone, Default)]
pub struct Counted {
    calls: Arc<AtomicUsize>,
}

impl Counted {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn service(&self) -> Handler {
        let calls = self.calls.clone();
        Handler::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            end_scan(req.extensions());
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        }))
    }
}

/// Status, headers and body bytes of a response.
pub type Answer = (StatusCode, http::HeaderMap, Bytes);

/// Sends `req` through a clone of `service` and returns status, headers and body bytes.
pub async fn send<S, B>(service: &S, req: Request<Full<Bytes>>) -> Answer
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

/// A tenant on `plan`.
pub fn tenant(id: &str, plan: Plan) -> Tenant {
    Tenant::new(id, plan, "key_test")
}

/// `GET path` from `tenant` (as authentication would leave it).
pub fn plain(tenant: &Tenant, path: &str) -> Request<Full<Bytes>> {
    let mut req = empty(get(path));
    req.extensions_mut().insert(tenant.clone());
    req
}

/// A scan creation of `mode` from `tenant`; `outcome` goes into `x-outcome`.
pub fn scan(tenant: &Tenant, mode: &str, outcome: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/api/v1/scan");
    if let Some(o) = outcome {
        b = b.header("x-outcome", o);
    }
    let mut req = b
        .body(Full::new(Bytes::from(format!(
            r#"{{"url":"https://example.com","mode":"{mode}"}}"#
        ))))
        .unwrap();
    req.extensions_mut().insert(tenant.clone());
    req
}

/// A header's value as a number.
pub fn header(h: &http::HeaderMap, name: &str) -> u64 {
    h[name].to_str().unwrap().parse().unwrap()
}

/// Asserts a NAT envelope response: status, JSON content type and exact body.
pub fn assert_envelope(got: &Answer, status: u16, body: &str) {
    assert_eq!(got.0.as_u16(), status, "status; body {:?}", got.2);
    assert_eq!(got.1.get("content-type").unwrap(), "application/json");
    assert_eq!(std::str::from_utf8(&got.2).unwrap(), body);
}

/// A streaming body of `chunks`, with no `Content-Length`.
pub fn chunked(chunks: Vec<Vec<u8>>) -> axum::body::Body {
    /// A stream over an iterator, without a futures crate.
    struct Iter<I>(I);

    impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<I::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }

    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c))));
    axum::body::Body::new(http_body_util::StreamBody::new(Iter(frames)))
}

/// A handler that holds every request it gets until the test opens its gate, then answers
/// 202: to keep requests in flight on purpose.
#[derive(Clone)]
pub struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    inside: Arc<AtomicUsize>,
    entered: Arc<tokio::sync::Notify>,
}

impl Default for Gated {
    fn default() -> Self {
        Self {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            inside: Arc::default(),
            entered: Arc::default(),
        }
    }
}

impl Gated {
    /// Requests that reached the handler.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }

    /// Waits until `done()` holds, checking it each time a request reaches the handler (or
    /// `notify` is called).
    pub async fn until(&self, done: impl Fn() -> bool) {
        while !done() {
            self.entered.notified().await;
        }
    }

    /// Wakes `until` (for events other than a request reaching the handler).
    pub fn notify(&self) {
        self.entered.notify_one();
    }

    /// Lets `n` held requests answer.
    pub fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn service(&self) -> Handler {
        let this = self.clone();
        Handler::new(tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                this.inside.fetch_add(1, Ordering::SeqCst);
                this.entered.notify_one();
                this.gate.acquire().await.unwrap().forget();
                let mut r = Response::new(Full::<Bytes>::default());
                *r.status_mut() = StatusCode::ACCEPTED;
                Ok(r)
            }
        }))
    }
}
