//! Key stores: the [`KeyStore`] trait and the in-memory [`MemoryKeyStore`].

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;

use super::{
    admin::{AdminError, KeyAdmin, Page, TenantInfo, known_plan, valid_tenant_id},
    key::{ApiKey, HashOfHash, KeyFormat, KeyHash},
    tag::{CompactRecord, PresentedKey, Recognised},
};
use crate::{
    clock::{self, SharedClock},
    error::StoreError,
    plan::{LimitOverrides, Plan, Plans},
    store::Answer,
    tenant::{KeyId, Tenant, TenantId},
};

/// What a store knows of a live key: whose it is and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's tenant, with its current plan and limits.
    pub tenant: Tenant,
    /// When the key stops working (time since the Unix epoch), if ever.
    pub expires_at: Option<Duration>,
}

/// Where API keys are looked up, by hash.
///
/// `lookup` returns `Ok(None)` for a key that is unknown, revoked, or whose tenant was
/// deleted; expiry is checked by the layer against its clock. A store error becomes a 500
/// `INTERNAL_ERROR`.
///
/// A store that answers from memory returns [`Answer::Ready`], and the layer decides without
/// cloning its inner service; a database returns [`Answer::Pending`] with its query.
///
/// ```
/// use std::{future::Future, pin::Pin};
/// use tower_nat::{StoreError, auth::{KeyHash, KeyRecord, KeyStore}, store::Answer};
///
/// /// A key store over some database client.
/// #[derive(Clone)]
/// struct Db;
///
/// impl Db {
///     async fn find(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError> {
///         // SELECT tenant, plan, key_id, expires_at FROM keys WHERE hash = $1 ...
///         Ok(None)
///     }
/// }
///
/// impl KeyStore for Db {
///     type Future = Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, StoreError>> + Send>>;
///
///     fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
///         let (db, hash) = (self.clone(), *hash);
///         Answer::Pending(Box::pin(async move { db.find(hash).await }))
///     }
/// }
/// ```
pub trait KeyStore: Clone + Send + Sync + 'static {
    /// The future of a lookup that cannot answer at once. Stores that always answer at once
    /// use [`std::future::Pending`] or [`std::future::Ready`] here.
    type Future: Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Looks a key up by its hash.
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future>;

    /// Looks up a key a request presented: what the auth layer calls. The default takes the
    /// key's SHA-256 and calls [`lookup`](Self::lookup); implement `lookup` only.
    ///
    /// [`MemoryKeyStore`] and [`CachedKeyStore`](super::CachedKeyStore) find a live key they
    /// have answered before by a keyed hash instead (SipHash-2-4 with 128-bit output, under a
    /// secret drawn once per process), without its SHA-256, until the next change they
    /// announce; unknown keys always take the SHA-256 path.
    fn find(&self, key: &PresentedKey<'_>) -> Answer<Option<KeyRecord>, Self::Future> {
        self.lookup(&key.hash())
    }

    /// What a client whose failed authentications are throttled may still do with this key:
    /// `Some` answer for a key this store knows, or knew, to be live (a store in memory
    /// answers at once; a cache answers a fresh entry at once and looks an expired live entry
    /// up again), `None` for a key it has never seen live, which is then refused with 429
    /// without a query. The default knows nothing.
    fn known(&self, hash: &KeyHash) -> Option<Answer<Option<KeyRecord>, Self::Future>> {
        let _ = hash;
        None
    }

    /// Where this store announces changes to keys and tenants, so that a cache in front of it
    /// ([`CachedKeyStore`](super::CachedKeyStore)) forgets them at once. The default has none:
    /// the cache then learns of changes when its entries expire.
    fn changes(&self) -> Option<&KeyChanges> {
        None
    }

    /// Records that key `key_id` was used at `at` (time since the Unix epoch). A
    /// [`CachedKeyStore`](super::CachedKeyStore) calls it at most once a minute per key, off
    /// the request's path; stores batch the writes. The default does nothing.
    fn record_use(&self, key_id: &KeyId, at: Duration) {
        let _ = (key_id, at);
    }
}

