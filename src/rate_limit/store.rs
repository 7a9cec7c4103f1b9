//! Rate-limit stores: the [`RateStore`] trait and the in-memory [`MemoryRateStore`].

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;

use super::gcra::{self, RateDecision};
use crate::{
    error::StoreError,
    store::Answer,
    tenant::{Tenant, TenantId},
};

/// Where rate-limit state lives. One call per request does the whole check-and-update
/// atomically (in memory: one compare-and-swap; in Redis: one script round trip).
pub trait RateStore: Clone + Send + Sync + 'static {
    /// The future of a check that cannot answer at once.
    type Future: Future<Output = Result<RateDecision, StoreError>> + Send;

    /// Counts one request of `key` against `limit` requests a minute at `now` (the layer's
    /// clock, time since the Unix epoch) and returns the decision. A refused request is not
    /// counted. A store with a clock of its own (Redis's) may use that instead of `now`.
    fn check(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future>;

    /// The state of `key` at `now`, counting nothing (for dashboards and usage endpoints), as
    /// the headers of its last request said it: whether a request would pass (`allowed`), how
    /// many would pass at once (`remaining`, as `X-RateLimit-Remaining`), how long until one
    /// passes when none would (`retry_after`), and until a full burst (`reset`).
    fn peek(&self, key: &TenantId, limit: u32, now: Duration)
    -> Answer<RateDecision, Self::Future>;

    /// [`check`](Self::check) for a request whose key is its authenticated tenant's id (the
    /// default [`PlanResolver`](super::PlanResolver)): what the layer calls then. The default
    /// calls `check` with the tenant's id.
    ///
    /// [`MemoryRateStore`] keeps the tenant's state with the tenant's record (the key
    /// store's, shared by every request made with that key), so that a request reaches it
    /// without a table lookup; such state is evicted only once no record holds it.
    fn check_tenant(
        &self,
        tenant: &Tenant,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        self.check(tenant.id(), limit, now)
    }
}

/// The in-memory rate-limit store: one atomic word per tenant in a [`DashMap`].
///
/// - Lock-free per tenant: a request is one `get` (a shard read lock shared with every other
///   reader) and a compare-and-swap on the tenant's theoretical arrival time. The shard write
///   lock is taken only the first time a tenant is seen and when its plan changes.
/// - Plan changes keep the count: a tenant that used 30 of Free's 30 has 90 left the moment it
///   is on Pro (120).
/// - Bounded memory: a tenant whose state has fully drained is indistinguishable from a new
///   one, so it is evicted; this happens on the request path at most once per
///   [`sweep_interval`](MemoryRateStore::sweep_interval) (default one minute), and on demand
///   with [`evict_idle`](MemoryRateStore::evict_idle). State exists only for tenants that
///   passed authentication.
/// - Time is the layer's: each check is told `now`.
#[derive(Clone)]
pub struct MemoryRateStore {
    inner: Arc<Inner>,
}

/// Tenant ids come from authentication, not from clients, so a fast seeded hash is safe here.
type Hasher = foldhash::fast::RandomState;

struct Inner {
    slots: DashMap<TenantId, Entry, Hasher>,
    /// This store's identity, for the state kept with tenant records.
    id: u64,
    sweep_every: u64,
    // 0 until the first check sets it.
    next_sweep: AtomicU64,
}

/// A key's state in the table: in the table itself, or shared with the tenant's records once
/// one of them reached it (see [`RateStore::check_tenant`]). Keys checked only by id (by a
/// resolver of the server's own) keep it in the table: one pointer nearer.
enum Entry {
    Own(Slot),
    Shared(Arc<SharedSlot>),
}

impl std::ops::Deref for Entry {
    type Target = Slot;

    #[inline]
    fn deref(&self) -> &Slot {
        match self {
            Entry::Own(slot) => slot,
            Entry::Shared(shared) => &shared.slot,
        }
    }
}

impl Entry {
    /// Whether eviction may drop it: drained, and held by no record.
    fn idle(&self, now: u64) -> bool {
        let held = matches!(self, Entry::Shared(slot) if Arc::strong_count(slot) > 1);
        !held && self.tat.load(Ordering::Acquire) <= now
    }
}

