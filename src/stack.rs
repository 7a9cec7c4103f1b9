//! [`NatLayer`]: the whole stack in one layer, and [`ScanCreationLayer`], its scan part.

use std::{sync::Arc, time::Duration};

use http::HeaderName;

use tower_layer::Layer;

use crate::{
    auth::layer::Authenticate,
    auth::{ApiKeyAuthLayer, IpNet, KeyFormat, MemoryKeyStore},
    billing::{BillingCheck, BillingConfiguredLayer},
    chain::{Chain, GatePolicy},
    clock::{self, SharedClock},
    concurrency::Occupy,
    concurrency::{ConcurrentScans, ConcurrentScansLayer, MemorySlotStore, SlotStore},
    envelope::{ErrorEnvelope, ErrorEnvelopeLayer},
    error::StoreError,
    feature_gate::FeatureCheck,
    feature_gate::{FeatureGate, FeatureGateLayer},
    internal_error::{InternalErrorGuard, InternalErrorGuardLayer},
    plan::{Plans, PlansError},
    quota::layer::Reserve,
    quota::{MemoryQuotaStore, QuotaGuard, QuotaGuardLayer, QuotaStore, Usage, UsageReader},
    rate_limit::PlanResolver,
    rate_limit::layer::Limit,
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateDecision, RateStore},
    scan_request::layer::ValidateScan,
    scan_request::{ValidateScanRequest, ValidateScanRequestLayer},
    store::OnStoreError,
    tenant::Tenant,
};

/// The service [`NatLayer`] wraps around `S`: the error envelope and the internal-error
/// guard around [`NatGuard`], which makes every other decision of the stack.
pub type NatService<
    S,
    K = MemoryKeyStore,
    R = MemoryRateStore,
    Q = MemoryQuotaStore,
    C = MemorySlotStore,
> = ErrorEnvelope<InternalErrorGuard<NatGuard<S, NatPolicy<K, R, Q, C>>>>;

/// Every decision of the stack in the contract's order: billing, authentication, rate limit,
/// scan validation, the feature gate for scan kinds, running scans, quota.
pub type NatPolicy<K, R, Q, C> = Chain<
    GatePolicy<BillingCheck>,
    Chain<
        Authenticate<K>,
        Chain<
            Limit<R, PlanResolver>,
            Chain<ValidateScan, Chain<GatePolicy<FeatureCheck>, Chain<Occupy<C>, Reserve<Q>>>>,
        >,
    >,
>;

/// The stack's decisions as one service: the same decisions, metrics and answers as the
/// layers composed one by one, with one response future and one response body for all of
/// them (each layer of its own costs a state machine, a body wrapper and moves of the
/// request and the response).
#[derive(Clone, Debug)]
pub struct NatGuard<S, P> {
    inner: S,
    policy: P,
}

crate::guard::guarded_service!(impl<P> for NatGuard<S, P>, policy = P);

/// The service [`ScanCreationLayer`] wraps around `S`.
pub type ScanCreation<S, Q = MemoryQuotaStore, C = MemorySlotStore> =
    ValidateScanRequest<FeatureGate<ConcurrentScans<QuotaGuard<S, Q>, C>>>;

/// The whole NAT stack in one layer: every middleware of this crate, composed in the
/// contract's order from one configuration.
///
/// Outermost first: [`ErrorEnvelope`] → [`InternalErrorGuard`] →
/// [`BillingConfigured`](crate::billing::BillingConfigured) →
/// [`ApiKeyAuth`](crate::auth::ApiKeyAuth) → [`PlanRateLimit`](crate::rate_limit::PlanRateLimit)
/// → [`ValidateScanRequest`] → [`FeatureGate`] (scan kinds) → [`ConcurrentScans`] →
/// [`QuotaGuard`] → your service. The middle seven decide inside one service ([`NatGuard`]),
/// exactly as the layers one by one would (the same answers, headers and metrics), with one
/// response future and one response body. So a Free tenant asking for a security scan with
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
    auth: ApiKeyAuthLayer<K>,
    rate: PlanRateLimitLayer<R>,
    scans: ScanCreationLayer<Q, C>,
    billing: BillingConfiguredLayer,
    envelope: bool,
    shadow: bool,
    plans: Arc<Plans>,
    clock: SharedClock,
}

