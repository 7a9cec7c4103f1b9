//! The Redis rate check against a plain `INCR` round trip through the same client, one at a
//! time and with 64 in flight; and a flood of refused requests from over-limit tenants, with
//! the store's local answers and without them. Starts its own `redis-server` on a free
//! loopback port; prints that it skipped when none is installed.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_nat::{
    rate_limit::{RateDecision, RateStore, RedisRateStore},
    store::{Answer, redis::RedisBackend},
    tenant::TenantId,
};

/// Now, on the system clock, as the layer would pass it.
fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// One check through the store's trait, as the layer makes it.
async fn check(store: &RedisRateStore, key: &TenantId, limit: u32) -> RateDecision {
    match store.check(key, limit, now()) {
        Answer::Ready(decision) => decision.unwrap(),
        Answer::Pending(decision) => decision.await.unwrap(),
    }
}

/// 64 checks at once, of `keys[start..]` (wrapping), each at `limit`; how many were admitted.
async fn flood(
    store: &RedisRateStore,
    keys: &Arc<Vec<TenantId>>,
    start: usize,
    limit: u32,
) -> usize {
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|k| {
            let (store, key) = (store.clone(), keys[(start + k) % keys.len()].clone());
            tokio::spawn(async move { check(&store, &key, limit).await.allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    admitted
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Option<(Server, String)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((server, format!("redis://127.0.0.1:{port}/")))
}

const IN_FLIGHT: usize = 64;

fn redis_round_trips(c: &mut Criterion) {
    let Some((_server, url)) = start() else {
        eprintln!("skipped: redis-server not found");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (store, backend) = rt.block_on(async {
        let backend = RedisBackend::open_with_timeout(&url, Duration::from_secs(5))
            .unwrap()
            .prefix("bench:");
        (RedisRateStore::new(backend.clone()), backend)
    });
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = rt
        .block_on(redis::aio::ConnectionManager::new(client))
        .unwrap();
    let store = Arc::new(store);
    drop(backend);
    // Keys: 1,000 tenants with a limit no request reaches.
    let keys: Arc<Vec<TenantId>> = Arc::new(
        (0..1_000)
            .map(|i| TenantId::from(format!("t{i}")))
            .collect(),
    );

    let mut group = c.benchmark_group("redis");
    group.throughput(Throughput::Elements(1));
    group.bench_function("INCR, sequential", |b| {
        let conn = conn.clone();
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let _: i64 = redis::cmd("INCR")
                    .arg("bench:plain")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
    });
    let mut i = 0usize;
    group.bench_function("rate check, sequential", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let (store, key) = (store.clone(), keys[i].clone());
            async move {
                let d = store
                    .check_async(&key, 1_000_000, std::time::Duration::ZERO)
                    .await
                    .unwrap();
                assert!(d.allowed);
            }
        })
    });
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("INCR, 64 in flight", |b| {
        b.to_async(&rt).iter(|| {
            let conn = conn.clone();
            async move {
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|_| {
                        let mut conn = conn.clone();
                        tokio::spawn(async move {
                            let _: i64 = redis::cmd("INCR")
                                .arg("bench:plain")
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        })
    });
    let mut j = 0usize;
    group.bench_function("rate check, 64 in flight", |b| {
        b.to_async(&rt).iter(|| {
            j = (j + IN_FLIGHT) % keys.len();
            let start = j;
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|k| {
                        let (store, key) = (store.clone(), keys[(start + k) % keys.len()].clone());
                        tokio::spawn(async move {
                            store
                                .check_async(&key, 1_000_000, std::time::Duration::ZERO)
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                for t in tasks {
                    assert!(t.await.unwrap().allowed);
                }
            }
        })
    });
    // Over-limit tenants: 1,000 tenants at one request a minute, each refused once by Redis
    // before the measurement (a refusal then lasts a minute, longer than the run).
    let refused: Arc<Vec<TenantId>> = Arc::new(
        (0..1_000)
            .map(|i| TenantId::from(format!("over{i}")))
            .collect(),
    );
    let backend = rt.block_on(async {
        RedisBackend::open_with_timeout(&url, Duration::from_secs(5))
            .unwrap()
            .prefix("bench:")
    });
    let remembering = RedisRateStore::new(backend.clone());
    let asking = RedisRateStore::new(backend).local_refusals(0);
    rt.block_on(async {
        for key in refused.iter() {
            check(&remembering, key, 1).await;
            assert!(!check(&remembering, key, 1).await.allowed);
        }
    });
    assert_eq!(remembering.known_refusals(), refused.len());
    let mut k = 0usize;
    group.bench_function("refused flood, 64 in flight, local answers", |b| {
        b.to_async(&rt).iter(|| {
            k = (k + IN_FLIGHT) % refused.len();
            let (store, keys, start) = (remembering.clone(), refused.clone(), k);
            async move { assert_eq!(flood(&store, &keys, start, 1).await, 0) }
        })
    });
    let mut m = 0usize;
    group.bench_function("refused flood, 64 in flight, asking Redis", |b| {
        b.to_async(&rt).iter(|| {
            m = (m + IN_FLIGHT) % refused.len();
            let (store, keys, start) = (asking.clone(), refused.clone(), m);
            async move { assert_eq!(flood(&store, &keys, start, 1).await, 0) }
        })
    });
    group.finish();
}

criterion_group!(benches, redis_round_trips);
criterion_main!(benches);
