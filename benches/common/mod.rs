//! What the benches share: the handler every layer wraps, the tenants and their requests, and
//! a way to drive a future that answers at once.
#![allow(dead_code, unreachable_pub)] // Each bench uses part of it.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Layer;
use tower::Service;
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};
use tower_nat::{
    NatError, NatLayer,
    auth::{CachedKeyStore, KeyHash, KeyStore, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::FakeClock,
    plan::{Plan, PlanLimits, Plans},
    rate_limit::{RateKeyResolver, RateTarget},
    store::Answer,
    tenant::Tenant,
    tenant::TenantId,
};

pub type Body = axum::body::Body;

/// tower_governor keyed by the `X-API-Key` header, as a server without tenant-aware
/// middleware would key it.
#[derive(Clone)]
pub struct HeaderKey;

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

/// Defines a function that puts tower_governor in front of `inner`, with a burst no request
/// reaches (every request is admitted, as in our benches); `$finish` turns the builder into
/// the configuration.
macro_rules! governor_fn {
    ($name:ident, |$builder:ident| $finish:expr) => {
        pub fn $name<S>(
            inner: S,
        ) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static
        where
            S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>
                + Clone
                + Send
                + Sync
                + 'static,
        {
            let mut $builder = GovernorConfigBuilder::default().key_extractor(HeaderKey);
            $builder.per_nanosecond(1).burst_size(1_000_000_000);
            GovernorLayer {
                config: Arc::new($finish),
            }
            .layer(inner)
        }
    };
}

governor_fn!(governor_plain, |builder| builder.finish().unwrap());
governor_fn!(governor_headers, |builder| builder
    .use_headers()
    .finish()
    .unwrap());

/// Our resolver keyed by the same header, for a like-for-like comparison.
#[derive(Clone)]
pub struct HeaderResolver(pub u32);

impl RateKeyResolver for HeaderResolver {
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError> {
        let key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .ok_or(NatError::Unauthorized)?;
        Ok(Some(RateTarget {
            key: std::borrow::Cow::Owned(TenantId::from(key)),
            limit: self.0,
        }))
    }
}

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

/// The inner service of every bench (tower_governor needs an axum body).
pub fn handler()
-> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future = Ready>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(response))
    })
}

/// Drives a ready future to completion without a runtime.
pub fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the benched stack must answer at once"),
    }
}

/// `n` tenants on a 4,000-requests-a-minute plan, each with a key, and one request per
/// tenant; a fake clock advanced 15 µs per request outside the timed routine, so that with
/// 1,000 tenants in turn each sees exactly its limit and every request is admitted.
pub struct Fixture {
    pub keys: MemoryKeyStore,
    pub plans: Arc<Plans>,
    pub clock: FakeClock,
    pub requests: Arc<Vec<Request<Full<Bytes>>>>,
}

const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
const X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");

/// The floor: the work the contract requires of a request, written inline in one service,
/// with nothing else (no envelope, no internal-error guard, no billing check, no exemptions,
/// no scan checks, no metrics, no shadow mode, no asynchronous stores): the key header and
/// its format, the key lookup (by the store's keyed hash, a key's SHA-256 taken once), the
/// `Tenant` into the request's extensions, the rate check (its state reached from the key's
/// record), and the two `X-RateLimit-*` headers on the response. Refusals are bare
/// statuses.
///
/// With `DUTIES`, the floor also does, inline and by hand, what the stack does for every
/// request besides: it tells a gRPC call (the request's `ErrorFormat`, then its
/// `content-type`), checks the billing prefix (billing is off), looks for the client's
/// address (the failed-auth throttle's key), tells a scan creation (`POST /api/v1/scan`,
/// which it does not serve), catches a panic of the decisions or the inner service (500),
/// checks that the response passes as it is (a 2xx or 3xx that is not a gRPC answer, for a
/// request that is not a gRPC call), and counts the outcome. The stack's cost over it is
/// the engine's own.
#[derive(Clone)]
pub struct Floor<S, const DUTIES: bool = false> {
    inner: S,
    keys: MemoryKeyStore,
    rate: tower_nat::rate_limit::MemoryRateStore,
    plans: Arc<Plans>,
    clock: FakeClock,
    format: tower_nat::auth::KeyFormat,
    numbers: Arc<Vec<http::HeaderValue>>,
    outcomes: Arc<std::sync::atomic::AtomicU64>,
}

