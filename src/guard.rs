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
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{body::NatBody, error::NatError};

/// A refusal: the envelope, plus headers a layer adds to it (the rate limiter's draft
/// headers). Boxed, so the decisions that pass, the common case, stay small.
#[derive(Debug)]
pub struct Rejection(Box<(NatError, HeaderMap)>);

impl Rejection {
    /// The envelope of `error`, with `headers` added.
    pub(crate) fn with_headers(error: NatError, headers: HeaderMap) -> Self {
        Self(Box::new((error, headers)))
    }

    /// The response: the JSON envelope, or a gRPC status (`grpc`).
    pub(crate) fn into_response<B>(self, grpc: bool) -> Response<NatBody<B>> {
        let (error, headers) = *self.0;
        let refused = Refused(error.code());
        let mut response = if grpc {
            error.to_grpc_response()
        } else {
            error.to_response()
        };
        if !headers.is_empty() {
            response.headers_mut().extend(headers);
        }
        response.extensions_mut().insert(refused);
        response
    }

    /// The error refused with.
    pub(crate) fn error(&self) -> &NatError {
        &self.0.0
    }
}

/// Marks a response as a layer's refusal, with its code (for `nat_requests_total`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

impl From<NatError> for Rejection {
    fn from(error: NatError) -> Self {
        Self::with_headers(error, HeaderMap::new())
    }
}

/// What a policy decided about a request, which stays where it is (moving a request costs
/// more than most decisions).
#[derive(Debug)]
pub enum Step<P, L> {
    /// Call the inner service; `P` is applied to the response.
    Pass(P),
    /// Answer with the envelope.
    Reject(Rejection),
    /// Answer with the envelope, and apply `P` to it: the decisions of the policies of a
    /// chain that passed before one refused (the rate limit's headers on a 402).
    RejectAfter(Rejection, P),
    /// The decision comes later, from this future (a remote store, a body to read).
    Later(L),
}

impl<P, L> Step<P, L> {
    /// Refuses with `error`, reported with an internal `reason` (never sent).
    #[cold]
    pub(crate) fn refused(
        tenant: Option<&crate::tenant::TenantId>,
        error: NatError,
        reason: &'static str,
    ) -> Self {
        error.report(tenant, reason);
        Step::Reject(error.into())
    }

    /// Passes with `P`, or refuses.
    pub(crate) fn of(decided: Result<P, Rejection>) -> Self {
        match decided {
            Ok(pass) => Step::Pass(pass),
            Err(rejection) => Step::Reject(rejection),
        }
    }
}

/// How a layer decides about a request.
pub trait Policy<B>: Clone {
    /// What a passed request carries to its response.
    type Pass: Finish;
    /// A decision that comes later (a remote store, a body to read).
    type Later: Future;

    /// The layer's name in metrics (`layer` label).
    const LAYER: &'static str;

    /// Whether the layer runs in shadow mode: it decides as usual, reports what it would
    /// have refused, and lets every request through untouched.
    fn shadow(&self) -> bool;

    /// The store call a `Later` answer came from, for metrics: store, operation, success.
    fn store_call(
        &self,
        answer: &<Self::Later as Future>::Output,
    ) -> Option<(&'static str, &'static str, bool)> {
        let _ = answer;
        None
    }

    /// Decides about `req`, now or later. It may change the request (put the tenant in,
    /// take the body to read it).
    fn decide(&self, req: &mut Request<B>) -> Step<Self::Pass, Self::Later>;

    /// The decision once `Later` answered (which may be another wait: a chain of policies
    /// waits for each in turn).
    fn resume(
        &self,
        answer: <Self::Later as Future>::Output,
        req: &mut Request<B>,
    ) -> Step<Self::Pass, Self::Later>;

