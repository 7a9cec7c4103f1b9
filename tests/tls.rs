//! TLS to a real PostgreSQL (`ssl=on`, `hostssl` the only way in) and a real Redis
//! (`--tls-port` only, one server and a three-master cluster), with throwaway CAs made by
//! `openssl`: every `sslmode`, `sslrootcert`, `SSL_CERT_FILE` (the system's store as OpenSSL
//! reads it), and a wrong CA or a wrong name refused. In its own binary: it sets
//! `SSL_CERT_FILE` for the process.
#![cfg(all(feature = "tls", feature = "postgres", feature = "redis"))]

#[allow(dead_code, unreachable_pub)]
#[path = "it/common/certs.rs"]
mod certs;
#[allow(dead_code, unreachable_pub)]
#[path = "it/common/pg_server.rs"]
mod pg_server;
#[allow(dead_code, unreachable_pub)]
#[path = "it/common/redis_cluster.rs"]
mod redis_cluster;
#[allow(dead_code, unreachable_pub)]
#[path = "it/common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use certs::Ca;
use pg_server::PgServer;
use redis_cluster::{Options, RedisCluster};
use redis_server::{RedisServer, tls_args};
use tower_nat::{
    StoreError,
    auth::{KeyAdmin, KeyStore, PgKeyStore},
    plan::Plan,
    rate_limit::{RateStore, RedisRateStore},
    store::{Answer, redis::RedisBackend},
    tenant::TenantId,
};

/// The store at `url`, and whether it connects: the schema migrated, a tenant and a key
/// made, the key found by a lookup, and the change feed up (it has its own connection).
async fn postgres(url: &str) -> Result<(), StoreError> {
    let store = PgKeyStore::new(url)?.timeout(Duration::from_secs(3));
    store.migrate().await?;
    let tenant = format!("t{}", redis_server::free_port());
    store
        .insert_tenant(&tenant, &Plan::PRO)
        .await
        .map_err(StoreError::new)?;
    let issued = store.issue(&tenant, None).await.map_err(StoreError::new)?;
    let found = match store.lookup(&issued.key.hash()) {
        Answer::Ready(found) => found,
        Answer::Pending(lookup) => lookup.await,
    }?;
    assert_eq!(found.unwrap().tenant.id().as_str(), tenant);
    let changes = store.changes().unwrap().clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !changes.is_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the change feed comes up over TLS");
    Ok(())
}

/// A refusal's words: its deepest cause, checked for secrets.
fn refused(result: Result<(), StoreError>) -> String {
    let error = result.expect_err("refused");
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = format!("{error} {error:?} {cause}");
    assert!(!text.contains("hunter2"), "{text}");
    cause.to_string()
}

/// Ten rate checks through `spec`, or the first error.
async fn redis(spec: &str) -> Result<u32, StoreError> {
    let backend = RedisBackend::from_config_with_timeout(spec, Duration::from_secs(2))?;
    let store = RedisRateStore::new(backend);
    let tenant = TenantId::from("tls-tenant");
    let mut allowed = 0;
    for _ in 0..10 {
        let decision = match store.check(&tenant, 5, Duration::from_secs(1_800_000_000)) {
            Answer::Ready(d) => d,
            Answer::Pending(f) => f.await,
        }?;
        allowed += u32::from(decision.allowed);
    }
    Ok(allowed)
}

