//! Store doubles: for each store trait, one that fails every call and one that answers later
//! (wrapping the in-memory store), so the layers' asynchronous and failure paths run.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use tower_nat::{
    StoreError,
    auth::{KeyChanges, KeyHash, KeyRecord, KeyStore, MemoryKeyStore},
    concurrency::{Acquired, MemorySlotStore, Slot, SlotStore},
    plan::ScanKind,
    quota::{
        MemoryQuotaStore, OnceMark, Period, QuotaLimits, QuotaStore, Reservation, Reserved,
        UsageCounts,
    },
    rate_limit::{MemoryRateStore, RateDecision, RateStore},
    store::Answer,
    tenant::TenantId,
};

pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// What every broken store says. It carries a secret, which must never reach a client.
pub const BROKEN: &str = "connection to postgres://admin:hunter2@db refused";

/// Fails every call, at once or later.
#[derive(Clone, Copy, Debug)]
pub enum Broken {
    Now,
    Later,
}

impl Broken {
    fn fail<T: Send + 'static>(self) -> Answer<T, BoxFut<T>> {
        match self {
            Broken::Now => Answer::Ready(Err(StoreError::new(BROKEN))),
            Broken::Later => Answer::Pending(Box::pin(async {
                tokio::task::yield_now().await;
                Err(StoreError::new(BROKEN))
            })),
        }
    }
}

impl KeyStore for Broken {
    type Future = BoxFut<Option<KeyRecord>>;
    fn lookup(&self, _: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        self.fail()
    }
}

impl RateStore for Broken {
    type Future = BoxFut<RateDecision>;
    fn check(&self, _: &TenantId, _: u32, _: Duration) -> Answer<RateDecision, Self::Future> {
        self.fail()
    }
    fn peek(&self, _: &TenantId, _: u32, _: Duration) -> Answer<RateDecision, Self::Future> {
        self.fail()
    }
}

impl QuotaStore for Broken {
    type ReserveFuture = BoxFut<Reserved>;
    type UsageFuture = BoxFut<UsageCounts>;
    type SettleFuture = BoxFut<()>;
    fn reserve(
        &self,
        _: &TenantId,
        _: ScanKind,
        _: QuotaLimits,
        _: Period,
        _: Duration,
    ) -> Answer<Reserved, Self::ReserveFuture> {
        self.fail()
    }
    fn settle(&self, _: &Reservation, _: bool) -> Answer<(), Self::SettleFuture> {
        self.fail()
    }
    fn settle_detached(&self, _: &Reservation, _: bool) {}
    fn usage(&self, _: &TenantId, _: Period) -> Answer<UsageCounts, Self::UsageFuture> {
        self.fail()
    }
    /// A broken store marks nothing: no event is sent.
    fn once(&self, _: Vec<OnceMark>, _: Duration, _: Duration) {}
}

/// Answers as the in-memory store does, after yielding once: like a remote store.
#[derive(Clone, Debug, Default)]
pub struct Later<T>(pub T);

fn later<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Answer<T, BoxFut<T>> {
    Answer::Pending(Box::pin(async move {
        tokio::task::yield_now().await;
        Ok(f())
    }))
}

impl KeyStore for Later<MemoryKeyStore> {
    type Future = BoxFut<Option<KeyRecord>>;
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        let (store, hash) = (self.0.clone(), *hash);
        later_result(move || ready(store.lookup(&hash)))
    }
    fn changes(&self) -> Option<&KeyChanges> {
        self.0.changes()
    }
    fn record_use(&self, key_id: &tower_nat::tenant::KeyId, at: Duration) {
        self.0.record_use(key_id, at);
    }
}

/// A key "database" over the in-memory store that counts its queries, can fail, can hold
/// queries until released (each query reads its answer first, then waits: a query that ran
/// before a change and answers after it), and can keep its changes to itself (as another
/// process's writes would).
#[derive(Clone, Debug)]
pub struct Db {
    pub keys: MemoryKeyStore,
    state: Arc<DbState>,
}

#[derive(Debug)]
struct DbState {
    queries: AtomicUsize,
    failing: AtomicBool,
    holding: AtomicBool,
    gate: tokio::sync::Semaphore,
    silent: AtomicBool,
}

