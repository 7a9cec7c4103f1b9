//! CachedKeyStore: single flight, TTLs, changes announced and not, the revocation race,
//! errors never cached, stale answers during an outage, expiry on every request, the size
//! bound, the number of queries over many requests, and last-use records.

use std::{sync::Arc, time::Duration};

use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKey, ApiKeyAuthLayer, CachedKeyStore, KeyStore, MemoryKeyStore},
    clock::{FakeClock, SharedClock, UtcDate},
    plan::Plan,
    store::Answer,
    tenant::Tenant,
};

use crate::common::{
    Answer as Reply, INTERNAL, UNAUTHORIZED, assert_envelope, empty, get, send, stores::Db,
};

struct Setup {
    db: Db,
    cache: CachedKeyStore<Db>,
    clock: FakeClock,
    key: ApiKey,
    key_id: tower_nat::tenant::KeyId,
}

fn setup(configure: impl FnOnce(CachedKeyStore<Db>) -> CachedKeyStore<Db>) -> Setup {
    setup_with(false, configure)
}

/// `silent`: the store does not announce its changes (another process makes them).
fn setup_with(
    silent: bool,
    configure: impl FnOnce(CachedKeyStore<Db>) -> CachedKeyStore<Db>,
) -> Setup {
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    let keys = MemoryKeyStore::new().clock(shared.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let issued = keys.issue_key("acme", None).unwrap();
    let db = Db::new(keys);
    if silent {
        db.silent();
    }
    let cache = configure(CachedKeyStore::new(db.clone()).clock(shared));
    Setup {
        db,
        cache,
        clock,
        key: issued.key,
        key_id: issued.id,
    }
}

/// Sends `GET /` with `key` through the auth layer over `cache`; 200 with the tenant's id and
/// plan as the body, or the layer's refusal.
async fn call(s: &Setup, key: &str) -> Reply {
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(s.cache.clone()).clock(Arc::new(s.clock.clone())))
        .service_fn(|req: http::Request<_>| async move {
            let t = Tenant::of(&req).unwrap();
            let body = format!("{} {}", t.id(), t.plan().name());
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
        });
    send(&service, empty(get("/").header("x-api-key", key))).await
}

fn ok(reply: &Reply, body: &str) {
    assert_eq!(reply.0, 200, "{:?}", reply.2);
    assert_eq!(reply.2, body.as_bytes());
}

#[tokio::test]
async fn concurrent_lookups_of_a_new_key_make_one_query() {
    let s = Arc::new(setup(|c| c));
    s.db.hold(true);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { call(&s, s.key.expose()).await })
        })
        .collect();
    // Every request is waiting on the one query.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.db.queries(), 1);
    s.db.release(1);
    for c in calls {
        ok(&c.await.unwrap(), "acme pro");
    }
    assert_eq!(s.db.queries(), 1);
    // Cached from now on.
    for _ in 0..100 {
        ok(&call(&s, s.key.expose()).await, "acme pro");
    }
    assert_eq!(s.db.queries(), 1);
    assert_eq!(s.cache.len(), 1);
}

