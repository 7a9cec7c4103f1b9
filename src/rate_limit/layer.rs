//! [`PlanRateLimitLayer`] and [`PlanRateLimit`]: the policy that spends a request from its
//! tenant's budget, and the headers it writes.

use std::{borrow::Cow, sync::Arc};

use http::{HeaderMap, HeaderValue, Request, Response};
use tower_layer::Layer;

use super::{
    gcra::RateDecision,
    store::{MemoryRateStore, RateStore},
};
use crate::{
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    guard::{Finish, Policy, Rejection, Step, With},
    headers::{RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
    plan::Plans,
    report,
    store::{Answer, OnStoreError},
    tenant::{Caller, Tenant, TenantId},
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

/// Finds the [`RateTarget`] of a request: `Ok(Some(target))` spends from it, `Ok(None)` lets
/// the request through without a limit (and without headers), `Err(error)` refuses it with
/// that envelope.
///
/// Servers that authenticate their own way can implement this, or simply insert a
/// [`Tenant`](crate::tenant::Tenant) and keep the default [`PlanResolver`].
pub trait RateKeyResolver: Clone + Send + Sync + 'static {
    /// The target of `req`.
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError>;
}

/// The default resolver: the [`Tenant`](crate::tenant::Tenant) in the extensions, limited by
/// its requests a minute in a [`Plans`] table (its plan's, or its own override). Requests
/// marked [`AuthExempt`](crate::tenant::AuthExempt) pass unlimited; a request with neither is
/// refused with 401 (fail closed); a tenant whose plan the table lacks gets 500.
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
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError> {
        match Caller::of(req.extensions()) {
            Caller::Tenant(t) => match self.plans.limits(t) {
                Some(limits) => Ok(Some(RateTarget {
                    key: Cow::Borrowed(t.id()),
                    limit: limits.requests_per_minute(),
                })),
                None => {
                    let error = NatError::Internal;
                    error.report(Some(t.id()), "the tenant's plan is not in the plan table");
                    Err(error)
                }
            },
            Caller::Exempt => Ok(None),
            Caller::Unknown => {
                let error = NatError::Unauthorized;
                error.report(None, "no tenant in the request (rate limit fails closed)");
                Err(error)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    draft_headers: bool,
    on_store_error: OnStoreError,
    clock: SharedClock,
    shadow: bool,
}

/// Applies [`PlanRateLimit`] to a service.
#[derive(Clone, Debug)]
pub struct PlanRateLimitLayer<R = MemoryRateStore, K = PlanResolver> {
    policy: Limit<R, K>,
}

/// How [`PlanRateLimit`] decides. Shared by every clone of the layer and its services.
#[derive(Clone, Debug)]
pub struct Limit<R, K> {
    store: R,
    resolver: K,
    config: Arc<Config>,
}

impl PlanRateLimitLayer {
    /// Limits each tenant to its requests a minute from `plans`, with an in-memory store on
    /// the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            policy: Limit {
                store: MemoryRateStore::new(),
                resolver: PlanResolver::new(plans),
                config: Arc::new(Config {
                    draft_headers: false,
                    on_store_error: OnStoreError::Allow,
                    clock: clock::system(),
                    shadow: false,
                }),
            },
        }
    }
}

impl<R> PlanRateLimitLayer<R, PlanResolver> {
    /// Reads each tenant's limit from `plans`.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.policy.resolver = PlanResolver::new(plans);
        self
    }
}

impl<R, K> PlanRateLimitLayer<R, K> {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn policy(&self) -> &Limit<R, K> {
        &self.policy
    }

    /// Keeps state in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_store<R2>(self, store: R2) -> PlanRateLimitLayer<R2, K> {
        PlanRateLimitLayer {
            policy: Limit {
                store,
                resolver: self.policy.resolver,
                config: self.policy.config,
            },
        }
    }

    /// Finds keys and limits with `resolver` instead of the tenant's plan.
    #[must_use]
    pub fn with_resolver<K2>(self, resolver: K2) -> PlanRateLimitLayer<R, K2> {
        PlanRateLimitLayer {
            policy: Limit {
                store: self.policy.store,
                resolver,
                config: self.policy.config,
            },
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.policy.config)
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.config_mut().shadow = on;
        self
    }

    /// Also sends the IETF draft `RateLimit-Policy: "default";q=L;w=60` and
    /// `RateLimit: "default";r=R;t=S` headers (draft-ietf-httpapi-ratelimit-headers-09).
    #[must_use]
    pub fn draft_headers(mut self, enabled: bool) -> Self {
        self.config_mut().draft_headers = enabled;
        self
    }

    /// What to do when the store fails; by default the request goes through.
    #[must_use]
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.config_mut().on_store_error = choice;
        self
    }

    /// Reads the time from `clock` (the system clock by default).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &R {
        &self.policy.store
    }
}

impl<R: RateStore> PlanRateLimitLayer<R, PlanResolver> {
    /// `tenant`'s rate-limit state now, counting nothing (for dashboards and usage
    /// endpoints), as `X-RateLimit-*` would say it: whether a request would pass, how many
    /// would pass at once, how long until one passes when none would, and until a full burst
    /// ([`RateStore::peek`]). `None` for a tenant whose plan the table lacks. (An endpoint
    /// behind the limiter that serves this is itself one request.)
    pub async fn peek(&self, tenant: &Tenant) -> Result<Option<RateDecision>, StoreError> {
        let Some(limits) = self.policy.resolver.plans.limits(tenant) else {
            return Ok(None);
        };
        let now = self.policy.config.clock.now();
        let answer = match self
            .policy
            .store
            .peek(tenant.id(), limits.requests_per_minute(), now)
        {
            Answer::Ready(answer) => answer,
            Answer::Pending(peek) => peek.await,
        };
        answer.map(Some)
    }
}

