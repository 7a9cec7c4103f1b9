//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: install any recorder
//! (a Prometheus exporter, an OpenTelemetry bridge) and the layers report to it; with none
//! installed, each report is a call into the facade's no-op recorder.
//!
//! Every series, with its labels. No label carries a tenant id, a key or anything else a
//! client chooses, so the number of series stays bounded (plans are the server's own).
//!
//! | name | type | labels | counts |
//! |---|---|---|---|
//! | `nat_requests_total` | counter | `outcome`: `allowed`, `rejected`, `error` | requests through [`NatLayer`](crate::NatLayer): passed to the server (whatever it answered), refused by a layer, or answered 500 for a failure (a store, an inner error or panic) |
//! | `nat_rejections_total` | counter | `code` (`UNAUTHORIZED`, ...), `plan` (`none` before authentication), `layer`, `shadow`: `true`, `false` | refusals by each layer; in shadow mode the refusals it would have made |
//! | `nat_rate_limit_near_limit_total` | counter | `plan` | requests let through with 20 % or less of the tenant's limit left (not in shadow mode) |
//! | `nat_quota_exhausted_total` | counter | `plan`, `kind`: the scan's mode (`functional`, `security`, `full`) | scan creations refused with 402 (not in shadow mode) |
//! | `nat_store_duration_seconds` | histogram | `store`: `key`, `rate`, `quota`, `slots`; `op`; `outcome`: `ok`, `error` | store calls that went to a backend (a database, Redis); in-memory answers are not timed |
//! | `nat_store_errors_total` | counter | `store`, `op` | failed store calls, each attempt of a background retry included |
//! | `nat_store_abandoned_total` | counter | `store`, `op` | Redis settlements and releases retried in the background until their time ran out (a charge or a release lost) |
//! | `nat_store_local_answers_total` | counter | `store`: `rate`, `quota`; `why`: `refused` (a 429 known locally), `exhausted` (a 402 known locally), `fallback` (the local limit while Redis fails) | answers a store gave without asking its backend (the Redis stores, `LocalFallback`) |
//! | `nat_fail_open_total` | counter | `layer` | requests let through because a store failed ([`OnStoreError::Allow`](crate::store::OnStoreError::Allow)) |
//! | `nat_auth_throttle_overflow_total` | counter | none | failed authentications counted in the allowance that addresses share while the throttle's table is full (a flood from many addresses) |
//! | `nat_auth_unthrottled_failures_total` | counter | none | failed authentications the throttle could not count: the request carried no client address (also a `WARN` event, once) |
//! | `nat_admin_changes_total` | counter | `action`: `tenant.create`, `tenant.update`, `tenant.delete`, `key.issue`, `key.revoke`, `key.rotate`, `key.update` | changes made through the admin API (feature `admin`) (each also an audit event) |
//! | `nat_admin_auth_failures_total` | counter | none | admin API requests refused for their token (401) or their address (429) |
//!
//! `layer` is one of `billing`, `auth`, `rate_limit`, `scan_request`, `feature_gate`,
//! `concurrency`, `quota`. `store`/`op` is one of `key`/`lookup`; `rate`/`check`,
//! `rate`/`peek`; `quota`/`reserve`, `quota`/`settle`, `quota`/`release`, `quota`/`usage`,
//! `quota`/`once`; `slots`/`acquire`, `slots`/`release`, `slots`/`running`.
//!
//! A layer that answers 500 because its store failed counts it as a rejection with
//! `code="INTERNAL_ERROR"` (and the request as `outcome="error"`), beside the store error.
//!
//! **Shadow mode** counts what each layer would have refused as if the layers before it had
//! let the request through, so one request may be counted by several layers (a bad key:
//! `auth`, then `rate_limit`, which finds no tenant); enforced, each request is refused once.
//!
//! **Install the recorder before building the service.** [`NatLayer`](crate::NatLayer)
//! registers its `nat_requests_total` counters when it wraps a service (counting through a
//! registered handle is a few instructions; looking the counter up on every request would be
//! hundreds); the other series are looked up when they happen, which is rare.

use std::time::Duration;

use http::Request;

use crate::tenant::Tenant;

