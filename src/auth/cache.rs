//! [`CachedKeyStore`]: a cache in front of any [`KeyStore`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, PoisonError, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use quick_cache::{UnitWeighter, sync::DefaultLifecycle};

use super::{
    key::{HashOfHash, KeyHash},
    store::{Forget, KeyChanges, KeyRecord, KeyStore},
    tag::{PresentedKey, Recognised},
};
use crate::{
    clock::{self, SharedClock},
    error::StoreError,
    store::Answer,
    tenant::{KeyId, TenantId},
};

/// How long a failing store is asked again while a stale answer is served.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// How often a key's use is recorded at most ([`KeyStore::record_use`]).
const USE_INTERVAL: Duration = Duration::from_secs(60);

/// A cache in front of a [`KeyStore`]: answers repeated lookups from memory, so that a
/// database sees one query per key per TTL instead of one per request.
///
/// - **What is cached.** A live key's record for [`ttl`](Self::ttl) (60 s by default); "no
///   such key" for [`negative_ttl`](Self::negative_ttl) (5 s), so a key issued by another
///   process right after a client tried it works within 5 s. At most
///   [`capacity`](Self::capacity) entries (100,000), evicted by recency and frequency. Store
///   errors are never cached.
/// - **One query per key at a time.** Concurrent lookups of one key that is not cached share
///   one store query: 100 requests with a new key make 1 query.
/// - **Changes.** Revocation, expiry, plan changes and deleted tenants made through the
///   store's own methods ([`MemoryKeyStore`](super::MemoryKeyStore), `PgKeyStore`) take effect
///   at once in this process: the store announces them ([`KeyStore::changes`]) and the cache
///   forgets the entries. A lookup that was in flight when a key was revoked answers the
///   request that started it, but its answer is not cached and no later request gets it.
///   Changes made by other processes reach it through the store's feed (`PgKeyStore` listens
///   to PostgreSQL's `NOTIFY`: within a second); while the feed is down, no entry is served
///   older than [`offline_ttl`](Self::offline_ttl) (2 s). A store without a feed sees changes
///   made behind its back when entries expire, within the TTL;
///   [`invalidate`](Self::invalidate) and [`invalidate_tenant`](Self::invalidate_tenant)
///   forget entries by hand.
/// - **Expiry** is still checked on every request by the auth layer against its clock: a
///   cached key never outlives its `expires_at`.
/// - **Outages.** With [`serve_stale`](Self::serve_stale), a key whose entry has expired keeps
///   working while the store fails, for at most that long after the entry's TTL; the store is
///   asked again once a second per key. Unknown keys are never served stale.
/// - **Last use.** Each key's use is passed to [`KeyStore::record_use`] at most once a minute
///   per key (the store batches the writes).
///
/// Built on [`quick_cache`]: a hit is one read-locked shard probe and a reference-count
/// increment, with no write on the read path (unlike caches that record every read in a
/// buffer); its placeholders give the single query per key; and it is small to build. Time
/// comes from the crate's [`Clock`](crate::clock::Clock), so tests move it by hand.
///
/// ```
/// use std::time::Duration;
/// use tower_nat::{NatLayer, auth::{CachedKeyStore, MemoryKeyStore}, plan::Plan};
///
/// // Any KeyStore: a database-backed one is where a cache pays.
/// let store = MemoryKeyStore::new();
/// store.insert_tenant("acme", Plan::PRO).unwrap();
/// let keys = CachedKeyStore::new(store.clone())
///     .ttl(Duration::from_secs(30))
///     .serve_stale(Duration::from_secs(300));
/// let nat = NatLayer::new(keys);
/// # let _ = nat;
/// ```
pub struct CachedKeyStore<K> {
    store: K,
    cache: Arc<Cache>,
}

type Entries = quick_cache::sync::Cache<
    KeyHash,
    Entry,
    UnitWeighter,
    HashOfHash,
    DefaultLifecycle<KeyHash, Entry>,
>;

struct Cache {
    entries: Entries,
    /// Counts the changes announced so far: a lookup caches its answer only if none came
    /// while it ran.
    changes: AtomicU64,
    /// Held to read while a lookup checks `changes` and caches its answer, and to write
    /// while a change is counted and applied: an answer is cached wholly before a change
    /// (which removes it) or not at all, never seen for a moment after the change returned.
    changing: RwLock<()>,
    /// Whether the store's feed of changes made elsewhere is up (none: the store has no
    /// feed, and its TTLs hold).
    live: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Fresh live entries by tag: a hit costs no SHA-256. An entry found here is still checked
    /// for freshness.
    recognised: Recognised<Entry>,
    settings: Settings,
}

