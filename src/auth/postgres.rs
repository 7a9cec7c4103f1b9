//! [`PgKeyStore`]: API keys in PostgreSQL.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dashmap::DashMap;
use tokio_postgres::{Client, NoTls, Statement, types::ToSql};

use super::{
    key::{ApiKey, KeyFormat, KeyHash},
    store::{IssuedKey, KeyChanges, KeyInfo, KeyRecord, KeyStore},
};
use crate::{
    clock::{self, SharedClock},
    error::StoreError,
    plan::{LimitOverrides, Plan},
    store::Answer,
    tenant::{KeyId, Tenant, TenantId},
};

/// The schema, as migrations in order: version 1 creates `nat_tenants` and `nat_keys`.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/postgres/0001_keys.sql"))];

const LOOKUP: &str = "SELECT k.id, k.tenant_id, t.plan, t.overrides::text, k.expires_at \
     FROM nat_keys k JOIN nat_tenants t ON t.id = k.tenant_id \
     WHERE k.hash = $1 AND k.revoked_at IS NULL";

/// API keys in PostgreSQL, by SHA-256 hash: a [`KeyStore`] (put a
/// [`CachedKeyStore`](super::CachedKeyStore) in front of it) and the calls that manage keys.
///
/// - **Schema.** Two tables, `nat_tenants` (id, plan, overrides, created) and `nat_keys`
///   (hash as primary key, key id, tenant, created, expires, revoked, last used), shipped as
///   migrations in the crate (`migrations/postgres`) and applied by [`migrate`](Self::migrate),
///   which is safe to call on every start (it takes an advisory lock and records versions in
///   `nat_schema_migrations`).
/// - **Lookups** are one indexed query by primary key, prepared once per connection, over a
///   small pool of connections (4 by default) that reconnect by themselves after the database
///   restarts.
/// - **Every call is bounded** by a timeout (2 s by default, connecting included); a database
///   that is down or slow gives [`StoreError`]s (500 for requests), which never carry the URL
///   or the password.
/// - **Changes** made through this store (revoke, rotate, expiry, plan, overrides, deleting a
///   tenant) are announced to the caches built over it in this process
///   ([`KeyStore::changes`]); other processes see them within their cache's TTL.
/// - **Last use** is recorded through [`KeyStore::record_use`] into memory and written in one
///   statement for all keys every 10 seconds (and by [`flush_last_used`](Self::flush_last_used)).
///
/// Built on `tokio-postgres` rather than `sqlx`: a handful of fixed queries needs neither
/// compile-time checking against a database nor macros, and `tokio-postgres` is a much
/// smaller build that pipelines concurrent queries over one connection. It connects without
/// TLS: reach the database over a private network, a local proxy or an SSH tunnel.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_nat::{NatLayer, auth::{CachedKeyStore, PgKeyStore}, plan::Plan};
///
/// # async fn run() -> Result<(), tower_nat::StoreError> {
/// let db = PgKeyStore::new("postgres://nat@127.0.0.1/nat")?;
/// db.migrate().await?;
/// db.insert_tenant("acme", &Plan::PRO).await?;
/// let issued = db.issue_key("acme", None).await?.expect("the tenant exists");
/// // Hand `issued.key` to its owner once; keep `issued.id` to revoke or rotate it.
/// let nat = NatLayer::new(CachedKeyStore::new(db.clone()));
/// db.rotate(&issued.id, Duration::from_secs(3600)).await?;
/// # let _ = nat; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// Connections, each behind an asynchronous lock so that one task (re)connects a slot
    /// while the others wait for it.
    slots: Box<[tokio::sync::Mutex<Option<Arc<Conn>>>]>,
    next: AtomicUsize,
    settings: Settings,
    changes: KeyChanges,
    used: DashMap<KeyId, Duration>,
    flushing: AtomicBool,
}

/// What the builder methods set.
#[derive(Clone)]
struct Settings {
    pool: usize,
    timeout: Duration,
    format: KeyFormat,
    clock: SharedClock,
}

/// One connection and its prepared lookup.
struct Conn {
    client: Client,
    lookup: Statement,
}

/// How often recorded uses are written.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

