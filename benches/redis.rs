//! The Redis rate check against a plain `INCR` round trip through the same client, one at a
//! time and with 64 in flight. Starts its own `redis-server` on a free loopback port; prints
//! that it skipped when none is installed.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_nat::{rate_limit::RedisRateStore, store::redis::RedisBackend, tenant::TenantId};

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
    group.finish();
}

criterion_group!(benches, redis_round_trips);
criterion_main!(benches);
