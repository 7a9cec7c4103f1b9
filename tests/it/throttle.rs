//! Failed authentication throttled per client address: 429 after the limit, before any lookup;
//! keys known to be live keep working; honest Retry-After; trusted proxies; off switch; and
//! over real loopback HTTP with axum's `ConnectInfo`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::Request;
use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKey, ApiKeyAuthLayer, CachedKeyStore, ClientAddr, KeyFormat, MemoryKeyStore},
    clock::{FakeClock, UtcDate},
    plan::Plan,
};

use crate::common::{Counted, UNAUTHORIZED, assert_envelope, empty, get, header, send, stores::Db};

const THROTTLED: &str = r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 3 seconds.","retry_after":3}"#;

fn from(
    addr: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = get("/api/v1/usage");
    if let Some(key) = key {
        b = b.header("x-api-key", key);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let mut req = empty(b);
    req.extensions_mut()
        .insert(ClientAddr(SocketAddr::new(addr.parse().unwrap(), 40000)));
    req
}

struct Setup {
    db: Db,
    clock: FakeClock,
    live: ApiKey,
    handler: Counted,
}

fn setup() -> Setup {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let live = keys.issue_key("acme", None).unwrap().key;
    Setup {
        db: Db::new(keys),
        clock: FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap()),
        live,
        handler: Counted::default(),
    }
}

#[tokio::test]
async fn twenty_failures_a_minute_then_429_before_any_lookup() {
    let s = setup();
    let cache = CachedKeyStore::new(s.db.clone());
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(cache).clock(Arc::new(s.clock.clone())))
        .service(s.handler.service());
    // The live key is known (cached) before the attack.
    assert_eq!(
        send(&service, from("192.0.2.1", Some(s.live.expose()), &[]))
            .await
            .0,
        200
    );
    assert_eq!(s.db.queries(), 1);

    // Missing, malformed and unknown keys all count.
    assert_envelope(
        &send(&service, from("192.0.2.1", None, &[])).await,
        401,
        UNAUTHORIZED,
    );
    assert_envelope(
        &send(&service, from("192.0.2.1", Some("nope"), &[])).await,
        401,
        UNAUTHORIZED,
    );
    for _ in 0..18 {
        let unknown = ApiKey::generate();
        let reply = send(&service, from("192.0.2.1", Some(unknown.expose()), &[])).await;
        assert_envelope(&reply, 401, UNAUTHORIZED);
    }
    assert_eq!(s.db.queries(), 19);
    for _ in 0..50 {
        let unknown = ApiKey::generate();
        let reply = send(&service, from("192.0.2.1", Some(unknown.expose()), &[])).await;
        assert_envelope(&reply, 429, THROTTLED);
        assert_eq!(header(&reply.1, "retry-after"), 3);
        assert_eq!(header(&reply.1, "x-ratelimit-limit"), 20);
        assert_eq!(header(&reply.1, "x-ratelimit-remaining"), 0);
    }
    // No lookup for any of them, and the handler never ran for a refusal.
    assert_eq!(s.db.queries(), 19);
    assert_eq!(s.handler.calls(), 1);
    // The known key still works from that address; other addresses are not throttled.
    assert_eq!(
        send(&service, from("192.0.2.1", Some(s.live.expose()), &[]))
            .await
            .0,
        200
    );
    assert_envelope(
        &send(&service, from("192.0.2.2", None, &[])).await,
        401,
        UNAUTHORIZED,
    );

    // Retry-After is honest: after 3 s, one more try is looked up; then throttled again.
    s.clock.advance(Duration::from_millis(2999));
    let reply = send(&service, from("192.0.2.1", None, &[])).await;
    assert_eq!(reply.0, 429);
    assert_eq!(header(&reply.1, "retry-after"), 1);
    s.clock.advance(Duration::from_millis(1));
    let unknown = ApiKey::generate();
    assert_envelope(
        &send(&service, from("192.0.2.1", Some(unknown.expose()), &[])).await,
        401,
        UNAUTHORIZED,
    );
    assert_eq!(s.db.queries(), 20);
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 429);
    // A quiet minute forgets the address.
    s.clock.advance(Duration::from_secs(60));
    assert_envelope(
        &send(&service, from("192.0.2.1", None, &[])).await,
        401,
        UNAUTHORIZED,
    );
}

