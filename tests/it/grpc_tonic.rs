//! A real tonic client over loopback against a gRPC service behind `NatLayer`, one call per
//! code: the client sees the right `tonic::Code`, the message and the metadata; and the
//! tenant's limits are shared with REST calls to the same server.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http::uri::PathAndQuery;
use tonic::{Code, Status, metadata::MetadataValue};
use tonic_prost::ProstCodec;
use tower_nat::{
    NatError, NatLayer,
    auth::{ApiKey, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Allowance, LimitOverrides, Plan, ScanKind},
    quota::UsageReader,
    tenant::Tenant,
};

/// The messages, declared with prost's derive (no `.proto` compiler needed).
#[derive(Clone, PartialEq, prost::Message)]
struct UsageRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct UsageReply {
    #[prost(string, tag = "1")]
    tenant_id: String,
    #[prost(uint64, tag = "2")]
    scans_used: u64,
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

/// `nat.v1.Nat/Usage`: the tenant's usage.
async fn usage(State(reader): State<UsageReader>, req: Request) -> Response {
    let service = tower::service_fn(move |r: tonic::Request<UsageRequest>| {
        let reader = reader.clone();
        async move {
            let tenant = r.extensions().get::<Tenant>().cloned();
            let tenant = tenant.ok_or_else(|| Status::unauthenticated("no tenant"))?;
            let usage = reader
                .usage(&tenant)
                .await
                .map_err(|_| Status::internal("store"))?;
            Ok::<_, Status>(tonic::Response::new(UsageReply {
                tenant_id: usage.tenant_id.to_string(),
                scans_used: usage.scans_used,
            }))
        }
    });
    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
    grpc.unary(service, req).await.into_response()
}

/// `nat.v1.Nat/CreateScan`: a scan (charged by the stack when this answers OK).
async fn create_scan(req: Request) -> Response {
    let service = tower::service_fn(|r: tonic::Request<CreateScanRequest>| async move {
        if r.get_ref().url == "panic" {
            panic!("the scanner crashed");
        }
        Ok::<_, Status>(tonic::Response::new(CreateScanReply {
            scan_id: "scan_1".into(),
        }))
    });
    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
    grpc.unary(service, req).await.into_response()
}

/// The scan kind of a gRPC scan, from the `x-scan-mode` metadata (the stack never reads the
/// protobuf body); an unknown mode is a 400 in gRPC.
async fn scan_mode(mut req: Request, next: axum::middleware::Next) -> Response {
    let mode = req
        .headers()
        .get("x-scan-mode")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    if let Some(mode) = mode {
        match ScanKind::from_mode(&mode) {
            Some(kind) => {
                req.extensions_mut().insert(kind);
            }
            None => {
                let error =
                    NatError::invalid_request("Invalid mode. Use functional, security or full.");
                return error.into_grpc_response();
            }
        }
    }
    next.run(req).await
}

struct Server {
    addr: std::net::SocketAddr,
    free: ApiKey,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Server {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.set_overrides(
        "free",
        LimitOverrides {
            requests_per_minute: Some(12),
            functional_scans_per_month: Some(Allowance::Limited(1)),
            concurrent_scans: Some(5),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    let free = keys.issue_key("free", None).unwrap().key;
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    let nat = NatLayer::new(keys)
        .clock(Arc::new(clock))
        .billing(BillingConfiguredLayer::new(false).prefix("/nat.v1.Billing"));
    let app = Router::new()
        .route("/nat.v1.Nat/Usage", post(usage))
        .route(
            "/nat.v1.Nat/CreateScan",
            post(create_scan)
                .route_layer(nat.scan_creation())
                .route_layer(axum::middleware::from_fn(scan_mode)),
        )
        .route("/nat.v1.Billing/Checkout", post(|| async { "" }))
        .route("/api/v1/usage", get(|| async { "{}" }))
        .with_state(nat.usage_reader())
        .layer(nat);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Server {
        addr,
        free,
        _stop: stop,
    }
}

impl Server {
    /// Calls `method` with `message`, the key and metadata given.
    async fn call<M1, M2>(
        &self,
        method: &'static str,
        message: M1,
        key: Option<&str>,
        metadata: &[(&'static str, &'static str)],
    ) -> Result<M2, Status>
    where
        M1: prost::Message + Send + Sync + 'static,
        M2: prost::Message + Default + Send + Sync + 'static,
    {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(message);
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-api-key", MetadataValue::try_from(key).unwrap());
        }
        for (name, value) in metadata {
            request
                .metadata_mut()
                .insert(*name, MetadataValue::from_static(value));
        }
        let reply = grpc
            .unary(
                request,
                PathAndQuery::from_static(method),
                ProstCodec::<M1, M2>::default(),
            )
            .await?;
        Ok(reply.into_inner())
    }
}

/// Asserts a status: its code, message and NAT code.
fn assert_status(status: &Status, code: Code, message: &str, nat: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
    assert_eq!(status.metadata().get("x-nat-error").unwrap(), nat);
}

#[tokio::test]
async fn a_tonic_client_sees_every_code_with_its_message_and_metadata() {
    let s = server().await;
    let key = s.free.expose();
    let scan = |url: &str| CreateScanRequest { url: url.into() };

    // 401 → UNAUTHENTICATED.
    let e = s
        .call::<_, UsageReply>("/nat.v1.Nat/Usage", UsageRequest {}, None, &[])
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::Unauthenticated,
        "Missing or invalid API key.",
        "UNAUTHORIZED",
    );

    // OK, with the tenant the stack authenticated.
    let usage: UsageReply = s
        .call("/nat.v1.Nat/Usage", UsageRequest {}, Some(key), &[])
        .await
        .unwrap();
    assert_eq!((usage.tenant_id.as_str(), usage.scans_used), ("free", 0));

    // 400 → INVALID_ARGUMENT (a mode the server's own layer refuses, as a NatError).
    let e = s
        .call::<_, CreateScanReply>(
            "/nat.v1.Nat/CreateScan",
            scan("https://a.example"),
            Some(key),
            &[("x-scan-mode", "deep")],
        )
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::InvalidArgument,
        "Invalid mode. Use functional, security or full.",
        "INVALID_REQUEST",
    );

