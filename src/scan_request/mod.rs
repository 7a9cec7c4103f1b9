//! Scan-request validation: [`ValidateScanRequest`] reads the JSON body of each scan-creation
//! request (`POST /api/v1/scan` by default) within a size limit and answers 400
//! `INVALID_REQUEST` when it is not a usable scan request. Valid requests reach the handler
//! with their body byte for byte, and with their [`ScanKind`](crate::plan::ScanKind) in the
//! extensions for
//! [`FeatureGate`](crate::feature_gate::FeatureGate) and
//! [`QuotaGuard`](crate::quota::QuotaGuard).
//!
//! | body | message |
//! |---|---|
//! | `Content-Type` present and not JSON | `Content-Type must be application/json.` |
//! | over the limit (1 MiB by default), by `Content-Length` or as read | `Request body too large: the limit is 1048576 bytes.` |
//! | empty | `Request body is empty; expected a JSON object.` |
//! | not JSON (including invalid UTF-8 and nesting over 128 levels) | `Malformed JSON in request body.` |
//! | JSON but not an object | `Request body must be a JSON object.` |
//! | a member named twice | `Duplicate field in request body: NAME.` |
//! | no `url` | `Missing required field: url.` |
//! | `url` not a non-empty string | `Invalid field: url must be a non-empty string.` |
//! | `mode` not one of the three | `Invalid field: mode must be one of "functional", "security", "full".` |
//! | a gRPC call whose kind the server does not give ([below](#grpc)) | `The scan's mode could not be determined.` |
//! | a gRPC call whose body is not one uncompressed message | `Malformed gRPC message in request body.` |
//!
//! What this layer accepts, a handler's `serde_json` accepts too: every member is parsed as
//! `serde_json::Value` would parse it (its nesting limit of 128 levels, numbers within
//! `f64`'s range, string escapes), so a body that passes is never a 500 from the handler's
//! parser.
//!
//! The request body type must be buildable from [`Bytes`](bytes::Bytes) (`axum::body::Body`,
//! `http_body_util::Full<Bytes>`, [`RequestBody`] around hyper's `Incoming`), since the
//! handler gets the bytes that were read. Other requests pass through untouched and unread.
//!
//! # Which requests are scan creations
//!
//! Two placements, one meaning:
//!
//! - **By path** (the default, and how [`NatLayer`](crate::NatLayer) runs it): a layer around
//!   the whole app treats `POST /api/v1/scan` as scan creation
//!   ([`ValidateScanRequestLayer::route`] names others). The path is the one the client sent,
//!   also under axum's `nest` (with the `axum` feature, axum's `OriginalUri`), so nesting the
//!   app under `/api/v1` changes nothing.
//! - **By placement**: [`ValidateScanRequestLayer::every_request`] treats every request the
//!   layer sees as a scan creation, with no path matched at all; put it on the scan route
//!   only (`post(create_scan).route_layer(...)`, or [`NatLayer::scan_creation`] for
//!   validation, feature gate and quota together).
//!
//! A request validated once is marked; a second validation on its way passes it untouched,
//! so both placements can be combined without reading a body twice.
//!
//! [`NatLayer::scan_creation`]: crate::NatLayer::scan_creation
//!
//! # gRPC
//!
//! A scan creation whose `content-type` is gRPC's ([`is_grpc_media`](crate::grpc::is_grpc_media))
//! is not read as JSON; its body is read within the limit all the same and handed on as it
//! came. Its kind comes from the server, never from a default: the reader of a gRPC method
//! named with [`ValidateScanRequestLayer::grpc_route`] (or, for a layer placed on the
//! method's route, [`ValidateScanRequestLayer::grpc_kind`]) reads it from the call's
//! protobuf message, or a layer of the server's own puts a
//! [`ScanKind`](crate::plan::ScanKind) into the request's extensions before this one. With
//! neither, the call is refused with 400 (`INVALID_ARGUMENT`). So a gRPC `content-type` on a
//! REST scan route is refused, never waved through as the cheapest kind. A REST scan's kind
//! is always its body's `mode`. A gRPC method is a scan creation whatever its HTTP method,
//! and a request to it that is not gRPC is refused (`Content-Type must be
//! application/grpc.`).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::{Buf, Bytes};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{plan::ScanKind, scan_request::ValidateScanRequestLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ValidateScanRequestLayer::new())
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         let kind = *req.extensions().get::<ScanKind>().unwrap();
//!         let body = req.into_body().collect().await.unwrap().to_bytes();
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{kind:?} {}", body.len())))))
//!     });
//!
//! let ok = Request::post("/api/v1/scan").body(Full::from(r#"{"url":"https://example.com","mode":"full"}"#));
//! let response = service.clone().oneshot(ok.unwrap()).await.unwrap();
//! assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "Full 43");
//!
//! let bad = Request::post("/api/v1/scan").body(Full::from(r#"{"mode":"full"}"#));
//! let response = service.oneshot(bad.unwrap()).await.unwrap();
//! assert_eq!(response.status(), 400);
//! assert_eq!(
//!     response.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"INVALID_REQUEST","message":"Missing required field: url."}"#
//! );
//! # }
//! ```

mod body;
pub(crate) mod layer;
mod validate;

pub use body::RequestBody;
pub use layer::{
    DEFAULT_BODY_LIMIT, DEFAULT_SCAN_PATH, ValidateScanRequest, ValidateScanRequestLayer,
};
pub use validate::validate_scan_body;