/// Announces changes to keys and tenants to the caches in front of a store.
///
/// A store that changes keys (revocation, expiry, a plan change, a deleted tenant) holds one
/// and calls [`key_changed`](Self::key_changed) or [`tenant_changed`](Self::tenant_changed)
/// after each change is committed; it returns it from [`KeyStore::changes`]. Every
/// [`CachedKeyStore`](super::CachedKeyStore) built over the store (or a clone of it) then
/// drops what it cached at once. Clones share the listeners.
///
/// **Changes made elsewhere** (another instance, an operator's SQL) reach the caches of this
/// process through a *feed*: a subscription to the database's or a broker's notifications
/// (`PgKeyStore` listens to PostgreSQL's `NOTIFY`; a store of your own may subscribe to Redis
/// pub/sub and call these methods for each message). A store with a feed makes its
/// announcements with [`KeyChanges::with_feed`], and reports the feed's state: while it is
/// down ([`feed_down`](Self::feed_down)) the caches serve no entry older than their
/// `offline_ttl` (2 s by default), since changes may be missed; when it is back
/// ([`feed_up`](Self::feed_up)) they forget everything they cached.
///
/// ```
/// use tower_nat::auth::{CachedKeyStore, KeyChanges, KeyHash};
///
/// // What a subscriber to a broker's channel does with each message and state change.
/// let changes = KeyChanges::with_feed();
/// assert!(!changes.is_live()); // down until the subscription is confirmed
/// changes.feed_up();
/// changes.key_changed(&KeyHash::of(b"nat_pk_...")); // a key revoked elsewhere
/// changes.feed_down(); // the subscription broke: caches fall back to a short TTL
/// ```
#[derive(Clone)]
pub struct KeyChanges {
    listeners: Arc<RwLock<Vec<Weak<dyn Forget>>>>,
    /// Whether changes made elsewhere arrive (always, for a store without a feed: all its
    /// changes are made in this process).
    live: Arc<AtomicBool>,
}

impl Default for KeyChanges {
    fn default() -> Self {
        Self {
            listeners: Arc::default(),
            live: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// What a cache does when a store announces a change.
pub(crate) trait Forget: Send + Sync {
    /// Forgets one key.
    fn key(&self, hash: &KeyHash);
    /// Forgets every key of a tenant.
    fn tenant(&self, tenant: &TenantId);
    /// Forgets everything.
    fn all(&self);
}

impl KeyChanges {
    /// No listeners yet, for a store whose changes are all made in this process.
    pub fn new() -> Self {
        Self::default()
    }

    /// No listeners yet, for a store whose changes made elsewhere arrive through a feed:
    /// down until [`feed_up`](Self::feed_up).
    pub fn with_feed() -> Self {
        let changes = Self::default();
        changes.live.store(false, Ordering::SeqCst);
        changes
    }

    /// Tells every cache that the key with this hash changed (revoked, expiry changed).
    pub fn key_changed(&self, hash: &KeyHash) {
        self.each(|l| l.key(hash));
    }

    /// Tells every cache that a tenant changed (its plan or limits, or it was deleted).
    pub fn tenant_changed(&self, tenant: &TenantId) {
        self.each(|l| l.tenant(tenant));
    }

    /// The feed is up (again): changes made elsewhere arrive. Every cache forgets what it
    /// holds, since changes made while the feed was down were missed.
    pub fn feed_up(&self) {
        self.live.store(true, Ordering::SeqCst);
        self.each(|l| l.all());
    }

    /// The feed is down: changes made elsewhere may be missed, so the caches serve no entry
    /// older than their `offline_ttl` until it is back.
    pub fn feed_down(&self) {
        self.live.store(false, Ordering::SeqCst);
    }

    /// Whether changes made elsewhere arrive (the feed is up, or there is none to need).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// The flag the caches read on each hit.
    pub(crate) fn live_flag(&self) -> Arc<AtomicBool> {
        self.live.clone()
    }

    fn each(&self, f: impl Fn(&dyn Forget)) {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for listener in listeners.iter().filter_map(Weak::upgrade) {
            f(&*listener);
        }
    }

    pub(crate) fn subscribe(&self, listener: Weak<dyn Forget>) {
        let mut listeners = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(listener);
    }
}

impl fmt::Debug for KeyChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listeners = self.listeners.read().map_or(0, |l| l.len());
        f.debug_struct("KeyChanges")
            .field("listeners", &listeners)
            .field("live", &self.is_live())
            .finish()
    }
}

/// A key just issued: its id (to revoke it) and the key itself, the only time it is seen in
/// clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedKey {
    /// The key's id: safe to store and log.
    pub id: KeyId,
    /// The key: hand it to its owner once; it is not kept.
    pub key: ApiKey,
}