#[tokio::test]
async fn live_keys_are_cached_for_the_ttl_and_unknown_keys_for_the_negative_ttl() {
    // Changes made elsewhere (another process) are not announced.
    let s = setup_with(true, |c| c);
    ok(&call(&s, s.key.expose()).await, "acme pro");
    let unknown = ApiKey::generate();
    assert_envelope(&call(&s, unknown.expose()).await, 401, UNAUTHORIZED);
    assert_eq!(s.db.queries(), 2);

    // The key is revoked and the unknown one issued, behind the cache's back.
    assert!(s.db.keys.revoke(&s.key_id));
    s.db.keys.add_key("acme", &unknown, None).unwrap();

    s.clock.advance(Duration::from_millis(4999));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_envelope(&call(&s, unknown.expose()).await, 401, UNAUTHORIZED);
    assert_eq!(s.db.queries(), 2);
    // The negative TTL (5 s) is over: the new key works.
    s.clock.advance(Duration::from_millis(1));
    ok(&call(&s, unknown.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 3);
    // The TTL (60 s) is over: the revoked key stops.
    s.clock.advance(Duration::from_millis(54_999));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    s.clock.advance(Duration::from_millis(1));
    assert_envelope(&call(&s, s.key.expose()).await, 401, UNAUTHORIZED);
    assert_eq!(s.db.queries(), 4);
}

#[tokio::test]
async fn changes_through_the_store_apply_at_once() {
    let s = setup(|c| c.ttl(Duration::from_secs(3600)));
    let second = s.db.keys.issue_key("acme", None).unwrap();
    ok(&call(&s, s.key.expose()).await, "acme pro");
    ok(&call(&s, second.key.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 2);

    s.db.keys.set_plan("acme", Plan::TEAM).unwrap();
    ok(&call(&s, s.key.expose()).await, "acme team");
    assert_eq!(s.db.queries(), 3);

    assert!(s.db.keys.revoke(&second.id));
    assert_envelope(&call(&s, second.key.expose()).await, 401, UNAUTHORIZED);

    // A cached "no such key" is forgotten when the key is issued here.
    let late = ApiKey::generate();
    assert_envelope(&call(&s, late.expose()).await, 401, UNAUTHORIZED);
    s.db.keys.add_key("acme", &late, None).unwrap();
    ok(&call(&s, late.expose()).await, "acme team");

    let now = s.clock_now();
    assert!(s.db.keys.set_expiry(&s.key_id, Some(now)));
    assert_envelope(&call(&s, s.key.expose()).await, 401, UNAUTHORIZED);

    assert!(s.db.keys.delete_tenant("acme"));
    assert_envelope(&call(&s, late.expose()).await, 401, UNAUTHORIZED);
}

impl Setup {
    fn clock_now(&self) -> Duration {
        tower_nat::clock::Clock::now(&self.clock)
    }
}

#[tokio::test]
async fn a_lookup_in_flight_during_a_revocation_never_caches_the_revoked_key() {
    let s = Arc::new(setup(|c| c));
    s.db.hold(true);
    // A's query reads the live key, then waits.
    let a = {
        let s = s.clone();
        tokio::spawn(async move { call(&s, s.key.expose()).await })
    };
    while s.db.queries() < 1 {
        tokio::task::yield_now().await;
    }
    // The key is revoked while A's answer is on its way.
    assert!(s.db.keys.revoke(&s.key_id));
    // B starts after the revocation and waits for A's query.
    let b = {
        let s = s.clone();
        tokio::spawn(async move { call(&s, s.key.expose()).await })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    s.db.hold(false);
    s.db.release(2);
    // A started before the revocation; B after it, so B asks again and is refused.
    ok(&a.await.unwrap(), "acme pro");
    assert_envelope(&b.await.unwrap(), 401, UNAUTHORIZED);
    // Nothing revoked stayed in the cache: A's answer was never cached (not even for a
    // moment), and B's refusal answers the next call without a query.
    assert_envelope(&call(&s, s.key.expose()).await, 401, UNAUTHORIZED);
    assert_eq!(s.db.queries(), 2);
}

#[tokio::test]
async fn store_errors_are_never_cached() {
    let s = setup(|c| c);
    s.db.fail(true);
    for _ in 0..3 {
        assert_envelope(&call(&s, s.key.expose()).await, 500, INTERNAL);
    }
    assert_eq!(s.db.queries(), 3);
    s.db.fail(false);
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 4);
}

#[tokio::test]
async fn stale_answers_during_an_outage_for_at_most_the_configured_time() {
    let s = setup(|c| c.serve_stale(Duration::from_secs(300)));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    let unknown = ApiKey::generate();
    s.db.fail(true);
    // Fresh: no query.
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 1);
    // Expired and the store fails: served stale, the store asked once a second at most.
    s.clock.advance(Duration::from_secs(60));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 2);
    s.clock.advance(Duration::from_secs(1));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(s.db.queries(), 3);
    // Unknown keys are never served stale.
    assert_envelope(&call(&s, unknown.expose()).await, 500, INTERNAL);
    // 300 s after the TTL: no more.
    s.clock.advance(Duration::from_secs(298));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    s.clock.advance(Duration::from_secs(1));
    assert_envelope(&call(&s, s.key.expose()).await, 500, INTERNAL);
    // The store is back.
    s.db.fail(false);
    ok(&call(&s, s.key.expose()).await, "acme pro");
}

