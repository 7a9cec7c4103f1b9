//! Instructions per request of each layer, counted by callgrind: repeatable to the
//! instruction on a shared machine where wall-clock benches move by ±10 % and more.
//! `cargo bench --bench costs` (needs valgrind); BENCHMARKS.md has the figures.
//!
//! The bench runs itself once per layer under `valgrind --tool=callgrind`, counting only
//! `run`: 20,000 requests (1,000 tenants in turn, each request a clone of a prebuilt one)
//! through one layer over the handler every bench uses. The layers behind authentication get
//! requests that carry their `Tenant`, as authentication leaves them; authentication and the
//! whole stack get fresh requests, with a key and no `Tenant` ("bare handler, fresh" is their
//! baseline). A layer's own cost is its count minus its baseline's.
#![allow(missing_docs)]

mod common;

use std::{hint::black_box, process::Command, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{Fixture, HeaderResolver, fixture, governor_plain, handler, now};
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_nat::{
    auth::ApiKeyAuthLayer, billing::BillingConfiguredLayer, concurrency::ConcurrentScansLayer,
    envelope::ErrorEnvelopeLayer, feature_gate::FeatureGateLayer,
    internal_error::InternalErrorGuardLayer, quota::QuotaGuardLayer,
    rate_limit::PlanRateLimitLayer, scan_request::ValidateScanRequestLayer,
};

const REQUESTS: usize = 20_000;

/// Each measured layer: its name, and whether it gets fresh requests.
const LAYERS: [(&str, bool); 24] = [
    ("bare handler", false),
    ("bare handler, fresh", true),
    ("InternalErrorGuard", false),
    ("ErrorEnvelope", false),
    ("BillingConfigured", false),
    ("ApiKeyAuth", true),
    ("ApiKeyAuth, CachedKeyStore hit", true),
    ("ApiKeyAuth, client address", true),
    ("PlanRateLimit", false),
    ("ValidateScanRequest (not a scan)", false),
    ("FeatureGate (not a scan)", false),
    ("ConcurrentScans (not a scan)", false),
    ("QuotaGuard (not a scan)", false),
    ("NatLayer", true),
    ("NatLayer, envelope off", true),
    ("NatLayer, CachedKeyStore hit", true),
    ("NatLayer, Prometheus recorder installed", true),
    ("bare handler, as received", true),
    ("tower_governor, as received", true),
    ("PlanRateLimit (header key), as received", true),
    (
        "glue (SHA-256 + HashMap, tower_governor by tenant), as received",
        true,
    ),
    ("floor (the contract's work inline), as received", true),
    ("floor with the stack's other duties, as received", true),
    ("NatLayer, as received", true),
];

/// The measured loop: the only function callgrind counts.
#[inline(never)]
fn run<S: Service<Request<Full<Bytes>>>>(service: &mut S, f: &Fixture, n: usize) {
    for i in 0..n {
        let req = f.requests[i % f.requests.len()].clone();
        f.clock.advance(Duration::from_micros(15));
        black_box(now(service.call(req)).is_ok());
    }
}

/// The measured loop for requests as a server receives them: each built anew (counted, as a
/// server pays for it), the tenants in a scattered order.
#[inline(never)]
fn run_received<S: Service<Request<Full<Bytes>>>>(service: &mut S, f: &Fixture, n: usize) {
    let mut next = f.scattered();
    for _ in 0..n {
        black_box(now(service.call(next())).is_ok());
    }
}

/// Sends `n` requests through the layer called `name`.
fn measure(name: &str, n: usize) {
    // `COSTS_TENANTS=100000` to profile the same loop over more tenants (with perf).
    let tenants = std::env::var("COSTS_TENANTS").map_or(1_000, |t| t.parse().expect("a number"));
    let with_tenant = fixture(tenants);
    let fresh = with_tenant.fresh();
    let f = &with_tenant;
    let clock = || Arc::new(f.clock.clone());
    match name {
        "bare handler" => run(&mut handler(), f, n),
        "bare handler, fresh" => run(&mut handler(), &fresh, n),
        "InternalErrorGuard" => run(&mut InternalErrorGuardLayer::new().layer(handler()), f, n),
        "ErrorEnvelope" => run(&mut ErrorEnvelopeLayer::new().layer(handler()), f, n),
        "BillingConfigured" => run(
            &mut BillingConfiguredLayer::new(false).layer(handler()),
            f,
            n,
        ),
        "ApiKeyAuth" => {
            let auth = ApiKeyAuthLayer::new(f.keys.clone()).clock(clock());
            run(&mut auth.layer(handler()), &fresh, n)
        }
        "ApiKeyAuth, CachedKeyStore hit" => {
            let auth = ApiKeyAuthLayer::new(fresh.cached_keys()).clock(clock());
            run(&mut auth.layer(handler()), &fresh, n)
        }
        "ApiKeyAuth, client address" => {
            let auth = ApiKeyAuthLayer::new(f.keys.clone()).clock(clock());
            run(&mut auth.layer(handler()), &fresh.with_client_addr(), n)
        }
        "PlanRateLimit" => {
            let rate = PlanRateLimitLayer::new(f.plans.clone()).clock(clock());
            run(&mut rate.layer(handler()), f, n)
        }
        "ValidateScanRequest (not a scan)" => {
            run(&mut ValidateScanRequestLayer::new().layer(handler()), f, n)
        }
        "FeatureGate (not a scan)" => run(
            &mut FeatureGateLayer::scans(f.plans.clone()).layer(handler()),
            f,
            n,
        ),
        "ConcurrentScans (not a scan)" => {
            let slots = ConcurrentScansLayer::new(f.plans.clone()).clock(clock());
            run(&mut slots.layer(handler()), f, n)
        }
        "QuotaGuard (not a scan)" => {
            let quota = QuotaGuardLayer::new(f.plans.clone()).clock(clock());
            run(&mut quota.layer(handler()), f, n)
        }
        "NatLayer" => run(&mut fresh.nat().layer(handler()), &fresh, n),
        "NatLayer, envelope off" => {
            let nat = fresh.nat().error_envelope(false);
            run(&mut nat.layer(handler()), &fresh, n)
        }
        "NatLayer, CachedKeyStore hit" => {
            let nat = fresh.nat_with(fresh.cached_keys());
            run(&mut nat.layer(handler()), &fresh, n)
        }
        "NatLayer, Prometheus recorder installed" => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no recorder yet in this process");
            run(&mut fresh.nat().layer(handler()), &fresh, n)
        }
        "bare handler, as received" => run_received(&mut handler(), f, n),
        "tower_governor, as received" => run_received(&mut governor_plain(handler()), f, n),
        "PlanRateLimit (header key), as received" => {
            let rate = PlanRateLimitLayer::new(f.plans.clone())
                .clock(clock())
                .with_resolver(HeaderResolver(4_000));
            run_received(&mut rate.layer(handler()), f, n)
        }
        "glue (SHA-256 + HashMap, tower_governor by tenant), as received" => {
            run_received(&mut f.glue(handler()), f, n)
        }
        "floor (the contract's work inline), as received" => {
            run_received(&mut f.floor(handler()), f, n)
        }
        "floor with the stack's other duties, as received" => {
            run_received(&mut f.floor_with_duties(handler()), f, n)
        }
        "NatLayer, as received" => run_received(&mut f.nat().layer(handler()), f, n),
        other => panic!("unknown layer {other}"),
    }
}

