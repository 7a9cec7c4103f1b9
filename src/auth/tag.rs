//! Keys found again without their SHA-256: a keyed 128-bit hash of the presented key
//! ([`KeyTag`]) and an index of the live keys a store has already answered ([`Recognised`]).
//!
//! Stores keep and look keys up by their SHA-256 ([`KeyHash`]), which costs as much as the
//! rest of a request's checks together. A key a store has found once is found again by its
//! tag: SipHash-2-4 with 128-bit output, keyed by a secret drawn from the operating system once
//! per process. The tag is a pseudo-random function of the key under a secret no client sees,
//! so a client cannot make another key's tag (a chance of 2^-128 per entry and try), and no
//! plaintext key is kept. Only live keys are indexed: an unknown key always takes the SHA-256
//! path (and the failed-authentication throttle).
//!
//! An indexed answer is valid while no change was announced since it was indexed: the index
//! is told of each change ([`Recognised::changed`]) and drops every answer indexed before it,
//! so after a change each key pays one SHA-256 again.

use std::{
    borrow::Borrow,
    cell::OnceCell,
    fmt,
    hash::{Hash, Hasher},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use siphasher::sip128::SipHasher24;

use super::{
    KeyRecord,
    key::{HashOfHash, KeyHash},
};
use crate::tenant::Tenant;

/// The process's secret key of [`KeyTag`]s; `None` if the operating system's random source
/// failed (keys are then always found by their SHA-256).
fn secret() -> Option<&'static SipHasher24> {
    static SECRET: OnceLock<Option<SipHasher24>> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let mut key = [0u8; 16];
            getrandom::fill(&mut key).ok()?;
            Some(SipHasher24::new_with_key(&key))
        })
        .as_ref()
}

/// A presented key's keyed 128-bit hash (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyTag(u128);

impl KeyTag {
    /// The tag of `key`, if the process has a secret.
    fn of(key: &[u8]) -> Option<Self> {
        secret().map(|sip| Self(sip.hash(key).into()))
    }
}

/// An API key as a request presented it, after its format was checked: what
/// [`KeyStore::find`](super::KeyStore::find) looks up.
///
/// Its SHA-256 ([`hash`](Self::hash)) is taken when first asked for, at most once; stores of
/// this crate that keep keys in memory find a key they have answered before without it. It
/// does not show the key: `Debug` prints nothing of it.
pub struct PresentedKey<'a> {
    key: &'a [u8],
    hash: OnceCell<KeyHash>,
    tag: OnceCell<Option<KeyTag>>,
}

impl<'a> PresentedKey<'a> {
    /// The key `key` (its bytes as the request carried them).
    pub fn new(key: &'a [u8]) -> Self {
        Self {
            key,
            hash: OnceCell::new(),
            tag: OnceCell::new(),
        }
    }

    /// The key's SHA-256, as stores keep it.
    pub fn hash(&self) -> KeyHash {
        *self.hash.get_or_init(|| KeyHash::of(self.key))
    }

    /// Whether its SHA-256 was taken.
    #[cfg(test)]
    pub(crate) fn hashed(&self) -> bool {
        self.hash.get().is_some()
    }

    /// The key's tag, if the process has a secret.
    pub(crate) fn tag(&self) -> Option<KeyTag> {
        *self.tag.get_or_init(|| KeyTag::of(self.key))
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresentedKey(…)")
    }
}

/// Live keys' answers by tag, each valid until the next announced change.
pub(crate) struct Recognised<V> {
    /// Each answer in the table's key, beside its tag: one aligned 32-byte bucket, one cache
    /// line, is all a hit reads past the table's control bytes.
    answers: DashMap<Tagged<V>, (), HashOfHash>,
    /// Counts the changes announced so far.
    changes: AtomicU64,
    /// The latest change whose answers were all dropped: while it is behind `changes`, a
    /// change is under way and nothing is answered from the index.
    cleared: AtomicU64,
}

/// An answer and its tag (compared and hashed by its tag alone).
#[repr(align(32))]
struct Tagged<V> {
    tag: KeyTag,
    value: V,
}

impl<V> PartialEq for Tagged<V> {
    fn eq(&self, other: &Self) -> bool {
        self.tag == other.tag
    }
}

impl<V> Eq for Tagged<V> {}

impl<V> Hash for Tagged<V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tag.hash(state);
    }
}

impl<V> Borrow<KeyTag> for Tagged<V> {
    fn borrow(&self) -> &KeyTag {
        &self.tag
    }
}