#[tokio::test]
async fn a_throttled_address_gets_429_for_live_keys_not_yet_known() {
    let s = setup();
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(CachedKeyStore::new(s.db.clone()))
                .clock(Arc::new(s.clock.clone()))
                .failed_auth_limit(2, Duration::from_secs(10)),
        )
        .service(s.handler.service());
    for _ in 0..2 {
        assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 401);
    }
    let reply = send(&service, from("192.0.2.1", Some(s.live.expose()), &[])).await;
    assert_eq!(reply.0, 429);
    assert_eq!(header(&reply.1, "retry-after"), 5);
    assert_eq!(header(&reply.1, "x-ratelimit-limit"), 2);
    assert_eq!(s.db.queries(), 0);
}

#[tokio::test]
async fn exempt_routes_requests_without_an_address_and_the_off_switch_are_not_throttled() {
    let s = setup();
    let layer = ApiKeyAuthLayer::new(s.db.clone())
        .clock(Arc::new(s.clock.clone()))
        .exempt("/healthz")
        .failed_auth_limit(1, Duration::from_secs(60));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(s.handler.service());
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 401);
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 429);
    let mut health = from("192.0.2.1", None, &[]);
    *health.uri_mut() = "/healthz".parse().unwrap();
    assert_eq!(send(&service, health).await.0, 200);
    for _ in 0..5 {
        assert_eq!(send(&service, empty(get("/api/v1/usage"))).await.0, 401);
    }
    let off = ServiceBuilder::new()
        .layer(layer.without_failed_auth_limit())
        .service(s.handler.service());
    for _ in 0..5 {
        assert_eq!(send(&off, from("192.0.2.9", None, &[])).await.0, 401);
    }
}

#[tokio::test]
async fn behind_trusted_proxies_the_forwarded_client_is_throttled() {
    let s = setup();
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(s.db.clone())
                .clock(Arc::new(s.clock.clone()))
                .failed_auth_limit(1, Duration::from_secs(60))
                .trusted_proxies(["10.0.0.0/8".parse().unwrap()]),
        )
        .service(s.handler.service());
    let via = |client: &str| [("x-forwarded-for", client.to_owned())];
    let req = |client: &str| {
        let h = via(client);
        from("10.1.1.1", None, &[(h[0].0, h[0].1.as_str())])
    };
    assert_eq!(send(&service, req("198.51.100.1")).await.0, 401);
    assert_eq!(send(&service, req("198.51.100.1")).await.0, 429);
    // Another client behind the same proxy is not.
    assert_eq!(send(&service, req("198.51.100.2")).await.0, 401);
    // A client that forges the header without a trusted proxy is throttled by its own address.
    let forged = from("203.0.113.5", None, &[("x-forwarded-for", "198.51.100.3")]);
    assert_eq!(send(&service, forged).await.0, 401);
    let forged = from("203.0.113.5", None, &[("x-forwarded-for", "198.51.100.4")]);
    assert_eq!(send(&service, forged).await.0, 429);
}