impl<K> NatLayer<K> {
    /// The stack with `keys` as key store and every other setting at its default.
    pub fn new(keys: K) -> Self {
        let plans = Arc::new(Plans::default());
        Self {
            auth: ApiKeyAuthLayer::new(keys),
            rate: PlanRateLimitLayer::new(plans.clone()),
            scans: ScanCreationLayer {
                validation: ValidateScanRequestLayer::new(),
                features: FeatureGateLayer::scans(plans.clone()),
                concurrency: ConcurrentScansLayer::new(plans.clone()),
                quota: QuotaGuardLayer::new(plans.clone()),
            },
            billing: BillingConfiguredLayer::new(false),
            envelope: true,
            shadow: false,
            plans,
            clock: clock::system(),
        }
    }
}

impl<K, R, Q, C> NatLayer<K, R, Q, C> {
    /// Uses this plan table everywhere.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        let plans = plans.into();
        self.rate = self.rate.plans(plans.clone());
        self.scans.features = FeatureGateLayer::scans(plans.clone()).shadow(self.shadow);
        self.scans.concurrency = self.scans.concurrency.plans(plans.clone());
        self.scans.quota = self.scans.quota.plans(plans.clone());
        self.plans = plans;
        self
    }

    /// Reads time from `clock` everywhere: key expiry, rate limits and quota periods.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.auth = self.auth.clock(clock.clone());
        self.rate = self.rate.clock(clock.clone());
        self.scans.concurrency = self.scans.concurrency.clock(clock.clone());
        self.scans.quota = self.scans.quota.clock(clock.clone());
        self.clock = clock;
        self
    }

    /// Keeps rate-limit state in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_rate_store<R2>(self, store: R2) -> NatLayer<K, R2, Q, C> {
        NatLayer {
            auth: self.auth,
            rate: self.rate.with_store(store),
            scans: self.scans,
            billing: self.billing,
            envelope: self.envelope,
            shadow: self.shadow,
            plans: self.plans,
            clock: self.clock,
        }
    }

    /// Keeps scan usage in `store`.
    #[must_use]
    pub fn with_quota_store<Q2>(self, store: Q2) -> NatLayer<K, R, Q2, C> {
        NatLayer {
            auth: self.auth,
            rate: self.rate,
            scans: ScanCreationLayer {
                validation: self.scans.validation,
                features: self.scans.features,
                concurrency: self.scans.concurrency,
                quota: self.scans.quota.with_store(store),
            },
            billing: self.billing,
            envelope: self.envelope,
            shadow: self.shadow,
            plans: self.plans,
            clock: self.clock,
        }
    }

    /// Keeps running scans in `store` (e.g. `RedisSlotStore`, shared by several instances).
    #[must_use]
    pub fn with_slot_store<C2>(self, store: C2) -> NatLayer<K, R, Q, C2> {
        NatLayer {
            auth: self.auth,
            rate: self.rate,
            scans: ScanCreationLayer {
                validation: self.scans.validation,
                features: self.scans.features,
                concurrency: self.scans.concurrency.with_store(store),
                quota: self.scans.quota,
            },
            billing: self.billing,
            envelope: self.envelope,
            shadow: self.shadow,
            plans: self.plans,
            clock: self.clock,
        }
    }

    /// The `Retry-After` hint of a scan creation refused for concurrency (10 s by default).
    #[must_use]
    pub fn scan_retry_after(mut self, hint: Duration) -> Self {
        self.scans.concurrency = self.scans.concurrency.retry_after(hint);
        self
    }

    /// How long a running scan holds its slot at most (1 hour by default).
    #[must_use]
    pub fn max_scan_duration(mut self, lapse: Duration) -> Self {
        self.scans.concurrency = self.scans.concurrency.max_scan_duration(lapse);
        self
    }

    /// Tells `events` when a tenant goes past 80 % or reaches 100 % of a quota, once per
    /// tenant, quota and period (see [`QuotaEvents`](crate::quota::QuotaEvents)).
    #[must_use]
    pub fn quota_events(mut self, events: impl crate::quota::QuotaEvents) -> Self {
        self.scans.quota = self.scans.quota.events(events);
        self
    }

    /// The concurrent-scan limit: release slots by id, count running scans.
    pub fn scan_slots(&self) -> &ConcurrentScansLayer<C> {
        &self.scans.concurrency
    }

    /// Lets requests to exactly `path` (as the client sent it) through without a key, rate
    /// limit or quota.
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.auth = self.auth.exempt(path);
        self
    }

    /// Like [`exempt`](Self::exempt) for `prefix` and everything below it.
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.auth = self.auth.exempt_prefix(prefix);
        self
    }

    /// Accepts API keys of this format (give the key store the same format to issue them).
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.auth = self.auth.key_format(format);
        self
    }

    /// Reads keys from `header` instead of `X-API-Key` (see
    /// [`ApiKeyAuthLayer::key_header`]).
    #[must_use]
    pub fn key_header(mut self, header: HeaderName) -> Self {
        self.auth = self.auth.key_header(header);
        self
    }

    /// Throttles failed authentication at `limit` per `period` per client address (20 a
    /// minute by default; see [`ApiKeyAuthLayer::failed_auth_limit`]).
    #[must_use]
    pub fn failed_auth_limit(mut self, limit: u32, period: Duration) -> Self {
        self.auth = self.auth.failed_auth_limit(limit, period);
        self
    }

    /// Turns throttling of failed authentication off.
    #[must_use]
    pub fn without_failed_auth_limit(mut self) -> Self {
        self.auth = self.auth.without_failed_auth_limit();
        self
    }

    /// Trusts these proxies' `X-Forwarded-For` and `Forwarded` headers for the client address
    /// (none by default; see [`ApiKeyAuthLayer::trusted_proxies`]).
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.auth = self.auth.trusted_proxies(proxies);
        self
    }

    /// The billing check (by default: not configured, on `/api/v1/billing`). Pass
    /// [`BillingConfiguredLayer::from_env`] to read the Stripe variables.
    #[must_use]
    pub fn billing(mut self, billing: BillingConfiguredLayer) -> Self {
        self.billing = if self.shadow {
            billing.shadow(true)
        } else {
            billing
        };
        self
    }

    /// The scan validation to use (routes, body limit, default mode).
    #[must_use]
    pub fn scan_validation(mut self, validation: ValidateScanRequestLayer) -> Self {
        self.scans.validation = if self.shadow {
            validation.shadow(true)
        } else {
            validation
        };
        self
    }

    /// Also sends the IETF draft `RateLimit` and `RateLimit-Policy` headers.
    #[must_use]
    pub fn draft_rate_limit_headers(mut self, enabled: bool) -> Self {
        self.rate = self.rate.draft_headers(enabled);
        self
    }

    /// What rate limiting does when its store fails (default: let requests through).
    #[must_use]
    pub fn rate_limit_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.rate = self.rate.on_store_error(choice);
        self
    }

    /// What quota enforcement does when its store fails (default: 500).
    #[must_use]
    pub fn quota_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.scans.quota = self.scans.quota.on_store_error(choice);
        self
    }

    /// What the concurrent-scan limit does when its slot store fails (default: 500). It
    /// runs before the quota, so with both stores in Redis a scan creation while Redis is
    /// down is answered by this choice first: letting scans through during an outage needs
    /// both this and [`quota_on_store_error`](Self::quota_on_store_error).
    #[must_use]
    pub fn slots_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.scans.concurrency = self.scans.concurrency.on_store_error(choice);
        self
    }

    /// Runs the whole stack in shadow mode (or not): every layer decides as usual and reports
    /// what it would have refused (`nat_rejections_total{shadow="true"}`, a `DEBUG` event
    /// "would reject"), and every request reaches the server untouched: no refusal, no
    /// rate-limit headers, no quota charge. A request whose key was refused reaches the server
    /// without a `Tenant`. Layers given afterwards (`billing`, `scan_validation`) run in the
    /// same mode.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self.auth = self.auth.shadow(on);
        self.rate = self.rate.shadow(on);
        self.billing = self.billing.shadow(on);
        self.scans.validation = self.scans.validation.shadow(on);
        self.scans.features = self.scans.features.shadow(on);
        self.scans.concurrency = self.scans.concurrency.shadow(on);
        self.scans.quota = self.scans.quota.shadow(on);
        self
    }

    /// Whether every error response that is not already JSON is put in the envelope
    /// ([`ErrorEnvelope`], on by default).
    #[must_use]
    pub fn error_envelope(mut self, enabled: bool) -> Self {
        self.envelope = enabled;
        self
    }

    /// The plan table.
    pub fn plan_table(&self) -> Arc<Plans> {
        self.plans.clone()
    }

    /// The key store.
    pub fn key_store(&self) -> &K {
        self.auth.store()
    }

    /// The rate-limit store.
    pub fn rate_store(&self) -> &R {
        self.rate.store()
    }

    /// The quota store.
    pub fn quota_store(&self) -> &Q {
        self.scans.quota.store()
    }
}