impl<V: Clone> Default for Recognised<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> Recognised<V> {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self {
            answers: DashMap::with_hasher(HashOfHash::default()),
            changes: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
        }
    }

    /// The change count, read before a lookup whose answer may be indexed.
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// The answer indexed for `tag`, unless a change is under way.
    ///
    /// Every answer in the index was indexed by a lookup that started after the latest
    /// change whose answers were dropped (see [`remember`](Self::remember)); while no later
    /// change is under way, it is valid.
    #[inline]
    pub(crate) fn get(&self, tag: KeyTag) -> Option<V> {
        let cleared = self.cleared.load(Ordering::SeqCst);
        if self.changes.load(Ordering::SeqCst) != cleared {
            return None;
        }
        let indexed = self.answers.get(&tag)?;
        Some(indexed.key().value.clone())
    }

    /// Indexes the answer of a lookup that started at change count `started` (see
    /// [`start`](Self::start)); it is indexed only if no change was announced since. An index
    /// holding `capacity` answers starts again empty.
    pub(crate) fn remember(&self, tag: KeyTag, started: u64, value: V, capacity: usize) {
        if started != self.start() {
            return;
        }
        if self.answers.len() >= capacity {
            self.answers.clear();
        }
        // Checked again under the shard's lock: a change announced after this check drops
        // the shard's answers after the lock is released, this one with them.
        match self.answers.entry(Tagged { tag, value }) {
            _ if started != self.start() => {}
            dashmap::Entry::Occupied(entry) => drop(entry.replace_entry(())),
            dashmap::Entry::Vacant(entry) => drop(entry.insert(())),
        }
    }

    /// A change was announced (after the store applied it): every answer indexed so far is
    /// dropped, so that the records it held, and the rate state they hold, go. Counted first,
    /// so that a lookup that raced it indexes nothing, and nothing is answered until every
    /// shard is emptied.
    pub(crate) fn changed(&self) {
        let change = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        self.answers.clear();
        self.cleared.fetch_max(change, Ordering::SeqCst);
    }

    /// How many answers are indexed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.answers.len()
    }
}

/// A key record as [`Recognised`] keeps it: 16 bytes, so that it fits its tag's bucket.
#[derive(Clone)]
pub(crate) struct CompactRecord {
    tenant: Tenant,
    /// Nanoseconds since the Unix epoch; `u64::MAX` for a key that does not expire.
    expires_at: u64,
}

impl CompactRecord {
    /// `record` compacted, unless it expires too far ahead to count in nanoseconds (after
    /// 2554): such a key is not indexed.
    pub(crate) fn new(record: &KeyRecord) -> Option<Self> {
        let expires_at = match record.expires_at {
            None => u64::MAX,
            Some(at) => u64::try_from(at.as_nanos())
                .ok()
                .filter(|&n| n != u64::MAX)?,
        };
        Some(Self {
            tenant: record.tenant.clone(),
            expires_at,
        })
    }

