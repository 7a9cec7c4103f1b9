//! The admin API, against the in-memory store and a real PostgreSQL (the same suite): every
//! endpoint, its refusals (each in the envelope, changing nothing), the token check on every
//! path, its throttle, the audit events, and changes reaching the auth layer through the cache
//! at once.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_nat::{
    NatLayer,
    admin::AdminApi,
    auth::{ApiKeyAuthLayer, CachedKeyStore, ClientAddr, KeyAdmin, MemoryKeyStore},
    clock::{FakeClock, SharedClock, UtcDate},
    plan::Plans,
    tenant::Tenant,
};

use crate::common::{Answer, UNAUTHORIZED, assert_envelope, empty, get, send};

const TOKEN: &str = "ops-token-0123456789-abcdefghijklmnop";

/// An admin API over `store`, on a fake clock at 2026-03-01, mounted at `/admin` of an app
/// that also has `/api/ping`.
struct Admin<S> {
    app: Router,
    store: S,
    fake: FakeClock,
    clock: SharedClock,
    #[allow(dead_code)]
    guard: Option<Box<dyn std::any::Any + Send>>,
    /// Whether the store keeps revoked keys (PostgreSQL), so a second revocation is done.
    keeps_revoked: bool,
}

fn clock() -> (FakeClock, SharedClock) {
    let fake = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let shared: SharedClock = Arc::new(fake.clone());
    (fake, shared)
}

impl<S: KeyAdmin> Admin<S> {
    fn new(store: S, fake: FakeClock, clock: SharedClock) -> Self {
        let api = AdminApi::new(store.clone())
            .clock(clock.clone())
            .tokens(&format!("ops:{TOKEN}"))
            .unwrap();
        let app = Router::new()
            .route("/api/ping", axum::routing::get(|| async { "pong" }))
            .nest("/admin", api.into_router());
        Self {
            app,
            store,
            fake,
            clock,
            guard: None,
            keeps_revoked: false,
        }
    }

    /// `method path` with the admin token, from 10.0.0.1, with `body` if any.
    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"));
        self.send(req, body, "10.0.0.1").await
    }

    async fn send(&self, req: http::request::Builder, body: Option<&str>, from: &str) -> Answer {
        let addr: SocketAddr = format!("{from}:40000").parse().unwrap();
        let req = req.extension(ClientAddr(addr));
        let req = match body {
            Some(body) => req
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
            None => req.body(Full::default()).unwrap(),
        };
        send(&self.app, req).await
    }
}

