//! Serves an API's OpenAPI document with every error the NAT stack answers, on
//! `http://127.0.0.1:8081/openapi.json` (exempt from keys).
//!
//! `cargo run --example openapi --features axum,openapi`
//!
//! The document's operations are the server's own (written here with utoipa's builders; with
//! its derive macros, `#[derive(OpenApi)]` makes them); `NatLayer::openapi_errors` adds the
//! errors the stack can answer to each, from the same configuration that serves them.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    routing::{get, post},
};
use serde_json::json;
use tower_nat::{NatLayer, auth::MemoryKeyStore, plan::Plan};
use utoipa::openapi::{
    HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder,
    path::OperationBuilder,
};

/// The server's own description of its routes.
fn document() -> OpenApi {
    let op = |id: &str| OperationBuilder::new().operation_id(Some(id));
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("Scans").version("1").build())
        .paths(
            PathsBuilder::new()
                .path(
                    "/api/v1/scan",
                    PathItem::new(HttpMethod::Post, op("create_scan")),
                )
                .path("/api/v1/usage", PathItem::new(HttpMethod::Get, op("usage")))
                .path(
                    "/openapi.json",
                    PathItem::new(HttpMethod::Get, op("openapi")),
                ),
        )
        .build()
}

#[tokio::main]
async fn main() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::FREE).unwrap();
    let nat = NatLayer::new(keys).exempt("/openapi.json");

    let mut doc = document();
    nat.openapi_errors().apply(&mut doc);
    let doc = doc.to_pretty_json().expect("a document serializes");

    let app = Router::new()
        .route(
            "/api/v1/scan",
            post(|| async { Json(json!({"scan_id": "scan_1"})) }),
        )
        .route("/api/v1/usage", get(|| async { Json(json!({})) }))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([("content-type", "application/json")], doc) }
            }),
        )
        .layer(nat);
    let addr = SocketAddr::from(([127, 0, 0, 1], 8081));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("port 8081 is free");
    println!("http://{addr}/openapi.json");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("the server runs");
}