    /// The record, as it was.
    pub(crate) fn record(self) -> KeyRecord {
        let expires_at =
            (self.expires_at != u64::MAX).then(|| Duration::from_nanos(self.expires_at));
        KeyRecord {
            tenant: self.tenant,
            expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::{ApiKey, CachedKeyStore, KeyRecord, KeyStore, MemoryKeyStore},
        plan::Plan,
        store::Answer,
        tenant::KeyId,
    };

    #[test]
    fn tags_are_keyed_and_tell_keys_apart() {
        let a = PresentedKey::new(b"nat_pk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let b = PresentedKey::new(b"nat_pk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab");
        let (ta, tb) = (a.tag().unwrap(), b.tag().unwrap());
        assert!(ta != tb);
        assert!(ta == PresentedKey::new(a.key).tag().unwrap());
        // Not SipHash under a fixed (zero) key: the secret is drawn per process.
        let unkeyed: u128 = SipHasher24::new_with_key(&[0; 16]).hash(a.key).into();
        assert!(ta.0 != unkeyed);
        assert_eq!(a.hash(), KeyHash::of(a.key));
        assert_eq!(format!("{a:?}"), "PresentedKey(…)");
    }

    /// `find`'s answer, now or later.
    async fn find<K: KeyStore>(store: &K, key: &PresentedKey<'_>) -> Option<KeyRecord> {
        match store.find(key) {
            Answer::Ready(answer) => answer.unwrap(),
            Answer::Pending(lookup) => lookup.await.unwrap(),
        }
    }

    /// A live key is found by its SHA-256 once, then by its tag; an unknown key always by
    /// its SHA-256.
    async fn found_again_by_tag<K: KeyStore>(store: &K, bytes: &[u8], id: &KeyId) {
        let key = PresentedKey::new(bytes);
        assert_eq!(find(store, &key).await.unwrap().tenant.key_id(), id);
        assert!(key.hashed(), "found first by its SHA-256");
        found_by_tag(store, bytes).await;
    }

    /// A live key is found by its tag; an unknown key by its SHA-256.
    async fn found_by_tag<K: KeyStore>(store: &K, bytes: &[u8]) {
        for _ in 0..3 {
            let key = PresentedKey::new(bytes);
            assert!(matches!(store.find(&key), Answer::Ready(Ok(Some(_)))));
            assert!(!key.hashed(), "found again by its tag");
        }
        let unknown = ApiKey::generate();
        for _ in 0..2 {
            let key = PresentedKey::new(unknown.expose().as_bytes());
            assert!(find(store, &key).await.is_none());
            assert!(key.hashed());
        }
    }

    /// The key's next lookup hashes it again and gets `plan`, or nothing.
    async fn hashed_again<K: KeyStore>(store: &K, bytes: &[u8], plan: Option<&Plan>) {
        let key = PresentedKey::new(bytes);
        let record = find(store, &key).await;
        assert_eq!(record.as_ref().map(|r| r.tenant.plan()), plan);
        assert!(key.hashed());
    }

    #[tokio::test]
    async fn a_live_key_found_before_costs_no_sha256_until_a_change() {
        let store = MemoryKeyStore::new();
        store.insert_tenant("acme", Plan::PRO).unwrap();
        let issued = store.issue_key("acme", None).unwrap();
        let cached = CachedKeyStore::new(store.clone());
        let bytes = issued.key.expose().as_bytes();
        // The cache's first lookup goes to the store.
        hashed_again(&cached, bytes, Some(&Plan::PRO)).await;
        found_again_by_tag(&store, bytes, &issued.id).await;
        found_again_by_tag(&cached, bytes, &issued.id).await;

        store.set_plan("acme", Plan::TEAM).unwrap();
        hashed_again(&store, bytes, Some(&Plan::TEAM)).await;
        // The cache's entry was dropped: its first lookup goes to the store.
        hashed_again(&cached, bytes, Some(&Plan::TEAM)).await;
        found_by_tag(&store, bytes).await;
        found_again_by_tag(&cached, bytes, &issued.id).await;

        assert!(store.revoke(&issued.id));
        hashed_again(&store, bytes, None).await;
        hashed_again(&cached, bytes, None).await;
    }

    #[test]
    fn an_answer_holds_until_the_next_change() {
        let index = Recognised::new();
        let tag = PresentedKey::new(b"k").tag().unwrap();
        let started = index.start();
        index.remember(tag, started, 7, 10);
        assert_eq!(index.get(tag), Some(7));
        index.changed();
        assert_eq!(index.get(tag), None);
        assert_eq!(index.len(), 0);
        // A lookup that started before the change is not indexed after it.
        index.remember(tag, started, 8, 10);
        assert_eq!(index.get(tag), None);
        index.remember(tag, index.start(), 9, 10);
        assert_eq!(index.get(tag), Some(9));
    }

    #[test]
    fn nothing_is_answered_while_a_change_is_under_way() {
        let index = Recognised::new();
        let tag = PresentedKey::new(b"k").tag().unwrap();
        index.remember(tag, index.start(), 7, 10);
        // Announced, its answers not yet dropped (as `changed` is between its two steps).
        index.changes.fetch_add(1, Ordering::SeqCst);
        assert_eq!(index.get(tag), None);
        index.remember(tag, index.start(), 8, 10);
        index.answers.clear();
        index.cleared.fetch_max(1, Ordering::SeqCst);
        assert_eq!(
            index.get(tag),
            None,
            "the answer indexed during the change went too"
        );
        index.remember(tag, index.start(), 9, 10);
        assert_eq!(index.get(tag), Some(9));
        // A bucket is one aligned half cache line.
        assert_eq!(std::mem::size_of::<Tagged<CompactRecord>>(), 32);
        assert_eq!(std::mem::align_of::<Tagged<CompactRecord>>(), 32);
    }

    #[test]
    fn a_compact_record_is_the_record() {
        let tenant = crate::tenant::Tenant::new("acme", Plan::PRO, "k1");
        for expires_at in [
            None,
            Some(Duration::new(1_700_000_000, 123_456_789)),
            Some(Duration::from_nanos(u64::MAX - 1)),
        ] {
            let record = KeyRecord {
                tenant: tenant.clone(),
                expires_at,
            };
            assert_eq!(CompactRecord::new(&record).unwrap().record(), record);
        }
        // Past 2554: not indexed (found by its SHA-256 each time).
        for far in [Duration::from_nanos(u64::MAX), Duration::MAX] {
            let record = KeyRecord {
                tenant: tenant.clone(),
                expires_at: Some(far),
            };
            assert!(CompactRecord::new(&record).is_none());
        }
    }

    #[test]
    fn a_full_index_starts_again() {
        let index = Recognised::new();
        let tags: Vec<_> = (0u8..5)
            .map(|i| PresentedKey::new(&[i]).tag().unwrap())
            .collect();
        for (i, tag) in tags.iter().enumerate() {
            index.remember(*tag, index.start(), i, 3);
        }
        assert!(index.len() <= 3);
        assert_eq!(index.get(tags[4]), Some(4));
    }
}
