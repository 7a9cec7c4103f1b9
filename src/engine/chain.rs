//! [`Chain`]: two policies in turn on one request, so the whole stack decides inside one
//! service, with one response future and one response body.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;

use super::{Decision, Finish, Policy};

/// `A`, then `B` (if `A` passed). A refusal of `B` carries what `A` decided, so that it is
/// applied to the refusal as the layers one by one would have.
#[derive(Clone, Debug)]
pub struct Chain<A, B>(pub(crate) A, pub(crate) B);

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

type ChainDecision<A, B, Rq> = Decision<
    (<A as Policy<Rq>>::Pass, <B as Policy<Rq>>::Pass),
    ChainLater<<A as Policy<Rq>>::Later, <B as Policy<Rq>>::Later, <A as Policy<Rq>>::Pass>,
>;

impl<A, B> Chain<A, B> {
    /// The chain's decision after the first policy's.
    #[inline(always)]
    fn first<Rq>(
        &self,
        decision: Decision<A::Pass, A::Later>,
        req: &mut Request<Rq>,
    ) -> ChainDecision<A, B, Rq>
    where
        A: Policy<Rq>,
        B: Policy<Rq>,
    {
        match decision {
            Decision::Pass(a) => self.second(a, self.1.decide(req)),
            Decision::Refuse(rejection, a) => Decision::Refuse(rejection, (a, B::Pass::nothing())),
            Decision::Later(later) => Decision::Later(ChainLater::First { later }),
        }
    }

    /// The chain's decision after the second policy's, the first having passed with `a`.
    #[inline(always)]
    fn second<Rq>(
        &self,
        a: A::Pass,
        decision: Decision<B::Pass, B::Later>,
    ) -> ChainDecision<A, B, Rq>
    where
        A: Policy<Rq>,
        B: Policy<Rq>,
    {
        match decision {
            Decision::Pass(b) => Decision::Pass((a, b)),
            Decision::Refuse(rejection, b) => Decision::Refuse(rejection, (a, b)),
            Decision::Later(later) => Decision::Later(ChainLater::Second {
                pass: Some(a),
                later,
            }),
        }
    }
}

impl<Rq, A: Policy<Rq>, B: Policy<Rq>> Policy<Rq> for Chain<A, B> {
    type Pass = (A::Pass, B::Pass);
    type Later = ChainLater<A::Later, B::Later, A::Pass>;

    #[inline(always)]
    fn decide(&self, req: &mut Request<Rq>) -> Decision<Self::Pass, Self::Later> {
        let decision = self.0.decide(req);
        self.first(decision, req)
    }

    fn resume(
        &self,
        answer: <Self::Later as Future>::Output,
        req: &mut Request<Rq>,
    ) -> Decision<Self::Pass, Self::Later> {
        match answer {
            ChainAnswer::First(a) => {
                let decision = self.0.resume(a, req);
                self.first(decision, req)
            }
            ChainAnswer::Second(a, b) => {
                let decision = self.1.resume(b, req);
                self.second(a, decision)
            }
        }
    }
}

impl<A: Finish, B: Finish> Finish for (A, B) {
    type Settle = Both<A::Settle, B::Settle>;

    /// The second's first: the response meets the inner policy first.
    #[inline(always)]
    fn respond<Bd>(&self, response: &mut Response<Bd>) {
        self.1.respond(response);
        self.0.respond(response);
    }

    #[inline(always)]
    fn waits(&self) -> bool {
        self.0.waits() || self.1.waits()
    }

    #[inline(always)]
    fn settle(self, success: bool) -> Option<Self::Settle> {
        let second = self.1.settle(success);
        let first = self.0.settle(success);
        if first.is_none() && second.is_none() {
            return None;
        }
        Some(Both { second, first })
    }

    #[inline(always)]
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

/// `P` for scan creations only: a request without a [`ScanKind`](crate::plan::ScanKind)
/// (anything but a checked scan creation, or one the server marked) passes at once with
/// nothing, as each of the policies behind scan validation in the stack (the feature gate
/// for scan kinds, running scans, quota) would pass it; so the ordinary request asks the
/// extensions once instead of once per policy.
#[derive(Clone, Debug)]
pub struct ForScans<P>(pub(crate) P);

impl<Rq, P: Policy<Rq>> Policy<Rq> for ForScans<P> {
    type Pass = P::Pass;
    type Later = P::Later;

    #[inline(always)]
    fn decide(&self, req: &mut Request<Rq>) -> Decision<Self::Pass, Self::Later> {
        if req.extensions().get::<crate::plan::ScanKind>().is_none() {
            return Decision::Pass(P::Pass::nothing());
        }
        self.0.decide(req)
    }

    #[inline]
    fn resume(
        &self,
        answer: <Self::Later as Future>::Output,
        req: &mut Request<Rq>,
    ) -> Decision<Self::Pass, Self::Later> {
        self.0.resume(answer, req)
    }
}
