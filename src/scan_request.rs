//! Scan-request validation: [`ValidateScanRequest`] reads the JSON body of each scan-creation
//! request (`POST /api/v1/scan` by default) within a size limit and answers 400
//! `INVALID_REQUEST` when it is not a usable scan request. Valid requests reach the handler
//! with their body byte for byte, and with their [`ScanKind`] in the extensions for
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
//!
//! The request body type must be buildable from [`Bytes`] (`axum::body::Body`,
//! `http_body_util::Full<Bytes>`, ...), since the handler gets the bytes that were read.
//! Other requests pass through untouched and unread.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::{Buf, Bytes};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::scan_request::{ScanKind, ValidateScanRequestLayer};
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

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::{Method, Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    body::{NatBody, wrap},
    error::NatError,
    tenant::Feature,
};

/// The kind of scan a request asks for (the body's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// A functional scan (`"functional"`).
    Functional,
    /// A security scan (`"security"`): needs [`Feature::SecurityScanning`].
    Security,
    /// Both (`"full"`): needs [`Feature::SecurityScanning`] and is charged one of each.
    Full,
}

impl ScanKind {
    /// The `mode` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanKind::Functional => "functional",
            ScanKind::Security => "security",
            ScanKind::Full => "full",
        }
    }

    /// The mode named `s`, if any.
    pub fn from_mode(s: &str) -> Option<Self> {
        match s {
            "functional" => Some(ScanKind::Functional),
            "security" => Some(ScanKind::Security),
            "full" => Some(ScanKind::Full),
            _ => None,
        }
    }

    /// The plan feature this kind needs, if any.
    pub fn required_feature(self) -> Option<Feature> {
        match self {
            ScanKind::Functional => None,
            ScanKind::Security | ScanKind::Full => Some(Feature::SecurityScanning),
        }
    }

    /// Functional scans this kind is charged.
    pub fn functional_cost(self) -> u64 {
        u64::from(matches!(self, ScanKind::Functional | ScanKind::Full))
    }

    /// Security scans this kind is charged.
    pub fn security_cost(self) -> u64 {
        u64::from(matches!(self, ScanKind::Security | ScanKind::Full))
    }
}

pin_project! {
    /// A request body that is either the server's own streaming body `B` or bytes that were
    /// read already. It is buildable from [`Bytes`], so servers whose body type is not (hyper's
    /// `Incoming`) can map their requests into it before [`ValidateScanRequest`]:
    /// `req.map(RequestBody::new)`.
    pub struct RequestBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Streaming { #[pin] body: B },
        Buffered { bytes: Option<Bytes> },
    }
}

impl<B> RequestBody<B> {
    /// Wraps a streaming body.
    pub fn new(body: B) -> Self {
        Self {
            kind: BodyKind::Streaming { body },
        }
    }
}

impl<B> From<Bytes> for RequestBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Buffered { bytes: Some(bytes) },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Streaming { body } => body.poll_frame(cx),
            BodyKindProj::Buffered { bytes } => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(http_body::Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Streaming { body } => body.is_end_stream(),
            BodyKind::Buffered { bytes } => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Streaming { body } => body.size_hint(),
            BodyKind::Buffered { bytes } => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
            BodyKind::Buffered { bytes } => f
                .debug_tuple("RequestBody::Buffered")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

/// The default body size limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug)]
struct Config {
    routes: Vec<(Method, String)>,
    limit: usize,
    default_kind: ScanKind,
}

/// Applies [`ValidateScanRequest`] to a service.
#[derive(Clone, Debug)]
pub struct ValidateScanRequestLayer {
    config: Arc<Config>,
}

impl Default for ValidateScanRequestLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidateScanRequestLayer {
    /// Validates `POST /api/v1/scan` with a 1 MiB limit; a missing `mode` means functional.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                routes: vec![(Method::POST, "/api/v1/scan".to_owned())],
                limit: DEFAULT_BODY_LIMIT,
                default_kind: ScanKind::Functional,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure the layer before cloning it")
    }

    /// Treats exactly `method path` as scan creation instead of `POST /api/v1/scan` (call it
    /// again to add more).
    #[must_use]
    pub fn route(mut self, method: Method, path: impl Into<String>) -> Self {
        let path = path.into();
        let config = self.config_mut();
        if config.routes.len() == 1 && config.routes[0] == (Method::POST, "/api/v1/scan".into()) {
            config.routes.clear();
        }
        config.routes.push((method, path));
        self
    }

    /// Refuses bodies over `bytes` bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config_mut().limit = bytes;
        self
    }

    /// The kind of scan when the body has no `mode`.
    #[must_use]
    pub fn default_kind(mut self, kind: ScanKind) -> Self {
        self.config_mut().default_kind = kind;
        self
    }
}

