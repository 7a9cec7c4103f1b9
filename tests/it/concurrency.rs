//! Concurrent-scan limits: exact under concurrency (memory, and two instances on one Redis),
//! the 429 envelope, no quota held by a refused creation, release by handle and by id, lapse
//! after the maximum scan duration, and release when the handler does not answer 2xx.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use tower::{Layer, ServiceBuilder};
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    clock::{FakeClock, UtcDate},
    concurrency::{ConcurrentScansLayer, ScanSlot},
    plan::{Plan, Plans},
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

use crate::common::{assert_envelope, handler, header, scan, send, tenant};

fn limit_body(n: u32, plan: &str) -> String {
    let scans = if n == 1 { "scan" } else { "scans" };
    format!(
        r#"{{"error":"RATE_LIMITED","message":"Concurrent scan limit reached: {n} {scans} may run at a time on the {plan} plan.","retry_after":10}}"#
    )
}

/// A scan creation whose scan keeps running (the handler keeps its slot).
#[cfg(feature = "redis")]
fn running_scan(t: &Tenant) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = scan(t, "functional", None);
    req.headers_mut()
        .insert("x-slot", http::HeaderValue::from_static("keep"));
    req
}

fn slots_on(clock: &FakeClock) -> ConcurrentScansLayer {
    ConcurrentScansLayer::new(Plans::default()).clock(Arc::new(clock.clone()))
}

/// `send`, owning the service (for spawned tasks: the tests' services are not `Sync`).
async fn send_owned<S, B>(
    service: S,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> crate::common::Answer
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
        >,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (parts, body) = service.oneshot(req).await.unwrap().into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn clock() -> FakeClock {
    FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_creations_at_once_run_exactly_ten_and_charge_exactly_ten() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("team", Plan::TEAM).unwrap();
    let key = keys.issue_key("team", None).unwrap().key;
    let nat = NatLayer::new(keys);
    let service = nat.layer(handler());
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let service = service.clone();
            let req = http::Request::post("/api/v1/scan")
                .header("x-api-key", key.expose())
                .header("x-slot", "keep")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"url":"https://a.example"}"#,
                )))
                .unwrap();
            tokio::spawn(send_owned(service, req))
        })
        .collect();
    let mut accepted = 0;
    for call in calls {
        let reply = call.await.unwrap();
        match reply.0 {
            StatusCode::ACCEPTED => accepted += 1,
            _ => {
                assert_envelope(&reply, 429, &limit_body(10, "Team"));
                assert_eq!(header(&reply.1, "retry-after"), 10);
                // The limiter's own numbers: the request passed it (Team: 300 a minute).
                assert_eq!(header(&reply.1, "x-ratelimit-limit"), 300);
            }
        }
    }
    assert_eq!(accepted, 10);
    let team = Tenant::new("team", Plan::TEAM, "k");
    assert_eq!(nat.scan_slots().running(team.id()).await.unwrap(), 10);
    // Refused creations held no quota: exactly the ten running scans are charged.
    assert_eq!(nat.usage(&team).await.unwrap().scans_used, 10);
}

