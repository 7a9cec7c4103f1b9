//! One envelope for every error: [`ErrorEnvelope`] gives every 4xx and 5xx response whose body
//! is not already JSON the NAT envelope for its status. The framework's own answers (axum's
//! unrouted 404 with an empty body, its 405, the `Json`, `Path` and `Query` extractors'
//! text/plain rejections, a missing extension's 500) then look like every other error of the
//! API. [`NatLayer`](crate::NatLayer) puts it outermost, on by default.
//!
//! | the inner service answers | the client gets |
//! |---|---|
//! | 2xx, 3xx, or any JSON body (`application/json`, `application/*+json`) | it, untouched |
//! | 404 | 404 `NOT_FOUND`, `The requested resource was not found.` |
//! | 401 | 401 `UNAUTHORIZED`, the same bytes as a refused key |
//! | 400, 411, 413, 415, 422 | 400 `INVALID_REQUEST`; the message is the framework's explanation |
//! | 405 | 405 `INVALID_REQUEST`, `Method not allowed.` naming the `Allow` methods |
//! | any other 4xx | the same status, `INVALID_REQUEST` with the framework's explanation |
//! | any 5xx | 500 `INTERNAL_ERROR`, nothing of the original body (reported at `ERROR`) |
//!
//! The framework's explanation is its body's first 1 KiB, its printable characters only, at
//! most 200 of them (a generic sentence for the status when that leaves nothing). Headers
//! survive (`Allow`, `Retry-After`, `X-RateLimit-*`, CORS), except the body's own:
//! `Content-Type` becomes `application/json`, `Content-Length` is the envelope's, and
//! `Content-Encoding` and `Transfer-Encoding` go.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::envelope::ErrorEnvelopeLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ErrorEnvelopeLayer::new())
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         // What a framework's JSON extractor answers to a body that is not JSON.
//!         let mut response = Response::new(Full::new(Bytes::from(
//!             "Failed to parse the request body as JSON: expected value at line 1 column 1",
//!         )));
//!         *response.status_mut() = StatusCode::BAD_REQUEST;
//!         response.headers_mut().insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
//!         Ok::<_, Infallible>(response)
//!     });
//!
//! let response = service.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(response.status(), 400);
//! assert_eq!(response.headers()["content-type"], "application/json");
//! assert_eq!(
//!     response.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"INVALID_REQUEST","message":"Failed to parse the request body as JSON: expected value at line 1 column 1"}"#
//! );
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header, response::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{body::NatBody, error::NatError, headers::number, report};

/// How much of a framework's error body is read for its explanation.
const READ_LIMIT: usize = 1024;

/// How many characters of it the message keeps.
const MESSAGE_LIMIT: usize = 200;

/// Applies [`ErrorEnvelope`] to a service.
#[derive(Clone, Copy, Debug)]
pub struct ErrorEnvelopeLayer {
    enabled: bool,
}

impl Default for ErrorEnvelopeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorEnvelopeLayer {
    /// The layer.
    pub fn new() -> Self {
        Self { enabled: true }
    }

    /// Switched off, every response passes untouched (how
    /// [`NatLayer::error_envelope`](crate::NatLayer::error_envelope) turns it off).
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

impl<S> Layer<S> for ErrorEnvelopeLayer {
    type Service = ErrorEnvelope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorEnvelope {
            inner,
            enabled: self.enabled,
        }
    }
}

/// Answers every 4xx and 5xx response that is not already JSON with the NAT envelope for its
/// status. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ErrorEnvelope<S> {
    inner: S,
    enabled: bool,
}

impl<S> ErrorEnvelope<S> {
    crate::inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorEnvelope<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // gRPC needs no exception here: refusals and gRPC servers' own statuses are HTTP 200,
        // which pass; a gRPC client maps any other HTTP status by itself.
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(req),
                enabled: self.enabled,
            },
        }
    }
}

