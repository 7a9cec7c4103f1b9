//! [`PgKeyStore`]: API keys in PostgreSQL.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dashmap::DashMap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{AsyncMessage, NoTls, types::ToSql};

use super::{
    admin::{AdminError, KeyAdmin, Page, TenantInfo, known_plan, valid_tenant_id},
    key::{ApiKey, KeyFormat, KeyHash},
    store::{IssuedKey, KeyChanges, KeyInfo, KeyRecord, KeyStore},
};
use crate::{
    clock::{self, SharedClock},
    error::StoreError,
    plan::{LimitOverrides, Plan, Plans},
    store::Answer,
    tenant::{KeyId, Tenant, TenantId},
};

/// The schema, as migrations in order: version 1 creates `nat_tenants` and `nat_keys`;
/// version 2 announces their changes on `nat_key_changes`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_keys.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_notify_changes.sql"),
    ),
];

/// The channel the schema's triggers announce changes on (migration 2).
const CHANNEL: &str = "nat_key_changes";

const LOOKUP: &str = "SELECT k.id, k.tenant_id, t.plan, t.overrides::text, k.expires_at \
     FROM nat_keys k JOIN nat_tenants t ON t.id = k.tenant_id \
     WHERE k.hash = $1 AND k.revoked_at IS NULL";

/// API keys in PostgreSQL, by SHA-256 hash: a [`KeyStore`] (put a
/// [`CachedKeyStore`](super::CachedKeyStore) in front of it), administered through
/// [`KeyAdmin`] (tenants and keys; the admin API and the `nat` CLI use it).
///
/// - **Schema.** Two tables, `nat_tenants` (`id TEXT` primary key, `plan TEXT`,
///   `overrides JSONB`, `created_at TIMESTAMPTZ`) and `nat_keys` (`hash BYTEA` primary key,
///   `id TEXT`, `tenant_id TEXT`, `created_at`, `expires_at`, `revoked_at`, `last_used_at`,
///   all `TIMESTAMPTZ`), shipped as migrations in the crate (`migrations/postgres/*.sql`) and
///   applied by [`migrate`](Self::migrate),
///   which is safe to call on every start (it takes an advisory lock and records versions in
///   `nat_schema_migrations`).
/// - **Lookups** are one indexed query by primary key, prepared once per connection, over a
///   small pool of connections (deadpool-postgres, 4 by default) that reconnect by themselves after the database
///   restarts.
/// - **Every call is bounded** by a timeout (2 s by default, connecting included); a database
///   that is down or slow gives [`StoreError`]s (500 for requests), which never carry the URL
///   or the password.
/// - **Changes** (revoke, rotate, expiry, plan, overrides, deleting a tenant) reach every
///   instance's cache within a second, whoever makes them (this store, another instance, the
///   CLI, plain SQL): the schema's triggers announce them with `NOTIFY nat_key_changes`, and
///   the store listens on a connection of its own, started with its first lookup. While that
///   connection is down the caches serve nothing older than their `offline_ttl` (2 s), and
///   forget everything when it is back ([`KeyChanges`]).
/// - **Plans.** Given the plan table ([`plans`](Self::plans)), the store refuses a tenant on
///   a plan the table lacks ([`AdminError::UnknownPlan`]).
/// - **Last use** is recorded through [`KeyStore::record_use`] into memory and written in one
///   statement for all keys every 10 seconds (and by [`flush_last_used`](Self::flush_last_used)).
///
/// Built on `tokio-postgres` rather than `sqlx`: a handful of fixed queries needs neither
/// compile-time checking against a database nor macros, and `tokio-postgres` is a much
/// smaller build that pipelines concurrent queries over one connection.
///
/// **TLS** is asked for in the connection string, as libpq does: `sslmode=verify-full`
/// (the certificate's chain and name are checked), `verify-ca` or `require` (its chain only),
/// with `sslrootcert=/path/ca.pem` or else the system's roots; `disable` (the default) is
/// plain text, and `prefer` / `allow`, which fall back to plain text, are refused. Any mode
/// but `disable` needs the `tls` feature (rustls); see the `tls` module.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_nat::{
///     NatLayer,
///     auth::{CachedKeyStore, KeyAdmin, PgKeyStore},
///     plan::{Plan, Plans},
/// };
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let plans = Plans::default();
/// let db = PgKeyStore::new("postgres://nat@127.0.0.1/nat")?.plans(plans.clone());
/// db.migrate().await?;
/// db.create_tenant("acme", &Plan::PRO, Default::default()).await?;
/// let issued = db.issue("acme", None).await?;
/// // Hand `issued.key` to its owner once; keep `issued.id` to revoke or rotate it.
/// let nat = NatLayer::new(CachedKeyStore::new(db.clone())).plans(plans);
/// db.rotate_key(&issued.id, Duration::from_secs(3600)).await?;
/// # let _ = nat; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// TLS to the database, as the connection string's `sslmode` asks.
    tls: Tls,
    /// The connections (deadpool-postgres): opened on demand, checked on reuse, replaced
    /// when closed (the database restarted), each with its prepared statements.
    pool: Pool,
    settings: Settings,
    changes: KeyChanges,
    used: DashMap<KeyId, Duration>,
    flushing: AtomicBool,
    /// The listener of changes other processes make has been started.
    listening: AtomicBool,
}

