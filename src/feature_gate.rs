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
//! A request with no [`Tenant`](crate::Tenant) is refused with 401 unless authentication marked
//! it [`AuthExempt`](crate::tenant::AuthExempt).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{feature_gate::FeatureGateLayer, tenant::{Feature, Plan, Plans, Tenant}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let webhooks = ServiceBuilder::new()
//!     .layer(FeatureGateLayer::require(Feature::Webhooks, Plans::default()))
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("registered"))))
//!     });
//!
//! let mut req = Request::post("/api/v1/webhooks").body(Full::default()).unwrap();
//! req.extensions_mut().insert(Tenant::new("acme", Plan::Pro, "key_1"));
//! let response = webhooks.clone().oneshot(req).await.unwrap();
//! assert_eq!(response.status(), 403);
//!
//! let mut req = Request::post("/api/v1/webhooks").body(Full::default()).unwrap();
//! req.extensions_mut().insert(Tenant::new("acme", Plan::Team, "key_1"));
//! assert_eq!(webhooks.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    body::NatBody,
    error::NatError,
    future::ResponseFuture,
    scan_request::ScanKind,
    tenant::{Caller, Feature, Plans},
};

#[derive(Clone, Copy, Debug)]
enum Gate {
    Scans,
    Require(Feature),
}

/// Applies [`FeatureGate`] to a service.
#[derive(Clone, Debug)]
pub struct FeatureGateLayer {
    gate: Gate,
    plans: Arc<Plans>,
}

impl FeatureGateLayer {
    /// Gates scan creation by scan kind: `security` and `full` need security scanning.
    pub fn scans(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            gate: Gate::Scans,
            plans: plans.into(),
        }
    }

    /// Every request needs `feature`.
    pub fn require(feature: Feature, plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            gate: Gate::Require(feature),
            plans: plans.into(),
        }
    }
}

impl<S> Layer<S> for FeatureGateLayer {
    type Service = FeatureGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FeatureGate {
            inner,
            layer: self.clone(),
        }
    }
}

/// Answers 403 `FEATURE_NOT_AVAILABLE` when the tenant's plan lacks a needed feature. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct FeatureGate<S> {
    inner: S,
    layer: FeatureGateLayer,
}

impl<S> FeatureGate<S> {
    crate::inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for FeatureGate<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let needed = match self.layer.gate {
            Gate::Require(feature) => Some(feature),
            Gate::Scans => req
                .extensions()
                .get::<ScanKind>()
                .and_then(|k| k.required_feature()),
        };
        let Some(feature) = needed else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        match Caller::of(req.extensions()) {
            Caller::Tenant(tenant) if self.layer.plans.get(tenant.plan()).has(feature) => {}
            Caller::Tenant(tenant) => {
                let error = NatError::FeatureNotAvailable {
                    feature,
                    plan: tenant.plan(),
                };
                error.report(Some(tenant.id()), "plan lacks the feature");
                return ResponseFuture::reject(&error);
            }
            Caller::Exempt => {}
            Caller::Unknown => {
                let error = NatError::Unauthorized;
                error.report(None, "no tenant in the request (feature gate fails closed)");
                return ResponseFuture::reject(&error);
            }
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}