impl<S, R: Clone, K: Clone> Layer<S> for PlanRateLimitLayer<R, K> {
    type Service = PlanRateLimit<S, R, K>;

    fn layer(&self, inner: S) -> Self::Service {
        PlanRateLimit {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Limits each tenant to its plan's requests a minute; answers 429 `RATE_LIMITED` beyond it.
/// See the [module docs](super).
#[derive(Clone, Debug)]
pub struct PlanRateLimit<S, R = MemoryRateStore, K = PlanResolver> {
    inner: S,
    policy: Limit<R, K>,
}

impl<S, R, K> PlanRateLimit<S, R, K> {
    crate::inner_accessors!();
}

crate::guard::guarded_service!(impl<R, K> for PlanRateLimit<S, R, K>, policy = Limit<R, K>);

/// The headers a decision puts on a response that passed: the `X-RateLimit-*` pair, and the
/// draft pair when configured. Only what they say is kept.
#[derive(Clone, Copy, Debug)]
pub struct Headers(Option<Counts>);

#[derive(Clone, Copy, Debug)]
struct Counts {
    limit: u32,
    remaining: u32,
    // `Some(seconds until a full burst)` when the draft headers are sent.
    draft_reset: Option<u64>,
}

impl Counts {
    fn of(d: &RateDecision, draft: bool) -> Self {
        Self {
            limit: d.limit,
            remaining: d.remaining,
            draft_reset: draft.then(|| d.reset_secs()),
        }
    }
}

impl Finish for Headers {
    type Settle = std::future::Ready<()>;

    fn nothing() -> Self {
        Headers(None)
    }

    #[inline]
    fn finish<B>(self, response: &mut Response<B>) -> Option<Self::Settle> {
        if let Some(c) = self.0 {
            let headers = response.headers_mut();
            headers.insert(X_RATELIMIT_LIMIT, number(u64::from(c.limit)));
            headers.insert(X_RATELIMIT_REMAINING, number(u64::from(c.remaining)));
            if c.draft_reset.is_some() {
                draft_headers(headers, c);
            }
        }
        None
    }
}

fn draft_headers(headers: &mut HeaderMap, c: Counts) {
    let policy = format!("\"default\";q={};w=60", c.limit);
    let state = format!(
        "\"default\";r={};t={}",
        c.remaining,
        c.draft_reset.unwrap_or(0)
    );
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, state);
    }
}

impl Config {
    /// What a store's answer means for the request.
    #[allow(clippy::result_large_err)] // consumed at once by the caller
    fn admit(
        &self,
        key: &TenantId,
        answer: Result<RateDecision, StoreError>,
    ) -> Result<Headers, Rejection> {
        match answer {
            Ok(d) if d.allowed => Ok(Headers(Some(Counts::of(&d, self.draft_headers)))),
            Ok(d) => {
                let error = NatError::RateLimited {
                    retry_after: d.retry_after_secs(),
                    limit: d.limit,
                };
                error.report(Some(key), "rate limit exceeded");
                let mut headers = HeaderMap::new();
                if self.draft_headers {
                    draft_headers(&mut headers, Counts::of(&d, true));
                }
                Err(Rejection::with_headers(error, headers))
            }
            Err(err) => {
                report::failure("rate-limit store", &err);
                crate::metrics::store_error("rate", "check");
                match self.on_store_error {
                    OnStoreError::Allow => {
                        crate::metrics::fail_open("rate_limit");
                        Ok(Headers(None))
                    }
                    OnStoreError::Reject => {
                        let error = NatError::Internal;
                        error.report(Some(key), "rate-limit store failed");
                        Err(error.into())
                    }
                }
            }
        }
    }
}

/// Counts a request let through near its limit.
#[inline]
fn counted<B>(
    req: &Request<B>,
    decided: Result<Headers, Rejection>,
    shadow: bool,
) -> Result<Headers, Rejection> {
    if let (Ok(Headers(Some(c))), false) = (&decided, shadow) {
        crate::metrics::rate_passed(req, c.remaining, c.limit);
    }
    decided
}

impl<R: RateStore, K: RateKeyResolver, B> Policy<B> for Limit<R, K> {
    type Pass = Headers;
    type Later = With<R::Future, TenantId>;

    const LAYER: &'static str = "rate_limit";

    #[inline]
    fn shadow(&self) -> bool {
        self.config.shadow
    }

    fn store_call(
        &self,
        (answer, _): &(Result<RateDecision, StoreError>, TenantId),
    ) -> Option<(&'static str, &'static str, bool)> {
        Some(("rate", "check", answer.is_ok()))
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<Headers, Self::Later> {
        let target = match self.resolver.resolve(req) {
            Ok(Some(target)) => target,
            Ok(None) => return Step::Pass(Headers(None)),
            Err(error) => return Step::Reject(error.into()),
        };
        let now = self.config.clock.now();
        match self.store.check(&target.key, target.limit, now) {
            Answer::Ready(answer) => {
                let decided = self.config.admit(&target.key, answer);
                Step::of(counted(req, decided, self.config.shadow))
            }
            Answer::Pending(check) => Step::Later(With::new(check, target.key.into_owned())),
        }
    }

    fn resume(
        &self,
        (answer, key): (Result<RateDecision, StoreError>, TenantId),
        req: &mut Request<B>,
    ) -> Step<Headers, Self::Later> {
        Step::of(counted(
            req,
            self.config.admit(&key, answer),
            self.config.shadow,
        ))
    }
}
