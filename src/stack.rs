//! [`NatLayer`]: the whole stack in one layer, its service [`NatService`] and future
//! [`NatFuture`]; and [`ScanCreationLayer`], its scan part for a route of its own.
//!
//! [`ErrorEnvelope`]: crate::envelope::ErrorEnvelope
//! [`InternalErrorGuard`]: crate::internal_error::InternalErrorGuard
//! [`InternalErrorGuardLayer::panic_messages`]: crate::internal_error::InternalErrorGuardLayer::panic_messages

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderName, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    auth::{
        ApiKeyAuthLayer, IpNet, KeyFormat, KeyStore, MemoryKeyStore,
        layer::{self as auth, Authenticate},
    },
    billing::{self, BillingConfiguredLayer},
    common::Common,
    concurrency::{self, ConcurrentScansLayer, MemorySlotStore, SlotStore},
    engine::{Chain, ForScans, NatBody, Policy, PolicyFuture, PolicyService, Refused, Reported},
    envelope::{Enveloped, Explaining, envelope_response, passes_as_is},
    error::StoreError,
    feature_gate::{FeatureGateLayer, Gate},
    internal_error::{BoxError, call_caught, internal, poll_caught, poll_ready_guarded},
    metrics::{Outcome, Requests},
    plan::{Plans, PlansError},
    quota::{
        MemoryQuotaStore, QuotaGuardLayer, QuotaStore, Usage, UsageReader,
        layer::{self as quota, Reserve},
    },
    rate_limit::{
        MemoryRateStore, PlanRateLimitLayer, PlanResolver, RateDecision, RateStore,
        layer::{self as rate_limit, Limit},
    },
    scan_request::{
        ValidateScanRequestLayer,
        layer::{self as scan_request, ValidateScan},
    },
    store::OnStoreError,
    tenant::Tenant,
};

/// Every decision of the stack in the contract's order.
type NatPolicy<K, R, Q, C> = Chain<
    Reported<billing::Config>,
    Chain<Reported<Authenticate<K>>, Chain<Reported<Limit<R, PlanResolver>>, ScanPolicy<Q, C>>>,
>;

/// The decisions that give a scan creation its meaning: validation, the feature gate for
/// scan kinds, running scans, quota; the last three asked only about a scan creation.
type ScanPolicy<Q, C> = Chain<
    Reported<ValidateScan>,
    ForScans<
        Chain<Reported<Gate>, Chain<Reported<concurrency::layer::Occupy<C>>, Reported<Reserve<Q>>>>,
    >,
>;

/// Everything but the stores: one value, whatever the stores' types.
#[derive(Clone, Debug)]
struct Settings {
    common: Common,
    auth: auth::Config,
    rate: rate_limit::Config,
    validation: scan_request::Config,
    concurrency: concurrency::Config,
    quota: quota::Config,
    billing: billing::Config,
    envelope: bool,
    panic_messages: bool,
}

