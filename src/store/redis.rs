//! The Redis connection shared by [`RedisRateStore`](crate::rate_limit::RedisRateStore) and
//! [`RedisQuotaStore`](crate::quota::RedisQuotaStore).
//!
//! [`RedisBackend`] wraps a connection to one Redis server (a `redis` connection manager,
//! which reconnects by itself after Redis comes back) or to a Redis Cluster (the `redis`
//! crate's cluster client, which follows `MOVED` and `ASK` and refreshes its slot map), a key
//! prefix (so several deployments can share one Redis) and a timeout that bounds every call:
//! when Redis is down or slow, a call fails with a [`StoreError`] after at most the timeout,
//! never hangs.
//!
//! Every key of one tenant carries the tenant in braces (a hash tag), so each script touches
//! one cluster slot, and the stores run unchanged on a cluster.
//!
//! ```no_run
//! # async fn f() -> Result<(), tower_nat::StoreError> {
//! use tower_nat::store::redis::RedisBackend;
//!
//! // One server.
//! let single = RedisBackend::open("redis://127.0.0.1:6379/")?;
//! // A cluster, from any of its nodes (the others are discovered).
//! let cluster = RedisBackend::open_cluster(&["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])?;
//! // Either, from one configuration string (as the demo's `NAT_REDIS_URL`).
//! let from_config = RedisBackend::from_config("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ::redis::{
    Client, Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};

use crate::error::StoreError;

/// Whose clock a Redis store runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeSource {
    /// Redis's own (`TIME`): every instance measures against the same clock, so clock skew
    /// between application servers changes nothing. The default.
    #[default]
    Redis,
    /// The time the layer passes, from its [`Clock`](crate::clock::Clock): for tests on a
    /// [`FakeClock`](crate::clock::FakeClock).
    Caller,
}

impl TimeSource {
    /// The script argument for `now`: microseconds since the Unix epoch, or empty for Redis's
    /// `TIME`.
    pub(crate) fn arg(self, now: Duration) -> String {
        match self {
            TimeSource::Redis => String::new(),
            TimeSource::Caller => now.as_micros().to_string(),
        }
    }
}

/// The default bound on every Redis call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "nat:";

/// A Redis connection with a key prefix and a per-call timeout. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    prefix: Arc<str>,
    timeout: Duration,
    retrying: Arc<AtomicUsize>,
}

