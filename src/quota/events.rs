//! Quota events: a server hears, once per tenant, quota and period, that a tenant went past
//! 80 % or reached 100 % of a quota.

use std::{fmt, sync::Arc, time::Duration};

use super::store::{OnceMark, Period, QuotaLimits, QuotaStore, Reservation};
use crate::{
    plan::{Allowance, Plan},
    tenant::TenantId,
};

/// Which quota an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Functional scans.
    Functional,
    /// Security scans.
    Security,
}

impl QuotaKind {
    /// `functional` or `security`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Functional => "functional",
            QuotaKind::Security => "security",
        }
    }
}

/// What the tenant crossed. One scan may cross both (with a quota under 6, 80 % and 100 % are
/// crossed by the same scan: both events come, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Threshold {
    /// Usage went past 80 % of the quota: strictly more, as the usage snapshot's
    /// `approaching_limit` (9 of 10, not 8 of 10).
    Approaching,
    /// Usage reached the quota: the next scan of this kind gets 402.
    Exhausted,
}

impl Threshold {
    /// `approaching` or `exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::Approaching => "approaching",
            Threshold::Exhausted => "exhausted",
        }
    }
}

/// A tenant crossed a threshold of a quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// Its plan when it crossed.
    pub plan: Plan,
    /// Which quota.
    pub kind: QuotaKind,
    /// What it crossed.
    pub threshold: Threshold,
    /// Scans of this kind used in the period, with the scan that crossed.
    pub used: u64,
    /// The quota.
    pub limit: u64,
    /// The period.
    pub period: Period,
}

/// Hears quota events: to e-mail a customer, offer an upgrade, page someone.
///
/// Called once per tenant, quota, threshold and period, also with many instances sharing a
/// Redis store, after the scan that crossed was charged. It must not block: with the
/// in-memory store it is called on the request's task right after the charge; with Redis
/// from a background task. Hand the event to a channel or spawn the work. Any
/// `Fn(QuotaEvent)` is one.
pub trait QuotaEvents: Send + Sync + 'static {
    /// A tenant crossed a threshold.
    fn on_quota_event(&self, event: QuotaEvent);
}

impl<F: Fn(QuotaEvent) + Send + Sync + 'static> QuotaEvents for F {
    fn on_quota_event(&self, event: QuotaEvent) {
        self(event)
    }
}

/// Where quota events go, and what the layer knew when it reserved a scan (opaque: part of
/// the quota layer's pending decision).
#[derive(Clone)]
pub struct Notify {
    pub(crate) events: Arc<dyn QuotaEvents>,
    pub(crate) limits: QuotaLimits,
    pub(crate) plan: Plan,
    pub(crate) now: Duration,
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// `used` is over 80 % of `limit` (as the usage snapshot's `approaching_limit` says).
fn over_80(used: u64, limit: u64) -> bool {
    u128::from(used) * 5 > u128::from(limit) * 4
}

impl Notify {
    /// Sends the events the charged `reservation` crossed, each once per period, in order:
    /// the scan that reaches a quota also claims its 80 % event if no scan has yet (two
    /// scans settling at once, the one past 80 % may finish after the one that exhausts the
    /// quota), so `approaching` always comes before `exhausted` (in one process: the stores
    /// run the callbacks of the marks they claim in claiming order).
    pub(crate) fn charged<Q: QuotaStore>(&self, store: &Q, reservation: &Reservation) {
        let ahead = reservation.ahead();
        let kind = reservation.kind();
        let quotas = [
            (
                QuotaKind::Functional,
                self.limits.functional,
                ahead.functional,
                kind.functional_cost(),
            ),
            (
                QuotaKind::Security,
                self.limits.security,
                ahead.security,
                kind.security_cost(),
            ),
        ];
        let period = reservation.period();
        let mut marks = Vec::new();
        for (quota, allowance, before, cost) in quotas {
            let Allowance::Limited(limit) = allowance else {
                continue;
            };
            if cost == 0 || limit == 0 {
                continue;
            }
            let after = before + cost;
            let exhausts = before < limit && after >= limit;
            let crossed = [
                (
                    Threshold::Approaching,
                    over_80(after, limit) && (exhausts || !over_80(before, limit)),
                ),
                (Threshold::Exhausted, exhausts),
            ];
            for (threshold, _) in crossed.into_iter().filter(|(_, c)| *c) {
                let event = QuotaEvent {
                    tenant: reservation.tenant().clone(),
                    plan: self.plan.clone(),
                    kind: quota,
                    threshold,
                    used: after,
                    limit,
                    period,
                };
                let mark = format!(
                    "{}:{}:{}:{}",
                    period.start,
                    quota.as_str(),
                    threshold.as_str(),
                    event.tenant
                );
                let events = self.events.clone();
                let then = Box::new(move || events.on_quota_event(event));
                marks.push(OnceMark { mark, then });
            }
        }
        if marks.is_empty() {
            return;
        }
        // A mark outlives the period by a day: late charges of the period still find it.
        let until = Duration::from_secs(period.end.unix_seconds() + 86_400);
        store.once(marks, self.now, until);
    }
}
