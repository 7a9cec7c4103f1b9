//! Monthly scan quotas: [`QuotaGuard`] sets a scan aside before a scan-creation request
//! reaches the handler, charges it only when the handler answers 2xx, and answers 402
//! `QUOTA_EXCEEDED` when the tenant's quota for that kind of scan has no room:
//! `{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}`.
//!
//! - **Only new scans.** A request is a scan creation when it carries a
//!   [`ScanKind`](crate::plan::ScanKind) (put there by
//!   [`ValidateScanRequest`](crate::scan_request::ValidateScanRequest), which decides which
//!   routes are scan creations: by the path the client sent, or by its placement on the scan
//!   route); polling, listing, usage and scans already running are never charged or blocked.
//!   A scan one guard reserved is never charged again by a second guard on its way.
//! - **Reserve, then commit or release.** Any status other than 2xx, an inner error, a panic
//!   or a dropped future (the client went away) releases the reservation.
//! - **No overdraft.** Reservations count against the quota while in flight, so concurrent
//!   requests can never push usage past it. A `full` scan reserves one functional and one
//!   security scan, both or neither.
//! - **Unlimited plans** are never blocked (their usage is still counted).
//! - **Periods** are calendar months in UTC by default (a [`QuotaStore`] may define its own),
//!   read from the injected [`Clock`](crate::clock::Clock); the quota resets at 00:00:00Z on
//!   the first day of the next period, the `quota_reset_date`.
//! - **Plan changes** apply at once: limits come from the tenant's current plan (and its own
//!   [`LimitOverrides`](crate::plan::LimitOverrides)) on every request, so an upgraded
//!   tenant over its old quota can scan again.
//! - A store failure answers 500 by default
//!   ([`OnStoreError::Reject`](crate::store::OnStoreError::Reject)); a request with no
//!   [`Tenant`](crate::tenant::Tenant) is refused with 401.
//!
//! [`QuotaGuardLayer::usage`] returns the [`Usage`] snapshot that `GET /api/v1/usage` answers;
//! [`QuotaGuardLayer::usage_reader`] gives handlers a cheap handle that does the same.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, sync::Arc};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{
//!     clock::{FakeClock, UtcDate},
//!     plan::{Plan, Plans},
//!     quota::QuotaGuardLayer,
//!     scan_request::ValidateScanRequestLayer,
//!     tenant::Tenant,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let plans = Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 1}}}"#).unwrap();
//! let clock = FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap());
//! let quota = QuotaGuardLayer::new(plans).clock(Arc::new(clock));
//! let service = ServiceBuilder::new()
//!     .layer(ValidateScanRequestLayer::new())
//!     .layer(quota.clone())
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         let mut response = Response::new(Full::new(Bytes::from(r#"{"scan_id":"s1"}"#)));
//!         *response.status_mut() = http::StatusCode::ACCEPTED;
//!         Ok::<_, Infallible>(response)
//!     });
//!
//! let tenant = Tenant::new("acme", Plan::FREE, "key_1");
//! let scan = || {
//!     let mut req = Request::post("/api/v1/scan")
//!         .body(Full::from(r#"{"url":"https://example.com"}"#))
//!         .unwrap();
//!     req.extensions_mut().insert(tenant.clone());
//!     req
//! };
//! assert_eq!(service.clone().oneshot(scan()).await.unwrap().status(), 202);
//! let response = service.oneshot(scan()).await.unwrap();
//! assert_eq!(response.status(), 402);
//! assert_eq!(
//!     response.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}"#
//! );
//!
//! let usage = quota.usage(&tenant).await.unwrap();
//! assert_eq!((usage.scans_used, usage.scans_limit), (1, Some(1)));
//! # }
//! ```

mod events;
pub(crate) mod layer;
#[cfg(feature = "redis")]
mod redis;
mod store;
mod usage;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{DEFAULT_RESERVATION_LIFETIME, RedisQuotaStore};
pub use events::{QuotaEvent, QuotaEvents, QuotaKind, Threshold};
pub use layer::{QuotaGuard, QuotaGuardLayer};
pub use store::{
    MemoryQuotaStore, OnceMark, Period, QuotaLimits, QuotaStore, Reservation, Reserved, UsageCounts,
};
pub(crate) use usage::{BoxFuture, CountRunning};
pub use usage::{Usage, UsageReader};
