//! The same layers on bare hyper 1 and hyper-util, without axum.
//!
//! ```text
//! cargo run --example hyper
//! ```
//!
//! Listens on `NAT_ADDR` (default `127.0.0.1:8081`) and prints one demo key per plan. Routes:
//! `GET /api/v1/usage`, `POST /api/v1/scan` (202), `GET /healthz`; everything else is 404.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::ServiceBuilder;
use tower_nat::{
    NatError, NatLayer,
    auth::{ClientAddr, MemoryKeyStore},
    plan::Plan,
    quota::UsageReader,
    scan_request::RequestBody,
    tenant::Tenant,
};

type Body = RequestBody<Incoming>;

fn json(status: StatusCode, value: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

async fn handle(
    usage: UsageReader,
    req: Request<Body>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let tenant = req.extensions().get::<Tenant>().cloned();
    let response = match (req.method().as_str(), req.uri().path(), tenant) {
        ("GET", "/healthz", _) => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        ("GET", "/api/v1/usage", Some(tenant)) => match usage.usage(&tenant).await {
            Ok(usage) => json(StatusCode::OK, serde_json::to_string(&usage).unwrap()),
            Err(error) => NatError::from(error).into_http_response(),
        },
        ("POST", "/api/v1/scan", Some(_)) => {
            // The body was validated and is handed over byte for byte.
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(NatError::Internal.into_http_response()),
            };
            let url = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["url"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let reply =
                serde_json::json!({"scan_id": "scan_demo", "status": "running", "url": url});
            json(StatusCode::ACCEPTED, reply.to_string())
        }
        _ => NatError::not_found().into_http_response(),
    };
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = MemoryKeyStore::new();
    for plan in Plan::BUILT_IN {
        let tenant = format!("demo-{plan}");
        keys.insert_tenant(tenant.as_str(), plan.clone()).unwrap();
        let key = keys.issue_key(&tenant, None).expect("tenant exists");
        println!("{plan} key: {}", key.key.expose());
    }
    let nat = NatLayer::new(keys).exempt("/healthz");
    let usage = nat.usage_reader();
    let service = ServiceBuilder::new()
        // hyper's body type cannot be rebuilt from bytes; RequestBody can.
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(nat)
        .service_fn(move |req: Request<Body>| handle(usage.clone(), req));

    let addr: SocketAddr = std::env::var("NAT_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8081".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "NAT demo API (hyper) listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        // The peer's address, for the throttling of failed authentication.
        let service = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            })
            .service(service.clone());
        let service = TowerToHyperService::new(service);
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
    Ok(())
}
