//! The `KeyStore` suite, with the administration a store of keys offers: run against the
//! in-memory store, a later-answering double of it and PostgreSQL (a throwaway cluster per
//! test), always through the cache: issue, plan and limit changes, revocation, deletion,
//! expiry, rotation with grace, listing and last use. Then PostgreSQL's own faults: down,
//! frozen, restarted, with nothing of the URL or password in any error.

use std::{sync::Arc, time::Duration};

use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKeyAuthLayer, CachedKeyStore, IssuedKey, KeyInfo, KeyStore, MemoryKeyStore},
    clock::{FakeClock, SharedClock, UtcDate},
    plan::{LimitOverrides, Plan},
    tenant::{KeyId, Tenant},
};

use crate::common::{Answer, UNAUTHORIZED, assert_envelope, empty, get, send, stores::Later};

/// What the suite asks of a store that manages keys (memory answers at once, PostgreSQL
/// later).
trait Admin: KeyStore {
    async fn tenant(&self, id: &str, plan: Plan);
    async fn issue(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey>;
    async fn revoke(&self, id: &KeyId) -> bool;
    async fn rotate(&self, id: &KeyId, grace: Duration) -> Option<IssuedKey>;
    async fn expire(&self, id: &KeyId, at: Option<Duration>) -> bool;
    async fn plan(&self, tenant: &str, plan: Plan) -> bool;
    async fn overrides(&self, tenant: &str, overrides: LimitOverrides) -> bool;
    async fn delete(&self, tenant: &str) -> bool;
    async fn list(&self, tenant: &str) -> Vec<KeyInfo>;
    async fn flush(&self);
}

impl Admin for MemoryKeyStore {
    async fn tenant(&self, id: &str, plan: Plan) {
        self.insert_tenant(id, plan).unwrap();
    }
    async fn issue(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey> {
        self.issue_key(tenant, expires_at)
    }
    async fn revoke(&self, id: &KeyId) -> bool {
        MemoryKeyStore::revoke(self, id)
    }
    async fn rotate(&self, id: &KeyId, grace: Duration) -> Option<IssuedKey> {
        MemoryKeyStore::rotate(self, id, grace)
    }
    async fn expire(&self, id: &KeyId, at: Option<Duration>) -> bool {
        self.set_expiry(id, at)
    }
    async fn plan(&self, tenant: &str, plan: Plan) -> bool {
        self.set_plan(tenant, plan).is_ok()
    }
    async fn overrides(&self, tenant: &str, overrides: LimitOverrides) -> bool {
        self.set_overrides(tenant, overrides).is_ok()
    }
    async fn delete(&self, tenant: &str) -> bool {
        self.delete_tenant(tenant)
    }
    async fn list(&self, tenant: &str) -> Vec<KeyInfo> {
        self.keys(tenant)
    }
    async fn flush(&self) {}
}

/// The double's administration is the in-memory store's; its lookups answer later.
impl Admin for Later<MemoryKeyStore> {
    async fn tenant(&self, id: &str, plan: Plan) {
        Admin::tenant(&self.0, id, plan).await;
    }
    async fn issue(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey> {
        Admin::issue(&self.0, tenant, expires_at).await
    }
    async fn revoke(&self, id: &KeyId) -> bool {
        Admin::revoke(&self.0, id).await
    }
    async fn rotate(&self, id: &KeyId, grace: Duration) -> Option<IssuedKey> {
        Admin::rotate(&self.0, id, grace).await
    }
    async fn expire(&self, id: &KeyId, at: Option<Duration>) -> bool {
        Admin::expire(&self.0, id, at).await
    }
    async fn plan(&self, tenant: &str, plan: Plan) -> bool {
        Admin::plan(&self.0, tenant, plan).await
    }
    async fn overrides(&self, tenant: &str, overrides: LimitOverrides) -> bool {
        Admin::overrides(&self.0, tenant, overrides).await
    }
    async fn delete(&self, tenant: &str) -> bool {
        Admin::delete(&self.0, tenant).await
    }
    async fn list(&self, tenant: &str) -> Vec<KeyInfo> {
        Admin::list(&self.0, tenant).await
    }
    async fn flush(&self) {}
}

#[cfg(feature = "postgres")]
impl Admin for tower_nat::auth::PgKeyStore {
    async fn tenant(&self, id: &str, plan: Plan) {
        self.insert_tenant(id, &plan).await.unwrap();
    }
    async fn issue(&self, tenant: &str, expires_at: Option<Duration>) -> Option<IssuedKey> {
        found(KeyAdmin::issue(self, tenant, expires_at).await)
    }
    async fn revoke(&self, id: &KeyId) -> bool {
        found(self.revoke_key(id).await).is_some()
    }
    async fn rotate(&self, id: &KeyId, grace: Duration) -> Option<IssuedKey> {
        found(self.rotate_key(id, grace).await)
    }
    async fn expire(&self, id: &KeyId, at: Option<Duration>) -> bool {
        found(self.change_expiry(id, at).await).is_some()
    }
    async fn plan(&self, tenant: &str, plan: Plan) -> bool {
        found(self.change_plan(tenant, &plan).await).is_some()
    }
    async fn overrides(&self, tenant: &str, overrides: LimitOverrides) -> bool {
        found(self.change_overrides(tenant, overrides).await).is_some()
    }
    async fn delete(&self, tenant: &str) -> bool {
        found(self.remove_tenant(tenant).await).is_some()
    }
    async fn list(&self, tenant: &str) -> Vec<KeyInfo> {
        let page = Page::first(1_000);
        let mut keys = found(self.list_keys(tenant, &page).await).unwrap_or_default();
        keys.sort_by_key(|k| k.created_at);
        keys
    }
    async fn flush(&self) {
        self.flush_last_used().await.unwrap();
    }
}

#[cfg(feature = "postgres")]
use tower_nat::auth::{AdminError, KeyAdmin, Page};

/// What an administration call found: `None` for an unknown tenant or key; any other error
/// fails the test.
#[cfg(feature = "postgres")]
fn found<T>(result: Result<T, AdminError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(AdminError::UnknownTenant | AdminError::UnknownKey) => None,
        Err(error) => panic!("{error}"),
    }
}

/// A clock at 2026-03-01, shared by the store, the cache and the layer.
fn clock() -> (FakeClock, SharedClock) {
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    (clock, shared)
}

/// A key store under test, on a fake clock; `guard` keeps its server running.
struct KeyBackend<A> {
    store: A,
    fake: FakeClock,
    clock: SharedClock,
    #[allow(dead_code)]
    guard: Option<Box<dyn std::any::Any + Send>>,
}

async fn memory() -> Option<KeyBackend<MemoryKeyStore>> {
    let (fake, clock) = clock();
    Some(KeyBackend {
        store: MemoryKeyStore::new().clock(clock.clone()),
        fake,
        clock,
        guard: None,
    })
}

async fn later() -> Option<KeyBackend<Later<MemoryKeyStore>>> {
    let b = memory().await?;
    Some(KeyBackend {
        store: Later(b.store),
        fake: b.fake,
        clock: b.clock,
        guard: None,
    })
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<KeyBackend<tower_nat::auth::PgKeyStore>> {
    let server = crate::common::pg_server::PgServer::start()?;
    let (fake, clock) = clock();
    let store = postgres_faults::store(&server, &clock).await;
    Some(KeyBackend {
        store,
        fake,
        clock,
        guard: Some(Box::new(server)),
    })
}

/// `GET /` with `key` through the auth layer over a cache over `store`; 200 with
/// "tenant plan requests_per_minute-override" as the body.
async fn call<A: Admin>(cache: &CachedKeyStore<A>, clock: &SharedClock, key: &str) -> Answer {
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(cache.clone()).clock(clock.clone()))
        .service_fn(|req: http::Request<_>| async move {
            let t = Tenant::of(&req).unwrap();
            let rpm = t.overrides().requests_per_minute.unwrap_or(0);
            let body = format!("{} {} {rpm}", t.id(), t.plan().name());
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
        });
    send(&service, empty(get("/").header("x-api-key", key))).await
}

fn ok(reply: &Answer, body: &str) {
    assert_eq!(reply.0, 200, "{:?}", reply.2);
    assert_eq!(reply.2, body.as_bytes());
}

async fn changes_apply_at_once_through_the_cache<A: Admin>(b: KeyBackend<A>) {
    let (store, clock) = (b.store, b.clock);
    let cache = CachedKeyStore::new(store.clone()).clock(clock.clone());
    store.tenant("acme", Plan::PRO).await;
    assert!(store.issue("nobody", None).await.is_none());
    let first = store.issue("acme", None).await.unwrap();
    let second = store.issue("acme", None).await.unwrap();
    ok(
        &call(&cache, &clock, first.key.expose()).await,
        "acme pro 0",
    );
    ok(
        &call(&cache, &clock, second.key.expose()).await,
        "acme pro 0",
    );

    assert!(store.plan("acme", Plan::TEAM).await);
    assert!(!store.plan("nobody", Plan::TEAM).await);
    ok(
        &call(&cache, &clock, first.key.expose()).await,
        "acme team 0",
    );
    let overrides = LimitOverrides {
        requests_per_minute: Some(5000),
        ..LimitOverrides::default()
    };
    assert!(store.overrides("acme", overrides).await);
    ok(
        &call(&cache, &clock, first.key.expose()).await,
        "acme team 5000",
    );

    assert!(store.revoke(&first.id).await);
    // (A second revocation of it is a 404 in memory and done again on PostgreSQL: the admin
    // suite checks both.)
    assert!(!store.revoke(&KeyId::from("key_0000000000000000")).await);
    assert_envelope(
        &call(&cache, &clock, first.key.expose()).await,
        401,
        UNAUTHORIZED,
    );
    ok(
        &call(&cache, &clock, second.key.expose()).await,
        "acme team 5000",
    );

    assert!(store.delete("acme").await);
    assert!(!store.delete("acme").await);
    assert_envelope(
        &call(&cache, &clock, second.key.expose()).await,
        401,
        UNAUTHORIZED,
    );
    assert!(store.list("acme").await.is_empty());
}

async fn expiry_and_rotation_with_grace<A: Admin>(b: KeyBackend<A>) {
    let (store, clock, fake) = (b.store, b.clock, b.fake);
    let cache = CachedKeyStore::new(store.clone()).clock(clock.clone());
    store.tenant("acme", Plan::PRO).await;
    let start = clock.now();
    let ends = start + Duration::from_secs(30 * 86_400);
    let old = store.issue("acme", Some(ends)).await.unwrap();
    ok(&call(&cache, &clock, old.key.expose()).await, "acme pro 0");

    fake.advance(Duration::from_secs(1));
    let rotated = clock.now();
    let new = store
        .rotate(&old.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        store
            .rotate(&KeyId::from("key_none"), Duration::ZERO)
            .await
            .is_none()
    );
    ok(&call(&cache, &clock, new.key.expose()).await, "acme pro 0");
    ok(&call(&cache, &clock, old.key.expose()).await, "acme pro 0");
    fake.advance(Duration::from_secs(3599));
    ok(&call(&cache, &clock, old.key.expose()).await, "acme pro 0");
    fake.advance(Duration::from_secs(1));
    assert_envelope(
        &call(&cache, &clock, old.key.expose()).await,
        401,
        UNAUTHORIZED,
    );
    ok(&call(&cache, &clock, new.key.expose()).await, "acme pro 0");

    let keys = store.list("acme").await;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].id, old.id);
    assert_eq!(keys[0].created_at, start);
    assert_eq!(
        keys[0].expires_at,
        Some(rotated + Duration::from_secs(3600))
    );
    assert_eq!(keys[1].created_at, rotated);
    // The new key keeps the old key's expiry.
    assert_eq!(keys[1].id, new.id);
    assert_eq!(keys[1].expires_at, Some(ends));

