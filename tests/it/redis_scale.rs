//! Scaling out on Redis: answers a store knows without asking Redis (exact, bounded), the
//! local fallback while Redis fails, and a real three-master Redis Cluster (two instances,
//! a resharded slot, a killed master).
#![cfg(feature = "redis")]

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use crate::common::redis_cluster::RedisCluster;
use crate::common::redis_server::RedisServer;
use crate::common::{Answer, handler, header, plain, scan, send};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::{FakeClock, UtcDate},
    concurrency::{ConcurrentScansLayer, RedisSlotStore},
    plan::{Plan, Plans},
    quota::{QuotaGuardLayer, RedisQuotaStore},
    rate_limit::{LocalFallback, PlanRateLimitLayer, RateStore, RedisRateStore},
    scan_request::ValidateScanRequestLayer,
    store::redis::{RedisBackend, TimeSource},
    tenant::Tenant,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Svc = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    http::Response<UnsyncBoxBody<Bytes, BoxError>>,
    std::io::Error,
>;

/// One instance: rate limit, scan validation, concurrent scans and quota, all on `backend`'s
/// Redis, with `rate` as its rate store, on `clock`. Free runs 4 scans at a time here: the
/// tests' handler frees a scan's slot in the background as it answers, and one scan at a
/// time would race the next request against that release.
fn instance<R: RateStore>(rate: R, backend: &RedisBackend, clock: &FakeClock) -> Svc {
    let running = Plans::from_json(r#"{"plans": {"free": {"concurrent_scans": 4}}}"#).unwrap();
    let quota = RedisQuotaStore::new(backend.clone()).time_source(TimeSource::Caller);
    let slots = RedisSlotStore::new(backend.clone()).time_source(TimeSource::Caller);
    let clock = Arc::new(clock.clone());
    let service = ServiceBuilder::new()
        .layer(
            PlanRateLimitLayer::new(Plans::default())
                .with_store(rate)
                .clock(clock.clone()),
        )
        .layer(ValidateScanRequestLayer::new())
        .layer(
            ConcurrentScansLayer::new(running)
                .with_store(slots)
                .clock(clock.clone()),
        )
        .layer(
            QuotaGuardLayer::new(Plans::default())
                .with_store(quota)
                .clock(clock),
        )
        .service(handler());
    tower::util::BoxCloneService::new(
        service.map_response(|r| {
            r.map(|body| body.map_err(|e| -> BoxError { e.into() }).boxed_unsync())
        }),
    )
}

fn backend(url: &str) -> RedisBackend {
    RedisBackend::from_config_with_timeout(url, Duration::from_secs(2))
        .unwrap()
        .prefix("scale:")
}

fn rate(backend: &RedisBackend) -> RedisRateStore {
    RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller)
}

