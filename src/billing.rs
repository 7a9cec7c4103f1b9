//! Billing configuration check: [`BillingConfigured`] answers 503 `STRIPE_NOT_CONFIGURED` to
//! every request under `/api/v1/billing` when Stripe is not configured, and lets everything
//! else through untouched.
//!
//! The configuration is read once, when the layer is built ([`BillingConfiguredLayer::from_env`]
//! reads `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`; unset or empty counts as missing).
//! The layer keeps only whether both were present, never their values.
//!
//! Which requests are billing requests, two ways:
//!
//! - **By path** (the default): everything under `/api/v1/billing`
//!   ([`BillingConfiguredLayer::prefix`] changes it), matched on the path the client sent,
//!   also under axum's `nest` (with the `axum` feature, axum's `OriginalUri`), and without
//!   regard to ASCII case, so `/API/V1/Billing/...` cannot slip past it.
//! - **By placement**: [`BillingConfiguredLayer::every_request`] guards every request the
//!   layer sees, with no path matched: put it on the billing routes only (axum's
//!   `route_layer`, or a nested billing router's `layer`).
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

use std::sync::Arc;

use http::Request;
use tower_layer::Layer;

use crate::{
    error::NatError,
    gate::Gate,
    guard::Rejection,
    path::{Routes, client_path},
};

/// The default billing prefix.
pub const DEFAULT_BILLING_PREFIX: &str = "/api/v1/billing";

/// Applies [`BillingConfigured`] to a service.
#[derive(Clone, Debug)]
pub struct BillingConfiguredLayer {
    gate: BillingCheck,
}

/// What [`BillingConfigured`] checks: whether billing is configured, and which requests are
/// billing requests.
#[derive(Clone, Debug)]
pub struct BillingCheck {
    configured: bool,
    // `None`: every request the layer sees.
    prefixes: Option<Arc<Routes>>,
    shadow: bool,
}

impl BillingConfiguredLayer {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn check(&self) -> &BillingCheck {
        &self.gate
    }

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

    /// Billing is configured, or not, as given; billing requests are those under
    /// `/api/v1/billing`.
    pub fn new(configured: bool) -> Self {
        Self {
            gate: BillingCheck {
                configured,
                prefixes: None,
                shadow: false,
            },
        }
        .prefix(DEFAULT_BILLING_PREFIX)
    }

    /// Guards `prefix` (and everything below it, as the client sent it) instead of
    /// `/api/v1/billing`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefixes = Routes::default();
        prefixes.add_prefix(prefix);
        self.gate.prefixes = Some(Arc::new(prefixes));
        self
    }

    /// Guards every request this layer sees, whatever its path: for a layer placed on the
    /// billing routes themselves.
    #[must_use]
    pub fn every_request(mut self) -> Self {
        self.gate.prefixes = None;
        self
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.gate.shadow = on;
        self
    }

    /// Whether billing is configured.
    pub fn is_configured(&self) -> bool {
        self.gate.configured
    }
}

impl Gate for BillingCheck {
    const LAYER: &'static str = "billing";

    #[inline]
    fn shadow(&self) -> bool {
        self.shadow
    }

    #[inline(always)]
    fn check<B>(&self, req: &Request<B>) -> Result<(), Rejection> {
        if self.configured {
            return Ok(());
        }
        let billing = match &self.prefixes {
            None => true,
            Some(prefixes) => prefixes.matches_prefix_ignore_case(client_path(req)),
        };
        if billing {
            Err(not_configured())
        } else {
            Ok(())
        }
    }
}

#[cold]
fn not_configured() -> Rejection {
    let error = NatError::StripeNotConfigured;
    error.report(None, "billing route while Stripe is not configured");
    error.into()
}

impl<S> Layer<S> for BillingConfiguredLayer {
    type Service = BillingConfigured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BillingConfigured {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// Answers 503 `STRIPE_NOT_CONFIGURED` on billing routes when billing is not configured. See
/// the [module docs](self).
#[derive(Clone, Debug)]
pub struct BillingConfigured<S> {
    inner: S,
    gate: BillingCheck,
}

impl<S> BillingConfigured<S> {
    crate::inner_accessors!();
}

crate::gate::gated_service!(impl<> for BillingConfigured<S>, gate = BillingCheck);