/// What a store tells about one of a tenant's keys (never the key itself). In JSON, times
/// are RFC 3339 (`2026-03-01T12:00:00Z`) or `null`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// The key's id.
    pub id: KeyId,
    /// When it was issued (time since the Unix epoch).
    #[serde(serialize_with = "super::admin::rfc3339")]
    pub created_at: Duration,
    /// When it stops working, if ever.
    #[serde(serialize_with = "super::admin::rfc3339_or_null")]
    pub expires_at: Option<Duration>,
    /// When it was revoked, if it was (stores that keep revoked keys).
    #[serde(serialize_with = "super::admin::rfc3339_or_null")]
    pub revoked_at: Option<Duration>,
    /// When it was last used, as recorded through [`KeyStore::record_use`] (at most once a
    /// minute per key, so up to a minute old).
    #[serde(serialize_with = "super::admin::rfc3339_or_null")]
    pub last_used_at: Option<Duration>,
}

/// An in-memory key store that keeps only SHA-256 hashes of keys.
///
/// Every method may be called while the store serves requests, and takes effect for every
/// request that starts after it returns; clones share the same keys, and announce every change
/// to the caches built over them ([`KeyStore::changes`]). A lookup is one map read and one
/// reference-count increment.
///
/// ```
/// use std::time::Duration;
/// use tower_nat::{auth::MemoryKeyStore, plan::Plan};
///
/// let store = MemoryKeyStore::new();
/// store.insert_tenant("acme", Plan::PRO).unwrap();
/// let issued = store.issue_key("acme", None).unwrap();
/// assert!(issued.key.expose().starts_with("nat_pk_"));
/// store.set_plan("acme", Plan::TEAM);
/// // A new key; the old one works for one more hour.
/// let new = store.rotate(&issued.id, Duration::from_secs(3600)).unwrap();
/// assert_eq!(store.keys("acme").len(), 2);
/// assert!(store.revoke(&issued.id));
/// assert!(store.revoke(&new.id));
/// store.delete_tenant("acme");
/// ```
#[derive(Clone, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Inner>,
    settings: Arc<Settings>,
}

#[derive(Clone, Debug)]
struct Settings {
    format: KeyFormat,
    clock: SharedClock,
    plans: Option<Arc<Plans>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            format: KeyFormat::default(),
            clock: clock::system(),
            plans: None,
        }
    }
}

#[derive(Default)]
struct Inner {
    keys: DashMap<KeyHash, KeyRecord, HashOfHash>,
    ids: DashMap<KeyId, KeyMeta>,
    tenants: DashMap<TenantId, TenantEntry>,
    changes: KeyChanges,
    /// Live keys found before, by tag: a hit costs no SHA-256.
    recognised: Recognised<CompactRecord>,
    /// Held through a rotation (read the old key, issue its successor, shorten it), so two
    /// rotations of one key at once make one successor.
    rotating: std::sync::Mutex<()>,
}

/// What the store keeps about a key besides its record.
struct KeyMeta {
    hash: KeyHash,
    created_at: Duration,
    last_used_at: Option<Duration>,
}

/// A tenant's plan, limits and keys. Changes to it are copied into each of its keys' records,
/// so a lookup reads one map.
struct TenantEntry {
    plan: Plan,
    overrides: LimitOverrides,
    keys: Vec<KeyHash>,
    created_at: Duration,
}

impl TenantEntry {
    /// The tenant as an administrator sees it.
    fn info(&self, id: TenantId) -> TenantInfo {
        TenantInfo {
            id,
            plan: self.plan.clone(),
            overrides: self.overrides,
            created_at: self.created_at,
        }
    }

