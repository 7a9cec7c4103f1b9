//! How a layer decides ([`Policy`], [`Decision`]), what a passed decision does to the
//! response ([`Finish`]), a refusal ([`Rejection`]), and a store call under way
//! ([`StoreCall`]).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;

use crate::{
    engine::NatBody,
    error::{NatError, StoreError},
    tenant::TenantId,
};

/// How a layer decides about a request. Deciding only: reporting (metrics, shadow mode) is
/// [`Reported`](super::Reported)'s.
pub trait Policy<B>: Send + Sync + 'static {
    /// What a passed request carries to its response.
    type Pass: Finish;
    /// A decision that comes later (a remote store, a body to read).
    type Later: Future + Send;

    /// Decides about `req`, now or later. It may change the request (put the tenant in, take
    /// the body to read it).
    fn decide(&self, req: &mut Request<B>) -> Decision<Self::Pass, Self::Later>;

    /// The decision once `Later` answered (which may be another wait: a chain waits for each
    /// of its policies in turn).
    fn resume(
        &self,
        answer: <Self::Later as Future>::Output,
        req: &mut Request<B>,
    ) -> Decision<Self::Pass, Self::Later>;
}

/// What a policy decided.
#[derive(Debug)]
pub enum Decision<P, L> {
    /// Call the inner service; `P` is applied to its response.
    Pass(P),
    /// Answer with the envelope, and apply `P` to it: what the policies before the one that
    /// refused decided (the rate limit's headers on a 402), or nothing.
    Refuse(Rejection, P),
    /// The decision comes later, from this future.
    Later(L),
}

impl<P: Finish, L> Decision<P, L> {
    /// Refuses with `rejection`, applying nothing.
    #[cold]
    pub(crate) fn refuse(rejection: Rejection) -> Self {
        Decision::Refuse(rejection, P::nothing())
    }

    /// Passes with `P`, or refuses.
    #[inline]
    pub(crate) fn of(decided: Result<P, Rejection>) -> Self {
        match decided {
            Ok(pass) => Decision::Pass(pass),
            Err(rejection) => Decision::refuse(rejection),
        }
    }
}

/// The `Later` of a policy that always decides at once.
pub(crate) type Never = std::future::Pending<Infallible>;

/// What a passed request's decision does to its response.
///
/// Two parts: headers, written on the response at once ([`respond`](Self::respond)), and a
/// settlement that depends on whether the request succeeded ([`settle`](Self::settle): the
/// quota's charge, the running scan's slot). A REST answer's success is known from its
/// status; a gRPC answer's from its `grpc-status`, which may come only in the trailers at the
/// end of its body: then the settlement waits in the body ([`NatBody`]) for it. Dropping a
/// decision without settling it counts as a failure.
pub trait Finish: Sized + Send + 'static {
    /// Work that must finish before the response (or, for a gRPC answer, its end) is
    /// delivered: the quota's settlement.
    type Settle: Future<Output = ()> + Send + 'static;

    /// Writes the decision's headers on the inner service's response (or on a refusal).
    #[inline]
    fn respond<B>(&self, response: &mut Response<B>) {
        let _ = response;
    }

    /// Whether [`settle`](Self::settle) does anything. If not, it is not called, and the
    /// response's verdict is not read (a gRPC answer's end is not watched either).
    #[inline]
    fn waits(&self) -> bool {
        false
    }

    /// Settles the decision: the request succeeded, or not. A future returned here is awaited
    /// before the response (or its end) is delivered.
    fn settle(self, success: bool) -> Option<Self::Settle>;

    /// The decision that does nothing to the response.
    fn nothing() -> Self;

    /// What a passing decision becomes in shadow mode: by default nothing (no headers, no
    /// charge); the running-scan limit keeps its slot, so that it keeps counting.
    #[inline]
    fn shadowed(self) -> Self {
        Self::nothing()
    }
}

impl Finish for () {
    type Settle = std::future::Ready<()>;

    #[inline]
    fn settle(self, _: bool) -> Option<Self::Settle> {
        None
    }

    #[inline]
    fn nothing() -> Self {}
}

/// A refusal: the envelope, headers a layer adds to it (the rate limiter's draft headers),
/// and what the report of it says (never sent). Boxed, so the decisions that pass, the common
/// case, stay small.
#[derive(Debug)]
pub struct Rejection(Box<Refusal>);

#[derive(Debug)]
struct Refusal {
    error: NatError,
    headers: HeaderMap,
    reason: &'static str,
    tenant: Option<TenantId>,
}

impl Rejection {
    /// The envelope of `error`; `reason` says why, in the report only.
    #[cold]
    pub(crate) fn new(error: NatError, reason: &'static str) -> Self {
        Self(Box::new(Refusal {
            error,
            headers: HeaderMap::new(),
            reason,
            tenant: None,
        }))
    }

    /// The tenant refused, for the report.
    #[must_use]
    pub(crate) fn tenant(mut self, tenant: &TenantId) -> Self {
        self.0.tenant = Some(tenant.clone());
        self
    }

    /// Adds `headers` to the answer.
    #[must_use]
    pub(crate) fn headers(mut self, headers: HeaderMap) -> Self {
        self.0.headers = headers;
        self
    }

    /// The error refused with.
    pub(crate) fn error(&self) -> &NatError {
        &self.0.error
    }

    /// Reports the refusal (`DEBUG`, or a sampled `ERROR` for a 500) as refused by `layer`.
    pub(crate) fn report(&self, layer: &'static str) {
        let refusal = &self.0;
        crate::report::rejection(
            refusal.error.code(),
            refusal.error.status().as_u16(),
            refusal.tenant.as_ref().map(TenantId::as_str),
            layer,
            refusal.reason,
        );
    }

    /// The response: the JSON envelope, or a gRPC status (`grpc`), marked as refused.
    pub(crate) fn into_response<B>(self, grpc: bool) -> Response<NatBody<B>> {
        let Refusal { error, headers, .. } = *self.0;
        let mut response = if grpc {
            error.to_grpc_response()
        } else {
            error.to_response()
        };
        if !headers.is_empty() {
            response.headers_mut().extend(headers);
        }
        response.extensions_mut().insert(Refused(error.code()));
        response
    }
}

/// Marks a response as a layer's refusal, with its code (for `nat_requests_total`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

pin_project! {
    /// A store call under way, and what the policy needs back with its answer (the key a
    /// rate check was for, the period of a reservation). Its time is recorded in
    /// `nat_store_duration_seconds` when it answers.
    pub struct StoreCall<F, T> {
        #[pin]
        future: F,
        value: Option<T>,
        store: &'static str,
        op: &'static str,
        started: Instant,
    }
}

impl<F, T> StoreCall<F, T> {
    /// `future`, a call of `op` on `store`, answered with `value`.
    pub(crate) fn new(future: F, value: T, store: &'static str, op: &'static str) -> Self {
        Self {
            future,
            value: Some(value),
            store,
            op,
            started: Instant::now(),
        }
    }
}

impl<F, T, A> Future for StoreCall<F, T>
where
    F: Future<Output = Result<A, StoreError>>,
{
    type Output = (Result<A, StoreError>, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.future.poll(cx));
        let value = this.value.take().expect("polled after completion");
        crate::metrics::store_call(this.store, this.op, answer.is_ok(), this.started.elapsed());
        Poll::Ready((answer, value))
    }
}
