//! Keys found by their tag (no SHA-256) and rate state reached from key records, attacked:
//! every change of a memory store and a cache (silent, with a feed, serving stale answers),
//! a query in flight during a revocation, a full index, the failed-authentication throttle,
//! header tricks, records made per request under the sweep, and a resolver's own keys.

use std::{borrow::Cow, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_nat::{
    NatError, StoreError,
    auth::{
        ApiKey, ApiKeyAuthLayer, CachedKeyStore, ClientAddr, KeyChanges, KeyHash, KeyRecord,
        KeyStore, MemoryKeyStore, PresentedKey,
    },
    clock::{Clock, FakeClock, SharedClock, UtcDate},
    plan::{LimitOverrides, Plan, Plans},
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateKeyResolver, RateTarget},
    store::Answer,
    tenant::{Tenant, TenantId},
};

use crate::common::{
    Answer as Reply, INTERNAL, UNAUTHORIZED, assert_envelope, empty, get, handler, header, send,
    stores::Db,
};

fn clock() -> (FakeClock, SharedClock) {
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    (clock, shared)
}

/// `GET /` through auth over `store`: 200 "tenant plan rpm", or the refusal. With `addr`, from
/// that client address (throttled at 3 failures a minute).
async fn call<K: KeyStore>(store: &K, clock: &SharedClock, key: &str, addr: Option<&str>) -> Reply {
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(store.clone())
                .clock(clock.clone())
                .failed_auth_limit(3, Duration::from_secs(60)),
        )
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let t = Tenant::of(&req).unwrap();
            let rpm = Plans::default().limits(t).unwrap().requests_per_minute();
            let body = format!("{} {} {rpm}", t.id(), t.plan().name());
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    let mut req = empty(get("/").header("x-api-key", key));
    if let Some(addr) = addr {
        req.extensions_mut()
            .insert(ClientAddr(SocketAddr::new(addr.parse().unwrap(), 1)));
    }
    send(&service, req).await
}

fn ok(reply: &Reply, body: &str) {
    assert_eq!(reply.0, 200, "{:?}", reply.2);
    assert_eq!(std::str::from_utf8(&reply.2).unwrap(), body);
}

fn refused(reply: &Reply) {
    assert_envelope(reply, 401, UNAUTHORIZED);
}

/// Calls three times (the later two by tag) and expects `body` each time.
async fn indexed<K: KeyStore>(store: &K, clock: &SharedClock, key: &ApiKey, body: &str) {
    for _ in 0..3 {
        ok(&call(store, clock, key.expose(), None).await, body);
    }
}

#[tokio::test]
async fn every_change_of_the_memory_store_reaches_keys_found_by_tag() {
    let (fake, clock) = clock();
    let store = MemoryKeyStore::new().clock(clock.clone());
    store.insert_tenant("acme", Plan::PRO).unwrap();
    let a = store.issue_key("acme", None).unwrap();
    let b = store.issue_key("acme", None).unwrap();
    indexed(&store, &clock, &a.key, "acme pro 120").await;
    indexed(&store, &clock, &b.key, "acme pro 120").await;
    assert!(store.revoke(&a.id));
    refused(&call(&store, &clock, a.key.expose(), None).await);
    ok(
        &call(&store, &clock, b.key.expose(), None).await,
        "acme pro 120",
    );
    // Expiry in the past, then lifted.
    assert!(store.set_expiry(&b.id, Some(fake.now())));
    refused(&call(&store, &clock, b.key.expose(), None).await);
    assert!(store.set_expiry(&b.id, None));
    indexed(&store, &clock, &b.key, "acme pro 120").await;
    // Plan and overrides.
    store.set_plan("acme", Plan::TEAM).unwrap();
    indexed(&store, &clock, &b.key, "acme team 300").await;
    let overrides = LimitOverrides {
        requests_per_minute: Some(7),
        ..LimitOverrides::default()
    };
    store.set_overrides("acme", overrides).unwrap();
    indexed(&store, &clock, &b.key, "acme team 7").await;
    // Rotation without and with grace.
    let c = store.rotate(&b.id, Duration::ZERO).unwrap();
    refused(&call(&store, &clock, b.key.expose(), None).await);
    indexed(&store, &clock, &c.key, "acme team 7").await;
    let d = store.rotate(&c.id, Duration::from_secs(10)).unwrap();
    indexed(&store, &clock, &c.key, "acme team 7").await;
    fake.advance(Duration::from_secs(10));
    refused(&call(&store, &clock, c.key.expose(), None).await);
    indexed(&store, &clock, &d.key, "acme team 7").await;
    // The revoked key added again, for another tenant.
    store.insert_tenant("beta", Plan::FREE).unwrap();
    store.add_key("beta", &a.key, None).unwrap();
    indexed(&store, &clock, &a.key, "beta free 30").await;
    // The tenant deleted.
    assert!(store.delete_tenant("acme"));
    refused(&call(&store, &clock, d.key.expose(), None).await);
    ok(
        &call(&store, &clock, a.key.expose(), None).await,
        "beta free 30",
    );
}

