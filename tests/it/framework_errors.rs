//! One envelope for every error: with `NatLayer` around an axum router, axum's own answers
//! (unrouted 404, 405, extractor rejections, a missing extension) come in the envelope,
//! byte for byte, with their headers; JSON bodies of handlers pass untouched. The `Tenant`
//! extractor refuses with the 401 envelope. CORS goes outside the stack.

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Path, Query},
    routing::{get, post},
};
use http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower_nat::{
    NatLayer,
    auth::{ApiKey, MemoryKeyStore},
    plan::Plan,
    tenant::Tenant,
};

use crate::common::{INTERNAL, NOT_FOUND, UNAUTHORIZED, assert_envelope, invalid};

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Page {
    page: u32,
}

fn keys() -> (MemoryKeyStore, ApiKey) {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let key = keys.issue_key("acme", None).unwrap().key;
    (keys, key)
}

fn app(nat: NatLayer) -> Router {
    Router::new()
        .route(
            "/items",
            post(|Json(v): Json<Value>| async move { Json(v) }),
        )
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { id.to_string() }),
        )
        .route(
            "/list",
            get(|Query(p): Query<Page>| async move { p.page.to_string() }),
        )
        .route(
            "/small",
            post(|body: axum::body::Bytes| async move { body.len().to_string() })
                .layer(DefaultBodyLimit::max(16)),
        )
        .route(
            "/public/needs-extension",
            get(|Extension(t): Extension<Tenant>| async move { t.id().to_string() }),
        )
        .route(
            "/public/needs-tenant",
            get(|t: Tenant| async move { t.id().to_string() }),
        )
        .route("/me", get(|t: Tenant| async move { t.id().to_string() }))
        .route(
            "/public/maybe-tenant",
            get(|t: Option<Tenant>| async move {
                t.map_or("anonymous".to_owned(), |t| t.id().to_string())
            }),
        )
        .route(
            "/conflict",
            get(|| async {
                (
                    StatusCode::CONFLICT,
                    Json(json!({"error":"CONFLICT","id":7})),
                )
            }),
        )
        .route(
            "/busy",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "7")],
                    "slow down",
                )
            }),
        )
        .route(
            "/upstream",
            get(|| async {
                (
                    StatusCode::BAD_GATEWAY,
                    [(header::RETRY_AFTER, "3")],
                    "upstream db-7.internal:5432 refused: password for admin",
                )
            }),
        )
        .layer(nat)
}

async fn call(router: &Router, req: Request<Body>) -> crate::common::Answer {
    crate::compose::call(router, req).await
}

fn with_key(method: Method, path: &str, key: &ApiKey) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key.expose())
}

#[tokio::test]
async fn axums_own_answers_come_in_the_envelope() {
    let (keys, key) = keys();
    let router = app(NatLayer::new(keys).exempt_prefix("/public"));
    let json = |path: &str, ct: Option<&str>, body: &'static str| {
        let mut b = with_key(Method::POST, path, &key);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Body::from(body)).unwrap()
    };
    let get = |path: &str| {
        with_key(Method::GET, path, &key)
            .body(Body::empty())
            .unwrap()
    };

    // Unrouted: 404, and the envelope instead of an empty body.
    assert_envelope(&call(&router, get("/nowhere")).await, 404, NOT_FOUND);
    // A known path with another method: 405, INVALID_REQUEST, `Allow` kept.
    let got = call(
        &router,
        with_key(Method::DELETE, "/items", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_envelope(&got, 405, &invalid("Method not allowed."));
    assert_eq!(got.1["allow"], "POST");
    // Json: no content type (415), malformed (400), wrong shape (422): all 400, with axum's
    // explanation.
    assert_envelope(
        &call(&router, json("/items", None, "{}")).await,
        400,
        &invalid("Expected request with `Content-Type: application/json`"),
    );
    assert_envelope(
        &call(
            &router,
            json("/items", Some("application/json"), "{not json"),
        )
        .await,
        400,
        &invalid(
            "Failed to parse the request body as JSON: key must be a string at line 1 column 2",
        ),
    );
    let got = call(&router, json("/items", Some("application/json"), "{}")).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"{}"[..]));
    // Path and Query.
    assert_envelope(
        &call(&router, get("/items/abc")).await,
        400,
        &invalid("Invalid URL: Cannot parse `abc` to a `u32`"),
    );
    assert_envelope(
        &call(&router, get("/list?page=x")).await,
        400,
        &invalid("Failed to deserialize query string: page: invalid digit found in string"),
    );
    // A body over axum's limit (413): 400.
    let big = with_key(Method::POST, "/small", &key)
        .body(Body::from("x".repeat(64)))
        .unwrap();
    assert_envelope(
        &call(&router, big).await,
        400,
        &invalid("Failed to buffer the request body: length limit exceeded"),
    );
    // A missing extension on an exempt route: axum's 500 naming a Rust type becomes the 500
    // envelope, nothing of the original.
    let got = call(&router, get("/public/needs-extension")).await;
    assert_envelope(&got, 500, INTERNAL);
}

