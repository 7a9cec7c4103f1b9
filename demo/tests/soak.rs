//! A bounded soak over loopback: the demo server with mixed tenants and plans under steady
//! load. Zero unexpected 5xx (only the billing 503 is expected), and memory stays within a
//! stated bound.
//!
//! Ignored by default (it runs for a minute); `.ci/run` runs it for a shorter time:
//! `NAT_SOAK_SECS=10 cargo test --release --test soak -- --ignored --nocapture`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tower_nat::{billing::BillingConfiguredLayer, clock::SystemClock, plan::Plans};

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Growth allowed between the end of the warm-up and the end of the run.
const MEMORY_BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long; run with --ignored (CI runs it for 10 s)"]
async fn soak() {
    let secs: u64 = std::env::var("NAT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Generous limits so most traffic passes, small enough that 429 and 402 also occur.
    let plans = Plans::from_json(
        r#"{"plans": {"free": {"requests_per_minute": 30000, "functional_scans_per_month": 500},
            "pro": {"requests_per_minute": 100000},
            "team": {"requests_per_minute": 100000},
            "enterprise": {"requests_per_minute": 100000}}}"#,
    )
    .unwrap();
    let demo = nat_demo::Demo::new(
        plans,
        Arc::new(SystemClock),
        BillingConfiguredLayer::new(false),
        Default::default(),
        Duration::from_secs(1),
    );
    let keys: Vec<String> = demo
        .keys
        .iter()
        .map(|(_, k)| k.expose().to_owned())
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nat_demo::serve(listener, demo.router(demo.nat()), async {
        let _ = stopped.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(secs);
    let warm = Instant::now() + Duration::from_secs(secs / 4);
    let rss_start = Arc::new(std::sync::Mutex::new(None::<u64>));
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let keys = keys.clone();
            let rss_start = rss_start.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut counts: BTreeMap<(u16, &'static str), u64> = BTreeMap::new();
                let mut i: u64 = c;
                // The last scan each tenant created on this connection, for polling.
                let mut last_scan = vec![String::from("scan_0000000000000000"); keys.len()];
                while Instant::now() < deadline {
                    i += 1;
                    // One tenant per round of the eight request kinds.
                    let k = ((i / 8) % keys.len() as u64) as usize;
                    let key = &keys[k];
                    let (method, path, body, what): (Method, String, &str, &'static str) =
                        match i % 8 {
                            0 | 1 => (Method::GET, "/api/v1/usage".into(), "", "usage"),
                            2 => (
                                Method::POST,
                                "/api/v1/scan".into(),
                                r#"{"url":"https://e.example"}"#,
                                "scan",
                            ),
                            3 => (
                                Method::POST,
                                "/api/v1/scan".into(),
                                r#"{"url":"https://e.example","mode":"full"}"#,
                                "full scan",
                            ),
                            4 => (
                                Method::GET,
                                format!("/api/v1/scan/{}", last_scan[k]),
                                "",
                                "poll",
                            ),
                            5 => (Method::POST, "/api/v1/scan".into(), "{", "bad body"),
                            6 => (Method::GET, "/api/v1/scans".into(), "", "list"),
                            _ => (
                                Method::POST,
                                "/api/v1/billing/checkout".into(),
                                "{}",
                                "billing",
                            ),
                        };
                    let mut req = Request::builder()
                        .method(method)
                        .uri(path)
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/json");
                    if i % 50 != 0 {
                        req = req.header("x-api-key", key.as_str());
                    }
                    let response = sender
                        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    if status == 202 {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                            if let Some(id) = v["scan_id"].as_str() {
                                last_scan[k] = id.to_owned();
                            }
                        }
                    }
                    *counts.entry((status, what)).or_default() += 1;
                    if Instant::now() > warm {
                        let mut start = rss_start.lock().unwrap();
                        if start.is_none() {
                            *start = Some(rss_bytes());
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut totals: BTreeMap<(u16, &'static str), u64> = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *totals.entry(k).or_default() += v;
        }
    }
    let rss_end = rss_bytes();
    let rss_start = rss_start.lock().unwrap().unwrap_or(rss_end);
    let total: u64 = totals.values().sum();
    println!("soak: {secs} s, {total} requests over loopback");
    for ((status, what), n) in &totals {
        println!("  {status} {what}: {n}");
    }
    println!(
        "  resident memory: {} KiB after warm-up, {} KiB at the end (bound: +{} KiB)",
        rss_start / 1024,
        rss_end / 1024,
        MEMORY_BOUND / 1024
    );
    let unexpected: u64 = totals
        .iter()
        .filter(|((status, what), _)| *status >= 500 && !(*status == 503 && *what == "billing"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(unexpected, 0, "unexpected 5xx");
    assert!(total > 1_000, "the soak must actually send traffic");
    assert!(
        rss_end <= rss_start + MEMORY_BOUND,
        "memory grew by more than the bound"
    );
}