#[tokio::test]
async fn without_serve_stale_an_outage_is_a_500_once_the_entry_expires() {
    let s = setup(|c| c);
    ok(&call(&s, s.key.expose()).await, "acme pro");
    s.db.fail(true);
    s.clock.advance(Duration::from_secs(60));
    assert_envelope(&call(&s, s.key.expose()).await, 500, INTERNAL);
}

#[tokio::test]
async fn a_cached_key_does_not_outlive_its_expiry() {
    let s = setup(|c| c.ttl(Duration::from_secs(3600)));
    let at = s.clock_now() + Duration::from_secs(10);
    let short = s.db.keys.issue_key("acme", Some(at)).unwrap().key;
    ok(&call(&s, short.expose()).await, "acme pro");
    s.clock.advance(Duration::from_secs(9));
    ok(&call(&s, short.expose()).await, "acme pro");
    s.clock.advance(Duration::from_secs(1));
    assert_envelope(&call(&s, short.expose()).await, 401, UNAUTHORIZED);
    assert_eq!(s.db.queries(), 1);
}

/// Looks `key` up through the store's trait, as the layer does.
async fn lookup<K: KeyStore>(store: &K, key: &ApiKey) -> bool {
    match store.lookup(&key.hash()) {
        Answer::Ready(answer) => answer.unwrap().is_some(),
        Answer::Pending(query) => query.await.unwrap().is_some(),
    }
}

#[tokio::test]
async fn a_hundred_thousand_requests_over_a_thousand_keys_make_a_thousand_queries() {
    let s = setup(|c| c);
    let keys: Vec<ApiKey> = (0..1000)
        .map(|_| s.db.keys.issue_key("acme", None).unwrap().key)
        .collect();
    for i in 0..100_000 {
        assert!(lookup(&s.cache, &keys[(i * 7919) % 1000]).await);
    }
    assert_eq!(s.db.queries(), 1000);
    // After the TTL, each key is asked once more.
    s.clock.advance(Duration::from_secs(60));
    for i in 0..10_000 {
        assert!(lookup(&s.cache, &keys[i % 1000]).await);
    }
    assert_eq!(s.db.queries(), 2000);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let s = setup(|c| c.capacity(100));
    let keys: Vec<ApiKey> = (0..1000)
        .map(|_| s.db.keys.issue_key("acme", None).unwrap().key)
        .collect();
    for key in &keys {
        assert!(lookup(&s.cache, key).await);
    }
    assert!(s.cache.len() <= 100, "{}", s.cache.len());
    assert!(!s.cache.is_empty());
}

#[tokio::test]
async fn last_use_is_recorded_at_most_once_a_minute() {
    let s = setup(|c| c.ttl(Duration::from_secs(3600)));
    let start = s.clock_now();
    let last_used = || s.db.keys.keys("acme")[0].last_used_at;
    assert_eq!(last_used(), None);
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(last_used(), Some(start));
    s.clock.advance(Duration::from_secs(59));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(last_used(), Some(start));
    s.clock.advance(Duration::from_secs(1));
    ok(&call(&s, s.key.expose()).await, "acme pro");
    assert_eq!(last_used(), Some(start + Duration::from_secs(60)));
}

#[test]
fn debug_shows_the_settings_and_no_keys() {
    let s = setup(|c| c.negative_ttl(Duration::from_secs(2)));
    let debug = format!("{:?}", s.cache);
    assert!(debug.contains("negative_ttl: 2s"), "{debug}");
    assert!(!debug.contains(&s.key.expose()[7..]));
}
