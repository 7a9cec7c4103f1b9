//! [`RedisSlotStore`]: running scans in Redis, exact across instances.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use ::redis::Script;

use super::store::{Acquired, Slot, SlotStore};
use crate::{
    error::StoreError,
    store::{
        Answer,
        redis::{RedisBackend, TimeSource},
    },
    tenant::TenantId,
};

/// KEYS: the tenant's slots (a sorted set: slot id → lapse time in µs). ARGV: limit, id,
/// lapse_us, now_us ('' for Redis `TIME`). Lapsed slots are dropped first. 1 when taken.
const ACQUIRE: &str = r"
local now
if ARGV[4] ~= '' then now = tonumber(ARGV[4]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lapse = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lapse, ARGV[2])
local longest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((longest - now) / 1000) + 1000)
return 1
";

/// KEYS as for ACQUIRE; ARGV: now_us ('' for Redis `TIME`). The slots held now.
const RUNNING: &str = r"
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
";

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Running scans in Redis: one sorted set per tenant (slot id → when it lapses), one script
/// per acquisition, so two instances on one Redis never hold more slots than the limit
/// together. Time is Redis's own by default, as for the other Redis stores.
#[derive(Clone)]
pub struct RedisSlotStore {
    backend: RedisBackend,
    acquire: Script,
    running: Script,
    time: TimeSource,
}

impl RedisSlotStore {
    /// Slots in `backend`'s Redis, on Redis's clock.
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            backend,
            acquire: Script::new(ACQUIRE),
            running: Script::new(RUNNING),
            time: TimeSource::default(),
        }
    }

    /// Whose clock lapses are measured with.
    #[must_use]
    pub fn time_source(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    fn key(&self, tenant: &TenantId) -> String {
        self.backend.key("slots", tenant.as_str(), &[])
    }

    /// [`SlotStore::acquire`], as an `async fn`.
    pub async fn acquire_async(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Result<Acquired, StoreError> {
        let slot = Slot::random(tenant)?;
        let mut conn = self.backend.connection();
        let mut call = self.acquire.key(self.key(tenant));
        call.arg(limit)
            .arg(&slot.id)
            .arg(u64::try_from(lapse.as_micros()).unwrap_or(u64::MAX))
            .arg(self.time.arg(now));
        let taken: i64 = self.backend.bounded(call.invoke_async(&mut conn)).await?;
        Ok(if taken == 1 {
            Acquired::Granted(slot)
        } else {
            Acquired::Full
        })
    }

    /// [`SlotStore::release`], as an `async fn`.
    pub async fn release_async(&self, slot: &Slot) -> Result<(), StoreError> {
        let mut conn = self.backend.connection();
        let key = self.key(&slot.tenant);
        let removed: Result<i64, _> = self
            .backend
            .bounded(
                ::redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&slot.id)
                    .query_async(&mut conn),
            )
            .await;
        removed.map(drop)
    }

    /// [`SlotStore::running`], as an `async fn`.
    pub async fn running_async(&self, tenant: &TenantId, now: Duration) -> Result<u32, StoreError> {
        let mut conn = self.backend.connection();
        let mut call = self.running.key(self.key(tenant));
        call.arg(self.time.arg(now));
        let count: i64 = self.backend.bounded(call.invoke_async(&mut conn)).await?;
        Ok(u32::try_from(count).unwrap_or(0))
    }
}

impl SlotStore for RedisSlotStore {
    type AcquireFuture = BoxFuture<Acquired>;
    type ReleaseFuture = BoxFuture<()>;
    type CountFuture = BoxFuture<u32>;

    fn acquire(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Answer<Acquired, Self::AcquireFuture> {
        let (store, tenant) = (self.clone(), tenant.clone());
        Answer::Pending(Box::pin(async move {
            store.acquire_async(&tenant, limit, now, lapse).await
        }))
    }

    fn release(&self, slot: &Slot) -> Answer<(), Self::ReleaseFuture> {
        let (store, slot) = (self.clone(), slot.clone());
        Answer::Pending(Box::pin(async move { store.release_async(&slot).await }))
    }

    fn release_detached(&self, slot: &Slot) {
        let (store, slot) = (self.clone(), slot.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.release_async(&slot).await {
                    crate::report::failure("slot store (release)", &error);
                    crate::metrics::store_error("slots", "release");
                }
            });
        }
    }

    fn running(&self, tenant: &TenantId, now: Duration) -> Answer<u32, Self::CountFuture> {
        let (store, tenant) = (self.clone(), tenant.clone());
        Answer::Pending(Box::pin(
            async move { store.running_async(&tenant, now).await },
        ))
    }
}

impl fmt::Debug for RedisSlotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSlotStore")
            .field("backend", &self.backend)
            .field("time", &self.time)
            .finish()
    }
}
