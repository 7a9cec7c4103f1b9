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
    common::{Common, common_setters, tenant_limits},
    engine::{Decision, Never, Policy, PolicyService, Rejection, Reported},
    error::NatError,
    plan::{Feature, Plan, Plans, ScanKind},
    tenant::Tenant,
};

/// Applies [`FeatureGate`] to a service.
#[derive(Clone, Debug)]
pub struct FeatureGateLayer {
    // `None`: the feature the request's scan kind needs.
    feature: Option<Feature>,
    common: Common,
}

impl FeatureGateLayer {
    /// Gates scan creation by scan kind: `security` and `full` need
    /// [`Feature::SECURITY_SCANNING`].
    pub fn scans(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            feature: None,
            common: Common::new(plans),
        }
    }

    /// Every request needs `feature` (a built-in one, or one of the table's own:
    /// [`Plans::feature`]).
    pub fn require(feature: Feature, plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            feature: Some(feature),
            common: Common::new(plans),
        }
    }

    /// A gate with the stack's plans and shadow mode.
    pub(crate) fn with_common(feature: Option<Feature>, common: Common) -> Self {
        Self { feature, common }
    }

    common_setters!(shadow);

    /// The policy, reported.
    pub(crate) fn policy(&self) -> Reported<Gate> {
        Gate::new(self.feature.clone(), &self.common)
    }
}

pub(crate) use gate::Gate;

mod gate {
    use std::sync::Arc;

    use crate::plan::{Feature, Plans};

    /// What [`FeatureGate`](super::FeatureGate) checks: which feature a request needs,
    /// against the plan table.
    #[derive(Clone, Debug)]
    pub struct Gate {
        // `None`: the feature the request's scan kind needs.
        pub(crate) feature: Option<Feature>,
        pub(crate) plans: Arc<Plans>,
    }
}

impl Gate {
    /// The gate for `feature` (`None`: the scan kind's), reported.
    pub(crate) fn new(feature: Option<Feature>, common: &Common) -> Reported<Gate> {
        let gate = Gate {
            feature,
            plans: common.plans.clone(),
        };
        Reported::new(gate, "feature_gate", common.shadow)
    }

    /// The refusal of `tenant`, whose plan lacks `needed`.
    #[cold]
    fn refuse(&self, tenant: &Tenant, needed: &Feature, plan: &Plan) -> Rejection {
        // The table's own names, display names included.
        let feature = self.plans.feature(needed.name()).unwrap_or(needed).clone();
        let error = NatError::FeatureNotAvailable {
            feature,
            plan: plan.clone(),
        };
        Rejection::new(error, "plan lacks the feature").tenant(tenant.id())
    }
}

impl<B> Policy<B> for Gate {
    type Pass = ();
    type Later = Never;

    #[inline(always)]
    fn decide(&self, req: &mut Request<B>) -> Decision<(), Never> {
        let needed = match &self.feature {
            Some(feature) => feature,
            None => match req.extensions().get::<ScanKind>() {
                Some(ScanKind::Security | ScanKind::Full) => &Feature::SECURITY_SCANNING,
                Some(ScanKind::Functional) | None => return Decision::Pass(()),
            },
        };
        match tenant_limits(req, &self.plans) {
            Ok(Some((_, limits))) if limits.has(needed) => Decision::Pass(()),
            Ok(Some((tenant, limits))) => {
                Decision::refuse(self.refuse(tenant, needed, limits.plan()))
            }
            Ok(None) => Decision::Pass(()),
            Err(rejection) => Decision::refuse(rejection),
        }
    }

    fn resume(&self, never: std::convert::Infallible, _: &mut Request<B>) -> Decision<(), Never> {
        match never {}
    }
}

/// Answers 403 `FEATURE_NOT_AVAILABLE` when the tenant's plan lacks a needed feature. See the
/// [module docs](self).
pub type FeatureGate<S> = PolicyService<S, Reported<Gate>>;

impl<S> Layer<S> for FeatureGateLayer {
    type Service = FeatureGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService::new(inner, Arc::new(self.policy()))
    }
}