/// The whole NAT stack in one layer: every middleware of this crate, composed in the
/// contract's order from one configuration.
///
/// Outermost first: the error envelope ([`ErrorEnvelope`](crate::envelope::ErrorEnvelope)) → internal errors
/// ([`InternalErrorGuard`](crate::internal_error::InternalErrorGuard)) → [`BillingConfigured`](crate::billing::BillingConfigured) →
/// [`ApiKeyAuth`](crate::auth::ApiKeyAuth) → [`PlanRateLimit`](crate::rate_limit::PlanRateLimit)
/// → [`ValidateScanRequest`](crate::scan_request::ValidateScanRequest) →
/// [`FeatureGate`](crate::feature_gate::FeatureGate) (scan kinds) →
/// [`ConcurrentScans`](crate::concurrency::ConcurrentScans) →
/// [`QuotaGuard`](crate::quota::QuotaGuard) → your service. They all run inside one service
/// ([`NatService`]), exactly as the layers one by one would (the same answers, headers and
/// metrics), with one response future and one response body ([`NatBody`]). So a Free tenant asking for a security scan with
/// no quota left gets 403, not 402; a rate-limited request never reaches the quota; the Stripe webhook
/// (exempt from key auth) still gets 503 when billing is off; and every error, the
/// framework's own included, is in the envelope.
///
/// Routes exempted with [`NatLayer::exempt`] skip authentication, rate limits and quotas
/// (but not the billing check, the internal-error guard or the envelope).
///
/// # Where it goes
///
/// Every path decision (exempt routes, scan creation, the billing prefix) is made on the path
/// the client sent, so the layer works the same at the top of an app and on a router nested
/// under a prefix (axum's `nest` and `nest_service`: enable the `axum` feature, which reads
/// axum's `OriginalUri`). Servers that place layers per route can instead give routes their
/// meaning by placement: [`NatLayer::scan_creation`] on the scan route, and
/// [`BillingConfiguredLayer::every_request`] on the billing routes. Put CORS outside it (a
/// preflight carries no API key).
///
/// A layer only sees the requests its router hands it. On a nested router, paths the router
/// does not know go to the outer router's fallback: put an
/// [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer) on the top router too, so that
/// 404 is in the envelope as well (two envelope layers in a row are harmless: the second
/// sees JSON). Such paths then answer 404 without asking for a key, where the layer at the
/// top would answer 401 first and keep the route map to itself.
///
/// # Example
///
/// With the `axum` feature (the `Tenant` extractor, `NatError` as a response):
///
/// ```
/// # #[cfg(feature = "axum")]
/// # fn example() {
/// use axum::{Json, Router, routing::{get, post}};
/// use tower_nat::{NatError, NatLayer, auth::MemoryKeyStore, quota::Usage, tenant::Tenant};
///
/// let nat = NatLayer::new(MemoryKeyStore::new()).exempt("/healthz");
/// let usage = nat.usage_reader();
/// let api: Router = Router::new()
///     .route("/usage", get(move |tenant: Tenant| async move {
///         Ok::<_, NatError>(Json(usage.usage(&tenant).await?))
///     }))
///     .route("/scan", post(|| async { (http::StatusCode::ACCEPTED, "{}") }));
/// // The client's paths are /api/v1/usage and /api/v1/scan: that is what the layer matches.
/// let app: Router = Router::new()
///     .nest("/api/v1", api)
///     .route("/healthz", get(|| async { "ok" }))
///     .layer(nat);
/// # }
/// ```
///
/// # Configuration
///
/// The plan table, the clock and shadow mode are one setting each, for every layer: the
/// order of the calls that set them does not matter.
///
/// # Defaults
///
/// NAT's plan table, in-memory rate-limit and quota stores, the system clock, scan
/// validation of `POST /api/v1/scan` with a 1 MiB limit, no exempt routes, the error envelope
/// on, and billing **not configured** (503 `STRIPE_NOT_CONFIGURED` under `/api/v1/billing`)
/// until you pass [`NatLayer::billing`], e.g. `BillingConfiguredLayer::from_env()`. Nothing is
/// read from the environment unless you ask.
#[derive(Clone, Debug)]
pub struct NatLayer<
    K = MemoryKeyStore,
    R = MemoryRateStore,
    Q = MemoryQuotaStore,
    C = MemorySlotStore,
> {
    keys: K,
    rates: R,
    quotas: Q,
    slots: C,
    settings: Settings,
}

impl<K> NatLayer<K> {
    /// The stack with `keys` as key store and every other setting at its default.
    pub fn new(keys: K) -> Self {
        Self {
            keys,
            rates: MemoryRateStore::new(),
            quotas: MemoryQuotaStore::new(),
            slots: MemorySlotStore::new(),
            settings: Settings {
                common: Common::default(),
                auth: auth::Config::default(),
                rate: rate_limit::Config::default(),
                validation: ValidateScanRequestLayer::new().config().clone(),
                concurrency: concurrency::Config::default(),
                quota: quota::Config::default(),
                billing: BillingConfiguredLayer::new(false).config().clone(),
                envelope: true,
                panic_messages: false,
            },
        }
    }
}