fn error(what: &str, err: impl fmt::Display) -> StoreError {
    StoreError::new(format!("postgres {what}: {err}"))
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

fn at(d: Duration) -> SystemTime {
    UNIX_EPOCH + d
}

impl PgKeyStore {
    /// A store for the database at `url` (`postgres://user:password@host:port/db` or
    /// `host=... user=...`). Nothing is connected yet: connections open on first use, so a
    /// server starts while its database is still coming up. Fails only if `url` is not a
    /// valid connection string (the error does not repeat it).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StoreError::new("postgres: invalid connection string"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        let settings = Settings {
            pool: 4,
            timeout: Duration::from_secs(2),
            format: KeyFormat::default(),
            clock: clock::system(),
        };
        Ok(Self::with(config, settings))
    }

    fn with(config: tokio_postgres::Config, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                slots: (0..settings.pool.max(1))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
                settings,
                changes: KeyChanges::new(),
                used: DashMap::new(),
                flushing: AtomicBool::new(false),
            }),
        }
    }

    /// A new store with a changed setting (configure before use: nothing is shared).
    fn rebuild(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        let mut config = self.inner.config.clone();
        config.connect_timeout(settings.timeout);
        Self::with(config, settings)
    }

    /// Keeps up to `connections` connections (4 by default). Configure before use.
    #[must_use]
    pub fn pool_size(self, connections: usize) -> Self {
        self.rebuild(|s| s.pool = connections)
    }

    /// Bounds every call, connecting included (2 s by default). Configure before use.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.rebuild(|s| s.timeout = timeout)
    }

    /// Issues keys of `format`. Configure before use.
    #[must_use]
    pub fn format(self, format: KeyFormat) -> Self {
        self.rebuild(|s| s.format = format)
    }

    /// Reads `clock` for issue, revocation and rotation times. Configure before use.
    #[must_use]
    pub fn clock(self, clock: SharedClock) -> Self {
        self.rebuild(|s| s.clock = clock)
    }

    /// Runs `work` within the timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.settings.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(format!("postgres {what}: timed out"))),
        }
    }

    /// A live connection from the pool, connecting if its slot is empty or closed.
    async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let inner = &*self.inner;
        let slot = &inner.slots[inner.next.fetch_add(1, Ordering::Relaxed) % inner.slots.len()];
        let mut held = slot.lock().await;
        if let Some(conn) = held.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        let client = self.connect().await?;
        let lookup = client
            .prepare(LOOKUP)
            .await
            .map_err(|e| error("prepare", e))?;
        let conn = Arc::new(Conn { client, lookup });
        *held = Some(conn.clone());
        Ok(conn)
    }

    /// A new connection, outside the pool.
    async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self
            .inner
            .config
            .connect(NoTls)
            .await
            .map_err(|e| error("connect", e))?;
        tokio::spawn(async move {
            // Ends when the connection closes; the client then reports closed.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs one statement, within the timeout, and returns the rows.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.bounded(what, async {
            let conn = self.conn().await?;
            conn.client
                .query(sql, params)
                .await
                .map_err(|e| error(what, e))
        })
        .await
    }

    /// Creates or updates the schema. Safe to call on every start, from several processes
    /// at once: it runs in one transaction, on a connection of its own, under an advisory
    /// lock, and applies each migration once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.bounded("migrate", async {
            let mut client = self.connect().await?;
            let fail = |e| error("migrate", e);
            let tx = client.transaction().await.map_err(fail)?;
            tx.batch_execute(
                "SELECT pg_advisory_xact_lock(7243521); \
                 CREATE TABLE IF NOT EXISTS nat_schema_migrations (\
                 version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());",
            )
            .await
            .map_err(fail)?;
            let applied: Vec<i32> = tx
                .query("SELECT version FROM nat_schema_migrations", &[])
                .await
                .map_err(fail)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for (version, migration) in MIGRATIONS {
                if !applied.contains(version) {
                    tx.batch_execute(migration).await.map_err(fail)?;
                    tx.execute(
                        "INSERT INTO nat_schema_migrations (version) VALUES ($1)",
                        &[version],
                    )
                    .await
                    .map_err(fail)?;
                }
            }
            tx.commit().await.map_err(fail)
        })
        .await
    }

    /// Adds a tenant on `plan`, or changes its plan if it exists.
    pub async fn insert_tenant(&self, tenant: &str, plan: &Plan) -> Result<(), StoreError> {
        self.query(
            "insert tenant",
            "INSERT INTO nat_tenants (id, plan) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan",
            &[&tenant, &plan.name()],
        )
        .await?;
        self.inner.changes.tenant_changed(&TenantId::from(tenant));
        Ok(())
    }

    /// Changes a tenant's plan; `false` if there is no such tenant.
    pub async fn set_plan(&self, tenant: &str, plan: &Plan) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "set plan",
                "UPDATE nat_tenants SET plan = $2 WHERE id = $1 RETURNING id",
                &[&tenant, &plan.name()],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(tenant));
        Ok(!rows.is_empty())
    }

    /// Sets a tenant's own limits; `false` if there is no such tenant.
    pub async fn set_overrides(
        &self,
        tenant: &str,
        overrides: LimitOverrides,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&overrides).map_err(|e| error("set overrides", e))?;
        let rows = self
            .query(
                "set overrides",
                "UPDATE nat_tenants SET overrides = $2::text::jsonb WHERE id = $1 RETURNING id",
                &[&tenant, &json],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(tenant));
        Ok(!rows.is_empty())
    }

    /// A tenant's plan, if the tenant exists.
    pub async fn plan(&self, tenant: &str) -> Result<Option<Plan>, StoreError> {
        let rows = self
            .query(
                "plan",
                "SELECT plan FROM nat_tenants WHERE id = $1",
                &[&tenant],
            )
            .await?;
        Ok(rows.first().map(|row| Plan::new(row.get::<_, &str>(0))))
    }

    /// Deletes a tenant and all its keys; `false` if there was no such tenant.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "delete tenant",
                "DELETE FROM nat_tenants WHERE id = $1 RETURNING id",
                &[&tenant],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(tenant));
        Ok(!rows.is_empty())
    }

    /// Stores `key`'s hash for `tenant`, expiring at `expires_at` (time since the Unix epoch)
    /// if given, and returns its id; `None` if the tenant does not exist or the key belongs to
    /// another tenant. Adding a key the tenant already has returns
    /// its id and changes nothing (so a fixed key can be added on every start).
    pub async fn add_key(
        &self,
        tenant: &str,
        key: &ApiKey,
        expires_at: Option<Duration>,
    ) -> Result<Option<KeyId>, StoreError> {
        let hash = key.hash();
        let id = KeyId::from(format!("key_{}", &hash.to_hex()[..16]));
        let now = at(self.inner.settings.clock.now());
        let bytes = hash.as_bytes().as_slice();
        let rows = self
            .query(
                "add key",
                "WITH added AS (\
                   INSERT INTO nat_keys (hash, id, tenant_id, created_at, expires_at) \
                   SELECT $1, $2, id, $4, $5 FROM nat_tenants WHERE id = $3 \
                   ON CONFLICT (hash) DO NOTHING RETURNING id) \
                 SELECT id FROM added \
                 UNION ALL SELECT id FROM nat_keys WHERE hash = $1 AND tenant_id = $3",
                &[&bytes, &id.as_str(), &tenant, &now, &expires_at.map(at)],
            )
            .await?;
        // A cache may hold "no such key" for this hash.
        self.inner.changes.key_changed(&hash);
        Ok(rows.first().map(|row| KeyId::from(row.get::<_, String>(0))))
    }

    /// Generates a key of the store's format for `tenant` and stores its hash; it stops
    /// working at `expires_at` (time since the Unix epoch) if given. `None` if the tenant
    /// does not exist.
    pub async fn issue_key(
        &self,
        tenant: &str,
        expires_at: Option<Duration>,
    ) -> Result<Option<IssuedKey>, StoreError> {
        let key = self.inner.settings.format.generate();
        let id = self.add_key(tenant, &key, expires_at).await?;
        Ok(id.map(|id| IssuedKey { id, key }))
    }

    /// Revokes key `key_id`; `false` if there is no such live key. Revoked keys stay listed.
    pub async fn revoke(&self, key_id: &KeyId) -> Result<bool, StoreError> {
        let now = at(self.inner.settings.clock.now());
        let rows = self
            .query(
                "revoke",
                "UPDATE nat_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
                 RETURNING hash",
                &[&key_id.as_str(), &now],
            )
            .await?;
        self.announce(&rows);
        Ok(!rows.is_empty())
    }

    /// Sets when key `key_id` stops working (time since the Unix epoch; `None`: never);
    /// `false` if there is no such key.
    pub async fn set_expiry(
        &self,
        key_id: &KeyId,
        expires_at: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "set expiry",
                "UPDATE nat_keys SET expires_at = $2 WHERE id = $1 RETURNING hash",
                &[&key_id.as_str(), &expires_at.map(at)],
            )
            .await?;
        self.announce(&rows);
        Ok(!rows.is_empty())
    }

    fn announce(&self, rows: &[tokio_postgres::Row]) {
        for row in rows {
            let bytes: &[u8] = row.get(0);
            if let Ok(bytes) = bytes.try_into() {
                self.inner.changes.key_changed(&KeyHash::from_bytes(bytes));
            }
        }
    }

    /// Issues a new key for the tenant of live key `key_id`, with the old key's expiry; the
    /// old key keeps working for `grace` and then stops. `None` if there is no such live key.
    pub async fn rotate(
        &self,
        key_id: &KeyId,
        grace: Duration,
    ) -> Result<Option<IssuedKey>, StoreError> {
        let key = self.inner.settings.format.generate();
        let hash = key.hash();
        let id = KeyId::from(format!("key_{}", &hash.to_hex()[..16]));
        let now = self.inner.settings.clock.now();
        let until = at(now.saturating_add(grace));
        // One statement: the new key and the old key's shortened expiry, or neither.
        let rows = self
            .query(
                "rotate",
                "WITH old AS (\
                   SELECT hash, tenant_id, expires_at FROM nat_keys \
                   WHERE id = $1 AND revoked_at IS NULL FOR UPDATE), \
                 new AS (\
                   INSERT INTO nat_keys (hash, id, tenant_id, created_at, expires_at) \
                   SELECT $2, $3, tenant_id, $4, expires_at FROM old RETURNING id) \
                 UPDATE nat_keys k SET expires_at = LEAST(COALESCE(old.expires_at, $5), $5) \
                 FROM old, new WHERE k.hash = old.hash RETURNING old.hash",
                &[
                    &key_id.as_str(),
                    &hash.as_bytes().as_slice(),
                    &id.as_str(),
                    &at(now),
                    &until,
                ],
            )
            .await?;
        self.announce(&rows);
        self.inner.changes.key_changed(&hash);
        Ok((!rows.is_empty()).then_some(IssuedKey { id, key }))
    }

    /// A tenant's keys, revoked ones included, oldest first.
    pub async fn keys(&self, tenant: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = self
            .query(
                "list keys",
                "SELECT id, created_at, expires_at, revoked_at, last_used_at FROM nat_keys \
                 WHERE tenant_id = $1 ORDER BY created_at, id",
                &[&tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| KeyInfo {
                id: KeyId::from(row.get::<_, String>(0)),
                created_at: since_epoch(row.get(1)),
                expires_at: row.get::<_, Option<SystemTime>>(2).map(since_epoch),
                revoked_at: row.get::<_, Option<SystemTime>>(3).map(since_epoch),
                last_used_at: row.get::<_, Option<SystemTime>>(4).map(since_epoch),
            })
            .collect())
    }

    /// Writes the recorded uses now, in one statement. Uses recorded while it runs are
    /// written next time; on failure they are kept for the next try.
    pub async fn flush_last_used(&self) -> Result<(), StoreError> {
        let batch: Vec<(KeyId, Duration)> = self
            .inner
            .used
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<SystemTime> = batch.iter().map(|(_, t)| at(*t)).collect();
        self.query(
            "record use",
            "UPDATE nat_keys k SET last_used_at = GREATEST(k.last_used_at, u.at) \
             FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
            &[&ids, &times],
        )
        .await?;
        for (id, t) in batch {
            self.inner.used.remove_if(&id, |_, v| *v == t);
        }
        Ok(())
    }

    /// Starts the task that writes recorded uses every [`FLUSH_EVERY`], once, if a runtime
    /// is at hand. It ends when the last handle to the store is dropped.
    fn start_flushing(&self) {
        if self.inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.flushing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = PgKeyStore { inner };
                if let Err(err) = store.flush_last_used().await {
                    crate::report::failure("key store (last use)", &err);
                }
            }
        });
    }

    async fn find(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let rows = self
            .bounded("lookup", async {
                let conn = self.conn().await?;
                conn.client
                    .query(&conn.lookup, &[&hash.as_bytes().as_slice()])
                    .await
                    .map_err(|e| error("lookup", e))
            })
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let key_id = KeyId::from(row.get::<_, String>(0));
        let mut tenant = Tenant::new(row.get::<_, String>(1), Plan::new(row.get(2)), key_id);
        if let Some(json) = row.get::<_, Option<&str>>(3) {
            let overrides = serde_json::from_str(json).map_err(|e| error("overrides", e))?;
            tenant.set_overrides(overrides);
        }
        Ok(Some(KeyRecord {
            tenant,
            expires_at: row.get::<_, Option<SystemTime>>(4).map(since_epoch),
        }))
    }
}

impl KeyStore for PgKeyStore {
    type Future = Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, StoreError>> + Send>>;

    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        let (store, hash) = (self.clone(), *hash);
        Answer::Pending(Box::pin(async move { store.find(hash).await }))
    }

    fn changes(&self) -> Option<&KeyChanges> {
        Some(&self.inner.changes)
    }

    fn record_use(&self, key_id: &KeyId, at: Duration) {
        self.inner
            .used
            .entry(key_id.clone())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
        self.start_flushing();
    }
}

impl fmt::Debug for PgKeyStore {
    /// Host, port and database only: never the user's password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        f.debug_struct("PgKeyStore")
            .field("hosts", &hosts)
            .field("ports", &c.get_ports())
            .field("dbname", &c.get_dbname())
            .field("pool", &self.inner.slots.len())
            .field("timeout", &self.inner.settings.timeout)
            .finish()
    }
}
