//! A gRPC service (health, usage, create scan) behind `NatLayer`, next to a REST route on the
//! same server, sharing each tenant's limits. Messages are declared with prost's derive, so
//! no `.proto` compiler is needed; the API key travels in `x-api-key` metadata.
//!
//! ```text
//! cargo run --example grpc --features axum
//! ```
//!
//! Refusals reach gRPC clients as statuses: `UNAUTHENTICATED` without a key,
//! `RESOURCE_EXHAUSTED` past the rate limit or the quota (with `retry-after` and
//! `x-nat-error` metadata), `PERMISSION_DENIED` for a security scan on Free.

use axum::{
    Router,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tonic::Status;
use tonic_prost::ProstCodec;
use tower_nat::{
    NatError, NatLayer, auth::MemoryKeyStore, plan::Plan, plan::ScanKind, quota::UsageReader,
    tenant::Tenant,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthReply {
    #[prost(string, tag = "1")]
    status: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UsageReply {
    #[prost(string, tag = "1")]
    tenant_id: String,
    #[prost(uint64, tag = "2")]
    scans_used: u64,
    #[prost(uint64, optional, tag = "3")]
    scans_limit: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateScanRequest {
    #[prost(string, tag = "1")]
    url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateScanReply {
    #[prost(string, tag = "1")]
    scan_id: String,
}

/// Runs one unary method with tonic's server codec.
async fn unary<M1, M2, F, Fut>(req: Request, handle: F) -> Response
where
    M1: prost::Message + Default + Send + 'static,
    M2: prost::Message + Send + 'static,
    F: FnMut(tonic::Request<M1>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<M2>, Status>> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<M2, M1>::default());
    grpc.unary(tower::service_fn(handle), req)
        .await
        .into_response()
}

async fn health(req: Request) -> Response {
    unary(req, |_: tonic::Request<Empty>| async {
        Ok(tonic::Response::new(HealthReply {
            status: "ok".into(),
        }))
    })
    .await
}

async fn usage(State(reader): State<UsageReader>, req: Request) -> Response {
    unary(req, move |r: tonic::Request<Empty>| {
        let reader = reader.clone();
        async move {
            let tenant = r.extensions().get::<Tenant>().cloned();
            let tenant = tenant.ok_or_else(|| Status::unauthenticated("no tenant"))?;
            let usage = reader
                .usage(&tenant)
                .await
                .map_err(|_| Status::internal("store"))?;
            Ok(tonic::Response::new(UsageReply {
                tenant_id: usage.tenant_id.to_string(),
                scans_used: usage.scans_used,
                scans_limit: usage.scans_limit,
            }))
        }
    })
    .await
}

async fn create_scan(req: Request) -> Response {
    unary(req, |r: tonic::Request<CreateScanRequest>| async move {
        if r.get_ref().url.is_empty() {
            return Err(Status::invalid_argument("url is required"));
        }
        Ok(tonic::Response::new(CreateScanReply {
            scan_id: "scan_0001".into(),
        }))
    })
    .await
}

/// The scan kind of a gRPC scan, from `x-scan-mode` metadata: the stack never reads the
/// protobuf body.
async fn scan_mode(mut req: Request, next: Next) -> Response {
    let mode = req
        .headers()
        .get("x-scan-mode")
        .and_then(|v| v.to_str().ok());
    if let Some(mode) = mode {
        let Some(kind) = ScanKind::from_mode(mode) else {
            let message = "Invalid mode. Use functional, security or full.";
            return NatError::invalid_request(message).into_grpc_response();
        };
        req.extensions_mut().insert(kind);
    }
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = MemoryKeyStore::new();
    for plan in Plan::BUILT_IN {
        let tenant = format!("demo-{plan}");
        keys.insert_tenant(tenant.as_str(), plan.clone());
        let issued = keys.issue_key(&tenant, None).expect("the tenant exists");
        println!("{plan} key: {}", issued.key.expose());
    }
    let nat = NatLayer::new(keys).exempt("/nat.v1.Health/Check");
    let app = Router::new()
        .route("/nat.v1.Health/Check", post(health))
        .route("/nat.v1.Nat/Usage", post(usage))
        .route(
            "/nat.v1.Nat/CreateScan",
            post(create_scan)
                .route_layer(nat.scan_creation())
                .route_layer(axum::middleware::from_fn(scan_mode)),
        )
        .route(
            "/api/v1/usage",
            get(|| async { "REST and gRPC share the limits" }),
        )
        .fallback(|| async { NatError::not_found().into_grpc_response::<axum::body::Body>() })
        .with_state(nat.usage_reader())
        .layer(nat);
    let addr = std::env::var("NAT_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "NAT gRPC demo listening on http://{}",
        listener.local_addr()?
    );
    println!("try: grpcurl -plaintext -H 'x-api-key: <key>' ... nat.v1.Nat/Usage");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
