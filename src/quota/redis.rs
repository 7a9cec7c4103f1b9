//! [`RedisQuotaStore`]: scan usage in Redis, shared by every instance and kept across
//! restarts.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use ::redis::Script;

use super::store::{Period, QuotaLimits, QuotaStore, Reservation, Reserved, UsageCounts};
use crate::{
    error::StoreError,
    plan::{Allowance, ScanKind},
    store::{
        Answer,
        redis::{RedisBackend, TimeSource},
    },
    tenant::TenantId,
};

/// The current time in microseconds: `ARGV[i]` when given, Redis's `TIME` otherwise; and
/// `ttl(expire_at_s)`, the seconds from now until then (at least a minute).
const NOW: &str = r"
local function now_us(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function ttl(expire_at_s, now)
  return math.max(60, math.floor(tonumber(expire_at_s) - now / 1000000))
end
";

/// KEYS: used (hash f, s), functional reservations (zset), security reservations (zset).
/// ARGV: limit_f, limit_s (-1: unlimited), need_f, need_s, id, lifetime_us, expire_at_s,
/// now_us ('' for Redis TIME). Expired reservations (an instance that died mid-request) are
/// dropped first. Returns `{1, functional ahead, security ahead}` when granted (used and
/// reserved before this reservation), `{0}` otherwise.
const RESERVE: &str = r"
local now = now_us(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local used = redis.call('HMGET', KEYS[1], 'f', 's')
local uf = tonumber(used[1]) or 0
local us = tonumber(used[2]) or 0
local lf = tonumber(ARGV[1])
local ls = tonumber(ARGV[2])
local nf = tonumber(ARGV[3])
local ns = tonumber(ARGV[4])
local af = uf + redis.call('ZCARD', KEYS[2])
local as = us + redis.call('ZCARD', KEYS[3])
if nf > 0 and lf >= 0 and af + nf > lf then return {0} end
if ns > 0 and ls >= 0 and as + ns > ls then return {0} end
local expires = now + tonumber(ARGV[6])
if nf > 0 then redis.call('ZADD', KEYS[2], expires, ARGV[5]) end
if ns > 0 then redis.call('ZADD', KEYS[3], expires, ARGV[5]) end
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], ttl(ARGV[7], now)) end
return {1, af, as}
";

/// KEYS as for RESERVE; ARGV: id, expire_at_s, charge (1 or 0), now_us. A reservation that
/// already lapsed is not charged.
const SETTLE: &str = r"
local now = now_us(ARGV[4])
local f = redis.call('ZREM', KEYS[2], ARGV[1])
local s = redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == '1' then
  if f > 0 then redis.call('HINCRBY', KEYS[1], 'f', 1) end
  if s > 0 then redis.call('HINCRBY', KEYS[1], 's', 1) end
  redis.call('EXPIRE', KEYS[1], ttl(ARGV[2], now))
end
return f + s
";

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
/// expires 40 days after its period ends. Settling is idempotent (a reservation is charged at
/// most once); when a request future is dropped it runs in the background, and failures are
/// reported through `tracing`.
/// Requires the `redis` feature and a Tokio runtime.
#[derive(Clone)]
pub struct RedisQuotaStore {
    backend: RedisBackend,
    scripts: Arc<(Script, Script)>,
    lifetime: Duration,
    time: TimeSource,
}

fn limit_arg(q: Allowance) -> i64 {
    match q {
        Allowance::Limited(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Allowance::Unlimited => -1,
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
        }
    }

    /// How long a reservation counts as in flight (default 15 minutes).
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

    fn keys(&self, tenant: &str, period: Period) -> [String; 3] {
        let p = period.start.to_string();
        [
            self.backend.key("q", tenant, &[&p, "used"]),
            self.backend.key("q", tenant, &[&p, "rf"]),
            self.backend.key("q", tenant, &[&p, "rs"]),
        ]
    }

    fn expire_at(period: Period) -> u64 {
        period.end.unix_seconds() + KEEP_AFTER_PERIOD
    }

    /// Reserves one scan of `kind` with the handle `id` at `at`, as [`QuotaStore::reserve`]
    /// but awaited.
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
            .arg(u64::try_from(self.lifetime.as_micros()).unwrap_or(u64::MAX))
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
            _ => Reserved::Exhausted,
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

    /// Commits (`charge`) or releases a reservation, awaited.
    pub async fn settle_async(
        &self,
        reservation: &Reservation,
        charge: bool,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.1.prepare_invoke();
        for key in self.keys(reservation.tenant().as_str(), reservation.period()) {
            invocation.key(key);
        }
        invocation
            .arg(reservation.id())
            .arg(Self::expire_at(reservation.period()))
            .arg(if charge { "1" } else { "0" })
            .arg(self.time.arg(reservation.made_at()));
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
        let [used, _, _] = self.keys(tenant.as_str(), period);
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

    fn settle_in_background(&self, reservation: &Reservation, charge: bool) {
        let store = self.clone();
        let reservation = reservation.clone();
        let run = async move {
            if let Err(error) = store.settle_async(&reservation, charge).await {
                tracing::error!(
                    target: "tower_nat",
                    tenant = reservation.tenant().as_str(),
                    charge,
                    error = %error,
                    "quota store could not settle a reservation; it lapses by itself"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(run);
            }
            Err(_) => tracing::error!(
                target: "tower_nat",
                "RedisQuotaStore used outside a Tokio runtime; the reservation lapses by itself"
            ),
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
        let mut id = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut id) {
            return Answer::Ready(Err(StoreError::new(e.to_string())));
        }
        let (store, tenant) = (self.clone(), tenant.clone());
        let id = u64::from_le_bytes(id);
        Answer::Pending(Box::pin(async move {
            store
                .reserve_async(&tenant, kind, limits, period, id, now)
                .await
        }))
    }

    fn settle(&self, reservation: &Reservation, charge: bool) -> Answer<(), Self::SettleFuture> {
        let (store, reservation) = (self.clone(), reservation.clone());
        Answer::Pending(Box::pin(async move {
            store.settle_async(&reservation, charge).await
        }))
    }

    fn settle_detached(&self, reservation: &Reservation, charge: bool) {
        self.settle_in_background(reservation, charge);
    }

    fn usage(&self, tenant: &TenantId, period: Period) -> Answer<UsageCounts, Self::UsageFuture> {
        let (store, tenant) = (self.clone(), tenant.clone());
        Answer::Pending(Box::pin(
            async move { store.usage_async(&tenant, period).await },
        ))
    }

    /// `SET mark NX` with an expiry at `until`, in the background; `then` runs if it was set.
    fn once(&self, mark: &str, now: Duration, until: Duration, then: Box<dyn FnOnce() + Send>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, mark) = (self.clone(), mark.to_owned());
        runtime.spawn(async move {
            match store.once_async(&mark, now, until).await {
                Ok(true) => then(),
                Ok(false) => {}
                Err(error) => {
                    crate::report::failure("quota store (once)", &error);
                    crate::metrics::store_error("quota", "once");
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
