//! # tower-nat
//!
//! [Tower](https://docs.rs/tower) middleware that gives any tower-based HTTP server (axum,
//! hyper, anything built on `tower::Service`) the NAT API's error semantics, each rejection
//! answered with the same documented JSON envelope ([`NatError`]):
//!
//! | status | `error` | answered by |
//! |---|---|---|
//! | 400 | `INVALID_REQUEST` | [`scan_request::ValidateScanRequest`]; the framework's own refusals via [`envelope::ErrorEnvelope`]; handlers via [`NatError::invalid_request`] |
//! | 401 | `UNAUTHORIZED` | [`auth::ApiKeyAuth`] |
//! | 402 | `QUOTA_EXCEEDED` | [`quota::QuotaGuard`] |
//! | 403 | `FEATURE_NOT_AVAILABLE` | [`feature_gate::FeatureGate`] |
//! | 404 | `NOT_FOUND` | handlers, via [`NatError::not_found`]; unrouted paths via [`envelope::ErrorEnvelope`] |
//! | 429 | `RATE_LIMITED` | [`rate_limit::PlanRateLimit`] |
//! | 500 | `INTERNAL_ERROR` | [`internal_error::InternalErrorGuard`]; any other 5xx via [`envelope::ErrorEnvelope`] |
//! | 503 | `STRIPE_NOT_CONFIGURED` | [`billing::BillingConfigured`] |
//!
//! Every layer is `Clone`, answers at once (it never waits in `poll_ready` to enforce
//! anything), keeps the inner body type inside [`NatBody`], and works alone in any tower
//! stack. [`NatLayer`] composes them all in the contract's order, outermost first: error
//! envelope, internal errors, billing, authentication, rate limit, scan validation, feature
//! gate, quota. Layers behind authentication read the [`Tenant`](tenant::Tenant) it puts in
//! the request's extensions and fail closed without one; any authentication of your own can
//! insert it instead.
//!
//! Every path decision (exempt routes, scan creation, the billing prefix) is made on the path
//! the client sent, also under axum's `nest` (enable the `axum` feature); routes can also be
//! given their meaning by placement ([`NatLayer::scan_creation`],
//! [`billing::BillingConfiguredLayer::every_request`]).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{NatLayer, auth::MemoryKeyStore, plan::Plan, tenant::Tenant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = MemoryKeyStore::new();
//! keys.insert_tenant("acme", Plan::FREE);
//! let key = keys.issue_key("acme", None).unwrap().key;
//!
//! let service = ServiceBuilder::new()
//!     .layer(NatLayer::new(keys).exempt("/healthz"))
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         let tenant = Tenant::of(&req).map(|t| t.id().to_string()).unwrap_or_default();
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(tenant))))
//!     });
//!
//! let ok = Request::get("/api/v1/usage").header("x-api-key", key.expose());
//! let response = service.clone().oneshot(ok.body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(response.headers()["x-ratelimit-remaining"], "29");
//! assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "acme");
//!
//! // A Free tenant asking for a security scan: 403, from the feature gate.
//! let scan = Request::post("/api/v1/scan")
//!     .header("x-api-key", key.expose())
//!     .body(Full::from(r#"{"url":"https://example.com","mode":"security"}"#));
//! let response = service.clone().oneshot(scan.unwrap()).await.unwrap();
//! assert_eq!(response.status(), 403);
//!
//! // Billing is not configured unless you say so: 503.
//! let billing = Request::post("/api/v1/billing/checkout").header("x-api-key", key.expose());
//! let response = service.oneshot(billing.body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), 503);
//! # }
//! ```
//!
//! # Features
//!
//! - `axum`: axum's `IntoResponse` for [`NatError`], the [`Tenant`](tenant::Tenant) extractor,
//!   and path decisions that read axum's `OriginalUri` (needed under `Router::nest`).
//! - `redis`: Redis-backed rate-limit and quota stores, shared by every instance.
//! - `postgres`: `auth::PgKeyStore`, tenants and API keys in PostgreSQL (put
//!   [`auth::CachedKeyStore`] in front of it).
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner` for a middleware service whose inner service is the
/// field `inner` of type `S`.
macro_rules! inner_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the layer, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_accessors;

pub mod auth;
pub mod billing;
mod body;
mod chain;
pub mod clock;
pub mod concurrency;
pub mod envelope;
mod error;
pub mod feature_gate;
pub mod future;
mod gate;
pub mod grpc;
mod guard;
pub mod headers;
pub mod internal_error;
pub mod metrics;
mod path;
pub mod plan;
pub mod quota;
pub mod rate_limit;
mod report;
pub mod scan_request;
mod stack;
pub mod store;
pub mod tenant;

pub use body::NatBody;
pub use error::{NatError, StoreError};
pub use stack::{NatGuard, NatLayer, NatPolicy, NatService, ScanCreation, ScanCreationLayer};

/// The README's examples, compiled and run as doc tests (they use every feature).
#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
