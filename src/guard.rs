//! The one skeleton of the layers that decide before calling the inner service, maybe
//! asynchronously ([`ApiKeyAuth`](crate::auth::ApiKeyAuth),
//! [`PlanRateLimit`](crate::rate_limit::PlanRateLimit),
//! [`ValidateScanRequest`](crate::scan_request::ValidateScanRequest),
//! [`QuotaGuard`](crate::quota::QuotaGuard)): a [`Policy`] decides, then the request goes to
//! the inner service or is answered with the envelope, and what the decision carries
//! ([`Finish`]) is applied to the response.
//!
//! A decision known at once (an in-memory store) is made inside `call`, without cloning the
//! inner service; one that comes later keeps the instance that was polled ready and puts a
//! clone in its place (the "be careful when cloning inner services" rule of tower).

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{body::NatBody, error::NatError};

/// A refusal: the envelope, plus headers a layer adds to it (the rate limiter's draft
/// headers; rare, so boxed).
#[derive(Debug)]
pub struct Rejection {
    pub(crate) error: NatError,
    pub(crate) headers: Option<Box<HeaderMap>>,
}

impl Rejection {
    pub(crate) fn into_response<B>(self) -> Response<NatBody<B>> {
        let mut response = self.error.to_response();
        if let Some(headers) = self.headers {
            response.headers_mut().extend(*headers);
        }
        response
    }
}

impl From<NatError> for Rejection {
    fn from(error: NatError) -> Self {
        Self {
            error,
            headers: None,
        }
    }
}

/// What a policy decided. A refused request is handed back, so the skeleton decides what
/// becomes of it.
#[derive(Debug)]
pub enum Verdict<ReqB, P> {
    /// Call the inner service with this request; `P` is applied to the response.
    Pass(Request<ReqB>, P),
    /// Answer with the envelope.
    Reject(Request<ReqB>, Rejection),
}

impl<ReqB, P> Verdict<ReqB, P> {
    /// Passes `req` with `P`, or refuses it.
    pub(crate) fn of(req: Request<ReqB>, decided: Result<P, Rejection>) -> Self {
        match decided {
            Ok(pass) => Verdict::Pass(req, pass),
            Err(rejection) => Verdict::Reject(req, rejection),
        }
    }
}

/// A verdict now, or a future of one. (The verdict is large, a request; boxing it would cost
/// the common path an allocation.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Decision<ReqB, P, L> {
    Now(Verdict<ReqB, P>),
    Later(L),
}

/// How a layer decides about a request.
pub trait Policy<ReqB> {
    /// What a passed request carries to its response.
    type Pass: Finish;
    /// A decision that comes later (a remote store, a body to read).
    type Later: Future<Output = Verdict<ReqB, Self::Pass>>;

    /// Decides about `req`, now or later.
    fn decide(&self, req: Request<ReqB>) -> Decision<ReqB, Self::Pass, Self::Later>;
}

/// What a passed request's decision does to its response.
pub trait Finish {
    /// Work that must finish before the response is answered (the quota's settlement).
    type Settle: Future<Output = ()>;

    /// Applies the decision to the inner service's response. A future returned here is
    /// awaited before the response is answered. (When the inner service fails instead, the
    /// decision is dropped.)
    fn finish<B>(self, response: &mut Response<B>) -> Option<Self::Settle>;
}

impl Finish for () {
    type Settle = std::future::Ready<()>;

    fn finish<B>(self, _: &mut Response<B>) -> Option<Self::Settle> {
        None
    }
}

/// Calls `inner` as `policy` decides about `req`.
pub(crate) fn call<S, P, ReqB, ResB>(
    inner: &mut S,
    policy: &P,
    req: Request<ReqB>,
) -> ResponseFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Policy<ReqB>,
{
    let state = match policy.decide(req) {
        Decision::Now(Verdict::Pass(req, pass)) => State::Inner {
            future: inner.call(req),
            pass: Some(pass),
        },
        Decision::Now(Verdict::Reject(_, rejection)) => State::Reject {
            rejection: Some(rejection),
        },
        Decision::Later(later) => {
            // Keep the instance that was polled ready for the call after the decision.
            let clone = inner.clone();
            let ready = mem::replace(inner, clone);
            State::Later {
                later: Box::pin(Waiting {
                    later,
                    inner: Some(ready),
                }),
            }
        }
    };
    ResponseFuture { state }
}

pin_project! {
    /// A decision under way and the inner service it will call. Boxed: only decisions that
    /// answer later pay for it, and the future of those that answer at once stays small.
    struct Waiting<S, L> {
        #[pin]
        later: L,
        inner: Option<S>,
    }
}

pin_project! {
    /// The response future of the layers that decide before calling the inner service.
    pub struct ResponseFuture<S, P, ReqB>
    where
        S: Service<Request<ReqB>>,
        P: Policy<ReqB>,
    {
        #[pin]
        state: State<S, P, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, P, ReqB>
    where
        S: Service<Request<ReqB>>,
        P: Policy<ReqB>,
    {
        Later { later: Pin<Box<Waiting<S, P::Later>>> },
        Inner { #[pin] future: S::Future, pass: Option<P::Pass> },
        Settle {
            #[pin]
            settle: <P::Pass as Finish>::Settle,
            response: Option<S::Response>,
        },
        Reject { rejection: Option<Rejection> },
    }
}

impl<S, P, ReqB, ResB> Future for ResponseFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    P: Policy<ReqB>,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Later { later } => {
                    let waiting = later.as_mut().project();
                    let verdict = ready!(waiting.later.poll(cx));
                    let mut inner = waiting.inner.take().expect("polled after completion");
                    match verdict {
                        Verdict::Pass(req, pass) => State::Inner {
                            future: inner.call(req),
                            pass: Some(pass),
                        },
                        Verdict::Reject(_, rejection) => State::Reject {
                            rejection: Some(rejection),
                        },
                    }
                }
                StateProj::Inner { future, pass } => {
                    let mut response = ready!(future.poll(cx))?;
                    let settle = pass.take().and_then(|pass| pass.finish(&mut response));
                    match settle {
                        None => return Poll::Ready(Ok(response.map(NatBody::new))),
                        Some(settle) => State::Settle {
                            settle,
                            response: Some(response),
                        },
                    }
                }
                StateProj::Settle { settle, response } => {
                    ready!(settle.poll(cx));
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(NatBody::new)));
                }
                StateProj::Reject { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(Ok(rejection.into_response()));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, P, ReqB> fmt::Debug for ResponseFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>>,
    P: Policy<ReqB>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Later { .. } => "Later",
            State::Inner { .. } => "Inner",
            State::Settle { .. } => "Settle",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// `Service` for a layer's service struct with fields `inner: S` and `policy: $policy`,
/// through [`call`]. (The services differ in their names, docs and configuration; the
/// request path is this one.)
macro_rules! guarded_service {
    (impl<$($g:ident),*> for $svc:ty, policy = $policy:ty $(, where $($bound:tt)*)?) => {
        impl<S, ReqB, ResB, $($g),*> tower_service::Service<http::Request<ReqB>> for $svc
        where
            S: tower_service::Service<http::Request<ReqB>, Response = http::Response<ResB>>
                + Clone,
            $policy: crate::guard::Policy<ReqB>,
            $($($bound)*)?
        {
            type Response = http::Response<crate::body::NatBody<ResB>>;
            type Error = S::Error;
            type Future = crate::guard::ResponseFuture<S, $policy, ReqB>;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
                crate::guard::call(&mut self.inner, &self.policy, req)
            }
        }
    };
}
pub(crate) use guarded_service;