/// `nat_requests_total`.
pub const REQUESTS: &str = "nat_requests_total";
/// `nat_rejections_total`.
pub const REJECTIONS: &str = "nat_rejections_total";
/// `nat_rate_limit_near_limit_total`.
pub const NEAR_LIMIT: &str = "nat_rate_limit_near_limit_total";
/// `nat_quota_exhausted_total`.
pub const QUOTA_EXHAUSTED: &str = "nat_quota_exhausted_total";
/// `nat_store_duration_seconds`.
pub const STORE_DURATION: &str = "nat_store_duration_seconds";
/// `nat_store_errors_total`.
pub const STORE_ERRORS: &str = "nat_store_errors_total";
/// `nat_store_abandoned_total`.
pub const STORE_ABANDONED: &str = "nat_store_abandoned_total";
/// `nat_store_local_answers_total`.
pub const LOCAL_ANSWERS: &str = "nat_store_local_answers_total";
/// `nat_fail_open_total`.
pub const FAIL_OPEN: &str = "nat_fail_open_total";
/// `nat_auth_throttle_overflow_total`.
pub const THROTTLE_OVERFLOW: &str = "nat_auth_throttle_overflow_total";
/// `nat_auth_unthrottled_failures_total`.
pub const THROTTLE_UNATTRIBUTED: &str = "nat_auth_unthrottled_failures_total";

/// `nat_admin_changes_total`.
pub const ADMIN_CHANGES: &str = "nat_admin_changes_total";
/// `nat_admin_auth_failures_total`.
pub const ADMIN_AUTH_FAILURES: &str = "nat_admin_auth_failures_total";

/// The plan label of a request: its tenant's plan, or `none`.
fn plan_of<B>(req: &Request<B>) -> String {
    Tenant::of(req).map_or_else(|| "none".to_owned(), |t| t.plan().name().to_owned())
}

/// `layer` refused a request of a tenant on `plan` (`None`: no tenant yet) with `code` (or
/// would have, in shadow mode).
#[cold]
pub(crate) fn rejected(layer: &'static str, code: &'static str, plan: Option<&str>, shadow: bool) {
    let labels = [
        ("code", code.to_owned()),
        ("plan", plan.unwrap_or("none").to_owned()),
        ("layer", layer.to_owned()),
        ("shadow", if shadow { "true" } else { "false" }.to_owned()),
    ];
    ::metrics::counter!(REJECTIONS, &labels).increment(1);
}

/// How a request left the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    Rejected,
    Error,
}

/// The three `nat_requests_total` counters, registered once when the stack wraps a service
/// (looking a counter up costs far more than counting: about 400 instructions with no
/// recorder installed).
#[derive(Clone, Debug)]
pub(crate) struct Requests {
    allowed: ::metrics::Counter,
    rejected: ::metrics::Counter,
    error: ::metrics::Counter,
}

impl Requests {
    /// Registers the counters with the recorder installed now.
    pub(crate) fn register() -> Self {
        Self {
            allowed: ::metrics::counter!(REQUESTS, "outcome" => "allowed"),
            rejected: ::metrics::counter!(REQUESTS, "outcome" => "rejected"),
            error: ::metrics::counter!(REQUESTS, "outcome" => "error"),
        }
    }

    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Allowed => self.allowed.increment(1),
            Outcome::Rejected => self.rejected.increment(1),
            Outcome::Error => self.error.increment(1),
        }
    }
}

/// A request let through with `remaining` of `limit` left.
#[inline]
pub(crate) fn rate_passed<B>(req: &Request<B>, remaining: u32, limit: u32) {
    if u64::from(remaining) * 5 <= u64::from(limit) {
        near_limit(req);
    }
}

#[cold]
fn near_limit<B>(req: &Request<B>) {
    ::metrics::counter!(NEAR_LIMIT, "plan" => plan_of(req)).increment(1);
}

/// A scan creation refused with 402.
#[cold]
pub(crate) fn quota_exhausted(plan: &str, kind: &'static str) {
    ::metrics::counter!(QUOTA_EXHAUSTED, "plan" => plan.to_owned(), "kind" => kind).increment(1);
}

/// A store call that went to a backend, timed.
pub(crate) fn store_call(store: &'static str, op: &'static str, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    ::metrics::histogram!(STORE_DURATION, "store" => store, "op" => op, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// A failed store call (answered at once or later).
#[cold]
pub(crate) fn store_error(store: &'static str, op: &'static str) {
    ::metrics::counter!(STORE_ERRORS, "store" => store, "op" => op).increment(1);
}

/// A call retried in the background whose time ran out before the store answered.
#[cfg(feature = "redis")]
#[cold]
pub(crate) fn store_abandoned(store: &'static str, op: &'static str) {
    ::metrics::counter!(STORE_ABANDONED, "store" => store, "op" => op).increment(1);
}

/// A store answered without asking its backend.
pub(crate) fn local_answer(store: &'static str, why: &'static str) {
    ::metrics::counter!(LOCAL_ANSWERS, "store" => store, "why" => why).increment(1);
}

/// A request let through because a store failed.
#[cold]
pub(crate) fn fail_open(layer: &'static str) {
    ::metrics::counter!(FAIL_OPEN, "layer" => layer).increment(1);
}
