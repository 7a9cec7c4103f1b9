//! A loopback load test: the same handler served by bare hyper and by hyper with the whole
//! tower-nat stack, each driven by the same load generator for the same time. Reports
//! requests per second, latency percentiles and the ratio.
//!
//! ```text
//! cargo run --release --example loadtest            # 3 rounds of 5 s per server, 32 connections
//! NAT_LOAD_SECS=10 NAT_LOAD_ROUNDS=5 NAT_LOAD_CONNS=64 cargo run --release --example loadtest
//! ```
//!
//! Bounded in time, and only ever talks to 127.0.0.1.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tower::ServiceBuilder;
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    billing::BillingConfiguredLayer,
    plan::{Plan, PlanLimits, Plans},
    scan_request::RequestBody,
};

const TENANTS: usize = 1_000;

async fn handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"scans":[]}"#)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Accepts loopback connections and hands each to `make`.
async fn listen<F, Fut>(make: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(make(stream));
        }
    });
    addr
}

struct Run {
    requests: usize,
    failures: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u32 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i]
    }
}

/// `conns` keep-alive connections, each sending requests one after another for `secs`.
async fn drive(addr: SocketAddr, keys: Arc<Vec<String>>, conns: usize, secs: u64) -> Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut failures = 0;
                let mut i = c;
                while Instant::now() < deadline {
                    i = (i + conns) % keys.len();
                    let req = Request::get("/api/v1/scans")
                        .header("host", "127.0.0.1")
                        .header("x-api-key", &keys[i])
                        .body(Full::default())
                        .unwrap();
                    let sent = Instant::now();
                    let response = sender.send_request(req).await.unwrap();
                    let status = response.status();
                    let _ = response.into_body().collect().await.unwrap();
                    latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    if status != StatusCode::OK {
                        failures += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        latencies_us.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Run {
        requests: latencies_us.len(),
        failures,
        elapsed,
        latencies_us,
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env("NAT_LOAD_SECS", 5).clamp(1, 120);
    let conns = env("NAT_LOAD_CONNS", 32).clamp(1, 1024) as usize;
    let rounds = env("NAT_LOAD_ROUNDS", 3).clamp(1, 20) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = MemoryKeyStore::new();
        let keys: Vec<String> = (0..TENANTS)
            .map(|i| {
                let id = format!("tenant-{i}");
                store.insert_tenant(id.as_str(), Plan::ENTERPRISE).unwrap();
                store.issue_key(&id, None).unwrap().key.expose().to_owned()
            })
            .collect();
        let keys = Arc::new(keys);
        // Limits no tenant reaches in the run: every request takes the full success path.
        let limits = PlanLimits {
            requests_per_minute: 1_000_000,
            ..Plans::default().get(&Plan::ENTERPRISE).unwrap().clone()
        };
        let plans = Plans::builder()
            .plan(Plan::ENTERPRISE, limits)
            .build()
            .unwrap();
        let nat = NatLayer::new(store)
            .plans(plans)
            .billing(BillingConfiguredLayer::new(false));

        let bare = listen(|stream| async move {
            let service = hyper::service::service_fn(handler::<Incoming>);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
        .await;
        let stacked = {
            let service = ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
                .layer(nat)
                .service_fn(handler::<RequestBody<Incoming>>);
            listen(move |stream| {
                let service = TowerToHyperService::new(service.clone());
                async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            })
            .await
        };

        println!(
            "loopback load test: {conns} connections, {rounds} rounds of {secs} s per server \
             (alternating), {TENANTS} tenants"
        );
        // A short warm-up of each, then alternating measured runs, so drift of the machine
        // hits both alike.
        drive(bare, keys.clone(), conns, 1).await;
        drive(stacked, keys.clone(), conns, 1).await;
        println!(
            "| round | server | requests | non-200 | req/s | p50 µs | p90 µs | p99 µs | max µs |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let b = drive(bare, keys.clone(), conns, secs).await;
            let s = drive(stacked, keys.clone(), conns, secs).await;
            for (name, r) in [("bare hyper", &b), ("hyper + NatLayer", &s)] {
                println!(
                    "| {round} | {name} | {} | {} | {:.0} | {} | {} | {} | {} |",
                    r.requests,
                    r.failures,
                    r.rps(),
                    r.percentile(0.50),
                    r.percentile(0.90),
                    r.percentile(0.99),
                    r.latencies_us.last().copied().unwrap_or(0)
                );
            }
            ratios.push(s.rps() / b.rps());
        }
        let rendered: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "throughput ratio (stack / bare) per round: {}; median {:.3}",
            rendered.join(", "),
            ratios[ratios.len() / 2]
        );
    });
}
