//! Findings of the attack on keys found by tag and rate state held by records (each failed
//! before its fix): one count per tenant whatever limit each record has (a plan change seen
//! by one key before another, a resolver with two limits), a key moved to another tenant,
//! and a deleted tenant's rate state evicted.

use std::{borrow::Cow, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_nat::{
    NatError,
    auth::{ApiKey, ApiKeyAuthLayer, CachedKeyStore, MemoryKeyStore},
    clock::{Clock, FakeClock, SharedClock, UtcDate},
    plan::{Plan, Plans},
    rate_limit::{MemoryRateStore, PlanRateLimitLayer, RateKeyResolver, RateTarget},
    tenant::Tenant,
};

use crate::common::{empty, get, handler, header, send, stores::Db};

fn clock() -> (FakeClock, SharedClock) {
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    (clock, shared)
}

fn with_key(key: &ApiKey) -> Request<Full<Bytes>> {
    empty(get("/api/v1/scans").header("x-api-key", key.expose()))
}

/// A cached Pro record and a Free record looked up after a plan change count on one state.
#[tokio::test]
async fn a_plan_change_does_not_open_a_second_budget_for_a_cached_record() {
    let (_clock, shared) = clock();
    let keys = MemoryKeyStore::new().clock(shared.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let a = keys.issue_key("acme", None).unwrap().key;
    let b = keys.issue_key("acme", None).unwrap().key;
    let db = Db::new(keys);
    db.silent();
    let cache = CachedKeyStore::new(db.clone()).clock(shared.clone());
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(cache).clock(shared.clone()))
        .layer(PlanRateLimitLayer::new(Plans::default()).clock(shared.clone()))
        .service(handler());

    for left in [119, 118] {
        let got = send(&service, with_key(&a)).await;
        assert_eq!(
            (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
            (200, left)
        );
    }
    // Downgraded by another instance; B (looked up after) spends Free.
    db.keys.set_plan("acme", Plan::FREE).unwrap();
    let mut passed = 2;
    loop {
        let got = send(&service, with_key(&b)).await;
        if got.0 != 200 {
            assert_eq!(got.0, 429);
            break;
        }
        assert_eq!(header(&got.1, "x-ratelimit-limit"), 30);
        passed += 1;
    }
    assert_eq!(passed, 30);
    // 30 used = 30 of Pro's 120: A (Pro in the cache) may have 90 more, as before d7a6d46.
    let mut a_after = 0;
    while send(&service, with_key(&a)).await.0 == 200 {
        a_after += 1;
    }
    assert_eq!(a_after, 90, "{} passed in one instant", passed + a_after);
}

/// Keyed by the tenant's own id (borrowed: `check_tenant`), 30/min on /export.
#[derive(Clone)]
struct PerRoute;

impl RateKeyResolver for PerRoute {
    fn resolve<'r, B>(&self, req: &'r Request<B>) -> Result<Option<RateTarget<'r>>, NatError> {
        let tenant = Tenant::of(req).ok_or(NatError::Unauthorized)?;
        let limit = if req.uri().path() == "/export" {
            30
        } else {
            120
        };
        Ok(Some(RateTarget {
            key: Cow::Borrowed(tenant.id()),
            limit,
        }))
    }
}

/// One record under two limits (a resolver borrowing the tenant's id): one count.
#[tokio::test]
async fn one_rate_key_with_two_limits_is_one_count() {
    let (_clock, shared) = clock();
    let service = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_resolver(PerRoute)
                .clock(shared),
        )
        .service(handler());
    let record = Tenant::new("acme", Plan::PRO, "key_1");
    let on = |path: &str| {
        let mut req = empty(get(path));
        req.extensions_mut().insert(record.clone());
        req
    };
    for left in [119, 118] {
        let got = send(&service, on("/")).await;
        assert_eq!(
            (got.0.as_u16(), header(&got.1, "x-ratelimit-remaining")),
            (200, left)
        );
    }
    // 2 used of 120 are 2 of 30: 28 exports.
    let mut exports = 0;
    while send(&service, on("/export")).await.0 == 200 {
        exports += 1;
    }
    assert_eq!(exports, 28);
    // 30 used = 30 of 120: 90 more, as with a `Cow::Owned` key (found_by_tag.rs).
    let mut more = 0;
    while send(&service, on("/")).await.0 == 200 {
        more += 1;
    }
    assert_eq!(more, 90, "{} passed in one instant", 30 + more);
}

/// A key re-added for beta leaves alpha's list: alpha's plan changes never reach it.
#[tokio::test]
async fn a_key_moved_to_another_tenant_never_takes_the_first_tenants_plan() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("alpha", Plan::FREE).unwrap();
    keys.insert_tenant("beta", Plan::FREE).unwrap();
    let issued = keys.issue_key("alpha", None).unwrap();
    keys.add_key("beta", &issued.key, None).unwrap();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(keys.clone()))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let t = Tenant::of(&req).unwrap();
            let body = format!("{} {}", t.id(), t.plan().name());
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    let got = send(&service, with_key(&issued.key)).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"beta free"[..]));

    keys.set_plan("alpha", Plan::ENTERPRISE).unwrap();
    let got = send(&service, with_key(&issued.key)).await;
    assert_eq!(
        (got.0.as_u16(), std::str::from_utf8(&got.2).unwrap()),
        (200, "beta free")
    );
}

/// A deleted tenant's rate state is evicted: the tag index holds no outdated record.
#[tokio::test]
async fn a_deleted_tenants_rate_state_is_evicted() {
    let (clock, shared) = clock();
    let keys = MemoryKeyStore::new().clock(shared.clone());
    keys.insert_tenant("acme", Plan::FREE).unwrap();
    let key = keys.issue_key("acme", None).unwrap().key;
    let rates = MemoryRateStore::new();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(keys.clone()).clock(shared.clone()))
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(rates.clone())
                .clock(shared.clone()),
        )
        .service(handler());
    for _ in 0..2 {
        assert_eq!(send(&service, with_key(&key)).await.0, 200);
    }
    assert!(keys.delete_tenant("acme"));
    assert_eq!(send(&service, with_key(&key)).await.0, 401);
    clock.advance(Duration::from_secs(120));
    assert_eq!(rates.evict_idle(clock.now()), 1);
    assert!(rates.is_empty());
}
