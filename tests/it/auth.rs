//! ApiKeyAuth: every 401 cause, expiry, revocation, exempt routes, key hygiene; one suite run
//! against the in-memory store and against a store that answers later, and a store that
//! fails.

use std::{sync::Arc, time::Duration};

use http::HeaderValue;
use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKey, ApiKeyAuthLayer, KeyFormat, KeyStore, MemoryKeyStore},
    clock::{FakeClock, UtcDate},
    plan::Plan,
    tenant::Tenant,
};

use crate::common::{
    Counted, INTERNAL, UNAUTHORIZED, assert_envelope, empty, get, send,
    stores::{BROKEN, Broken, Later},
};

struct Fixture {
    store: MemoryKeyStore,
    clock: FakeClock,
    live: ApiKey,
    revoked: ApiKey,
    expired: ApiKey,
    deleted: ApiKey,
}

fn fixture() -> Fixture {
    let store = MemoryKeyStore::new();
    let clock = FakeClock::at_date(UtcDate::new(2025, 6, 15).unwrap());
    store.insert_tenant("acme", Plan::PRO).unwrap();
    store.insert_tenant("gone", Plan::TEAM).unwrap();
    let live = store.issue_key("acme", None).unwrap().key;
    let revoked = ApiKey::generate();
    let id = store.add_key("acme", &revoked, None).unwrap();
    assert!(store.revoke(&id));
    let expired = store
        .issue_key("acme", Some(Duration::from_secs(1_700_000_000)))
        .unwrap()
        .key;
    let deleted = store.issue_key("gone", None).unwrap().key;
    assert!(store.delete_tenant("gone"));
    Fixture {
        store,
        clock,
        live,
        revoked,
        expired,
        deleted,
    }
}

/// The key-store suite: every case below runs against each store, built from the in-memory
/// store the case fills.
macro_rules! key_store_suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(|s| s).await;
                }
            )*
        }
        mod later {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(crate::common::stores::Later).await;
                }
            )*
        }
        /// Through the cache, over a store that answers later and announces its changes.
        mod cached {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(|s| {
                        tower_nat::auth::CachedKeyStore::new(crate::common::stores::Later(s))
                    })
                    .await;
                }
            )*
        }
    };
}

key_store_suite!(
    every_401_cause_gives_the_same_bytes_and_never_reaches_the_handler,
    expiry_follows_the_injected_clock,
    revocation_deletion_and_plan_changes_apply_to_the_next_request,
    exempt_routes_pass_without_a_key_and_others_do_not,
    custom_key_formats,
    keys_found_again_by_their_tag_see_each_change_at_once,
);

/// A key found often enough to be found by its tag (no SHA-256) still sees every change made
/// through the store on its next request.
async fn keys_found_again_by_their_tag_see_each_change_at_once<K: KeyStore>(
    wrap: impl Fn(MemoryKeyStore) -> K,
) {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::FREE).unwrap();
    let key = store.issue_key("acme", None).unwrap();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(wrap(store.clone())))
        .service_fn(|req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let t = Tenant::of(&req).unwrap();
            let body = format!("{} {}", t.plan().name(), t.key_id());
            async { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
        });
    let call = |k: &ApiKey| send(&service, empty(get("/x").header("x-api-key", k.expose())));
    let three = |k: ApiKey, body: String| {
        let call = &call;
        async move {
            for _ in 0..3 {
                let reply = call(&k).await;
                assert_eq!(reply.0, 200);
                assert_eq!(reply.2, body.as_bytes());
            }
        }
    };

    three(key.key.clone(), format!("free {}", key.id)).await;
    store.set_plan("acme", Plan::TEAM).unwrap();
    three(key.key.clone(), format!("team {}", key.id)).await;

    // A second key issued does not disturb the first; revoking it leaves the first alone.
    let second = store.issue_key("acme", None).unwrap();
    three(second.key.clone(), format!("team {}", second.id)).await;
    assert!(store.revoke(&second.id));
    assert_envelope(&call(&second.key).await, 401, UNAUTHORIZED);
    three(key.key.clone(), format!("team {}", key.id)).await;

    // Expiry set in the past, then lifted.
    assert!(store.set_expiry(&key.id, Some(Duration::from_secs(1))));
    assert_envelope(&call(&key.key).await, 401, UNAUTHORIZED);
    assert!(store.set_expiry(&key.id, None));
    three(key.key.clone(), format!("team {}", key.id)).await;

    // Rotation without grace: the successor works, the old key stops.
    let next = store.rotate(&key.id, Duration::ZERO).unwrap();
    assert_envelope(&call(&key.key).await, 401, UNAUTHORIZED);
    three(next.key.clone(), format!("team {}", next.id)).await;

    assert!(store.delete_tenant("acme"));
    assert_envelope(&call(&next.key).await, 401, UNAUTHORIZED);
    assert_envelope(&call(&next.key).await, 401, UNAUTHORIZED);
}

