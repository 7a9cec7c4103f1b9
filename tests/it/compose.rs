//! Composition: the layers in an axum 0.8 `Router` (`layer` and `route_layer`), in
//! `tower::ServiceBuilder` over a plain `service_fn`, and over a custom body type whose error
//! type survives.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{Extension, Router, body::Body, routing::get as axum_get};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    NatBody,
    auth::{ApiKey, ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    internal_error::InternalErrorGuardLayer,
    plan::Plan,
    tenant::Tenant,
};

use crate::common::{INTERNAL, STRIPE, UNAUTHORIZED, assert_envelope};

fn keys() -> (MemoryKeyStore, ApiKey) {
    let store = MemoryKeyStore::new();
    store.insert_tenant("acme", Plan::TEAM).unwrap();
    let key = store.issue_key("acme", None).unwrap().key;
    (store, key)
}

pub async fn call(router: &Router, req: Request<Body>) -> crate::common::Answer {
    let response = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn whoami(Extension(tenant): Extension<Tenant>) -> String {
    format!("{} {}", tenant.id(), tenant.plan())
}

#[tokio::test]
async fn axum_router_layer() {
    let (store, key) = keys();
    let router = Router::new()
        .route("/api/v1/usage", axum_get(whoami))
        .route(
            "/api/v1/billing/checkout",
            axum_get(|| async { "checkout" }),
        )
        .route("/healthz", axum_get(|| async { "up" }))
        .route("/boom", axum_get(boom))
        .layer(
            ApiKeyAuthLayer::new(store)
                .exempt("/healthz")
                .exempt("/boom"),
        )
        .layer(BillingConfiguredLayer::new(false))
        .layer(InternalErrorGuardLayer::new());

    let req = |path: &str, key: Option<&str>| {
        let mut b = Request::get(path);
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(Body::empty()).unwrap()
    };
    let got = call(&router, req("/api/v1/usage", Some(key.expose()))).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"acme team"[..]));
    assert_envelope(
        &call(&router, req("/api/v1/usage", None)).await,
        401,
        UNAUTHORIZED,
    );
    assert_envelope(
        &call(&router, req("/api/v1/billing/checkout", Some(key.expose()))).await,
        503,
        STRIPE,
    );
    let got = call(&router, req("/healthz", None)).await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"up"[..]));
    assert_envelope(&call(&router, req("/boom", None)).await, 500, INTERNAL);
}

#[tokio::test]
async fn axum_route_layer_guards_only_its_routes() {
    let (store, key) = keys();
    let router = Router::new()
        .route("/api/v1/usage", axum_get(whoami))
        .route_layer(ApiKeyAuthLayer::new(store))
        .route("/healthz", axum_get(|| async { "up" }));
    let got = call(
        &router,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"up"[..]));
    assert_envelope(
        &call(
            &router,
            Request::get("/api/v1/usage").body(Body::empty()).unwrap(),
        )
        .await,
        401,
        UNAUTHORIZED,
    );
    let got = call(
        &router,
        Request::get("/api/v1/usage")
            .header("x-api-key", key.expose())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(&got.2[..], b"acme team");
    // route_layer: unknown routes are axum's own 404, not a 401.
    let got = call(&router, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(got.0, 404);
}

#[tokio::test]
async fn service_builder_over_service_fn() {
    let (store, key) = keys();
    let service = ServiceBuilder::new()
        .layer(InternalErrorGuardLayer::new())
        .layer(BillingConfiguredLayer::new(true))
        .layer(ApiKeyAuthLayer::new(store))
        .service_fn(|req: Request<String>| async move {
            let tenant = req.extensions().get::<Tenant>().unwrap().id().to_string();
            Ok::<_, Infallible>(Response::new(format!("{tenant}: {}", req.body())))
        });
    let response = service
        .clone()
        .oneshot(
            Request::post("/api/v1/billing/checkout")
                .header("x-api-key", key.expose())
                .body("hello".to_owned())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "acme: hello"
    );
    let response = service.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), 401);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, UNAUTHORIZED);
}

/// A body with its own error type, to prove NatBody keeps it.
#[derive(Debug)]
struct MyBody {
    chunks: Vec<Result<Bytes, MyError>>,
}

#[derive(Debug, PartialEq)]
struct MyError(&'static str);

impl http_body::Body for MyBody {
    type Data = Bytes;
    type Error = MyError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MyError>>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(self.chunks.remove(0).map(Frame::data)))
    }
}

#[tokio::test]
async fn custom_body_error_type_survives() {
    let (store, key) = keys();
    let service = ServiceBuilder::new()
        .layer(BillingConfiguredLayer::new(false))
        .layer(ApiKeyAuthLayer::new(store))
        .service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(MyBody {
                chunks: vec![
                    Ok(Bytes::from_static(b"part")),
                    Err(MyError("stream broke")),
                ],
            }))
        });
    let response = service
        .clone()
        .oneshot(
            Request::get("/x")
                .header("x-api-key", key.expose())
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    // The type names the inner error: no erasure, no boxing.
    let mut body: NatBody<NatBody<MyBody>> = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part");
    let second: Result<Frame<Bytes>, MyError> = body.frame().await.unwrap();
    assert_eq!(second.unwrap_err(), MyError("stream broke"));

    let response = service
        .oneshot(Request::get("/x").body(()).unwrap())
        .await
        .unwrap();
    use http_body::Body as _;
    assert_eq!(
        response.body().size_hint().exact(),
        Some(UNAUTHORIZED.len() as u64)
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, UNAUTHORIZED);
}

async fn boom() -> &'static str {
    panic!("secret detail")
}
