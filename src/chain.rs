//! One policy made of several: [`Chain`] runs two policies in turn on a request, so that the
//! whole stack decides inside one service, with one response future and one response body,
//! instead of one of each per layer. Each policy of a chain keeps its own metrics label and
//! shadow mode; a refusal is answered with the decisions of the policies before it applied
//! (the rate limit's headers on a 402), as the layers would have done.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;

use crate::{
    gate::Gate,
    guard::{Finish, Policy, Rejection, Step},
};

/// `A`, then `B`.
#[derive(Clone, Debug)]
pub struct Chain<A, B>(pub(crate) A, pub(crate) B);

/// A [`Gate`] as a policy that never waits.
#[derive(Clone, Debug)]
pub struct GatePolicy<G>(pub(crate) G);

impl<G: Gate + Clone, B> Policy<B> for GatePolicy<G> {
    type Pass = ();
    type Later = std::future::Ready<()>;

    const LAYER: &'static str = G::LAYER;

    #[inline]
    fn shadow(&self) -> bool {
        self.0.shadow()
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<(), Self::Later> {
        match self.0.check(req) {
            Ok(()) => Step::Pass(()),
            Err(rejection) => Step::Reject(rejection),
        }
    }

    fn resume(&self, (): (), _: &mut Request<B>) -> Step<(), Self::Later> {
        Step::Pass(())
    }
}

pin_project! {
    /// A chain waiting for its first policy, or for its second with the first's decision.
    #[project = LaterProj]
    pub enum ChainLater<A, B, P> {
        /// The first policy's wait.
        First { #[pin] later: A },
        /// The second policy's wait, with the first's decision.
        Second { pass: Option<P>, #[pin] later: B },
    }
}

/// What a [`ChainLater`] answers.
#[derive(Debug)]
pub enum ChainAnswer<A, P, B> {
    /// The first policy's answer.
    First(A),
    /// The first policy's decision, and the second's answer.
    Second(P, B),
}

impl<A: Future, B: Future, P> Future for ChainLater<A, B, P> {
    type Output = ChainAnswer<A::Output, P, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LaterProj::First { later } => later.poll(cx).map(ChainAnswer::First),
            LaterProj::Second { pass, later } => {
                let answer = ready!(later.poll(cx));
                let pass = pass.take().expect("polled after completion");
                Poll::Ready(ChainAnswer::Second(pass, answer))
            }
        }
    }
}

/// A chain's step.
type ChainStep<A, B, Rq> = Step<
    (<A as Policy<Rq>>::Pass, <B as Policy<Rq>>::Pass),
    ChainLater<<A as Policy<Rq>>::Later, <B as Policy<Rq>>::Later, <A as Policy<Rq>>::Pass>,
>;

impl<A, B> Chain<A, B> {
    /// The step after the first policy's `step`.
    #[inline(always)]
    fn first<Rq>(&self, step: Step<A::Pass, A::Later>, req: &mut Request<Rq>) -> ChainStep<A, B, Rq>
    where
        A: Policy<Rq>,
        B: Policy<Rq>,
    {
        match step {
            Step::Pass(a) => {
                let a = self.0.passed(a);
                self.second(a, self.1.decide(req), req)
            }
            Step::Later(later) => Step::Later(ChainLater::First { later }),
            Step::Reject(rejection) => match self.0.refused(rejection, req) {
                Ok(a) => self.second(a, self.1.decide(req), req),
                Err(rejection) => Step::Reject(rejection),
            },
            Step::RejectAfter(rejection, after) => match self.0.refused(rejection, req) {
                Ok(a) => self.second(a, self.1.decide(req), req),
                Err(rejection) => Step::RejectAfter(rejection, (after, B::Pass::nothing())),
            },
        }
    }