impl Fixture {
    /// [`Floor`] around `inner`, on this fixture's keys, plans and clock.
    pub fn floor<S>(&self, inner: S) -> Floor<S> {
        self.floor_with(inner)
    }

    /// [`Floor`] with the stack's other duties.
    pub fn floor_with_duties<S>(&self, inner: S) -> Floor<S, true> {
        self.floor_with(inner)
    }

    fn floor_with<S, const DUTIES: bool>(&self, inner: S) -> Floor<S, DUTIES> {
        Floor {
            inner,
            keys: self.keys.clone(),
            rate: tower_nat::rate_limit::MemoryRateStore::new(),
            plans: self.plans.clone(),
            clock: self.clock.clone(),
            format: tower_nat::auth::KeyFormat::default(),
            numbers: Arc::new((0..4_096u32).map(http::HeaderValue::from).collect()),
            outcomes: Arc::default(),
        }
    }
}

/// A bare status as the floor's answer.
fn status(code: u16) -> Ready {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
    std::future::ready(Ok(response))
}

impl<S, const DUTIES: bool> Floor<S, DUTIES>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>,
{
    /// The contract's work.
    #[inline(always)]
    fn decide_and_call(&mut self, mut req: Request<Full<Bytes>>) -> Ready {
        use tower_nat::clock::Clock;
        let mut values = req.headers().get_all(&X_API_KEY).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return status(401);
        };
        if !self.format.check(value.as_bytes()) {
            return status(401);
        }
        let key = tower_nat::auth::PresentedKey::new(value.as_bytes());
        let Answer::Ready(Ok(Some(record))) = self.keys.find(&key) else {
            return status(401);
        };
        let Some(limits) = self.plans.limits(&record.tenant) else {
            return status(500);
        };
        let limit = limits.requests_per_minute();
        let decision = self
            .rate
            .check_tenant_now(&record.tenant, limit, self.clock.now());
        if !decision.allowed {
            return status(429);
        }
        req.extensions_mut().insert(record.tenant);
        let std::task::Poll::Ready(Ok(mut response)) = std::pin::pin!(self.inner.call(req))
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            return status(500);
        };
        let number = |n: u32| self.numbers[n.min(4_095) as usize].clone();
        let headers = response.headers_mut();
        headers.insert(X_RATELIMIT_LIMIT, number(decision.limit));
        headers.insert(X_RATELIMIT_REMAINING, number(decision.remaining));
        std::future::ready(Ok(response))
    }

    /// The contract's work and the stack's other duties.
    #[inline(always)]
    fn with_duties(&mut self, req: Request<Full<Bytes>>) -> Ready {
        use std::sync::atomic::Ordering::Relaxed;
        use tower_nat::grpc::{ErrorFormat, is_grpc_media};
        let grpc = match req.extensions().get::<ErrorFormat>() {
            Some(ErrorFormat::Json) => false,
            Some(ErrorFormat::Grpc) => true,
            _ => req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(is_grpc_media),
        };
        let path = req.uri().path().as_bytes();
        let billing = b"/api/v1/billing";
        if path.len() >= billing.len()
            && path[..billing.len()].eq_ignore_ascii_case(billing)
            && path.get(billing.len()).is_none_or(|&b| b == b'/')
        {
            return status(503);
        }
        if req
            .extensions()
            .get::<tower_nat::auth::ClientAddr>()
            .is_some()
        {
            return status(501);
        }
        if req.method() == http::Method::POST && path == b"/api/v1/scan" {
            return status(501);
        }
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decide_and_call(req).into_inner()
        }));
        let Ok(Ok(response)) = caught else {
            return status(500);
        };
        self.outcomes.fetch_add(1, Relaxed);
        let status = response.status();
        let passes = !(grpc
            || status.is_client_error()
            || status.is_server_error()
            || response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(is_grpc_media));
        assert!(
            passes,
            "the floor's duties do not put answers in the envelope"
        );
        std::future::ready(Ok(response))
    }
}

