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
//! **Which requests.** A request is gRPC when its `content-type` is `application/grpc` or
//! `application/grpc+<subtype>`, compared without regard to ASCII case ([`is_grpc_media`]):
//! `application/grpcx` is not. gRPC-Web (`application/grpc-web*`) is not gRPC here: its
//! answers carry their status in the body, which this crate does not write. Put a gRPC-Web
//! translation (tonic-web's `GrpcWebLayer`) *in front of* the stack, so the stack sees gRPC.
//! By default ([`ErrorFormat::Auto`]) every layer answers gRPC to gRPC requests and JSON to all
//! others, so one stack serves a mixed REST and gRPC server; [`ErrorFormatLayer`] in front of
//! the stack (or of any layer) forces one format. What a request says about itself changes
//! only the *form* of an answer, never whether a check applies (SPEC §11).
//!
//! **Scans over gRPC.** Name a scan-creation method with
//! [`ValidateScanRequestLayer::grpc_route`](crate::scan_request::ValidateScanRequestLayer::grpc_route)
//! (its path, `/package.Service/Method`, and a reader of its protobuf message's kind), or
//! place [`NatLayer::scan_creation`](crate::NatLayer::scan_creation) on the method's route.
//! A named method is a scan creation whatever its HTTP method (gRPC servers serve any), and
//! only gRPC may call it. Its body is read within the size limit and handed on as it came,
//! and its kind comes from the server, never from a default: the reader, or a
//! [`ScanKind`](crate::plan::ScanKind) a layer of the server's own put in the request's
//! extensions before the stack. With neither (a gRPC request to a REST scan route, say), the
//! call is refused with `INVALID_ARGUMENT`.
//!
//! **Success is `grpc-status: 0`.** gRPC servers answer errors with HTTP 200. The quota
//! charges a scan, and the concurrency limit keeps its slot, only when the call's
//! `grpc-status` is 0: in the answer's headers (a trailers-only answer, as tonic sends an
//! `Err(Status)`), or else in the trailers at the end of its body. Such an answer is
//! settled when its body ends, before its trailers reach the client: a non-zero status, an
//! end without one or a body error frees the reservation and the slot. A body dropped
//! before its end (the client reset the stream after the server answered) is settled as a
//! success: the server accepted the scan, which runs, as for a REST client that stops
//! reading.
//!
//! **The framework's own refusals.** With the error envelope on (as in
//! [`NatLayer`](crate::NatLayer)), an error answer to a gRPC call that is not gRPC becomes a
//! trailers-only status: an unrouted path or a wrong HTTP method is `UNIMPLEMENTED` (12); a
//! handler's JSON envelope keeps its code (`x-nat-error`) and message, with the status of
//! the table above; any 5xx is `INTERNAL` with nothing of its body. The message of a gRPC
//! server's own `INTERNAL` or `UNKNOWN` status (a decoder's error text, say) becomes the
//! envelope's generic one, in a trailers-only answer and in trailers.
//!
//! **tonic.** With the `tonic` feature, `GrpcRequestExt` reads the tenant and the scan slot
//! from a `tonic::Request`, and a `NatError` converts into a `tonic::Status` with its
//! metadata. The `grpc-demo` crate of the repository serves a tonic-generated service and
//! REST routes on one port behind one stack.
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
    engine::NatBody,
    error::NatError,
    headers::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
};

/// The NAT code of a refusal, as gRPC metadata.
pub const X_NAT_ERROR: HeaderName = HeaderName::from_static("x-nat-error");
/// When a quota resets (`YYYY-MM-DDT00:00:00Z`), as gRPC metadata of a quota refusal.
pub const X_NAT_QUOTA_RESET: HeaderName = HeaderName::from_static("x-nat-quota-reset");
/// `grpc-status`: a gRPC call's outcome, in a trailers-only answer's headers or in the
/// trailers at the end of its body.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status's message, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

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
    code_for_status(error.status())
}

/// The gRPC status code for an HTTP status, as the module docs' table says.
pub(crate) fn code_for_status(status: StatusCode) -> u16 {
    match status {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYMENT_REQUIRED => 8,
        StatusCode::FORBIDDEN => 7,
        StatusCode::NOT_FOUND => 5,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        s if s.is_client_error() => 3,
        _ => 13,
    }
}

/// `UNIMPLEMENTED`: the framework's answer to an unknown method (an unrouted path, a wrong
/// HTTP method).
pub(crate) const UNIMPLEMENTED: u16 = 12;