impl<K, R, Q, C> NatLayer<K, R, Q, C> {
    /// Uses this plan table everywhere.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.settings.common.plans = plans.into();
        self
    }

    /// Reads time from `clock` everywhere: key expiry, rate limits, quota periods and slot
    /// lapses.
    #[must_use]
    pub fn clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.settings.common.clock = clock;
        self
    }

    /// Runs the whole stack in shadow mode (or not): every layer decides as usual and reports
    /// what it would have refused (`nat_rejections_total{shadow="true"}`, a `DEBUG` event
    /// "would reject"), and every request reaches the server untouched: no refusal, no
    /// rate-limit headers, no quota charge. A request whose key was refused reaches the server
    /// without a `Tenant`. It applies to every layer of the stack, and to those it makes
    /// ([`scan_creation`](Self::scan_creation), [`require_feature`](Self::require_feature)).
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.settings.common.shadow = on;
        self
    }

    /// The same stack over other stores, made by `f` from these.
    fn stores<K2, R2, Q2, C2>(
        self,
        f: impl FnOnce(K, R, Q, C) -> (K2, R2, Q2, C2),
    ) -> NatLayer<K2, R2, Q2, C2> {
        let (keys, rates, quotas, slots) = f(self.keys, self.rates, self.quotas, self.slots);
        NatLayer {
            keys,
            rates,
            quotas,
            slots,
            settings: self.settings,
        }
    }

    /// Keeps rate-limit state in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_rate_store<R2>(self, store: R2) -> NatLayer<K, R2, Q, C> {
        self.stores(|keys, _, quotas, slots| (keys, store, quotas, slots))
    }

    /// Keeps scan usage in `store`.
    #[must_use]
    pub fn with_quota_store<Q2>(self, store: Q2) -> NatLayer<K, R, Q2, C> {
        self.stores(|keys, rates, _, slots| (keys, rates, store, slots))
    }

    /// Keeps running scans in `store` (e.g. `RedisSlotStore`, shared by several instances).
    #[must_use]
    pub fn with_slot_store<C2>(self, store: C2) -> NatLayer<K, R, Q, C2> {
        self.stores(|keys, rates, quotas, _| (keys, rates, quotas, store))
    }

    /// The `Retry-After` hint of a scan creation refused for concurrency (10 s by default).
    #[must_use]
    pub fn scan_retry_after(mut self, hint: Duration) -> Self {
        self.settings.concurrency.retry_after = hint;
        self
    }

    /// How long a running scan holds its slot at most (1 hour by default).
    #[must_use]
    pub fn max_scan_duration(mut self, lapse: Duration) -> Self {
        self.settings.concurrency.lapse = lapse;
        self
    }

    /// Tells `events` when a tenant goes past 80 % or reaches 100 % of a quota, once per
    /// tenant, quota and period (see [`QuotaEvents`](crate::quota::QuotaEvents)).
    #[must_use]
    pub fn quota_events(mut self, events: impl crate::quota::QuotaEvents) -> Self {
        self.settings.quota.events = Some(quota::Listener::new(events));
        self
    }

    /// Lets requests to exactly `path` (as the client sent it) through without a key, rate
    /// limit or quota.
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.settings.auth.exempt(path);
        self
    }

    /// Like [`exempt`](Self::exempt) for `prefix` and everything below it.
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.auth.exempt_prefix(prefix);
        self
    }

    /// Accepts API keys of this format (give the key store the same format to issue them).
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.settings.auth.key_format(format);
        self
    }

    /// Reads keys from `header` instead of `X-API-Key` (see
    /// [`ApiKeyAuthLayer::key_header`]).
    #[must_use]
    pub fn key_header(mut self, header: HeaderName) -> Self {
        self.settings.auth.key_header(header);
        self
    }

    /// Throttles failed authentication at `limit` per `period` per client address (20 a
    /// minute by default; see [`ApiKeyAuthLayer::failed_auth_limit`]).
    #[must_use]
    pub fn failed_auth_limit(mut self, limit: u32, period: Duration) -> Self {
        self.settings.auth.failed_auth_limit(limit, period);
        self
    }

    /// Counts IPv6 clients of the failed-auth throttle by their first `prefix` bits (/64 by
    /// default; see [`ApiKeyAuthLayer::failed_auth_ipv6_prefix`]).
    #[must_use]
    pub fn failed_auth_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.settings.auth.failed_auth_ipv6_prefix(prefix);
        self
    }

    /// How many client addresses the failed-auth throttle remembers (65,536 by default; see
    /// [`ApiKeyAuthLayer::failed_auth_capacity`]).
    #[must_use]
    pub fn failed_auth_capacity(mut self, addresses: usize) -> Self {
        self.settings.auth.failed_auth_capacity(addresses);
        self
    }

    /// Turns throttling of failed authentication off.
    #[must_use]
    pub fn without_failed_auth_limit(mut self) -> Self {
        self.settings.auth.without_failed_auth_limit();
        self
    }

    /// Trusts these proxies' `X-Forwarded-For` and `Forwarded` headers for the client address
    /// (none by default; see [`ApiKeyAuthLayer::trusted_proxies`]).
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.settings.auth.trusted_proxies(proxies);
        self
    }

    /// The billing check (by default: not configured, on `/api/v1/billing`). Pass
    /// [`BillingConfiguredLayer::from_env`] to read the Stripe variables. (The stack's shadow
    /// mode applies to it, whatever its own.)
    #[must_use]
    pub fn billing(mut self, billing: BillingConfiguredLayer) -> Self {
        self.settings.billing = billing.config().clone();
        self
    }

    /// The scan validation to use (routes, body limit, default mode, gRPC kinds). (The
    /// stack's shadow mode applies to it, whatever its own.)
    #[must_use]
    pub fn scan_validation(mut self, validation: ValidateScanRequestLayer) -> Self {
        self.settings.validation = validation.config().clone();
        self
    }

    /// Also sends the IETF draft `RateLimit` and `RateLimit-Policy` headers.
    #[must_use]
    pub fn draft_rate_limit_headers(mut self, enabled: bool) -> Self {
        self.settings.rate.draft_headers = enabled;
        self
    }

    /// What rate limiting does when its store fails (default: let requests through).
    #[must_use]
    pub fn rate_limit_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.settings.rate.on_store_error = choice;
        self
    }

    /// What quota enforcement does when its store fails (default: 500).
    #[must_use]
    pub fn quota_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.settings.quota.on_store_error = choice;
        self
    }

    /// What the concurrent-scan limit does when its slot store fails (default: 500). It
    /// runs before the quota, so with both stores in Redis a scan creation while Redis is
    /// down is answered by this choice first: letting scans through during an outage needs
    /// both this and [`quota_on_store_error`](Self::quota_on_store_error).
    #[must_use]
    pub fn slots_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.settings.concurrency.on_store_error = choice;
        self
    }

    /// Whether every error response that is not already JSON is put in the envelope
    /// ([`ErrorEnvelope`](crate::envelope::ErrorEnvelope), on by default).
    #[must_use]
    pub fn error_envelope(mut self, enabled: bool) -> Self {
        self.settings.envelope = enabled;
        self
    }

    /// Whether a panic's message is part of its `ERROR` event (off by default: panic
    /// messages may carry secrets; see [`InternalErrorGuardLayer::panic_messages`](crate::internal_error::InternalErrorGuardLayer::panic_messages)).
    #[must_use]
    pub fn log_panic_messages(mut self, log: bool) -> Self {
        self.settings.panic_messages = log;
        self
    }

    /// What this stack can answer to each operation, to document in an OpenAPI document
    /// ([`crate::openapi`]): made from this configuration (exempt routes, scan routes, the
    /// billing check, the plan table, shadow mode, the draft headers).
    #[cfg(feature = "openapi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
    pub fn openapi_errors(&self) -> crate::openapi::NatErrors {
        let s = &self.settings;
        crate::openapi::NatErrors::new(crate::openapi::Source {
            auth: s.auth.clone(),
            validation: s.validation.clone(),
            billing: s.billing.clone(),
            plans: s.common.plans.clone(),
            shadow: s.common.shadow,
            draft_headers: s.rate.draft_headers,
            scan_retry_after: s.concurrency.retry_after,
        })
    }

    /// The plan table.
    pub fn plan_table(&self) -> Arc<Plans> {
        self.settings.common.plans.clone()
    }

    /// The key store.
    pub fn key_store(&self) -> &K {
        &self.keys
    }

    /// The rate-limit store.
    pub fn rate_store(&self) -> &R {
        &self.rates
    }

    /// The quota store.
    pub fn quota_store(&self) -> &Q {
        &self.quotas
    }

    /// A feature gate for routes that need `feature` (built in, or defined by this layer's
    /// plan table), with this stack's plans and shadow mode:
    /// `.route_layer(nat.require_feature("exports")?)`. An unknown name is an error here,
    /// when the app is built, never a 403 later.
    pub fn require_feature(&self, feature: &str) -> Result<FeatureGateLayer, PlansError> {
        let common = &self.settings.common;
        let feature = common
            .plans
            .feature(feature)
            .cloned()
            .ok_or_else(|| PlansError::unknown_feature(feature))?;
        Ok(FeatureGateLayer::with_common(Some(feature), common.clone()))
    }
}

