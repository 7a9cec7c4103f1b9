//! A bounded table of answers a store knows without asking its backend (a tenant refused
//! until a known time, a quota exhausted until its period ends).

use dashmap::DashMap;

use crate::tenant::TenantId;

/// Tenant ids come from authentication, not from clients, so a fast seeded hash is safe here.
type Hasher = foldhash::fast::RandomState;

/// The default number of tenants a store remembers answers for.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

/// At most `capacity` entries, one per tenant.
pub(crate) struct Known<V> {
    map: DashMap<TenantId, V, Hasher>,
    capacity: usize,
}

impl<V: Clone> Known<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::with_hasher(Hasher::default()),
            capacity,
        }
    }

    /// The entry of `tenant`, if any (cloned: entries are a few words).
    #[inline]
    pub(crate) fn get(&self, tenant: &TenantId) -> Option<V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(tenant.as_str()).map(|v| v.clone())
    }

    /// Remembers `value` for `tenant`. When the table is full, the entries `still_useful`
    /// rejects are dropped first; when it is still full, nothing is remembered (the store
    /// then asks its backend, as without the table).
    pub(crate) fn remember(&self, tenant: &TenantId, value: V, still_useful: impl Fn(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(tenant.as_str()) {
            self.map.retain(|_, v| still_useful(v));
            if self.map.len() >= self.capacity {
                return;
            }
        }
        self.map.insert(tenant.clone(), value);
    }

    /// Forgets `tenant`'s entry.
    pub(crate) fn forget(&self, tenant: &TenantId) {
        self.map.remove(tenant.as_str());
    }

    /// Forgets every entry.
    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
