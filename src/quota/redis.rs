//! [`RedisQuotaStore`]: scan usage in Redis, shared by every instance and kept across
//! restarts.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use ::redis::Script;

use super::store::{OnceMark, Period, QuotaLimits, QuotaStore, Reservation, Reserved, UsageCounts};
use crate::{
    error::StoreError,
    plan::{Allowance, ScanKind},
    store::{
        Answer,
        known::{DEFAULT_CAPACITY, Known},
        redis::{RedisBackend, TimeSource},
    },
    tenant::TenantId,
};

/// The script (its keys, arguments and answer are described in its file).
const NOW: &str = include_str!("../../scripts/redis/quota_now.lua");

/// The script (its keys, arguments and answer are described in its file).
const RESERVE: &str = include_str!("../../scripts/redis/quota_reserve.lua");

/// The script (its keys, arguments and answer are described in its file).
const SETTLE: &str = include_str!("../../scripts/redis/quota_settle.lua");

/// How long usage keys outlive their period (so last month's usage can still be read).
const KEEP_AFTER_PERIOD: u64 = 40 * 86_400;

/// The default lifetime of a reservation: a request still running after this is no longer
/// counted as in flight, and is not charged when it completes.
pub const DEFAULT_RESERVATION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A quota store in Redis: reserve, commit and release are each one atomic script.
///
/// Per tenant and period it keeps a hash of used scans and two sorted sets of reservations
/// in flight, scored by when they lapse, so a reservation held by an instance that died is
/// dropped after [`reservation_lifetime`](RedisQuotaStore::reservation_lifetime). Every key
/// expires 40 days after its period ends.
///
/// **When Redis fails.** Settling is idempotent (a reservation is charged at most once), so a
/// settlement that fails is retried in the background with backoff (50 ms doubling to 2 s)
/// for as long as the reservation can still be charged; what cannot be settled in time is
/// reported through `tracing` and `nat_store_abandoned_total`. A reservation whose request
/// failed (Redis timed out, or the request future was dropped while waiting) may still be
/// made once Redis answers: its id is voided in the background, retried the same way, and a
/// voided id can no longer reserve, whichever of the two reaches Redis first.
///
/// **Exhausted quotas are answered locally.** Charged scans never decrease within a period,
/// so once Redis reports a tenant's charged scans at its limit, the store refuses that kind
/// of scan for the rest of the period without asking Redis again, for the same limits; a plan
/// change (other limits) or a new period asks Redis. It remembers this for at most
/// [`local_refusals`](RedisQuotaStore::local_refusals) tenants (default 10,000). This rests
/// on charged scans never going down: if usage is lowered in Redis by hand (a refund), or
/// Redis loses its data (run it with persistence), call
/// [`forget`](RedisQuotaStore::forget) or [`forget_all`](RedisQuotaStore::forget_all) on
/// every instance, or turn local answers off.
/// Requires the `redis` feature and a Tokio runtime.
#[derive(Clone)]
pub struct RedisQuotaStore {
    backend: RedisBackend,
    scripts: Arc<(Script, Script)>,
    lifetime: Duration,
    time: TimeSource,
    exhausted: Arc<Known<Exhausted>>,
    /// Held while a settlement claims its event marks and runs their callbacks, so that in
    /// this process the callbacks run in the order the marks were claimed (a scan past 80 %
    /// that claimed `approaching` calls back before a later scan's `exhausted`).
    marking: Arc<tokio::sync::Mutex<()>>,
}

/// A tenant whose charged scans reached a limit in a period.
#[derive(Clone, Copy, Debug)]
struct Exhausted {
    period: Period,
    limits: QuotaLimits,
    functional: bool,
    security: bool,
}

impl Exhausted {
    /// Whether a scan of `kind` is refused, for these limits in this period.
    fn refuses(&self, kind: ScanKind, limits: QuotaLimits, period: Period) -> bool {
        self.period == period
            && self.limits == limits
            && ((self.functional && kind.functional_cost() > 0)
                || (self.security && kind.security_cost() > 0))
    }
}