/// What becomes of a response.
enum Action {
    Pass,
    Replace(NatError),
    /// Read the body for the framework's explanation, then answer with this status.
    Explain(StatusCode),
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn classify(status: StatusCode, headers: &HeaderMap) -> Action {
    if !(status.is_client_error() || status.is_server_error()) || is_json(headers) {
        return Action::Pass;
    }
    match status {
        StatusCode::NOT_FOUND => Action::Replace(NatError::not_found()),
        StatusCode::UNAUTHORIZED => Action::Replace(NatError::Unauthorized),
        StatusCode::METHOD_NOT_ALLOWED => Action::Replace(NatError::rejected(
            status,
            method_not_allowed(headers.get(header::ALLOW)),
        )),
        s if s.is_server_error() => Action::Replace(NatError::Internal),
        s => Action::Explain(match s.as_u16() {
            400 | 411 | 413 | 415 | 422 => StatusCode::BAD_REQUEST,
            _ => s,
        }),
    }
}

fn method_not_allowed(allow: Option<&HeaderValue>) -> String {
    let allowed = allow
        .and_then(|v| v.to_str().ok())
        .map(|v| printable(v, MESSAGE_LIMIT))
        .filter(|v| !v.is_empty());
    match allowed {
        Some(methods) => format!("Method not allowed. Allowed: {methods}."),
        None => "Method not allowed.".to_owned(),
    }
}

/// The printable characters of `text`, at most `limit` of them, trimmed.
fn printable(text: &str, limit: usize) -> String {
    let kept: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(limit)
        .collect();
    kept.trim().to_owned()
}

/// The message for `status` from the framework's body.
fn explanation(status: StatusCode, original: StatusCode, body: &[u8]) -> String {
    let text = printable(&String::from_utf8_lossy(body), MESSAGE_LIMIT);
    if !text.is_empty() {
        return text;
    }
    let generic = match original.as_u16() {
        400 => "The request is invalid.",
        411 => "A Content-Length header is required.",
        413 => "Request body too large.",
        415 => "Unsupported media type.",
        422 => "The request could not be processed.",
        _ => "",
    };
    if !generic.is_empty() {
        return generic.to_owned();
    }
    match status.canonical_reason() {
        Some(reason) => format!("{reason}."),
        None => "The request was refused.".to_owned(),
    }
}

/// The envelope for `error`, keeping `parts`' headers except the body's own.
fn envelope<B>(mut parts: Parts, error: &NatError) -> Response<NatBody<B>> {
    let original = parts.status;
    let bytes = error.body();
    parts.status = error.status();
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, number(bytes.len() as u64));
    if original.is_server_error() {
        report::rejection(
            error.code(),
            original.as_u16(),
            None,
            "the inner service answered 5xx",
        );
    } else {
        error.report(None, "a framework's error answer, put in the envelope");
    }
    Response::from_parts(parts, NatBody::rejection(bytes))
}

pin_project! {
    /// The response future of [`ErrorEnvelope`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F, enabled: bool },
        // Boxed: rare, and large; the future of every other response stays small.
        Explain { explaining: Pin<Box<Explaining<B>>> },
    }
}

pin_project! {
    /// A framework's error body being read for its explanation.
    #[project = ExplainingProj]
    struct Explaining<B> {
        #[pin]
        body: B,
        parts: Option<Parts>,
        status: StatusCode,
        buf: Vec<u8>,
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<NatBody<B>>, E>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Inner { future, enabled } => {
                    let response = ready!(future.poll(cx))?;
                    if !*enabled {
                        return Poll::Ready(Ok(response.map(NatBody::new)));
                    }
                    match classify(response.status(), response.headers()) {
                        Action::Pass => return Poll::Ready(Ok(response.map(NatBody::new))),
                        Action::Replace(error) => {
                            let (parts, _) = response.into_parts();
                            return Poll::Ready(Ok(envelope(parts, &error)));
                        }
                        Action::Explain(status) => {
                            let (parts, body) = response.into_parts();
                            State::Explain {
                                explaining: Box::pin(Explaining {
                                    body,
                                    parts: Some(parts),
                                    status,
                                    buf: Vec::new(),
                                }),
                            }
                        }
                    }
                }
                StateProj::Explain { explaining } => {
                    let ExplainingProj {
                        mut body,
                        parts,
                        status,
                        buf,
                    } = explaining.as_mut().project();
                    while buf.len() < READ_LIMIT {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(mut data) = frame.into_data() {
                                    while data.has_remaining() && buf.len() < READ_LIMIT {
                                        let chunk = data.chunk();
                                        let n = chunk.len().min(READ_LIMIT - buf.len());
                                        buf.extend_from_slice(&chunk[..n]);
                                        data.advance(n);
                                    }
                                }
                            }
                            // An unreadable body explains nothing; the status still does.
                            Some(Err(_)) | None => break,
                        }
                    }
                    let parts = parts.take().expect("polled after completion");
                    let message = explanation(*status, parts.status, buf);
                    let error = NatError::rejected(*status, message);
                    return Poll::Ready(Ok(envelope(parts, &error)));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "Inner",
            State::Explain { .. } => "Explain",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn json_bodies_pass() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(&headers(ct)), "{ct}");
        }
        for ct in [
            "text/plain",
            "text/json",
            "application/jsonp",
            "+json",
            "application/",
        ] {
            assert!(!is_json(&headers(ct)), "{ct}");
        }
    }

    #[test]
    fn messages_keep_printable_text_only() {
        let body = "bad\u{0}\u{1b}[31m input\n".as_bytes();
        assert_eq!(
            explanation(
                StatusCode::BAD_REQUEST,
                StatusCode::UNPROCESSABLE_ENTITY,
                body
            ),
            "bad[31m input"
        );
        let long = "x".repeat(500);
        assert_eq!(
            explanation(
                StatusCode::BAD_REQUEST,
                StatusCode::BAD_REQUEST,
                long.as_bytes()
            )
            .len(),
            200
        );
        assert_eq!(
            explanation(StatusCode::BAD_REQUEST, StatusCode::LENGTH_REQUIRED, b""),
            "A Content-Length header is required."
        );
        assert_eq!(
            explanation(StatusCode::CONFLICT, StatusCode::CONFLICT, b" \n"),
            "Conflict."
        );
    }
}