impl<S> Layer<S> for ValidateScanRequestLayer {
    type Service = ValidateScanRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateScanRequest {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Validates scan-creation requests; answers 400 `INVALID_REQUEST`. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct ValidateScanRequest<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> ValidateScanRequest<S> {
    crate::inner_accessors!();
}

/// Why a scan body was refused.
#[derive(Debug, PartialEq, Eq)]
enum Invalid {
    ContentType,
    TooLarge(usize),
    Unreadable,
    Empty,
    Malformed,
    NotObject,
    Duplicate(String),
    MissingUrl,
    BadUrl,
    BadMode,
}

impl Invalid {
    fn into_error(self) -> NatError {
        NatError::invalid_request(match self {
            Invalid::ContentType => "Content-Type must be application/json.".to_owned(),
            Invalid::TooLarge(limit) => {
                format!("Request body too large: the limit is {limit} bytes.")
            }
            Invalid::Unreadable => "The request body could not be read.".to_owned(),
            Invalid::Empty => "Request body is empty; expected a JSON object.".to_owned(),
            Invalid::Malformed => "Malformed JSON in request body.".to_owned(),
            Invalid::NotObject => "Request body must be a JSON object.".to_owned(),
            Invalid::Duplicate(name) => format!(
                "Duplicate field in request body: {}.",
                // Echo at most a short, printable name.
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            ),
            Invalid::MissingUrl => "Missing required field: url.".to_owned(),
            Invalid::BadUrl => "Invalid field: url must be a non-empty string.".to_owned(),
            Invalid::BadMode => {
                r#"Invalid field: mode must be one of "functional", "security", "full"."#.to_owned()
            }
        })
    }

    fn reason(&self) -> &'static str {
        match self {
            Invalid::ContentType => "content type",
            Invalid::TooLarge(_) => "body too large",
            Invalid::Unreadable => "body unreadable",
            Invalid::Empty => "empty body",
            Invalid::Malformed => "malformed JSON",
            Invalid::NotObject => "not an object",
            Invalid::Duplicate(_) => "duplicate field",
            Invalid::MissingUrl => "missing url",
            Invalid::BadUrl => "invalid url",
            Invalid::BadMode => "invalid mode",
        }
    }
}

/// The top-level members of a scan body, checked in one pass.
#[derive(Default)]
struct Fields {
    url: Option<Result<(), Invalid>>,
    mode: Option<Result<ScanKind, Invalid>>,
    duplicate: Option<String>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone().into_owned()) && fields.duplicate.is_none() {
                fields.duplicate = Some(key.clone().into_owned());
            }
            match &*key {
                "url" => {
                    let value = map.next_value::<serde_json::Value>()?;
                    fields.url = Some(match value.as_str() {
                        Some(s) if !s.is_empty() => Ok(()),
                        _ => Err(Invalid::BadUrl),
                    });
                }
                "mode" => {
                    let value = map.next_value::<serde_json::Value>()?;
                    fields.mode = Some(
                        value
                            .as_str()
                            .and_then(ScanKind::from_mode)
                            .ok_or(Invalid::BadMode),
                    );
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Checks a scan-creation body as [`ValidateScanRequest`] does (without the size limit and
/// the content type) and returns its kind, or the 400 it would answer. Never panics, for any
/// bytes.
///
/// ```
/// use tower_nat::scan_request::{ScanKind, validate_scan_body};
///
/// assert_eq!(validate_scan_body(br#"{"url":"https://e.example"}"#, ScanKind::Functional), Ok(ScanKind::Functional));
/// let error = validate_scan_body(b"[]", ScanKind::Functional).unwrap_err();
/// assert_eq!(error.message(), "Request body must be a JSON object.");
/// ```
pub fn validate_scan_body(body: &[u8], default_kind: ScanKind) -> Result<ScanKind, NatError> {
    validate(body, default_kind).map_err(Invalid::into_error)
}

/// Checks a scan-creation body and returns its kind.
fn validate(body: &[u8], default_kind: ScanKind) -> Result<ScanKind, Invalid> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Invalid::Empty);
    }
    // serde_json skips ignored members without checking their UTF-8: check it all first, so
    // a body this layer accepts is one any JSON parser accepts (found by fuzzing).
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Invalid::Malformed);
    };
    let fields: Fields = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => return Err(Invalid::NotObject),
        Err(_) => return Err(Invalid::Malformed),
    };
    if let Some(name) = fields.duplicate {
        return Err(Invalid::Duplicate(name));
    }
    match fields.url {
        None => return Err(Invalid::MissingUrl),
        Some(Err(e)) => return Err(e),
        Some(Ok(())) => {}
    }
    fields.mode.unwrap_or(Ok(default_kind))
}