fn memory() -> Admin<MemoryKeyStore> {
    let (fake, clock) = clock();
    let store = MemoryKeyStore::new()
        .clock(clock.clone())
        .plans(Plans::default());
    Admin::new(store, fake, clock)
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<Admin<tower_nat::auth::PgKeyStore>> {
    let server = crate::common::pg_server::PgServer::start()?;
    let (fake, clock) = clock();
    let store = tower_nat::auth::PgKeyStore::new(&server.url())
        .unwrap()
        .clock(clock.clone())
        .plans(Plans::default());
    store.migrate().await.unwrap();
    crate::suites::keys::postgres_faults::live(&store).await;
    let mut admin = Admin::new(store, fake, clock);
    admin.guard = Some(Box::new(server));
    admin.keeps_revoked = true;
    Some(admin)
}

fn ok(got: &Answer, status: u16, body: &str) {
    assert_eq!(got.0, status, "{:?}", got.2);
    assert_eq!(
        got.2,
        body.as_bytes(),
        "{}",
        String::from_utf8_lossy(&got.2)
    );
    if !body.is_empty() {
        assert_eq!(got.1["content-type"], "application/json");
    }
}

fn invalid(message: &str) -> String {
    crate::common::invalid(message)
}

fn json(got: &Answer) -> serde_json::Value {
    serde_json::from_slice(&got.2).unwrap()
}

const ACME: &str =
    r#"{"id":"acme","plan":"pro","overrides":{},"created_at":"2026-03-01T00:00:00Z"}"#;

async fn tenants<S: KeyAdmin>(a: Admin<S>) {
    use Method as M;
    ok(
        &a.call(
            M::POST,
            "/admin/tenants",
            Some(r#"{"id":"acme","plan":"pro"}"#),
        )
        .await,
        201,
        ACME,
    );
    ok(
        &a.call(M::GET, "/admin/tenants/acme", None).await,
        200,
        ACME,
    );
    ok(
        &a.call(
            M::POST,
            "/admin/tenants",
            Some(r#"{"id":"acme","plan":"team"}"#),
        )
        .await,
        409,
        r#"{"error":"INVALID_REQUEST","message":"Tenant acme exists already."}"#,
    );

    // Refusals change nothing.
    let refused = [
        (r#"{"id":"beta","plan":"gold"}"#, "Unknown plan: gold."),
        (r#"{"id":"beta","plan":"Gold!"}"#, "Unknown plan: Gold!."),
        (
            r#"{"id":"beta","plan":"pro","extra":1}"#,
            "Invalid JSON body: unknown field `extra`, expected one of `id`, `plan`, `overrides`.",
        ),
        (
            r#"{"id":"beta","#,
            "Invalid JSON body: EOF while parsing a value.",
        ),
        (
            r#"{"id":"beta"}"#,
            "Invalid JSON body: missing field `plan`.",
        ),
        (
            r#"{"id":"be{ta}","plan":"pro"}"#,
            "A tenant id is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not . or ..",
        ),
        (
            r#"{"id":"..","plan":"pro"}"#,
            "A tenant id is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not . or ..",
        ),
        (
            r#"{"id":"beta","plan":"pro","overrides":{"requests_per_minute":"x"}}"#,
            "Invalid JSON body: invalid type: string \"x\", expected u32.",
        ),
    ];
    for (body, message) in refused {
        ok(
            &a.call(M::POST, "/admin/tenants", Some(body)).await,
            400,
            &invalid(message),
        );
    }
    ok(
        &a.call(M::GET, "/admin/tenants/beta", None).await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );

    // Changes: an unknown plan in a change applies neither part.
    ok(
        &a.call(
            M::PATCH,
            "/admin/tenants/acme",
            Some(r#"{"plan":"gold","overrides":{"requests_per_minute":5}}"#),
        )
        .await,
        400,
        &invalid("Unknown plan: gold."),
    );
    ok(
        &a.call(M::GET, "/admin/tenants/acme", None).await,
        200,
        ACME,
    );
    ok(
        &a.call(M::PATCH, "/admin/tenants/acme", Some("{}")).await,
        400,
        &invalid("Give plan, overrides or both."),
    );
    ok(
        &a.call(
            M::PATCH,
            "/admin/tenants/acme",
            Some(r#"{"plan":"team","overrides":{"requests_per_minute":5}}"#),
        )
        .await,
        200,
        r#"{"id":"acme","plan":"team","overrides":{"requests_per_minute":5},"created_at":"2026-03-01T00:00:00Z"}"#,
    );
    ok(
        &a.call(M::PATCH, "/admin/tenants/nobody", Some(r#"{"plan":"pro"}"#))
            .await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );

    // Pages, in id order.
    for id in ["c1", "c2", "c3"] {
        let body = format!(r#"{{"id":"{id}","plan":"free"}}"#);
        assert_eq!(a.call(M::POST, "/admin/tenants", Some(&body)).await.0, 201);
    }
    let first = a.call(M::GET, "/admin/tenants?limit=2", None).await;
    assert_eq!(first.0, 200);
    let first = json(&first);
    let ids: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "c1"]);
    assert_eq!(first["next"], "c1");
    let second = json(
        &a.call(M::GET, "/admin/tenants?limit=2&after=c1", None)
            .await,
    );
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert_eq!(second["items"][1]["id"], "c3");
    assert_eq!(second["next"], "c3");
    let last = a
        .call(M::GET, "/admin/tenants?limit=2&after=c3", None)
        .await;
    ok(&last, 200, r#"{"items":[],"next":null}"#);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=%7B"] {
        let got = a.call(M::GET, &format!("/admin/tenants?{bad}"), None).await;
        assert_eq!(got.0, 400, "{bad}");
    }

    // Deletion.
    ok(&a.call(M::DELETE, "/admin/tenants/c2", None).await, 204, "");
    ok(
        &a.call(M::DELETE, "/admin/tenants/c2", None).await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );
    assert!(a.store.tenant("c2").await.unwrap().is_none());

    // Wrong methods and routes, in the envelope.
    let got = a.call(M::PUT, "/admin/tenants/acme", None).await;
    assert_eq!(got.0, 405);
    assert_eq!(got.1["content-type"], "application/json");
    ok(
        &a.call(M::GET, "/admin/nothing", None).await,
        404,
        crate::common::NOT_FOUND,
    );
    let huge = format!(
        r#"{{"id":"big","plan":"pro","x":"{}"}}"#,
        "a".repeat(70_000)
    );
    ok(
        &a.call(M::POST, "/admin/tenants", Some(&huge)).await,
        400,
        &invalid("Failed to buffer the request body: length limit exceeded"),
    );
    assert!(a.store.tenant("big").await.unwrap().is_none());
}

/// The API key `key` through an auth layer over a cache over `store`: 200 with the tenant's
/// plan, or the refusal.
async fn through_auth<S: KeyAdmin>(
    cache: &CachedKeyStore<S>,
    clock: &SharedClock,
    key: &str,
) -> Answer {
    let service = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(cache.clone()).clock(clock.clone()))
        .service_fn(|req: http::Request<_>| async move {
            let t = Tenant::of(&req).unwrap();
            let body = format!("{} {}", t.id(), t.plan().name());
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    send(&service, empty(get("/").header("x-api-key", key))).await
}

async fn keys<S: KeyAdmin>(a: Admin<S>) {
    use Method as M;
    let cache = CachedKeyStore::new(a.store.clone()).clock(a.clock.clone());
    assert_eq!(
        a.call(
            M::POST,
            "/admin/tenants",
            Some(r#"{"id":"acme","plan":"pro"}"#)
        )
        .await
        .0,
        201
    );
    ok(
        &a.call(M::POST, "/admin/tenants/nobody/keys", None).await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );
    ok(
        &a.call(
            M::POST,
            "/admin/tenants/acme/keys",
            Some(r#"{"expires_at":"soon"}"#),
        )
        .await,
        400,
        &invalid("Times are RFC 3339 in UTC, e.g. 2026-03-01T12:00:00Z."),
    );

    // Issued: shown once, never cached, working at once (the cache held "unknown").
    let issued = a.call(M::POST, "/admin/tenants/acme/keys", None).await;
    assert_eq!(issued.0, 201);
    assert_eq!(issued.1["cache-control"], "no-store");
    let body = json(&issued);
    let key = body["key"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        String::from_utf8(issued.2.to_vec()).unwrap(),
        format!(r#"{{"id":"{id}","tenant_id":"acme","key":"{key}","expires_at":null}}"#)
    );
    assert!(key.starts_with("nat_pk_"));

    // Listed and read without the secret.
    let listed = a.call(M::GET, "/admin/tenants/acme/keys", None).await;
    let view = format!(
        r#"{{"id":"{id}","tenant_id":"acme","created_at":"2026-03-01T00:00:00Z","expires_at":null,"revoked_at":null,"last_used_at":null}}"#
    );
    ok(
        &listed,
        200,
        &format!(r#"{{"items":[{view}],"next":null}}"#),
    );
    ok(
        &a.call(M::GET, &format!("/admin/keys/{id}"), None).await,
        200,
        &view,
    );
    ok(
        &a.call(M::GET, "/admin/tenants/nobody/keys", None).await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );
    let reply = through_auth(&cache, &a.clock, &key).await;
    assert_eq!(reply.2, "acme pro");

    // A plan change reaches the cache at once.
    let changed = a
        .call(M::PATCH, "/admin/tenants/acme", Some(r#"{"plan":"team"}"#))
        .await;
    assert_eq!(changed.0, 200);
    assert_eq!(through_auth(&cache, &a.clock, &key).await.2, "acme team");

    // Expiry: set, refused when malformed or absent, cleared.
    let path = format!("/admin/keys/{id}");
    let got = a
        .call(
            M::PATCH,
            &path,
            Some(r#"{"expires_at":"2026-03-01T00:00:30Z"}"#),
        )
        .await;
    assert_eq!(json(&got)["expires_at"], "2026-03-01T00:00:30Z");
    ok(
        &a.call(M::PATCH, &path, Some("{}")).await,
        400,
        &invalid("Give expires_at (a time or null)."),
    );
    a.fake.advance(Duration::from_secs(30));
    assert_envelope(
        &through_auth(&cache, &a.clock, &key).await,
        401,
        UNAUTHORIZED,
    );
    let got = a
        .call(M::PATCH, &path, Some(r#"{"expires_at":null}"#))
        .await;
    assert_eq!(json(&got)["expires_at"], serde_json::Value::Null);
    assert_eq!(through_auth(&cache, &a.clock, &key).await.2, "acme team");

    // Rotation with a grace: both work, then only the new one.
    let rotated = a
        .call(
            M::POST,
            &format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_seconds":60}"#),
        )
        .await;
    assert_eq!(rotated.0, 201, "{:?}", rotated.2);
    assert_eq!(rotated.1["cache-control"], "no-store");
    let new_key = json(&rotated)["key"].as_str().unwrap().to_owned();
    let new_id = json(&rotated)["id"].as_str().unwrap().to_owned();
    assert_eq!(through_auth(&cache, &a.clock, &key).await.2, "acme team");
    assert_eq!(
        through_auth(&cache, &a.clock, &new_key).await.2,
        "acme team"
    );
    a.fake.advance(Duration::from_secs(60));
    assert_envelope(
        &through_auth(&cache, &a.clock, &key).await,
        401,
        UNAUTHORIZED,
    );
    assert_eq!(
        through_auth(&cache, &a.clock, &new_key).await.2,
        "acme team"
    );
    // The old key has expired: no successor is made for it.
    let key_not_found = r#"{"error":"NOT_FOUND","message":"Key not found."}"#;
    let old_rotate = format!("/admin/keys/{id}/rotate");
    ok(
        &a.call(M::POST, &old_rotate, Some("{}")).await,
        404,
        key_not_found,
    );
    // Two rotations of one key at once, without a grace: one successor, one 404.
    let spare = json(
        &a.call(M::POST, "/admin/tenants/acme/keys", Some("{}"))
            .await,
    );
    let spare_rotate = format!("/admin/keys/{}/rotate", spare["id"].as_str().unwrap());
    let (x, y) = tokio::join!(
        a.call(M::POST, &spare_rotate, Some("{}")),
        a.call(M::POST, &spare_rotate, Some("{}"))
    );
    let mut statuses = [x.0, y.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 404]);
    ok(
        &a.call(
            M::POST,
            &format!("/admin/keys/{new_id}/rotate"),
            Some(r#"{"grace_seconds":99999999999}"#),
        )
        .await,
        400,
        &invalid("grace_seconds is at most 31622400 (366 days)."),
    );

    // Revocation reaches the cache at once. A second one is done again where revoked keys
    // are kept (a script may retry), and a 404 where they are forgotten; the key's expiry
    // can no longer be changed, nor can it be rotated.
    let revoke = format!("/admin/keys/{new_id}");
    ok(&a.call(M::DELETE, &revoke, None).await, 204, "");
    assert_envelope(
        &through_auth(&cache, &a.clock, &new_key).await,
        401,
        UNAUTHORIZED,
    );
    let not_found = r#"{"error":"NOT_FOUND","message":"Key not found."}"#;
    if a.keeps_revoked {
        ok(&a.call(M::DELETE, &revoke, None).await, 204, "");
    } else {
        ok(&a.call(M::DELETE, &revoke, None).await, 404, not_found);
    }
    ok(
        &a.call(M::PATCH, &revoke, Some(r#"{"expires_at":null}"#))
            .await,
        404,
        not_found,
    );
    ok(
        &a.call(M::POST, &format!("{revoke}/rotate"), Some("{}"))
            .await,
        404,
        not_found,
    );
    assert_envelope(
        &through_auth(&cache, &a.clock, &new_key).await,
        401,
        UNAUTHORIZED,
    );
    ok(
        &a.call(M::GET, "/admin/keys/key_nothing", None).await,
        404,
        r#"{"error":"NOT_FOUND","message":"Key not found."}"#,
    );

    // Deleting the tenant ends its keys.
    let third = json(
        &a.call(M::POST, "/admin/tenants/acme/keys", Some("{}"))
            .await,
    );
    let third = third["key"].as_str().unwrap().to_owned();
    assert_eq!(through_auth(&cache, &a.clock, &third).await.2, "acme team");
    ok(
        &a.call(M::DELETE, "/admin/tenants/acme", None).await,
        204,
        "",
    );
    assert_envelope(
        &through_auth(&cache, &a.clock, &third).await,
        401,
        UNAUTHORIZED,
    );
}

/// Changes racing each other: a tenant deleted while a key is issued for it gives 201 or
/// 404 (never a 500) and never a key that works.
async fn races<S: KeyAdmin>(a: Admin<S>) {
    use Method as M;
    let cache = CachedKeyStore::new(a.store.clone()).clock(a.clock.clone());
    for i in 0..20 {
        let tenant = format!("race-{i}");
        let body = format!(r#"{{"id":"{tenant}","plan":"pro"}}"#);
        assert_eq!(a.call(M::POST, "/admin/tenants", Some(&body)).await.0, 201);
        let (delete, issue) = (
            format!("/admin/tenants/{tenant}"),
            format!("/admin/tenants/{tenant}/keys"),
        );
        let (deleted, issued) = tokio::join!(
            a.call(M::DELETE, &delete, None),
            a.call(M::POST, &issue, Some("{}"))
        );
        ok(&deleted, 204, "");
        match issued.0.as_u16() {
            201 => {
                let key = json(&issued)["key"].as_str().unwrap().to_owned();
                assert_envelope(
                    &through_auth(&cache, &a.clock, &key).await,
                    401,
                    UNAUTHORIZED,
                );
            }
            _ => ok(
                &issued,
                404,
                r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
            ),
        }
    }
}

macro_rules! admin_suite {
    ($($backend:ident),*) => {
        $(
            mod $backend {
                #[tokio::test]
                async fn tenants() {
                    let Some(a) = super::backend::$backend().await else { return };
                    super::tenants(a).await;
                }

                #[tokio::test]
                async fn keys() {
                    let Some(a) = super::backend::$backend().await else { return };
                    super::keys(a).await;
                }

                #[tokio::test]
                async fn races() {
                    let Some(a) = super::backend::$backend().await else { return };
                    super::races(a).await;
                }
            }
        )*
    };
}

mod backend {
    pub(super) async fn memory() -> Option<super::Admin<tower_nat::auth::MemoryKeyStore>> {
        Some(super::memory())
    }
    #[cfg(feature = "postgres")]
    pub(super) use super::postgres;
}

admin_suite!(memory);
#[cfg(feature = "postgres")]
admin_suite!(postgres);

#[tokio::test]
async fn the_token_check_covers_every_path_and_is_throttled() {
    let a = memory();
    let wrong = [
        None,
        Some("Bearer wrong-token-0123456789-abcdefghijklmnop".to_owned()),
        Some(format!("bearer {TOKEN}")),
        Some(format!("Bearer  {TOKEN}")),
        Some(format!("Bearer {TOKEN} ")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    let paths = [
        "/admin",
        "/admin/",
        "/admin/tenants",
        "/admin/tenants/acme",
        "/admin//tenants",
        "/admin/tenants/../keys/x",
        "/admin/nothing",
    ];
    // Each from its own address, so the throttle does not answer first.
    for (i, header) in wrong.iter().enumerate() {
        for (j, path) in paths.iter().enumerate() {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let mut req = Request::builder().method(method).uri(*path);
                if let Some(h) = header {
                    req = req.header("authorization", h);
                }
                let from = format!("10.1.{i}.{j}");
                let got = a.send(req, Some(r#"{"id":"x","plan":"pro"}"#), &from).await;
                if *path == "/admin/" {
                    // Not under the mount point for axum: the app's own 404, no admin route.
                    assert_eq!((got.0.as_u16(), &got.2[..]), (404, &b""[..]));
                } else {
                    assert_envelope(&got, 401, UNAUTHORIZED);
                }
            }
        }
    }
    // An API key is not an admin token, in either header.
    let key = a.store.clone();
    key.insert_tenant("acme", tower_nat::plan::Plan::PRO)
        .unwrap();
    let api_key = key.issue_key("acme", None).unwrap().key;
    let req = Request::get("/admin/tenants").header("x-api-key", api_key.expose());
    assert_envelope(&a.send(req, None, "10.2.0.1").await, 401, UNAUTHORIZED);
    let req = Request::get("/admin/tenants")
        .header("authorization", format!("Bearer {}", api_key.expose()));
    assert_envelope(&a.send(req, None, "10.2.0.2").await, 401, UNAUTHORIZED);
    // Nothing was created, and the app's own routes are untouched.
    assert!(a.store.tenant("x").await.unwrap().is_none());
    let req = Request::get("/api/ping");
    assert_eq!(a.send(req, None, "10.2.0.3").await.2, "pong");

    // 20 failures from one address, then 429 for everything from it, the right token too,
    // for 3 s (20 a minute); other addresses are not affected.
    for _ in 0..20 {
        let req = Request::get("/admin/tenants").header("authorization", "Bearer nope");
        assert_eq!(a.send(req, None, "10.3.0.1").await.0, 401);
    }
    let req = Request::get("/admin/tenants").header("authorization", format!("Bearer {TOKEN}"));
    let got = a.send(req, None, "10.3.0.1").await;
    assert_eq!(got.0, 429);
    assert_eq!(got.1["retry-after"], "3");
    assert_eq!(
        got.2,
        r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 3 seconds.","retry_after":3}"#
    );
    let req = Request::get("/admin/tenants").header("authorization", format!("Bearer {TOKEN}"));
    assert_eq!(a.send(req, None, "10.3.0.2").await.0, 200);
    a.fake.advance(Duration::from_secs(3));
    let req = Request::get("/admin/tenants").header("authorization", format!("Bearer {TOKEN}"));
    assert_eq!(a.send(req, None, "10.3.0.1").await.0, 200);
}

#[test]
fn tokens_are_checked_at_configuration_without_echo() {
    let api = || AdminApi::new(MemoryKeyStore::new());
    let short = api().tokens("ops:short-secret").unwrap_err().to_string();
    assert_eq!(
        short,
        "the admin token `ops` must be 32 to 256 visible ASCII characters, without spaces"
    );
    assert!(!short.contains("short-secret"));
    let spaced = format!("ops:{} x", &TOKEN[..32]);
    assert!(api().tokens(&spaced).is_err());
    assert_eq!(
        api().tokens(TOKEN).unwrap_err().to_string(),
        "admin tokens are written name:secret, separated by commas"
    );
    let twice = format!("ops:{TOKEN},ops:{TOKEN}x");
    assert_eq!(
        api().tokens(&twice).unwrap_err().to_string(),
        "two admin tokens are named `ops`"
    );
    assert!(api().tokens(&format!("Ops!:{TOKEN}")).is_err());
    let two = api()
        .tokens(&format!("ops:{TOKEN}, ci:{TOKEN}-ci"))
        .unwrap();
    assert_eq!(
        format!("{two:?}"),
        r#"AdminApi { tokens: ["ops", "ci"], usage: false, .. }"#
    );
}

#[tokio::test]
async fn without_tokens_everything_is_refused() {
    let app = Router::new().nest("/admin", AdminApi::new(MemoryKeyStore::new()).into_router());
    for header in ["Bearer ", "Bearer", ""] {
        let req = empty(get("/admin/tenants").header("authorization", header));
        assert_envelope(&send(&app, req).await, 401, UNAUTHORIZED);
    }
}

#[tokio::test]
async fn usage_is_read_through_the_layers_stores() {
    let (fake, clock) = clock();
    let store = MemoryKeyStore::new()
        .clock(clock.clone())
        .plans(Plans::default());
    let nat = NatLayer::new(store.clone()).clock(clock.clone());
    let api = AdminApi::new(store.clone())
        .clock(clock.clone())
        .tokens(&format!("ops:{TOKEN}"))
        .unwrap()
        .usage(nat.usage_reader());
    let a = Admin {
        app: Router::new().nest("/admin", api.into_router()),
        store,
        fake,
        clock,
        guard: None,
        keeps_revoked: false,
    };
    a.call(
        Method::POST,
        "/admin/tenants",
        Some(r#"{"id":"acme","plan":"free"}"#),
    )
    .await;
    ok(
        &a.call(Method::GET, "/admin/tenants/acme/usage", None).await,
        200,
        r#"{"tenant_id":"acme","plan":"free","scans_used":0,"scans_limit":50,"security_scan_count":0,"monthly_security_scan_quota":0,"approaching_limit":false,"quota_reset_date":"2026-04-01T00:00:00Z","period_start":"2026-03-01T00:00:00Z","period_end":"2026-03-31T23:59:59Z","scans_running":0,"concurrent_scans_limit":1}"#,
    );
    ok(
        &a.call(Method::GET, "/admin/tenants/nobody/usage", None)
            .await,
        404,
        r#"{"error":"NOT_FOUND","message":"Tenant not found."}"#,
    );
    // Without a reader the route answers 404.
    let plain = memory();
    plain
        .call(
            Method::POST,
            "/admin/tenants",
            Some(r#"{"id":"acme","plan":"free"}"#),
        )
        .await;
    ok(
        &plain
            .call(Method::GET, "/admin/tenants/acme/usage", None)
            .await,
        404,
        crate::common::NOT_FOUND,
    );
}

#[test]
fn two_rotations_of_one_key_at_once_make_one_successor() {
    let store = MemoryKeyStore::new().plans(Plans::default());
    store
        .insert_tenant("acme", tower_nat::plan::Plan::PRO)
        .unwrap();
    for _ in 0..200 {
        let id = store.issue_key("acme", None).unwrap().id;
        let barrier = std::sync::Barrier::new(2);
        let made: usize = std::thread::scope(|s| {
            let rotations: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        usize::from(store.rotate(&id, Duration::ZERO).is_some())
                    })
                })
                .collect();
            rotations.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(made, 1);
    }
}