#[tokio::test]
async fn handlers_json_errors_pass_and_headers_survive() {
    let (keys, key) = keys();
    let router = app(NatLayer::new(keys));
    let get = |path: &str| {
        with_key(Method::GET, path, &key)
            .body(Body::empty())
            .unwrap()
    };
    let got = call(&router, get("/conflict")).await;
    assert_eq!(got.0, 409);
    assert_eq!(&got.2[..], br#"{"error":"CONFLICT","id":7}"#);

    let got = call(&router, get("/busy")).await;
    assert_envelope(&got, 429, &invalid("slow down"));
    assert_eq!(got.1["retry-after"], "7");
    assert_eq!(got.1["x-ratelimit-limit"], "120");
    assert_eq!(got.1["content-length"], got.2.len().to_string().as_str());

    let got = call(&router, get("/upstream")).await;
    assert_envelope(&got, 500, INTERNAL);
    assert_eq!(got.1["retry-after"], "3");
    assert_eq!(got.1["content-length"], INTERNAL.len().to_string().as_str());
}

#[tokio::test]
async fn the_tenant_extractor() {
    let (keys, key) = keys();
    let router = app(NatLayer::new(keys).exempt_prefix("/public"));
    let anonymous = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    // No tenant on an exempt route: the 401 envelope, the same bytes as a refused key.
    assert_envelope(
        &call(&router, anonymous("/public/needs-tenant")).await,
        401,
        UNAUTHORIZED,
    );
    let got = call(&router, anonymous("/public/maybe-tenant")).await;
    assert_eq!(&got.2[..], b"anonymous");
    // Behind authentication the tenant is there. (An exempt route reads no key at all.)
    let got = call(
        &router,
        with_key(Method::GET, "/me", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"acme"[..]));
    let got = call(
        &router,
        with_key(Method::GET, "/public/needs-tenant", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_envelope(&got, 401, UNAUTHORIZED);
}

#[tokio::test]
async fn the_envelope_can_be_switched_off() {
    let (keys, key) = keys();
    let router = app(NatLayer::new(keys).error_envelope(false));
    let got = call(
        &router,
        with_key(Method::GET, "/nowhere", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((got.0.as_u16(), got.2.len()), (404, 0));
}

#[tokio::test]
async fn cors_goes_outside_the_stack() {
    use tower_http::cors::{Any, CorsLayer};
    let (keys, _) = keys();
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([http::HeaderName::from_static("x-api-key")]);
    let preflight = || {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/list")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .body(Body::empty())
            .unwrap()
    };
    // CORS outside: the preflight is answered by CORS, without a key.
    let outside = app(NatLayer::new(keys.clone())).layer(cors.clone());
    let got = call(&outside, preflight()).await;
    assert_eq!(got.0, 200);
    assert_eq!(got.1["access-control-allow-origin"], "*");
    // CORS inside: the preflight carries no key, so it is refused before CORS sees it.
    let inside = Router::new()
        .route("/list", get(|| async { "list" }))
        .layer(cors)
        .layer(NatLayer::new(keys));
    assert_envelope(&call(&inside, preflight()).await, 401, UNAUTHORIZED);
}