    // 403 → PERMISSION_DENIED: security scans on Free.
    let e = s
        .call::<_, CreateScanReply>(
            "/nat.v1.Nat/CreateScan",
            scan("https://a.example"),
            Some(key),
            &[("x-scan-mode", "security")],
        )
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::PermissionDenied,
        "Security scanning is not available on the Free plan. Upgrade to access.",
        "FEATURE_NOT_AVAILABLE",
    );

    // 500 → INTERNAL: the handler panics. Its scan is released, not charged.
    let e = s
        .call::<_, CreateScanReply>(
            "/nat.v1.Nat/CreateScan",
            scan("panic"),
            Some(key),
            &[("x-scan-mode", "functional")],
        )
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::Internal,
        "An unexpected error occurred. Retry after a short delay.",
        "INTERNAL_ERROR",
    );

    // Without a mode the server's layer gives no kind: INVALID_ARGUMENT, never a default.
    let e = s
        .call::<_, CreateScanReply>(
            "/nat.v1.Nat/CreateScan",
            scan("https://a.example"),
            Some(key),
            &[],
        )
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::InvalidArgument,
        "The scan's mode could not be determined.",
        "INVALID_REQUEST",
    );

    // OK once, then 402 → RESOURCE_EXHAUSTED with the reset date.
    let functional = &[("x-scan-mode", "functional")];
    let created: CreateScanReply = s
        .call(
            "/nat.v1.Nat/CreateScan",
            scan("https://a.example"),
            Some(key),
            functional,
        )
        .await
        .unwrap();
    assert_eq!(created.scan_id, "scan_1");
    let e = s
        .call::<_, CreateScanReply>(
            "/nat.v1.Nat/CreateScan",
            scan("https://a.example"),
            Some(key),
            functional,
        )
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::ResourceExhausted,
        "Monthly scan quota exhausted. Quota resets on 2026-04-01.",
        "QUOTA_EXCEEDED",
    );
    assert_eq!(
        e.metadata().get("x-nat-quota-reset").unwrap(),
        "2026-04-01T00:00:00Z"
    );
    // The usage the REST and gRPC sides share.
    let usage: UsageReply = s
        .call("/nat.v1.Nat/Usage", UsageRequest {}, Some(key), &[])
        .await
        .unwrap();
    assert_eq!(usage.scans_used, 1);

    // 503 → UNAVAILABLE.
    let e = s
        .call::<_, UsageReply>("/nat.v1.Billing/Checkout", UsageRequest {}, Some(key), &[])
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::Unavailable,
        "Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET.",
        "STRIPE_NOT_CONFIGURED",
    );

    // An unknown method: the router's own 404, as UNIMPLEMENTED (no fallback of ours).
    let e = s
        .call::<_, UsageReply>("/nat.v1.Nat/Nope", UsageRequest {}, Some(key), &[])
        .await
        .unwrap_err();
    assert_status(&e, Code::Unimplemented, "Method not found.", "NOT_FOUND");

    // 429 → RESOURCE_EXHAUSTED: 12 requests a minute, gRPC and REST together; a REST call's
    // headers say how many are left.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let rest = client
        .request(
            http::Request::get(format!("http://{}/api/v1/usage", s.addr))
                .header("x-api-key", key)
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let left: u32 = rest.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..left {
        s.call::<_, UsageReply>("/nat.v1.Nat/Usage", UsageRequest {}, Some(key), &[])
            .await
            .unwrap();
    }
    let e = s
        .call::<_, UsageReply>("/nat.v1.Nat/Usage", UsageRequest {}, Some(key), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.metadata().get("x-nat-error").unwrap(), "RATE_LIMITED");
    assert_eq!(e.metadata().get("x-ratelimit-limit").unwrap(), "12");
    assert_eq!(e.metadata().get("x-ratelimit-remaining").unwrap(), "0");
    let retry = e.metadata().get("retry-after").unwrap().to_str().unwrap();
    assert_eq!(
        e.message(),
        format!("Rate limit exceeded. Retry after {retry} seconds.")
    );
}