    /// What a passing decision becomes: itself, or in shadow mode one that does nothing.
    /// (A chain shadows each of its policies by itself.)
    #[inline(always)]
    fn passed(&self, pass: Self::Pass) -> Self::Pass {
        if self.shadow() { pass.shadowed() } else { pass }
    }

    /// A refusal, counted; in shadow mode reported as one that would have been, and passed.
    /// (A chain reports each of its policies' refusals by itself.)
    fn refused(&self, rejection: Rejection, req: &Request<B>) -> Result<Self::Pass, Rejection> {
        refuse(self, rejection, req)
    }
}

pin_project! {
    /// A future that answers later, and what its policy needs back with the answer (the key
    /// a rate check was for, the period of a reservation).
    pub struct With<F, T> {
        #[pin]
        future: F,
        value: Option<T>,
    }
}

impl<F, T> With<F, T> {
    pub(crate) fn new(future: F, value: T) -> Self {
        Self {
            future,
            value: Some(value),
        }
    }
}

impl<F: Future, T> Future for With<F, T> {
    type Output = (F::Output, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.future.poll(cx));
        let value = this.value.take().expect("polled after completion");
        Poll::Ready((answer, value))
    }
}

/// What a passed request's decision does to its response.
pub trait Finish: Sized {
    /// Work that must finish before the response is answered (the quota's settlement).
    type Settle: Future<Output = ()>;

    /// Applies the decision to the inner service's response. A future returned here is
    /// awaited before the response is answered. (When the inner service fails instead, the
    /// decision is dropped.)
    fn finish<B>(self, response: &mut Response<B>) -> Option<Self::Settle>;

    /// The decision that does nothing to the response (shadow mode: no headers, no charge).
    fn nothing() -> Self;

    /// What a passing decision becomes in shadow mode: by default nothing; the concurrency
    /// limit keeps its slot, so that it keeps counting running scans.
    fn shadowed(self) -> Self {
        Self::nothing()
    }
}

impl Finish for () {
    type Settle = std::future::Ready<()>;

    fn nothing() -> Self {}

    #[inline]
    fn finish<B>(self, _: &mut Response<B>) -> Option<Self::Settle> {
        None
    }
}

/// Calls `inner` as `policy` decides about `req`.
#[inline(always)]
pub(crate) fn call<S, P, ReqB, ResB>(
    inner: &mut S,
    policy: &P,
    mut req: Request<ReqB>,
) -> ResponseFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Policy<ReqB>,
{
    let step = policy.decide(&mut req);
    let state = next(policy, step, inner, req);
    ResponseFuture { state }
}

/// The state a decision leads to: the inner service, a wait, or the envelope.
#[inline(always)]
fn next<S, P, ReqB>(
    policy: &P,
    step: Step<P::Pass, P::Later>,
    inner: &mut S,
    req: Request<ReqB>,
) -> State<S, P, ReqB>
where
    S: Service<Request<ReqB>> + Clone,
    P: Policy<ReqB>,
{
    match step {
        Step::Pass(pass) => State::Inner {
            pass: Some(policy.passed(pass)),
            future: inner.call(req),
        },
        Step::Later(later) => {
            // Keep the instance that was polled ready for the call after the decision.
            let clone = inner.clone();
            let ready = mem::replace(inner, clone);
            State::Later {
                waiting: Box::pin(Waiting {
                    later,
                    parked: Some((ready, req, policy.clone())),
                    started: Instant::now(),
                }),
            }
        }
        Step::Reject(rejection) => refusal(policy, rejection, None, inner, req),
        Step::RejectAfter(rejection, after) => refusal(policy, rejection, Some(after), inner, req),
    }
}