/// What the builder methods set.
#[derive(Clone)]
struct Settings {
    pool: usize,
    timeout: Duration,
    format: KeyFormat,
    clock: SharedClock,
    plans: Option<Arc<Plans>>,
}

/// TLS to the database.
#[derive(Clone)]
enum Tls {
    /// Plain text (`sslmode=disable`, or none given).
    Off,
    /// TLS, the server's certificate checked as `sslmode` says.
    #[cfg(feature = "tls")]
    On(crate::tls::PgTls),
}

/// The `sslmode` and `sslrootcert` of a connection string.
#[derive(Debug, Default)]
struct Ssl {
    mode: Option<String>,
    rootcert: Option<String>,
}

impl Ssl {
    /// The TLS the mode asks for (and the mode tokio-postgres is given: it knows `require`
    /// but not the checks, which are the connector's).
    fn connector(self, config: &mut tokio_postgres::Config) -> Result<Tls, StoreError> {
        use tokio_postgres::config::SslMode;
        let mode = self.mode.as_deref().unwrap_or("disable");
        if mode == "disable" {
            config.ssl_mode(SslMode::Disable);
            return Ok(Tls::Off);
        }
        if matches!(mode, "prefer" | "allow") {
            return Err(StoreError::new(format!(
                "postgres: sslmode={mode} is refused (it falls back to plain text or accepts any \
                 certificate): use require, verify-ca or verify-full, or disable"
            )));
        }
        #[cfg(feature = "tls")]
        {
            use crate::tls::{Check, PgTls};
            let check = match mode {
                "require" | "verify-ca" => Check::Chain,
                "verify-full" => Check::Full,
                _ => {
                    return Err(StoreError::new(
                        "postgres: sslmode is disable, require, verify-ca or verify-full",
                    ));
                }
            };
            config.ssl_mode(SslMode::Require);
            Ok(Tls::On(PgTls::new(check, self.rootcert.as_deref())?))
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = self.rootcert;
            Err(StoreError::new(format!(
                "postgres: sslmode={mode} needs tower-nat's `tls` feature"
            )))
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (a URL's query, or
/// `key=value` pairs), which tokio-postgres would refuse or ignore.
fn split_ssl(url: &str) -> Result<(String, Ssl), StoreError> {
    let (rest, ssl, unsupported) = split_ssl_parameters(url)?;
    match unsupported {
        // Client certificates, CRLs, compression...: named, rather than "invalid".
        Some(key) => Err(StoreError::new(format!(
            "postgres: {key} is not supported (of the ssl parameters, only sslmode and \
             sslrootcert are)"
        ))),
        None => Ok((rest, ssl)),
    }
}

/// [`split_ssl`]'s work, with the first other `ssl...` parameter met.
fn split_ssl_parameters(url: &str) -> Result<(String, Ssl, Option<String>), StoreError> {
    let mut ssl = Ssl::default();
    let mut unsupported: Option<String> = None;
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            ssl.mode = Some(value);
            true
        }
        "sslrootcert" => {
            ssl.rootcert = Some(value);
            true
        }
        _ => {
            if key.starts_with("ssl") && unsupported.is_none() {
                unsupported = Some(key.to_owned());
            }
            false
        }
    };
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_owned(), ssl, unsupported));
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, percent_decoded(value))
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ssl, unsupported));
    }
    // `key=value` pairs, values possibly 'quoted' (with \' and \\ inside).
    let mut rest = String::new();
    let mut chars = trimmed.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(_) = chars.peek() else { break };
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return Err(StoreError::new("postgres: invalid connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next() {
                    Some('\\') => {
                        let escaped = chars.next().ok_or_else(|| {
                            StoreError::new("postgres: invalid connection string")
                        })?;
                        raw.push('\\');
                        raw.push(escaped);
                        value.push(escaped);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => return Err(StoreError::new("postgres: invalid connection string")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        if !take(&key, value) {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push('=');
            rest.push_str(&raw);
        }
    }
    Ok((rest, ssl, unsupported))
}

/// `%XX` sequences of a URL's query value, decoded (a path in `sslrootcert`).
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How often recorded uses are written.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// A failure of `what`, with the driver's causes (the server's own message: "no pg_hba.conf
/// entry ...", a certificate refused), never the connection string.
fn error(what: &str, err: impl std::error::Error + 'static) -> StoreError {
    StoreError::new(format!("postgres {what}: {}", crate::report::chain(&err)))
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
        let (rest, ssl) = split_ssl(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|_| StoreError::new("postgres: invalid connection string"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        let tls = ssl.connector(&mut config)?;
        let settings = Settings {
            pool: 4,
            timeout: Duration::from_secs(2),
            format: KeyFormat::default(),
            clock: clock::system(),
            plans: None,
        };
        Ok(Self::with(config, tls, settings))
    }

    fn with(config: tokio_postgres::Config, tls: Tls, settings: Settings) -> Self {
        // A connection is reused if it is not closed; a closed one is replaced.
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::Off => Manager::from_config(config.clone(), NoTls, recycling()),
            #[cfg(feature = "tls")]
            Tls::On(tls) => Manager::from_config(config.clone(), tls.clone(), recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .expect("a pool with a runtime and timeouts builds");
        Self {
            inner: Arc::new(Inner {
                config,
                tls,
                pool,
                settings,
                changes: KeyChanges::with_feed(),
                used: DashMap::new(),
                flushing: AtomicBool::new(false),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// A new store with a changed setting (configure before use: nothing is shared).
    fn rebuild(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        let mut config = self.inner.config.clone();
        config.connect_timeout(settings.timeout);
        Self::with(config, self.inner.tls.clone(), settings)
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

    /// Knows the plan table: tenants are refused a plan it lacks
    /// ([`AdminError::UnknownPlan`]), rather than put on a plan every request of which would
    /// be a 500. Give it the table the layers use. Configure before use.
    #[must_use]
    pub fn plans(self, plans: impl Into<Arc<Plans>>) -> Self {
        let plans = plans.into();
        self.rebuild(|s| s.plans = Some(plans))
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

    /// A live connection from the pool, for `what`.
    async fn conn(&self, what: &str) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| match e {
            // The driver's error, without the pool's "error occurred while creating a new
            // object" around it.
            deadpool_postgres::PoolError::Backend(e) => error(what, e),
            other => error(what, other),
        })
    }

    /// Runs one statement, within the timeout, and returns the rows.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.bounded(what, async {
            let conn = self.conn(what).await?;
            conn.query(sql, params).await.map_err(|e| error(what, e))
        })
        .await
    }

    /// Creates or updates the schema. Safe to call on every start, from several processes
    /// at once: it runs in one transaction, on a connection of its own, under an advisory
    /// lock, and applies each migration once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.bounded("migrate", async {
            let mut client = self.conn("migrate").await?;
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

    /// Adds a tenant on `plan`, or changes its plan if it exists (for seeding on start; the
    /// administration calls are [`KeyAdmin`]'s). Refuses a plan the store's table lacks
    /// ([`plans`](Self::plans)).
    pub async fn insert_tenant(&self, tenant: &str, plan: &Plan) -> Result<(), AdminError> {
        let plan = known_plan(self.inner.settings.plans.as_ref(), plan)?;
        self.query(
            "insert tenant",
            "INSERT INTO nat_tenants (id, plan, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan",
            &[&tenant, &plan.name(), &at(self.inner.settings.clock.now())],
        )
        .await?;
        self.inner.changes.tenant_changed(&TenantId::from(tenant));
        Ok(())
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
                   SELECT $1, $2, id, $4, $5 FROM nat_tenants WHERE id = $3 FOR SHARE \
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

    fn announce(&self, rows: &[tokio_postgres::Row]) {
        for row in rows {
            let bytes: &[u8] = row.get(0);
            if let Ok(bytes) = bytes.try_into() {
                self.inner.changes.key_changed(&KeyHash::from_bytes(bytes));
            }
        }
    }

    /// A tenant row (`id, plan, overrides::text, created_at`) as an administrator sees it.
    fn tenant_info(&self, row: &tokio_postgres::Row) -> Result<TenantInfo, StoreError> {
        let name: &str = row.get(1);
        let plan = known_plan(self.inner.settings.plans.as_ref(), &Plan::new(name))
            .unwrap_or_else(|_| Plan::new(name));
        let overrides = match row.get::<_, Option<&str>>(2) {
            Some(json) => serde_json::from_str(json).map_err(|e| error("overrides", e))?,
            None => LimitOverrides::default(),
        };
        Ok(TenantInfo {
            id: TenantId::from(row.get::<_, String>(0)),
            plan,
            overrides,
            created_at: since_epoch(row.get(3)),
        })
    }

    /// The one tenant `rows` holds, or [`AdminError::UnknownTenant`].
    fn one_tenant(&self, rows: &[tokio_postgres::Row]) -> Result<TenantInfo, AdminError> {
        let row = rows.first().ok_or(AdminError::UnknownTenant)?;
        Ok(self.tenant_info(row)?)
    }

    /// The live key `key_id`'s hash and expiry, for a key operation that fails with
    /// [`AdminError::UnknownKey`] when `rows` is empty; announces the change.
    fn changed_key(&self, rows: &[tokio_postgres::Row]) -> Result<(), AdminError> {
        self.announce(rows);
        if rows.is_empty() {
            return Err(AdminError::UnknownKey);
        }
        Ok(())
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
    /// Starts listening, in the background and while the store lives, to the changes the
    /// schema's triggers announce (`NOTIFY nat_key_changes`, whoever made them: another
    /// instance, the CLI, plain SQL), and passes them to the caches. Once; again later if no
    /// runtime was there to run it.
    fn start_listening(&self) {
        if self.inner.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.listening.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(listen(Arc::downgrade(&self.inner)));
    }

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
                let conn = self.conn("lookup").await?;
                let lookup = conn
                    .prepare_cached(LOOKUP)
                    .await
                    .map_err(|e| error("prepare", e))?;
                conn.query(&lookup, &[&hash.as_bytes().as_slice()])
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

/// How long the listener waits before connecting again, at first and at most.
const LISTEN_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The listener: one connection of its own, `LISTEN nat_key_changes`, each notification
/// passed to the caches; while it is not connected the feed is down (the caches fall back to
/// their offline TTL), and when it connects again they forget everything. It ends when the
/// store is dropped.
async fn listen(store: Weak<Inner>) {
    let mut pause = LISTEN_RETRY.0;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let (config, tls, changes, timeout) = (
            inner.config.clone(),
            inner.tls.clone(),
            inner.changes.clone(),
            inner.settings.timeout,
        );
        drop(inner);
        let fed = match tls {
            Tls::Off => match tokio::time::timeout(timeout, config.connect(NoTls)).await {
                Ok(Ok((client, connection))) => feed(&store, &changes, client, connection).await,
                _ => Fed::NotConnected,
            },
            #[cfg(feature = "tls")]
            Tls::On(tls) => match tokio::time::timeout(timeout, config.connect(tls)).await {
                Ok(Ok((client, connection))) => feed(&store, &changes, client, connection).await,
                _ => Fed::NotConnected,
            },
        };
        match fed {
            Fed::StoreGone => return,
            Fed::Closed => pause = LISTEN_RETRY.0,
            Fed::NotConnected => {}
        }
        changes.feed_down();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LISTEN_RETRY.1);
    }
}

/// How a feed connection ended.
enum Fed {
    /// It could not connect or listen.
    NotConnected,
    /// It fed the caches, then closed.
    Closed,
    /// The store was dropped.
    StoreGone,
}

/// `LISTEN` on a connection, then each notification to the caches until it closes.
async fn feed<S, T>(
    store: &Weak<Inner>,
    changes: &KeyChanges,
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
) -> Fed
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let timeout = match store.upgrade() {
        Some(inner) => inner.settings.timeout,
        None => return Fed::StoreGone,
    };
    {
        let statement = format!("LISTEN {CHANNEL}");
        let listened = {
            let mut listening = std::pin::pin!(client.batch_execute(&statement));
            // The connection is driven while `LISTEN` runs.
            tokio::time::timeout(
                timeout,
                std::future::poll_fn(|cx| {
                    while let Poll::Ready(message) = connection.poll_message(cx) {
                        if !matches!(message, Some(Ok(_))) {
                            return Poll::Ready(false);
                        }
                    }
                    listening.as_mut().poll(cx).map(|done| done.is_ok())
                }),
            )
            .await
        };
        if listened != Ok(true) {
            return Fed::NotConnected;
        }
        changes.feed_up();
        loop {
            let message = tokio::time::timeout(
                Duration::from_secs(5),
                std::future::poll_fn(|cx| connection.poll_message(cx)),
            )
            .await;
            match message {
                Ok(Some(Ok(AsyncMessage::Notification(n)))) => {
                    announce(changes, n.payload());
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) if store.strong_count() == 0 => return Fed::StoreGone,
                Err(_) => {}
            }
        }
        crate::report::failure(
            "key store (change feed)",
            &StoreError::new("postgres: the change feed's connection closed"),
        );
        drop(client);
        Fed::Closed
    }
}

/// Passes one notification (`key:<hex>` or `tenant:<id>`) to the caches.
fn announce(changes: &KeyChanges, payload: &str) {
    if let Some(hex) = payload.strip_prefix("key:") {
        if let Some(hash) = KeyHash::from_hex(hex) {
            changes.key_changed(&hash);
        }
    } else if let Some(tenant) = payload.strip_prefix("tenant:") {
        changes.tenant_changed(&TenantId::from(tenant));
    }
}

impl KeyStore for PgKeyStore {
    type Future = Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, StoreError>> + Send>>;

    fn lookup(&self, hash: &KeyHash) -> Answer<Option<KeyRecord>, Self::Future> {
        self.start_listening();
        let (store, hash) = (self.clone(), *hash);
        Answer::Pending(Box::pin(async move { store.find(hash).await }))
    }

    fn changes(&self) -> Option<&KeyChanges> {
        self.start_listening();
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

/// `SELECT`ed key columns, in this order, as [`key_info`] reads them.
const KEY_COLUMNS: &str = "id, created_at, expires_at, revoked_at, last_used_at, tenant_id";

/// A row of [`KEY_COLUMNS`].
fn key_info(row: &tokio_postgres::Row) -> (TenantId, KeyInfo) {
    let info = KeyInfo {
        id: KeyId::from(row.get::<_, String>(0)),
        created_at: since_epoch(row.get(1)),
        expires_at: row.get::<_, Option<SystemTime>>(2).map(since_epoch),
        revoked_at: row.get::<_, Option<SystemTime>>(3).map(since_epoch),
        last_used_at: row.get::<_, Option<SystemTime>>(4).map(since_epoch),
    };
    (TenantId::from(row.get::<_, String>(5)), info)
}

/// A page's limit, as SQL takes it.
fn limit(page: &Page) -> i64 {
    i64::try_from(page.size()).unwrap_or(i64::MAX)
}

const TENANT_COLUMNS: &str = "id, plan, overrides::text, created_at";

/// Administration in SQL: each call is one statement, announced to this process's caches at
/// once and to every other instance's through the schema's triggers. Revoked keys stay
/// listed (with `revoked_at`); deleting a tenant deletes its keys.
impl KeyAdmin for PgKeyStore {
    async fn create_tenant(
        &self,
        id: &str,
        plan: &Plan,
        overrides: LimitOverrides,
    ) -> Result<TenantInfo, AdminError> {
        if !valid_tenant_id(id) {
            return Err(AdminError::InvalidTenantId);
        }
        let plan = known_plan(self.inner.settings.plans.as_ref(), plan)?;
        let json = (!overrides.is_empty())
            .then(|| serde_json::to_string(&overrides))
            .transpose()
            .map_err(|e| error("create tenant", e))?;
        let rows = self
            .query(
                "create tenant",
                &format!(
                    "INSERT INTO nat_tenants (id, plan, overrides, created_at) \
                     VALUES ($1, $2, $3::text::jsonb, $4) \
                     ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
                ),
                &[
                    &id,
                    &plan.name(),
                    &json,
                    &at(self.inner.settings.clock.now()),
                ],
            )
            .await?;
        self.one_tenant(&rows).map_err(|e| match e {
            AdminError::UnknownTenant => AdminError::TenantExists,
            e => e,
        })
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantInfo>, AdminError> {
        let rows = self
            .query(
                "tenant",
                &format!("SELECT {TENANT_COLUMNS} FROM nat_tenants WHERE id = $1"),
                &[&id],
            )
            .await?;
        match self.one_tenant(&rows) {
            Err(AdminError::UnknownTenant) => Ok(None),
            found => found.map(Some),
        }
    }

    async fn tenants(&self, page: &Page) -> Result<Vec<TenantInfo>, AdminError> {
        let rows = self
            .query(
                "tenants",
                &format!(
                    "SELECT {TENANT_COLUMNS} FROM nat_tenants \
                     WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
                ),
                &[&page.after, &limit(page)],
            )
            .await?;
        let tenants = rows.iter().map(|row| self.tenant_info(row));
        Ok(tenants.collect::<Result<_, _>>()?)
    }

    async fn change_plan(&self, id: &str, plan: &Plan) -> Result<TenantInfo, AdminError> {
        let plan = known_plan(self.inner.settings.plans.as_ref(), plan)?;
        let rows = self
            .query(
                "set plan",
                &format!(
                    "UPDATE nat_tenants SET plan = $2 WHERE id = $1 RETURNING {TENANT_COLUMNS}"
                ),
                &[&id, &plan.name()],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(id));
        self.one_tenant(&rows)
    }

    async fn change_overrides(
        &self,
        id: &str,
        overrides: LimitOverrides,
    ) -> Result<TenantInfo, AdminError> {
        let json = (!overrides.is_empty())
            .then(|| serde_json::to_string(&overrides))
            .transpose()
            .map_err(|e| error("set overrides", e))?;
        let rows = self
            .query(
                "set overrides",
                &format!(
                    "UPDATE nat_tenants SET overrides = $2::text::jsonb WHERE id = $1 \
                     RETURNING {TENANT_COLUMNS}"
                ),
                &[&id, &json],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(id));
        self.one_tenant(&rows)
    }

    async fn remove_tenant(&self, id: &str) -> Result<(), AdminError> {
        let rows = self
            .query(
                "delete tenant",
                "DELETE FROM nat_tenants WHERE id = $1 RETURNING id",
                &[&id],
            )
            .await?;
        self.inner.changes.tenant_changed(&TenantId::from(id));
        if rows.is_empty() {
            return Err(AdminError::UnknownTenant);
        }
        Ok(())
    }

    async fn issue(
        &self,
        tenant: &str,
        expires_at: Option<Duration>,
    ) -> Result<IssuedKey, AdminError> {
        let key = self.inner.settings.format.generate();
        let id = self.add_key(tenant, &key, expires_at).await?;
        let id = id.ok_or(AdminError::UnknownTenant)?;
        Ok(IssuedKey { id, key })
    }

    async fn list_keys(&self, tenant: &str, page: &Page) -> Result<Vec<KeyInfo>, AdminError> {
        // The tenant's row is read in the same statement, so an unknown tenant is told from
        // one without keys.
        let rows = self
            .query(
                "list keys",
                "SELECT k.id, k.created_at, k.expires_at, k.revoked_at, k.last_used_at, t.id \
                 FROM nat_tenants t LEFT JOIN LATERAL (\
                   SELECT * FROM nat_keys k WHERE k.tenant_id = t.id \
                   AND ($2::text IS NULL OR k.id > $2) ORDER BY k.id LIMIT $3) k ON true \
                 WHERE t.id = $1 ORDER BY k.id",
                &[&tenant, &page.after, &limit(page)],
            )
            .await?;
        if rows.is_empty() {
            return Err(AdminError::UnknownTenant);
        }
        Ok(rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(0).is_some())
            .map(|row| key_info(row).1)
            .collect())
    }

    async fn key(&self, id: &KeyId) -> Result<Option<(TenantId, KeyInfo)>, AdminError> {
        let rows = self
            .query(
                "key",
                &format!("SELECT {KEY_COLUMNS} FROM nat_keys WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?;
        Ok(rows.first().map(key_info))
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<(), AdminError> {
        let now = at(self.inner.settings.clock.now());
        let rows = self
            .query(
                "revoke",
                // Revoking a revoked key succeeds and keeps the first revocation's time.
                "UPDATE nat_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
                 RETURNING hash",
                &[&id.as_str(), &now],
            )
            .await?;
        self.changed_key(&rows)
    }

    async fn rotate_key(&self, id: &KeyId, grace: Duration) -> Result<IssuedKey, AdminError> {
        let key = self.inner.settings.format.generate();
        let hash = key.hash();
        let new_id = KeyId::from(format!("key_{}", &hash.to_hex()[..16]));
        let now = self.inner.settings.clock.now();
        let until = at(now.saturating_add(grace));
        // One statement: the new key and the old key's shortened expiry, or neither.
        let rows = self
            .query(
                "rotate",
                "WITH old AS (\
                   SELECT hash, tenant_id, expires_at FROM nat_keys \
                   WHERE id = $1 AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > $4) FOR UPDATE), \
                 new AS (\
                   INSERT INTO nat_keys (hash, id, tenant_id, created_at, expires_at) \
                   SELECT $2, $3, tenant_id, $4, expires_at FROM old RETURNING id) \
                 UPDATE nat_keys k SET expires_at = LEAST(COALESCE(old.expires_at, $5), $5) \
                 FROM old, new WHERE k.hash = old.hash RETURNING old.hash",
                &[
                    &id.as_str(),
                    &hash.as_bytes().as_slice(),
                    &new_id.as_str(),
                    &at(now),
                    &until,
                ],
            )
            .await?;
        self.inner.changes.key_changed(&hash);
        self.changed_key(&rows)?;
        Ok(IssuedKey { id: new_id, key })
    }

    async fn change_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<Duration>,
    ) -> Result<(), AdminError> {
        let rows = self
            .query(
                "set expiry",
                "UPDATE nat_keys SET expires_at = $2 WHERE id = $1 AND revoked_at IS NULL \
                 RETURNING hash",
                &[&id.as_str(), &expires_at.map(at)],
            )
            .await?;
        self.changed_key(&rows)
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
            .field("pool", &self.inner.settings.pool)
            .field("timeout", &self.inner.settings.timeout)
            .finish()
    }
}
