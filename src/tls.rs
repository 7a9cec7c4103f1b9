//! TLS to PostgreSQL and Redis (feature `tls`, with rustls and its `ring` provider): the
//! certificate checks of `sslmode`, and the trust store.
//!
//! **Trust.** The system's trust store (with `SSL_CERT_FILE` honoured, as OpenSSL does), or
//! for PostgreSQL the certificates of `sslrootcert=<file>` in the URL. A server certificate
//! that does not chain to a trusted root is refused, in every mode: nothing here accepts an
//! unverifiable certificate.
//!
//! **PostgreSQL's `sslmode`**, in the URL (`postgres://...?sslmode=verify-full`) or the
//! `key=value` string:
//!
//! | `sslmode` | TLS | the certificate chains to a trusted root | it names the host |
//! |---|---|---|---|
//! | `disable`, or none | no | | |
//! | `require` | yes | yes (stricter than libpq, which checks nothing without a root file) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! `prefer` and `allow` are refused: they fall back to plain text, or accept whatever
//! certificate, without saying so. Managed services (RDS, Cloud SQL, Azure) sign with a CA
//! of their own: give it with `sslrootcert=/path/to/ca.pem`, and use `verify-full`.
//!
//! **Redis.** `rediss://host:port` for one server, `rediss+cluster://host:port,...` (or
//! several `rediss://` URLs) for a cluster, the certificate checked against the system's
//! trust store (`SSL_CERT_FILE` honoured) and the host name. The redis crate's `#insecure`
//! (no check) is refused.
//!
//! Nothing else to write: the stores take TLS from their URLs.
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "redis"))]
//! # async fn run() -> Result<(), tower_nat::StoreError> {
//! use tower_nat::{auth::PgKeyStore, store::redis::RedisBackend};
//!
//! // Inside the server's Tokio runtime (the Redis backend needs one).
//! let keys = PgKeyStore::new(
//!     "postgres://nat@db.internal/nat?sslmode=verify-full&sslrootcert=/etc/nat/db-ca.pem",
//! )?;
//! let redis = RedisBackend::from_config("rediss+cluster://cache-1:6380,cache-2:6380")?;
//! redis.ping().await?; // a wrong certificate fails here, at start
//! # let _ = keys; Ok(()) }
//! # #[cfg(all(feature = "postgres", feature = "redis"))]
//! # fn main() {}
//! # #[cfg(not(all(feature = "postgres", feature = "redis")))]
//! # fn main() {}
//! ```

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{Check, PgTls};

/// Makes `ring` the process's default rustls provider, if none is yet: the Redis client
/// builds its TLS configuration with the default.
#[cfg(feature = "redis")]
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
