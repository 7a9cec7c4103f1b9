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
    clock::SharedClock,
    common::{Common, common_setters, tenant_limits},
    engine::{Decision, Finish, Policy, PolicyService, Rejection, Reported, StoreCall},
    error::{NatError, StoreError},
    headers::{RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
    plan::Plans,
    store::{Answer, OnStoreError},
    tenant::{Tenant, TenantId},
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
    #[inline]
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError> {
        match tenant_limits(req, &self.plans) {
            Ok(Some((tenant, limits))) => Ok(Some(RateTarget {
                key: Cow::Borrowed(tenant.id()),
                limit: limits.requests_per_minute(),
            })),
            Ok(None) => Ok(None),
            Err(rejection) => Err(rejection.error().clone()),
        }
    }
}

/// How rate limiting behaves.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) draft_headers: bool,
    pub(crate) on_store_error: OnStoreError,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            draft_headers: false,
            on_store_error: OnStoreError::Allow,
        }
    }
}

/// Applies [`PlanRateLimit`] to a service.
#[derive(Clone, Debug)]
pub struct PlanRateLimitLayer<R = MemoryRateStore, K = PlanResolver> {
    store: R,
    resolver: K,
    config: Config,
    common: Common,
}

impl PlanRateLimitLayer {
    /// Limits each tenant to its requests a minute from `plans`, with an in-memory store on
    /// the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        let common = Common::new(plans);
        Self {
            store: MemoryRateStore::new(),
            resolver: PlanResolver::new(common.plans.clone()),
            config: Config::default(),
            common,
        }
    }
}

impl<R> PlanRateLimitLayer<R, PlanResolver> {
    /// Reads each tenant's limit from `plans`.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.common.plans = plans.into();
        self.resolver = PlanResolver::new(self.common.plans.clone());
        self
    }
}

impl<R, K> PlanRateLimitLayer<R, K> {
    common_setters!(clock, shadow);

    /// Keeps state in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_store<R2>(self, store: R2) -> PlanRateLimitLayer<R2, K> {
        PlanRateLimitLayer {
            store,
            resolver: self.resolver,
            config: self.config,
            common: self.common,
        }
    }

    /// Finds keys and limits with `resolver` instead of the tenant's plan.
    #[must_use]
    pub fn with_resolver<K2>(self, resolver: K2) -> PlanRateLimitLayer<R, K2> {
        PlanRateLimitLayer {
            store: self.store,
            resolver,
            config: self.config,
            common: self.common,
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

impl<R: RateStore, K: RateKeyResolver> PlanRateLimitLayer<R, K> {
    /// The policy, with `common`'s clock and shadow mode.
    pub(crate) fn policy(
        store: R,
        resolver: K,
        config: &Config,
        common: &Common,
    ) -> Reported<Limit<R, K>> {
        let policy = Limit {
            store,
            resolver,
            config: config.clone(),
            clock: common.clock.clone(),
            near_limit: !common.shadow,
        };
        Reported::new(policy, "rate_limit", common.shadow)
    }
}

/// `tenant`'s rate-limit state now, counting nothing. `None` for a tenant whose plan the
/// table lacks.
pub(crate) async fn peek<R: RateStore>(
    store: &R,
    common: &Common,
    tenant: &Tenant,
) -> Result<Option<RateDecision>, StoreError> {
    let Some(limits) = common.plans.limits(tenant) else {
        return Ok(None);
    };
    let now = common.clock.now();
    let answer = match store.peek(tenant.id(), limits.requests_per_minute(), now) {
        Answer::Ready(answer) => answer,
        Answer::Pending(peek) => peek.await,
    };
    answer.map(Some)
}

impl<R: RateStore> PlanRateLimitLayer<R, PlanResolver> {
    /// `tenant`'s rate-limit state now, counting nothing (for dashboards and usage
    /// endpoints), as `X-RateLimit-*` would say it: whether a request would pass, how many
    /// would pass at once, how long until one passes when none would, and until a full burst
    /// ([`RateStore::peek`]). `None` for a tenant whose plan the table lacks. (An endpoint
    /// behind the limiter that serves this is itself one request.)
    pub async fn peek(&self, tenant: &Tenant) -> Result<Option<RateDecision>, StoreError> {
        peek(&self.store, &self.common, tenant).await
    }
}

impl<S, R: RateStore, K: RateKeyResolver> Layer<S> for PlanRateLimitLayer<R, K> {
    type Service = PlanRateLimit<S, R, K>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = Self::policy(
            self.store.clone(),
            self.resolver.clone(),
            &self.config,
            &self.common,
        );
        PolicyService::new(inner, Arc::new(policy))
    }
}

/// Limits each tenant to its plan's requests a minute; answers 429 `RATE_LIMITED` beyond it.
/// See the [module docs](super).
pub type PlanRateLimit<S, R = MemoryRateStore, K = PlanResolver> =
    PolicyService<S, Reported<Limit<R, K>>>;

/// How [`PlanRateLimit`] decides.
#[derive(Clone, Debug)]
pub struct Limit<R, K> {
    store: R,
    resolver: K,
    config: Config,
    clock: SharedClock,
    // Counts requests let through near their limit (not in shadow mode, where nothing is
    // enforced).
    near_limit: bool,
}

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

    #[inline]
    fn respond<B>(&self, response: &mut Response<B>) {
        if let Some(c) = self.0 {
            let headers = response.headers_mut();
            headers.insert(X_RATELIMIT_LIMIT, number(u64::from(c.limit)));
            headers.insert(X_RATELIMIT_REMAINING, number(u64::from(c.remaining)));
            if c.draft_reset.is_some() {
                draft_headers(headers, c);
            }
        }
    }

    #[inline]
    fn settle(self, _: bool) -> Option<Self::Settle> {
        None
    }

    #[inline]
    fn nothing() -> Self {
        Headers(None)
    }
}

