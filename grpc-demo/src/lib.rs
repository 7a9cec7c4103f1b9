//! tower-nat in front of a tonic-generated gRPC service and REST routes, on one port, behind
//! one stack: the same keys, rate limits, quotas and running-scan limits for both.
//!
//! `cargo run -p nat-grpc-demo` serves it on `127.0.0.1:50051` (`NAT_ADDR` changes it) and
//! prints one key per plan. The gRPC service is `nat.v1.Scans` (`proto/nat/v1/scans.proto`,
//! compiled by `build.rs` with protox: no `protoc` needed):
//!
//! | call | answers |
//! |---|---|
//! | `nat.v1.Scans/CreateScan` | a new scan; validated, feature-gated, limited and charged like `POST /api/v1/scan`, charged only if the call answers `OK` |
//! | `nat.v1.Scans/GetUsage` | the tenant's usage |
//! | `POST /api/v1/scan`, `GET /api/v1/usage` | the same over REST, in JSON |
//! | `GET /healthz` | `ok`, without a key |
//!
//! What makes the gRPC side work, in [`nat`] and [`app`]:
//! - the scan method is named as a scan-creation route, and [`scan_kind`] reads the kind
//!   from its message (the stack never guesses a kind);
//! - handlers read the tenant and the slot with `GrpcRequestExt`, and return a `NatError`
//!   as a `tonic::Status`;
//! - the tonic service is routed under its path prefix *inside* the layer, and no fallback
//!   is needed: an unknown method is `UNIMPLEMENTED`, an unknown REST path a JSON 404;
//! - `main` serves with the client's address, so failed authentication is throttled.

use std::time::Duration;

use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, post},
};
use prost::Message;
use tonic::{Request, Response, Status};
use tower_http::timeout::TimeoutLayer;
use tower_nat::{
    NatError, NatLayer,
    concurrency::ScanSlot,
    envelope::ErrorEnvelopeLayer,
    grpc::GrpcRequestExt,
    plan::ScanKind,
    quota::{Usage, UsageReader},
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

/// The code generated from `proto/nat/v1/scans.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("nat.v1");
}

use pb::{
    CreateScanReply, CreateScanRequest, GetUsageRequest, Mode,
    scans_server::{Scans, ScansServer},
};

/// The scan-creation method, as the stack matches it: its HTTP/2 path.
pub const CREATE_SCAN: &str = "/nat.v1.Scans/CreateScan";

/// The kind of a `CreateScan` call, read from its message (the stack hands this reader the
/// message bytes; the handler gets the same bytes). A message without a `url` is refused
/// here, before any quota is reserved.
pub fn scan_kind(message: &[u8]) -> Result<ScanKind, NatError> {
    let request = CreateScanRequest::decode(message)
        .map_err(|_| NatError::invalid_request("Malformed CreateScan message."))?;
    if request.url.is_empty() {
        return Err(NatError::invalid_request("Missing required field: url."));
    }
    match Mode::try_from(request.mode) {
        Ok(Mode::Unspecified | Mode::Functional) => Ok(ScanKind::Functional),
        Ok(Mode::Security) => Ok(ScanKind::Security),
        Ok(Mode::Full) => Ok(ScanKind::Full),
        Err(_) => Err(NatError::invalid_request(
            "Invalid field: mode must be one of FUNCTIONAL, SECURITY, FULL.",
        )),
    }
}

/// The stack over `keys`: scan creations are `POST /api/v1/scan` (JSON) and the
/// `CreateScan` method (protobuf, its kind read by [`scan_kind`]); `/healthz` needs no key.
pub fn nat<K>(keys: K) -> NatLayer<K> {
    NatLayer::new(keys)
        .scan_validation(
            ValidateScanRequestLayer::new()
                .route(axum::http::Method::POST, "/api/v1/scan")
                // Any HTTP method: tonic serves them all.
                .grpc_route(CREATE_SCAN, scan_kind),
        )
        .exempt("/healthz")
        // Scans run for 30 s: a refused creation is told so.
        .scan_retry_after(Duration::from_secs(30))
}

/// The demo's scans service: a scan "runs" for `scan_duration`, then frees its slot.
#[derive(Clone, Debug)]
pub struct DemoScans {
    /// Reads usage for `GetUsage`.
    pub usage: UsageReader,
    /// How long a scan runs.
    pub scan_duration: Duration,
}

/// Frees `slot` after `duration`, as a real scanner would when the scan ends.
fn run_scan(slot: Option<ScanSlot>, duration: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        if let Some(slot) = slot {
            slot.release();
        }
    });
}

#[tonic::async_trait]
impl Scans for DemoScans {
    async fn create_scan(
        &self,
        request: Request<CreateScanRequest>,
    ) -> Result<Response<CreateScanReply>, Status> {
        let tenant = request.tenant()?.clone();
        let slot = request.scan_slot().cloned();
        let url = &request.get_ref().url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            // Refused: the stack frees the slot and charges nothing.
            return Err(
                NatError::invalid_request("Invalid field: url must be an http(s) URL.").into(),
            );
        }
        let scan_id = format!(
            "scan_{}_{}",
            tenant.id(),
            slot.as_ref().map_or("unslotted", ScanSlot::id)
        );
        run_scan(slot, self.scan_duration);
        Ok(Response::new(CreateScanReply { scan_id }))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        let usage = self
            .usage
            .usage(request.tenant()?)
            .await
            .map_err(NatError::from)?;
        Ok(Response::new(pb::Usage {
            tenant_id: usage.tenant_id.to_string(),
            plan: usage.plan.name().to_owned(),
            scans_used: usage.scans_used,
            scans_limit: usage.scans_limit,
            security_scan_count: usage.security_scan_count,
            scans_running: usage.scans_running,
        }))
    }
}

/// How long a whole request may take (its body included) before it is answered 408 (gRPC:
/// `INVALID_ARGUMENT`), in the envelope: a client that sends a body slowly holds no memory
/// for longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// REST and gRPC on one router behind `nat`: the gRPC service `scans`, and the REST routes
/// reading usage from the stack; answered within [`REQUEST_TIMEOUT`].
pub fn app<S: Scans>(nat: NatLayer, scans: S, scan_duration: Duration) -> Router {
    let usage = nat.usage_reader();
    Router::new()
        // The service under its own path prefix. (Not `tonic::service::Routes` merged in:
        // its fallback would answer every unknown path, REST ones included, with a gRPC
        // status.) Its unknown methods are tonic's UNIMPLEMENTED; unknown services get the
        // stack's.
        .route_service("/nat.v1.Scans/{*method}", ScansServer::new(scans))
        .route(
            "/api/v1/usage",
            get(move |tenant: Tenant| async move {
                Ok::<Json<Usage>, NatError>(Json(usage.usage(&tenant).await?))
            }),
        )
        .route(
            "/api/v1/scan",
            post(move |slot: Option<axum::Extension<ScanSlot>>| async move {
                run_scan(slot.map(|s| s.0), scan_duration);
                (StatusCode::ACCEPTED, r#"{"scan_id":"rest"}"#)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(nat)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(ErrorEnvelopeLayer::new())
}

/// Served as the REST demo is served (HTTP/1.1 and HTTP/2 without TLS, as gRPC clients speak
/// it; the client's address as axum's `ConnectInfo`; a connection that sends no complete
/// headers, or an HTTP/2 connection that answers no ping, within [`HEADER_READ_TIMEOUT`] is
/// closed; calls in flight get 10 s at shutdown).
pub use nat_demo::{HEADER_READ_TIMEOUT, serve};
