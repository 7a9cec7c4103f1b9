//! Quota stores: the [`QuotaStore`] trait and the in-memory [`MemoryQuotaStore`].

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use dashmap::DashMap;

use crate::{
    clock::UtcDate,
    error::StoreError,
    plan::{Allowance, ScanKind},
    store::Answer,
    tenant::TenantId,
};

/// A quota period: from `start` (inclusive) to `end` (exclusive), both at 00:00:00Z. `end` is
/// the `quota_reset_date`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    /// The first day of the period.
    pub start: UtcDate,
    /// The first day of the next period: when the quota resets.
    pub end: UtcDate,
}

impl Period {
    /// The calendar month in UTC that contains `now` (time since the Unix epoch).
    pub fn calendar_month(now: Duration) -> Self {
        let today = UtcDate::from_unix(now);
        Self {
            start: today.first_of_month(),
            end: today.first_of_next_month(),
        }
    }
}

/// The quotas a reservation is checked against (from the tenant's current plan and its own
/// limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Functional scans a period.
    pub functional: Allowance,
    /// Security scans a period.
    pub security: Allowance,
}

/// Scans used in a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Functional scans charged.
    pub functional: u64,
    /// Security scans charged.
    pub security: u64,
}

/// A held reservation: scans set aside for one request until it is committed (charged) or
/// released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    tenant: TenantId,
    kind: ScanKind,
    period: Period,
    id: u64,
    at: Duration,
    ahead: UsageCounts,
}

impl Reservation {
    /// A reservation of `kind` for `tenant` in `period`, made at `at` (the layer's clock);
    /// `id` is the store's own handle.
    pub fn new(tenant: TenantId, kind: ScanKind, period: Period, id: u64, at: Duration) -> Self {
        Self {
            tenant,
            kind,
            period,
            id,
            at,
            ahead: UsageCounts::default(),
        }
    }

    /// The same reservation, with the scans used and reserved before it when it was made
    /// (for quota events: where it stands in the quota).
    #[must_use]
    pub fn ahead_of(mut self, ahead: UsageCounts) -> Self {
        self.ahead = ahead;
        self
    }

    /// The scans used and reserved before this one when it was made.
    pub fn ahead(&self) -> UsageCounts {
        self.ahead
    }

    /// When it was made (the layer's clock, time since the Unix epoch).
    pub fn made_at(&self) -> Duration {
        self.at
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The scan kind (a `full` scan holds one functional and one security scan).
    pub fn kind(&self) -> ScanKind {
        self.kind
    }

    /// The period it counts in.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The store's handle.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The answer of [`QuotaStore::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The scans are set aside.
    Granted(Reservation),
    /// The quota (or one of the two, for `full`) has no room.
    Exhausted,
}

/// Where scan usage lives.
///
/// Contract: `reserve` is atomic (concurrent reservations never exceed a quota: used plus
/// reserved stays within it) and all-or-nothing for `full`; `settle` with `charge` turns a
/// reservation into usage, without it drops the reservation. [`QuotaGuard`](super::QuotaGuard)
/// awaits `settle` before it answers, so the next request sees the result;
/// `settle_detached` does the same without waiting, for a request future that is dropped
/// (it must not block; a remote store finishes it in the background). A store whose
/// `settle` answers later must make settling the same reservation twice harmless.
pub trait QuotaStore: Clone + Send + Sync + 'static {
    /// The future of a reservation that cannot answer at once.
    type ReserveFuture: Future<Output = Result<Reserved, StoreError>> + Send;
    /// The future of a usage read that cannot answer at once.
    type UsageFuture: Future<Output = Result<UsageCounts, StoreError>> + Send;
    /// The future of a settlement that cannot answer at once.
    type SettleFuture: Future<Output = Result<(), StoreError>> + Send + 'static;

    /// The quota period of `tenant` at `now`. The default is the calendar month in UTC.
    fn period(&self, tenant: &TenantId, now: Duration) -> Period {
        let _ = tenant;
        Period::calendar_month(now)
    }

