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

/// The script (its keys, arguments and answer are described in its file).
const ACQUIRE: &str = include_str!("../../scripts/redis/slots_acquire.lua");

/// The script (its keys, arguments and answer are described in its file).
const VOID: &str = include_str!("../../scripts/redis/slots_void.lua");

/// The script (its keys, arguments and answer are described in its file).
const RUNNING: &str = include_str!("../../scripts/redis/slots_running.lua");

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Running scans in Redis: one sorted set per tenant (slot id → when it lapses), one script
/// per acquisition, so two instances on one Redis never hold more slots than the limit
/// together. Time is Redis's own by default, as for the other Redis stores.
///
/// **When Redis fails.** A release that fails is retried in the background with backoff
/// (50 ms doubling to 2 s) for up to [`retry_for`](RedisSlotStore::retry_for) (default one
/// hour); giving up is reported through `tracing` and `nat_store_abandoned_total`, and the
/// slot then lapses by itself. An acquisition whose answer never arrived (Redis timed out, or
/// the request future was dropped while waiting) is voided in the background the same way: a
/// voided id can no longer take a slot, whichever reaches Redis first.
#[derive(Clone)]
pub struct RedisSlotStore {
    backend: RedisBackend,
    acquire: Script,
    void: Script,
    running: Script,
    time: TimeSource,
    retry_for: Duration,
}

/// How long failed releases are retried by default.
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(3600);

impl RedisSlotStore {
    /// Slots in `backend`'s Redis, on Redis's clock.
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            backend,
            acquire: Script::new(ACQUIRE),
            void: Script::new(VOID),
            running: Script::new(RUNNING),
            time: TimeSource::default(),
            retry_for: DEFAULT_RETRY_FOR,
        }
    }

    /// How long a failed release (or void) is retried in the background (default one hour:
    /// the default `max_scan_duration`, after which the slot lapses anyway).
    #[must_use]
    pub fn retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
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

    fn void_key(&self, tenant: &TenantId) -> String {
        self.backend.key("slots", tenant.as_str(), &["void"])
    }

    /// Frees `slot` and stops it from being taken later, keeping its id `keep` long.
    async fn void_async(
        &self,
        slot: &Slot,
        keep: Duration,
        now: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.backend.connection();
        let mut call = self.void.key(self.key(&slot.tenant));
        call.key(self.void_key(&slot.tenant))
            .arg(&slot.id)
            .arg(u64::try_from(keep.as_micros()).unwrap_or(u64::MAX))
            .arg(self.time.arg(now));
        let _: i64 = self.backend.bounded(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    fn release_in_background(&self, slot: Slot) {
        let store = self.clone();
        self.backend
            .retry_in_background(("slots", "release"), self.retry_for, move || {
                let (store, slot) = (store.clone(), slot.clone());
                async move { store.release_async(&slot).await }
            });
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
        self.acquire_slot(slot, limit, now, lapse).await
    }

    async fn acquire_slot(
        &self,
        slot: Slot,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Result<Acquired, StoreError> {
        let mut conn = self.backend.connection();
        let mut call = self.acquire.key(self.key(&slot.tenant));
        call.key(self.void_key(&slot.tenant))
            .arg(limit)
            .arg(&slot.id)
            .arg(u64::try_from(lapse.as_micros()).unwrap_or(u64::MAX))
            .arg(self.time.arg(now));
        let taken: i64 = self.backend.bounded(call.invoke_async(&mut conn)).await?;
        match taken {
            1 => Ok(Acquired::Granted(slot)),
            0 => Ok(Acquired::Full),
            _ => Err(StoreError::new("the slot id was voided")),
        }
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
        let slot = match Slot::random(tenant) {
            Ok(slot) => slot,
            Err(error) => return Answer::Ready(Err(error)),
        };
        let mut guard = VoidUnlessAnswered {
            store: self.clone(),
            slot: Some(slot.clone()),
            keep: lapse,
            now,
        };
        Answer::Pending(Box::pin(async move {
            let answer = guard.store.acquire_slot(slot, limit, now, lapse).await;
            if answer.is_ok() {
                guard.answered();
            }
            answer
        }))
    }

    fn release(&self, slot: &Slot) -> Answer<(), Self::ReleaseFuture> {
        let (store, slot) = (self.clone(), slot.clone());
        Answer::Pending(Box::pin(async move {
            if let Err(error) = store.release_async(&slot).await {
                crate::report::failure("slot store (release; retrying)", &error);
                crate::metrics::store_error("slots", "release");
                store.release_in_background(slot);
            }
            Ok(())
        }))
    }

    fn release_detached(&self, slot: &Slot) {
        self.release_in_background(slot.clone());
    }

    fn running(&self, tenant: &TenantId, now: Duration) -> Answer<u32, Self::CountFuture> {
        let (store, tenant) = (self.clone(), tenant.clone());
        Answer::Pending(Box::pin(
            async move { store.running_async(&tenant, now).await },
        ))
    }
}

/// Voids a slot whose acquisition was never answered: the slot while the call is on its way,
/// `None` once Redis answered.
struct VoidUnlessAnswered {
    store: RedisSlotStore,
    slot: Option<Slot>,
    keep: Duration,
    now: Duration,
}

impl VoidUnlessAnswered {
    /// Redis answered: nothing is on its way any more.
    fn answered(&mut self) {
        self.slot = None;
    }
}

impl Drop for VoidUnlessAnswered {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let (store, keep, now) = (self.store.clone(), self.keep, self.now);
            self.store.backend.retry_in_background(
                ("slots", "release"),
                self.store.retry_for,
                move || {
                    let (store, slot) = (store.clone(), slot.clone());
                    async move { store.void_async(&slot, keep, now).await }
                },
            );
        }
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
