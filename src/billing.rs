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
    engine::{Decision, Never, Policy, PolicyService, Rejection, Reported},
    error::NatError,
    path::{Routes, client_path},
};

/// The default billing prefix.
pub const DEFAULT_BILLING_PREFIX: &str = "/api/v1/billing";

/// Applies [`BillingConfigured`] to a service.
#[derive(Clone, Debug)]
pub struct BillingConfiguredLayer {
    config: Config,
    shadow: bool,
}

pub(crate) use check::BillingCheck as Config;

mod check {
    use std::sync::Arc;

    use crate::path::Routes;

    /// Whether billing is configured, and which requests are billing requests: how
    /// [`BillingConfigured`](super::BillingConfigured) decides.
    #[derive(Clone, Debug)]
    pub struct BillingCheck {
        pub(crate) configured: bool,
        // `None`: every request the layer sees.
        pub(crate) prefixes: Option<Arc<Routes>>,
    }

    impl BillingCheck {
        /// Whether a request to `path` (as the client sent it) is refused with 503.
        #[inline]
        pub(crate) fn refuses(&self, path: &str) -> bool {
            !self.configured
                && match &self.prefixes {
                    None => true,
                    Some(prefixes) => prefixes.matches_prefix_ignore_case(path),
                }
        }
    }
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

    /// Billing is configured, or not, as given; billing requests are those under
    /// `/api/v1/billing`.
    pub fn new(configured: bool) -> Self {
        Self {
            config: Config {
                configured,
                prefixes: None,
            },
            shadow: false,
        }
        .prefix(DEFAULT_BILLING_PREFIX)
    }

    /// Guards `prefix` (and everything below it, as the client sent it) instead of
    /// `/api/v1/billing`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefixes = Routes::default();
        prefixes.add_prefix(prefix);
        self.config.prefixes = Some(Arc::new(prefixes));
        self
    }

    /// Guards every request this layer sees, whatever its path: for a layer placed on the
    /// billing routes themselves.
    #[must_use]
    pub fn every_request(mut self) -> Self {
        self.config.prefixes = None;
        self
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Whether billing is configured.
    pub fn is_configured(&self) -> bool {
        self.config.configured
    }

    /// What the layer checks (for a stack, which keeps its own shadow mode).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl Config {
    /// The policy, reported, enforced unless `shadow`.
    pub(crate) fn policy(&self, shadow: bool) -> Reported<Config> {
        Reported::new(self.clone(), "billing", shadow)
    }
}

impl<B> Policy<B> for Config {
    type Pass = ();
    type Later = Never;

    #[inline(always)]
    fn decide(&self, req: &mut Request<B>) -> Decision<(), Never> {
        if self.configured {
            return Decision::Pass(());
        }
        if self.refuses(client_path(req)) {
            Decision::refuse(not_configured())
        } else {
            Decision::Pass(())
        }
    }

    fn resume(&self, never: std::convert::Infallible, _: &mut Request<B>) -> Decision<(), Never> {
        match never {}
    }
}

#[cold]
fn not_configured() -> Rejection {
    Rejection::new(
        NatError::StripeNotConfigured,
        "billing route while Stripe is not configured",
    )
}

/// Answers 503 `STRIPE_NOT_CONFIGURED` on billing routes when billing is not configured. See
/// the [module docs](self).
pub type BillingConfigured<S> = PolicyService<S, Reported<Config>>;

impl<S> Layer<S> for BillingConfiguredLayer {
    type Service = BillingConfigured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService::new(inner, Arc::new(self.config.policy(self.shadow)))
    }
}
