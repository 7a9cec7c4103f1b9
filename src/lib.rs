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
//! | 429 | `RATE_LIMITED` | [`rate_limit::PlanRateLimit`]; [`concurrency::ConcurrentScans`] |
//! | 500 | `INTERNAL_ERROR` | [`internal_error::InternalErrorGuard`]; any other 5xx via [`envelope::ErrorEnvelope`] |
//! | 503 | `STRIPE_NOT_CONFIGURED` | [`billing::BillingConfigured`] |
//!
//! Every layer is `Clone`, answers at once (it never waits in `poll_ready` to enforce
//! anything), keeps the inner body type inside [`NatBody`], and works alone in any tower
//! stack. [`NatLayer`] composes them all in the contract's order, outermost first: error
//! envelope, internal errors, billing, authentication, rate limit, scan validation, feature
//! gate, concurrent scans, quota. Layers behind authentication read the [`Tenant`](tenant::Tenant) it puts in
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
//! keys.insert_tenant("acme", Plan::FREE).unwrap();
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
//! # A request's path through the stack
//!
//! For a newcomer to the code (`src/engine`, `src/stack.rs`):
//!
//! 1. [`NatService`] notes whether the request wants gRPC answers and runs the rest inside
//!    `catch_unwind` (a panic anywhere is a 500).
//! 2. The policy decides: seven policies in the contract's order (billing, authentication,
//!    rate limit, scan validation, feature gate, running scans, quota), each deciding only,
//!    each wrapped in a reporter that counts its refusals and, in shadow mode, lets them
//!    through. A policy passes (what it decided travels with the request: the rate limit's
//!    headers, the quota's reservation, the running scan's slot), refuses (the envelope,
//!    with what the policies before it decided), or waits (a remote store, a body to read:
//!    the request, the inner service and the policy wait in one box, then the policy
//!    resumes).
//! 3. Passed, the request goes to the inner service. Its response meets the decisions:
//!    headers are written, and what waits for the outcome is settled: the scan is charged
//!    and keeps its slot on success, or both are freed. A gRPC answer's success is its
//!    `grpc-status`; when that comes in the trailers, the settlement waits in the body
//!    ([`NatBody`]).
//! 4. Refused, the envelope (or a gRPC status) is the answer, and what passed before is
//!    settled as a failure.
//! 5. The outcome is counted (`nat_requests_total`), and every error response that is not
//!    JSON already is put in the envelope ([`envelope`]).
//!
//! With in-memory stores the whole path runs inside `call`: no clone of the inner service,
//! no box. Each layer used alone is the same engine with one policy ([`PolicyService`]).
//!
//! # Features
//!
//! - `axum`: axum's `IntoResponse` for [`NatError`], the [`Tenant`](tenant::Tenant) extractor,
//!   and path decisions that read axum's `OriginalUri` (needed under `Router::nest`).
//! - `redis`: Redis-backed rate-limit and quota stores, shared by every instance.
//! - `postgres`: `auth::PgKeyStore`, tenants and API keys in PostgreSQL (put
//!   [`auth::CachedKeyStore`] in front of it).
//! - `tonic`: tonic handlers read the tenant and the scan slot from a `tonic::Request`
//!   (`grpc::GrpcRequestExt`), and return a `NatError` as a `tonic::Status`.
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

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod auth;
pub mod billing;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod clock;
mod common;
pub mod concurrency;
mod engine;
pub mod envelope;
mod error;
pub mod feature_gate;
pub mod grpc;
pub mod headers;
pub mod internal_error;
pub mod metrics;
#[cfg(feature = "openapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
pub mod openapi;
mod path;
pub mod plan;
pub mod quota;
pub mod rate_limit;
mod report;
pub mod scan_request;
mod stack;
pub mod store;
pub mod tenant;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub use engine::{NatBody, PolicyFuture, PolicyService};
pub use error::{NatError, StoreError};
pub use stack::{NatFuture, NatLayer, NatService, ScanCreation, ScanCreationLayer};

/// The README's examples, compiled and run as doc tests (they use every feature).
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "redis",
    feature = "postgres",
    feature = "openapi",
    feature = "client"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
