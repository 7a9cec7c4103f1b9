//! [`Reported`]: what a policy decided, reported; and in shadow mode, not enforced.

use std::future::Future;

use http::Request;

use super::{Decision, Finish, Policy, Rejection};
use crate::tenant::Tenant;

/// A policy whose refusals are reported (a `DEBUG` event, `nat_rejections_total{layer}`) and,
/// in shadow mode, let through: every request passes untouched (a passing decision is
/// [`shadowed`](Finish::shadowed), a refusal becomes a pass that does nothing) while the
/// report says what would have been refused.
#[derive(Clone, Debug)]
pub struct Reported<P> {
    policy: P,
    layer: &'static str,
    shadow: bool,
}

impl<P> Reported<P> {
    /// `policy`, reported as `layer`, enforced unless `shadow`.
    pub(crate) fn new(policy: P, layer: &'static str, shadow: bool) -> Self {
        Self {
            policy,
            layer,
            shadow,
        }
    }

    #[inline(always)]
    fn report<B, F: Finish, L>(
        &self,
        decision: Decision<F, L>,
        req: &Request<B>,
    ) -> Decision<F, L> {
        match decision {
            Decision::Pass(pass) if self.shadow => Decision::Pass(pass.shadowed()),
            Decision::Refuse(rejection, after) => self.refused(rejection, after, req),
            decision => decision,
        }
    }

    #[cold]
    fn refused<B, F: Finish, L>(
        &self,
        rejection: Rejection,
        after: F,
        req: &Request<B>,
    ) -> Decision<F, L> {
        let plan = Tenant::of(req).map(|t| t.plan().name());
        crate::metrics::rejected(self.layer, rejection.error().code(), plan, self.shadow);
        if !self.shadow {
            rejection.report(self.layer);
            return Decision::Refuse(rejection, after);
        }
        tracing::debug!(
            target: "tower_nat",
            layer = self.layer,
            code = rejection.error().code(),
            "would reject (shadow mode): passed"
        );
        Decision::Pass(F::nothing())
    }
}

impl<B, P: Policy<B>> Policy<B> for Reported<P> {
    type Pass = P::Pass;
    type Later = P::Later;

    #[inline(always)]
    fn decide(&self, req: &mut Request<B>) -> Decision<P::Pass, P::Later> {
        let decision = self.policy.decide(req);
        self.report(decision, req)
    }

    #[inline]
    fn resume(
        &self,
        answer: <P::Later as Future>::Output,
        req: &mut Request<B>,
    ) -> Decision<P::Pass, P::Later> {
        let decision = self.policy.resume(answer, req);
        self.report(decision, req)
    }
}
