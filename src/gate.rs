//! The one skeleton of the layers that decide synchronously from the request alone
//! ([`BillingConfigured`](crate::billing::BillingConfigured),
//! [`FeatureGate`](crate::feature_gate::FeatureGate)): a [`Gate`] checks, then the request
//! goes to the inner service untouched or is answered with the envelope. The inner service
//! is never cloned.

use http::{Request, Response};
use tower_service::Service;

use crate::{future::ResponseFuture, guard::Rejection};

/// A synchronous check of a request.
pub(crate) trait Gate {
    /// The layer's name in metrics (`layer` label).
    const LAYER: &'static str;

    /// `Err` refuses the request with that envelope (boxed: passing is the common case, and
    /// a pointer is cheaper to return than an error).
    fn check<B>(&self, req: &Request<B>) -> Result<(), Rejection>;

    /// Whether the gate runs in shadow mode (reports, never refuses).
    fn shadow(&self) -> bool;
}

/// Calls `inner` if `gate` lets `req` through.
#[inline(always)]
pub(crate) fn call<S, G, ReqB, ResB>(
    inner: &mut S,
    gate: &G,
    req: Request<ReqB>,
) -> ResponseFuture<S::Future, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    G: Gate,
{
    match gate.check(&req) {
        Ok(()) => ResponseFuture::inner(inner.call(req)),
        Err(rejection) => {
            let shadow = gate.shadow();
            crate::metrics::rejected(G::LAYER, &rejection, &req, shadow);
            if shadow {
                tracing::debug!(
                    target: "tower_nat",
                    layer = G::LAYER,
                    code = rejection.error().code(),
                    "would reject (shadow mode): passed"
                );
                ResponseFuture::inner(inner.call(req))
            } else {
                let grpc = crate::grpc::wants_grpc(&req);
                ResponseFuture::response(rejection.into_response(grpc))
            }
        }
    }
}

/// `Service` for a gate's service struct with fields `inner: S` and `gate: $gate` (a
/// [`Gate`]).
macro_rules! gated_service {
    (impl<$($g:ident),*> for $svc:ty, gate = $gate:ty) => {
        impl<S, ReqB, ResB, $($g),*> tower_service::Service<http::Request<ReqB>> for $svc
        where
            S: tower_service::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
        {
            type Response = http::Response<crate::body::NatBody<ResB>>;
            type Error = S::Error;
            type Future = crate::future::ResponseFuture<S::Future, ResB>;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                self.inner.poll_ready(cx)
            }

            #[inline(always)]
            fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
                crate::gate::call(&mut self.inner, &self.gate, req)
            }
        }
    };
}
pub(crate) use gated_service;
