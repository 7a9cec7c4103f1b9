use std::{
    borrow::Cow,
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    gcra::RateDecision,
    store::{MemoryRateStore, RateStore},
};
use crate::{
    body::{NatBody, wrap},
    error::{NatError, StoreError},
    headers::{RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
    store::{Answer, OnStoreError},
    tenant::{AuthExempt, Caller, Plans, TenantId},
};

/// Whose budget a request spends, and how large it is. The key may borrow from the request
/// (no copy on the hot path) or be owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateTarget<'r> {
    /// The key the state is kept under (the tenant id for [`PlanResolver`]).
    pub key: Cow<'r, TenantId>,
    /// Requests a minute.
    pub limit: u32,
}

/// Finds the [`RateTarget`] of a request. `None` means "unknown caller": the request is
/// refused with 401 unless it carries [`AuthExempt`].
///
/// Servers that authenticate their own way can implement this, or simply insert a
/// [`Tenant`](crate::Tenant) and keep the default [`PlanResolver`].
pub trait RateKeyResolver: Clone + Send + Sync + 'static {
    /// The target of `req`.
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Option<RateTarget<'r>>;
}

/// The default resolver: the [`Tenant`](crate::Tenant) in the extensions, limited by its plan's
/// `requests_per_minute` in a [`Plans`] table.
#[derive(Clone, Debug)]
pub struct PlanResolver {
    plans: Arc<Plans>,
}

impl PlanResolver {
    /// Limits from `plans`.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            plans: plans.into(),
        }
    }
}

impl RateKeyResolver for PlanResolver {
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Option<RateTarget<'r>> {
        match Caller::of(req.extensions()) {
            Caller::Tenant(t) => Some(RateTarget {
                key: Cow::Borrowed(t.id()),
                limit: self.plans.get(t.plan()).requests_per_minute,
            }),
            Caller::Exempt | Caller::Unknown => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    draft_headers: bool,
    on_store_error: OnStoreError,
}

/// Applies [`PlanRateLimit`] to a service.
pub struct PlanRateLimitLayer<R = MemoryRateStore, K = PlanResolver> {
    store: R,
    resolver: K,
    config: Config,
}

impl PlanRateLimitLayer {
    /// Limits each tenant to its plan's requests a minute from `plans`, with an in-memory
    /// store on the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self::with_store(MemoryRateStore::new(), plans)
    }
}

impl<R> PlanRateLimitLayer<R, PlanResolver> {
    /// Limits each tenant to its plan's requests a minute from `plans`, keeping state in
    /// `store`.
    pub fn with_store(store: R, plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            store,
            resolver: PlanResolver::new(plans),
            config: Config {
                draft_headers: false,
                on_store_error: OnStoreError::Allow,
            },
        }
    }
}

impl<R, K> PlanRateLimitLayer<R, K> {
    /// Finds keys and limits with `resolver` instead of the tenant's plan.
    #[must_use]
    pub fn resolver<K2>(self, resolver: K2) -> PlanRateLimitLayer<R, K2> {
        PlanRateLimitLayer {
            store: self.store,
            resolver,
            config: self.config,
        }
    }

    /// Also sends the IETF draft `RateLimit-Policy: "default";q=L;w=60` and
    /// `RateLimit: "default";r=R;t=S` headers (draft-ietf-httpapi-ratelimit-headers-09).
    #[must_use]
    pub fn draft_headers(mut self, enabled: bool) -> Self {
        self.config.draft_headers = enabled;
        self
    }

    /// What to do when the store fails; by default the request goes through.
    #[must_use]
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.config.on_store_error = choice;
        self
    }

    /// The store.
    pub fn store(&self) -> &R {
        &self.store
    }
}

impl<R: Clone, K: Clone> Clone for PlanRateLimitLayer<R, K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            resolver: self.resolver.clone(),
            config: self.config,
        }
    }
}

impl<R: fmt::Debug, K: fmt::Debug> fmt::Debug for PlanRateLimitLayer<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanRateLimitLayer")
            .field("store", &self.store)
            .field("resolver", &self.resolver)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, R: Clone, K: Clone> Layer<S> for PlanRateLimitLayer<R, K> {
    type Service = PlanRateLimit<S, R, K>;

    fn layer(&self, inner: S) -> Self::Service {
        PlanRateLimit {
            inner,
            store: self.store.clone(),
            resolver: self.resolver.clone(),
            config: self.config,
        }
    }
}

/// Limits each tenant to its plan's requests a minute; answers 429 `RATE_LIMITED` beyond it.
/// See the [module docs](super).
pub struct PlanRateLimit<S, R = MemoryRateStore, K = PlanResolver> {
    inner: S,
    store: R,
    resolver: K,
    config: Config,
}

impl<S, R, K> PlanRateLimit<S, R, K> {
    crate::inner_accessors!();
}

impl<S: Clone, R: Clone, K: Clone> Clone for PlanRateLimit<S, R, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            store: self.store.clone(),
            resolver: self.resolver.clone(),
            config: self.config,
        }
    }
}

impl<S: fmt::Debug, R: fmt::Debug, K: fmt::Debug> fmt::Debug for PlanRateLimit<S, R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanRateLimit")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// What the layer does with a store answer.
enum Verdict {
    Pass(Option<RateDecision>),
    Reject(NatError, Option<RateDecision>),
}