/// The connection a store call uses: to one server, or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// For a `rediss://` URL: the TLS provider installed, or, without the `tls` feature, an
/// error that says so (and does not repeat the URL). `#insecure` (the redis crate's way to
/// skip the certificate check) is refused: an unverified server is never talked to.
fn tls_ready(url: &str) -> Result<(), StoreError> {
    if !url.trim_start().starts_with("rediss") {
        return Ok(());
    }
    if url.contains("#insecure") {
        return Err(StoreError::new(
            "rediss://...#insecure is refused: the server's certificate is always checked \
             (trust its CA through the system's store or SSL_CERT_FILE)",
        ));
    }
    #[cfg(feature = "tls")]
    {
        crate::tls::install_provider();
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    Err(StoreError::new("rediss:// needs tower-nat's `tls` feature"))
}

impl RedisBackend {
    /// A backend for `url` (`redis://host:port/db`). No I/O happens here: the connection is
    /// made on first use and remade after failures, so a server can start while Redis is
    /// down. Must be called inside a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// Like [`open`](Self::open), bounding every call (and every connection attempt) by
    /// `timeout`.
    pub fn open_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        tls_ready(url)?;
        // The driver's words may quote the URL (and its password): not passed on.
        let client = Client::open(url).map_err(|_| StoreError::new("redis: invalid URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::new)?;
        Ok(Self::with(Conn::Single(conn), timeout))
    }

    fn with(conn: Conn, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout,
            retrying: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A backend for a Redis Cluster, given one or more of its nodes (`redis://host:port/`;
    /// the others are discovered). The client follows `MOVED` and `ASK` redirections and
    /// refreshes its map of slots after a resharding or a failover. Connections are made in
    /// the background, so no I/O happens here either. Must be called inside a Tokio runtime.
    pub fn open_cluster<S: AsRef<str>>(nodes: &[S]) -> Result<Self, StoreError> {
        Self::open_cluster_with_timeout(nodes, DEFAULT_TIMEOUT)
    }

    /// Like [`open_cluster`](Self::open_cluster), bounding every call by `timeout`.
    pub fn open_cluster_with_timeout<S: AsRef<str>>(
        nodes: &[S],
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if nodes.is_empty() {
            return Err(StoreError::new(
                "a Redis Cluster needs at least one node URL",
            ));
        }
        let nodes: Vec<&str> = nodes.iter().map(AsRef::as_ref).collect();
        for node in &nodes {
            tls_ready(node)?;
        }
        let client = ClusterClient::builder(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .build()
            .map_err(|_| StoreError::new("redis: invalid cluster node URL"))?;
        let config = ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let conn = client.get_pending_async_connection_with_config(config);
        Ok(Self::with(Conn::Cluster(conn), timeout))
    }

    /// A backend from one configuration string:
    ///
    /// - one URL (`redis://host:port/db`, `rediss://...`): one server, as [`open`](Self::open)
    ///   (one node of a cluster given this way is taken for a server: most calls then fail
    ///   with an error saying it answered `MOVED`, and [`ping`](Self::ping) says so at start);
    /// - several URLs separated by commas: a cluster with those seed nodes;
    /// - `redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`, for TLS): a
    ///   cluster, the scheme applying to every node.
    pub fn from_config(spec: &str) -> Result<Self, StoreError> {
        Self::from_config_with_timeout(spec, DEFAULT_TIMEOUT)
    }

    /// Like [`from_config`](Self::from_config), bounding every call by `timeout`.
    pub fn from_config_with_timeout(spec: &str, timeout: Duration) -> Result<Self, StoreError> {
        let spec = spec.trim();
        for (scheme, plain) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = spec.strip_prefix(scheme) {
                let nodes: Vec<String> = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("{plain}{n}"))
                    .collect();
                return Self::open_cluster_with_timeout(&nodes, timeout);
            }
        }
        if spec.contains(',') {
            let nodes: Vec<&str> = spec
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            return Self::open_cluster_with_timeout(&nodes, timeout);
        }
        Self::open_with_timeout(spec, timeout)
    }

    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Prefixes every key with `prefix` (default `nat:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The key `prefix` + `parts` joined by `:`, with the tenant part in braces (a Redis
    /// Cluster hash tag, so one tenant's keys share a slot).
    pub(crate) fn key(&self, kind: &str, tenant: &str, rest: &[&str]) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + tenant.len() + 32);
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(":{");
        key.push_str(tenant);
        key.push('}');
        for part in rest {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// A connection handle for one call.
    pub(crate) fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// Runs `call`, failing with a [`StoreError`] after the timeout.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ::redis::RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.redirect_node().is_some() && !self.is_cluster() => {
                Err(StoreError::new(NotACluster(e)))
            }
            Ok(Err(e)) => Err(StoreError::new(e)),
            Err(_) => Err(StoreError::new(TimedOut(self.timeout))),
        }
    }

    /// Asks Redis for `PONG`, within the timeout: for a server that wants to fail at start
    /// when Redis is unreachable or misconfigured (the stores themselves never need it).
    /// On a cluster, every master is asked.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection();
        let _: String = self
            .bounded(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        // A cluster node opened as one server would answer MOVED for most tenants.
        if !self.is_cluster() {
            let info: String = self
                .bounded(::redis::cmd("INFO").arg("cluster").query_async(&mut conn))
                .await?;
            if info.contains("cluster_enabled:1") {
                return Err(StoreError::new(
                    "this Redis is a Redis Cluster node: open it with \
                     RedisBackend::open_cluster or a redis+cluster:// URL",
                ));
            }
        }
        Ok(())
    }
}

/// The first pause between two attempts of a background retry; it doubles up to
/// [`RETRY_MAX_PAUSE`].
const RETRY_FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two attempts of a background retry.
const RETRY_MAX_PAUSE: Duration = Duration::from_secs(2);

impl RedisBackend {
    /// How many settlements and releases are being retried in the background now (they failed
    /// once, and are tried again with backoff until Redis answers or their time is up).
    pub fn background_retries(&self) -> usize {
        self.retrying.load(Ordering::Acquire)
    }

    /// Runs `attempt` in the background until it succeeds or `for_up_to` has passed, pausing
    /// 50 ms, then twice as long each time up to 2 s. Every failed attempt counts as a store
    /// error of `store`/`op`; giving up is reported through `tracing` and
    /// `nat_store_abandoned_total`. Outside a Tokio runtime nothing can run: that is reported
    /// and counted as abandoned at once.
    pub(crate) fn retry_in_background<F, Fut>(
        &self,
        (store, op): (&'static str, &'static str),
        for_up_to: Duration,
        mut attempt: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                target: "tower_nat",
                store,
                op,
                "a Redis store was used outside a Tokio runtime; nothing can be retried"
            );
            crate::metrics::store_abandoned(store, op);
            return;
        };
        let retrying = self.retrying.clone();
        retrying.fetch_add(1, Ordering::AcqRel);
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + for_up_to;
            let mut pause = RETRY_FIRST_PAUSE;
            let mut attempts = 0u32;
            let last_error = loop {
                let error = match attempt().await {
                    Ok(()) => break None,
                    Err(error) => error,
                };
                attempts += 1;
                crate::metrics::store_error(store, op);
                if tokio::time::Instant::now() + pause >= deadline {
                    break Some(error);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX_PAUSE);
            };
            if let Some(error) = last_error {
                tracing::error!(
                    target: "tower_nat",
                    store,
                    op,
                    attempts,
                    error = %crate::report::chain(&error),
                    "gave up retrying a Redis call: its time is up"
                );
                crate::metrics::store_abandoned(store, op);
            } else if attempts > 0 {
                tracing::info!(target: "tower_nat", store, op, attempts, "a retried Redis call succeeded");
            }
            retrying.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is not shown.
        f.debug_struct("RedisBackend")
            .field("cluster", &self.is_cluster())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A Redis opened as one server answered `MOVED`: it is a cluster node.
#[derive(Debug)]
struct NotACluster(::redis::RedisError);

impl fmt::Display for NotACluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Redis answered MOVED, so it is a Redis Cluster node: open it with \
             RedisBackend::open_cluster or a redis+cluster:// URL ({})",
            self.0
        )
    }
}

impl std::error::Error for NotACluster {}

/// A Redis call took longer than the timeout.
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis did not answer within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}