    /// Reserves one scan of `kind` for `tenant` in `period`, if `limits` leave room; `now` is
    /// the layer's clock.
    fn reserve(
        &self,
        tenant: &TenantId,
        kind: ScanKind,
        limits: QuotaLimits,
        period: Period,
        now: Duration,
    ) -> Answer<Reserved, Self::ReserveFuture>;

    /// Charges a reservation (`charge`) or drops it without charging.
    fn settle(&self, reservation: &Reservation, charge: bool) -> Answer<(), Self::SettleFuture>;

    /// Like [`settle`](Self::settle), without waiting for the answer.
    fn settle_detached(&self, reservation: &Reservation, charge: bool);

    /// The scans `tenant` was charged in `period`.
    fn usage(&self, tenant: &TenantId, period: Period) -> Answer<UsageCounts, Self::UsageFuture>;

    /// For each mark in turn, runs its action if no call with the same mark ran before
    /// `until` (time since the Unix epoch), across every instance sharing the store: how
    /// quota events are sent once per tenant, threshold and period, in order. It must not
    /// block; a remote store decides in the background, one mark after the other.
    fn once(&self, marks: Vec<OnceMark>, now: Duration, until: Duration);
}

/// A mark of [`QuotaStore::once`], and what runs if it was not set before.
pub struct OnceMark {
    /// The mark.
    pub mark: String,
    /// What runs if the mark was not set.
    pub then: Box<dyn FnOnce() + Send>,
}

impl fmt::Debug for OnceMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnceMark")
            .field("mark", &self.mark)
            .finish_non_exhaustive()
    }
}

/// The in-memory quota store: one small mutex-guarded record per tenant that has scanned.
///
/// Usage is kept for the current period only; a new period starts from zero.
#[derive(Clone, Default)]
pub struct MemoryQuotaStore {
    tenants: Arc<DashMap<TenantId, Mutex<Record>>>,
    // Marks of `once`, until when each holds.
    marks: Arc<DashMap<String, Duration>>,
}

#[derive(Debug)]
struct Record {
    period: Period,
    used: UsageCounts,
    // In flight, whatever period they were reserved in.
    reserved: UsageCounts,
}

fn fits(quota: Allowance, used: u64, reserved: u64, need: u64) -> bool {
    match quota {
        Allowance::Unlimited => true,
        Allowance::Limited(limit) => need == 0 || used + reserved + need <= limit,
    }
}