impl<K, R, Q: Clone, C: Clone> NatLayer<K, R, Q, C> {
    /// The concurrent-scan limit: release slots by id, count running scans.
    pub fn scan_slots(&self) -> ConcurrentScansLayer<C> {
        let settings = &self.settings;
        ConcurrentScansLayer::from_parts(
            self.slots.clone(),
            settings.concurrency.clone(),
            settings.common.clone(),
        )
    }

    /// Validation, feature gate, running scans and quota for a layer placed on the scan route
    /// itself: every request it sees is a scan creation, whatever its path. It shares this
    /// layer's stores, plans, clock and shadow mode, and a scan this layer already validated
    /// and reserved (by path) is neither read nor charged twice.
    ///
    /// ```
    /// use axum::{Router, routing::post};
    /// use tower_nat::{NatLayer, auth::MemoryKeyStore};
    ///
    /// let nat = NatLayer::new(MemoryKeyStore::new());
    /// let app: Router = Router::new()
    ///     .route(
    ///         "/v2/scans",
    ///         // On the handler: every request it sees is a scan creation, whatever its
    ///         // method, so it goes on `post(..)`, not on a router.
    ///         post(|| async { (http::StatusCode::ACCEPTED, "{}") })
    ///             .route_layer(nat.scan_creation()),
    ///     )
    ///     .layer(nat);
    /// ```
    pub fn scan_creation(&self) -> ScanCreationLayer<Q, C> {
        let settings = &self.settings;
        ScanCreationLayer {
            quotas: self.quotas.clone(),
            slots: self.slots.clone(),
            validation: settings.validation.every_request(),
            concurrency: settings.concurrency.clone(),
            quota: settings.quota.clone(),
            common: settings.common.clone(),
        }
    }
}