async fn every_401_cause_gives_the_same_bytes_and_never_reaches_the_handler<K: KeyStore>(
    store: impl Fn(MemoryKeyStore) -> K,
) {
    let f = fixture();
    let handler = Counted::default();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(store(f.store.clone())).clock(Arc::new(f.clock.clone())))
        .service(handler.service());
    let live = f.live.expose().to_owned();
    let cases: Vec<(&str, Vec<(&str, HeaderValue)>)> = vec![
        ("missing", vec![]),
        ("empty", vec![("x-api-key", HeaderValue::from_static(""))]),
        (
            "leading space",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&format!(" {live}")).unwrap(),
            )],
        ),
        (
            "trailing tab",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&format!("{live}\t")).unwrap(),
            )],
        ),
        (
            "wrong prefix",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&live.replace("nat_pk_", "nat_sk_")).unwrap(),
            )],
        ),
        (
            "uppercase prefix",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&live.replace("nat_pk_", "NAT_PK_")).unwrap(),
            )],
        ),
        (
            "no prefix",
            vec![("x-api-key", HeaderValue::from_str(&live[7..]).unwrap())],
        ),
        (
            "truncated",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&live[..live.len() - 1]).unwrap(),
            )],
        ),
        (
            "one char too many",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&format!("{live}x")).unwrap(),
            )],
        ),
        (
            "unknown",
            vec![(
                "x-api-key",
                HeaderValue::from_str(ApiKey::generate().expose()).unwrap(),
            )],
        ),
        (
            "revoked",
            vec![(
                "x-api-key",
                HeaderValue::from_str(f.revoked.expose()).unwrap(),
            )],
        ),
        (
            "expired",
            vec![(
                "x-api-key",
                HeaderValue::from_str(f.expired.expose()).unwrap(),
            )],
        ),
        (
            "deleted tenant",
            vec![(
                "x-api-key",
                HeaderValue::from_str(f.deleted.expose()).unwrap(),
            )],
        ),
        (
            "two X-API-Key headers, both valid",
            vec![
                ("x-api-key", HeaderValue::from_str(&live).unwrap()),
                ("x-api-key", HeaderValue::from_str(&live).unwrap()),
            ],
        ),
        (
            "non-ASCII bytes",
            vec![(
                "x-api-key",
                HeaderValue::from_bytes(format!("nat_pk_{}é", &live[7..37]).as_bytes()).unwrap(),
            )],
        ),
        (
            "64 KiB key",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&format!("nat_pk_{}", "a".repeat(65_536))).unwrap(),
            )],
        ),
        (
            "Bearer only",
            vec![(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {live}")).unwrap(),
            )],
        ),
        (
            "Bearer plus a bad X-API-Key",
            vec![
                (
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {live}")).unwrap(),
                ),
                ("x-api-key", HeaderValue::from_static("nat_pk_nope")),
            ],
        ),
        (
            "key in a differently named header",
            vec![("x-api-token", HeaderValue::from_str(&live).unwrap())],
        ),
        (
            "key with an inner space",
            vec![(
                "x-api-key",
                HeaderValue::from_str(&format!("{} {}", &live[..20], &live[21..])).unwrap(),
            )],
        ),
    ];
    assert!(cases.len() >= 15);
    for (name, headers) in cases {
        let mut req = get("/api/v1/usage");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let got = send(&service, empty(req)).await;
        assert_eq!(got.0, 401, "{name}");
        assert_envelope(&got, 401, UNAUTHORIZED);
        assert_eq!(got.1.len(), 1, "{name}: only content-type, got {:?}", got.1);
    }
    assert_eq!(handler.calls(), 0);

    // The live key passes: the setup above is not what makes every case fail.
    let got = send(
        &service,
        empty(get("/api/v1/usage").header("x-api-key", &live)),
    )
    .await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"ok"[..]));
    assert_eq!(handler.calls(), 1);
}

async fn expiry_follows_the_injected_clock<K: KeyStore>(wrap: impl Fn(MemoryKeyStore) -> K) {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::FREE).unwrap();
    let clock = FakeClock::new(Duration::from_secs(1_000));
    let key = store
        .issue_key("acme", Some(Duration::from_secs(1_060)))
        .unwrap()
        .key;
    let handler = Counted::default();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(wrap(store)).clock(Arc::new(clock.clone())))
        .service(handler.service());
    let req = || empty(get("/x").header("x-api-key", key.expose()));

    assert_eq!(send(&service, req()).await.0, 200);
    clock.advance(Duration::from_secs(59));
    assert_eq!(send(&service, req()).await.0, 200);
    clock.advance(Duration::from_secs(1));
    assert_envelope(&send(&service, req()).await, 401, UNAUTHORIZED);
    assert_eq!(handler.calls(), 2);
}