/// A key's state shared with its tenant's records, and the store it is in.
///
/// Aligned to 32 bytes (its size), so that the state a record reaches never straddles two
/// cache lines; `Arc`'s counts, which a request does not touch, lie before it.
#[repr(align(32))]
pub(crate) struct SharedSlot {
    pub(crate) slot: Slot,
    /// The identity of the store it is in.
    pub(crate) store: u64,
}

/// A key's state: its limit and theoretical arrival time.
pub(crate) struct Slot {
    limit: u32,
    interval: u64,
    tat: AtomicU64,
}

impl Slot {
    fn new(limit: u32, tat: u64) -> Self {
        Self {
            limit,
            interval: gcra::interval(limit),
            tat: AtomicU64::new(tat.min(RETIRED - 1)),
        }
    }
}

impl Default for MemoryRateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_sweep(Duration::from_secs(60))
    }

    fn with_sweep(sweep: Duration) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            inner: Arc::new(Inner {
                slots: DashMap::with_hasher(Hasher::default()),
                id: IDS.fetch_add(1, Ordering::Relaxed),
                sweep_every: u64::try_from(sweep.as_nanos()).unwrap_or(u64::MAX),
                next_sweep: AtomicU64::new(0),
            }),
        }
    }

    /// Sweeps idle tenants on the request path at most once per `every` (default 60 s).
    #[must_use]
    pub fn sweep_interval(self, every: Duration) -> Self {
        Self::with_sweep(every)
    }

    /// Removes every tenant whose state has drained (it would get a full burst anyway) and
    /// that no live key record holds (see [`RateStore::check_tenant`]), and returns how many
    /// were removed. When most of the table is then empty, its memory is given back.
    pub fn evict_idle(&self, now: Duration) -> usize {
        let now = nanos(now);
        let slots = &self.inner.slots;
        let before = slots.len();
        // Under the shard's write lock: no lookup is handing the state to a record meanwhile.
        slots.retain(|_, entry| !entry.idle(now));
        let after = slots.len();
        if after.saturating_mul(4) < slots.capacity() {
            slots.shrink_to_fit();
        }
        before.saturating_sub(after)
    }

    /// The number of tenants with state.
    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    /// Whether no tenant has state.
    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// The decision for one request of `key` at `limit` requests a minute at `now`.
    pub fn check_now(&self, key: &TenantId, limit: u32, now: Duration) -> RateDecision {
        let now = nanos(now);
        self.maybe_sweep(now);
        self.check_slot(key, limit, now, None)
    }

    /// [`RateStore::check_tenant`], at once: the state the tenant's record holds, else the
    /// table's (which the record then holds).
    #[inline]
    pub fn check_tenant_now(&self, tenant: &Tenant, limit: u32, now: Duration) -> RateDecision {
        let now = nanos(now);
        self.maybe_sweep(now);
        let id = self.inner.id;
        let held = tenant.rate_slot(id).filter(|slot| slot.limit == limit);
        match held.and_then(|slot| cas_loop(slot, now)) {
            Some(decision) => decision,
            None => self.check_slot(tenant.id(), limit, now, Some((tenant, id))),
        }
    }

    /// The decision for one request of `key` at `limit` and `now` (nanoseconds), through the
    /// table; `record`, if any, is a tenant's record (and this store's id) that is handed the
    /// state, shared from then on.
    fn check_slot(
        &self,
        key: &TenantId,
        limit: u32,
        now: u64,
        record: Option<(&Tenant, u64)>,
    ) -> RateDecision {
        let inner = &*self.inner;
        loop {
            if let Some(entry) = inner.slots.get(key.as_str()) {
                if entry.limit == limit {
                    // (State in the table is never retired: `None` cannot come from it.)
                    let decided = match (&*entry, record) {
                        (_, None) => cas_loop(&entry, now),
                        (Entry::Shared(shared), Some((tenant, _))) => {
                            tenant.keep_rate_slot(shared);
                            cas_loop(&shared.slot, now)
                        }
                        // Kept in the table: shared below, under the write lock.
                        (Entry::Own(_), Some(_)) => None,
                    };
                    if let Some(decision) = decided {
                        return decision;
                    }
                }
            } else {
                // First request: only an admitted request creates state.
                let (decision, tat) = gcra::check(0, now, limit);
                let Some(tat) = tat else { return decision };
                match inner.slots.entry(key.clone()) {
                    dashmap::Entry::Vacant(v) => {
                        let entry = v.insert(new_entry(Slot::new(limit, tat), record));
                        if let (Entry::Shared(shared), Some((tenant, _))) = (&*entry, record) {
                            tenant.keep_rate_slot(shared);
                        }
                        return decision;
                    }
                    dashmap::Entry::Occupied(_) => continue,
                }
            }
            // Under the write lock: the limit changed, and the state is re-expressed for the new
            // one (shared state is retired, so that a record holding it comes here too: one
            // count whatever limit each record has); or a record reached state kept in the
            // table, which is shared from now on.
            if let Some(mut entry) = inner.slots.get_mut(key.as_str()) {
                let own = matches!(*entry, Entry::Own(_));
                if entry.limit != limit || (record.is_some() && own) {
                    let tat = match &*entry {
                        Entry::Own(slot) => slot.tat.load(Ordering::Acquire),
                        Entry::Shared(shared) => shared.slot.tat.swap(RETIRED, Ordering::AcqRel),
                    };
                    let tat = if entry.limit == limit {
                        tat
                    } else {
                        gcra::convert(tat, now, entry.limit, limit)
                    };
                    *entry = new_entry(Slot::new(limit, tat), record);
                }
            }
        }
    }

    /// [`RateStore::peek`], at once.
    pub fn peek_now(&self, key: &TenantId, limit: u32, now: Duration) -> RateDecision {
        let now = nanos(now);
        let tat = match self.inner.slots.get(key.as_str()) {
            Some(slot) if slot.limit == limit => slot.tat.load(Ordering::Acquire),
            Some(slot) => gcra::convert(slot.tat.load(Ordering::Acquire), now, slot.limit, limit),
            None => 0,
        };
        gcra::peek(tat, now, limit)
    }

    fn maybe_sweep(&self, now: u64) {
        let next = self.inner.next_sweep.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let following = now.saturating_add(self.inner.sweep_every);
        let won = self
            .inner
            .next_sweep
            .compare_exchange(next, following, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        // The first check only starts the clock.
        if won && next != 0 {
            let removed = self.evict_idle(Duration::from_nanos(now));
            tracing::debug!(target: "tower_nat", removed, "rate-limit store swept idle tenants");
        }
    }
}

