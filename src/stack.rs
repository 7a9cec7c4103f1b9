//! The whole NAT stack in one layer: [`NatLayer`] composes every middleware of this crate in
//! the contract's order from one configuration.
//!
//! Outermost first: [`InternalErrorGuard`] → [`BillingConfigured`] → [`ApiKeyAuth`] →
//! [`PlanRateLimit`] → [`ValidateScanRequest`] → [`FeatureGate`] (scan kinds) →
//! [`QuotaGuard`] → your service. So a Free tenant asking for a security scan with no quota
//! left gets 403, not 402; a rate-limited request never reaches the quota; the Stripe webhook
//! (exempt from key auth) still gets 503 when billing is off.
//!
//! Routes exempted with [`NatLayer::exempt`] skip authentication, rate limits and quotas
//! (but not the billing check or the internal-error guard).
//!
//! # Example
//!
//! ```
//! use axum::{Extension, Json, Router, routing::get};
//! use tower_nat::{NatLayer, Tenant, auth::MemoryKeyStore, quota::Usage};
//!
//! let keys = MemoryKeyStore::new();
//! let nat = NatLayer::new(keys)
//!     .exempt("/healthz")
//!     .exempt("/api/v1/billing/webhook");
//! let usage = nat.clone();
//! let app: Router = Router::new()
//!     .route("/api/v1/usage", get(move |Extension(tenant): Extension<Tenant>| {
//!         let nat = usage.clone();
//!         async move { Json(nat.usage(&tenant).await.unwrap()) }
//!     }))
//!     .route("/healthz", get(|| async { "ok" }))
//!     .layer(nat);
//! ```

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    auth::{ApiKeyAuth, ApiKeyAuthLayer, KeyFormat, MemoryKeyStore},
    billing::{BillingConfigured, BillingConfiguredLayer},
    clock::{self, SharedClock},
    error::StoreError,
    feature_gate::{FeatureGate, FeatureGateLayer},
    internal_error::{InternalErrorGuard, InternalErrorGuardLayer},
    quota::{self, MemoryQuotaStore, QuotaGuard, QuotaGuardLayer, QuotaStore, Usage},
    rate_limit::{MemoryRateStore, PlanRateLimit, PlanRateLimitLayer},
    scan_request::{ValidateScanRequest, ValidateScanRequestLayer},
    store::OnStoreError,
    tenant::{Plans, Tenant},
};

/// The service [`NatLayer`] wraps around `S`.
pub type NatService<S, K = MemoryKeyStore, R = MemoryRateStore, Q = MemoryQuotaStore> =
    InternalErrorGuard<
        BillingConfigured<
            ApiKeyAuth<PlanRateLimit<ValidateScanRequest<FeatureGate<QuotaGuard<S, Q>>>, R>, K>,
        >,
    >;

/// Every layer of the crate, composed in the contract's order from one configuration. See the
/// [module docs](self).
///
/// Defaults: the NAT plan table, in-memory rate-limit and quota stores, the system clock,
/// billing read from the environment ([`BillingConfiguredLayer::from_env`]) when the layer is
/// made, scan validation of `POST /api/v1/scan` with a 1 MiB limit, no exempt routes.
pub struct NatLayer<K = MemoryKeyStore, R = MemoryRateStore, Q = MemoryQuotaStore> {
    keys: K,
    rate: R,
    quota: Q,
    plans: Arc<Plans>,
    clock: SharedClock,
    exempt: Vec<String>,
    exempt_prefixes: Vec<String>,
    key_format: KeyFormat,
    billing: BillingConfiguredLayer,
    validation: ValidateScanRequestLayer,
    draft_headers: bool,
    rate_on_store_error: OnStoreError,
    quota_on_store_error: OnStoreError,
}

impl<K> NatLayer<K> {
    /// The stack with `keys` as key store and every other setting at its default.
    pub fn new(keys: K) -> Self {
        Self {
            keys,
            rate: MemoryRateStore::new(),
            quota: MemoryQuotaStore::new(),
            plans: Arc::new(Plans::default()),
            clock: clock::system(),
            exempt: Vec::new(),
            exempt_prefixes: Vec::new(),
            key_format: KeyFormat::default(),
            billing: BillingConfiguredLayer::from_env(),
            validation: ValidateScanRequestLayer::new(),
            draft_headers: false,
            rate_on_store_error: OnStoreError::Allow,
            quota_on_store_error: OnStoreError::Reject,
        }
    }
}

impl<K, Q> NatLayer<K, MemoryRateStore, Q> {
    /// Reads time from `clock` everywhere: key expiry, quota periods and the in-memory rate
    /// limiter (which is replaced by a fresh one on `clock`; call
    /// [`with_rate_store`](Self::with_rate_store) after this, not before).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.rate = MemoryRateStore::with_clock(clock.clone());
        self.clock = clock;
        self
    }
}