async fn revocation_deletion_and_plan_changes_apply_to_the_next_request<K: KeyStore>(
    wrap: impl Fn(MemoryKeyStore) -> K,
) {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::FREE).unwrap();
    let key = store.issue_key("acme", None).unwrap().key;
    let second = ApiKey::generate();
    let second_id = store.add_key("acme", &second, None).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(wrap(store.clone())))
        .service_fn(
            move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
                let tenant = Tenant::of(&req).unwrap().clone();
                log.lock().unwrap().push(tenant);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<
                        bytes::Bytes,
                    >::default(
                    )))
                }
            },
        );
    let req = |k: &ApiKey| empty(get("/x").header("x-api-key", k.expose()));

    assert_eq!(send(&service, req(&key)).await.0, 200);
    store.set_plan("acme", Plan::TEAM).unwrap();
    assert_eq!(send(&service, req(&second)).await.0, 200);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].plan(), &Plan::FREE);
        assert_eq!(seen[1].plan(), &Plan::TEAM);
        assert_eq!(seen[1].id().as_str(), "acme");
        assert_eq!(seen[1].key_id(), &second_id);
        assert_ne!(seen[0].key_id(), seen[1].key_id());
    }
    store.revoke(&second_id);
    assert_eq!(send(&service, req(&second)).await.0, 401);
    assert_eq!(send(&service, req(&key)).await.0, 200);
    store.delete_tenant("acme");
    assert_eq!(send(&service, req(&key)).await.0, 401);
    assert_eq!(store.key_count(), 0);
}

async fn exempt_routes_pass_without_a_key_and_others_do_not<K: KeyStore>(
    wrap: impl Fn(MemoryKeyStore) -> K,
) {
    let store = MemoryKeyStore::new();
    let handler = Counted::default();
    let service = ServiceBuilder::new()
        .layer(
            ApiKeyAuthLayer::new(wrap(store))
                .exempt("/healthz")
                .exempt("/api/v1/billing/webhook")
                .exempt_prefix("/public/"),
        )
        .service(handler.service());
    for path in [
        "/healthz",
        "/api/v1/billing/webhook",
        "/public",
        "/public/a/b",
    ] {
        assert_eq!(send(&service, empty(get(path))).await.0, 200, "{path}");
    }
    for path in [
        "/healthz/",
        "/HEALTHZ",
        "/api/v1/billing/webhook/x",
        "/publicity",
        "/api/v1/usage",
    ] {
        assert_envelope(&send(&service, empty(get(path))).await, 401, UNAUTHORIZED);
    }
    assert_eq!(handler.calls(), 4);
}

async fn custom_key_formats<K: KeyStore>(wrap: impl Fn(MemoryKeyStore) -> K) {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::FREE).unwrap();
    let hash = tower_nat::auth::KeyHash::of(b"nat_pk_short1");
    store.add_hash("acme", hash, None).unwrap();
    let handler = Counted::default();
    let strict = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(wrap(store.clone())))
        .service(handler.service());
    let loose = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(wrap(store)).key_format(KeyFormat::new(6, 40)))
        .service(handler.service());
    let req = || empty(get("/x").header("x-api-key", "nat_pk_short1"));
    assert_eq!(send(&strict, req()).await.0, 401);
    assert_eq!(send(&loose, req()).await.0, 200);
}

#[test]
fn debug_output_never_contains_keys() {
    let f = fixture();
    let layer = ApiKeyAuthLayer::new(f.store.clone());
    let key = f.live.expose();
    for text in [
        format!("{:?}", f.live),
        format!("{:?}", f.live.hash()),
        format!("{:?}", f.store),
        format!("{layer:?}"),
    ] {
        assert!(!text.contains(&key[7..]), "{text}");
        assert!(!text.contains(&key[11..20]), "{text}");
    }
}

#[tokio::test]
async fn a_failing_store_gives_500_without_its_error_now_or_later() {
    for broken in [Broken::Now, Broken::Later] {
        let handler = Counted::default();
        let service = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(broken))
            .service(handler.service());
        let key = ApiKey::generate();
        let got = send(&service, empty(get("/x").header("x-api-key", key.expose()))).await;
        assert_envelope(&got, 500, INTERNAL);
        assert!(!String::from_utf8_lossy(&got.2).contains(BROKEN));
        // A malformed key never reaches the store: 401, not 500.
        let got = send(&service, empty(get("/x").header("x-api-key", "nat_pk_x"))).await;
        assert_envelope(&got, 401, UNAUTHORIZED);
        assert_eq!(handler.calls(), 0, "{broken:?}");
    }
}

#[tokio::test]
async fn the_store_later_answers_like_the_store_in_memory() {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::PRO).unwrap();
    let issued = store.issue_key("acme", None).unwrap();
    let hash = issued.key.hash();
    let memory = match store.lookup(&hash) {
        tower_nat::store::Answer::Ready(r) => r.unwrap(),
        tower_nat::store::Answer::Pending(_) => panic!("the memory store answers at once"),
    };
    let later = match Later(store.clone()).lookup(&hash) {
        tower_nat::store::Answer::Pending(f) => f.await.unwrap(),
        tower_nat::store::Answer::Ready(_) => panic!("the double answers later"),
    };
    assert_eq!(memory, later);
    assert_eq!(memory.unwrap().tenant.key_id(), &issued.id);
}