/// Every refusal the stack writes to a gRPC call is trailers-only on the wire: one `HEADERS`
/// frame with `END_STREAM`, no `DATA` frame (gRPC's C, Go and Java clients read anything else
/// as `UNKNOWN` or `INTERNAL`, losing the status). Checked with a raw HTTP/2 client, and on
/// the body hyper is given (it ends the headers' stream when the body is at its end).
#[tokio::test]
async fn every_refusal_is_one_headers_frame_with_end_stream() {
    let s = server().await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let key = s.free.expose().to_owned();
    // Path, key, metadata, the status expected.
    type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("/nat.v1.Nat/Usage", None, &[], "16"),
        ("/nat.v1.Nat/Nothing", Some(&key), &[], "12"),
        (
            "/nat.v1.Nat/CreateScan",
            Some(&key),
            &[("x-scan-mode", "security")],
            "7",
        ),
        ("/nat.v1.Nat/CreateScan", Some(&key), &[], "3"),
        ("/nat.v1.Billing/Checkout", Some(&key), &[], "14"),
    ];
    for (path, key, metadata, status) in cases {
        let mut client = client.clone().ready().await.unwrap();
        let mut req = http::Request::post(format!("http://{}{path}", s.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        for (name, value) in metadata {
            req = req.header(*name, *value);
        }
        let (response, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
        // An empty message: a 5-byte frame header of zero length.
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["grpc-status"], status, "{path}");
        let mut body = response.into_body();
        assert!(body.is_end_stream(), "{path}: HEADERS without END_STREAM");
        assert!(body.data().await.is_none(), "{path}: a DATA frame");
        assert!(body.trailers().await.unwrap().is_none(), "{path}: trailers");
    }
}