impl<K, R: RateStore, Q, C> NatLayer<K, R, Q, C> {
    /// `tenant`'s rate-limit state now, counting nothing (see [`PlanRateLimitLayer::peek`]).
    pub async fn rate_limit_status(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<RateDecision>, StoreError> {
        rate_limit::peek(&self.rates, &self.settings.common, tenant).await
    }
}

impl<K, R, Q: QuotaStore, C: SlotStore> NatLayer<K, R, Q, C> {
    /// The usage snapshot of `tenant` now: everything `GET /api/v1/usage` answers.
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        self.usage_reader().usage(tenant).await
    }

    /// A cheap, cloneable handle that reads usage snapshots (running scans included), for
    /// handlers; its type names no store.
    pub fn usage_reader(&self) -> UsageReader {
        let settings = &self.settings;
        let quota = QuotaGuardLayer::from_parts(
            self.quotas.clone(),
            settings.quota.clone(),
            settings.common.clone(),
        );
        quota.usage_reader().counting(Arc::new(self.scan_slots()))
    }
}

/// The scan part of the policy, from the stack's settings.
fn scan_policy<Q: QuotaStore, C: SlotStore>(
    quotas: Q,
    slots: C,
    validation: &scan_request::Config,
    concurrency: &concurrency::Config,
    quota: &quota::Config,
    common: &Common,
) -> ScanPolicy<Q, C> {
    Chain(
        validation.policy(common.shadow),
        ForScans(Chain(
            Gate::new(None, common),
            Chain(
                ConcurrentScansLayer::policy(slots, concurrency, common),
                QuotaGuardLayer::policy(quotas, quota, common),
            ),
        )),
    )
}

