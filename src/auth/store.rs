//! Key stores: the [`KeyStore`] trait and the in-memory [`MemoryKeyStore`].

use std::{
    fmt,
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;

use super::key::{ApiKey, KeyHash};
use crate::{
    error::StoreError,
    store::Answer,
    tenant::{KeyId, Plan, Tenant, TenantId},
};

/// What a store knows of a live key: whose it is and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's tenant, with its current plan.
    pub tenant: Tenant,
    /// When the key stops working (time since the Unix epoch), if ever.
    pub expires_at: Option<Duration>,
}

/// Where API keys are looked up, by hash.
///
/// `lookup` returns `Ok(None)` for a key that is unknown, revoked, or whose tenant was
/// deleted; expiry is checked by the layer against its clock. A store error becomes a 500
/// `INTERNAL_ERROR`.
pub trait KeyStore: Clone + Send + Sync + 'static {
    /// The future of a lookup that cannot answer at once. Stores that always answer at once
    /// use [`std::future::Pending`] or [`std::future::Ready`] here.
    type Future: Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Looks a key up by its hash.
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future>;
}

/// An in-memory key store that keeps only SHA-256 hashes of keys.
///
/// Every method may be called while the store serves requests; clones share the same keys.
///
/// ```
/// use std::time::Duration;
/// use tower_nat::{auth::MemoryKeyStore, tenant::Plan};
///
/// let store = MemoryKeyStore::new();
/// store.insert_tenant("acme", Plan::Pro);
/// let key = store.issue_key("acme", None).unwrap();
/// assert!(key.expose().starts_with("nat_pk_"));
/// store.set_plan("acme", Plan::Team);
/// store.delete_tenant("acme");
/// ```
#[derive(Clone, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: DashMap<KeyHash, KeyEntry, BuildHasherDefault<HashOfHash>>,
    ids: DashMap<KeyId, KeyHash>,
    tenants: DashMap<TenantId, Arc<TenantSlot>>,
}

/// A tenant as its keys see it: one lookup per request finds the key and, through this, the
/// tenant's current plan.
struct TenantSlot {
    id: TenantId,
    plan: AtomicU8,
    deleted: AtomicBool,
}

impl TenantSlot {
    fn plan(&self) -> Plan {
        Plan::ALL[usize::from(self.plan.load(Ordering::Acquire)) % Plan::ALL.len()]
    }
}

struct KeyEntry {
    tenant: Arc<TenantSlot>,
    key_id: KeyId,
    expires_at: Option<Duration>,
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
        self.inner
            .tenants
            .entry(id.clone())
            .and_modify(|slot| slot.plan.store(plan as u8, Ordering::Release))
            .or_insert_with(|| {
                Arc::new(TenantSlot {
                    id,
                    plan: AtomicU8::new(plan as u8),
                    deleted: AtomicBool::new(false),
                })
            });
    }

    /// Changes a tenant's plan; `false` if there is no such tenant.
    pub fn set_plan(&self, tenant: &str, plan: Plan) -> bool {
        match self.inner.tenants.get(tenant) {
            Some(slot) => {
                slot.plan.store(plan as u8, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// A tenant's plan, if the tenant exists.
    pub fn plan(&self, tenant: &str) -> Option<Plan> {
        self.inner.tenants.get(tenant).map(|slot| slot.plan())
    }

    /// Deletes a tenant and all its keys; `false` if there was no such tenant.
    pub fn delete_tenant(&self, tenant: &str) -> bool {
        // The tenant goes first: from then on its keys fail even before they are removed.
        let Some((_, slot)) = self.inner.tenants.remove(tenant) else {
            return false;
        };
        slot.deleted.store(true, Ordering::Release);
        let inner = &self.inner;
        inner.keys.retain(|_, entry| {
            let keep = !Arc::ptr_eq(&entry.tenant, &slot);
            if !keep {
                inner.ids.remove(&entry.key_id);
            }
            keep
        });
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
        let tenant = self.inner.tenants.get(tenant).map(|slot| slot.clone())?;
        let key_id = KeyId::from(format!("key_{}", &hash.to_hex()[..16]));
        self.inner.ids.insert(key_id.clone(), hash);
        self.inner.keys.insert(
            hash,
            KeyEntry {
                tenant,
                key_id: key_id.clone(),
                expires_at,
            },
        );
        Some(key_id)
    }

    /// Generates a new key for `tenant`, stores its hash, and returns the key: the only time it
    /// is seen in clear. `None` if the tenant does not exist.
    pub fn issue_key(&self, tenant: &str, expires_at: Option<Duration>) -> Option<ApiKey> {
        let key = ApiKey::generate();
        self.add_key(tenant, &key, expires_at)?;
        Some(key)
    }

    /// Revokes a key by its id; `false` if there was no such key.
    pub fn revoke(&self, key_id: &KeyId) -> bool {
        match self.inner.ids.remove(key_id) {
            Some((_, hash)) => self.inner.keys.remove(&hash).is_some(),
            None => false,
        }
    }

    /// The number of stored keys.
    pub fn key_count(&self) -> usize {
        self.inner.keys.len()
    }
}

impl KeyStore for MemoryKeyStore {
    type Future = std::future::Pending<Result<Option<KeyRecord>, StoreError>>;

    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        let record = self.inner.keys.get(hash).and_then(|entry| {
            let slot = &entry.tenant;
            if slot.deleted.load(Ordering::Acquire) {
                return None;
            }
            Some(KeyRecord {
                tenant: Tenant::new(slot.id.clone(), slot.plan(), entry.key_id.clone()),
                expires_at: entry.expires_at,
            })
        });
        Answer::Ready(Ok(record))
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