#[test]
fn tls_to_postgresql_and_redis() {
    let ca = Ca::new("trusted");
    let other = Ca::new("other");
    let good = ca.issue("server", "DNS:localhost,IP:127.0.0.1");
    let misnamed = ca.issue("misnamed", "DNS:db.example.com");
    let foreign = other.issue("foreign", "DNS:localhost,IP:127.0.0.1");
    // The system's trust store, as OpenSSL (and rustls-native-certs) read it: our CA only.
    // Set before any thread of this test starts, in a binary with this one test.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SSL_CERT_FILE", ca.cert());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (trusted, untrusted) = (ca.cert(), other.cert());
        let (trusted, untrusted) = (trusted.to_str().unwrap(), untrusted.to_str().unwrap());

        // PostgreSQL, TLS only.
        let Some(mut pg) = PgServer::start() else {
            return;
        };
        pg.require_tls(&good.cert, &good.key);
        let url = pg.url();
        let with = |query: &str| format!("{url}?{query}");
        // Plain text: refused by the server (hostssl only).
        let plain = refused(postgres(&url).await);
        assert!(
            plain.contains("pg_hba.conf") || plain.contains("no encryption"),
            "{plain}"
        );
        // Verified against sslrootcert, by the name, in both forms of connection string.
        postgres(&with(&format!("sslmode=verify-full&sslrootcert={trusted}")))
            .await
            .unwrap();
        let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
        let pairs = format!(
            "host=127.0.0.1 port={port} user=nat password=hunter2 dbname=postgres \
             sslmode=verify-full sslrootcert='{trusted}'"
        );
        postgres(&pairs).await.unwrap();
        // The system's store (SSL_CERT_FILE), for every mode that verifies.
        for mode in ["require", "verify-ca", "verify-full"] {
            postgres(&with(&format!("sslmode={mode}"))).await.unwrap();
        }
        // Another CA: refused in every mode, `require` included.
        for mode in ["require", "verify-ca", "verify-full"] {
            let error =
                refused(postgres(&with(&format!("sslmode={mode}&sslrootcert={untrusted}"))).await);
            assert!(error.contains("certificate"), "{mode}: {error}");
        }
        // `prefer` and `allow` would accept anything or fall back to plain text: refused
        // before connecting.
        for mode in ["prefer", "allow", "verify"] {
            let error = refused(PgKeyStore::new(&with(&format!("sslmode={mode}"))).map(drop));
            assert!(error.starts_with("postgres: sslmode"), "{error}");
        }
        // Other ssl parameters are named, and a root file without a certificate is told.
        let error = refused(
            PgKeyStore::new(&with("sslmode=verify-full&sslcert=/etc/client.pem")).map(drop),
        );
        assert_eq!(
            error,
            "postgres: sslcert is not supported (of the ssl parameters, only sslmode and \
             sslrootcert are)"
        );
        let empty = std::env::temp_dir().join(format!("nat-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let empty = empty.to_str().unwrap();
        let error = refused(
            PgKeyStore::new(&with(&format!("sslmode=verify-full&sslrootcert={empty}"))).map(drop),
        );
        assert_eq!(error, format!("sslrootcert {empty}: no certificate in it"));

        // A certificate for another name: `verify-ca` takes it, `verify-full` does not.
        pg.require_tls(&misnamed.cert, &misnamed.key);
        postgres(&with(&format!("sslmode=verify-ca&sslrootcert={trusted}")))
            .await
            .unwrap();
        let error =
            refused(postgres(&with(&format!("sslmode=verify-full&sslrootcert={trusted}"))).await);
        assert!(error.contains("certificate not valid for name"), "{error}");
        // Signed by the other CA: refused even by `verify-ca`.
        pg.require_tls(&foreign.cert, &foreign.key);
        let error =
            refused(postgres(&with(&format!("sslmode=verify-ca&sslrootcert={trusted}"))).await);
        assert!(error.contains("certificate"), "{error}");
        drop(pg);

        // Redis, one server, TLS only: trusted through SSL_CERT_FILE.
        let Some(server) = RedisServer::start_tls(&good.cert, &good.key, &ca.cert()) else {
            return;
        };
        assert_eq!(redis(&server.url()).await.unwrap(), 5);
        // The plain scheme gets nothing from a TLS port.
        let plain = server.url().replace("rediss://", "redis://");
        let error = refused(redis(&plain).await.map(drop));
        assert!(
            ["reset", "closed", "broken pipe", "end of file"]
                .iter()
                .any(|w| error.to_lowercase().contains(w)),
            "{error}"
        );
        // Skipping the check (the redis crate's `#insecure`): refused before connecting.
        let error = refused(redis(&format!("{}#insecure", server.url())).await.map(drop));
        assert!(error.contains("#insecure is refused"), "{error}");
        // A certificate signed by another CA, or for another name: refused.
        let foreign_server =
            RedisServer::start_tls(&foreign.cert, &foreign.key, &other.cert()).unwrap();
        let error = refused(redis(&foreign_server.url()).await.map(drop));
        assert!(error.contains("UnknownIssuer"), "{error}");
        let misnamed_server =
            RedisServer::start_tls(&misnamed.cert, &misnamed.key, &ca.cert()).unwrap();
        let error = refused(redis(&misnamed_server.url()).await.map(drop));
        assert!(error.contains("certificate not valid for name"), "{error}");

        // A Redis Cluster over TLS (client connections, cluster bus and all).
        let cluster = RedisCluster::start_with(Options {
            replicas: false,
            tls: Some((tls_args(&good.cert, &good.key, &ca.cert()), ca.cert())),
        })
        .unwrap();
        assert!(cluster.spec().starts_with("rediss+cluster://"));
        assert_eq!(redis(&cluster.spec()).await.unwrap(), 5);
    });
}
