use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    key::{KeyFormat, KeyHash},
    store::{KeyRecord, KeyStore},
};
use crate::{
    body::{NatBody, wrap},
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    headers::X_API_KEY,
    routes::Routes,
    store::Answer,
    tenant::{AuthExempt, Tenant},
};

/// Applies [`ApiKeyAuth`] to a service.
pub struct ApiKeyAuthLayer<K> {
    store: K,
    config: Arc<Config>,
}

struct Config {
    exempt: Routes,
    format: KeyFormat,
    clock: SharedClock,
}

impl<K> ApiKeyAuthLayer<K> {
    /// Authenticates against `store`, with the default key format, no exempt routes and the
    /// system clock.
    pub fn new(store: K) -> Self {
        Self {
            store,
            config: Arc::new(Config {
                exempt: Routes::default(),
                format: KeyFormat::default(),
                clock: clock::system(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure ApiKeyAuthLayer before cloning it")
    }

    /// Lets requests to exactly `path` through without a key (e.g. `/healthz`).
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.config_mut().exempt.add_exact(path);
        self
    }

    /// Lets requests to `prefix` and everything below it through without a key
    /// (`/public` exempts `/public` and `/public/...`, not `/publicity`).
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config_mut().exempt.add_prefix(prefix);
        self
    }

    /// Accepts keys of this format (by default exactly 32 characters after `nat_pk_`).
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.config_mut().format = format;
        self
    }

    /// Checks key expiry against `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config_mut().clock = clock;
        self
    }
}

impl<K: Clone> Clone for ApiKeyAuthLayer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for ApiKeyAuthLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuthLayer")
            .field("store", &self.store)
            .field("exempt", &self.config.exempt)
            .field("format", &self.config.format)
            .finish()
    }
}

impl<S, K: Clone> Layer<S> for ApiKeyAuthLayer<K> {
    type Service = ApiKeyAuth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

/// Authenticates every request by its `X-API-Key` header and puts its [`Tenant`] into the
/// request's extensions; answers 401 `UNAUTHORIZED` otherwise. See the [module docs](super).
pub struct ApiKeyAuth<S, K> {
    inner: S,
    store: K,
    config: Arc<Config>,
}

impl<S, K> ApiKeyAuth<S, K> {
    crate::inner_accessors!();
}

impl<S: Clone, K: Clone> Clone for ApiKeyAuth<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug> fmt::Debug for ApiKeyAuth<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish()
    }
}

/// The hash of the request's one well-formed `X-API-Key`, or why there is none (only logged,
/// never sent: the client sees one 401 for every cause).
fn key_hash<B>(req: &Request<B>, format: &KeyFormat) -> Result<KeyHash, &'static str> {
    let mut values = req.headers().get_all(X_API_KEY).iter();
    let value = values.next().ok_or("missing X-API-Key")?;
    if values.next().is_some() {
        return Err("repeated X-API-Key");
    }
    let bytes = value.as_bytes();
    if !format.check(bytes) {
        return Err("malformed key");
    }
    Ok(KeyHash::of(bytes))
}

enum Decision {
    Pass(Tenant),
    Reject(NatError),
}

fn decide(config: &Config, result: Result<Option<KeyRecord>, StoreError>) -> Decision {
    match result {
        Ok(Some(record)) => match record.expires_at {
            Some(at) if config.clock.now() >= at => {
                let error = NatError::Unauthorized;
                error.report(Some(record.tenant.id()), "expired key");
                Decision::Reject(error)
            }
            _ => Decision::Pass(record.tenant),
        },
        Ok(None) => {
            let error = NatError::Unauthorized;
            error.report(None, "unknown, revoked or deleted key");
            Decision::Reject(error)
        }
        Err(err) => {
            tracing::error!(target: "tower_nat", error = %err, "key store failed");
            let error = NatError::Internal;
            error.report(None, "key store failed");
            Decision::Reject(error)
        }
    }
}

impl<S, K, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S, K>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    K: KeyStore,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, K, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        if self.config.exempt.matches(req.uri().path()) {
            req.extensions_mut().insert(AuthExempt);
            return ResponseFuture::inner(self.inner.call(req));
        }
        let hash = match key_hash(&req, &self.config.format) {
            Ok(hash) => hash,
            Err(reason) => {
                let error = NatError::Unauthorized;
                error.report(None, reason);
                return ResponseFuture::reject(&error);
            }
        };
        match self.store.lookup(&hash) {
            Answer::Ready(result) => match decide(&self.config, result) {
                Decision::Pass(tenant) => {
                    req.extensions_mut().insert(tenant);
                    ResponseFuture::inner(self.inner.call(req))
                }
                Decision::Reject(error) => ResponseFuture::reject(&error),
            },
            Answer::Pending(lookup) => {
                // Keep the instance that was polled ready for the call after the lookup.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Lookup {
                        lookup,
                        // Boxed so the common, synchronous path carries a small future.
                        pending: Some(Box::new((inner, req))),
                        config: self.config.clone(),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`ApiKeyAuth`].
    pub struct ResponseFuture<S, K, ReqB>
    where
        S: Service<Request<ReqB>>,
        K: KeyStore,
    {
        #[pin]
        state: State<S, K, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, K, ReqB>
    where
        S: Service<Request<ReqB>>,
        K: KeyStore,
    {
        Lookup {
            #[pin]
            lookup: K::Future,
            pending: Option<Box<(S, Request<ReqB>)>>,
            config: Arc<Config>,
        },
        Inner { #[pin] future: S::Future },
        Reject { error: Option<NatError> },
    }
}

impl<S, K, ReqB> ResponseFuture<S, K, ReqB>
where
    S: Service<Request<ReqB>>,
    K: KeyStore,
{
    fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    fn reject(error: &NatError) -> Self {
        Self {
            state: State::Reject {
                error: Some(error.clone()),
            },
        }
    }
}

impl<S, K, ReqB, ResB> Future for ResponseFuture<S, K, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    K: KeyStore,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Lookup {
                    lookup,
                    pending,
                    config,
                } => {
                    let result = ready!(lookup.poll(cx));
                    let (mut inner, mut req) = *pending.take().expect("polled after completion");
                    match decide(config, result) {
                        Decision::Pass(tenant) => {
                            req.extensions_mut().insert(tenant);
                            State::Inner {
                                future: inner.call(req),
                            }
                        }
                        Decision::Reject(error) => State::Reject { error: Some(error) },
                    }
                }
                StateProj::Inner { future } => {
                    return future.poll(cx).map(|r| r.map(wrap));
                }
                StateProj::Reject { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Ok(error.to_response()));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, K, ReqB> fmt::Debug for ResponseFuture<S, K, ReqB>
where
    S: Service<Request<ReqB>>,
    K: KeyStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Lookup { .. } => "Lookup",
            State::Inner { .. } => "Inner",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