/// How many scripts Redis has run (`EVALSHA` and `EVAL` calls), from `INFO commandstats`.
async fn scripts_run(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn same_answer(a: &Answer, b: &Answer) {
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1, "the same headers");
    assert_eq!(a.2, b.2, "the same body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tenant_is_answered_locally_and_exactly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let (ba, bb) = (backend(&server.url()), backend(&server.url()));
    let store_a = rate(&ba);
    let a = instance(store_a.clone(), &ba, &clock);
    // B remembers nothing: it asks Redis every time.
    let b = instance(rate(&bb).local_refusals(0), &bb, &clock);
    let free = Tenant::new("flood", Plan::FREE, "k");
    for _ in 0..30 {
        assert_eq!(send(&a, plain(&free, "/")).await.0, 200);
    }
    // Redis refuses the 31st: A remembers it.
    let first = send(&a, plain(&free, "/")).await;
    assert_eq!(first.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&first.1, "retry-after"), 2);
    assert_eq!(store_a.known_refusals(), 1);
    // A answers the next ones without Redis; B asks Redis. Same bytes, at 0.5 s and 1.9 s.
    for step in [500, 1400] {
        clock.advance(Duration::from_millis(step));
        let scripts = scripts_run(&server.url()).await;
        let local = send(&a, plain(&free, "/")).await;
        assert_eq!(
            scripts_run(&server.url()).await,
            scripts,
            "A did not ask Redis"
        );
        let asked = send(&b, plain(&free, "/")).await;
        assert_eq!(scripts_run(&server.url()).await, scripts + 1, "{asked:?}");
        same_answer(&local, &asked);
        assert_eq!(local.0, 429);
    }
    // At exactly the wait, A asks Redis again and is admitted.
    clock.advance(Duration::from_millis(100));
    let scripts = scripts_run(&server.url()).await;
    let admitted = send(&a, plain(&free, "/")).await;
    assert_eq!(admitted.0, 200);
    assert_eq!(scripts_run(&server.url()).await, scripts + 1);
    // Refused again; then the tenant moves to Pro: another limit, so A asks Redis, which
    // admits it (30 used of Pro's 120).
    assert_eq!(send(&a, plain(&free, "/")).await.0, 429);
    let pro = Tenant::new("flood", Plan::PRO, "k");
    let upgraded = send(&a, plain(&pro, "/")).await;
    assert_eq!(upgraded.0, 200);
    assert_eq!(header(&upgraded.1, "x-ratelimit-limit"), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_quota_is_answered_locally_and_exactly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 30).unwrap());
    let (ba, bb) = (backend(&server.url()), backend(&server.url()));
    let a = instance(rate(&ba).local_refusals(0), &ba, &clock);
    let b = instance(rate(&bb).local_refusals(0), &bb, &clock);
    let free = Tenant::new("spent", Plan::FREE, "k");
    // Free's 50 functional scans (the rate limit allows 30 a minute: a minute apart).
    for i in 0..50 {
        if i % 25 == 24 {
            clock.advance(Duration::from_secs(60));
        }
        assert_eq!(
            send(&a, scan(&free, "functional", None)).await.0,
            202,
            "scan {i}"
        );
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(send(&a, scan(&free, "functional", None)).await.0, 402);
    let scripts = scripts_run(&server.url()).await;
    let local = send(&a, scan(&free, "functional", None)).await;
    // The rate check and the running-scan slot asked Redis; the quota did not.
    assert_eq!(scripts_run(&server.url()).await, scripts + 2);
    let mut asked = send(&b, scan(&free, "functional", None)).await;
    assert_eq!(scripts_run(&server.url()).await, scripts + 5);
    // The same 402, but for the rate limit's count, which B's request lowered by one more.
    assert_eq!(header(&local.1, "x-ratelimit-remaining"), 28);
    assert_eq!(header(&asked.1, "x-ratelimit-remaining"), 27);
    asked.1.insert(
        "x-ratelimit-remaining",
        local.1["x-ratelimit-remaining"].clone(),
    );
    same_answer(&local, &asked);
    assert_eq!(local.0, 402);
    // On Pro (500 a month) the same tenant asks Redis, and is admitted.
    let pro = Tenant::new("spent", Plan::PRO, "k");
    assert_eq!(send(&a, scan(&pro, "functional", None)).await.0, 202);
    // A new month asks Redis too: the period is part of what is remembered.
    clock.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(send(&a, scan(&free, "functional", None)).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_are_bounded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let b = backend(&server.url());
    let store = rate(&b).local_refusals(2);
    let svc = instance(store.clone(), &b, &clock);
    for t in 0..3 {
        let tenant = Tenant::new(format!("t{t}"), Plan::FREE, "k");
        for _ in 0..30 {
            assert_eq!(send(&svc, plain(&tenant, "/")).await.0, 200);
        }
        assert_eq!(send(&svc, plain(&tenant, "/")).await.0, 429);
    }
    assert_eq!(store.known_refusals(), 2);
    // Once the known refusals have lapsed, a new one replaces them.
    clock.advance(Duration::from_secs(3));
    let tenant = Tenant::new("t3", Plan::FREE, "k");
    for _ in 0..30 {
        send(&svc, plain(&tenant, "/")).await;
    }
    assert_eq!(send(&svc, plain(&tenant, "/")).await.0, 429);
    assert_eq!(store.known_refusals(), 1);
}

/// `n` requests of `tenant` at once, alternating between `services`: how many passed.
async fn admitted(services: &[Svc], tenant: &Tenant, n: usize) -> usize {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let service = services[i % services.len()].clone();
            let req = plain(tenant, "/");
            tokio::spawn(async move { service.oneshot(req).await.unwrap().status() })
        })
        .collect();
    let mut passed = 0;
    for call in calls {
        let status = call.await.unwrap();
        if status == StatusCode::OK {
            passed += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_fallback_holds_a_share_while_redis_is_down() {
    let Some(mut server) = RedisServer::start_durable() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let three = NonZeroU32::new(3).unwrap();
    let (ba, bb) = (backend(&server.url()), backend(&server.url()));
    let fallback_a = LocalFallback::new(rate(&ba), three);
    let a = instance(fallback_a.clone(), &ba, &clock);
    let b = instance(LocalFallback::new(rate(&bb), three), &bb, &clock);
    let free = Tenant::new("steady", Plan::FREE, "k");
    for remaining in (25..30).rev() {
        let got = send(&a, plain(&free, "/")).await;
        assert_eq!(got.0, 200);
        assert_eq!(header(&got.1, "x-ratelimit-limit"), 30);
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), remaining);
    }

    server.stop();
    // Down: the first check fails and is answered locally, at a third of Free's 30.
    let got = send(&a, plain(&free, "/")).await;
    assert_eq!(got.0, 200);
    assert!(fallback_a.is_local());
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 10);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 9);
    for remaining in (0..9).rev() {
        let got = send(&a, plain(&free, "/")).await;
        assert_eq!(header(&got.1, "x-ratelimit-remaining"), remaining);
    }
    let refused = send(&a, plain(&free, "/")).await;
    assert_eq!(refused.0, 429);
    assert_eq!(header(&refused.1, "x-ratelimit-limit"), 10);
    assert_eq!(header(&refused.1, "retry-after"), 6);
    // Under load, each instance holds its share: 10 on each of the two, out of 100.
    let other = Tenant::new("burst", Plan::FREE, "k");
    let both = [a.clone(), b.clone()];
    let passed = tokio::time::timeout(Duration::from_secs(20), admitted(&both, &other, 100))
        .await
        .expect("no hang while Redis is down");
    assert_eq!(passed, 20);

    // Redis is back: after each `retry_every` one request asks it (the connection may take a
    // few tries to come back), and then the shared limit applies again, from the state Redis
    // kept: 5 requests at 0 s, so `e` seconds later 58 − max(10 − e, 0) seconds of room
    // remain after this one, at 2 s a request.
    server.restart();
    let mut elapsed = 0u64;
    let got = loop {
        clock.advance(Duration::from_secs(1));
        elapsed += 1;
        let got = send(&a, plain(&free, "/")).await;
        if header(&got.1, "x-ratelimit-limit") == 30 {
            break got;
        }
        assert!(elapsed < 20, "Redis did not answer again");
    };
    assert_eq!(got.0, 200);
    assert!(!fallback_a.is_local());
    let backlog = 10u64.saturating_sub(elapsed);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), (58 - backlog) / 2);
    send(&b, plain(&free, "/")).await;
    let fresh = Tenant::new("after", Plan::FREE, "k");
    assert_eq!(admitted(&both, &fresh, 100).await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_a_cluster_admit_exactly_the_limits() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let (ba, bb) = (backend(&cluster.spec()), backend(&cluster.urls().join(",")));
    assert!(ba.is_cluster() && bb.is_cluster());
    let both = [
        instance(rate(&ba), &ba, &clock),
        instance(rate(&bb), &bb, &clock),
    ];
    // Tenants on every node: each gets exactly its limit across both instances.
    for t in 0..6 {
        let team = Tenant::new(format!("team-{t}"), Plan::TEAM, "k");
        assert_eq!(admitted(&both, &team, 400).await, 300, "tenant {t}");
    }
    // Quota and running scans: a Pro tenant may run 3 at a time; 16 at once start exactly 3.
    let pro = Tenant::new("cluster-pro", Plan::PRO, "k");
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let service = both[i % 2].clone();
            let mut req = scan(&pro, "functional", None);
            req.headers_mut()
                .insert("x-slot", http::HeaderValue::from_static("keep"));
            tokio::spawn(async move { service.oneshot(req).await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [[202; 3].as_slice(), &[429; 13]].concat());
    // Free's 50 scans a month, one at a time (Free runs one scan at a time) alternating
    // between the instances: exactly 50, then 402.
    let free = Tenant::new("cluster-free", Plan::FREE, "k");
    for i in 0..56 {
        if i % 25 == 24 {
            clock.advance(Duration::from_secs(60));
        }
        let status = send(&both[i % 2], scan(&free, "functional", None)).await.0;
        assert_eq!(status, if i < 50 { 202 } else { 402 }, "scan {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_slot_is_followed() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let b = backend(&cluster.spec());
    let svc = instance(rate(&b), &b, &clock);
    // This tenant's hash tag is in slot 0, the lowest slot of the first node.
    let moving = Tenant::new("moving-5623", Plan::FREE, "k");
    assert_eq!(cluster.owner(0), 0);
    for i in 0..20 {
        assert_eq!(
            send(&svc, scan(&moving, "functional", None)).await.0,
            202,
            "{i}"
        );
    }
    cluster.reshard_one(0, 1);
    assert_eq!(cluster.owner(0), 1, "slot 0 moved");
    // The instance's slot map is stale: it gets MOVED, follows it, and the state moved too.
    let got = send(&svc, scan(&moving, "functional", None)).await;
    assert_eq!(got.0, 202);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 9);
    clock.advance(Duration::from_secs(60));
    for _ in 0..29 {
        assert_eq!(send(&svc, scan(&moving, "functional", None)).await.0, 202);
    }
    assert_eq!(send(&svc, scan(&moving, "functional", None)).await.0, 402);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_as_configured_without_hanging() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let b = RedisBackend::open_cluster_with_timeout(&cluster.urls(), Duration::from_millis(300))
        .unwrap()
        .prefix("scale:");
    let fallback = LocalFallback::new(rate(&b), NonZeroU32::new(2).unwrap());
    let svc = instance(fallback.clone(), &b, &clock);
    let victim = Tenant::new("moving-5623", Plan::FREE, "k");
    assert_eq!(send(&svc, scan(&victim, "functional", None)).await.0, 202);
    cluster.kill(0);
    // The slot's master is gone: quota fails closed (500) and the rate limit goes local
    // (half of Free's 30), each within the bound.
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        send(&svc, scan(&victim, "functional", None)),
    )
    .await
    .expect("answered, not hung");
    crate::common::assert_envelope(&got, 500, crate::common::INTERNAL);
    let got = tokio::time::timeout(Duration::from_secs(10), send(&svc, plain(&victim, "/")))
        .await
        .expect("answered, not hung");
    assert_eq!(got.0, 200);
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 15);
    assert!(fallback.is_local());
}