fn verdict(config: &Config, key: &TenantId, answer: Result<RateDecision, StoreError>) -> Verdict {
    match answer {
        Ok(d) if d.allowed => Verdict::Pass(Some(d)),
        Ok(d) => {
            let error = NatError::RateLimited {
                retry_after: d.retry_after_secs(),
                limit: d.limit,
            };
            error.report(Some(key), "rate limit exceeded");
            Verdict::Reject(error, Some(d))
        }
        Err(err) => {
            tracing::error!(target: "tower_nat", tenant = key.as_str(), error = %err, "rate-limit store failed");
            match config.on_store_error {
                OnStoreError::Allow => Verdict::Pass(None),
                OnStoreError::Reject => {
                    let error = NatError::Internal;
                    error.report(Some(key), "rate-limit store failed");
                    Verdict::Reject(error, None)
                }
            }
        }
    }
}

fn draft_headers(headers: &mut HeaderMap, d: &RateDecision) {
    let policy = format!("\"default\";q={};w=60", d.limit);
    let state = format!("\"default\";r={};t={}", d.remaining, d.reset_secs());
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, state);
    }
}

fn decorate<B>(config: &Config, response: &mut Response<B>, d: &RateDecision) {
    let headers = response.headers_mut();
    headers.insert(X_RATELIMIT_LIMIT, number(u64::from(d.limit)));
    headers.insert(X_RATELIMIT_REMAINING, number(u64::from(d.remaining)));
    if config.draft_headers {
        draft_headers(headers, d);
    }
}

fn rejection<B>(
    config: &Config,
    error: &NatError,
    d: Option<&RateDecision>,
) -> Response<NatBody<B>> {
    let mut response = error.to_response();
    if let (true, Some(d)) = (config.draft_headers, d) {
        draft_headers(response.headers_mut(), d);
    }
    response
}

impl<S, R, K, ReqB, ResB> Service<Request<ReqB>> for PlanRateLimit<S, R, K>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    R: RateStore,
    K: RateKeyResolver,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, R, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(target) = self.resolver.resolve(&req) else {
            if req.extensions().get::<AuthExempt>().is_some() {
                return ResponseFuture::pass(self.inner.call(req), None, self.config);
            }
            let error = NatError::Unauthorized;
            error.report(None, "no tenant in the request (rate limit fails closed)");
            return ResponseFuture::reject(error, None, self.config);
        };
        match self.store.check(&target.key, target.limit) {
            Answer::Ready(answer) => {
                let verdict = verdict(&self.config, &target.key, answer);
                drop(target);
                match verdict {
                    Verdict::Pass(d) => ResponseFuture::pass(self.inner.call(req), d, self.config),
                    Verdict::Reject(error, d) => ResponseFuture::reject(error, d, self.config),
                }
            }
            Answer::Pending(check) => {
                let key = target.key.into_owned();
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Check {
                        check,
                        // Boxed so the common, synchronous path carries a small future.
                        pending: Some(Box::new(Pending { inner, req, key })),
                        config: self.config,
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`PlanRateLimit`].
    pub struct ResponseFuture<S, R, ReqB>
    where
        S: Service<Request<ReqB>>,
        R: RateStore,
    {
        #[pin]
        state: State<S, R, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R, ReqB>
    where
        S: Service<Request<ReqB>>,
        R: RateStore,
    {
        Check {
            #[pin]
            check: R::Future,
            pending: Option<Box<Pending<S, ReqB>>>,
            config: Config,
        },
        Inner {
            #[pin]
            future: S::Future,
            decision: Option<RateDecision>,
            config: Config,
        },
        Reject {
            error: Option<NatError>,
            decision: Option<RateDecision>,
            config: Config,
        },
    }
}

/// What a check that answers later keeps until it does.
struct Pending<S, ReqB> {
    inner: S,
    req: Request<ReqB>,
    key: TenantId,
}

impl<S, R, ReqB> ResponseFuture<S, R, ReqB>
where
    S: Service<Request<ReqB>>,
    R: RateStore,
{
    fn pass(future: S::Future, decision: Option<RateDecision>, config: Config) -> Self {
        Self {
            state: State::Inner {
                future,
                decision,
                config,
            },
        }
    }

    fn reject(error: NatError, decision: Option<RateDecision>, config: Config) -> Self {
        Self {
            state: State::Reject {
                error: Some(error),
                decision,
                config,
            },
        }
    }
}

impl<S, R, ReqB, ResB> Future for ResponseFuture<S, R, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RateStore,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Check {
                    check,
                    pending,
                    config,
                } => {
                    let answer = ready!(check.poll(cx));
                    let Pending {
                        mut inner,
                        req,
                        key,
                    } = *pending.take().expect("polled after completion");
                    match verdict(config, &key, answer) {
                        Verdict::Pass(decision) => State::Inner {
                            future: inner.call(req),
                            decision,
                            config: *config,
                        },
                        Verdict::Reject(error, decision) => State::Reject {
                            error: Some(error),
                            decision,
                            config: *config,
                        },
                    }
                }
                StateProj::Inner {
                    future,
                    decision,
                    config,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(d) = decision {
                        decorate(config, &mut response, d);
                    }
                    return Poll::Ready(Ok(wrap(response)));
                }
                StateProj::Reject {
                    error,
                    decision,
                    config,
                } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Ok(rejection(config, &error, decision.as_ref())));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, R, ReqB> fmt::Debug for ResponseFuture<S, R, ReqB>
where
    S: Service<Request<ReqB>>,
    R: RateStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Check { .. } => "Check",
            State::Inner { .. } => "Inner",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