    assert!(store.expire(&new.id, Some(clock.now())).await);
    assert_envelope(
        &call(&cache, &clock, new.key.expose()).await,
        401,
        UNAUTHORIZED,
    );
    assert!(store.expire(&new.id, None).await);
    ok(&call(&cache, &clock, new.key.expose()).await, "acme pro 0");
    assert!(!store.expire(&KeyId::from("key_none"), None).await);
}

async fn last_use_is_recorded_without_a_write_per_request<A: Admin>(b: KeyBackend<A>) {
    let (store, clock, fake) = (b.store, b.clock, b.fake);
    let cache = CachedKeyStore::new(store.clone()).clock(clock.clone());
    store.tenant("acme", Plan::PRO).await;
    let issued = store.issue("acme", None).await.unwrap();
    let start = clock.now();
    assert_eq!(store.list("acme").await[0].last_used_at, None);
    for _ in 0..10 {
        ok(
            &call(&cache, &clock, issued.key.expose()).await,
            "acme pro 0",
        );
        fake.advance(Duration::from_secs(1));
    }
    store.flush().await;
    assert_eq!(store.list("acme").await[0].last_used_at, Some(start));
    fake.advance(Duration::from_secs(60));
    ok(
        &call(&cache, &clock, issued.key.expose()).await,
        "acme pro 0",
    );
    store.flush().await;
    assert_eq!(
        store.list("acme").await[0].last_used_at,
        Some(start + Duration::from_secs(70))
    );
}