#[tokio::test]
async fn checksummed_keys_with_a_wrong_checksum_are_refused_without_a_lookup() {
    let s = setup();
    let format = KeyFormat::default().prefix("acme_").checksum(true);
    let keys = MemoryKeyStore::new().format(format.clone());
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let key = keys.issue_key("acme", None).unwrap().key;
    let db = Db::new(keys);
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(db.clone())
                .key_format(format)
                .key_header(http::HeaderName::from_static("x-acme-key")),
        )
        .service(s.handler.service());
    let with = |name: &str, value: &str| empty(get("/").header(name, value));
    assert_eq!(
        send(&service, with("x-acme-key", key.expose())).await.0,
        200
    );
    // The default header is not read when another is configured.
    assert_envelope(
        &send(&service, with("x-api-key", key.expose())).await,
        401,
        UNAUTHORIZED,
    );
    let mut forged = key.expose().to_owned();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    assert_envelope(
        &send(&service, with("x-acme-key", &forged)).await,
        401,
        UNAUTHORIZED,
    );
    assert_eq!(db.queries(), 1);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn over_loopback_two_hundred_random_keys_make_at_most_twenty_one_queries() {
    use crate::common::wire::Wire;
    use axum::{Router, routing::get as route};
    use tower_nat::NatLayer;

    let s = setup();
    let keys = CachedKeyStore::new(s.db.clone());
    let app = Router::new()
        .route("/api/v1/usage", route(|| async { "ok" }))
        .layer(NatLayer::new(keys));
    let wire = Wire::start(app).await;
    let reply = wire
        .call(
            http::Method::GET,
            "/api/v1/usage",
            Some(s.live.expose()),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let key = ApiKey::generate();
        let reply = wire
            .call(http::Method::GET, "/api/v1/usage", Some(key.expose()), None)
            .await;
        if reply.status == 429 {
            assert!(header(&reply.headers, "retry-after") >= 1);
            assert_eq!(
                reply.body,
                format!(
                    r#"{{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after {} seconds.","retry_after":{}}}"#,
                    header(&reply.headers, "retry-after"),
                    header(&reply.headers, "retry-after")
                )
            );
        } else {
            reply.assert_envelope(401, UNAUTHORIZED);
        }
        statuses.push(reply.status.as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // One query for each of the first 20 random keys, none after (the live key's lookup
    // before them is the 21st).
    assert_eq!(s.db.queries(), 21);
    // The customer's live key, known to the cache, still works from the same address.
    let reply = wire
        .call(
            http::Method::GET,
            "/api/v1/usage",
            Some(s.live.expose()),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
}

#[tokio::test]
async fn a_throttled_address_keeps_keys_it_used_after_their_cache_entry_expires() {
    let s = setup();
    let cache = CachedKeyStore::new(s.db.clone()).clock(Arc::new(s.clock.clone()));
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(cache)
                .clock(Arc::new(s.clock.clone()))
                .failed_auth_limit(1, Duration::from_secs(3600)),
        )
        .service(s.handler.service());
    let fresh_key = s.db.keys.issue_key("acme", None).unwrap().key;
    assert_eq!(
        send(&service, from("192.0.2.1", Some(s.live.expose()), &[]))
            .await
            .0,
        200
    );
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 401);
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 429);
    assert_eq!(s.db.queries(), 1);
    // The cache entry expires (60 s); the address is still throttled (1 an hour).
    s.clock.advance(Duration::from_secs(61));
    assert_eq!(send(&service, from("192.0.2.1", None, &[])).await.0, 429);
    // The key it used before is looked up again, once, and works.
    assert_eq!(
        send(&service, from("192.0.2.1", Some(s.live.expose()), &[]))
            .await
            .0,
        200
    );
    assert_eq!(
        send(&service, from("192.0.2.1", Some(s.live.expose()), &[]))
            .await
            .0,
        200
    );
    assert_eq!(s.db.queries(), 2);
    // A live key this cache never saw is refused without a query.
    let reply = send(&service, from("192.0.2.1", Some(fresh_key.expose()), &[])).await;
    assert_eq!(reply.0, 429);
    assert_eq!(s.db.queries(), 2);
}

/// The trial's flush: thousands of other addresses failing did reset a throttled address to
/// a fresh 20. Now a throttled address stays throttled for its window whatever others send,
/// no address gets more than its 20 lookups, and with a full table the newcomers share one
/// allowance of 20 (here a table of 64 addresses, to fill it quickly).
#[tokio::test]
async fn a_flood_from_many_addresses_neither_frees_nor_feeds_anyone() {
    let s = setup();
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(s.db.clone())
                .clock(Arc::new(s.clock.clone()))
                .failed_auth_capacity(64),
        )
        .service(s.handler.service());
    let bad = ApiKey::generate();
    for _ in 0..20 {
        let reply = send(&service, from("192.0.2.7", Some(bad.expose()), &[])).await;
        assert_eq!(reply.0, 401);
    }
    assert_eq!(
        send(&service, from("192.0.2.7", Some(bad.expose()), &[]))
            .await
            .0,
        429
    );
    assert_eq!(s.db.queries(), 20);
    // 1,000 other addresses, 20 tries each, within the same minute.
    for _ in 0..20 {
        for i in 0..1_000u32 {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
            send(&service, from(&ip, Some(bad.expose()), &[])).await;
        }
        s.clock.advance(Duration::from_millis(10));
    }
    // The victim is still throttled, with the wait of its own window.
    let reply = send(&service, from("192.0.2.7", Some(bad.expose()), &[])).await;
    assert_eq!(reply.0, 429);
    assert_eq!(header(&reply.1, "retry-after"), 3);
    // At most 20 lookups for each address the table holds (64 at most), and 20 for all the
    // others together: 1,000 addresses got about 1,300 lookups, not 20,000.
    let flood = s.db.queries() - 20;
    println!("lookups for the flood of 1,000 addresses x 20: {flood}");
    assert!(flood <= 20 * 64 + 20, "{flood}");
    assert!(flood >= 20 * 8, "{flood}");
}

