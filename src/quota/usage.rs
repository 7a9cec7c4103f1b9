use serde::Serialize;

use super::store::{Period, QuotaStore, UsageCounts};
use crate::{
    clock::SharedClock,
    error::StoreError,
    store::Answer,
    tenant::{Plan, PlanLimits, Plans, Quota, Tenant, TenantId},
};

/// The usage snapshot of `tenant` now.
pub(crate) async fn snapshot<Q: QuotaStore>(
    store: &Q,
    plans: &Plans,
    clock: &SharedClock,
    tenant: &Tenant,
) -> Result<Usage, StoreError> {
    let period = store.period(tenant.id(), clock.now());
    let counts = match store.usage(tenant.id(), period) {
        Answer::Ready(r) => r?,
        Answer::Pending(f) => f.await?,
    };
    let limits = plans.get(tenant.plan());
    Ok(Usage::new(
        tenant.id().clone(),
        tenant.plan(),
        limits,
        counts,
        period,
    ))
}

/// A tenant's usage, as `GET /api/v1/usage` answers it.
///
/// Serialized members, in order: `tenant_id`, `plan`, `scans_used`, `scans_limit`,
/// `security_scan_count`, `monthly_security_scan_quota`, `approaching_limit`,
/// `quota_reset_date`, `period_start`, `period_end`. `scans_*` count functional scans (a `full`
/// scan counts one functional and one security scan); an unlimited quota is `null`;
/// `approaching_limit` is true when usage is over 80% of either limited quota; dates are
/// `YYYY-MM-DDT00:00:00Z`, `period_end` being the last second of the period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Its current plan.
    pub plan: Plan,
    /// Functional scans charged this period.
    pub scans_used: u64,
    /// Functional scans allowed this period (`None`: unlimited).
    pub scans_limit: Option<u64>,
    /// Security scans charged this period.
    pub security_scan_count: u64,
    /// Security scans allowed this period (`None`: unlimited).
    pub monthly_security_scan_quota: Option<u64>,
    /// Usage is over 80% of either limited quota.
    pub approaching_limit: bool,
    /// When the quota resets: the first instant of the next period.
    pub quota_reset_date: String,
    /// The first instant of the period.
    pub period_start: String,
    /// The last second of the period.
    pub period_end: String,
}

fn over_80_percent(used: u64, quota: Quota) -> bool {
    match quota {
        // used / limit > 0.8, in integers.
        Quota::Limited(limit) if limit > 0 => u128::from(used) * 5 > u128::from(limit) * 4,
        _ => false,
    }
}

impl Usage {
    /// The snapshot of `counts` for `tenant` on `plan` with `limits`, in `period`.
    pub fn new(
        tenant: TenantId,
        plan: Plan,
        limits: &PlanLimits,
        counts: UsageCounts,
        period: Period,
    ) -> Self {
        let functional = limits.functional_scans_per_month;
        let security = limits.security_scans_per_month;
        Self {
            tenant_id: tenant,
            plan,
            scans_used: counts.functional,
            scans_limit: functional.limit(),
            security_scan_count: counts.security,
            monthly_security_scan_quota: security.limit(),
            approaching_limit: over_80_percent(counts.functional, functional)
                || over_80_percent(counts.security, security),
            quota_reset_date: period.end.midnight_rfc3339(),
            period_start: period.start.midnight_rfc3339(),
            period_end: format!("{}T23:59:59Z", period.end.day_before()),
        }
    }
}
