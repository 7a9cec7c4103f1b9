//! A server for an external load generator (`wrk`): the same axum app, bare or behind
//! `NatLayer`, on a loopback port, with 1,000 tenants whose throwaway keys are written to a
//! file for the generator's script to rotate through. `benches/wrk/run.sh` alternates the
//! two servers round by round and reports the ratio.
//!
//! ```text
//! cargo run --release --features axum --example wrk_target -- bare 127.0.0.1:8181 /tmp/keys
//! cargo run --release --features axum --example wrk_target -- nat 127.0.0.1:8182 /tmp/keys
//! ```
//!
//! The keys are made for this run and live only in this process and that file: they are
//! written for the load generator, as a real server never would.

use std::io::Write;

use axum::{Json, Router, routing::get};
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    billing::BillingConfiguredLayer,
    plan::{Plan, PlanLimits, Plans},
};

const TENANTS: usize = 1_000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(key_file)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: wrk_target bare|bare-headers|nat|nat-exempt ADDR KEY_FILE");
        std::process::exit(2);
    };
    let app = Router::new().route(
        "/api/v1/scans",
        get(|| async { Json(serde_json::json!({"scans": []})) }),
    );
    let app = match mode.as_str() {
        "bare" => app,
        // The bare app with the two headers the contract puts on every response, as fixed
        // values: what those bytes cost on the wire, without the stack.
        "bare-headers" => app.layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                let headers = response.headers_mut();
                headers.insert(
                    "x-ratelimit-limit",
                    http::HeaderValue::from_static("10000000"),
                );
                headers.insert(
                    "x-ratelimit-remaining",
                    http::HeaderValue::from_static("9999999"),
                );
                response
            },
        )),
        "nat" | "nat-exempt" => {
            // One plan whose limit no tenant reaches: every request is admitted, as with the
            // bare server.
            let limits = PlanLimits {
                requests_per_minute: 10_000_000,
                ..Plans::default().get(&Plan::ENTERPRISE).unwrap().clone()
            };
            let plans = Plans::builder()
                .plan(Plan::ENTERPRISE, limits)
                .build()
                .unwrap();
            let keys = MemoryKeyStore::new();
            let mut file = std::fs::File::create(key_file).expect("the key file can be written");
            for i in 0..TENANTS {
                let id = format!("tenant-{i:04}");
                keys.insert_tenant(id.as_str(), Plan::ENTERPRISE).unwrap();
                let key = keys.issue_key(&id, None).unwrap().key;
                writeln!(file, "{}", key.expose()).unwrap();
            }
            let nat = NatLayer::new(keys)
                .plans(plans)
                .billing(BillingConfiguredLayer::new(false));
            // `nat-exempt`: the route needs no key (the stack's outer layers only).
            let nat = if mode == "nat-exempt" {
                nat.exempt("/api/v1/scans")
            } else {
                nat
            };
            app.layer(nat)
        }
        other => {
            eprintln!("unknown mode {other}: bare, bare-headers, nat or nat-exempt");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .expect("the address is free");
    axum::serve(listener, app).await.unwrap();
}