impl<K, R, Q> NatLayer<K, R, Q> {
    /// Uses this plan table.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.plans = plans.into();
        self
    }

    /// Keeps rate-limit state in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_rate_store<R2>(self, store: R2) -> NatLayer<K, R2, Q> {
        self.with_stores(|_| store, |quota| quota)
    }

    /// Keeps scan usage in `store`.
    #[must_use]
    pub fn with_quota_store<Q2>(self, store: Q2) -> NatLayer<K, R, Q2> {
        self.with_stores(|rate| rate, |_| store)
    }

    /// The same configuration with the stores mapped by `rate` and `quota`.
    fn with_stores<R2, Q2>(
        self,
        rate: impl FnOnce(R) -> R2,
        quota: impl FnOnce(Q) -> Q2,
    ) -> NatLayer<K, R2, Q2> {
        NatLayer {
            keys: self.keys,
            rate: rate(self.rate),
            quota: quota(self.quota),
            plans: self.plans,
            clock: self.clock,
            exempt: self.exempt,
            exempt_prefixes: self.exempt_prefixes,
            key_format: self.key_format,
            billing: self.billing,
            validation: self.validation,
            draft_headers: self.draft_headers,
            rate_on_store_error: self.rate_on_store_error,
            quota_on_store_error: self.quota_on_store_error,
        }
    }

    /// Lets requests to exactly `path` through without a key, rate limit or quota.
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.exempt.push(path.into());
        self
    }

    /// Like [`exempt`](Self::exempt) for `prefix` and everything below it.
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exempt_prefixes.push(prefix.into());
        self
    }

    /// Accepts API keys of this format.
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.key_format = format;
        self
    }

    /// The billing check to use (by default [`BillingConfiguredLayer::from_env`], read when
    /// [`NatLayer::new`] ran).
    #[must_use]
    pub fn billing(mut self, billing: BillingConfiguredLayer) -> Self {
        self.billing = billing;
        self
    }

    /// The scan validation to use (routes, body limit, default mode).
    #[must_use]
    pub fn scan_validation(mut self, validation: ValidateScanRequestLayer) -> Self {
        self.validation = validation;
        self
    }

    /// Also sends the IETF draft `RateLimit` and `RateLimit-Policy` headers.
    #[must_use]
    pub fn draft_rate_limit_headers(mut self, enabled: bool) -> Self {
        self.draft_headers = enabled;
        self
    }

    /// What rate limiting does when its store fails (default: let requests through).
    #[must_use]
    pub fn rate_limit_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.rate_on_store_error = choice;
        self
    }

    /// What quota enforcement does when its store fails (default: 500).
    #[must_use]
    pub fn quota_on_store_error(mut self, choice: OnStoreError) -> Self {
        self.quota_on_store_error = choice;
        self
    }

    /// The plan table.
    pub fn plan_table(&self) -> &Plans {
        &self.plans
    }

    /// The key store.
    pub fn key_store(&self) -> &K {
        &self.keys
    }

    /// The rate-limit store.
    pub fn rate_store(&self) -> &R {
        &self.rate
    }

    /// The quota store.
    pub fn quota_store(&self) -> &Q {
        &self.quota
    }
}

impl<K, R, Q: QuotaStore> NatLayer<K, R, Q> {
    /// The usage snapshot of `tenant` now: everything `GET /api/v1/usage` answers.
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        quota::snapshot(&self.quota, &self.plans, &self.clock, tenant).await
    }
}

impl<K: Clone, R: Clone, Q: Clone> Clone for NatLayer<K, R, Q> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            rate: self.rate.clone(),
            quota: self.quota.clone(),
            plans: self.plans.clone(),
            clock: self.clock.clone(),
            exempt: self.exempt.clone(),
            exempt_prefixes: self.exempt_prefixes.clone(),
            key_format: self.key_format,
            billing: self.billing.clone(),
            validation: self.validation.clone(),
            draft_headers: self.draft_headers,
            rate_on_store_error: self.rate_on_store_error,
            quota_on_store_error: self.quota_on_store_error,
        }
    }
}

impl<K: fmt::Debug, R: fmt::Debug, Q: fmt::Debug> fmt::Debug for NatLayer<K, R, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatLayer")
            .field("keys", &self.keys)
            .field("rate", &self.rate)
            .field("quota", &self.quota)
            .field("exempt", &self.exempt)
            .field("exempt_prefixes", &self.exempt_prefixes)
            .field("billing", &self.billing)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, R: Clone, Q: Clone> Layer<S> for NatLayer<K, R, Q> {
    type Service = NatService<S, K, R, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        let quota = QuotaGuardLayer::with_store(self.quota.clone(), self.plans.clone())
            .clock(self.clock.clone())
            .on_store_error(self.quota_on_store_error);
        let features = FeatureGateLayer::scans(self.plans.clone());
        let rate = PlanRateLimitLayer::with_store(self.rate.clone(), self.plans.clone())
            .draft_headers(self.draft_headers)
            .on_store_error(self.rate_on_store_error);
        let mut auth = ApiKeyAuthLayer::new(self.keys.clone())
            .key_format(self.key_format)
            .clock(self.clock.clone());
        for path in &self.exempt {
            auth = auth.exempt(path.clone());
        }
        for prefix in &self.exempt_prefixes {
            auth = auth.exempt_prefix(prefix.clone());
        }
        let service = quota.layer(inner);
        let service = features.layer(service);
        let service = self.validation.layer(service);
        let service = rate.layer(service);
        let service = auth.layer(service);
        let service = self.billing.layer(service);
        InternalErrorGuardLayer::new().layer(service)
    }
}
