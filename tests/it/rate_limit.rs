//! PlanRateLimit with a fake clock: bursts, header honesty, long-run rate, plan changes,
//! eviction, concurrency, failing and asynchronous stores.

use std::{
    sync::{Arc, Barrier},
    time::Duration,
};

use crate::common::{
    UNAUTHORIZED, assert_envelope, handler, header, send,
    stores::{Broken, Later},
};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_nat::{
    clock::{Clock, FakeClock},
    plan::{Plan, Plans},
    rate_limit::{MemoryRateStore, PlanRateLimitLayer},
    store::OnStoreError,
    tenant::{AuthExempt, Tenant},
};

fn req(tenant: &str, plan: &Plan) -> Request<Full<Bytes>> {
    let mut req = Request::get("/api/v1/scans").body(Full::default()).unwrap();
    req.extensions_mut()
        .insert(Tenant::new(tenant, plan.clone(), "key_test"));
    req
}

fn setup() -> (FakeClock, MemoryRateStore) {
    let clock = FakeClock::new(Duration::from_secs(1_750_000_000));
    (clock, MemoryRateStore::new())
}

/// The limiter over `store`, on `clock`, with NAT's plans.
fn limiter<R>(clock: &FakeClock, store: R) -> PlanRateLimitLayer<R> {
    PlanRateLimitLayer::new(Plans::default())
        .with_store(store)
        .clock(Arc::new(clock.clone()))
}

#[tokio::test]
async fn exactly_the_plan_limit_from_fresh_then_the_exact_429() {
    for (plan, limit, retry) in [
        (Plan::FREE, 30u64, 2u64),
        (Plan::PRO, 120, 1),
        (Plan::TEAM, 300, 1),
        (Plan::ENTERPRISE, 1000, 1),
    ] {
        let (clock, store) = setup();
        let service = ServiceBuilder::new()
            .layer(limiter(&clock, store))
            .service(handler());
        for i in 0..limit {
            let got = send(&service, req("t", &plan)).await;
            assert_eq!(got.0, 200, "{plan} request {i}");
            assert_eq!(header(&got.1, "x-ratelimit-limit"), limit);
            assert_eq!(header(&got.1, "x-ratelimit-remaining"), limit - i - 1);
        }
        let got = send(&service, req("t", &plan)).await;
        assert_envelope(
            &got,
            429,
            &format!(
                r#"{{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after {retry} seconds.","retry_after":{retry}}}"#
            ),
        );
        assert_eq!(header(&got.1, "retry-after"), retry);
        assert_eq!(header(&got.1, "x-ratelimit-limit"), limit);
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), 0);
    }
}

/// A deterministic pseudo-random sequence (xorshift), so the test is repeatable.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn remaining_means_exactly_that_many_more_pass_at_once() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        clock.advance(Duration::from_millis(xorshift(&mut seed) % 90_000));
        let got = send(&service, req("t", &Plan::FREE)).await;
        if got.0 == 429 {
            continue;
        }
        let k = header(&got.1, "x-ratelimit-remaining");
        for i in 0..k {
            let next = send(&service, req("t", &Plan::FREE)).await;
            assert_eq!(
                next.0, 200,
                "round {round}: request {i} of the promised {k}"
            );
            assert_eq!(header(&next.1, "x-ratelimit-remaining"), k - i - 1);
        }
        assert_eq!(
            send(&service, req("t", &Plan::FREE)).await.0,
            429,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn waiting_retry_after_seconds_is_admitted() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let mut seed = 42;
    let mut refusals = 0;
    for _ in 0..300 {
        clock.advance(Duration::from_millis(xorshift(&mut seed) % 3_000));
        let got = send(&service, req("t", &Plan::FREE)).await;
        if got.0 == 429 {
            refusals += 1;
            let n = header(&got.1, "retry-after");
            assert!(n >= 1);
            let body: serde_json::Value = serde_json::from_slice(&got.2).unwrap();
            assert_eq!(body["retry_after"], n);
            clock.advance(Duration::from_secs(n));
            assert_eq!(send(&service, req("t", &Plan::FREE)).await.0, 200);
        }
    }
    assert!(
        refusals > 50,
        "the test must exercise refusals ({refusals})"
    );
}

#[tokio::test]
async fn ten_minutes_at_twice_the_rate_admits_the_plan_rate() {
    // Bound: at least 10 minutes' worth (10 L) and at most that plus one burst (11 L).
    for (plan, limit) in [(Plan::FREE, 30u64), (Plan::PRO, 120)] {
        let (clock, store) = setup();
        let service = ServiceBuilder::new()
            .layer(limiter(&clock, store))
            .service(handler());
        let gap = Duration::from_nanos(60_000_000_000 / (2 * limit));
        let mut admitted = 0;
        for _ in 0..(20 * limit) {
            if send(&service, req("t", &plan)).await.0 == 200 {
                admitted += 1;
            }
            clock.advance(gap);
        }
        assert!(
            (10 * limit..=11 * limit).contains(&admitted),
            "{plan}: admitted {admitted}"
        );
        // Exactly: the bucket fills at half the arrival rate, so 2L - 1 pass in the first
        // minute, then one per interval for the remaining nine: 11 L - 1.
        assert_eq!(admitted, 11 * limit - 1, "{plan}");
    }
}

