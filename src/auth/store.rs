//! Key stores: the [`KeyStore`] trait and the in-memory [`MemoryKeyStore`].

use std::{
    fmt,
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::Duration,
};

use dashmap::DashMap;

use super::key::{ApiKey, KeyHash};
use crate::{
    error::StoreError,
    plan::{LimitOverrides, Plan},
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

/// An in-memory key store that keeps only SHA-256 hashes of keys.
///
/// Every method may be called while the store serves requests, and takes effect for every
/// request that starts after it returns; clones share the same keys. A lookup is one map read
/// and one reference-count increment.
///
/// ```
/// use tower_nat::{auth::MemoryKeyStore, plan::Plan};
///
/// let store = MemoryKeyStore::new();
/// store.insert_tenant("acme", Plan::PRO);
/// let issued = store.issue_key("acme", None).unwrap();
/// assert!(issued.key.expose().starts_with("nat_pk_"));
/// store.set_plan("acme", Plan::TEAM);
/// assert!(store.revoke(&issued.id));
/// store.delete_tenant("acme");
/// ```
#[derive(Clone, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: DashMap<KeyHash, KeyRecord, BuildHasherDefault<HashOfHash>>,
    ids: DashMap<KeyId, KeyHash>,
    tenants: DashMap<TenantId, TenantEntry>,
}

/// A tenant's plan, limits and keys. Changes to it are copied into each of its keys' records,
/// so a lookup reads one map.
struct TenantEntry {
    plan: Plan,
    overrides: LimitOverrides,
    keys: Vec<KeyHash>,
}

impl TenantEntry {
    /// The tenant as key `key_id` presents it.
    fn tenant(&self, id: TenantId, key_id: KeyId) -> Tenant {
        let mut tenant = Tenant::new(id, self.plan.clone(), key_id);
        tenant.set_overrides(self.overrides);
        tenant
    }
}

/// Hashes a [`KeyHash`] by its first eight bytes. A SHA-256 output is already uniform, and
/// only the server inserts keys, so no client can crowd a bucket: hashing it again would be
/// wasted work on every request.
#[derive(Default)]
struct HashOfHash(u64);

impl Hasher for HashOfHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tenant, or changes its plan if it exists. A plan change applies to the next
    /// request.
    pub fn insert_tenant(&self, tenant: impl Into<TenantId>, plan: Plan) {
        let id = tenant.into();
        if !self.set_plan(id.as_str(), plan.clone()) {
            self.inner.tenants.entry(id).or_insert(TenantEntry {
                plan,
                overrides: LimitOverrides::default(),
                keys: Vec::new(),
            });
        }
    }

    /// Changes a tenant's plan; `false` if there is no such tenant.
    pub fn set_plan(&self, tenant: &str, plan: Plan) -> bool {
        self.update(tenant, |entry| entry.plan = plan)
    }

    /// Sets a tenant's own limits (replacing any it had); `false` if there is no such tenant.
    pub fn set_overrides(&self, tenant: &str, overrides: LimitOverrides) -> bool {
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

    /// Changes a tenant and rewrites its keys' records, under the tenant's entry lock (so
    /// changes to one tenant apply in order).
    fn update(&self, tenant: &str, change: impl FnOnce(&mut TenantEntry)) -> bool {
        let Some(mut entry) = self.inner.tenants.get_mut(tenant) else {
            return false;
        };
        change(&mut entry);
        for hash in &entry.keys {
            if let Some(mut record) = self.inner.keys.get_mut(hash) {
                let t = &record.tenant;
                record.tenant = entry.tenant(t.id().clone(), t.key_id().clone());
            }
        }
        true
    }

    /// Deletes a tenant and all its keys; `false` if there was no such tenant.
    pub fn delete_tenant(&self, tenant: &str) -> bool {
        let Some((_, entry)) = self.inner.tenants.remove(tenant) else {
            return false;
        };
        for hash in entry.keys {
            if let Some((_, record)) = self.inner.keys.remove(&hash) {
                self.inner.ids.remove(record.tenant.key_id());
            }
        }
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
        self.inner.ids.insert(key_id.clone(), hash);
        self.inner.keys.insert(hash, record);
        if !entry.keys.contains(&hash) {
            entry.keys.push(hash);
        }
        Some(key_id)
    }

    /// Generates a new key for `tenant` and stores its hash. `None` if the tenant does not
    /// exist.
    pub fn issue_key(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey> {
        let key = ApiKey::generate();
        let id = self.add_key(tenant, &key, expires_at)?;
        Some(IssuedKey { id, key })
    }

    /// Revokes a key by its id; `false` if there was no such key.
    pub fn revoke(&self, key_id: &KeyId) -> bool {
        let Some((_, hash)) = self.inner.ids.remove(key_id) else {
            return false;
        };
        let Some((_, record)) = self.inner.keys.remove(&hash) else {
            return false;
        };
        if let Some(mut entry) = self.inner.tenants.get_mut(record.tenant.id().as_str()) {
            entry.keys.retain(|h| *h != hash);
        }
        true
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
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("keys", &self.inner.keys.len())
            .field("tenants", &self.inner.tenants.len())
            .finish()
    }
}