/// Whether a response is a gRPC answer: its `content-type` is gRPC's, or it carries a
/// `grpc-status`.
pub(crate) fn is_grpc_answer(headers: &HeaderMap) -> bool {
    headers.contains_key(GRPC_STATUS)
        || headers.get(header::CONTENT_TYPE).is_some_and(is_grpc_media)
}

/// Whether a passing answer may be a gRPC server's, to scrub: gRPC servers answer with
/// gRPC's media type (trailers-only answers included), so an answer that declares another
/// one is not theirs; one that declares none is if it carries a `grpc-status`. Cheaper than
/// [`is_grpc_answer`] on the common answer (JSON): one lookup of a standard header.
#[inline]
pub(crate) fn may_be_grpc_answer(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        Some(media) => is_grpc_media(media),
        None => headers.contains_key(GRPC_STATUS),
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

/// Whether `req` is a gRPC call: its `content-type` is gRPC's ([`is_grpc_media`]).
#[inline]
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(is_grpc_media)
}

/// Whether a `content-type` is gRPC's: `application/grpc` or `application/grpc+<subtype>`
/// (`+proto`, `+json`, ...), compared without regard to ASCII case, parameters aside.
/// `application/grpcx` and gRPC-Web's `application/grpc-web` are not.
pub fn is_grpc_media(value: &HeaderValue) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let bytes = value.as_bytes();
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let Some((head, rest)) = bytes[start..].split_at_checked(GRPC.len()) else {
        return false;
    };
    // Most media types part from gRPC's in the subtype: compare its four letters first
    // (`application/json` is refused there, on every response).
    if !head[12..].eq_ignore_ascii_case(b"grpc") || !head.eq_ignore_ascii_case(GRPC) {
        return false;
    }
    // Parameters aside, and the space before them.
    let rest = match rest.iter().position(|&b| b == b';') {
        Some(end) => &rest[..end],
        None => rest,
    }
    .trim_ascii_end();
    match rest {
        [] => true,
        [b'+', subtype @ ..] => !subtype.is_empty() && subtype.iter().all(|&b| is_token(b)),
        _ => false,
    }
}

/// A `tchar` of RFC 9110 (what a media type's subtype is made of).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
    let nat = HeaderValue::from_static(error.code());
    write_status(headers, status_code(error), &error.message(), nat);
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

/// Rewrites the message of an `UNKNOWN` (2) or `INTERNAL` (13) status in `headers` (a
/// trailers-only answer's, or trailers) to the envelope's generic one, with the NAT code: an
/// inner error's text (a decoder's, a panic's) must not reach the client.
pub(crate) fn scrub(headers: &mut HeaderMap) {
    let internal = headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status == "13" || status == "2");
    if internal {
        let error = NatError::Internal;
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&error.message())) {
            headers.insert(GRPC_MESSAGE, message);
        }
        headers.remove("grpc-status-details-bin");
        headers.insert(X_NAT_ERROR, HeaderValue::from_static(error.code()));
    }
}

