//! A gRPC service (health, usage, create scan) behind `NatLayer`, next to a REST route on the
//! same server, sharing each tenant's limits, without generated code: messages are declared
//! with prost's derive and each method is an axum handler running tonic's codec. (The
//! `grpc-demo` crate does the same with a tonic-generated service.) The API key travels in
//! `x-api-key` metadata.
//!
//! ```text
//! cargo run --example grpc --features axum,tonic
//! ```
//!
//! Refusals reach gRPC clients as statuses: `UNAUTHENTICATED` without a key,
//! `RESOURCE_EXHAUSTED` past the rate limit or the quota (with `retry-after` and
//! `x-nat-error` metadata), `PERMISSION_DENIED` for a security scan on Free.

use axum::{
    Router,
    extract::{Request, State},
    http::Method,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prost::Message;
use tonic::Status;
use tonic_prost::ProstCodec;
use tower_nat::{
    NatError, NatLayer, auth::MemoryKeyStore, grpc::GrpcRequestExt, plan::Plan, plan::ScanKind,
    quota::UsageReader, scan_request::ValidateScanRequestLayer,
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
    /// "functional" (or empty), "security" or "full".
    #[prost(string, tag = "2")]
    mode: String,
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
            let usage = reader.usage(r.tenant()?).await.map_err(NatError::from)?;
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
        // The slot of this scan: released here at once, as a real scanner would when the
        // scan ends.
        if let Some(slot) = r.scan_slot() {
            slot.release();
        }
        Ok(tonic::Response::new(CreateScanReply {
            scan_id: "scan_0001".into(),
        }))
    })
    .await
}

/// The kind of a `CreateScan` call, read from its message: the stack hands the message's
/// bytes to this reader and never guesses a kind.
fn scan_kind(message: &[u8]) -> Result<ScanKind, NatError> {
    let request = CreateScanRequest::decode(message)
        .map_err(|_| NatError::invalid_request("Malformed CreateScan message."))?;
    if request.url.is_empty() {
        return Err(NatError::invalid_request("Missing required field: url."));
    }
    match request.mode.as_str() {
        "" => Ok(ScanKind::Functional),
        mode => ScanKind::from_mode(mode).ok_or_else(|| {
            NatError::invalid_request("Invalid mode. Use functional, security or full.")
        }),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = MemoryKeyStore::new();
    for plan in Plan::BUILT_IN {
        let tenant = format!("demo-{plan}");
        keys.insert_tenant(tenant.as_str(), plan.clone()).unwrap();
        let issued = keys.issue_key(&tenant, None).expect("the tenant exists");
        println!("{plan} key: {}", issued.key.expose());
    }
    let nat = NatLayer::new(keys)
        .exempt("/nat.v1.Health/Check")
        .scan_validation(
            ValidateScanRequestLayer::new()
                .route(Method::POST, "/api/v1/scan")
                .grpc_route("/nat.v1.Nat/CreateScan", scan_kind),
        );
    // No fallback: an unknown gRPC method is UNIMPLEMENTED, an unknown REST path a JSON 404.
    let app = Router::new()
        .route("/nat.v1.Health/Check", post(health))
        .route("/nat.v1.Nat/Usage", post(usage))
        .route("/nat.v1.Nat/CreateScan", post(create_scan))
        .route(
            "/api/v1/usage",
            get(|| async { "REST and gRPC share the limits" }),
        )
        .with_state(nat.usage_reader())
        .layer(nat);
    let addr = std::env::var("NAT_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "NAT gRPC demo listening on http://{}",
        listener.local_addr()?
    );
    println!("try: grpcurl -plaintext -H 'x-api-key: <key>' ... nat.v1.Nat/Usage");
    // With the client's address, so failed authentication is throttled per address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