#[tokio::test]
async fn one_configuration_string_names_a_server_or_a_cluster() {
    let single = RedisBackend::from_config("redis://127.0.0.1:6379/").unwrap();
    assert!(!single.is_cluster());
    for cluster in [
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "redis://127.0.0.1:7000/, redis://127.0.0.1:7001/",
        "redis+cluster://127.0.0.1:7000",
    ] {
        assert!(
            RedisBackend::from_config(cluster).unwrap().is_cluster(),
            "{cluster}"
        );
    }
    for bad in [
        "",
        "redis+cluster://",
        "not a url",
        "redis://127.0.0.1:7000/,nonsense",
    ] {
        let error = RedisBackend::from_config(bad).unwrap_err();
        assert!(!error.to_string().is_empty(), "{bad}");
    }
    // A password in the URL is never shown.
    let debug = format!(
        "{:?}",
        RedisBackend::from_config("redis://:s3cret@127.0.0.1:6379/").unwrap()
    );
    assert!(!debug.contains("s3cret"), "{debug}");
    for bad in [
        "redis://:s3cret@127.0.0.1:port/",
        "redis+cluster://:s3cret@[::1",
    ] {
        let error = RedisBackend::from_config(bad).unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_a_cluster_opened_as_one_server() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let right = RedisBackend::from_config(&cluster.spec()).unwrap();
    right.ping().await.unwrap();
    // One node's URL alone: taken for a server. `ping` says what is wrong, and so do the
    // stores' errors for tenants whose slot is elsewhere.
    let wrong = RedisBackend::from_config(&cluster.urls()[0]).unwrap();
    let error = format!("{:#}", wrong.ping().await.unwrap_err());
    assert!(error.contains("Redis Cluster node"), "{error}");
    let store = RedisRateStore::new(wrong);
    // Slot 0 is on the first node; this tenant's slot (15891) is on the third.
    let elsewhere = tower_nat::tenant::TenantId::from("t");
    let error = store
        .check_async(&elsewhere, 30, Duration::ZERO)
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("MOVED") && error.contains("redis+cluster://"),
        "{error}"
    );
    let single = RedisServer::start().unwrap();
    RedisBackend::from_config(&single.url())
        .unwrap()
        .ping()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_asks_redis_again_and_the_share_follows_the_fleet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = FakeClock::at_date(UtcDate::new(2026, 5, 1).unwrap());
    let b = backend(&server.url());
    let quota = RedisQuotaStore::new(b.clone()).time_source(TimeSource::Caller);
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(
            QuotaGuardLayer::new(Plans::default())
                .with_store(quota.clone())
                .clock(Arc::new(clock.clone())),
        )
        .service(handler());
    let free = Tenant::new("refunded", Plan::FREE, "k");
    for _ in 0..50 {
        assert_eq!(send(&svc, scan(&free, "functional", None)).await.0, 202);
    }
    assert_eq!(send(&svc, scan(&free, "functional", None)).await.0, 402);
    assert_eq!(quota.known_exhausted(), 1);
    // An operator refunds 5 scans in Redis; this instance still knows the quota spent...
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("HINCRBY")
        .arg("scale:q:{refunded}:2026-05-01:used")
        .arg("f")
        .arg(-5)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(send(&svc, scan(&free, "functional", None)).await.0, 402);
    // ... until it forgets: then Redis answers, with the 5 scans back.
    quota.forget(free.id());
    for _ in 0..5 {
        assert_eq!(send(&svc, scan(&free, "functional", None)).await.0, 202);
    }
    assert_eq!(send(&svc, scan(&free, "functional", None)).await.0, 402);

    // The fallback's share follows the fleet's size.
    let fallback = LocalFallback::new(rate(&b), NonZeroU32::new(3).unwrap());
    assert_eq!(fallback.share(30), 10);
    fallback.clone().set_instances(NonZeroU32::new(2).unwrap());
    assert_eq!(fallback.share(30), 15);
    fallback.set_instances(NonZeroU32::new(60).unwrap());
    assert_eq!(fallback.share(30), 1);
}