impl<S, const DUTIES: bool> Service<Request<Full<Bytes>>> for Floor<S, DUTIES>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        if DUTIES {
            self.with_duties(req)
        } else {
            self.decide_and_call(req)
        }
    }
}

pub fn fixture(tenants: usize) -> Fixture {
    let keys = MemoryKeyStore::new();
    let limits = PlanLimits {
        requests_per_minute: 4_000,
        ..Plans::default().get(&Plan::ENTERPRISE).unwrap().clone()
    };
    let plans = Arc::new(
        Plans::builder()
            .plan(Plan::ENTERPRISE, limits)
            .build()
            .unwrap(),
    );
    let requests = (0..tenants)
        .map(|i| {
            let id = format!("tenant-{i:07}");
            keys.insert_tenant(id.as_str(), Plan::ENTERPRISE).unwrap();
            let key = keys.issue_key(&id, None).unwrap().key;
            let mut req = Request::get("/api/v1/scans")
                .header("x-api-key", key.expose())
                .body(Full::default())
                .unwrap();
            // For layers benched alone behind where authentication would be.
            req.extensions_mut()
                .insert(Tenant::new(id, Plan::ENTERPRISE, "key"));
            req
        })
        .collect();
    Fixture {
        keys,
        plans,
        clock: FakeClock::new(Duration::from_secs(1_750_000_000)),
        requests: Arc::new(requests),
    }
}

impl Fixture {
    /// The same tenants with fresh requests: a key and no `Tenant`, as a server receives them
    /// (for authentication and the whole stack, which would otherwise trust the `Tenant`).
    pub fn fresh(&self) -> Fixture {
        let requests = self
            .requests
            .iter()
            .map(|req| {
                let mut req = req.clone();
                req.extensions_mut().clear();
                req
            })
            .collect();
        Fixture {
            keys: self.keys.clone(),
            plans: self.plans.clone(),
            clock: self.clock.clone(),
            requests: Arc::new(requests),
        }
    }

    /// These requests with the client's address, as a server puts it in (so the throttling
    /// of failed authentication looks the address up).
    pub fn with_client_addr(&self) -> Fixture {
        let requests = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, req)| {
                let mut req = req.clone();
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
                let addr = std::net::SocketAddr::from((ip, 40_000));
                req.extensions_mut()
                    .insert(tower_nat::auth::ClientAddr(addr));
                req
            })
            .collect();
        Fixture {
            keys: self.keys.clone(),
            plans: self.plans.clone(),
            clock: self.clock.clone(),
            requests: Arc::new(requests),
        }
    }

    /// The key store in a cache that holds every fixture key (warmed, a day's TTL, on the
    /// fixture's clock): every lookup is a hit.
    pub fn cached_keys(&self) -> CachedKeyStore<MemoryKeyStore> {
        let cache = CachedKeyStore::new(self.keys.clone())
            .ttl(Duration::from_secs(86_400))
            .clock(Arc::new(self.clock.clone()));
        for req in self.requests.iter() {
            let hash = KeyHash::of(req.headers()["x-api-key"].as_bytes());
            let found = match cache.lookup(&hash) {
                Answer::Ready(answer) => answer,
                Answer::Pending(lookup) => now(lookup),
            };
            assert!(found.unwrap().is_some());
        }
        cache
    }

    pub fn stream(&self) -> impl FnMut() -> Request<Full<Bytes>> + use<> {
        let (requests, clock) = (self.requests.clone(), self.clock.clone());
        let mut i = 0usize;
        move || {
            i = (i + 1) % requests.len();
            clock.advance(Duration::from_micros(15));
            requests[i].clone()
        }
    }

    /// Requests as a server receives them: each built anew (no extensions map yet), with one
    /// tenant's key, the tenants visited in a scattered order (a step coprime to their number,
    /// so every tenant comes once per round, none next to its neighbour). The clock moves
    /// 15 µs per request, as in [`stream`](Self::stream).
    pub fn scattered(&self) -> impl FnMut() -> Request<Full<Bytes>> + use<> {
        let keys: Vec<http::HeaderValue> = self
            .requests
            .iter()
            .map(|r| r.headers()["x-api-key"].clone())
            .collect();
        let clock = self.clock.clone();
        // A prime that divides neither 2 nor 5, so it is coprime to 1,000 and 100,000.
        const STEP: usize = 104_729;
        let mut i = 0usize;
        move || {
            i = (i + STEP) % keys.len();
            clock.advance(Duration::from_micros(15));
            Request::get("/api/v1/scans")
                .header("x-api-key", keys[i].clone())
                .body(Full::default())
                .unwrap()
        }
    }

    pub fn nat(&self) -> NatLayer {
        self.nat_with(self.keys.clone())
    }

    /// The whole stack as [`nat`](Self::nat) has it, with keys from `keys`.
    pub fn nat_with<K>(&self, keys: K) -> NatLayer<K> {
        NatLayer::new(keys)
            .clock(Arc::new(self.clock.clone()))
            .plans(self.plans.clone())
            .billing(BillingConfiguredLayer::new(false))
    }
}