/// The headers the limiter adds to its 429 (beyond the envelope's own): the draft pair
/// when configured.
pub(crate) fn refused_headers(headers: &mut HeaderMap, d: &RateDecision, draft: bool) {
    if draft {
        draft_headers(headers, Counts::of(d, true));
    }
}

/// The headers the limiter puts on a response that passed with `d`.
#[cfg(feature = "openapi")]
pub(crate) fn passed_headers(headers: &mut HeaderMap, d: &RateDecision, draft: bool) {
    let mut response = http::Response::new(());
    Headers(Some(Counts::of(d, draft))).respond(&mut response);
    headers.extend(response.headers_mut().drain());
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

impl<R: RateStore, K> Limit<R, K> {
    /// What a store's answer means for the request.
    #[inline]
    fn admit<B>(
        &self,
        req: &Request<B>,
        key: &TenantId,
        answer: Result<RateDecision, StoreError>,
    ) -> Decision<Headers, StoreCall<R::Future, TenantId>> {
        match answer {
            Ok(d) if d.allowed => {
                if self.near_limit {
                    crate::metrics::rate_passed(req, d.remaining, d.limit);
                }
                Decision::Pass(Headers(Some(Counts::of(&d, self.config.draft_headers))))
            }
            Ok(d) => Decision::refuse(self.limited(key, &d)),
            Err(error) => {
                let call = ("rate_limit", "rate", "check");
                let choice = self.config.on_store_error;
                match crate::common::store_failed(choice, call, &error, Some(key)) {
                    Ok(()) => Decision::Pass(Headers(None)),
                    Err(rejection) => Decision::refuse(rejection),
                }
            }
        }
    }

    /// The 429 of a tenant over its limit.
    #[cold]
    fn limited(&self, key: &TenantId, d: &RateDecision) -> Rejection {
        let error = NatError::RateLimited {
            retry_after: d.retry_after_secs(),
            limit: d.limit,
        };
        let mut headers = HeaderMap::new();
        refused_headers(&mut headers, d, self.config.draft_headers);
        Rejection::new(error, "rate limit exceeded")
            .tenant(key)
            .headers(headers)
    }
}

/// Why a key resolver refused, for the report.
#[cold]
fn unresolved(error: NatError) -> Rejection {
    let reason = match error {
        NatError::Unauthorized => "no tenant in the request (fails closed)",
        NatError::Internal => "the tenant's plan is not in the plan table",
        _ => "the rate-limit key resolver refused",
    };
    Rejection::new(error, reason)
}

impl<R: RateStore, K: RateKeyResolver, B> Policy<B> for Limit<R, K> {
    type Pass = Headers;
    type Later = StoreCall<R::Future, TenantId>;

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Decision<Headers, Self::Later> {
        let target = match self.resolver.resolve(req) {
            Ok(Some(target)) => target,
            Ok(None) => return Decision::Pass(Headers(None)),
            Err(error) => return Decision::refuse(unresolved(error)),
        };
        let now = self.clock.now();
        // The default resolver's key is the tenant's own id: the store may find the tenant's
        // state through its record.
        let answer = match (&target.key, Tenant::of(req)) {
            (Cow::Borrowed(key), Some(tenant)) if key.is(tenant.id()) => {
                self.store.check_tenant(tenant, target.limit, now)
            }
            _ => self.store.check(&target.key, target.limit, now),
        };
        match answer {
            Answer::Ready(answer) => self.admit(req, &target.key, answer),
            Answer::Pending(check) => {
                let key = target.key.into_owned();
                Decision::Later(StoreCall::new(check, key, "rate", "check"))
            }
        }
    }

    fn resume(
        &self,
        (answer, key): (Result<RateDecision, StoreError>, TenantId),
        req: &mut Request<B>,
    ) -> Decision<Headers, Self::Later> {
        self.admit(req, &key, answer)
    }
}