#[tokio::test]
async fn ipv6_clients_are_throttled_by_their_slash_64() {
    let s = setup();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(s.db.clone()).clock(Arc::new(s.clock.clone())))
        .service(s.handler.service());
    // 20 failures from 20 addresses of one /64: the whole /64 is throttled.
    for i in 1..=20 {
        let ip = format!("2001:db8:0:7::{i:x}");
        assert_eq!(send(&service, from(&ip, None, &[])).await.0, 401);
    }
    assert_eq!(
        send(&service, from("2001:db8:0:7::ffff", None, &[]))
            .await
            .0,
        429
    );
    assert_eq!(
        send(&service, from("2001:db8:0:8::1", None, &[])).await.0,
        401
    );
    // Counted by whole address when configured so.
    let per_address = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(s.db.clone())
                .clock(Arc::new(s.clock.clone()))
                .failed_auth_ipv6_prefix(128),
        )
        .service(s.handler.service());
    for i in 1..=21 {
        let ip = format!("2001:db8:0:9::{i:x}");
        assert_eq!(send(&per_address, from(&ip, None, &[])).await.0, 401);
    }
}

/// The attack trial's oracle: a throttled address got 401 for an expired key the store
/// knew, and 429 for an unknown one, so it could tell keys that once existed. Now everything
/// but a live key is the same 429.
#[tokio::test]
async fn a_throttled_address_learns_nothing_about_expired_keys() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let live = keys.issue_key("acme", None).unwrap().key;
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let expires_at = tower_nat::clock::Clock::now(&clock) + Duration::from_secs(10);
    let expiring = keys.issue_key("acme", Some(expires_at)).unwrap().key;
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(keys).clock(Arc::new(clock.clone())))
        .service(Counted::default().service());
    clock.advance(Duration::from_secs(11));
    // Before the throttle: the expired key is the one 401.
    let reply = send(&service, from("192.0.2.3", Some(expiring.expose()), &[])).await;
    assert_envelope(&reply, 401, UNAUTHORIZED);
    for _ in 0..19 {
        let unknown = ApiKey::generate();
        send(&service, from("192.0.2.3", Some(unknown.expose()), &[])).await;
    }
    let expired = send(&service, from("192.0.2.3", Some(expiring.expose()), &[])).await;
    let unknown = send(
        &service,
        from("192.0.2.3", Some(ApiKey::generate().expose()), &[]),
    )
    .await;
    assert_envelope(&expired, 429, THROTTLED);
    assert_envelope(&unknown, 429, THROTTLED);
    assert_eq!(expired.1, unknown.1);
    assert_eq!(
        send(&service, from("192.0.2.3", Some(live.expose()), &[]))
            .await
            .0,
        200
    );
}

/// The second attack trial's finding: the throttle's check and its count were apart, so 400
/// concurrent lookups from one fresh address all reached the database (the check saw no
/// failure yet). Each lookup that goes to the store is now counted before it starts, and
/// given back if the key is live: of 400 concurrent random keys, 20 are looked up, 380 get
/// 429 at once. A client's own burst on a cold cache (one key, 100 requests at once) counts
/// one failure at most while in flight, and none once the key is found live.
#[tokio::test]
async fn concurrent_lookups_from_one_address_cannot_outrun_the_throttle() {
    // The service is not `Sync`: its calls run as local tasks.
    tokio::task::LocalSet::new()
        .run_until(burst_and_attack())
        .await;
}

async fn burst_and_attack() {
    let s = setup();
    s.db.hold(true);
    let cache = CachedKeyStore::new(s.db.clone()).clock(Arc::new(s.clock.clone()));
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(cache).clock(Arc::new(s.clock.clone())))
        .service(s.handler.service());

    // A client's burst with its one live key, before the cache knows it.
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let service = service.clone();
            let key = s.live.expose().to_owned();
            tokio::task::spawn_local(async move {
                send(&service, from("10.9.0.1", Some(&key), &[])).await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    s.db.release(1_000);
    for reply in burst {
        assert_eq!(reply.await.unwrap().0, 200);
    }
    assert_eq!(s.db.queries(), 1);

    // An attacker's burst of distinct random keys from one address.
    let attack: Vec<_> = (0..400)
        .map(|_| {
            let service = service.clone();
            let key = ApiKey::generate().expose().to_owned();
            tokio::task::spawn_local(async move {
                send(&service, from("10.9.0.2", Some(&key), &[])).await
            })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    s.db.release(1_000);
    let mut statuses = std::collections::BTreeMap::new();
    for reply in attack {
        let reply = reply.await.unwrap();
        *statuses.entry(reply.0.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 20), (429, 380)].into());
    assert_eq!(s.db.queries(), 1 + 20);
    // The client's address was never throttled: its key was live.
    let reply = send(&service, from("10.9.0.1", Some(s.live.expose()), &[])).await;
    assert_eq!(reply.0, 200);
    let reply = send(
        &service,
        from("10.9.0.1", Some(ApiKey::generate().expose()), &[]),
    )
    .await;
    assert_envelope(&reply, 401, UNAUTHORIZED);
}
