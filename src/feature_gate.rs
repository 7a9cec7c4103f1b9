//! Plan feature gates: [`FeatureGate`] answers 403 `FEATURE_NOT_AVAILABLE` when the tenant's
//! plan lacks a feature the request needs.
//!
//! Two kinds of gate:
//! - [`FeatureGateLayer::scans`]: per scan kind. A request carrying a
//!   [`ScanKind`] (put there by
//!   [`ValidateScanRequest`](crate::scan_request::ValidateScanRequest)) needs security scanning
//!   for `security` and `full`; other requests pass.
//! - [`FeatureGateLayer::require`]: every request of the route needs the feature, e.g.
//!   webhooks only for Team and up.
//!
//! The 403 names the feature and the plan:
//! `{"error":"FEATURE_NOT_AVAILABLE","message":"Security scanning is not available on the Free plan. Upgrade to access.","feature":"security_scanning","plan":"free"}`.
//! Features are those of the request's plan in the [`Plans`] table (the
//! built-in ones, or your own by name). A request with no [`Tenant`]
//! is refused with 401 unless authentication marked it
//! [`AuthExempt`](crate::tenant::AuthExempt); a tenant whose plan the table lacks gets 500.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{feature_gate::FeatureGateLayer, plan::{Feature, Plan, Plans}, tenant::Tenant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let webhooks = ServiceBuilder::new()
//!     .layer(FeatureGateLayer::require(Feature::WEBHOOKS, Plans::default()))
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("registered"))))
//!     });
//!
//! let mut req = Request::post("/api/v1/webhooks").body(Full::default()).unwrap();
//! req.extensions_mut().insert(Tenant::new("acme", Plan::PRO, "key_1"));
//! let response = webhooks.clone().oneshot(req).await.unwrap();
//! assert_eq!(response.status(), 403);
//!
//! let mut req = Request::post("/api/v1/webhooks").body(Full::default()).unwrap();
//! req.extensions_mut().insert(Tenant::new("acme", Plan::TEAM, "key_1"));
//! assert_eq!(webhooks.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use std::sync::Arc;

use http::Request;
use tower_layer::Layer;

use crate::{
    error::NatError,
    gate::Gate,
    guard::Rejection,
    plan::{Feature, Plan, Plans, ScanKind},
    tenant::{Caller, Tenant, TenantId},
};

/// Applies [`FeatureGate`] to a service.
#[derive(Clone, Debug)]
pub struct FeatureGateLayer {
    gate: FeatureCheck,
}

/// What [`FeatureGate`] checks: which feature a request needs, against the plan table.
#[derive(Clone, Debug)]
pub struct FeatureCheck {
    // `None`: the feature the request's scan kind needs.
    feature: Option<Feature>,
    plans: Arc<Plans>,
    shadow: bool,
}

impl FeatureGateLayer {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn check(&self) -> &FeatureCheck {
        &self.gate
    }

    /// Gates scan creation by scan kind: `security` and `full` need
    /// [`Feature::SECURITY_SCANNING`].
    pub fn scans(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            gate: FeatureCheck {
                feature: None,
                plans: plans.into(),
                shadow: false,
            },
        }
    }

    /// Every request needs `feature` (a built-in one, or one of the table's own:
    /// [`Plans::feature`]).
    pub fn require(feature: Feature, plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            gate: FeatureCheck {
                feature: Some(feature),
                plans: plans.into(),
                shadow: false,
            },
        }
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.gate.shadow = on;
        self
    }
}

impl Gate for FeatureCheck {
    const LAYER: &'static str = "feature_gate";

    #[inline]
    fn shadow(&self) -> bool {
        self.shadow
    }

    #[inline(always)]
    fn check<B>(&self, req: &Request<B>) -> Result<(), Rejection> {
        let needed = match &self.feature {
            Some(feature) => feature,
            None => match req.extensions().get::<ScanKind>() {
                Some(ScanKind::Security | ScanKind::Full) => &Feature::SECURITY_SCANNING,
                Some(ScanKind::Functional) | None => return Ok(()),
            },
        };
        match Caller::of(req.extensions()) {
            Caller::Tenant(tenant) => match self.plans.limits(tenant) {
                Some(limits) if limits.has(needed) => Ok(()),
                limits => Err(self.refuse(tenant, needed, limits.map(|l| l.plan()))),
            },
            Caller::Exempt => Ok(()),
            Caller::Unknown => Err(refuse(
                None,
                NatError::Unauthorized,
                "no tenant in the request (feature gate fails closed)",
            )),
        }
    }
}

impl FeatureCheck {
    /// The refusal of `tenant`, whose plan (`None`: not in the table) lacks `needed`.
    #[cold]
    fn refuse(&self, tenant: &Tenant, needed: &Feature, plan: Option<&Plan>) -> Rejection {
        let Some(plan) = plan else {
            let reason = "the tenant's plan is not in the plan table";
            return refuse(Some(tenant.id()), NatError::Internal, reason);
        };
        // The table's own names, display names included.
        let feature = self.plans.feature(needed.name()).unwrap_or(needed).clone();
        let error = NatError::FeatureNotAvailable {
            feature,
            plan: plan.clone(),
        };
        refuse(Some(tenant.id()), error, "plan lacks the feature")
    }
}

#[cold]
fn refuse(tenant: Option<&TenantId>, error: NatError, reason: &'static str) -> Rejection {
    error.report(tenant, reason);
    error.into()
}

impl<S> Layer<S> for FeatureGateLayer {
    type Service = FeatureGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FeatureGate {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// Answers 403 `FEATURE_NOT_AVAILABLE` when the tenant's plan lacks a needed feature. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct FeatureGate<S> {
    inner: S,
    gate: FeatureCheck,
}

impl<S> FeatureGate<S> {
    crate::inner_accessors!();
}

crate::gate::gated_service!(impl<> for FeatureGate<S>, gate = FeatureCheck);