    /// The tenant as key `key_id` presents it.
    fn tenant(&self, id: TenantId, key_id: KeyId) -> Tenant {
        let mut tenant = Tenant::new(id, self.plan.clone(), key_id);
        tenant.set_overrides(self.overrides);
        tenant
    }
}

impl MemoryKeyStore {
    /// An empty store that issues keys of the default format and reads the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues keys of `format` (give the auth layer the same format:
    /// [`NatLayer::key_format`](crate::NatLayer::key_format)).
    #[must_use]
    pub fn format(mut self, format: KeyFormat) -> Self {
        Arc::make_mut(&mut self.settings).format = format;
        self
    }

    /// Reads `clock` for rotation and issue times (give the layers the same clock).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        Arc::make_mut(&mut self.settings).clock = clock;
        self
    }

    /// Knows the plan table: tenants are refused a plan it lacks
    /// ([`AdminError::UnknownPlan`]), rather than put on a plan every request of which would
    /// be a 500. Give it the table the layers use.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        Arc::make_mut(&mut self.settings).plans = Some(plans.into());
        self
    }

    /// Adds a tenant, or changes its plan if it exists. A plan change applies to the next
    /// request. Fails only for a plan the store's table lacks ([`plans`](Self::plans)).
    pub fn insert_tenant(&self, tenant: impl Into<TenantId>, plan: Plan) -> Result<(), AdminError> {
        let id = tenant.into();
        let plan = known_plan(self.settings.plans.as_ref(), &plan)?;
        match self.set_plan(id.as_str(), plan.clone()) {
            Err(AdminError::UnknownTenant) => {
                self.inner.tenants.entry(id).or_insert(TenantEntry {
                    plan,
                    overrides: LimitOverrides::default(),
                    keys: Vec::new(),
                    created_at: self.settings.clock.now(),
                });
                Ok(())
            }
            done => done,
        }
    }

    /// Changes a tenant's plan: [`AdminError::UnknownTenant`] if there is no such tenant,
    /// [`AdminError::UnknownPlan`] for a plan the store's table lacks.
    pub fn set_plan(&self, tenant: &str, plan: Plan) -> Result<(), AdminError> {
        let plan = known_plan(self.settings.plans.as_ref(), &plan)?;
        self.update(tenant, |entry| entry.plan = plan)
    }

    /// Sets a tenant's own limits (replacing any it had); [`AdminError::UnknownTenant`] if
    /// there is no such tenant.
    pub fn set_overrides(&self, tenant: &str, overrides: LimitOverrides) -> Result<(), AdminError> {
        self.update(tenant, |entry| entry.overrides = overrides)
    }

    /// A tenant's plan, if the tenant exists.
    pub fn plan(&self, tenant: &str) -> Option<Plan> {
        self.inner.tenants.get(tenant).map(|e| e.plan.clone())
    }

    /// A tenant's own limits, if the tenant exists.
    pub fn overrides(&self, tenant: &str) -> Option<LimitOverrides> {
        self.inner.tenants.get(tenant).map(|e| e.overrides)
    }

    /// Announces a change to key `hash`, once applied.
    fn key_changed(&self, hash: &KeyHash) {
        self.inner.recognised.changed();
        self.inner.changes.key_changed(hash);
    }

    /// Announces a change to tenant `id`, once applied.
    fn tenant_changed(&self, id: &TenantId) {
        self.inner.recognised.changed();
        self.inner.changes.tenant_changed(id);
    }

    /// Changes a tenant and rewrites its keys' records, under the tenant's entry lock (so
    /// changes to one tenant apply in order).
    fn update(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut TenantEntry),
    ) -> Result<(), AdminError> {
        let Some(mut entry) = self.inner.tenants.get_mut(tenant) else {
            return Err(AdminError::UnknownTenant);
        };
        change(&mut entry);
        for hash in &entry.keys {
            if let Some(mut record) = self.inner.keys.get_mut(hash) {
                if record.tenant.id().as_str() != entry.key().as_str() {
                    continue;
                }
                let t = &record.tenant;
                record.tenant = entry.tenant(t.id().clone(), t.key_id().clone());
            }
        }
        let id = entry.key().clone();
        drop(entry);
        self.tenant_changed(&id);
        Ok(())
    }

    /// Deletes a tenant and all its keys; `false` if there was no such tenant.
    pub fn delete_tenant(&self, tenant: &str) -> bool {
        let Some((id, entry)) = self.inner.tenants.remove(tenant) else {
            return false;
        };
        for hash in entry.keys {
            let theirs = |_: &KeyHash, record: &KeyRecord| record.tenant.id() == &id;
            if let Some((_, record)) = self.inner.keys.remove_if(&hash, theirs) {
                self.inner.ids.remove(record.tenant.key_id());
            }
        }
        self.tenant_changed(&id);
        true
    }

    /// Stores `key`'s hash for `tenant`, expiring at `expires_at` (since the Unix epoch) if
    /// given, and returns the key's id. `None` if the tenant does not exist.
    pub fn add_key(
        &self,
        tenant: &str,
        key: &ApiKey,
        expires_at: Option<Duration>,
    ) -> Option<KeyId> {
        self.add_hash(tenant, key.hash(), expires_at)
    }

    /// Stores a key by its hash only (e.g. hashes loaded from a database).
    pub fn add_hash(
        &self,
        tenant: &str,
        hash: KeyHash,
        expires_at: Option<Duration>,
    ) -> Option<KeyId> {
        let mut entry = self.inner.tenants.get_mut(tenant)?;
        let key_id = KeyId::from(format!("key_{}", &hash.to_hex()[..16]));
        let record = KeyRecord {
            tenant: entry.tenant(entry.key().clone(), key_id.clone()),
            expires_at,
        };
        let meta = KeyMeta {
            hash,
            created_at: self.settings.clock.now(),
            last_used_at: None,
        };
        self.inner.ids.insert(key_id.clone(), meta);
        let replaced = self.inner.keys.insert(hash, record);
        if !entry.keys.contains(&hash) {
            entry.keys.push(hash);
        }
        drop(entry);
        if let Some(replaced) = replaced {
            // The key moved from another tenant: it is no longer that tenant's.
            let before = replaced.tenant.id();
            if before.as_str() != tenant {
                if let Some(mut other) = self.inner.tenants.get_mut(before.as_str()) {
                    other.keys.retain(|h| *h != hash);
                }
            }
            self.inner.recognised.changed();
        }
        // A cache may hold "no such key" for this hash.
        self.inner.changes.key_changed(&hash);
        Some(key_id)
    }

    /// Generates a new key of the store's format for `tenant` and stores its hash; it stops
    /// working at `expires_at` (time since the Unix epoch) if given. `None` if the tenant
    /// does not exist.
    pub fn issue_key(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey> {
        let key = self.settings.format.generate();
        let id = self.add_key(tenant, &key, expires_at)?;
        Some(IssuedKey { id, key })
    }

    /// Issues a new key for the tenant of key `key_id`, with the old key's expiry; the old key
    /// keeps working for `grace` and then stops (its expiry becomes now + `grace` if that is
    /// sooner). `None` if there is no such live key (revoked, or expired). Two rotations of
    /// one key at once run one after the other: with no grace, the second finds it expired.
    pub fn rotate(&self, key_id: &KeyId, grace: Duration) -> Option<IssuedKey> {
        let _rotating = self
            .inner
            .rotating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.settings.clock.now();
        let hash = self.inner.ids.get(key_id)?.hash;
        let (tenant, expires_at) = {
            let record = self.inner.keys.get(&hash)?;
            (record.tenant.id().clone(), record.expires_at)
        };
        // An expired key (one rotated with no grace, too) has no successor to make.
        if expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let issued = self.issue_key(tenant.as_str(), expires_at)?;
        let until = now.saturating_add(grace);
        self.set_expiry(key_id, Some(expires_at.map_or(until, |at| at.min(until))));
        Some(issued)
    }

    /// Sets when key `key_id` stops working (time since the Unix epoch; `None`: never);
    /// `false` if there is no such key.
    pub fn set_expiry(&self, key_id: &KeyId, expires_at: Option<Duration>) -> bool {
        let Some(hash) = self.inner.ids.get(key_id).map(|m| m.hash) else {
            return false;
        };
        let Some(mut record) = self.inner.keys.get_mut(&hash) else {
            return false;
        };
        record.expires_at = expires_at;
        drop(record);
        self.key_changed(&hash);
        true
    }

    /// Revokes a key by its id; `false` if there was no such key.
    pub fn revoke(&self, key_id: &KeyId) -> bool {
        let Some((_, meta)) = self.inner.ids.remove(key_id) else {
            return false;
        };
        let Some((_, record)) = self.inner.keys.remove(&meta.hash) else {
            return false;
        };
        if let Some(mut entry) = self.inner.tenants.get_mut(record.tenant.id().as_str()) {
            entry.keys.retain(|h| *h != meta.hash);
        }
        self.key_changed(&meta.hash);
        true
    }

    /// A tenant's live keys (revoked keys are forgotten), oldest first.
    pub fn keys(&self, tenant: &str) -> Vec<KeyInfo> {
        let Some(entry) = self.inner.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut keys: Vec<KeyInfo> = entry
            .keys
            .iter()
            .filter_map(|hash| Some(self.info(hash)?.1))
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        keys
    }

    /// The tenant and what an administrator sees of the key with this hash.
    fn info(&self, hash: &KeyHash) -> Option<(TenantId, KeyInfo)> {
        let record = self.inner.keys.get(hash)?;
        let id = record.tenant.key_id().clone();
        let meta = self.inner.ids.get(&id)?;
        let info = KeyInfo {
            created_at: meta.created_at,
            expires_at: record.expires_at,
            revoked_at: None,
            last_used_at: meta.last_used_at,
            id,
        };
        Some((record.tenant.id().clone(), info))
    }

    /// A tenant as an administrator sees it.
    fn info_of(&self, tenant: &str) -> Result<TenantInfo, AdminError> {
        let entry = self
            .inner
            .tenants
            .get(tenant)
            .ok_or(AdminError::UnknownTenant)?;
        Ok(entry.info(entry.key().clone()))
    }

    /// The number of stored keys.
    pub fn key_count(&self) -> usize {
        self.inner.keys.len()
    }

    /// The record of the key with this hash, as a lookup finds it.
    pub fn get(&self, hash: &KeyHash) -> Option<KeyRecord> {
        self.inner.keys.get(hash).map(|record| record.clone())
    }
}