/// Instructions callgrind counted in `run` for the layer called `name`.
fn count(name: &str) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let output = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--toggle-collect=costs::run*",
        ])
        .arg(exe)
        .args(["--measure", name, &REQUESTS.to_string()])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().find(|l| l.contains("Collected :"))?;
    line.rsplit(' ').next()?.trim().parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let n = args[i + 2].parse().expect("a number of requests");
        return measure(&args[i + 1], n);
    }
    let found = Command::new("valgrind").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!("costs: valgrind not found (apt-get install valgrind); nothing counted");
        return;
    }
    println!("| layer | instructions per request | own cost |");
    println!("|---|---|---|");
    let (mut bare, mut bare_fresh, mut bare_received) = (0, 0, 0);
    for (name, fresh) in LAYERS {
        let Some(total) = count(name) else {
            println!("| {name} | (callgrind failed) | |");
            continue;
        };
        let per = total / REQUESTS as u64;
        match name {
            "bare handler" => bare = per,
            "bare handler, fresh" => bare_fresh = per,
            "bare handler, as received" => bare_received = per,
            _ => {}
        }
        let base = if name.ends_with("as received") {
            bare_received
        } else if fresh {
            bare_fresh
        } else {
            bare
        };
        let own = if name.starts_with("bare handler") {
            "—".to_owned()
        } else {
            per.saturating_sub(base).to_string()
        };
        println!("| {name} | {per} | {own} |");
    }
}
