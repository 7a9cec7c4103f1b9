//! The Redis connection shared by [`RedisRateStore`](crate::rate_limit::RedisRateStore) and
//! [`RedisQuotaStore`](crate::quota::RedisQuotaStore).
//!
//! [`RedisBackend`] wraps a `redis` connection manager (it reconnects by itself after Redis
//! comes back), a key prefix (so several deployments can share one Redis) and a timeout that
//! bounds every call: when Redis is down or slow, a call fails with a [`StoreError`] after at
//! most the timeout, never hangs.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use ::redis::{
    Client,
    aio::{ConnectionManager, ConnectionManagerConfig},
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
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
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
        let client = Client::open(url).map_err(StoreError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::new)?;
        Ok(Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout,
        })
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
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs `call`, failing with a [`StoreError`] after the timeout.
    pub(crate) async fn bounded<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::new(e)),
            Err(_) => Err(StoreError::new(TimedOut(self.timeout))),
        }
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is not shown.
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A Redis call took longer than the timeout.
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis did not answer within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}
