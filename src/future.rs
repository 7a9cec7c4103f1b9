//! The response futures of the crate's layers: [`ResponseFuture`] for the layers that decide
//! synchronously from the request alone, [`GuardFuture`] for those whose decision may come
//! later (a store, a body to read).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{NatBody, wrap};

pub use crate::guard::ResponseFuture as GuardFuture;

pin_project! {
    /// The response future of [`BillingConfigured`](crate::billing::BillingConfigured) and
    /// [`FeatureGate`](crate::feature_gate::FeatureGate): the inner service's future, or a
    /// ready rejection.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Reject { response: Option<Response<NatBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// Runs the inner service's future.
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// Answers with a ready response.
    pub(crate) fn response(response: Response<NatBody<B>>) -> Self {
        Self {
            kind: Kind::Reject {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<NatBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map(|r| r.map(wrap)),
            KindProj::Reject { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