#[tokio::test]
async fn slots_are_released_by_handle_by_id_by_lapse_and_by_a_failed_creation() {
    let clock = clock();
    let slots = slots_on(&clock).max_scan_duration(Duration::from_secs(600));
    let kept = Arc::new(std::sync::Mutex::new(Vec::<ScanSlot>::new()));
    let keep = kept.clone();
    let service = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(slots.clone())
        .service_fn(
            move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
                let keep = keep.clone();
                async move {
                    let mut response =
                        http::Response::new(http_body_util::Full::<bytes::Bytes>::default());
                    match req.headers().get("x-outcome").map(|v| v.to_str().unwrap()) {
                        Some(code) => *response.status_mut() = code.parse().unwrap(),
                        None => {
                            keep.lock()
                                .unwrap()
                                .push(req.extensions().get::<ScanSlot>().unwrap().clone());
                            *response.status_mut() = StatusCode::ACCEPTED;
                        }
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            },
        );
    let pro = tenant("acme", Plan::PRO); // 3 at a time
    for _ in 0..3 {
        assert_eq!(send(&service, scan(&pro, "functional", None)).await.0, 202);
    }
    let refused = send(&service, scan(&pro, "functional", None)).await;
    assert_envelope(&refused, 429, &limit_body(3, "Pro"));
    assert_eq!(header(&refused.1, "retry-after"), 10);
    assert!(refused.1.get("x-ratelimit-limit").is_none());
    // A creation the handler fails frees its slot at once.
    let mut slots_left = slots.running(pro.id()).await.unwrap();
    assert_eq!(slots_left, 3);
    // By handle.
    let first = kept.lock().unwrap().remove(0);
    assert_eq!(first.tenant(), pro.id());
    first.release();
    first.release();
    slots_left -= 1;
    assert_eq!(slots.running(pro.id()).await.unwrap(), slots_left);
    for status in ["400", "500"] {
        let reply = send(&service, scan(&pro, "functional", Some(status))).await;
        assert_eq!(reply.0.as_str(), status);
        assert_eq!(slots.running(pro.id()).await.unwrap(), slots_left);
    }
    // By id, through the layer.
    let second = kept.lock().unwrap().remove(0);
    slots.release(pro.id(), second.id()).await.unwrap();
    assert_eq!(slots.running(pro.id()).await.unwrap(), 1);
    // By lapse: the last one never reports back.
    clock.advance(Duration::from_secs(599));
    assert_eq!(slots.running(pro.id()).await.unwrap(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(slots.running(pro.id()).await.unwrap(), 0);
    for _ in 0..3 {
        assert_eq!(send(&service, scan(&pro, "functional", None)).await.0, 202);
    }
    assert_eq!(send(&service, scan(&pro, "functional", None)).await.0, 429);
}

#[tokio::test]
async fn a_concurrency_refusal_comes_before_the_quota_and_after_the_feature_gate() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    let key = keys.issue_key("free", None).unwrap().key;
    let nat = NatLayer::new(keys).scan_retry_after(Duration::from_secs(30));
    let service = nat.layer(handler());
    let creation = |mode: &str| {
        http::Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .header("x-slot", "keep")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                r#"{{"url":"https://a.example","mode":"{mode}"}}"#
            ))))
            .unwrap()
    };
    assert_eq!(send(&service, creation("functional")).await.0, 202);
    // Security on Free: the feature gate answers first.
    assert_eq!(send(&service, creation("security")).await.0, 403);
    let refused = send(&service, creation("functional")).await;
    assert_eq!(refused.0, 429);
    assert_eq!(header(&refused.1, "retry-after"), 30);
    let free = Tenant::new("free", Plan::FREE, "k");
    assert_eq!(nat.usage(&free).await.unwrap().scans_used, 1);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_redis_run_exactly_ten_in_total() {
    use tower_nat::{
        concurrency::{RedisSlotStore, SlotStore},
        store::redis::{RedisBackend, TimeSource},
    };
    let Some(server) = crate::common::redis_server::RedisServer::start() else {
        return;
    };
    let instance = || {
        let backend = RedisBackend::open_with_timeout(&server.url(), Duration::from_secs(2))
            .unwrap()
            .prefix("conc:");
        let store = RedisSlotStore::new(backend).time_source(TimeSource::Redis);
        ServiceBuilder::new()
            .layer(ValidateScanRequestLayer::new())
            .layer(ConcurrentScansLayer::new(Plans::default()).with_store(store))
            .service(handler())
    };
    let (a, b) = (instance(), instance());
    let team = tenant("team", Plan::TEAM);
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let service = if i % 2 == 0 { a.clone() } else { b.clone() };
            let req = running_scan(&team);
            tokio::spawn(async move { send_owned(service, req).await.0 })
        })
        .collect();
    let mut accepted = 0;
    for call in calls {
        match call.await.unwrap() {
            StatusCode::ACCEPTED => accepted += 1,
            other => assert_eq!(other, StatusCode::TOO_MANY_REQUESTS),
        }
    }
    assert_eq!(accepted, 10);
    let backend = RedisBackend::open(&server.url()).unwrap().prefix("conc:");
    let store = RedisSlotStore::new(backend);
    let running = match store.running(team.id(), Duration::ZERO) {
        tower_nat::store::Answer::Pending(count) => count.await.unwrap(),
        tower_nat::store::Answer::Ready(count) => count.unwrap(),
    };
    assert_eq!(running, 10);
}