#[derive(Clone)]
struct Settings {
    ttl: Duration,
    negative_ttl: Duration,
    offline_ttl: Duration,
    stale_for: Duration,
    capacity: usize,
    clock: SharedClock,
}

/// One cached answer, shared: a hit clones one pointer.
type Entry = Arc<Cached>;

struct Cached {
    record: Option<KeyRecord>,
    /// When the store gave it.
    loaded_at: Duration,
    /// Served without a query until then.
    fresh_until: Duration,
    /// Served while the store fails until then.
    stale_until: Duration,
    /// The change count when the lookup that made this entry started.
    changes: u64,
    /// When the key's use was last passed on, in whole seconds since the epoch.
    used: AtomicU64,
}

// Each change is counted and applied under the write lock (so a lookup under way sees one
// or the other, and caches nothing outdated), then the index by tag is told (so no entry
// it may index is outdated).
impl Forget for Cache {
    fn key(&self, hash: &KeyHash) {
        self.change(|entries| {
            entries.remove(hash);
        });
    }

    fn tenant(&self, tenant: &TenantId) {
        self.change(|entries| {
            entries.retain(|_, entry| {
                entry
                    .record
                    .as_ref()
                    .is_none_or(|record| record.tenant.id() != tenant)
            });
        });
    }

    fn all(&self) {
        self.change(Entries::clear);
    }
}

impl Cache {
    /// Counts a change and applies it to the entries (`apply`), then tells the index.
    fn change(&self, apply: impl FnOnce(&Entries)) {
        {
            let _changing = self
                .changing
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.changes.fetch_add(1, Ordering::SeqCst);
            apply(&self.entries);
        }
        self.recognised.changed();
    }

    /// Runs `cache` (which caches an answer) if no change was announced since the lookup
    /// that found the answer started (`started`); no change is applied meanwhile.
    fn unless_changed_since(&self, started: u64, cache: impl FnOnce()) {
        let _changing = self.changing.read().unwrap_or_else(PoisonError::into_inner);
        if self.changes.load(Ordering::SeqCst) == started {
            cache();
        }
    }
}

impl<K: KeyStore> CachedKeyStore<K> {
    /// A cache in front of `store`: live keys for 60 s, unknown keys for 5 s, at most 100,000
    /// entries, no stale answers, the system clock.
    pub fn new(store: K) -> Self {
        let settings = Settings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            offline_ttl: Duration::from_secs(2),
            stale_for: Duration::ZERO,
            capacity: 100_000,
            clock: clock::system(),
        };
        let cache = Arc::new(Cache::new(settings, store.changes()));
        let cached = Self { store, cache };
        cached.subscribe();
        cached
    }

    /// Listens to the store's announced changes (if it announces any).
    fn subscribe(&self) {
        if let Some(changes) = self.store.changes() {
            let cache: Arc<dyn Forget> = self.cache.clone();
            changes.subscribe(Arc::downgrade(&cache) as Weak<dyn Forget>);
        }
    }

    /// Rebuilds the cache with a changed setting (it starts empty: configure before serving).
    fn rebuild(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.cache.settings.clone();
        change(&mut settings);
        let cache = Arc::new(Cache::new(settings, self.store.changes()));
        let cached = Self {
            store: self.store,
            cache,
        };
        cached.subscribe();
        cached
    }

    /// How long a live key is served without a query (60 s by default): how long a change
    /// made by another process may take to apply here.
    #[must_use]
    pub fn ttl(self, ttl: Duration) -> Self {
        self.rebuild(|c| c.ttl = ttl)
    }

    /// How long "no such key" is served without a query (5 s by default): how long a key
    /// issued by another process after a client tried it may be refused.
    #[must_use]
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|c| c.negative_ttl = ttl)
    }

    /// How long an entry is served without a query while the store's feed of changes made
    /// elsewhere is down (2 s by default; see [`KeyChanges`]): how long a key revoked by
    /// another instance may still work here then. A store without a feed is not concerned.
    #[must_use]
    pub fn offline_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|c| c.offline_ttl = ttl)
    }

    /// Keeps serving a live key whose entry expired while the store fails, for at most `for_`
    /// after the entry's TTL (off by default).
    #[must_use]
    pub fn serve_stale(self, for_: Duration) -> Self {
        self.rebuild(|c| c.stale_for = for_)
    }

    /// At most `entries` cached answers (100,000 by default).
    #[must_use]
    pub fn capacity(self, entries: usize) -> Self {
        self.rebuild(|c| c.capacity = entries.max(1))
    }

    /// Reads `clock` for TTLs and last-use times instead of the system clock.
    #[must_use]
    pub fn clock(self, clock: SharedClock) -> Self {
        self.rebuild(|c| c.clock = clock)
    }
}

