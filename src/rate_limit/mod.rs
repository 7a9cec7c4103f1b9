//! Per-tenant plan rate limits: [`PlanRateLimit`] lets each tenant make its plan's
//! `requests_per_minute` and answers 429 `RATE_LIMITED` beyond them, with `Retry-After`,
//! `X-RateLimit-Limit` and `X-RateLimit-Remaining: 0`. Every response that passed the limiter
//! (the inner service's own errors included) carries `X-RateLimit-Limit` and
//! `X-RateLimit-Remaining`.
//!
//! # The algorithm, and what the headers promise
//!
//! The limiter is GCRA (the generic cell rate algorithm, a leaky bucket kept as one
//! timestamp per tenant). For a limit of `L` requests a minute, each request costs an
//! interval `T = 60 s / L` (rounded up to a whole nanosecond) and the bucket holds `L` of them.
//!
//! - **Burst:** from a fresh state a tenant gets exactly `L` requests at once; the next is
//!   refused.
//! - **Sustained rate:** after that, one request every `T`: over a long run the admitted rate
//!   is `L` a minute.
//! - **Any 60-second window:** at most `2L − 1` requests (a full burst, then one per `T` as the
//!   bucket drains); at most `L` in any instant.
//! - **`X-RateLimit-Remaining: k`:** the next `k` requests sent at once pass (the `k+1`-th would
//!   not).
//! - **`Retry-After: n`** (also `retry_after` in the body): the exact wait rounded up to whole
//!   seconds, at least 1; a client that waits `n` seconds and retries is admitted.
//! - **Refusals are free:** a refused request does not spend budget.
//! - **Concurrency never admits extra:** the check-and-update is one atomic operation per
//!   tenant.
//! - **Plan changes** apply to the next request and keep the count: a Free tenant that used
//!   its 30 has 90 left the moment it is on Pro. A tenant's own limit
//!   ([`LimitOverrides`](crate::plan::LimitOverrides)) counts as its plan's.
//!
//! A request with no [`Tenant`](crate::tenant::Tenant) is refused with 401 (the layer fails closed),
//! unless authentication marked it [`AuthExempt`](crate::tenant::AuthExempt).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, sync::Arc};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{
//!     clock::FakeClock,
//!     plan::{Plan, Plans},
//!     rate_limit::PlanRateLimitLayer,
//!     tenant::Tenant,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let clock = FakeClock::default();
//! let service = ServiceBuilder::new()
//!     .layer(PlanRateLimitLayer::new(Plans::default()).clock(Arc::new(clock.clone())))
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//!     });
//!
//! let request = || {
//!     let mut req = Request::new(Full::default());
//!     // Normally ApiKeyAuth puts the tenant here.
//!     req.extensions_mut().insert(Tenant::new("acme", Plan::FREE, "key_1"));
//!     req
//! };
//! for remaining in (0..30).rev() {
//!     let response = service.clone().oneshot(request()).await.unwrap();
//!     assert_eq!(response.headers()["x-ratelimit-remaining"], remaining.to_string().as_str());
//! }
//! let response = service.clone().oneshot(request()).await.unwrap();
//! assert_eq!(response.status(), 429);
//! assert_eq!(response.headers()["retry-after"], "2");
//! # }
//! ```

mod fallback;
pub(crate) mod gcra;
pub(crate) mod layer;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod store;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisRateStore;
pub use fallback::{DEFAULT_RETRY_EVERY, FallbackFuture, LocalFallback};
pub use gcra::RateDecision;
pub use layer::{PlanRateLimit, PlanRateLimitLayer, PlanResolver, RateKeyResolver, RateTarget};
#[cfg(feature = "openapi")]
pub(crate) use layer::{passed_headers, refused_headers};
pub use store::{MemoryRateStore, RateStore};
