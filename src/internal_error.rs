//! Internal errors: [`InternalErrorGuard`] turns an inner service's error or panic into the
//! 500 `INTERNAL_ERROR` envelope.
//!
//! Nothing of the error or the panic reaches the client: the error's text is reported through
//! `tracing` (target `tower_nat`, level `error`, sampled). A panic is reported without its
//! message, since panic messages may carry secrets (`expect` on a value holding a password);
//! [`InternalErrorGuardLayer::panic_messages`] logs the message too, a choice for servers
//! whose panics say nothing secret. (Rust's panic hook still prints panics to stderr, message
//! included, unless the server replaces it: see SECURITY.md.)
//! The guard's own error type is [`Infallible`], so it also adapts fallible services to
//! frameworks such as axum that need infallible ones.
//!
//! Put it outermost, so a panic anywhere in the stack is caught.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_nat::internal_error::InternalErrorGuardLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(InternalErrorGuardLayer::new())
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Err::<Response<Full<Bytes>>, _>(std::io::Error::other("db password is hunter2"))
//!     });
//!
//! let response = service.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(response.status(), 500);
//! assert_eq!(
//!     response.into_body().collect().await.unwrap().to_bytes(),
//!     r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#
//! );
//! # }
//! ```

use std::{
    any::Any,
    convert::Infallible,
    fmt,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{engine::NatBody, error::NatError, report};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies [`InternalErrorGuard`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct InternalErrorGuardLayer {
    // Logs panic messages.
    panic_messages: bool,
}

impl InternalErrorGuardLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a panic's message (when it is a string) is part of its `ERROR` event (off by
    /// default: a panic message may carry a secret, and logs are read by more people than
    /// the secret's owner). The client never sees it either way.
    #[must_use]
    pub fn panic_messages(mut self, log: bool) -> Self {
        self.panic_messages = log;
        self
    }
}

impl<S> Layer<S> for InternalErrorGuardLayer {
    type Service = InternalErrorGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InternalErrorGuard {
            inner,
            not_ready: false,
            panic_messages: self.panic_messages,
        }
    }
}

/// Answers 500 `INTERNAL_ERROR` when the inner service fails or panics. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct InternalErrorGuard<S> {
    inner: S,
    // The inner service failed to become ready: the next call answers 500 without it.
    not_ready: bool,
    panic_messages: bool,
}

impl<S> InternalErrorGuard<S> {
    crate::inner_accessors!();
}

/// The 500: in the envelope, or as gRPC `INTERNAL`.
pub(crate) fn internal<B>(grpc: bool) -> Response<NatBody<B>> {
    if grpc {
        NatError::Internal.to_grpc_response()
    } else {
        NatError::Internal.to_response()
    }
}

/// An inner service's error: reported, never sent.
pub(crate) fn report_error(error: &(dyn std::error::Error + Send + Sync + 'static)) {
    report::failure("inner service", error);
    report::rejection(
        "INTERNAL_ERROR",
        500,
        None,
        "internal_error",
        "inner service error",
    );
}

/// An inner service's panic: reported (its message only if `with_message`), never sent.
pub(crate) fn report_panic(payload: &(dyn Any + Send), with_message: bool) {
    static PANICS: report::Sampler = report::Sampler::new();
    log_panic(&PANICS, payload, with_message);
    report::rejection(
        "INTERNAL_ERROR",
        500,
        None,
        "internal_error",
        "inner service panicked",
    );
}

/// The `ERROR` event of a panic, sampled by `sampler`: with its message only if asked.
fn log_panic(sampler: &report::Sampler, payload: &(dyn Any + Send), with_message: bool) {
    if let Some(suppressed) = sampler.admit() {
        if with_message {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string panic payload)");
            tracing::error!(target: "tower_nat", panic = message, suppressed, "inner service panicked");
        } else {
            tracing::error!(target: "tower_nat", suppressed, "inner service panicked");
        }
    }
}

