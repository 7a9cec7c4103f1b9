//! Concurrent-scan limits: [`ConcurrentScans`] lets a tenant's scan creation through only
//! while fewer than its plan's `concurrent_scans` scans run (Free 1, Pro 3, Team 10,
//! Enterprise 50), and answers 429 `RATE_LIMITED` otherwise:
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! Retry-After: 10
//!
//! {"error":"RATE_LIMITED","message":"Concurrent scan limit reached: 1 scan may run at a time on the Free plan.","retry_after":10}
//! ```
//!
//! The `X-RateLimit-*` headers keep describing the requests-per-minute limit, which such a
//! request passed (behind `PlanRateLimit`, as in [`NatLayer`](crate::NatLayer), they carry its
//! numbers).
//!
//! - **When a slot is taken.** A scan creation (a request that scan validation marked, as
//!   for the quota) takes a slot before the handler runs; the slot is kept when the handler
//!   answers 2xx and freed on any other answer, an error, a panic or a dropped request. So
//!   concurrent creations never hold more slots than the limit, and a refused creation is
//!   never charged: the layer sits before the quota.
//! - **When it is freed.** When the server says the scan finished: the handler finds a
//!   [`ScanSlot`] in the request's extensions and calls [`ScanSlot::release`] later, or keeps
//!   [`ScanSlot::id`] with its scan and calls [`ConcurrentScansLayer::release`]. A slot whose
//!   scan never reports back lapses after [`max_scan_duration`](ConcurrentScansLayer::max_scan_duration)
//!   (1 hour by default), so a crashed worker cannot hold slots forever.
//! - **Stores.** [`MemorySlotStore`] (exact under concurrency: the tenant's entry lock) and,
//!   with the `redis` feature, `RedisSlotStore` (one script per acquisition: exact across
//!   instances).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{
//!     concurrency::{ConcurrentScansLayer, ScanSlot},
//!     plan::{Plan, Plans},
//!     scan_request::ValidateScanRequestLayer,
//!     tenant::Tenant,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let slots = ConcurrentScansLayer::new(Plans::default());
//! let service = ServiceBuilder::new()
//!     .layer(ValidateScanRequestLayer::new()) // marks scan creations
//!     .layer(slots.clone())
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         // Keep the slot with the scan; release it when the scan ends.
//!         let slot: &ScanSlot = req.extensions().get().expect("a scan creation holds one");
//!         let _keep = slot.clone();
//!         let mut response = Response::new(Full::new(Bytes::from("{}")));
//!         *response.status_mut() = StatusCode::ACCEPTED;
//!         Ok::<_, Infallible>(response)
//!     });
//!
//! let free = Tenant::new("acme", Plan::FREE, "key_1");
//! let scan = || {
//!     let mut req = Request::post("/api/v1/scan")
//!         .body(Full::new(Bytes::from(r#"{"url":"https://example.com"}"#)))
//!         .unwrap();
//!     req.extensions_mut().insert(free.clone());
//!     req
//! };
//! assert_eq!(service.clone().oneshot(scan()).await.unwrap().status(), 202);
//! let refused = service.clone().oneshot(scan()).await.unwrap();
//! assert_eq!(refused.status(), 429);
//! assert_eq!(
//!     refused.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"RATE_LIMITED","message":"Concurrent scan limit reached: 1 scan may run at a time on the Free plan.","retry_after":10}"#
//! );
//! assert_eq!(slots.running(free.id()).await.unwrap(), 1);
//! # }
//! ```

pub(crate) mod layer;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod store;

pub(crate) use layer::Config;
pub use layer::{ConcurrentScans, ConcurrentScansLayer, ScanSlot};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisSlotStore;
pub use store::{Acquired, MemorySlotStore, Slot, SlotStore};