#[tokio::test]
async fn tenants_are_independent_and_upgrades_keep_the_count() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    for _ in 0..30 {
        assert_eq!(send(&service, req("a", &Plan::FREE)).await.0, 200);
    }
    assert_eq!(send(&service, req("a", &Plan::FREE)).await.0, 429);
    let got = send(&service, req("b", &Plan::FREE)).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 29)
    );
    // Upgrade: 30 used of 120, so this one leaves 89.
    let got = send(&service, req("a", &Plan::PRO)).await;
    assert_eq!(got.0, 200);
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 120);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 89);
    for _ in 0..89 {
        assert_eq!(send(&service, req("a", &Plan::PRO)).await.0, 200);
    }
    assert_eq!(send(&service, req("a", &Plan::PRO)).await.0, 429);
    // Downgrade back: 120 used is over Free's 30: a full Free bucket, which drains in 60 s.
    assert_eq!(send(&service, req("a", &Plan::FREE)).await.0, 429);
    clock.advance(Duration::from_secs(60));
    let got = send(&service, req("a", &Plan::FREE)).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 29)
    );
}

#[tokio::test]
async fn idle_tenants_are_evicted() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store.clone()))
        .service(handler());
    for i in 0..100 {
        send(&service, req(&format!("t{i}"), &Plan::PRO)).await;
    }
    assert_eq!(store.len(), 100);
    assert_eq!(store.evict_idle(clock.now()), 0, "nobody has drained yet");
    clock.advance(Duration::from_millis(499));
    assert_eq!(store.evict_idle(clock.now()), 0);
    clock.advance(Duration::from_millis(1));
    // One Pro request drains in 0.5 s.
    assert_eq!(store.evict_idle(clock.now()), 100);
    assert!(store.is_empty());

    // The automatic sweep runs on the request path once a minute.
    for i in 0..10 {
        send(&service, req(&format!("u{i}"), &Plan::PRO)).await;
    }
    clock.advance(Duration::from_secs(61));
    send(&service, req("v", &Plan::PRO)).await;
    assert_eq!(store.len(), 1, "only the tenant that just came in remains");
}

#[tokio::test]
async fn headers_appear_on_the_inner_services_own_errors() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let mut r = req("t", &Plan::TEAM);
    r.headers_mut().insert("x-outcome", "404".parse().unwrap());
    let got = send(&service, r).await;
    assert_eq!(got.0, 404);
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 300);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 299);
}

#[tokio::test]
async fn draft_headers_are_opt_in() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store).draft_headers(true))
        .service(handler());
    let got = send(&service, req("t", &Plan::FREE)).await;
    assert_eq!(got.1["ratelimit-policy"], "\"default\";q=30;w=60");
    assert_eq!(got.1["ratelimit"], "\"default\";r=29;t=2");
    for _ in 0..29 {
        send(&service, req("t", &Plan::FREE)).await;
    }
    let got = send(&service, req("t", &Plan::FREE)).await;
    assert_eq!(got.0, 429);
    assert_eq!(got.1["ratelimit"], "\"default\";r=0;t=60");
    let (clock, store) = setup();
    let plain = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let got = send(&plain, req("t", &Plan::FREE)).await;
    assert!(got.1.get("ratelimit").is_none() && got.1.get("ratelimit-policy").is_none());
}

#[tokio::test]
async fn no_tenant_fails_closed_and_exempt_passes_without_headers() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let bare = Request::get("/x").body(Full::default()).unwrap();
    assert_envelope(&send(&service, bare).await, 401, UNAUTHORIZED);
    let mut exempt = Request::get("/healthz").body(Full::default()).unwrap();
    exempt.extensions_mut().insert(AuthExempt);
    let got = send(&service, exempt).await;
    assert_eq!(got.0, 200);
    assert!(got.1.get("x-ratelimit-limit").is_none());
}

#[test]
fn four_threads_hammering_one_tenant_admit_exactly_the_limit() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store))
        .service(handler());
    let threads = 8;
    let per_thread = 500;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut service = service.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                barrier.wait();
                let mut admitted = 0u32;
                for _ in 0..per_thread {
                    let response = rt
                        .block_on(service.call(req("hot", &Plan::ENTERPRISE)))
                        .unwrap();
                    if response.status() == 200 {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 1000);
}