macro_rules! key_suite {
    ($($backend:ident),+) => {
        $(
            mod $backend {
                #[tokio::test]
                async fn changes_apply_at_once_through_the_cache() {
                    if let Some(b) = super::$backend().await {
                        super::changes_apply_at_once_through_the_cache(b).await;
                    }
                }

                #[tokio::test]
                async fn expiry_and_rotation_with_grace() {
                    if let Some(b) = super::$backend().await {
                        super::expiry_and_rotation_with_grace(b).await;
                    }
                }

                #[tokio::test]
                async fn last_use_is_recorded_without_a_write_per_request() {
                    if let Some(b) = super::$backend().await {
                        super::last_use_is_recorded_without_a_write_per_request(b).await;
                    }
                }
            }
        )+
    };
}

key_suite!(memory, later);
#[cfg(feature = "postgres")]
key_suite!(postgres);

#[cfg(feature = "postgres")]
pub(crate) mod postgres_faults {
    use tower_nat::auth::PgKeyStore;

    use super::*;
    use crate::common::{INTERNAL, pg_server::PgServer};

    /// A migrated store on a fresh server, reading `clock`.
    pub(super) async fn store(server: &PgServer, clock: &SharedClock) -> PgKeyStore {
        let store = PgKeyStore::new(&server.url())
            .unwrap()
            .clock(clock.clone())
            .timeout(Duration::from_millis(500));
        store.migrate().await.unwrap();
        live(&store).await;
        store
    }