impl<K> CachedKeyStore<K> {
    /// The store behind the cache (its own methods announce changes to the cache).
    pub fn store(&self) -> &K {
        &self.store
    }

    /// Forgets the key with this hash.
    pub fn invalidate(&self, hash: &KeyHash) {
        self.cache.key(hash);
    }

    /// Forgets every key of `tenant`.
    pub fn invalidate_tenant(&self, tenant: &TenantId) {
        self.cache.tenant(tenant);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.cache.all();
    }

    /// The number of cached answers.
    pub fn len(&self) -> usize {
        self.cache.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.entries.is_empty()
    }
}

impl Cache {
    fn new(settings: Settings, changes: Option<&KeyChanges>) -> Self {
        let capacity = settings.capacity;
        Self {
            live: changes.map(KeyChanges::live_flag),
            entries: Entries::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                HashOfHash::default(),
                DefaultLifecycle::default(),
            ),
            changes: AtomicU64::new(0),
            changing: RwLock::new(()),
            recognised: Recognised::new(),
            settings,
        }
    }

    /// The entry for a store's answer, made now by a lookup that started at change `changes`.
    fn entry(&self, record: Option<KeyRecord>, now: Duration, changes: u64) -> Entry {
        let (fresh_until, stale_until) = match record {
            Some(_) => {
                let fresh = now.saturating_add(self.settings.ttl);
                (fresh, fresh.saturating_add(self.settings.stale_for))
            }
            None => {
                let fresh = now.saturating_add(self.settings.negative_ttl);
                (fresh, fresh)
            }
        };
        Arc::new(Cached {
            record,
            loaded_at: now,
            fresh_until,
            stale_until,
            changes,
            used: AtomicU64::new(0),
        })
    }

    /// Whether `entry` is served without a query at `now`: within its TTL, and while the
    /// store's feed is down, within the offline TTL of its loading.
    #[inline]
    fn fresh(&self, entry: &Cached, now: Duration) -> bool {
        now < entry.fresh_until
            && (self
                .live
                .as_ref()
                .is_none_or(|live| live.load(Ordering::Relaxed))
                || now < entry.loaded_at.saturating_add(self.settings.offline_ttl))
    }

    /// Caches `entry` unless a change was announced since its lookup started.
    fn keep(&self, hash: &KeyHash, entry: Entry) {
        self.unless_changed_since(entry.changes, || self.entries.insert(*hash, entry));
    }
}

impl<K: KeyStore> CachedKeyStore<K> {
    /// The fresh entry for `hash` (its use passed on), or the expired one if any.
    #[inline]
    fn cached(&self, hash: &KeyHash) -> Result<Entry, Option<Entry>> {
        let now = self.cache.settings.clock.now();
        let seen = self.cache.entries.get(hash);
        match seen {
            Some(entry) if self.cache.fresh(&entry, now) => {
                self.used(&entry, now);
                Ok(entry)
            }
            seen => Err(seen),
        }
    }

