//! Internal errors: [`InternalErrorGuard`] turns an inner service's error or panic into the
//! 500 `INTERNAL_ERROR` envelope.
//!
//! Nothing of the error or the panic reaches the client: the error's text is reported through
//! `tracing` (target `tower_nat`, level `error`, sampled), and the panic payload too when it
//! is a string. (Rust's panic hook still prints panics to stderr unless the server replaces it.)
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
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    body::{NatBody, wrap},
    error::NatError,
    guard::Refused,
    metrics::{Outcome, Requests},
    report,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies [`InternalErrorGuard`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct InternalErrorGuardLayer {
    // Counts requests into `nat_requests_total` (the outermost guard of `NatLayer`).
    count: bool,
}

impl InternalErrorGuardLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts every request's outcome into `nat_requests_total`, as `NatLayer` does.
    pub(crate) fn counting(mut self) -> Self {
        self.count = true;
        self
    }
}

impl<S> Layer<S> for InternalErrorGuardLayer {
    type Service = InternalErrorGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InternalErrorGuard {
            inner,
            not_ready: false,
            count: self.count.then(|| Arc::new(Requests::register())),
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
    count: Option<Arc<Requests>>,
}

impl<S> InternalErrorGuard<S> {
    crate::inner_accessors!();
}

/// The 500: in the envelope, or as gRPC `INTERNAL`.
fn internal<B>(grpc: bool) -> Response<NatBody<B>> {
    if grpc {
        NatError::Internal.to_grpc_response()
    } else {
        NatError::Internal.to_response()
    }
}

fn count(requests: &Option<Arc<Requests>>, outcome: Outcome) {
    if let Some(requests) = requests {
        requests.count(outcome);
    }
}

fn report_error(error: &(dyn std::error::Error + Send + Sync + 'static)) {
    report::failure("inner service", error);
    NatError::Internal.report(None, "inner service error");
}

fn report_panic(payload: &(dyn Any + Send)) {
    static PANICS: report::Sampler = report::Sampler::new();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    if let Some(suppressed) = PANICS.admit() {
        tracing::error!(target: "tower_nat", panic = message, suppressed, "inner service panicked");
    }
    NatError::Internal.report(None, "inner service panicked");
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
        // An inner service that cannot become ready is reported at call time: the request is
        // answered with a 500 rather than the connection failing.
        match catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => {
                self.not_ready = false;
                Poll::Ready(Ok(()))
            }
            Ok(Poll::Ready(Err(error))) => {
                report_error(&*error.into());
                self.not_ready = true;
                Poll::Ready(Ok(()))
            }
            Err(payload) => {
                report_panic(&*payload);
                self.not_ready = true;
                Poll::Ready(Ok(()))
            }
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let count = self.count.clone();
        let grpc = crate::grpc::wants_grpc(&req);
        if std::mem::take(&mut self.not_ready) {
            return ResponseFuture {
                future: None,
                count,
                grpc,
            };
        }
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture {
                future: Some(future),
                count,
                grpc,
            },
            Err(payload) => {
                report_panic(&*payload);
                ResponseFuture {
                    future: None,
                    count,
                    grpc,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`InternalErrorGuard`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        count: Option<Arc<Requests>>,
        // The request wants gRPC answers.
        grpc: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<NatBody<B>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            count(this.count, Outcome::Error);
            return Poll::Ready(Ok(internal(*this.grpc)));
        };
        let result = match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => {
                if let Some(requests) = this.count {
                    let outcome = match response.extensions().get::<Refused>() {
                        None => Outcome::Allowed,
                        Some(Refused("INTERNAL_ERROR")) => Outcome::Error,
                        Some(_) => Outcome::Rejected,
                    };
                    requests.count(outcome);
                }
                return Poll::Ready(Ok(wrap(response)));
            }
            Ok(Poll::Ready(Err(error))) => {
                report_error(&*error.into());
                internal(*this.grpc)
            }
            Err(payload) => {
                report_panic(&*payload);
                internal(*this.grpc)
            }
        };
        // A future that panicked must not be polled again.
        this.future.set(None);
        count(this.count, Outcome::Error);
        Poll::Ready(Ok(result))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