fn content_type_ok(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && {
            let (head, tail) = essence.split_at(essence.len() - 5);
            tail.eq_ignore_ascii_case("+json") && head.starts_with("application/")
        })
}

fn declared_too_large(headers: &http::HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ValidateScanRequest<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ReqB: Body + From<Bytes>,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let is_scan = self
            .config
            .routes
            .iter()
            .any(|(m, p)| req.method() == m && req.uri().path() == p);
        if !is_scan {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let refuse = if !content_type_ok(req.headers()) {
            Some(Invalid::ContentType)
        } else if declared_too_large(req.headers(), self.config.limit) {
            Some(Invalid::TooLarge(self.config.limit))
        } else {
            None
        };
        if let Some(invalid) = refuse {
            return ResponseFuture::reject(invalid);
        }
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Read {
                body,
                buf: Vec::new(),
                pending: Some(Box::new((inner, parts))),
                config: self.config.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`ValidateScanRequest`].
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
        ReqB: Body,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
        ReqB: Body,
    {
        Read {
            #[pin]
            body: ReqB,
            buf: Vec<u8>,
            pending: Option<Box<(S, http::request::Parts)>>,
            config: Arc<Config>,
        },
        Inner { #[pin] future: S::Future },
        Reject { invalid: Option<Invalid> },
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
    ReqB: Body,
{
    fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    fn reject(invalid: Invalid) -> Self {
        Self {
            state: State::Reject {
                invalid: Some(invalid),
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: Body + From<Bytes>,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Read {
                    mut body,
                    buf,
                    pending,
                    config,
                } => {
                    let read = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            None => break Ok(()),
                            Some(Err(_)) => break Err(Invalid::Unreadable),
                            Some(Ok(frame)) => {
                                let Ok(mut data) = frame.into_data() else {
                                    continue; // trailers
                                };
                                if buf.len() + data.remaining() > config.limit {
                                    break Err(Invalid::TooLarge(config.limit));
                                }
                                while data.has_remaining() {
                                    let chunk = data.chunk();
                                    buf.extend_from_slice(chunk);
                                    let n = chunk.len();
                                    data.advance(n);
                                }
                            }
                        }
                    };
                    let (mut inner, parts) = *pending.take().expect("polled after completion");
                    let checked = read.and_then(|()| {
                        let bytes = Bytes::from(mem::take(buf));
                        validate(&bytes, config.default_kind).map(|kind| (kind, bytes))
                    });
                    match checked {
                        Ok((kind, bytes)) => {
                            let mut req = Request::from_parts(parts, ReqB::from(bytes));
                            req.extensions_mut().insert(kind);
                            State::Inner {
                                future: inner.call(req),
                            }
                        }
                        Err(invalid) => State::Reject {
                            invalid: Some(invalid),
                        },
                    }
                }
                StateProj::Inner { future } => return future.poll(cx).map(|r| r.map(wrap)),
                StateProj::Reject { invalid } => {
                    let invalid = invalid.take().expect("polled after completion");
                    let reason = invalid.reason();
                    let error = invalid.into_error();
                    error.report(None, reason);
                    return Poll::Ready(Ok(error.to_response()));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, ReqB> fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
    ReqB: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Read { .. } => "Read",
            State::Inner { .. } => "Inner",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let f = ScanKind::Functional;
        let cases: &[(&[u8], Result<ScanKind, Invalid>)] = &[
            (br#"{"url":"https://a.example"}"#, Ok(ScanKind::Functional)),
            (
                br#"{"url":"https://a.example","mode":"security"}"#,
                Ok(ScanKind::Security),
            ),
            (
                br#" {"mode":"full","url":"u","extra":[1,{"x":null}]} "#,
                Ok(ScanKind::Full),
            ),
            (b"", Err(Invalid::Empty)),
            (b"  \n", Err(Invalid::Empty)),
            (b"{", Err(Invalid::Malformed)),
            (b"[]", Err(Invalid::NotObject)),
            (br#""x""#, Err(Invalid::NotObject)),
            (b"null", Err(Invalid::NotObject)),
            (br#"{"url":1}"#, Err(Invalid::BadUrl)),
            (br#"{"url":""}"#, Err(Invalid::BadUrl)),
            (br#"{"mode":"security"}"#, Err(Invalid::MissingUrl)),
            (br#"{"url":"u","mode":"deep"}"#, Err(Invalid::BadMode)),
            (br#"{"url":"u","mode":null}"#, Err(Invalid::BadMode)),
            (
                br#"{"url":"u","url":"v"}"#,
                Err(Invalid::Duplicate("url".into())),
            ),
            (b"{\"url\":\"\xff\"}", Err(Invalid::Malformed)),
            (
                b"{\"url\":\"u\",\"mode\":\"fu\xecl\"}",
                Err(Invalid::Malformed),
            ),
            (b"{\"url\":\"u\",\"x\":\"\xec\"}", Err(Invalid::Malformed)),
            (br#"{"url":"u"} x"#, Err(Invalid::Malformed)),
        ];
        for (body, expected) in cases {
            assert_eq!(
                &validate(body, f),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Deep nesting in an ignored member is skipped without recursion; in `url` or `mode`
        // it hits serde_json's recursion limit. Neither can overflow the stack.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ignored = format!("{{\"url\":\"u\",\"x\":{}}}", deep(500_000));
        assert_eq!(validate(ignored.as_bytes(), f), Ok(ScanKind::Functional));
        let in_url = format!("{{\"url\":{}}}", deep(500_000));
        assert_eq!(validate(in_url.as_bytes(), f), Err(Invalid::Malformed));
        let unclosed = format!("{{\"url\":\"u\",\"x\":{}}}", "[".repeat(500_000));
        assert_eq!(validate(unclosed.as_bytes(), f), Err(Invalid::Malformed));
    }

    #[test]
    fn content_types() {
        let ok = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            content_type_ok(&h)
        };
        assert!(content_type_ok(&http::HeaderMap::new()));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/vnd.nat+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("+json"));
    }
}