impl KeyStore for MemoryKeyStore {
    type Future = std::future::Pending<Result<Option<KeyRecord>, StoreError>>;

    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        Answer::Ready(Ok(self.get(hash)))
    }

    /// A live key found before is found by its tag; any other by its SHA-256.
    #[inline]
    fn find(&self, key: &PresentedKey<'_>) -> Answer<Option<KeyRecord>, Self::Future> {
        let recognised = &self.inner.recognised;
        let Some(tag) = key.tag() else {
            return self.lookup(&key.hash());
        };
        if let Some(record) = recognised.get(tag) {
            return Answer::Ready(Ok(Some(record.record())));
        }
        let started = recognised.start();
        let record = self.get(&key.hash());
        if let Some(compact) = record.as_ref().and_then(CompactRecord::new) {
            let capacity = 2 * self.inner.keys.len() + 1024;
            recognised.remember(tag, started, compact, capacity);
        }
        Answer::Ready(Ok(record))
    }

    fn known(&self, hash: &KeyHash) -> Option<Answer<Option<KeyRecord>, Self::Future>> {
        self.get(hash).map(|record| Answer::Ready(Ok(Some(record))))
    }

    fn changes(&self) -> Option<&KeyChanges> {
        Some(&self.inner.changes)
    }

    fn record_use(&self, key_id: &KeyId, at: Duration) {
        if let Some(mut meta) = self.inner.ids.get_mut(key_id) {
            meta.last_used_at = Some(meta.last_used_at.map_or(at, |t| t.max(at)));
        }
    }
}