/// The tenant the glue puts in the request's extensions.
#[derive(Clone)]
pub struct GlueTenant(pub Arc<str>);

/// tower_governor keyed by the glue's tenant.
#[derive(Clone)]
pub struct GlueTenantKey;

impl tower_governor::key_extractor::KeyExtractor for GlueTenantKey {
    type Key = Arc<str>;

    fn extract<T>(&self, req: &Request<T>) -> Result<Arc<str>, tower_governor::GovernorError> {
        req.extensions()
            .get::<GlueTenant>()
            .map(|t| t.0.clone())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// "Glue": what a server author writes instead of this crate, for two of its nine jobs. A
/// service that reads `X-API-Key`, takes its SHA-256, looks it up in a `HashMap` of hashes to
/// tenant ids, puts the tenant in the extensions, and answers a JSON 401 otherwise; in front
/// of tower_governor keyed by that tenant, with `use_headers()`.
#[derive(Clone)]
pub struct Glue<S> {
    inner: S,
    keys: Arc<std::collections::HashMap<[u8; 32], Arc<str>>>,
}

impl Fixture {
    /// The glue around `inner` (tower_governor inside it), on this fixture's keys.
    pub fn glue<S>(
        &self,
        inner: S,
    ) -> Glue<
        impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible> + Clone,
    >
    where
        S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        use sha2::Digest;
        let keys = self
            .requests
            .iter()
            .map(|req| {
                let hash: [u8; 32] =
                    sha2::Sha256::digest(req.headers()["x-api-key"].as_bytes()).into();
                let tenant = req
                    .extensions()
                    .get::<Tenant>()
                    .unwrap()
                    .id()
                    .as_str()
                    .into();
                (hash, tenant)
            })
            .collect();
        let mut builder = GovernorConfigBuilder::default().key_extractor(GlueTenantKey);
        builder.per_nanosecond(1).burst_size(1_000_000_000);
        let governor = GovernorLayer {
            config: Arc::new(builder.use_headers().finish().unwrap()),
        }
        .layer(inner);
        Glue {
            inner: governor,
            keys: Arc::new(keys),
        }
    }
}

pin_project_lite::pin_project! {
    /// The glue's answer: the inner service's, or its own 401.
    #[project = GlueProj]
    pub enum GlueFuture<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Body>> },
    }
}

impl<F> std::future::Future for GlueFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            GlueProj::Inner { future } => future.poll(cx),
            GlueProj::Refused { response } => {
                std::task::Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

impl<S> Service<Request<Full<Bytes>>> for Glue<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GlueFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        use sha2::Digest;
        let tenant = req
            .headers()
            .get(&X_API_KEY)
            .map(|key| <[u8; 32]>::from(sha2::Sha256::digest(key.as_bytes())))
            .and_then(|hash| self.keys.get(&hash).cloned());
        match tenant {
            Some(tenant) => {
                req.extensions_mut().insert(GlueTenant(tenant));
                GlueFuture::Inner {
                    future: self.inner.call(req),
                }
            }
            None => {
                let mut response = Response::new(Body::from(
                    r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#,
                ));
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                GlueFuture::Refused {
                    response: Some(response),
                }
            }
        }
    }
}
