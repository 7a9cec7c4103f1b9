//! Billing configuration check: [`BillingConfigured`] answers 503 `STRIPE_NOT_CONFIGURED` to
//! every request under `/api/v1/billing` when Stripe is not configured, and lets everything
//! else through untouched.
//!
//! The configuration is read once, when the layer is built ([`BillingConfiguredLayer::from_env`]
//! reads `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`; unset or empty counts as missing).
//! The layer keeps only whether both were present, never their values. The billing prefix is
//! matched without regard to ASCII case, so `/API/V1/Billing/...` cannot slip past it.
//!
//! Put it outside [`ApiKeyAuth`](crate::auth::ApiKeyAuth), so the Stripe webhook (exempt from
//! key auth) still gets the 503 when billing is off.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::billing::BillingConfiguredLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Only the webhook secret is set: billing is not configured.
//! let layer = BillingConfiguredLayer::from_values(None, Some("whsec_123"));
//! let service = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//!     });
//!
//! let req = Request::post("/api/v1/billing/checkout").body(Full::default()).unwrap();
//! let response = service.clone().oneshot(req).await.unwrap();
//! assert_eq!(response.status(), 503);
//!
//! let req = Request::get("/api/v1/usage").body(Full::default()).unwrap();
//! let response = service.oneshot(req).await.unwrap();
//! assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
//! # }
//! ```

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{body::NatBody, error::NatError, future::ResponseFuture, routes::Routes};

/// The default billing prefix.
pub const DEFAULT_BILLING_PREFIX: &str = "/api/v1/billing";

/// Applies [`BillingConfigured`] to a service.
#[derive(Clone)]
pub struct BillingConfiguredLayer {
    configured: bool,
    prefixes: Arc<Routes>,
}

impl BillingConfiguredLayer {
    /// Reads `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET` from the environment, once.
    pub fn from_env() -> Self {
        let secret = std::env::var("STRIPE_SECRET_KEY").ok();
        let webhook = std::env::var("STRIPE_WEBHOOK_SECRET").ok();
        Self::from_values(secret.as_deref(), webhook.as_deref())
    }

    /// Billing is configured when both values are present and not empty. The values are not
    /// kept.
    pub fn from_values(secret_key: Option<&str>, webhook_secret: Option<&str>) -> Self {
        let present = |v: Option<&str>| v.is_some_and(|v| !v.is_empty());
        Self::new(present(secret_key) && present(webhook_secret))
    }

    /// Billing is configured, or not, as given.
    pub fn new(configured: bool) -> Self {
        let mut prefixes = Routes::default();
        prefixes.add_prefix(DEFAULT_BILLING_PREFIX);
        Self {
            configured,
            prefixes: Arc::new(prefixes),
        }
    }

    /// Guards `prefix` (and everything below it) instead of `/api/v1/billing`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefixes = Routes::default();
        prefixes.add_prefix(prefix);
        self.prefixes = Arc::new(prefixes);
        self
    }

    /// Whether billing is configured.
    pub fn is_configured(&self) -> bool {
        self.configured
    }
}

impl fmt::Debug for BillingConfiguredLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingConfiguredLayer")
            .field("configured", &self.configured)
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

impl<S> Layer<S> for BillingConfiguredLayer {
    type Service = BillingConfigured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BillingConfigured {
            inner,
            layer: self.clone(),
        }
    }
}

/// Answers 503 `STRIPE_NOT_CONFIGURED` on billing routes when billing is not configured. See
/// the [module docs](self).
#[derive(Clone, Debug)]
pub struct BillingConfigured<S> {
    inner: S,
    layer: BillingConfiguredLayer,
}

impl<S> BillingConfigured<S> {
    crate::inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for BillingConfigured<S>
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
        if !self.layer.configured
            && self
                .layer
                .prefixes
                .matches_prefix_ignore_case(req.uri().path())
        {
            let error = NatError::StripeNotConfigured;
            error.report(None, "billing route while Stripe is not configured");
            return ResponseFuture::reject(&error);
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}