impl Db {
    pub fn new(keys: MemoryKeyStore) -> Self {
        let state = DbState {
            queries: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            silent: AtomicBool::new(false),
        };
        Self {
            keys,
            state: Arc::new(state),
        }
    }
    /// Queries so far.
    pub fn queries(&self) -> usize {
        self.state.queries.load(SeqCst)
    }
    /// Every query fails from now on (or not).
    pub fn fail(&self, on: bool) {
        self.state.failing.store(on, SeqCst);
    }
    /// Queries wait for [`release`](Self::release) from now on (or not).
    pub fn hold(&self, on: bool) {
        self.state.holding.store(on, SeqCst);
    }
    /// Lets `n` held queries answer.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }
    /// Changes are not announced to caches (another process's writes).
    pub fn silent(&self) {
        self.state.silent.store(true, SeqCst);
    }
}

impl KeyStore for Db {
    type Future = BoxFut<Option<KeyRecord>>;
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        let state = self.state.clone();
        state.queries.fetch_add(1, SeqCst);
        let answer = self.keys.get(hash);
        Answer::Pending(Box::pin(async move {
            if state.holding.load(SeqCst) {
                state.gate.acquire().await.unwrap().forget();
            }
            tokio::task::yield_now().await;
            if state.failing.load(SeqCst) {
                return Err(StoreError::new(BROKEN));
            }
            Ok(answer)
        }))
    }
    fn changes(&self) -> Option<&KeyChanges> {
        if self.state.silent.load(SeqCst) {
            None
        } else {
            self.keys.changes()
        }
    }
    fn record_use(&self, key_id: &tower_nat::tenant::KeyId, at: Duration) {
        self.keys.record_use(key_id, at);
    }
}

impl RateStore for Later<MemoryRateStore> {
    type Future = BoxFut<RateDecision>;
    fn check(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        let (store, key) = (self.0.clone(), key.clone());
        later(move || store.check_now(&key, limit, now))
    }
    fn peek(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        let (store, key) = (self.0.clone(), key.clone());
        later(move || store.peek_now(&key, limit, now))
    }
}

impl QuotaStore for Later<MemoryQuotaStore> {
    type ReserveFuture = BoxFut<Reserved>;
    type UsageFuture = BoxFut<UsageCounts>;
    type SettleFuture = BoxFut<()>;
    fn reserve(
        &self,
        t: &TenantId,
        k: ScanKind,
        l: QuotaLimits,
        p: Period,
        now: Duration,
    ) -> Answer<Reserved, Self::ReserveFuture> {
        let (store, t) = (self.0.clone(), t.clone());
        later(move || store.reserve_now(&t, k, l, p, now))
    }
    fn settle(&self, r: &Reservation, charge: bool) -> Answer<(), Self::SettleFuture> {
        let (store, r) = (self.0.clone(), r.clone());
        later(move || store.settle_now(&r, charge))
    }
    fn settle_detached(&self, r: &Reservation, charge: bool) {
        self.0.settle_now(r, charge);
    }
    fn usage(&self, t: &TenantId, p: Period) -> Answer<UsageCounts, Self::UsageFuture> {
        let (store, t) = (self.0.clone(), t.clone());
        later(move || store.usage_now(t.as_str(), p))
    }
    fn once(&self, marks: Vec<OnceMark>, now: Duration, until: Duration) {
        self.0.once(marks, now, until);
    }
}

/// The answer of an in-memory store, which is always ready.
fn ready<T, F>(answer: Answer<T, F>) -> Result<T, StoreError> {
    match answer {
        Answer::Ready(answer) => answer,
        Answer::Pending(_) => unreachable!("the in-memory stores answer at once"),
    }
}

fn later_result<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Answer<T, BoxFut<T>> {
    Answer::Pending(Box::pin(async move {
        tokio::task::yield_now().await;
        f()
    }))
}

impl SlotStore for Later<MemorySlotStore> {
    type AcquireFuture = BoxFut<Acquired>;
    type ReleaseFuture = BoxFut<()>;
    type CountFuture = BoxFut<u32>;
    fn acquire(
        &self,
        tenant: &TenantId,
        limit: u32,
        now: Duration,
        lapse: Duration,
    ) -> Answer<Acquired, Self::AcquireFuture> {
        let (store, tenant) = (self.0.clone(), tenant.clone());
        later_result(move || ready(store.acquire(&tenant, limit, now, lapse)))
    }
    fn release(&self, slot: &Slot) -> Answer<(), Self::ReleaseFuture> {
        let (store, slot) = (self.0.clone(), slot.clone());
        later_result(move || ready(store.release(&slot)))
    }
    fn release_detached(&self, slot: &Slot) {
        self.0.release_detached(slot);
    }
    fn running(&self, tenant: &TenantId, now: Duration) -> Answer<u32, Self::CountFuture> {
        let (store, tenant) = (self.0.clone(), tenant.clone());
        later_result(move || ready(store.running(&tenant, now)))
    }
}