    /// Passes the key's use on to the store, at most once a minute.
    fn used(&self, entry: &Entry, now: Duration) {
        let (used, Some(record)) = (&entry.used, &entry.record) else {
            return;
        };
        let secs = now.as_secs();
        let last = used.load(Ordering::Relaxed);
        if secs >= last.saturating_add(USE_INTERVAL.as_secs())
            && used
                .compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.store.record_use(record.tenant.key_id(), now);
        }
    }

    /// A lookup that goes to the store: one per key at a time; the others wait for its answer.
    async fn load(
        self,
        hash: KeyHash,
        seen: Option<Entry>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let cache = &*self.cache;
        let started = cache.changes.load(Ordering::SeqCst);
        let now = cache.settings.clock.now();
        // An expired entry makes way for a placeholder (the one this lookup may fill).
        cache.entries.remove_if(&hash, |e| !cache.fresh(e, now));
        let guard = match cache.entries.get_value_or_guard_async(&hash).await {
            Ok(entry) => {
                let now = cache.settings.clock.now();
                // Filled by a lookup that started no earlier than this one: its answer holds.
                if entry.changes >= started && cache.fresh(&entry, now) {
                    self.used(&entry, now);
                    return Ok(entry.record.clone());
                }
                None
            }
            Err(guard) => Some(guard),
        };
        let answer = match self.store.lookup(&hash) {
            Answer::Ready(answer) => answer,
            Answer::Pending(query) => query.await,
        };
        let now = cache.settings.clock.now();
        match answer {
            Ok(record) => {
                let entry = cache.entry(record, now, started);
                self.used(&entry, now);
                if let Some(guard) = guard {
                    // Fill the placeholder (waiters get the answer) unless a change came
                    // meanwhile; if one did, the placeholder is dropped and a waiter looks
                    // the key up again.
                    cache.unless_changed_since(started, || {
                        let _ = guard.insert(entry.clone());
                    });
                } else {
                    cache.keep(&hash, entry.clone());
                }
                Ok(entry.record.clone())
            }
            Err(error) => {
                drop(guard);
                match seen {
                    Some(stale) if stale.record.is_some() && now < stale.stale_until => {
                        let retry = now.saturating_add(STALE_RETRY).min(stale.stale_until);
                        let record = stale.record.clone();
                        let used = AtomicU64::new(stale.used.load(Ordering::Relaxed));
                        cache.keep(
                            &hash,
                            Arc::new(Cached {
                                record: record.clone(),
                                loaded_at: now,
                                fresh_until: retry,
                                stale_until: stale.stale_until,
                                changes: started,
                                used,
                            }),
                        );
                        Ok(record)
                    }
                    _ => Err(error),
                }
            }
        }
    }
}

impl<K: KeyStore> KeyStore for CachedKeyStore<K> {
    type Future = Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, StoreError>> + Send>>;

    #[inline]
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        match self.cached(hash) {
            Ok(entry) => Answer::Ready(Ok(entry.record.clone())),
            Err(seen) => Answer::Pending(Box::pin(self.clone().load(*hash, seen))),
        }
    }

    /// A fresh live entry found before is found by its tag; any other by the key's SHA-256,
    /// and indexed by its tag if it is live and no change was announced since its lookup.
    #[inline]
    fn find(&self, key: &PresentedKey<'_>) -> Answer<Option<KeyRecord>, Self::Future> {
        let cache = &*self.cache;
        let Some(tag) = key.tag() else {
            return self.lookup(&key.hash());
        };
        if let Some(entry) = cache.recognised.get(tag) {
            let now = cache.settings.clock.now();
            if cache.fresh(&entry, now) {
                self.used(&entry, now);
                return Answer::Ready(Ok(entry.record.clone()));
            }
        }
        let started = cache.recognised.start();
        let hash = key.hash();
        match self.cached(&hash) {
            Ok(entry) => {
                let record = entry.record.clone();
                if record.is_some() && entry.changes == cache.changes.load(Ordering::SeqCst) {
                    let capacity = cache.settings.capacity;
                    cache.recognised.remember(tag, started, entry, capacity);
                }
                Answer::Ready(Ok(record))
            }
            Err(seen) => Answer::Pending(Box::pin(self.clone().load(hash, seen))),
        }
    }

    fn known(&self, hash: &KeyHash) -> Option<Answer<Option<KeyRecord>, Self::Future>> {
        let entry = self.cache.entries.peek(hash)?;
        let record = entry.record.clone()?;
        if self.cache.fresh(&entry, self.cache.settings.clock.now()) {
            Some(Answer::Ready(Ok(Some(record))))
        } else {
            Some(self.lookup(hash))
        }
    }

    fn changes(&self) -> Option<&KeyChanges> {
        self.store.changes()
    }

    fn record_use(&self, key_id: &KeyId, at: Duration) {
        self.store.record_use(key_id, at);
    }
}

impl<K: Clone> Clone for CachedKeyStore<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for CachedKeyStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cache.settings;
        f.debug_struct("CachedKeyStore")
            .field("store", &self.store)
            .field("entries", &self.cache.entries.len())
            .field("capacity", &c.capacity)
            .field("ttl", &c.ttl)
            .field("negative_ttl", &c.negative_ttl)
            .field("offline_ttl", &c.offline_ttl)
            .field("stale_for", &c.stale_for)
            .finish()
    }
}
