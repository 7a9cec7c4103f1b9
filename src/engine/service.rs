//! [`PolicyService`]: a policy in front of an inner service, and its one response future.
//!
//! A decision known at once (an in-memory store) is made inside `call`, without cloning the
//! inner service; one that comes later keeps the instance that was polled ready and puts a
//! clone in its place (the "be careful when cloning inner services" rule of tower).

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Decision, Finish, NatBody, Policy, Rejection};

/// The service of every deciding layer of this crate (the layers' own names, such as
/// [`QuotaGuard`](crate::quota::QuotaGuard), are aliases of it): a policy decides about each
/// request, which then reaches the inner service `S` or is answered with the envelope. The
/// policy is shared by every clone (one reference count).
pub struct PolicyService<S, P> {
    inner: S,
    policy: Arc<P>,
}

impl<S, P> PolicyService<S, P> {
    /// `inner` behind `policy`.
    pub(crate) fn new(inner: S, policy: Arc<P>) -> Self {
        Self { inner, policy }
    }

    crate::inner_accessors!();
}

impl<S: Clone, P> Clone for PolicyService<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for PolicyService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, ReqB, ResB> Service<Request<ReqB>> for PolicyService<S, P>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Policy<ReqB>,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = PolicyFuture<S, P, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        call(&mut self.inner, &self.policy, req)
    }
}

/// Where a request is kept while a policy decides about it: by value (a layer's `call`), or in
/// the caller's `Option` (the stack's guarded call, whose closure reaches it by reference),
/// moved out only into the inner service or a wait.
pub(crate) trait Held<B> {
    /// The request, to decide about.
    fn request(&mut self) -> &mut Request<B>;
    /// The request, handed on.
    fn hand_on(self) -> Request<B>;
}

impl<B> Held<B> for Request<B> {
    #[inline(always)]
    fn request(&mut self) -> &mut Request<B> {
        self
    }

    #[inline(always)]
    fn hand_on(self) -> Request<B> {
        self
    }
}

impl<B> Held<B> for &mut Option<Request<B>> {
    #[inline(always)]
    fn request(&mut self) -> &mut Request<B> {
        self.as_mut().expect("called once")
    }

    #[inline(always)]
    fn hand_on(self) -> Request<B> {
        self.take().expect("called once")
    }
}

/// Calls `inner` as `policy` decides about `req`.
#[inline(always)]
pub(crate) fn call<S, P, ReqB, ResB>(
    inner: &mut S,
    policy: &Arc<P>,
    mut req: impl Held<ReqB>,
) -> PolicyFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Policy<ReqB>,
{
    let decision = policy.decide(req.request());
    PolicyFuture {
        state: next(policy, decision, inner, req),
    }
}

/// The state a decision leads to: the inner service, a wait, or the envelope.
#[inline(always)]
fn next<S, P, ReqB>(
    policy: &Arc<P>,
    decision: Decision<P::Pass, P::Later>,
    inner: &mut S,
    mut req: impl Held<ReqB>,
) -> State<S, P, ReqB>
where
    S: Service<Request<ReqB>> + Clone,
    P: Policy<ReqB>,
{
    match decision {
        Decision::Pass(pass) => State::Inner {
            future: inner.call(req.hand_on()),
            pass: Some(pass),
        },
        Decision::Later(later) => {
            // Keep the instance that was polled ready for the call after the decision.
            let clone = inner.clone();
            let ready = mem::replace(inner, clone);
            State::Later {
                waiting: Box::pin(Waiting {
                    later,
                    parked: Some((ready, req.hand_on(), policy.clone())),
                }),
            }
        }
        Decision::Refuse(rejection, after) => refusal(rejection, after, req.request()),
    }
}

/// The state after a refusal: the envelope (or a gRPC status), answered when polled.
#[cold]
fn refusal<S, P, ReqB>(
    rejection: Rejection,
    after: P::Pass,
    req: &Request<ReqB>,
) -> State<S, P, ReqB>
where
    S: Service<Request<ReqB>>,
    P: Policy<ReqB>,
{
    State::Refused {
        rejection: Some(rejection),
        after: Some(after),
        grpc: crate::grpc::wants_grpc(req),
    }
}

/// Whether a response is a success for the decisions that wait for the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    /// A gRPC answer whose `grpc-status` comes in the trailers at the end of its body.
    AtEnd,
}

