//! API-key authentication: [`ApiKeyAuth`] answers 401 `UNAUTHORIZED` unless the request's one
//! `X-API-Key` header holds a live key, and puts the key's [`Tenant`](crate::tenant::Tenant)
//! into the request's extensions for the layers behind it.
//!
//! A request is refused, always with the same bytes (no oracle), when the header is missing,
//! empty or repeated; when its value does not have the [`KeyFormat`] (by default `nat_pk_`
//! followed by 32 `[A-Za-z0-9]` characters; whitespace, other bytes, truncated or oversized
//! keys and wrong checksums are refused before any hashing or lookup); when the key is unknown, revoked or expired; or when its
//! tenant was deleted. `Authorization: Bearer` is never read. Stores keep SHA-256 hashes of
//! keys ([`KeyHash`]), never the keys, and nothing in this crate logs a key.
//!
//! A failing store (for example a database that is down) gives 500 `INTERNAL_ERROR`.
//!
//! **Keys in a database.** Implement [`KeyStore`] over it (one lookup by hash), or use
//! `PgKeyStore` (`postgres` feature), and put a [`CachedKeyStore`] in front: one query per key
//! per TTL, changes made through the store applied at once.
//!
//! **Failed authentication** is throttled per client address (20 a minute by default, then
//! 429 `RATE_LIMITED` before any lookup, except for keys the store knows to be live without a
//! query); see [`ApiKeyAuthLayer::failed_auth_limit`]. The address comes from
//! [`ClientAddr`] or axum's `ConnectInfo<SocketAddr>`.
//!
//! Exempt routes ([`ApiKeyAuthLayer::exempt`]) are matched against the path the client sent,
//! also when a framework stripped a prefix before this layer (axum's `nest`: with the `axum`
//! feature the layer reads axum's `OriginalUri`). Write them as the client sees them, as axum
//! routes: `/api/v1/billing/webhook`, not `/billing/webhook`; `/api/v1/public/{id}`.
//!
//! **Authentication of your own.** A request that reaches this layer with a
//! [`Tenant`](crate::tenant::Tenant) (or [`AuthExempt`](crate::tenant::AuthExempt)) already in
//! its extensions was authenticated by a layer of the server's own outside this one: it passes
//! without a key, and the layers behind (rate limit, quota, feature gate) serve that tenant.
//! So a server can put its own session or token auth in front of
//! [`NatLayer`](crate::NatLayer) for some routes. Clients cannot put anything in the
//! extensions; only server code can.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{auth::{ApiKeyAuthLayer, MemoryKeyStore}, plan::Plan, tenant::Tenant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryKeyStore::new();
//! store.insert_tenant("acme", Plan::PRO).unwrap();
//! let key = store.issue_key("acme", None).unwrap().key;
//!
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyAuthLayer::new(store).exempt("/healthz"))
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         let tenant = Tenant::of(&req).map(|t| t.id().to_string());
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(tenant.unwrap_or_default()))))
//!     });
//!
//! let req = Request::get("/api/v1/usage")
//!     .header("x-api-key", key.expose())
//!     .body(Full::default())
//!     .unwrap();
//! let response = service.clone().oneshot(req).await.unwrap();
//! assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "acme");
//!
//! let req = Request::get("/api/v1/usage")
//!     .header("authorization", format!("Bearer {}", key.expose()))
//!     .body(Full::default())
//!     .unwrap();
//! let response = service.oneshot(req).await.unwrap();
//! assert_eq!(response.status(), 401);
//! assert_eq!(
//!     response.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#
//! );
//! # }
//! ```

mod admin;
mod cache;
mod key;
pub(crate) mod layer;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
mod store;
mod tag;
pub(crate) mod throttle;

pub use admin::{AdminError, KeyAdmin, Page, TenantInfo, valid_tenant_id};
pub use cache::CachedKeyStore;
pub use key::{ApiKey, CHECKSUM_LEN, GENERATED_KEY_LEN, KEY_PREFIX, KeyFormat, KeyHash};
pub use layer::{ApiKeyAuth, ApiKeyAuthLayer};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PgKeyStore;
pub use store::{IssuedKey, KeyChanges, KeyInfo, KeyRecord, KeyStore, MemoryKeyStore};
pub use tag::PresentedKey;
pub use throttle::{ClientAddr, IpNet, IpNetError};
