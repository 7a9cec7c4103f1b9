//! The generic cell rate algorithm, as pure integer arithmetic shared by every store.

use std::time::Duration;

/// The window a plan's limit is counted over.
pub(crate) const WINDOW_NANOS: u64 = 60_000_000_000;

/// What the limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The limit the decision was made with (requests a minute).
    pub limit: u32,
    /// How many more requests, sent at once right now, would pass (0 when refused).
    pub remaining: u32,
    /// When refused: how long until a retry is admitted. Zero when allowed.
    pub retry_after: Duration,
    /// How long until the tenant is back to a full burst of `limit`.
    pub reset: Duration,
}

impl RateDecision {
    /// `retry_after` in whole seconds, rounded up, at least 1: the `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }

    /// `reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset.as_nanos().div_ceil(1_000_000_000) as u64
    }
}

/// The emission interval for `limit` requests a minute, rounded up to a whole nanosecond, so
/// that `limit` intervals never fit in less than a minute.
pub(crate) fn interval(limit: u32) -> u64 {
    WINDOW_NANOS.div_ceil(u64::from(limit.max(1)))
}

/// One GCRA step. `tat` is the stored theoretical arrival time (0 for a fresh tenant), `now`
/// the current time, both in nanoseconds. Returns the decision and, when the request is
/// allowed, the new `tat` to store.
pub(crate) fn check(tat: u64, now: u64, limit: u32) -> (RateDecision, Option<u64>) {
    check_with(tat, now, limit, interval(limit))
}

/// [`check`] with the interval for `limit` already known (the in-memory store keeps it per
/// tenant, saving a division per request).
pub(crate) fn check_with(tat: u64, now: u64, limit: u32, t: u64) -> (RateDecision, Option<u64>) {
    let tolerance = t * u64::from(limit.max(1));
    let new_tat = tat.max(now) + t;
    let ahead = new_tat - now;
    if ahead > tolerance {
        let wait = ahead - tolerance;
        let decision = RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            retry_after: Duration::from_nanos(wait),
            reset: Duration::from_nanos(tat.saturating_sub(now)),
        };
        (decision, None)
    } else {
        let decision = RateDecision {
            allowed: true,
            limit,
            remaining: ((tolerance - ahead) / t) as u32,
            retry_after: Duration::ZERO,
            reset: Duration::from_nanos(ahead),
        };
        (decision, Some(new_tat))
    }
}

/// The state at `now` without counting anything, as the headers of the last request said it:
/// whether a request would pass, how many would pass at once (`remaining`), how long until
/// one passes when none would (`retry_after`), and until the tenant is back to a full burst
/// (`reset`).
pub(crate) fn peek(tat: u64, now: u64, limit: u32) -> RateDecision {
    let t = interval(limit);
    let tolerance = t * u64::from(limit.max(1));
    let backlog = tat.saturating_sub(now);
    let remaining = tolerance.saturating_sub(backlog) / t;
    RateDecision {
        allowed: remaining > 0,
        limit,
        remaining: remaining as u32,
        retry_after: if remaining > 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(backlog + t - tolerance)
        },
        reset: Duration::from_nanos(backlog),
    }
}

/// Re-expresses a stored `tat` made with `from` requests a minute for `to` requests a minute,
/// keeping the number of requests the tenant has used (rounded up: a plan change never admits
/// extra), but never more than a full bucket of the new plan (a downgrade is never worse than
/// having just used the whole new limit).
pub(crate) fn convert(tat: u64, now: u64, from: u32, to: u32) -> u64 {
    if tat <= now {
        return tat;
    }
    let level = u128::from(tat - now);
    let full = u128::from(interval(to)) * u128::from(to.max(1));
    let scaled = (level * u128::from(interval(to)))
        .div_ceil(u128::from(interval(from)))
        .min(full);
    now + scaled as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_retry_after() {
        for limit in [1, 7, 30, 120, 300, 1000] {
            let now = 1_000_000_000_000;
            let mut tat = 0;
            for i in 0..limit {
                let (d, next) = check(tat, now, limit);
                assert!(d.allowed);
                assert_eq!(d.remaining, limit - i - 1);
                tat = next.unwrap();
            }
            let (d, next) = check(tat, now, limit);
            assert!(!d.allowed && next.is_none());
            let later = now + d.retry_after_secs() * 1_000_000_000;
            assert!(check(tat, later, limit).0.allowed);
            // One nanosecond before the exact wait is refused.
            let exact = now + d.retry_after.as_nanos() as u64;
            assert!(!check(tat, exact - 1, limit).0.allowed);
            assert!(check(tat, exact, limit).0.allowed);
        }
    }

    #[test]
    fn conversion_keeps_the_used_count() {
        let now = 5_000_000_000_000;
        let mut tat = 0;
        for _ in 0..30 {
            tat = check(tat, now, 30).1.unwrap();
        }
        let converted = convert(tat, now, 30, 120);
        let (d, _) = check(converted, now, 120);
        assert!(d.allowed);
        assert_eq!(d.remaining, 120 - 31);
        assert_eq!(convert(3, now, 30, 120), 3);
        // A downgrade caps the state at one full bucket of the new plan.
        let mut tat = 0;
        for _ in 0..120 {
            tat = check(tat, now, 120).1.unwrap();
        }
        assert_eq!(convert(tat, now, 120, 30), now + WINDOW_NANOS);
    }
}