/// Puts the inner service's future from `call` in `future`, or leaves `None` (answer 500)
/// when the inner service was not ready (`not_ready`, which is reset) or `call` panicked
/// (reported).
#[inline(always)]
pub(crate) fn call_caught<F>(
    future: &mut Option<F>,
    not_ready: &mut bool,
    panic_messages: bool,
    call: impl FnOnce() -> F,
) {
    if std::mem::take(not_ready) {
        return;
    }
    // The future is written where it is kept rather than returned through the unwinding
    // machinery, which would copy it (and the request it holds) twice more.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| *future = Some(call()))) {
        report_panic(&*payload, panic_messages);
    }
}

/// `inner.poll_ready`, with an error or a panic turned into readiness and `not_ready` set:
/// the next call answers 500 without the inner service, rather than the connection failing.
pub(crate) fn poll_ready_guarded<S, R>(
    inner: &mut S,
    cx: &mut Context<'_>,
    not_ready: &mut bool,
    panic_messages: bool,
) -> Poll<Result<(), Infallible>>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    match catch_unwind(AssertUnwindSafe(|| inner.poll_ready(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(Ok(()))) => {
            *not_ready = false;
            Poll::Ready(Ok(()))
        }
        Ok(Poll::Ready(Err(error))) => {
            report_error(&*error.into());
            *not_ready = true;
            Poll::Ready(Ok(()))
        }
        Err(payload) => {
            report_panic(&*payload, panic_messages);
            *not_ready = true;
            Poll::Ready(Ok(()))
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for InternalErrorGuard<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<NatBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        poll_ready_guarded(
            &mut self.inner,
            cx,
            &mut self.not_ready,
            self.panic_messages,
        )
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc = crate::grpc::wants_grpc(&req);
        let panic_messages = self.panic_messages;
        let inner = &mut self.inner;
        let mut guarded = ResponseFuture {
            future: None,
            grpc,
            panic_messages,
        };
        call_caught(
            &mut guarded.future,
            &mut self.not_ready,
            panic_messages,
            || inner.call(req),
        );
        guarded
    }
}

pin_project! {
    /// The response future of [`InternalErrorGuard`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        // The request wants gRPC answers.
        grpc: bool,
        panic_messages: bool,
    }
}

/// Polls `future` (if any: none means the inner service already failed), catching its
/// panic and its error: its answer, or `None` when it failed or panicked (reported), which
/// is answered 500. (An `Option` has the answer's own layout: no copy to unwrap it.)
#[inline(always)]
pub(crate) fn poll_caught<F, T, E>(
    mut future: Pin<&mut Option<F>>,
    cx: &mut Context<'_>,
    panic_messages: bool,
) -> Poll<Option<T>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let Some(inner) = future.as_mut().as_pin_mut() else {
        return Poll::Ready(None);
    };
    // The answer is written in place rather than returned through the unwinding machinery
    // (two copies fewer of a response).
    let mut polled = Poll::Pending;
    match catch_unwind(AssertUnwindSafe(|| polled = inner.poll(cx))) {
        Ok(()) => match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(answer)) => return Poll::Ready(Some(answer)),
            Poll::Ready(Err(error)) => report_error(&*error.into()),
        },
        Err(payload) => report_panic(&*payload, panic_messages),
    }
    // A future that failed or panicked is not polled again.
    future.set(None);
    Poll::Ready(None)
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<NatBody<B>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(
            match ready!(poll_caught(this.future, cx, *this.panic_messages)) {
                Some(response) => response.map(NatBody::new),
                None => internal(*this.grpc),
            },
        ))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn panic_messages_are_logged_only_when_asked() {
        for (with_message, expected) in [(false, false), (true, true)] {
            let logs = Captured::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let payload: Box<dyn Any + Send> = Box::new(String::from("password=hunter2"));
                log_panic(&report::Sampler::new(), &*payload, with_message);
            });
            let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
            assert!(text.contains("inner service panicked"), "{text}");
            assert_eq!(text.contains("hunter2"), expected, "{text}");
        }
    }
}