#[tokio::test]
async fn a_cache_over_a_silent_store_keeps_its_ttl_and_invalidations() {
    let (fake, clock) = clock();
    let keys = MemoryKeyStore::new().clock(clock.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    keys.insert_tenant("beta", Plan::PRO).unwrap();
    let a = keys.issue_key("acme", None).unwrap();
    let b = keys.issue_key("acme", None).unwrap();
    let c = keys.issue_key("beta", None).unwrap();
    let d = keys.issue_key("beta", None).unwrap();
    let db = Db::new(keys);
    db.silent();
    let cache = CachedKeyStore::new(db.clone()).clock(clock.clone());
    for k in [&a, &b] {
        indexed(&cache, &clock, &k.key, "acme pro 120").await;
    }
    for k in [&c, &d] {
        indexed(&cache, &clock, &k.key, "beta pro 120").await;
    }
    for k in [&a, &b, &c, &d] {
        assert!(db.keys.revoke(&k.id));
    }
    // By hand: one key, one tenant, all.
    cache.invalidate(&a.key.hash());
    refused(&call(&cache, &clock, a.key.expose(), None).await);
    ok(
        &call(&cache, &clock, b.key.expose(), None).await,
        "acme pro 120",
    );
    cache.invalidate_tenant(&TenantId::from("acme"));
    refused(&call(&cache, &clock, b.key.expose(), None).await);
    ok(
        &call(&cache, &clock, c.key.expose(), None).await,
        "beta pro 120",
    );
    // TTL: served until 60 s after loading, not at 60 s.
    fake.advance(Duration::from_millis(59_999));
    ok(
        &call(&cache, &clock, c.key.expose(), None).await,
        "beta pro 120",
    );
    fake.advance(Duration::from_millis(1));
    refused(&call(&cache, &clock, c.key.expose(), None).await);
    cache.invalidate_all();
    refused(&call(&cache, &clock, d.key.expose(), None).await);
    // Negative answers are not indexed: a key added behind the cache's back works after 5 s.
    let late = ApiKey::generate();
    refused(&call(&cache, &clock, late.expose(), None).await);
    db.keys.add_key("beta", &late, None).unwrap();
    refused(&call(&cache, &clock, late.expose(), None).await);
    fake.advance(Duration::from_secs(5));
    indexed(&cache, &clock, &late, "beta pro 120").await;
}

/// A store whose changes made elsewhere arrive through a feed: its own `KeyChanges`, which
/// changes made to `keys` are not announced to.
#[derive(Clone)]
struct Fed {
    keys: MemoryKeyStore,
    changes: KeyChanges,
}

impl KeyStore for Fed {
    type Future = std::future::Ready<Result<Option<KeyRecord>, StoreError>>;
    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        Answer::Pending(std::future::ready(Ok(self.keys.get(hash))))
    }
    fn changes(&self) -> Option<&KeyChanges> {
        Some(&self.changes)
    }
}

