//! gRPC answers: in front of a gRPC service (tonic, or any gRPC server on tower), a refusal
//! is answered as a gRPC status, not a JSON body a gRPC client never reads.
//!
//! A refusal to a gRPC request is a trailers-only response: HTTP 200,
//! `content-type: application/grpc`, `grpc-status` and a percent-encoded `grpc-message` (the
//! envelope's message), no body. The NAT code travels in `x-nat-error`; `Retry-After` and
//! `X-RateLimit-*` come as metadata where the envelope has them, and a quota's reset date as
//! `x-nat-quota-reset`.
//!
//! | HTTP | gRPC status |
//! |---|---|
//! | 401 | 16 `UNAUTHENTICATED` |
//! | 429, 402 | 8 `RESOURCE_EXHAUSTED` |
//! | 403 | 7 `PERMISSION_DENIED` |
//! | 400 (and other 4xx) | 3 `INVALID_ARGUMENT` |
//! | 404 | 5 `NOT_FOUND` |
//! | 500 | 13 `INTERNAL` |
//! | 503 | 14 `UNAVAILABLE` |
//!
//! **Which requests.** By default ([`ErrorFormat::Auto`]) every layer answers gRPC to
//! requests whose `content-type` starts with `application/grpc` and JSON to all others, so
//! one stack serves a mixed REST and gRPC server. [`ErrorFormatLayer`] in front of the stack
//! (or of any layer) forces one format.
//!
//! **Scans over gRPC.** The stack never reads a gRPC body. Mark scan-creation methods by
//! placement ([`NatLayer::scan_creation`](crate::NatLayer::scan_creation) on the method's
//! route); the scan's kind is the one a layer of yours put into the request's extensions (a
//! [`ScanKind`](crate::plan::ScanKind), from the method or a header), or the validation's
//! default kind (functional).
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::{NatLayer, auth::MemoryKeyStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(NatLayer::new(MemoryKeyStore::new()))
//!     .service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//!     });
//! let req = Request::post("/nat.v1.Scans/Create")
//!     .header("content-type", "application/grpc")
//!     .body(Full::default())
//!     .unwrap();
//! let response = service.oneshot(req).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["grpc-status"], "16");
//! assert_eq!(response.headers()["grpc-message"], "Missing or invalid API key.");
//! assert_eq!(response.headers()["x-nat-error"], "UNAUTHORIZED");
//! # }
//! ```

use std::{
    fmt,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    body::NatBody,
    error::NatError,
    headers::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
};

/// The NAT code of a refusal, as gRPC metadata.
pub const X_NAT_ERROR: HeaderName = HeaderName::from_static("x-nat-error");
/// When a quota resets (`YYYY-MM-DDT00:00:00Z`), as gRPC metadata of a quota refusal.
pub const X_NAT_QUOTA_RESET: HeaderName = HeaderName::from_static("x-nat-quota-reset");

/// How refusals are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorFormat {
    /// gRPC to requests whose `content-type` starts with `application/grpc`, the JSON
    /// envelope to all others (the default of every layer).
    #[default]
    Auto,
    /// Always the JSON envelope.
    Json,
    /// Always gRPC statuses.
    Grpc,
}

/// The gRPC status code for a NAT error.
pub fn status_code(error: &NatError) -> u16 {
    match error.status() {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYMENT_REQUIRED => 8,
        StatusCode::FORBIDDEN => 7,
        StatusCode::NOT_FOUND => 5,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        s if s.is_client_error() => 3,
        _ => 13,
    }
}

/// Whether a refusal of `req` is answered in gRPC.
#[inline]
pub(crate) fn wants_grpc<B>(req: &Request<B>) -> bool {
    match req.extensions().get::<ErrorFormat>() {
        Some(ErrorFormat::Json) => false,
        Some(ErrorFormat::Grpc) => true,
        _ => is_grpc(req),
    }
}

/// Whether `req` is a gRPC call (its body is protobuf, never read by the stack).
#[inline]
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol says: bytes outside
/// printable ASCII, and `%`, become `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl NatError {
    /// The refusal as a gRPC trailers-only response (see the [module docs](crate::grpc)).
    pub fn into_grpc_response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        grpc_headers(&self, response.headers_mut());
        response
    }

    pub(crate) fn to_grpc_response<B>(&self) -> Response<NatBody<B>> {
        let mut response = Response::new(NatBody::rejection(bytes::Bytes::new()));
        grpc_headers(self, response.headers_mut());
        response
    }
}

fn grpc_headers(error: &NatError, headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", number(u64::from(status_code(error))));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&error.message())) {
        headers.insert("grpc-message", message);
    }
    headers.insert(X_NAT_ERROR, HeaderValue::from_static(error.code()));
    match error {
        NatError::RateLimited { retry_after, limit } => {
            headers.insert(header::RETRY_AFTER, number(*retry_after));
            headers.insert(X_RATELIMIT_LIMIT, number(u64::from(*limit)));
            headers.insert(X_RATELIMIT_REMAINING, number(0));
        }
        NatError::ScansRunning { retry_after, .. } => {
            headers.insert(header::RETRY_AFTER, number(*retry_after));
        }
        NatError::QuotaExceeded { resets_on } => {
            if let Ok(date) = HeaderValue::from_str(&resets_on.midnight_rfc3339()) {
                headers.insert(X_NAT_QUOTA_RESET, date);
            }
        }
        _ => {}
    }
}

/// Puts an [`ErrorFormat`] into every request, for the layers behind it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorFormatLayer {
    format: ErrorFormat,
}

impl ErrorFormatLayer {
    /// Answers refusals in `format`.
    pub fn new(format: ErrorFormat) -> Self {
        Self { format }
    }
}

impl<S> Layer<S> for ErrorFormatLayer {
    type Service = ErrorFormatService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorFormatService {
            inner,
            format: self.format,
        }
    }
}

/// The service of [`ErrorFormatLayer`].
#[derive(Clone)]
pub struct ErrorFormatService<S> {
    inner: S,
    format: ErrorFormat,
}

impl<S: fmt::Debug> fmt::Debug for ErrorFormatService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorFormatService")
            .field("inner", &self.inner)
            .field("format", &self.format)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for ErrorFormatService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.format);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("100% sûr"), "100%25 s%C3%BBr");
        assert_eq!(
            percent_encode("Rate limit exceeded. Retry after 3 seconds."),
            "Rate limit exceeded. Retry after 3 seconds."
        );
    }

    #[test]
    fn every_code_maps() {
        let cases = [
            (NatError::Unauthorized, 16),
            (
                NatError::RateLimited {
                    retry_after: 1,
                    limit: 1,
                },
                8,
            ),
            (NatError::invalid_request("x"), 3),
            (NatError::not_found(), 5),
            (NatError::Internal, 13),
            (NatError::StripeNotConfigured, 14),
            (NatError::rejected(StatusCode::METHOD_NOT_ALLOWED, "x"), 3),
        ];
        for (error, code) in cases {
            assert_eq!(status_code(&error), code, "{error:?}");
        }
    }
}