/// The verdict on `response`: a failure unless it is 2xx; a 2xx gRPC answer (its
/// `content-type` is gRPC's, or it carries `grpc-status`) succeeds only with `grpc-status:
/// 0`, in its headers (trailers-only) or, when they have none, in its trailers.
#[inline]
fn verdict<B>(response: &Response<B>) -> Verdict {
    if !response.status().is_success() {
        return Verdict::Failure;
    }
    let headers = response.headers();
    if let Some(status) = headers.get(crate::grpc::GRPC_STATUS) {
        return if status == "0" {
            Verdict::Success
        } else {
            Verdict::Failure
        };
    }
    match headers.get(http::header::CONTENT_TYPE) {
        Some(media) if crate::grpc::is_grpc_media(media) => Verdict::AtEnd,
        _ => Verdict::Success,
    }
}

/// A passed decision applied to the inner service's response.
enum Applied<F, B> {
    /// The response, ready (a gRPC answer's body watching for its end).
    Done(Response<NatBody<B>>),
    /// The response, once this settlement is done (boxed: only a scan creation with a remote
    /// store waits, and the future of every other request stays small).
    Settle(F, Box<Response<B>>),
}

/// Applies a passed decision to the inner service's response: its headers, then its
/// settlement, now or, for a gRPC answer whose status comes at its end, when its body ends.
#[inline]
fn apply<P: Finish, B>(pass: P, mut response: Response<B>) -> Applied<P::Settle, B> {
    pass.respond(&mut response);
    if !pass.waits() {
        // Nothing to settle (headers only, or a request that is not a scan creation): no
        // verdict to read.
        return Applied::Done(response.map(NatBody::new));
    }
    let verdict = verdict(&response);
    if verdict == Verdict::AtEnd && pass.waits() {
        return Applied::Done(response.map(|body| NatBody::watched(body, Box::new(pass))));
    }
    match pass.settle(verdict != Verdict::Failure) {
        None => Applied::Done(response.map(NatBody::new)),
        Some(settle) => Applied::Settle(settle, Box::new(response)),
    }
}

pin_project! {
    /// A decision under way, and the inner service, request and policy waiting for it.
    /// Boxed: only decisions that answer later pay for it.
    struct Waiting<S, B, P, L> {
        #[pin]
        later: L,
        parked: Option<(S, Request<B>, Arc<P>)>,
    }
}

pin_project! {
    /// The response future of [`PolicyService`].
    pub struct PolicyFuture<S, P, ReqB>
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
            response: Option<Box<S::Response>>,
        },
        Refused { rejection: Option<Rejection>, after: Option<P::Pass>, grpc: bool },
        // A refusal whose earlier decisions settle before it is answered.
        RefusedSettle {
            #[pin]
            settle: <P::Pass as Finish>::Settle,
            response: Option<Box<Response<NatBody<()>>>>,
        },
    }
}

impl<S, P, ReqB, ResB> Future for PolicyFuture<S, P, ReqB>
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
                    let decision = match policy.resume(answer, req) {
                        // Another wait (the next policy of a chain): the same request waits,
                        // in the same box.
                        Decision::Later(later) => {
                            waiting.later.set(later);
                            continue;
                        }
                        decision => decision,
                    };
                    let (mut inner, req, policy) =
                        waiting.parked.take().expect("polled after completion");
                    next(&policy, decision, &mut inner, req)
                }
                StateProj::Inner { future, pass } => {
                    let response = ready!(future.poll(cx))?;
                    let pass = pass.take().expect("polled after completion");
                    match apply(pass, response) {
                        Applied::Done(response) => return Poll::Ready(Ok(response)),
                        Applied::Settle(settle, response) => State::Settle {
                            settle,
                            response: Some(response),
                        },
                    }
                }
                StateProj::Settle { settle, response } => {
                    ready!(settle.poll(cx));
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok((*response).map(NatBody::new)));
                }
                StateProj::Refused {
                    rejection,
                    after,
                    grpc,
                } => {
                    // What passed before the refusal: its headers on the envelope, settled as
                    // a failure.
                    let rejection = rejection.take().expect("polled after completion");
                    let after = after.take().expect("polled after completion");
                    let mut response = rejection.into_response::<()>(*grpc);
                    after.respond(&mut response);
                    match after.settle(false) {
                        None => return Poll::Ready(Ok(response.map(NatBody::retype))),
                        Some(settle) => State::RefusedSettle {
                            settle,
                            response: Some(Box::new(response)),
                        },
                    }
                }
                StateProj::RefusedSettle { settle, response } => {
                    ready!(settle.poll(cx));
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok((*response).map(NatBody::retype)));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, P, ReqB> fmt::Debug for PolicyFuture<S, P, ReqB>
where
    S: Service<Request<ReqB>>,
    P: Policy<ReqB>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Later { .. } => "Later",
            State::Inner { .. } => "Inner",
            State::Settle { .. } => "Settle",
            State::Refused { .. } => "Refused",
            State::RefusedSettle { .. } => "RefusedSettle",
        };
        f.debug_struct("PolicyFuture")
            .field("state", &state)
            .finish()
    }
}