#[tokio::test]
async fn failing_store_allows_by_default_and_rejects_when_told() {
    let open = ServiceBuilder::new()
        .layer(PlanRateLimitLayer::new(Plans::default()).with_store(Broken::Now))
        .service(handler());
    let got = send(&open, req("t", &Plan::FREE)).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"ok"[..]));
    assert!(got.1.get("x-ratelimit-limit").is_none());
    let closed = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(Broken::Now)
                .on_store_error(OnStoreError::Reject),
        )
        .service(handler());
    assert_envelope(
        &send(&closed, req("t", &Plan::FREE)).await,
        500,
        crate::common::INTERNAL,
    );
}

#[tokio::test]
async fn asynchronous_stores_give_the_same_answers() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, Later(store)))
        .service(handler());
    for i in 0..30u64 {
        let got = send(&service, req("t", &Plan::FREE)).await;
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), 29 - i);
    }
    assert_eq!(send(&service, req("t", &Plan::FREE)).await.0, 429);
}

/// The state a tenant's records hold: a tenant's keys (records shared by every request made
/// with them) spend from one budget, through a plan change and a second store; held state is
/// not evicted while a record holds it, and is once none does.
#[tokio::test]
async fn records_holding_the_state_share_one_budget_per_tenant() {
    let (clock, store) = setup();
    let service = ServiceBuilder::new()
        .layer(limiter(&clock, store.clone()))
        .service(handler());
    let first = Tenant::new("acme", Plan::FREE, "key_1");
    let second = Tenant::new("acme", Plan::FREE, "key_2");
    let with = |tenant: &Tenant| {
        let mut req = Request::get("/api/v1/scans").body(Full::default()).unwrap();
        req.extensions_mut().insert(tenant.clone());
        req
    };
    // Free: 30 a minute, the two keys' requests alternating.
    for i in 0..30u64 {
        let tenant = if i % 2 == 0 { &first } else { &second };
        let got = send(&service, with(tenant)).await;
        assert_eq!(got.0, 200, "request {i}");
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), 29 - i);
    }
    for tenant in [&first, &second] {
        assert_eq!(send(&service, with(tenant)).await.0, 429);
    }
    // A second store counts on its own: the records' state is the first store's.
    let other = ServiceBuilder::new()
        .layer(limiter(&clock, MemoryRateStore::new()))
        .service(handler());
    let got = send(&other, with(&first)).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 29)
    );
    assert_eq!(send(&service, with(&first)).await.0, 429);

    // On Pro (120) the 30 used are kept: 90 left, for old and new records alike.
    let pro = Tenant::new("acme", Plan::PRO, "key_1");
    let got = send(&service, with(&pro)).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 89)
    );
    let pro_second = Tenant::new("acme", Plan::PRO, "key_2");
    let got = send(&service, with(&pro_second)).await;
    assert_eq!(
        (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
        (200, 88)
    );

    // Drained, but held by live records: kept; once the records are gone: evicted.
    clock.advance(Duration::from_secs(120));
    assert_eq!(store.evict_idle(clock.now()), 0);
    assert_eq!(store.len(), 1);
    drop((first, second, pro, pro_second));
    assert_eq!(store.evict_idle(clock.now()), 1);
    assert!(store.is_empty());
}

/// State kept in the table (a key checked by id) is shared with a record that reaches it
/// later, and both paths keep counting on it, through a plan change too.
#[test]
fn state_checked_by_id_then_through_a_record_is_one_count() {
    let (clock, store) = setup();
    let now = clock.now();
    let id = tower_nat::tenant::TenantId::from("acme");
    let record = Tenant::new("acme", Plan::FREE, "key_1");
    let remaining = |d: tower_nat::rate_limit::RateDecision| (d.allowed, d.remaining);
    for left in (20..30).rev() {
        assert_eq!(remaining(store.check_now(&id, 30, now)), (true, left));
    }
    // The record reaches the table's state (shared from now on), then holds it.
    assert_eq!(
        remaining(store.check_tenant_now(&record, 30, now)),
        (true, 19)
    );
    assert_eq!(
        remaining(store.check_tenant_now(&record, 30, now)),
        (true, 18)
    );
    assert_eq!(remaining(store.check_now(&id, 30, now)), (true, 17));
    assert_eq!(
        remaining(store.check_tenant_now(&record, 30, now)),
        (true, 16)
    );
    // On Pro (120) through the table: 14 used, this one the 15th; a new record counts on.
    assert_eq!(remaining(store.check_now(&id, 120, now)), (true, 105));
    let pro = Tenant::new("acme", Plan::PRO, "key_1");
    assert_eq!(
        remaining(store.check_tenant_now(&pro, 120, now)),
        (true, 104)
    );
    assert_eq!(
        remaining(store.check_tenant_now(&pro, 120, now)),
        (true, 103)
    );
    assert_eq!(remaining(store.check_now(&id, 120, now)), (true, 102));
    assert_eq!(store.len(), 1);
}
