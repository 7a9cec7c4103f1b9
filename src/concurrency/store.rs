//! Slot stores: the [`SlotStore`] trait and the in-memory [`MemorySlotStore`].

use std::{fmt, future::Future, sync::Arc, time::Duration};

use dashmap::DashMap;

use crate::{error::StoreError, store::Answer, tenant::TenantId};

/// One running scan's slot: its tenant and an id the layer made.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The tenant whose scan holds it.
    pub tenant: TenantId,
    /// The slot's id (16 hex digits), to release it by.
    pub id: String,
}

impl Slot {
    /// A new slot with a random id for `tenant`.
    pub fn random(tenant: &TenantId) -> Result<Self, StoreError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::new(e.to_string()))?;
        Ok(Self {
            tenant: tenant.clone(),
            id: format!("{:016x}", u64::from_le_bytes(bytes)),
        })
    }
}

/// Whether a slot was free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Taken: the scan may start.
    Granted(Slot),
    /// Every slot of the tenant is held.
    Full,
}

/// Where running scans are counted. Each call is atomic: concurrent acquisitions never hold
/// more slots than the limit.
pub trait SlotStore: Clone + Send + Sync + 'static {
    /// The future of an acquisition that cannot answer at once.
    type AcquireFuture: Future<Output = Result<Acquired, StoreError>> + Send;
    /// The future of a release.
    type ReleaseFuture: Future<Output = Result<(), StoreError>> + Send + 'static;
    /// The future of a count.
    type CountFuture: Future<Output = Result<u32, StoreError>> + Send;

    /// Takes one of `tenant`'s `limit` slots at `now`, if one is free; it lapses by itself at
    /// `now + lapse` (a scan that never reports back). Lapsed slots are free.
    fn acquire(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Answer<Acquired, Self::AcquireFuture>;

    /// Frees `slot` (nothing happens if it is free already).
    fn release(&self, slot: &Slot) -> Answer<(), Self::ReleaseFuture>;

    /// Frees `slot` without waiting (from `Drop`).
    fn release_detached(&self, slot: &Slot);

    /// How many of `tenant`'s slots are held at `now`.
    fn running(&self, tenant: &TenantId, now: Duration) -> Answer<u32, Self::CountFuture>;
}

/// Slots in memory: per tenant, a short list of slot ids and when each lapses, under the
/// tenant's map entry lock (so acquisitions are exact).
#[derive(Clone, Default)]
pub struct MemorySlotStore {
    slots: Arc<DashMap<TenantId, Vec<(String, Duration)>>>,
}

impl MemorySlotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`SlotStore::acquire`], answered at once.
    pub fn acquire_now(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Result<Acquired, StoreError> {
        let slot = Slot::random(tenant)?;
        let mut held = self.slots.entry(tenant.clone()).or_default();
        held.retain(|(_, until)| *until > now);
        if held.len() >= limit as usize {
            return Ok(Acquired::Full);
        }
        held.push((slot.id.clone(), now.saturating_add(lapse)));
        Ok(Acquired::Granted(slot))
    }

    /// [`SlotStore::release`], at once.
    pub fn release_now(&self, slot: &Slot) {
        let emptied = match self.slots.get_mut(&slot.tenant) {
            Some(mut held) => {
                held.retain(|(id, _)| *id != slot.id);
                held.is_empty()
            }
            None => false,
        };
        if emptied {
            self.slots
                .remove_if(&slot.tenant, |_, held| held.is_empty());
        }
    }

    /// [`SlotStore::running`], at once.
    pub fn running_now(&self, tenant: &TenantId, now: Duration) -> u32 {
        self.slots.get(tenant).map_or(0, |held| {
            held.iter().filter(|(_, until)| *until > now).count() as u32
        })
    }
}

impl SlotStore for MemorySlotStore {
    type AcquireFuture = std::future::Pending<Result<Acquired, StoreError>>;
    type ReleaseFuture = std::future::Pending<Result<(), StoreError>>;
    type CountFuture = std::future::Pending<Result<u32, StoreError>>;

    fn acquire(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Answer<Acquired, Self::AcquireFuture> {
        Answer::Ready(self.acquire_now(tenant, limit, now, lapse))
    }

    fn release(&self, slot: &Slot) -> Answer<(), Self::ReleaseFuture> {
        self.release_now(slot);
        Answer::Ready(Ok(()))
    }

    fn release_detached(&self, slot: &Slot) {
        self.release_now(slot);
    }

    fn running(&self, tenant: &TenantId, now: Duration) -> Answer<u32, Self::CountFuture> {
        Answer::Ready(Ok(self.running_now(tenant, now)))
    }
}

impl fmt::Debug for MemorySlotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySlotStore")
            .field("tenants", &self.slots.len())
            .finish()
    }
}