impl<S, K, R, Q, C> Layer<S> for NatLayer<K, R, Q, C>
where
    K: KeyStore,
    R: RateStore,
    Q: QuotaStore,
    C: SlotStore,
{
    type Service = NatService<S, K, R, Q, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let s = &self.settings;
        let common = &s.common;
        let policy = Chain(
            s.billing.policy(common.shadow),
            Chain(
                ApiKeyAuthLayer::policy(self.keys.clone(), &s.auth, common),
                Chain(
                    PlanRateLimitLayer::policy(
                        self.rates.clone(),
                        PlanResolver::new(common.plans.clone()),
                        &s.rate,
                        common,
                    ),
                    scan_policy(
                        self.quotas.clone(),
                        self.slots.clone(),
                        &s.validation,
                        &s.concurrency,
                        &s.quota,
                        common,
                    ),
                ),
            ),
        );
        NatService {
            inner,
            policy: Arc::new(policy),
            requests: Arc::new(Requests::register()),
            envelope: s.envelope,
            panic_messages: s.panic_messages,
            not_ready: false,
        }
    }
}

/// The service [`NatLayer`] wraps around `S`: every decision of the stack, the error envelope
/// and the internal-error guard, in one service with one response body ([`NatBody`]).
/// Cloning it is a clone of `S` and two reference counts.
pub struct NatService<
    S,
    K = MemoryKeyStore,
    R = MemoryRateStore,
    Q = MemoryQuotaStore,
    C = MemorySlotStore,
> {
    inner: S,
    policy: Arc<NatPolicy<K, R, Q, C>>,
    requests: Arc<Requests>,
    envelope: bool,
    panic_messages: bool,
    // The inner service failed to become ready: the next call answers 500 without it.
    not_ready: bool,
}

impl<S, K, R, Q, C> NatService<S, K, R, Q, C> {
    crate::inner_accessors!();
}

impl<S: Clone, K, R, Q, C> Clone for NatService<S, K, R, Q, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            requests: self.requests.clone(),
            envelope: self.envelope,
            panic_messages: self.panic_messages,
            not_ready: self.not_ready,
        }
    }
}

impl<S: fmt::Debug, K, R, Q, C> fmt::Debug for NatService<S, K, R, Q, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatService")
            .field("inner", &self.inner)
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl<S, K, R, Q, C, ReqB, ResB> Service<Request<ReqB>> for NatService<S, K, R, Q, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    NatPolicy<K, R, Q, C>: Policy<ReqB>,
    ResB: http_body::Body,
    ResB::Data: From<bytes::Bytes>,
{
    type Response = Response<NatBody<ResB>>;
    type Error = Infallible;
    type Future = NatFuture<S, ReqB, K, R, Q, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        poll_ready_guarded(
            &mut self.inner,
            cx,
            &mut self.not_ready,
            self.panic_messages,
        )
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc = crate::grpc::wants_grpc(&req);
        let panic_messages = self.panic_messages;
        let (inner, policy) = (&mut self.inner, &self.policy);
        let mut nat = NatFuture {
            state: NatState::Decide { future: None },
            requests: self.requests.clone(),
            grpc,
            envelope: self.envelope,
            panic_messages,
        };
        // The inner future is made where it is kept, and the request reached through a
        // reference: neither is copied through the unwinding machinery.
        let mut req = Some(req);
        if let NatState::Decide { future } = &mut nat.state {
            call_caught(future, &mut self.not_ready, panic_messages, || {
                crate::engine::service::call(inner, policy, &mut req)
            });
        }
        nat
    }
}

/// The body type of a response type.
pub trait ResponseBody {
    /// The body.
    type Body;
}

impl<B> ResponseBody for Response<B> {
    type Body = B;
}