    /// The step after the second policy's `step`, the first having passed with `a`.
    #[inline(always)]
    fn second<Rq>(
        &self,
        a: A::Pass,
        step: Step<B::Pass, B::Later>,
        req: &mut Request<Rq>,
    ) -> ChainStep<A, B, Rq>
    where
        A: Policy<Rq>,
        B: Policy<Rq>,
    {
        match step {
            Step::Pass(b) => Step::Pass((a, self.1.passed(b))),
            Step::Later(later) => Step::Later(ChainLater::Second {
                pass: Some(a),
                later,
            }),
            Step::Reject(rejection) => match self.1.refused(rejection, req) {
                Ok(b) => Step::Pass((a, b)),
                Err(rejection) => Step::RejectAfter(rejection, (a, B::Pass::nothing())),
            },
            Step::RejectAfter(rejection, after) => match self.1.refused(rejection, req) {
                Ok(b) => Step::Pass((a, b)),
                Err(rejection) => Step::RejectAfter(rejection, (a, after)),
            },
        }
    }
}

impl<Rq, A: Policy<Rq>, B: Policy<Rq>> Policy<Rq> for Chain<A, B> {
    type Pass = (A::Pass, B::Pass);
    type Later = ChainLater<A::Later, B::Later, A::Pass>;

    /// Not reported: each policy of the chain reports refusals under its own name.
    const LAYER: &'static str = B::LAYER;

    /// Each policy of the chain runs in its own mode.
    fn shadow(&self) -> bool {
        false
    }

    fn store_call(
        &self,
        answer: &<Self::Later as Future>::Output,
    ) -> Option<(&'static str, &'static str, bool)> {
        match answer {
            ChainAnswer::First(a) => self.0.store_call(a),
            ChainAnswer::Second(_, b) => self.1.store_call(b),
        }
    }

    #[inline(always)]
    fn decide(&self, req: &mut Request<Rq>) -> Step<Self::Pass, Self::Later> {
        let step = self.0.decide(req);
        self.first(step, req)
    }

    fn resume(
        &self,
        answer: <Self::Later as Future>::Output,
        req: &mut Request<Rq>,
    ) -> Step<Self::Pass, Self::Later> {
        match answer {
            ChainAnswer::First(a) => {
                let step = self.0.resume(a, req);
                self.first(step, req)
            }
            ChainAnswer::Second(a, b) => {
                let step = self.1.resume(b, req);
                self.second(a, step, req)
            }
        }
    }

    /// The policies were shadowed one by one.
    #[inline(always)]
    fn passed(&self, pass: Self::Pass) -> Self::Pass {
        pass
    }

    /// The policies' refusals were reported one by one.
    fn refused(&self, rejection: Rejection, _: &Request<Rq>) -> Result<Self::Pass, Rejection> {
        Err(rejection)
    }
}

impl<A: Finish, B: Finish> Finish for (A, B) {
    type Settle = Both<A::Settle, B::Settle>;

    /// The second's first: the response meets the inner layer first.
    #[inline(always)]
    fn finish<Bd>(self, response: &mut Response<Bd>) -> Option<Self::Settle> {
        let second = self.1.finish(response);
        let first = self.0.finish(response);
        if first.is_none() && second.is_none() {
            return None;
        }
        Some(Both { second, first })
    }

    fn nothing() -> Self {
        (A::nothing(), B::nothing())
    }

    fn shadowed(self) -> Self {
        (self.0.shadowed(), self.1.shadowed())
    }
}

pin_project! {
    /// Two settlements, the second's first.
    pub struct Both<A, B> {
        #[pin]
        second: Option<B>,
        #[pin]
        first: Option<A>,
    }
}

impl<A: Future<Output = ()>, B: Future<Output = ()>> Future for Both<A, B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(second) = this.second.as_mut().as_pin_mut() {
            ready!(second.poll(cx));
            this.second.set(None);
        }
        if let Some(first) = this.first.as_mut().as_pin_mut() {
            ready!(first.poll(cx));
            this.first.set(None);
        }
        Poll::Ready(())
    }
}