/// Answers at once.
fn now<T: Send>(value: T) -> std::future::Ready<T> {
    std::future::ready(value)
}

/// The items of `all` (in id order) after `page.after`, at most `page.size()` of them.
fn page_of<T>(mut all: Vec<(String, T)>, page: &Page) -> Vec<T> {
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter()
        .filter(|(id, _)| {
            page.after
                .as_deref()
                .is_none_or(|after| id.as_str() > after)
        })
        .take(page.size())
        .map(|(_, item)| item)
        .collect()
}

impl KeyAdmin for MemoryKeyStore {
    fn create_tenant(
        &self,
        id: &str,
        plan: &Plan,
        overrides: LimitOverrides,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send {
        let plan = match valid_tenant_id(id) {
            true => known_plan(self.settings.plans.as_ref(), plan),
            false => Err(AdminError::InvalidTenantId),
        };
        let created = plan.and_then(|plan| match self.inner.tenants.entry(TenantId::from(id)) {
            dashmap::Entry::Occupied(_) => Err(AdminError::TenantExists),
            dashmap::Entry::Vacant(vacant) => {
                let entry = TenantEntry {
                    plan,
                    overrides,
                    keys: Vec::new(),
                    created_at: self.settings.clock.now(),
                };
                let info = entry.info(vacant.key().clone());
                vacant.insert(entry);
                Ok(info)
            }
        });
        now(created)
    }

    fn tenant(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<TenantInfo>, AdminError>> + Send {
        let entry = self.inner.tenants.get(id);
        now(Ok(entry.map(|e| e.info(e.key().clone()))))
    }

    fn tenants(
        &self,
        page: &Page,
    ) -> impl Future<Output = Result<Vec<TenantInfo>, AdminError>> + Send {
        let all = self
            .inner
            .tenants
            .iter()
            .map(|e| (e.key().to_string(), e.info(e.key().clone())))
            .collect();
        now(Ok(page_of(all, page)))
    }

    fn change_plan(
        &self,
        id: &str,
        plan: &Plan,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send {
        let changed = self
            .set_plan(id, plan.clone())
            .and_then(|()| self.info_of(id));
        now(changed)
    }

    fn change_overrides(
        &self,
        id: &str,
        overrides: LimitOverrides,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send {
        let changed = self
            .set_overrides(id, overrides)
            .and_then(|()| self.info_of(id));
        now(changed)
    }

    fn remove_tenant(&self, id: &str) -> impl Future<Output = Result<(), AdminError>> + Send {
        now(self
            .delete_tenant(id)
            .then_some(())
            .ok_or(AdminError::UnknownTenant))
    }

    fn issue(
        &self,
        tenant: &str,
        expires_at: Option<Duration>,
    ) -> impl Future<Output = Result<IssuedKey, AdminError>> + Send {
        now(self
            .issue_key(tenant, expires_at)
            .ok_or(AdminError::UnknownTenant))
    }

    fn list_keys(
        &self,
        tenant: &str,
        page: &Page,
    ) -> impl Future<Output = Result<Vec<KeyInfo>, AdminError>> + Send {
        let listed = match self.inner.tenants.get(tenant) {
            None => Err(AdminError::UnknownTenant),
            Some(entry) => {
                let hashes = entry.keys.clone();
                drop(entry);
                let all = hashes
                    .iter()
                    .filter_map(|hash| self.info(hash))
                    .map(|(_, info)| (info.id.to_string(), info))
                    .collect();
                Ok(page_of(all, page))
            }
        };
        now(listed)
    }

    fn key(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<(TenantId, KeyInfo)>, AdminError>> + Send {
        let hash = self.inner.ids.get(id).map(|meta| meta.hash);
        now(Ok(hash.and_then(|hash| self.info(&hash))))
    }

    fn revoke_key(&self, id: &KeyId) -> impl Future<Output = Result<(), AdminError>> + Send {
        now(self.revoke(id).then_some(()).ok_or(AdminError::UnknownKey))
    }

    fn rotate_key(
        &self,
        id: &KeyId,
        grace: Duration,
    ) -> impl Future<Output = Result<IssuedKey, AdminError>> + Send {
        now(self.rotate(id, grace).ok_or(AdminError::UnknownKey))
    }

    fn change_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<Duration>,
    ) -> impl Future<Output = Result<(), AdminError>> + Send {
        now(self
            .set_expiry(id, expires_at)
            .then_some(())
            .ok_or(AdminError::UnknownKey))
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("keys", &self.inner.keys.len())
            .field("tenants", &self.inner.tenants.len())
            .field("format", &self.settings.format)
            .finish()
    }
}
