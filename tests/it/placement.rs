//! Wherever a server puts the layers, they decide on the path the client sent: `NatLayer`,
//! and the path-deciding layers alone, at the top of an axum app, on a router inside `nest`,
//! inside `nest_service`, and as a `route_layer`, each over real loopback HTTP. A scan route
//! can also get its meaning by placement (`NatLayer::scan_creation`), with no path at all.

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};
use http::Method;
use tower::ServiceBuilder;
use tower_nat::{
    NatLayer,
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{FakeClock, SharedClock, UtcDate},
    feature_gate::FeatureGateLayer,
    plan::{Plan, Plans},
    quota::QuotaGuardLayer,
    scan_request::ValidateScanRequestLayer,
};

use crate::common::{
    SECURITY_ON_FREE, STRIPE, UNAUTHORIZED, invalid, quota_body,
    wire::{Reply, Wire},
};

const FREE_KEY: &str = "nat_pk_PlacementFree0000000000000000000";
const PRO_KEY: &str = "nat_pk_PlacementPro00000000000000000000";

/// Free has one functional scan a month here, so the second is a 402.
fn plans() -> Arc<Plans> {
    Arc::new(Plans::from_json(r#"{"plans": {"free": {"functional_scans_per_month": 1}}}"#).unwrap())
}

fn clock() -> SharedClock {
    Arc::new(FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap()))
}

fn keys() -> MemoryKeyStore {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.insert_tenant("pro", Plan::PRO).unwrap();
    let add = |tenant: &str, key: &str| {
        keys.add_key(tenant, &tower_nat::auth::ApiKey::parse(key).unwrap(), None)
            .unwrap();
    };
    add("free", FREE_KEY);
    add("pro", PRO_KEY);
    keys
}

/// The whole stack; `/api/v1/health` needs no key.
fn nat() -> NatLayer {
    NatLayer::new(keys())
        .plans(plans())
        .clock(clock())
        .exempt("/api/v1/health")
}

/// The path-deciding layers alone, in the contract's order.
macro_rules! singles {
    () => {
        ServiceBuilder::new()
            .layer(BillingConfiguredLayer::new(false))
            .layer(
                ApiKeyAuthLayer::new(keys())
                    .exempt("/api/v1/health")
                    .clock(clock()),
            )
            .layer(ValidateScanRequestLayer::new())
            .layer(FeatureGateLayer::scans(plans()))
            .layer(QuotaGuardLayer::new(plans()).clock(clock()))
    };
}

/// The API's routes, under `prefix` (`/api/v1` at the top, empty inside a nested router).
fn api(prefix: &str) -> Router {
    Router::new()
        .route(&format!("{prefix}/scan"), post(crate::common::instant_scan))
        .route(
            &format!("{prefix}/billing/checkout"),
            post(|| async { "checkout" }),
        )
        .route(&format!("{prefix}/health"), get(|| async { "healthy" }))
        .route(&format!("{prefix}/usage"), get(|| async { "usage" }))
}

/// The app with `$layer` placed as `$placement` says.
macro_rules! placed {
    (top, $layer:expr) => {
        api("/api/v1").layer($layer)
    };
    (nest, $layer:expr) => {
        Router::new().nest("/api/v1", api("").layer($layer))
    };
    (nest_service, $layer:expr) => {
        Router::new().nest_service("/api/v1", api("").layer($layer))
    };
    (route_layer, $layer:expr) => {
        Router::new().nest("/api/v1", api("").route_layer($layer))
    };
}

async fn scan(wire: &Wire, key: &str, body: &str) -> Reply {
    wire.call(Method::POST, "/api/v1/scan", Some(key), Some(body))
        .await
}

/// Every path decision, over the wire.
async fn every_decision(wire: Wire) {
    let security = r#"{"url":"https://e.example","mode":"security"}"#;
    let functional = r#"{"url":"https://e.example"}"#;
    scan(&wire, FREE_KEY, security)
        .await
        .assert_envelope(403, SECURITY_ON_FREE);
    scan(&wire, FREE_KEY, "{not json")
        .await
        .assert_envelope(400, &invalid("Malformed JSON in request body."));
    let created = scan(&wire, FREE_KEY, functional).await;
    assert_eq!(
        (created.status.as_u16(), created.body.as_str()),
        (202, r#"{"scan_id":"s1"}"#)
    );
    scan(&wire, FREE_KEY, functional)
        .await
        .assert_envelope(402, &quota_body("2025-02-01"));
    wire.call(
        Method::POST,
        "/api/v1/billing/checkout",
        Some(PRO_KEY),
        None,
    )
    .await
    .assert_envelope(503, STRIPE);
    let health = wire.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(
        (health.status.as_u16(), health.body.as_str()),
        (200, "healthy")
    );
    wire.call(Method::GET, "/api/v1/usage", None, None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
    let usage = wire
        .call(Method::GET, "/api/v1/usage", Some(PRO_KEY), None)
        .await;
    assert_eq!((usage.status.as_u16(), usage.body.as_str()), (200, "usage"));
}

macro_rules! placements {
    ($($name:ident: $placement:ident, $layer:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                every_decision(Wire::start(placed!($placement, $layer)).await).await;
            }
        )*
    };
}

placements! {
    nat_layer_at_the_top: top, nat();
    nat_layer_inside_nest: nest, nat();
    nat_layer_inside_nest_service: nest_service, nat();
    nat_layer_as_route_layer: route_layer, nat();
    single_layers_at_the_top: top, singles!();
    single_layers_inside_nest: nest, singles!();
    single_layers_inside_nest_service: nest_service, singles!();
    single_layers_as_route_layer: route_layer, singles!();
}

/// Routes given their meaning by placement: no path is matched at all.
#[tokio::test]
async fn routes_by_placement() {
    let nat = nat();
    let scans = Router::new().route(
        "/jobs",
        post(crate::common::instant_scan).route_layer(nat.scan_creation()),
    );
    let billing = Router::new()
        .route("/checkout", post(|| async { "checkout" }))
        .route_layer(BillingConfiguredLayer::new(false).every_request());
    let app = Router::new()
        .nest("/v2", scans)
        .nest("/payments", billing)
        .route("/api/v1/health", get(|| async { "healthy" }))
        .layer(nat);
    let wire = Wire::start(app).await;
    let post = |path: &'static str, key: &'static str, body: &'static str| {
        let wire = &wire;
        async move { wire.call(Method::POST, path, Some(key), Some(body)).await }
    };
    let security = r#"{"url":"https://e.example","mode":"security"}"#;
    let functional = r#"{"url":"https://e.example"}"#;
    post("/v2/jobs", FREE_KEY, security)
        .await
        .assert_envelope(403, SECURITY_ON_FREE);
    post("/v2/jobs", FREE_KEY, "[]")
        .await
        .assert_envelope(400, &invalid("Request body must be a JSON object."));
    assert_eq!(post("/v2/jobs", FREE_KEY, functional).await.status, 202);
    post("/v2/jobs", FREE_KEY, functional)
        .await
        .assert_envelope(402, &quota_body("2025-02-01"));
    post("/payments/checkout", PRO_KEY, "{}")
        .await
        .assert_envelope(503, STRIPE);
}

/// A scan route matched by path in `NatLayer` and also carrying `scan_creation()`: read once,
/// charged once.
#[tokio::test]
async fn both_placements_charge_once() {
    let nat = nat();
    let app = Router::new()
        .route(
            "/api/v1/scan",
            post(crate::common::instant_scan).route_layer(nat.scan_creation()),
        )
        .layer(nat.clone());
    let wire = Wire::start(app).await;
    let functional = r#"{"url":"https://e.example"}"#;
    assert_eq!(scan(&wire, FREE_KEY, functional).await.status, 202);
    let tenant = tower_nat::tenant::Tenant::new("free", Plan::FREE, "k");
    let usage = nat.usage(&tenant).await.unwrap();
    assert_eq!(usage.scans_used, 1);
    scan(&wire, FREE_KEY, functional)
        .await
        .assert_envelope(402, &quota_body("2025-02-01"));
    assert_eq!(nat.usage(&tenant).await.unwrap().scans_used, 1);
}

/// A scan route by path, written as an axum route with a parameter: matched by path.
#[tokio::test]
async fn scan_routes_by_path_take_axum_route_templates() {
    let nat = nat().scan_validation(
        ValidateScanRequestLayer::new().route(Method::POST, "/api/v1/projects/{id}/scans"),
    );
    let projects = Router::new().route(
        "/{id}/scans",
        post(crate::common::instant_scan).get(|| async { "[]" }),
    );
    let app = Router::new().nest("/api/v1/projects", projects.layer(nat));
    let wire = Wire::start(app).await;
    let post = |body: &'static str| {
        let wire = &wire;
        async move {
            wire.call(
                Method::POST,
                "/api/v1/projects/7/scans",
                Some(FREE_KEY),
                Some(body),
            )
            .await
        }
    };
    post(r#"{"mode":"full"}"#)
        .await
        .assert_envelope(400, &invalid("Missing required field: url."));
    post(r#"{"url":"u","mode":"security"}"#)
        .await
        .assert_envelope(403, SECURITY_ON_FREE);
    assert_eq!(post(r#"{"url":"u"}"#).await.status, 202);
    post(r#"{"url":"u"}"#)
        .await
        .assert_envelope(402, &quota_body("2025-02-01"));
    // The listing on the same path is not a scan creation.
    let list = wire
        .call(
            Method::GET,
            "/api/v1/projects/7/scans",
            Some(FREE_KEY),
            None,
        )
        .await;
    assert_eq!((list.status.as_u16(), list.body.as_str()), (200, "[]"));
}

/// Authentication of the server's own, in front of `NatLayer`: its tenant passes the key
/// check and is served by the rate limit, the feature gates and the quota.
#[tokio::test]
async fn authentication_of_the_servers_own_in_front() {
    use axum::{extract::Request, middleware::Next, response::Response};
    async fn admin_token(mut req: Request, next: Next) -> Response {
        if req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == "Bearer s3cret")
        {
            req.extensions_mut().insert(tower_nat::tenant::Tenant::new(
                "free",
                Plan::FREE,
                "admin",
            ));
        }
        next.run(req).await
    }
    let nat = nat();
    let exports = nat.require_feature("webhooks").unwrap();
    assert_eq!(
        nat.require_feature("exportz").unwrap_err().to_string(),
        "invalid plan table: unknown feature `exportz`"
    );
    let app = api("/api/v1")
        .route(
            "/api/v1/hooks",
            post(|| async { "hooked" }).route_layer(exports),
        )
        .layer(nat)
        .layer(axum::middleware::from_fn(admin_token));
    let wire = Wire::start(app).await;
    let token = [("authorization", "Bearer s3cret")];
    let admin = |method: Method, path: &'static str, body: Option<&'static str>| {
        let wire = &wire;
        async move { wire.request(method, path, &token, body).await }
    };
    let usage = admin(Method::GET, "/api/v1/usage", None).await;
    assert_eq!(usage.status, 200);
    assert_eq!(usage.headers["x-ratelimit-limit"], "30");
    let scan = admin(Method::POST, "/api/v1/scan", Some(r#"{"url":"u"}"#)).await;
    assert_eq!(scan.status, 202);
    admin(Method::POST, "/api/v1/scan", Some(r#"{"url":"u"}"#))
        .await
        .assert_envelope(402, &quota_body("2025-02-01"));
    admin(Method::POST, "/api/v1/hooks", None).await.assert_envelope(
        403,
        r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Webhooks is not available on the Free plan. Upgrade to access.","feature":"webhooks","plan":"free"}"#,
    );
    // Without the token, the key check applies as before.
    wire.call(Method::GET, "/api/v1/usage", None, None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
}
