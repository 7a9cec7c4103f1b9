//! The NAT demo API: every layer of tower-nat composed in front of a small axum app, on
//! loopback, with in-memory stores (the app itself is the `nat-demo` crate in `demo/`).
//!
//! ```text
//! cargo run --example server
//! ```
//!
//! Environment:
//! - `NAT_ADDR`: where to listen (default `127.0.0.1:8080`).
//! - `NAT_DEMO_KEY_FREE`, `NAT_DEMO_KEY_PRO`, `NAT_DEMO_KEY_TEAM`, `NAT_DEMO_KEY_ENTERPRISE`:
//!   fixed demo keys (`nat_pk_` and 32 letters or digits); random ones otherwise.
//! - `NAT_PLANS`: a JSON file that overrides the plan table, e.g.
//!   `{"plans": {"free": {"requests_per_minute": 5, "functional_scans_per_month": 3}}}`.
//! - `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`: both set, billing routes answer (as a
//!   demo); otherwise they answer 503 `STRIPE_NOT_CONFIGURED`.
//! - `NAT_SCAN_SECONDS`: how long a demo scan runs (default 3).
//! - `NAT_REDIS_URL`: keep rate limits, quotas and running scans in Redis
//!   (`redis://127.0.0.1:6379/`), shared by every instance; for a Redis Cluster, several
//!   comma-separated URLs or `redis+cluster://host:port,host:port`; needs `--features redis`.
//!   Over TLS: `rediss://` (or `rediss+cluster://`), with `--features redis,tls`. Redis must
//!   answer at start (a wrong certificate, password or address stops the demo there).
//! - `NAT_INSTANCES`: with Redis, the number of instances; while Redis fails, each enforces
//!   its share of every rate limit locally (unset: requests pass while Redis is down).
//! - `NAT_METRICS`: Prometheus metrics at `/metrics` (no key needed), on unless `0`.
//! - `NAT_DATABASE_URL`: keep tenants and keys in PostgreSQL
//!   (`postgres://user:password@127.0.0.1/nat`; over TLS, with `--features tls`, add
//!   `?sslmode=verify-full&sslrootcert=/path/ca.pem`), behind a cache; the schema is created on
//!   start and the demo tenants and keys are added. Changes made elsewhere (the `nat` CLI,
//!   SQL, another instance) reach the cache within a second.
//! - `NAT_ADMIN_TOKENS`: serve the admin API at `/admin` for these tokens (`name:secret`,
//!   comma-separated; secrets of 32 characters or more), e.g.
//!   `NAT_ADMIN_TOKENS=ops:$(openssl rand -hex 24)`.
//!
//! On start it prints the address and one key per plan (`free key: nat_pk_...`). They are
//! demo keys, printed so you can use them; a real server never prints or logs keys.
//!
//! Logging: warnings and errors of the server, and `INFO` lines about its start. Refusals
//! (401, 429, ...) are `DEBUG` events of the `tower_nat` target, left out here, so a flood of
//! bad keys is not a flood of logs; failures (500s, store errors) are `ERROR` events, at most
//! five a second of each kind, then a count of those left out.

use axum::Router;
use nat_demo::{Demo, Settings};
use tower_nat::{NatLayer, auth::KeyStore};

fn exit(code: i32, message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(code)
}

/// The demo app with keys from `nat`'s key store, and rate limits, quotas and running scans
/// in Redis if `settings` name one.
#[cfg(feature = "redis")]
async fn app<K: KeyStore>(
    demo: &Demo,
    nat: NatLayer<K>,
    settings: &Settings,
) -> Result<Router, String> {
    use tower_nat::{
        concurrency::RedisSlotStore,
        quota::RedisQuotaStore,
        rate_limit::{LocalFallback, RedisRateStore},
        store::redis::RedisBackend,
    };
    let Some(url) = settings.redis_url.as_deref() else {
        return Ok(demo.router(nat));
    };
    // The URL may carry a password: the error never repeats it.
    let backend =
        RedisBackend::from_config(url).map_err(|e| nat_demo::refused("NAT_REDIS_URL", &e))?;
    // A wrong certificate, password or address fails here, at start, rather than as a 500
    // on every request.
    backend
        .ping()
        .await
        .map_err(|e| nat_demo::refused("NAT_REDIS_URL", &e))?;
    let nat = nat
        .with_quota_store(RedisQuotaStore::new(backend.clone()))
        .with_slot_store(RedisSlotStore::new(backend.clone()));
    let rate = RedisRateStore::new(backend);
    Ok(match settings.instances {
        Some(instances) => demo.router(nat.with_rate_store(LocalFallback::new(rate, instances))),
        None => demo.router(nat.with_rate_store(rate)),
    })
}

#[cfg(not(feature = "redis"))]
async fn app<K: KeyStore>(
    demo: &Demo,
    nat: NatLayer<K>,
    settings: &Settings,
) -> Result<Router, String> {
    match settings.redis_url.as_deref() {
        None => Ok(demo.router(nat)),
        Some(_) => Err(
            "NAT_REDIS_URL is set, but the example was built without the redis \
                        feature: run it with --features redis"
                .to_owned(),
        ),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    let settings = Settings::from_env().unwrap_or_else(|message| exit(2, &message));
    let mut demo = settings.demo();
    if settings.metrics {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap_or_else(|e| exit(1, &format!("cannot install the metrics recorder: {e}")));
        demo = demo.with_metrics(handle);
    }
    let tokens = settings.admin_tokens.as_deref();
    let app = match settings.database_url.as_deref() {
        Some(url) => {
            let keys = demo.postgres(url).await.unwrap_or_else(|m| exit(2, &m));
            if let Some(tokens) = tokens {
                // The admin API changes the database; the cache hears of it at once.
                demo = demo
                    .with_admin(keys.store().clone(), tokens)
                    .unwrap_or_else(|m| exit(2, &m));
            }
            app(&demo, demo.nat_with(keys), &settings).await
        }
        None => {
            if let Some(tokens) = tokens {
                let keys = demo.key_store.clone();
                demo = demo
                    .with_admin(keys, tokens)
                    .unwrap_or_else(|m| exit(2, &m));
            }
            app(&demo, demo.nat(), &settings).await
        }
    }
    .unwrap_or_else(|m| exit(2, &m));
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .unwrap_or_else(|e| exit(1, &format!("cannot listen on {}: {e}", settings.addr)));
    let addr = listener.local_addr().unwrap_or(settings.addr);
    println!("NAT demo API listening on http://{addr}");
    for (plan, key) in &demo.keys {
        println!("{plan} key: {}", key.expose());
    }
    println!(
        "billing: {}",
        if demo.billing.is_configured() {
            "configured (demo responses)"
        } else {
            "not configured (503 on /api/v1/billing/*)"
        }
    );
    if settings.database_url.is_some() {
        println!("keys: PostgreSQL (NAT_DATABASE_URL), cached");
    }
    if settings.metrics {
        println!("metrics: http://{addr}/metrics (NAT_METRICS=0 turns them off)");
    }
    if tokens.is_some() {
        println!("admin API: http://{addr}/admin (tokens from NAT_ADMIN_TOKENS)");
    }
    if settings.redis_url.is_some() {
        println!("stores: Redis (NAT_REDIS_URL)");
    }
    println!("press Ctrl-C to stop");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down");
    };
    if let Err(e) = nat_demo::serve(listener, app, shutdown).await {
        exit(1, &e.to_string());
    }
}
