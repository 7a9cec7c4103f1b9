//! The usage snapshot ([`Usage`]) and the handle that reads it ([`UsageReader`]).

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use serde::Serialize;

use super::store::{Period, QuotaStore, UsageCounts};
use crate::{
    common::Common,
    error::StoreError,
    plan::{Allowance, Limits, Plan},
    store::Answer,
    tenant::{Tenant, TenantId},
};

/// A tenant's usage, as `GET /api/v1/usage` answers it.
///
/// Serialized members, in order: `tenant_id`, `plan`, `scans_used`, `scans_limit`,
/// `security_scan_count`, `monthly_security_scan_quota`, `approaching_limit`,
/// `quota_reset_date`, `period_start`, `period_end`, `scans_running`,
/// `concurrent_scans_limit`. `scans_used` and `scans_limit` count functional scans (a `full`
/// scan counts one functional and one security scan); limits are the tenant's (its plan's,
/// or its own overrides); an unlimited quota is `null`; `approaching_limit` is true when usage
/// is over 80% of either limited quota; dates are `YYYY-MM-DDT00:00:00Z`, `period_end` being
/// the last second of the period.
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
    /// Scans holding a concurrency slot now (0 from a reader that does not count them:
    /// [`QuotaGuardLayer::usage_reader`](super::QuotaGuardLayer::usage_reader)).
    pub scans_running: u32,
    /// Scans that may run at once.
    pub concurrent_scans_limit: u32,
}

fn over_80_percent(used: u64, quota: Allowance) -> bool {
    match quota {
        // used / limit > 0.8, in integers.
        Allowance::Limited(limit) if limit > 0 => u128::from(used) * 5 > u128::from(limit) * 4,
        _ => false,
    }
}

impl Usage {
    /// The snapshot of `counts` for `tenant` under `limits`, in `period`.
    pub fn new(tenant: &Tenant, limits: Limits<'_>, counts: UsageCounts, period: Period) -> Self {
        let functional = limits.functional_scans();
        let security = limits.security_scans();
        Self {
            tenant_id: tenant.id().clone(),
            plan: limits.plan().clone(),
            scans_used: counts.functional,
            scans_limit: functional.limit(),
            security_scan_count: counts.security,
            monthly_security_scan_quota: security.limit(),
            approaching_limit: over_80_percent(counts.functional, functional)
                || over_80_percent(counts.security, security),
            quota_reset_date: period.end.midnight_rfc3339(),
            period_start: period.start.midnight_rfc3339(),
            period_end: format!("{}T23:59:59Z", period.end.day_before()),
            scans_running: 0,
            concurrent_scans_limit: limits.concurrent_scans(),
        }
    }
}

/// Reads usage snapshots: a cheap, cloneable handle for handlers, whose type names neither
/// the key store, the rate-limit store nor the quota store. Made by
/// [`NatLayer::usage_reader`](crate::NatLayer::usage_reader) or
/// [`QuotaGuardLayer::usage_reader`](super::QuotaGuardLayer::usage_reader); it reads the same
/// store and plan table as the layer.
#[derive(Clone)]
pub struct UsageReader {
    source: Arc<dyn ReadUsage>,
    running: Option<Arc<dyn CountRunning>>,
}

/// Counts a tenant's running scans (the concurrent-scan limit's store).
pub(crate) trait CountRunning: Send + Sync {
    fn count<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<u32, StoreError>>;
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait ReadUsage: Send + Sync {
    fn read<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Result<Usage, StoreError>>;
}

struct Source<Q> {
    store: Q,
    common: Common,
}

impl<Q: QuotaStore> ReadUsage for Source<Q> {
    fn read<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Result<Usage, StoreError>> {
        Box::pin(async move {
            let Some(limits) = self.common.plans.limits(tenant) else {
                return Err(StoreError::new(format!(
                    "the plan `{}` of tenant `{}` is not in the plan table",
                    tenant.plan(),
                    tenant.id()
                )));
            };
            let period = self.store.period(tenant.id(), self.common.clock.now());
            let counts = match self.store.usage(tenant.id(), period) {
                Answer::Ready(r) => r,
                Answer::Pending(f) => f.await,
            }
            .inspect_err(|_| crate::metrics::store_error("quota", "usage"))?;
            Ok(Usage::new(tenant, limits, counts, period))
        })
    }
}

impl UsageReader {
    pub(super) fn new<Q: QuotaStore>(store: Q, common: Common) -> Self {
        Self {
            source: Arc::new(Source { store, common }),
            running: None,
        }
    }

    /// Also counts running scans with `running`.
    pub(crate) fn counting(mut self, running: Arc<dyn CountRunning>) -> Self {
        self.running = Some(running);
        self
    }

    /// The usage snapshot of `tenant` now. A store error, or a tenant whose plan the table
    /// lacks, is an error (`?` in a handler returning `NatError` makes it the 500); store
    /// errors count in `nat_store_errors_total` (`op="usage"`, `op="running"`).
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        let mut usage = self.source.read(tenant).await?;
        if let Some(running) = &self.running {
            usage.scans_running = running
                .count(tenant.id())
                .await
                .inspect_err(|_| crate::metrics::store_error("slots", "running"))?;
        }
        Ok(usage)
    }
}

impl fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageReader").finish_non_exhaustive()
    }
}