/// Writes a trailers-only status into `headers`: the gRPC `content-type`, `grpc-status`,
/// the percent-encoded `grpc-message` and the NAT code as `x-nat-error`.
pub(crate) fn write_status(headers: &mut HeaderMap, code: u16, message: &str, nat: HeaderValue) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, number(u64::from(code)));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    headers.insert(X_NAT_ERROR, nat);
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

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
mod tonic_ext {
    use super::{X_NAT_ERROR, X_NAT_QUOTA_RESET};
    use crate::{
        concurrency::ScanSlot,
        error::NatError,
        headers::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING},
        tenant::Tenant,
    };

    /// What the stack gives a tonic handler: the request's [`Tenant`] and its scan's
    /// [`ScanSlot`], read from a `tonic::Request` as axum handlers read them from theirs.
    ///
    /// ```
    /// use tower_nat::{grpc::GrpcRequestExt, plan::Plan, tenant::Tenant};
    ///
    /// let mut request = tonic::Request::new(());
    /// assert_eq!(request.tenant().unwrap_err().code(), tonic::Code::Unauthenticated);
    /// request.extensions_mut().insert(Tenant::new("acme", Plan::PRO, "key_1"));
    /// assert_eq!(request.tenant().unwrap().id().as_str(), "acme");
    /// assert!(request.scan_slot().is_none());
    /// ```
    pub trait GrpcRequestExt {
        /// The tenant the stack authenticated, or `UNAUTHENTICATED` (the 401's message and
        /// code) when there is none: an exempt method, or a stack that is not in front.
        #[allow(clippy::result_large_err)] // tonic's own error type
        fn tenant(&self) -> Result<&Tenant, tonic::Status>;

        /// The running-scan slot of a scan creation: keep it with the scan and release it
        /// when the scan ends. `None` for other calls, exempt callers, and scans let through
        /// in shadow mode.
        fn scan_slot(&self) -> Option<&ScanSlot>;
    }

    impl<T> GrpcRequestExt for tonic::Request<T> {
        fn tenant(&self) -> Result<&Tenant, tonic::Status> {
            self.extensions()
                .get::<Tenant>()
                .ok_or_else(|| NatError::Unauthorized.into())
        }

        fn scan_slot(&self) -> Option<&ScanSlot> {
            self.extensions().get::<ScanSlot>()
        }
    }

    /// A handler's refusal as a tonic status: the code and message of the
    /// [module docs](super)' table, the NAT code in `x-nat-error` metadata, and the
    /// envelope's other fields (`retry-after`, `x-ratelimit-*`, `x-nat-quota-reset`) where
    /// it has them.
    impl From<NatError> for tonic::Status {
        fn from(error: NatError) -> Self {
            let mut headers = http::HeaderMap::new();
            super::grpc_headers(&error, &mut headers);
            let mut metadata = tonic::metadata::MetadataMap::new();
            for name in [
                X_NAT_ERROR,
                X_NAT_QUOTA_RESET,
                http::header::RETRY_AFTER,
                X_RATELIMIT_LIMIT,
                X_RATELIMIT_REMAINING,
            ] {
                if let Some(value) = headers.get(&name) {
                    if let Ok(value) = value.to_str() {
                        if let (Ok(key), Ok(value)) = (
                            tonic::metadata::AsciiMetadataKey::from_bytes(name.as_str().as_bytes()),
                            tonic::metadata::AsciiMetadataValue::try_from(value),
                        ) {
                            metadata.insert(key, value);
                        }
                    }
                }
            }
            let code = tonic::Code::from_i32(i32::from(super::status_code(&error)));
            tonic::Status::with_metadata(code, error.message(), metadata)
        }
    }
}

#[cfg(feature = "tonic")]
pub use tonic_ext::GrpcRequestExt;

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

#[cfg(test)]
mod media_tests {
    use http::HeaderValue;

    /// The rule as first written: the essence (parameters aside, trimmed), then the prefix.
    fn reference(value: &HeaderValue) -> bool {
        const GRPC: &[u8] = b"application/grpc";
        let bytes = value.as_bytes();
        let essence = match bytes.iter().position(|&b| b == b';') {
            Some(end) => &bytes[..end],
            None => bytes,
        }
        .trim_ascii();
        let Some((head, rest)) = essence.split_at_checked(GRPC.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(GRPC) {
            return false;
        }
        match rest {
            [] => true,
            [b'+', subtype @ ..] => {
                !subtype.is_empty() && subtype.iter().all(|&b| super::is_token(b))
            }
            _ => false,
        }
    }

    #[test]
    fn passing_answers_are_taken_for_grpc_by_their_media_type() {
        let answer = |media: Option<&'static str>, status: bool| {
            let mut h = http::HeaderMap::new();
            if let Some(media) = media {
                h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(media));
            }
            if status {
                h.insert(super::GRPC_STATUS, HeaderValue::from_static("13"));
            }
            super::may_be_grpc_answer(&h)
        };
        assert!(answer(Some("application/grpc"), true));
        assert!(answer(Some("application/grpc+proto"), false));
        assert!(answer(None, true));
        assert!(!answer(None, false));
        assert!(!answer(Some("application/json"), false));
        // A gRPC server never declares another media type.
        assert!(!answer(Some("application/json"), true));
    }

    #[test]
    fn the_fast_rule_answers_as_the_reference_does() {
        let leads = ["", " ", "\t ", ";"];
        let bases = [
            "application/grpc",
            "APPLICATION/GRPC",
            "Application/gRPC",
            "application/json",
            "application/grp",
            "application/grpcx",
            "application/gr;c",
            "application/grpc-web",
            "text/grpc",
            "",
        ];
        let suffixes = [
            "", "+proto", "+", " +proto", "+pr oto", "+json+x", "-web", "+a;b",
        ];
        let tails = ["", " ", " ;charset=x", ";x", "; ", "\t"];
        let mut checked = 0;
        for lead in leads {
            for base in bases {
                for suffix in suffixes {
                    for tail in tails {
                        let text = format!("{lead}{base}{suffix}{tail}");
                        let Ok(value) = HeaderValue::from_str(&text) else {
                            continue;
                        };
                        assert_eq!(super::is_grpc_media(&value), reference(&value), "{text:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_500, "{checked}");
    }
}
