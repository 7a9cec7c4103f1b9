//! Revocation everywhere within a second: two instances over one PostgreSQL, each with its
//! own cache; a change made outside both (plain SQL) reaches both caches through the change
//! feed (`LISTEN`/`NOTIFY`), measured. With the feed's connection killed and kept from
//! coming back, the caches serve nothing older than their offline TTL (2 s), measured; when
//! the feed is back, they forget what they held.

use std::time::{Duration, Instant};

use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKeyAuthLayer, CachedKeyStore, KeyAdmin, KeyStore, PgKeyStore},
    plan::Plan,
    tenant::Tenant,
};

use crate::common::{Answer, empty, get, pg_server::PgServer, send};

/// One instance: a store of its own (its own pool and change feed) behind its own cache.
struct Instance {
    store: PgKeyStore,
    cache: CachedKeyStore<PgKeyStore>,
}

impl Instance {
    fn new(url: &str) -> Self {
        let store = PgKeyStore::new(url)
            .unwrap()
            .timeout(Duration::from_secs(2));
        let cache = CachedKeyStore::new(store.clone());
        Self { store, cache }
    }

    /// `GET /` with `key`: 200 with "tenant plan" as the body, or the 401.
    async fn call(&self, key: &str) -> Answer {
        let service = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(self.cache.clone()))
            .service_fn(|req: http::Request<_>| async move {
                let t = Tenant::of(&req).unwrap();
                let body = format!("{} {}", t.id(), t.plan().name());
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            });
        send(&service, empty(get("/").header("x-api-key", key))).await
    }

    /// Waits (at most 10 s) until the store's change feed is `live` or not.
    async fn feed(&self, live: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.store.changes().unwrap().is_live() != live {
            assert!(Instant::now() < deadline, "the feed is live: {live}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How long until `key` gets `status` (polled every 5 ms; at most 10 s).
    async fn until(&self, key: &str, status: u16, body: Option<&str>) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.call(key).await;
            if got.0 == status && body.is_none_or(|b| got.2 == b.as_bytes()) {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{got:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A superuser connection for the operator's SQL.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_anywhere_reaches_every_instance_within_a_second() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let admin = sql(&server.url()).await;
    // The instances connect as a role of their own, so its connections can be limited.
    admin
        .batch_execute("CREATE ROLE app LOGIN; GRANT ALL ON SCHEMA public TO app;")
        .await
        .unwrap();
    let owner = PgKeyStore::new(&server.url()).unwrap();
    owner.migrate().await.unwrap();
    admin
        .batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app;")
        .await
        .unwrap();
    owner.insert_tenant("acme", &Plan::PRO).await.unwrap();
    let keys: Vec<_> = futures_keys(&owner, 3).await;
    let app_url = server.url().replace("nat:hunter2@", "app@");
    let (a, b) = (Instance::new(&app_url), Instance::new(&app_url));
    // Both serve the keys from their caches (three times each: from the second on, a key
    // is found by its tag, without its SHA-256).
    for instance in [&a, &b] {
        for key in &keys {
            for _ in 0..3 {
                assert_eq!(instance.call(key).await.2, "acme pro");
            }
        }
        instance.feed(true).await;
    }

    // Revoked in plain SQL: both instances refuse within a second.
    admin
        .execute(
            "UPDATE nat_keys SET revoked_at = now() WHERE hash = sha256(convert_to($1, 'UTF8'))",
            &[&keys[0].as_str()],
        )
        .await
        .unwrap();
    let revoked_b = b.until(&keys[0], 401, None).await;
    let revoked_a = a.until(&keys[0], 401, None).await;
    println!("revocation in SQL reached the other instances in {revoked_b:?} and {revoked_a:?}");
    assert!(revoked_b < Duration::from_secs(1), "{revoked_b:?}");
    // A plan change in SQL, likewise (the cache held "pro").
    admin
        .execute(
            "UPDATE nat_tenants SET plan = 'team' WHERE id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    let plan = b.until(&keys[1], 200, Some("acme team")).await;
    println!("a plan change in SQL reached another instance in {plan:?}");
    assert!(plan < Duration::from_secs(1), "{plan:?}");

    // The feed's connections killed and kept from coming back (the role may open no more
    // connections than its pools hold now): the feed is down.
    let held: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'app' AND query NOT LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!("ALTER ROLE app CONNECTION LIMIT {held}"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = 'app' AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    b.feed(false).await;
    a.feed(false).await;
    // Warm again (the pools' connections still answer), then revoke in SQL: the entry is
    // served no longer than the offline TTL (2 s) from its loading.
    assert_eq!(b.call(&keys[2]).await.2, "acme team");
    let warmed = Instant::now();
    admin
        .execute(
            "UPDATE nat_keys SET revoked_at = now() WHERE hash = sha256(convert_to($1, 'UTF8'))",
            &[&keys[2].as_str()],
        )
        .await
        .unwrap();
    b.until(&keys[2], 401, None).await;
    let offline = warmed.elapsed();
    println!(
        "with the feed down, a revocation in SQL took effect {offline:?} after the entry was loaded"
    );
    assert!(offline <= Duration::from_millis(2_500), "{offline:?}");
    assert!(!b.store.changes().unwrap().is_live());

    // The feed back: live again, and what the caches held is forgotten (the key revoked
    // while it was down would be refused even without the offline TTL).
    admin
        .batch_execute("ALTER ROLE app CONNECTION LIMIT -1")
        .await
        .unwrap();
    b.feed(true).await;
    assert_eq!(b.cache.len(), 0);
    assert_eq!(b.call(&keys[1]).await.2, "acme team");
}

/// `n` keys issued by `store`.
async fn futures_keys(store: &PgKeyStore, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let issued = store.issue("acme", None).await.unwrap();
        keys.push(issued.key.expose().to_owned());
    }
    keys
}