impl MemoryQuotaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans in flight (reserved, neither committed nor released) for `tenant`.
    pub fn in_flight(&self, tenant: &str) -> UsageCounts {
        self.tenants
            .get(tenant)
            .map(|r| lock(&r).reserved)
            .unwrap_or_default()
    }

    /// Drops the records of tenants with nothing in flight whose period ended before `now`;
    /// returns how many were dropped. (A record is kept for the current period only, so this
    /// is what bounds memory across months.)
    pub fn evict_stale(&self, now: Duration) -> usize {
        let today = UtcDate::from_unix(now);
        let before = self.tenants.len();
        self.tenants.retain(|_, record| {
            let r = lock(record);
            r.period.end > today || r.reserved != UsageCounts::default()
        });
        let after = self.tenants.len();
        if after.saturating_mul(4) < self.tenants.capacity() {
            self.tenants.shrink_to_fit();
        }
        before.saturating_sub(after)
    }

    /// The reservation logic, synchronously.
    pub fn reserve_now(
        &self,
        tenant: &TenantId,
        kind: ScanKind,
        limits: QuotaLimits,
        period: Period,
        now: Duration,
    ) -> Reserved {
        let record = match self.tenants.get(tenant.as_str()) {
            Some(record) => record,
            None => self
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| {
                    Mutex::new(Record {
                        period,
                        used: UsageCounts::default(),
                        reserved: UsageCounts::default(),
                    })
                })
                .downgrade(),
        };
        let mut r = lock(&record);
        if r.period != period {
            r.period = period;
            r.used = UsageCounts::default();
        }
        let (f, s) = (kind.functional_cost(), kind.security_cost());
        if !fits(
            limits.functional,
            r.used.functional,
            r.reserved.functional,
            f,
        ) || !fits(limits.security, r.used.security, r.reserved.security, s)
        {
            return Reserved::Exhausted;
        }
        let ahead = UsageCounts {
            functional: r.used.functional + r.reserved.functional,
            security: r.used.security + r.reserved.security,
        };
        r.reserved.functional += f;
        r.reserved.security += s;
        Reserved::Granted(Reservation::new(tenant.clone(), kind, period, 0, now).ahead_of(ahead))
    }

    /// Charges (`charge`) or drops a reservation, synchronously.
    pub fn settle_now(&self, reservation: &Reservation, charge: bool) {
        let Some(record) = self.tenants.get(reservation.tenant.as_str()) else {
            return;
        };
        let mut r = lock(&record);
        let (f, s) = (
            reservation.kind.functional_cost(),
            reservation.kind.security_cost(),
        );
        r.reserved.functional = r.reserved.functional.saturating_sub(f);
        r.reserved.security = r.reserved.security.saturating_sub(s);
        // A scan reserved in a period that has since ended counts in that period, which is
        // no longer kept.
        if charge && r.period == reservation.period {
            r.used.functional += f;
            r.used.security += s;
        }
    }

    /// The usage of `tenant` in `period`, synchronously.
    pub fn usage_now(&self, tenant: &str, period: Period) -> UsageCounts {
        self.tenants
            .get(tenant)
            .map(|record| {
                let r = lock(&record);
                if r.period == period {
                    r.used
                } else {
                    UsageCounts::default()
                }
            })
            .unwrap_or_default()
    }
}

/// Locks a record; a poisoned lock (a panic while holding it, which the code above cannot do)
/// still yields the data.
fn lock(m: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl QuotaStore for MemoryQuotaStore {
    type ReserveFuture = std::future::Pending<Result<Reserved, StoreError>>;
    type UsageFuture = std::future::Pending<Result<UsageCounts, StoreError>>;
    type SettleFuture = std::future::Pending<Result<(), StoreError>>;

    fn reserve(
        &self,
        tenant: &TenantId,
        kind: ScanKind,
        limits: QuotaLimits,
        period: Period,
        now: Duration,
    ) -> Answer<Reserved, Self::ReserveFuture> {
        Answer::Ready(Ok(self.reserve_now(tenant, kind, limits, period, now)))
    }

    fn settle(&self, reservation: &Reservation, charge: bool) -> Answer<(), Self::SettleFuture> {
        self.settle_now(reservation, charge);
        Answer::Ready(Ok(()))
    }

    fn settle_detached(&self, reservation: &Reservation, charge: bool) {
        self.settle_now(reservation, charge);
    }

    fn usage(&self, tenant: &TenantId, period: Period) -> Answer<UsageCounts, Self::UsageFuture> {
        Answer::Ready(Ok(self.usage_now(tenant.as_str(), period)))
    }

    fn once(&self, marks: Vec<OnceMark>, now: Duration, until: Duration) {
        if self.marks.len() >= 1024 {
            self.marks.retain(|_, until| *until > now);
        }
        for OnceMark { mark, then } in marks {
            let fresh = match self.marks.entry(mark) {
                dashmap::Entry::Occupied(mut seen) if *seen.get() <= now => {
                    seen.insert(until);
                    true
                }
                dashmap::Entry::Occupied(_) => false,
                dashmap::Entry::Vacant(v) => {
                    v.insert(until);
                    true
                }
            };
            if fresh {
                then();
            }
        }
    }
}

impl fmt::Debug for MemoryQuotaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryQuotaStore")
            .field("tenants", &self.tenants.len())
            .finish()
    }
}
