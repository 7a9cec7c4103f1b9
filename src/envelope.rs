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
//! A gRPC call ([`is_grpc_media`](crate::grpc::is_grpc_media), or a forced
//! [`ErrorFormat`](crate::grpc::ErrorFormat)) gets a trailers-only gRPC status instead of
//! JSON for every error answer that is not gRPC already: an unrouted path or a wrong method
//! is `UNIMPLEMENTED` (12); a handler's JSON envelope keeps its code (in `x-nat-error`) and
//! message, with the status of its HTTP status ([`crate::grpc`]'s table); any other 4xx is
//! `INVALID_ARGUMENT` with the framework's explanation; any 5xx `INTERNAL`. gRPC answers
//! (HTTP 200 with a `grpc-status`) pass untouched.
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

use crate::{engine::NatBody, error::NatError, headers::number, report};

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
        // A gRPC call's errors are answered as gRPC statuses (its client reads no JSON).
        let grpc = self.enabled && crate::grpc::wants_grpc(&req);
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(req),
                enabled: self.enabled,
                grpc,
            },
        }
    }
}

/// What becomes of a response.
enum Action {
    Pass,
    Replace(NatError),
    /// Read the body for the framework's explanation (or, for a gRPC call, a handler's JSON
    /// envelope), then answer with this status.
    Explain(StatusCode),
    /// A gRPC call to a method the server does not have: `UNIMPLEMENTED`.
    Unimplemented(StatusCode),
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

fn classify(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Action {
    if !(status.is_client_error() || status.is_server_error()) {
        return Action::Pass;
    }
    if grpc {
        if crate::grpc::is_grpc_answer(headers) {
            return Action::Pass;
        }
        if status.is_server_error() {
            return Action::Replace(NatError::Internal);
        }
        if is_json(headers) {
            return Action::Explain(status);
        }
        if matches!(status.as_u16(), 404 | 405) {
            return Action::Unimplemented(status);
        }
    } else if is_json(headers) {
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

/// Removes the headers of the body `parts` described.
fn strip_body_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
}

/// Reports a response put in the envelope (`error`: as that error).
fn report_replaced(original: StatusCode, error_code: &str, error: Option<&NatError>) {
    let (code, status, reason) = match error {
        _ if original.is_server_error() => (
            error_code,
            original.as_u16(),
            "the inner service answered 5xx",
        ),
        Some(error) => (
            error.code(),
            error.status().as_u16(),
            "a framework's error answer, put in the envelope",
        ),
        None => (
            error_code,
            original.as_u16(),
            "a gRPC call's error answer, put in a gRPC status",
        ),
    };
    report::rejection(code, status, None, "envelope", reason);
}

/// The envelope for `error`, keeping `parts`' headers except the body's own.
fn envelope<B>(mut parts: Parts, error: &NatError) -> Response<NatBody<B>> {
    let original = parts.status;
    let bytes = error.body();
    parts.status = error.status();
    let headers = &mut parts.headers;
    strip_body_headers(headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, number(bytes.len() as u64));
    report_replaced(original, error.code(), Some(error));
    Response::from_parts(parts, NatBody::rejection(bytes))
}

/// A trailers-only gRPC status (HTTP 200, no body) in place of an error answer to a gRPC
/// call, keeping `parts`' headers except the body's own.
fn grpc_status<B>(
    mut parts: Parts,
    code: u16,
    message: &str,
    nat: HeaderValue,
) -> Response<NatBody<B>> {
    let original = parts.status;
    report_replaced(original, nat.to_str().unwrap_or("INVALID_REQUEST"), None);
    parts.status = StatusCode::OK;
    strip_body_headers(&mut parts.headers);
    crate::grpc::write_status(&mut parts.headers, code, message, nat);
    Response::from_parts(parts, NatBody::rejection(bytes::Bytes::new()))
}

/// `error` as a gRPC status.
fn grpc_error<B>(parts: Parts, error: &NatError) -> Response<NatBody<B>> {
    let nat = HeaderValue::from_static(error.code());
    grpc_status(
        parts,
        crate::grpc::status_code(error),
        &error.message(),
        nat,
    )
}

/// A handler's JSON error envelope (`{"error": CODE, "message": ...}`), read from its first
/// bytes: its code (upper-case letters and `_`, at most 64) and printable message.
fn read_envelope(body: &[u8]) -> Option<(HeaderValue, String)> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: String,
        message: String,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let code_ok = (1..=64).contains(&envelope.error.len())
        && envelope
            .error
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_');
    if !code_ok {
        return None;
    }
    let code = HeaderValue::from_str(&envelope.error).ok()?;
    Some((code, printable(&envelope.message, MESSAGE_LIMIT)))
}

/// What the envelope makes of a response: the answer, or a body to read first.
pub(crate) enum Enveloped<Bd, X> {
    /// The answer.
    Done(Response<NatBody<X>>),
    /// A framework's error body to read for its explanation (boxed: rare, and large).
    Explain(Pin<Box<Explaining<Bd>>>),
}

/// Whether the envelope passes `response` as it is (most answers): neither an error nor
/// possibly a gRPC server's answer to scrub, for a call that is not gRPC.
#[inline]
pub(crate) fn passes_as_is<B>(response: &Response<B>, grpc: bool) -> bool {
    let status = response.status();
    !(grpc
        || status.is_client_error()
        || status.is_server_error()
        || crate::grpc::may_be_grpc_answer(response.headers()))
}

/// Puts `response` in the envelope, or in a gRPC status for a gRPC call (`grpc`); `wrap`
/// makes the body of a response that passes as it is.
#[inline]
pub(crate) fn envelope_response<Bd, X>(
    response: Response<Bd>,
    grpc: bool,
    wrap: impl FnOnce(Bd) -> NatBody<X>,
) -> Enveloped<Bd, X> {
    let answer = |response: Response<Bd>, error: &NatError| {
        let (parts, _) = response.into_parts();
        if grpc {
            grpc_error(parts, error)
        } else {
            envelope(parts, error)
        }
    };
    match classify(response.status(), response.headers(), grpc) {
        // Scrubbed whatever the request said it was: a gRPC server answers a call with any
        // content type, and its decoder's words must not reach the client either way.
        Action::Pass if grpc || crate::grpc::may_be_grpc_answer(response.headers()) => {
            Enveloped::Done(scrub_grpc(response.map(wrap)))
        }
        Action::Pass => Enveloped::Done(response.map(wrap)),
        Action::Replace(error) => Enveloped::Done(answer(response, &error)),
        Action::Unimplemented(status) => {
            let (parts, _) = response.into_parts();
            let (message, nat) = if status == StatusCode::NOT_FOUND {
                ("Method not found.", "NOT_FOUND")
            } else {
                ("Method not allowed.", "INVALID_REQUEST")
            };
            let nat = HeaderValue::from_static(nat);
            let code = crate::grpc::UNIMPLEMENTED;
            Enveloped::Done(grpc_status(parts, code, message, nat))
        }
        Action::Explain(status) => {
            let (parts, body) = response.into_parts();
            Enveloped::Explain(Box::pin(Explaining {
                body,
                parts: Some(parts),
                status,
                grpc,
                buf: Vec::new(),
            }))
        }
    }
}

/// A gRPC answer to a gRPC call, with the message of an `INTERNAL` or `UNKNOWN` status
/// rewritten to the generic one: in its headers, or in its trailers when they carry the
/// status.
fn scrub_grpc<X>(mut response: Response<NatBody<X>>) -> Response<NatBody<X>> {
    let headers = response.headers_mut();
    if headers.contains_key(crate::grpc::GRPC_STATUS) {
        crate::grpc::scrub(headers);
        return response;
    }
    match headers.get(header::CONTENT_TYPE) {
        Some(media) if crate::grpc::is_grpc_media(media) => response.map(NatBody::scrubbed),
        _ => response,
    }
}

pin_project! {
    /// A framework's error body being read for its explanation.
    pub(crate) struct Explaining<Bd> {
        #[pin]
        body: Bd,
        parts: Option<Parts>,
        status: StatusCode,
        grpc: bool,
        buf: Vec<u8>,
    }
}

impl<Bd: Body> Explaining<Bd> {
    /// Reads the body's first bytes (a failing body explains nothing: the status still
    /// does), then answers with the envelope.
    pub(crate) fn poll_explained<X>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Response<NatBody<X>>> {
        let mut this = self.project();
        while this.buf.len() < READ_LIMIT {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() && this.buf.len() < READ_LIMIT {
                            let chunk = data.chunk();
                            let n = chunk.len().min(READ_LIMIT - this.buf.len());
                            this.buf.extend_from_slice(&chunk[..n]);
                            data.advance(n);
                        }
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        let parts = this.parts.take().expect("polled after completion");
        if *this.grpc {
            if let Some((nat, message)) = read_envelope(this.buf) {
                let code = crate::grpc::code_for_status(parts.status);
                return Poll::Ready(grpc_status(parts, code, &message, nat));
            }
        }
        let message = explanation(*this.status, parts.status, this.buf);
        let error = NatError::rejected(*this.status, message);
        Poll::Ready(if *this.grpc {
            grpc_error(parts, &error)
        } else {
            envelope(parts, &error)
        })
    }
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
        Inner { #[pin] future: F, enabled: bool, grpc: bool },
        Explain { explaining: Pin<Box<Explaining<B>>> },
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
        let explaining = match self.as_mut().project().state.project() {
            StateProj::Inner {
                future,
                enabled,
                grpc,
            } => {
                let response = ready!(future.poll(cx))?;
                if !*enabled {
                    return Poll::Ready(Ok(response.map(NatBody::new)));
                }
                match envelope_response(response, *grpc, NatBody::new) {
                    Enveloped::Done(response) => return Poll::Ready(Ok(response)),
                    Enveloped::Explain(explaining) => explaining,
                }
            }
            StateProj::Explain { explaining } => {
                return explaining.as_mut().poll_explained(cx).map(Ok);
            }
        };
        self.as_mut()
            .project()
            .state
            .set(State::Explain { explaining });
        self.poll(cx)
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