    /// Waits until the store's change feed is up: when it comes up the caches forget what
    /// they hold (changes may have been missed before), which a test of what a cache keeps
    /// must not race.
    pub(crate) async fn live(store: &PgKeyStore) {
        let changes = store.changes().unwrap().clone();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !changes.is_live() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the change feed comes up");
    }

    /// Nothing of the connection string in an error or in `Debug`.
    fn assert_no_secrets(text: &str, server: &PgServer) {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&server.url()), "{text}");
    }

    #[tokio::test]
    async fn down_frozen_and_restarted() {
        let Some(mut server) = PgServer::start() else {
            return;
        };
        let (_, clock) = clock();
        let db = store(&server, &clock).await;
        assert_no_secrets(&format!("{db:?}"), &server);
        db.insert_tenant("acme", &Plan::PRO).await.unwrap();
        let key = KeyAdmin::issue(&db, "acme", None).await.unwrap().key;
        // A store without a cache: every request is a query.
        let service = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(db.clone()).clock(clock.clone()))
            .service_fn(|_req: http::Request<_>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from("ok"),
                )))
            });
        let request = || empty(get("/").header("x-api-key", key.expose()));
        let bounded = |reply| async {
            tokio::time::timeout(Duration::from_secs(5), reply)
                .await
                .expect("an answer within the store's timeout")
        };
        assert_eq!(send(&service, request()).await.2, "ok");

        // Down: 500, and the error names nothing secret.
        server.stop();
        assert_envelope(&bounded(send(&service, request())).await, 500, INTERNAL);
        let Err(AdminError::Store(err)) = KeyAdmin::tenant(&db, "acme").await else {
            panic!("a store error");
        };
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.starts_with("postgres tenant: "), "{cause}");
        assert_no_secrets(&format!("{err} {err:?} {cause}"), &server);

        // Back: the pool reconnects.
        server.restart();
        assert_eq!(bounded(send(&service, request())).await.2, "ok");

        // Frozen: every call ends at the timeout.
        server.pause();
        assert_envelope(&bounded(send(&service, request())).await, 500, INTERNAL);
        let Err(AdminError::Store(err)) = db.list_keys("acme", &Page::first(10)).await else {
            panic!("a store error");
        };
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "postgres list keys: timed out");
        server.resume();
        let recovered = async {
            loop {
                if send(&service, request()).await.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), recovered)
            .await
            .expect("recovers after the freeze");
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_urls_are_checked_without_echo() {
        let Some(server) = PgServer::start() else {
            return;
        };
        let (_, clock) = clock();
        let a = store(&server, &clock).await;
        let b = store(&server, &clock).await;
        let (x, y) = tokio::join!(a.migrate(), b.migrate());
        x.unwrap();
        y.unwrap();
        a.insert_tenant("acme", &Plan::PRO).await.unwrap();
        let plan = KeyAdmin::tenant(&b, "acme").await.unwrap().map(|t| t.plan);
        assert_eq!(plan, Some(Plan::PRO));
        let err = PgKeyStore::new("postgres://nat:hunter2@[bad").unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "postgres: invalid connection string");
    }
}