fn limit_arg(q: Allowance) -> i64 {
    match q {
        Allowance::Limited(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Allowance::Unlimited => -1,
    }
}

fn reached(used: i64, limit: Allowance) -> bool {
    match limit {
        Allowance::Limited(n) => u64::try_from(used).unwrap_or(0) >= n,
        Allowance::Unlimited => false,
    }
}

/// What a settlement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Charge,
    Release,
    /// Release, and stop the id from reserving if its reservation is still on its way.
    Void,
}

impl Settle {
    /// A charge, or a release.
    fn of(charge: bool) -> Self {
        if charge {
            Settle::Charge
        } else {
            Settle::Release
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Settle::Charge => "1",
            Settle::Release => "0",
            Settle::Void => "v",
        }
    }
}

impl RedisQuotaStore {
    /// A store on `backend`.
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            backend,
            scripts: Arc::new((
                Script::new(&format!("{NOW}{RESERVE}")),
                Script::new(&format!("{NOW}{SETTLE}")),
            )),
            lifetime: DEFAULT_RESERVATION_LIFETIME,
            time: TimeSource::Redis,
            exhausted: Arc::new(Known::new(DEFAULT_CAPACITY)),
            marking: Arc::default(),
        }
    }

    /// How long a reservation counts as in flight (default 15 minutes). Failed settlements
    /// are retried for as long.
    #[must_use]
    pub fn reservation_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whose clock reservation lifetimes run on (default: Redis's).
    #[must_use]
    pub fn time_source(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// For how many tenants an exhausted quota is remembered and answered without asking
    /// Redis (default 10,000; 0 asks Redis every time).
    #[must_use]
    pub fn local_refusals(mut self, tenants: usize) -> Self {
        self.exhausted = Arc::new(Known::new(tenants));
        self
    }

    /// Forgets that `tenant`'s quota is exhausted, so its next scan asks Redis: after its
    /// usage was lowered in Redis by hand.
    pub fn forget(&self, tenant: &TenantId) {
        self.exhausted.forget(tenant);
    }

    /// Forgets every exhausted quota (for example after Redis lost its data).
    pub fn forget_all(&self) {
        self.exhausted.clear();
    }

    /// How many tenants' exhausted quotas are remembered now.
    pub fn known_exhausted(&self) -> usize {
        self.exhausted.len()
    }

    /// The backend this store runs on.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    fn keys(&self, tenant: &str, period: Period) -> [String; 4] {
        let p = period.start.to_string();
        [
            self.backend.key("q", tenant, &[&p, "used"]),
            self.backend.key("q", tenant, &[&p, "rf"]),
            self.backend.key("q", tenant, &[&p, "rs"]),
            self.backend.key("q", tenant, &[&p, "void"]),
        ]
    }

    fn expire_at(period: Period) -> u64 {
        period.end.unix_seconds() + KEEP_AFTER_PERIOD
    }

    fn lifetime_us(&self) -> u64 {
        u64::try_from(self.lifetime.as_micros()).unwrap_or(u64::MAX)
    }

    /// Reserves one scan of `kind` with the handle `id` at `at`, as [`QuotaStore::reserve`]
    /// but awaited (and without the local answers: this always asks Redis).
    pub async fn reserve_async(
        &self,
        tenant: &TenantId,
        kind: ScanKind,
        limits: QuotaLimits,
        period: Period,
        id: u64,
        at: Duration,
    ) -> Result<Reserved, StoreError> {
        let now = self.time.arg(at);
        let mut invocation = self.scripts.0.prepare_invoke();
        for key in self.keys(tenant.as_str(), period) {
            invocation.key(key);
        }
        invocation
            .arg(limit_arg(limits.functional))
            .arg(limit_arg(limits.security))
            .arg(kind.functional_cost())
            .arg(kind.security_cost())
            .arg(id)
            .arg(self.lifetime_us())
            .arg(Self::expire_at(period))
            .arg(now);
        let mut conn = self.backend.connection();
        let reply: Vec<i64> = self
            .backend
            .bounded(invocation.invoke_async(&mut conn))
            .await?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(match reply[..] {
            [1, functional, security] => Reserved::Granted(
                Reservation::new(tenant.clone(), kind, period, id, at).ahead_of(UsageCounts {
                    functional: count(functional),
                    security: count(security),
                }),
            ),
            [0, functional, security] => {
                let functional = reached(functional, limits.functional);
                let security = reached(security, limits.security);
                if functional || security {
                    let known = Exhausted {
                        period,
                        limits,
                        functional,
                        security,
                    };
                    self.exhausted
                        .remember(tenant, known, |e| e.period.end > period.start);
                }
                Reserved::Exhausted
            }
            [2] => return Err(StoreError::new("the reservation id was voided")),
            _ => return Err(StoreError::new("unexpected reply from the quota script")),
        })
    }

    /// [`QuotaStore::once`], awaited: `true` if `mark` was not set (and now is, until
    /// `until`), `false` if another call set it first.
    pub async fn once_async(
        &self,
        mark: &str,
        now: Duration,
        until: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.backend.key("once", mark, &[]);
        let millis = u64::try_from(until.saturating_sub(now).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.backend.connection();
        let set: Option<String> = self
            .backend
            .bounded(
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Commits (`charge`) or releases a reservation, awaited: one attempt, no retry.
    pub async fn settle_async(
        &self,
        reservation: &Reservation,
        charge: bool,
    ) -> Result<(), StoreError> {
        self.settle_id(
            reservation.tenant(),
            reservation.period(),
            reservation.id(),
            reservation.made_at(),
            Settle::of(charge),
        )
        .await
    }

    async fn settle_id(
        &self,
        tenant: &TenantId,
        period: Period,
        id: u64,
        at: Duration,
        what: Settle,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.1.prepare_invoke();
        for key in self.keys(tenant.as_str(), period) {
            invocation.key(key);
        }
        invocation
            .arg(id)
            .arg(Self::expire_at(period))
            .arg(what.arg())
            .arg(self.time.arg(at))
            .arg(self.lifetime_us());
        let mut conn = self.backend.connection();
        let _: i64 = self
            .backend
            .bounded(invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// The usage of `tenant` in `period`, awaited.
    pub async fn usage_async(
        &self,
        tenant: &TenantId,
        period: Period,
    ) -> Result<UsageCounts, StoreError> {
        let [used, ..] = self.keys(tenant.as_str(), period);
        let mut conn = self.backend.connection();
        let (f, s): (Option<u64>, Option<u64>) = self
            .backend
            .bounded(
                ::redis::cmd("HMGET")
                    .arg(used)
                    .arg("f")
                    .arg("s")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(UsageCounts {
            functional: f.unwrap_or(0),
            security: s.unwrap_or(0),
        })
    }

    /// The reservations in flight for `tenant` in `period` (functional, security), counting
    /// lapsed ones not yet dropped: for operators and tests.
    pub async fn in_flight_async(
        &self,
        tenant: &TenantId,
        period: Period,
    ) -> Result<(u64, u64), StoreError> {
        let [_, rf, rs, _] = self.keys(tenant.as_str(), period);
        let mut conn = self.backend.connection();
        let f: u64 = self
            .backend
            .bounded(::redis::cmd("ZCARD").arg(rf).query_async(&mut conn))
            .await?;
        let s: u64 = self
            .backend
            .bounded(::redis::cmd("ZCARD").arg(rs).query_async(&mut conn))
            .await?;
        Ok((f, s))
    }

    /// Settles in the background, retrying until Redis answers or the reservation has lapsed.
    fn settle_in_background(
        &self,
        tenant: TenantId,
        period: Period,
        id: u64,
        at: Duration,
        what: Settle,
    ) {
        let store = self.clone();
        let op = match what {
            Settle::Charge => "settle",
            Settle::Release | Settle::Void => "release",
        };
        self.backend
            .retry_in_background(("quota", op), self.lifetime, move || {
                let (store, tenant) = (store.clone(), tenant.clone());
                async move { store.settle_id(&tenant, period, id, at, what).await }
            });
    }
}

/// Voids a reservation whose answer never arrived: armed while the reserve call is on its
/// way, disarmed when Redis answered. Dropped armed (an error, a timeout, a dropped request
/// future), it voids the id in the background.
struct VoidUnlessAnswered {
    store: RedisQuotaStore,
    tenant: TenantId,
    period: Period,
    id: u64,
    at: Duration,
    armed: bool,
}

impl VoidUnlessAnswered {
    /// Redis answered (even with a refusal): nothing is on its way any more.
    fn answered(&mut self) {
        self.armed = false;
    }
}

impl Drop for VoidUnlessAnswered {
    fn drop(&mut self) {
        if self.armed {
            self.store.settle_in_background(
                self.tenant.clone(),
                self.period,
                self.id,
                self.at,
                Settle::Void,
            );
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

impl QuotaStore for RedisQuotaStore {
    type ReserveFuture = BoxFuture<Reserved>;
    type UsageFuture = BoxFuture<UsageCounts>;
    type SettleFuture = BoxFuture<()>;

    fn reserve(
        &self,
        tenant: &TenantId,
        kind: ScanKind,
        limits: QuotaLimits,
        period: Period,
        now: Duration,
    ) -> Answer<Reserved, Self::ReserveFuture> {
        if let Some(known) = self.exhausted.get(tenant) {
            if known.refuses(kind, limits, period) {
                crate::metrics::local_answer("quota", "exhausted");
                return Answer::Ready(Ok(Reserved::Exhausted));
            }
            if known.period != period || known.limits != limits {
                self.exhausted.forget(tenant);
            }
        }
        let mut id = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut id) {
            return Answer::Ready(Err(StoreError::new(e.to_string())));
        }
        let id = u64::from_le_bytes(id);
        let mut guard = VoidUnlessAnswered {
            store: self.clone(),
            tenant: tenant.clone(),
            period,
            id,
            at: now,
            armed: true,
        };
        Answer::Pending(Box::pin(async move {
            let answer = guard
                .store
                .reserve_async(&guard.tenant, kind, limits, period, id, now)
                .await;
            if answer.is_ok() {
                guard.answered();
            }
            answer
        }))
    }

    fn settle(&self, reservation: &Reservation, charge: bool) -> Answer<(), Self::SettleFuture> {
        let (store, reservation) = (self.clone(), reservation.clone());
        Answer::Pending(Box::pin(async move {
            if let Err(error) = store.settle_async(&reservation, charge).await {
                // Settling is idempotent: try again in the background, and answer now.
                crate::report::failure("quota store (settlement; retrying)", &error);
                crate::metrics::store_error("quota", if charge { "settle" } else { "release" });
                store.settle_detached(&reservation, charge);
            }
            Ok(())
        }))
    }

    fn settle_detached(&self, reservation: &Reservation, charge: bool) {
        self.settle_in_background(
            reservation.tenant().clone(),
            reservation.period(),
            reservation.id(),
            reservation.made_at(),
            Settle::of(charge),
        );
    }

    fn usage(&self, tenant: &TenantId, period: Period) -> Answer<UsageCounts, Self::UsageFuture> {
        let (store, tenant) = (self.clone(), tenant.clone());
        Answer::Pending(Box::pin(
            async move { store.usage_async(&tenant, period).await },
        ))
    }

    /// `SET mark NX` with an expiry at `until` for each mark in turn, in the background; a
    /// mark's action runs if it was set.
    fn once(&self, marks: Vec<OnceMark>, now: Duration, until: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            // Rare (a quota's 80 % and 100 %), so one lock for the whole store costs nothing.
            let _claiming = store.marking.lock().await;
            for OnceMark { mark, then } in marks {
                match store.once_async(&mark, now, until).await {
                    Ok(true) => then(),
                    Ok(false) => {}
                    Err(error) => {
                        crate::report::failure("quota store (once)", &error);
                        crate::metrics::store_error("quota", "once");
                    }
                }
            }
        });
    }
}

impl fmt::Debug for RedisQuotaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotaStore")
            .field("backend", &self.backend)
            .field("reservation_lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}