pin_project! {
    /// The response future of [`NatService`].
    pub struct NatFuture<S, ReqB, K, R, Q, C>
    where
        S: Service<Request<ReqB>>,
        S::Response: ResponseBody,
        NatPolicy<K, R, Q, C>: Policy<ReqB>,
    {
        #[pin]
        state: NatState<S, ReqB, K, R, Q, C>,
        requests: Arc<Requests>,
        grpc: bool,
        envelope: bool,
        panic_messages: bool,
    }
}

pin_project! {
    #[project = NatStateProj]
    enum NatState<S, ReqB, K, R, Q, C>
    where
        S: Service<Request<ReqB>>,
        S::Response: ResponseBody,
        NatPolicy<K, R, Q, C>: Policy<ReqB>,
    {
        // The decisions and the inner service (none: it failed already).
        Decide { #[pin] future: Option<PolicyFuture<S, NatPolicy<K, R, Q, C>, ReqB>> },
        // A framework's error body read for its explanation.
        Explain {
            explaining: Pin<Box<Explaining<NatBody<<S::Response as ResponseBody>::Body>>>>,
        },
    }
}

impl<S, ReqB, ResB, K, R, Q, C> Future for NatFuture<S, ReqB, K, R, Q, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    NatPolicy<K, R, Q, C>: Policy<ReqB>,
    ResB: http_body::Body,
    ResB::Data: From<bytes::Bytes>,
{
    type Output = Result<Response<NatBody<ResB>>, Infallible>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.as_mut().project();
        let response = match this.state.project() {
            NatStateProj::Decide { future } => {
                let Some(response) = ready!(poll_caught(future, cx, *this.panic_messages)) else {
                    this.requests.count(Outcome::Error);
                    return Poll::Ready(Ok(internal(*this.grpc)));
                };
                this.requests
                    .count(match response.extensions().get::<Refused>() {
                        None => Outcome::Allowed,
                        Some(Refused("INTERNAL_ERROR")) => Outcome::Error,
                        Some(_) => Outcome::Rejected,
                    });
                if !*this.envelope || passes_as_is(&response, *this.grpc) {
                    return Poll::Ready(Ok(response));
                }
                response
            }
            NatStateProj::Explain { explaining } => {
                return explaining.as_mut().poll_explained(cx).map(Ok);
            }
        };
        match envelope_response(response, *this.grpc, |body| body) {
            Enveloped::Done(response) => Poll::Ready(Ok(response)),
            Enveloped::Explain(explaining) => {
                self.as_mut()
                    .project()
                    .state
                    .set(NatState::Explain { explaining });
                self.poll(cx)
            }
        }
    }
}

impl<S, ReqB, K, R, Q, C> fmt::Debug for NatFuture<S, ReqB, K, R, Q, C>
where
    S: Service<Request<ReqB>>,
    S::Response: ResponseBody,
    NatPolicy<K, R, Q, C>: Policy<ReqB>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatFuture").finish_non_exhaustive()
    }
}

/// Scan validation, the feature gate for scan kinds, the concurrent-scan limit and the quota,
/// in that order: the part of the stack that gives a scan creation its meaning, for a layer
/// on the scan route itself ([`NatLayer::scan_creation`]).
#[derive(Clone, Debug)]
pub struct ScanCreationLayer<Q = MemoryQuotaStore, C = MemorySlotStore> {
    quotas: Q,
    slots: C,
    validation: scan_request::Config,
    concurrency: concurrency::Config,
    quota: quota::Config,
    common: Common,
}

/// The service [`ScanCreationLayer`] wraps around `S`.
pub type ScanCreation<S, Q = MemoryQuotaStore, C = MemorySlotStore> =
    PolicyService<S, ScanPolicy<Q, C>>;

impl<S, Q: QuotaStore, C: SlotStore> Layer<S> for ScanCreationLayer<Q, C> {
    type Service = ScanCreation<S, Q, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = scan_policy(
            self.quotas.clone(),
            self.slots.clone(),
            &self.validation,
            &self.concurrency,
            &self.quota,
            &self.common,
        );
        PolicyService::new(inner, Arc::new(policy))
    }
}