/// A table entry for new state: shared when a record reaches it.
fn new_entry(slot: Slot, record: Option<(&Tenant, u64)>) -> Entry {
    match record {
        Some((_, store)) => Entry::Shared(Arc::new(SharedSlot { slot, store })),
        None => Entry::Own(slot),
    }
}

fn nanos(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// The theoretical arrival time of state the table replaced (the key's limit changed): a
/// record that still holds it goes through the table. Live state never reaches it.
const RETIRED: u64 = u64::MAX;

/// The decision on `slot` at `now`, or `None` if the slot was retired (a compare-and-swap
/// that raced the retirement fails, so nothing is counted on retired state).
fn cas_loop(slot: &Slot, now: u64) -> Option<RateDecision> {
    let mut current = slot.tat.load(Ordering::Acquire);
    loop {
        if current == RETIRED {
            return None;
        }
        let (decision, next) = gcra::check_with(current, now, slot.limit, slot.interval);
        let Some(next) = next else {
            return Some(decision);
        };
        match slot.tat.compare_exchange_weak(
            current,
            next.min(RETIRED - 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(decision),
            Err(actual) => current = actual,
        }
    }
}

impl RateStore for MemoryRateStore {
    type Future = std::future::Pending<Result<RateDecision, StoreError>>;

    fn check(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        Answer::Ready(Ok(self.check_now(key, limit, now)))
    }

    fn peek(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        Answer::Ready(Ok(self.peek_now(key, limit, now)))
    }

    #[inline]
    fn check_tenant(
        &self,
        tenant: &Tenant,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        Answer::Ready(Ok(self.check_tenant_now(tenant, limit, now)))
    }
}

impl fmt::Debug for MemoryRateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateStore")
            .field("tenants", &self.inner.slots.len())
            .finish()
    }
}