impl<K, R, Q: Clone, C: Clone> NatLayer<K, R, Q, C> {
    /// Validation, feature gate and quota for a layer placed on the scan route itself: every
    /// request it sees is a scan creation, whatever its path. It shares this layer's quota
    /// store, plans and clock, and a scan this layer already validated and reserved (by path)
    /// is neither read nor charged twice.
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
        ScanCreationLayer {
            validation: self.scans.validation.clone().every_request(),
            features: self.scans.features.clone(),
            concurrency: self.scans.concurrency.clone(),
            quota: self.scans.quota.clone(),
        }
    }
}

impl<K, R, Q, C> NatLayer<K, R, Q, C> {
    /// A feature gate for routes that need `feature` (built in, or defined by this layer's
    /// plan table), sharing the table: `.route_layer(nat.require_feature("exports")?)`. An
    /// unknown name is an error here, when the app is built, never a 403 later.
    pub fn require_feature(&self, feature: &str) -> Result<FeatureGateLayer, PlansError> {
        let feature = self
            .plans
            .feature(feature)
            .cloned()
            .ok_or_else(|| PlansError::unknown_feature(feature))?;
        Ok(FeatureGateLayer::require(feature, self.plans.clone()))
    }
}

impl<K, R: RateStore, Q, C> NatLayer<K, R, Q, C> {
    /// `tenant`'s rate-limit state now, counting nothing (see [`PlanRateLimitLayer::peek`]).
    pub async fn rate_limit_status(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<RateDecision>, StoreError> {
        self.rate.peek(tenant).await
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
        let running = Arc::new(self.scans.concurrency.clone());
        self.scans.quota.usage_reader().counting(running)
    }
}

impl<S, K: Clone, R: Clone, Q: Clone, C: Clone> Layer<S> for NatLayer<K, R, Q, C> {
    type Service = NatService<S, K, R, Q, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let scans = &self.scans;
        let policy = Chain(
            GatePolicy(self.billing.check().clone()),
            Chain(
                self.auth.policy().clone(),
                Chain(
                    self.rate.policy().clone(),
                    Chain(
                        scans.validation.policy().clone(),
                        Chain(
                            GatePolicy(scans.features.check().clone()),
                            Chain(
                                scans.concurrency.policy().clone(),
                                scans.quota.policy().clone(),
                            ),
                        ),
                    ),
                ),
            ),
        );
        let service = NatGuard { inner, policy };
        let service = InternalErrorGuardLayer::new().counting().layer(service);
        ErrorEnvelopeLayer::new()
            .enabled(self.envelope)
            .layer(service)
    }
}

/// Scan validation, the feature gate for scan kinds, the concurrent-scan limit and the quota,
/// in that order: the part of
/// the stack that gives a scan creation its meaning. [`NatLayer`] runs it on the scan routes
/// it finds by path; [`NatLayer::scan_creation`] makes one for the scan route itself.
#[derive(Clone, Debug)]
pub struct ScanCreationLayer<Q = MemoryQuotaStore, C = MemorySlotStore> {
    validation: ValidateScanRequestLayer,
    features: FeatureGateLayer,
    concurrency: ConcurrentScansLayer<C>,
    quota: QuotaGuardLayer<Q>,
}

impl<S, Q: Clone, C: Clone> Layer<S> for ScanCreationLayer<Q, C> {
    type Service = ScanCreation<S, Q, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let service = self.quota.layer(inner);
        let service = self.concurrency.layer(service);
        let service = self.features.layer(service);
        self.validation.layer(service)
    }
}