/// The state after a refusal (`Step::Reject` or `Step::RejectAfter`): the envelope, or in
/// shadow mode the inner service after all.
#[cold]
fn refusal<S, P, ReqB>(
    policy: &P,
    rejection: Rejection,
    after: Option<P::Pass>,
    inner: &mut S,
    req: Request<ReqB>,
) -> State<S, P, ReqB>
where
    S: Service<Request<ReqB>>,
    P: Policy<ReqB>,
{
    match policy.refused(rejection, &req) {
        Ok(pass) => State::Inner {
            future: inner.call(req),
            pass: Some(pass),
        },
        Err(rejection) => State::Reject {
            grpc: crate::grpc::wants_grpc(&req),
            rejection: Some(rejection),
            after,
        },
    }
}

/// A refusal, counted; in shadow mode reported as one that would have been, and passed.
#[cold]
fn refuse<B, P: Policy<B>>(
    policy: &P,
    rejection: Rejection,
    req: &Request<B>,
) -> Result<P::Pass, Rejection> {
    let shadow = policy.shadow();
    crate::metrics::rejected(P::LAYER, &rejection, req, shadow);
    if !shadow {
        return Err(rejection);
    }
    tracing::debug!(
        target: "tower_nat",
        layer = P::LAYER,
        code = rejection.error().code(),
        "would reject (shadow mode): passed"
    );
    Ok(P::Pass::nothing())
}

pin_project! {
    /// A decision under way, and the inner service, request and policy waiting for it.
    /// Boxed: only decisions that answer later pay for it, and the future of those that
    /// answer at once stays small.
    struct Waiting<S, B, P, L> {
        #[pin]
        later: L,
        parked: Option<(S, Request<B>, P)>,
        started: Instant,
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
        Later { waiting: Pin<Box<Waiting<S, ReqB, P, P::Later>>> },
        Inner { #[pin] future: S::Future, pass: Option<P::Pass> },
        Settle {
            #[pin]
            settle: <P::Pass as Finish>::Settle,
            response: Option<S::Response>,
        },
        Reject { rejection: Option<Rejection>, grpc: bool, after: Option<P::Pass> },
        // A refusal whose earlier decisions settle before it is answered.
        RejectSettle {
            #[pin]
            settle: <P::Pass as Finish>::Settle,
            response: Option<Response<NatBody<()>>>,
        },
    }
}

impl<S, P, ReqB, ResB> Future for ResponseFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Policy<ReqB>,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Later { waiting } => {
                    let mut waiting = waiting.as_mut().project();
                    let answer = ready!(waiting.later.as_mut().poll(cx));
                    let (_, req, policy) =
                        waiting.parked.as_mut().expect("polled after completion");
                    if let Some((store, op, ok)) = policy.store_call(&answer) {
                        crate::metrics::store_call(store, op, ok, waiting.started.elapsed());
                    }
                    let step = match policy.resume(answer, req) {
                        // Another wait (the next policy of a chain): the same request waits,
                        // in the same box.
                        Step::Later(later) => {
                            waiting.later.set(later);
                            *waiting.started = Instant::now();
                            continue;
                        }
                        step => step,
                    };
                    let (mut inner, req, policy) =
                        waiting.parked.take().expect("polled after completion");
                    next(&policy, step, &mut inner, req)
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
                StateProj::Reject {
                    rejection,
                    grpc,
                    after,
                } => {
                    let rejection = rejection.take().expect("polled after completion");
                    let Some(after) = after.take() else {
                        return Poll::Ready(Ok(rejection.into_response(*grpc)));
                    };
                    let mut response = rejection.into_response::<()>(*grpc);
                    match after.finish(&mut response) {
                        None => return Poll::Ready(Ok(response.map(NatBody::retype))),
                        Some(settle) => State::RejectSettle {
                            settle,
                            response: Some(response),
                        },
                    }
                }
                StateProj::RejectSettle { settle, response } => {
                    ready!(settle.poll(cx));
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(NatBody::retype)));
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
            State::RejectSettle { .. } => "RejectSettle",
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

            #[inline(always)]
            fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
                crate::guard::call(&mut self.inner, &self.policy, req)
            }
        }
    };
}
pub(crate) use guarded_service;