#[tokio::test]
async fn while_the_feed_is_down_no_key_found_by_tag_outlives_the_offline_ttl() {
    let (fake, clock) = clock();
    let keys = MemoryKeyStore::new().clock(clock.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let a = keys.issue_key("acme", None).unwrap();
    let b = keys.issue_key("acme", None).unwrap();
    let c = keys.issue_key("acme", None).unwrap();
    let fed = Fed {
        keys: keys.clone(),
        changes: KeyChanges::with_feed(),
    };
    let cache = CachedKeyStore::new(fed.clone()).clock(clock.clone());
    fed.changes.feed_up();
    for k in [&a, &b, &c] {
        indexed(&cache, &clock, &k.key, "acme pro 120").await;
    }
    // A change that arrives through the feed.
    assert!(keys.revoke(&a.id));
    fed.changes.key_changed(&a.key.hash());
    refused(&call(&cache, &clock, a.key.expose(), None).await);
    // Feed down; b revoked elsewhere, unannounced.
    fed.changes.feed_down();
    assert!(keys.revoke(&b.id));
    fake.advance(Duration::from_millis(1999));
    ok(
        &call(&cache, &clock, b.key.expose(), None).await,
        "acme pro 120",
    );
    fake.advance(Duration::from_millis(1));
    refused(&call(&cache, &clock, b.key.expose(), None).await);
    // c reloaded while down, then revoked unannounced: the feed coming back forgets it.
    indexed(&cache, &clock, &c.key, "acme pro 120").await;
    assert!(keys.revoke(&c.id));
    fed.changes.feed_up();
    refused(&call(&cache, &clock, c.key.expose(), None).await);
}

#[tokio::test]
async fn stale_answers_end_on_time_and_revoked_keys_are_not_served_stale() {
    let (fake, clock) = clock();
    let keys = MemoryKeyStore::new().clock(clock.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let a = keys.issue_key("acme", None).unwrap();
    let b = keys.issue_key("acme", None).unwrap();
    let db = Db::new(keys);
    let cache = CachedKeyStore::new(db.clone())
        .clock(clock.clone())
        .serve_stale(Duration::from_secs(10));
    indexed(&cache, &clock, &a.key, "acme pro 120").await;
    indexed(&cache, &clock, &b.key, "acme pro 120").await;
    db.fail(true);
    assert!(db.keys.revoke(&b.id));
    assert_envelope(
        &call(&cache, &clock, b.key.expose(), None).await,
        500,
        INTERNAL,
    );
    fake.advance(Duration::from_secs(69));
    indexed(&cache, &clock, &a.key, "acme pro 120").await;
    fake.advance(Duration::from_secs(1));
    assert_envelope(
        &call(&cache, &clock, a.key.expose(), None).await,
        500,
        INTERNAL,
    );
}

#[tokio::test]
async fn a_query_in_flight_during_a_revocation_is_not_indexed() {
    let (fake, clock) = clock();
    let keys = MemoryKeyStore::new().clock(clock.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let a = keys.issue_key("acme", None).unwrap();
    let db = Db::new(keys);
    let cache = CachedKeyStore::new(db.clone()).clock(clock.clone());
    indexed(&cache, &clock, &a.key, "acme pro 120").await;
    fake.advance(Duration::from_secs(60));
    db.hold(true);
    let first = {
        let (cache, clock, key) = (cache.clone(), clock.clone(), a.key.clone());
        tokio::spawn(async move { call(&cache, &clock, key.expose(), None).await })
    };
    while db.queries() < 2 {
        tokio::task::yield_now().await;
    }
    assert!(db.keys.revoke(&a.id));
    let second = {
        let (cache, clock, key) = (cache.clone(), clock.clone(), a.key.clone());
        tokio::spawn(async move { call(&cache, &clock, key.expose(), None).await })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    db.hold(false);
    db.release(2);
    ok(&first.await.unwrap(), "acme pro 120");
    refused(&second.await.unwrap());
    for _ in 0..3 {
        refused(&call(&cache, &clock, a.key.expose(), None).await);
    }
}

#[tokio::test]
async fn a_full_index_starts_again_without_serving_revoked_keys() {
    let (_fake, clock) = clock();
    let keys = MemoryKeyStore::new().clock(clock.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let issued: Vec<_> = (0..6)
        .map(|_| keys.issue_key("acme", None).unwrap())
        .collect();
    let cache = CachedKeyStore::new(keys.clone())
        .clock(clock.clone())
        .capacity(2);
    for _ in 0..2 {
        for k in &issued {
            indexed(&cache, &clock, &k.key, "acme pro 120").await;
            indexed(&keys, &clock, &k.key, "acme pro 120").await;
        }
    }
    assert!(keys.revoke(&issued[3].id));
    refused(&call(&cache, &clock, issued[3].key.expose(), None).await);
    refused(&call(&keys, &clock, issued[3].key.expose(), None).await);
    for k in issued.iter().filter(|k| k.id != issued[3].id) {
        indexed(&cache, &clock, &k.key, "acme pro 120").await;
    }
}

#[tokio::test]
async fn unknown_keys_are_throttled_between_keys_found_by_tag() {
    let (fake, clock) = clock();
    let store = MemoryKeyStore::new().clock(clock.clone());
    store.insert_tenant("acme", Plan::PRO).unwrap();
    let live = store.issue_key("acme", None).unwrap();
    let revoked = store.issue_key("acme", None).unwrap();
    let expired = store
        .issue_key("acme", Some(fake.now() + Duration::from_secs(1)))
        .unwrap();
    for k in [&live, &revoked, &expired] {
        indexed(&store, &clock, &k.key, "acme pro 120").await;
    }
    assert!(store.revoke(&revoked.id));
    fake.advance(Duration::from_secs(1));
    // One layer (its throttle) for every request.
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(store.clone())
                .clock(clock.clone())
                .failed_auth_limit(3, Duration::from_secs(60)),
        )
        .service(handler());
    let from = |key: &str| {
        let mut req = empty(get("/").header("x-api-key", key));
        req.extensions_mut().insert(ClientAddr(SocketAddr::new(
            "203.0.113.9".parse().unwrap(),
            1,
        )));
        req
    };
    for _ in 0..3 {
        assert_eq!(send(&service, from(live.key.expose())).await.0, 200);
        refused(&send(&service, from(ApiKey::generate().expose())).await);
    }
    let limited = |r: &Reply| assert_eq!(r.0, 429, "{:?}", r.2);
    limited(&send(&service, from(ApiKey::generate().expose())).await);
    limited(&send(&service, from(revoked.key.expose())).await);
    limited(&send(&service, from(expired.key.expose())).await);
    assert_eq!(send(&service, from(live.key.expose())).await.0, 200);
    // Once more every 20 s.
    fake.advance(Duration::from_secs(20));
    refused(&send(&service, from(ApiKey::generate().expose())).await);
    limited(&send(&service, from(ApiKey::generate().expose())).await);
}

#[tokio::test]
async fn header_tricks_on_a_key_found_by_tag() {
    let (_fake, clock) = clock();
    let store = MemoryKeyStore::new().clock(clock.clone());
    store.insert_tenant("acme", Plan::PRO).unwrap();
    let key = store.issue_key("acme", None).unwrap().key;
    indexed(&store, &clock, &key, "acme pro 120").await;
    let k = key.expose();
    let mut last = k.to_owned();
    last.replace_range(k.len() - 1.., if k.ends_with('A') { "B" } else { "A" });
    for bad in [
        format!(" {k}"),
        format!("{k} "),
        format!("{k}\t"),
        format!("{k}A"),
        k[..k.len() - 1].to_owned(),
        last,
        k.replacen("nat_pk_", "NAT_PK_", 1),
        k.to_uppercase(),
        format!("Bearer {k}"),
    ] {
        refused(&call(&store, &clock, &bad, None).await);
    }
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(store.clone()).clock(clock.clone()))
        .service(handler());
    for (first, second) in [(k, k), (k, "x"), ("x", k)] {
        let req = empty(
            get("/")
                .header("x-api-key", first)
                .header("X-Api-Key", second),
        );
        refused(&send(&service, req).await);
    }
    assert_eq!(
        format!("{:?}", PresentedKey::new(k.as_bytes())),
        "PresentedKey(…)"
    );
    for debug in [
        format!("{store:?}"),
        format!("{:?}", CachedKeyStore::new(store.clone())),
    ] {
        assert!(!debug.contains(&k[7..]), "{debug}");
    }
}

/// Per-request records (a server's own auth) and the automatic sweep on every check.
#[tokio::test]
async fn records_made_per_request_and_the_sweep_keep_one_exact_budget() {
    let (fake, clock) = clock();
    let store = MemoryRateStore::new().sweep_interval(Duration::from_nanos(1));
    let service = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(store.clone())
                .clock(clock.clone()),
        )
        .service(handler());
    let held = Tenant::new("acme", Plan::FREE, "key_1");
    let req = |per_request: bool| {
        let mut req = empty(get("/"));
        let t = if per_request {
            Tenant::new("acme", Plan::FREE, "key_x")
        } else {
            held.clone()
        };
        req.extensions_mut().insert(t);
        req
    };
    for i in 0..30u64 {
        let got = send(&service, req(i % 3 == 0)).await;
        assert_eq!(
            (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
            (200, 29 - i)
        );
        fake.advance(Duration::from_nanos(1));
    }
    assert_eq!(send(&service, req(true)).await.0, 429);
    assert_eq!(send(&service, req(false)).await.0, 429);
    fake.advance(Duration::from_millis(1999));
    assert_eq!(send(&service, req(true)).await.0, 429);
    fake.advance(Duration::from_millis(1));
    assert_eq!(send(&service, req(true)).await.0, 200);
    assert_eq!(send(&service, req(false)).await.0, 429);
    // Drained and swept while `held` holds it: kept, and a full burst again.
    fake.advance(Duration::from_secs(120));
    for _ in 0..30 {
        assert_eq!(send(&service, req(false)).await.0, 200);
    }
    assert_eq!(send(&service, req(true)).await.0, 429);
    assert_eq!(store.len(), 1);
}

/// A resolver whose key is an equal but distinct id: the table, converted per limit.
#[derive(Clone)]
struct OwnedKey;

impl RateKeyResolver for OwnedKey {
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError> {
        let tenant = Tenant::of(req).ok_or(NatError::Unauthorized)?;
        let limit = if req.uri().path() == "/export" {
            30
        } else {
            120
        };
        Ok(Some(RateTarget {
            key: Cow::Owned(TenantId::from(tenant.id().as_str())),
            limit,
        }))
    }
}

#[tokio::test]
async fn a_resolver_with_an_owned_key_keeps_one_count() {
    let (_fake, clock) = clock();
    let service = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_resolver(OwnedKey)
                .clock(clock),
        )
        .service(handler());
    let record = Tenant::new("acme", Plan::PRO, "key_1");
    let on = |path: &str| {
        let mut req = empty(get(path));
        req.extensions_mut().insert(record.clone());
        req
    };
    for _ in 0..2 {
        assert_eq!(send(&service, on("/")).await.0, 200);
    }
    let mut exports = 0;
    while send(&service, on("/export")).await.0 == 200 {
        exports += 1;
    }
    // 2 used of 120 are 2 of 30: 28 exports; the 30 used are 30 of 120: 90 more.
    assert_eq!(exports, 28);
    let mut more = 0;
    while send(&service, on("/")).await.0 == 200 {
        more += 1;
    }
    assert_eq!(more, 90);
}
