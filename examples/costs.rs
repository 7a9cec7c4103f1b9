//! Instructions per request of each layer, counted by callgrind: repeatable on a shared
//! machine where wall-clock benches move by ±10 % or more. BENCHMARKS.md has the figures.
//!
//! ```text
//! cargo build --release --example costs
//! for layer in bare bare-fresh guard envelope billing auth rate scan gate quota stack \
//!     stack-no-envelope; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     --toggle-collect='costs::run*' target/release/examples/costs $layer 20000 2>&1 |
//!     grep -E 'Collected'
//! done
//! ```
//!
//! Each run sends `N` requests (1,000 tenants in turn, each request a clone of a prebuilt
//! one) through one layer over a handler that answers at once; only `run` is counted. The
//! layers behind authentication get requests that carry their `Tenant`, as authentication
//! leaves them; authentication and the whole stack get fresh requests, with a key and no
//! `Tenant` (`bare-fresh` is their bare handler). Instructions per request are the count
//! divided by `N`; a layer's own cost is that minus its bare handler's.

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_nat::{
    NatLayer,
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::FakeClock,
    envelope::ErrorEnvelopeLayer,
    feature_gate::FeatureGateLayer,
    internal_error::InternalErrorGuardLayer,
    plan::{Plan, PlanLimits, Plans},
    quota::QuotaGuardLayer,
    rate_limit::PlanRateLimitLayer,
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

fn handler() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Ready,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::default())))
    })
}

/// Polls a future that is ready at once.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the measured service must answer at once"),
    }
}

/// The measured loop: the only function callgrind counts.
#[inline(never)]
fn run<S>(service: &mut S, requests: &[Request<Full<Bytes>>], clock: &FakeClock, n: usize)
where
    S: Service<Request<Full<Bytes>>>,
{
    for i in 0..n {
        let req = requests[i % requests.len()].clone();
        clock.advance(Duration::from_micros(15));
        black_box(now(service.call(req)).is_ok());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let layer = args.next().unwrap_or_else(|| "stack".to_owned());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);

    let keys = MemoryKeyStore::new();
    let limits = PlanLimits {
        requests_per_minute: 4_000,
        ..Plans::default().get(&Plan::ENTERPRISE).unwrap().clone()
    };
    let plans = Arc::new(
        Plans::builder()
            .plan(Plan::ENTERPRISE, limits)
            .build()
            .unwrap(),
    );
    let requests: Vec<Request<Full<Bytes>>> = (0..1_000)
        .map(|i| {
            let id = format!("tenant-{i:07}");
            keys.insert_tenant(id.as_str(), Plan::ENTERPRISE);
            let key = keys.issue_key(&id, None).unwrap().key;
            let mut req = Request::get("/api/v1/scans")
                .header("x-api-key", key.expose())
                .body(Full::default())
                .unwrap();
            req.extensions_mut()
                .insert(Tenant::new(id, Plan::ENTERPRISE, "key"));
            req
        })
        .collect();
    let fresh: Vec<Request<Full<Bytes>>> = requests
        .iter()
        .map(|req| {
            let mut req = req.clone();
            req.extensions_mut().clear();
            req
        })
        .collect();
    let clock = FakeClock::new(Duration::from_secs(1_750_000_000));
    let shared = || Arc::new(clock.clone());
    match layer.as_str() {
        "bare" => run(&mut handler(), &requests, &clock, n),
        "bare-fresh" => run(&mut handler(), &fresh, &clock, n),
        "guard" => run(
            &mut InternalErrorGuardLayer::new().layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "billing" => run(
            &mut BillingConfiguredLayer::new(false).layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "auth" => run(
            &mut ApiKeyAuthLayer::new(keys).clock(shared()).layer(handler()),
            &fresh,
            &clock,
            n,
        ),
        "rate" => run(
            &mut PlanRateLimitLayer::new(plans)
                .clock(shared())
                .layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "envelope" => run(
            &mut ErrorEnvelopeLayer::new().layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "scan" => run(
            &mut ValidateScanRequestLayer::new().layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "gate" => run(
            &mut FeatureGateLayer::scans(plans).layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "quota" => run(
            &mut QuotaGuardLayer::new(plans).clock(shared()).layer(handler()),
            &requests,
            &clock,
            n,
        ),
        "stack" => run(
            &mut NatLayer::new(keys)
                .plans(plans)
                .clock(shared())
                .layer(handler()),
            &fresh,
            &clock,
            n,
        ),
        "stack-no-envelope" => run(
            &mut NatLayer::new(keys)
                .plans(plans)
                .clock(shared())
                .error_envelope(false)
                .layer(handler()),
            &fresh,
            &clock,
            n,
        ),
        other => {
            eprintln!(
                "unknown layer {other}: bare, bare-fresh, guard, envelope, billing, auth, rate, scan, gate, quota, stack, stack-no-envelope"
            );
            std::process::exit(2);
        }
    }
}
