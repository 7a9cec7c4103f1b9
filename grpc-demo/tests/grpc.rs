//! A real tonic client against the tonic-generated service behind `NatLayer`, over loopback,
//! with REST on the same port: refused, panicking and successful calls, with the tenant's
//! usage and running scans after each (SPEC §10: only `grpc-status: 0` is a success); the
//! framework's own refusals as gRPC statuses; and the failed-auth throttle by address.

use std::{net::SocketAddr, time::Duration};

use nat_grpc_demo::{
    DemoScans, app, nat,
    pb::{
        CreateScanReply, CreateScanRequest, GetUsageRequest, Mode, Usage,
        scans_client::ScansClient, scans_server::Scans,
    },
};
use tonic::{Code, Request, Response, Status, metadata::MetadataValue, transport::Channel};
use tower_nat::{
    NatError,
    auth::{ApiKey, MemoryKeyStore},
    plan::Plan,
};

/// A handler with every outcome: `url` "refuse" is refused (INVALID_ARGUMENT), "panic"
/// panics, anything else succeeds and its scan keeps running (its slot stays held).
#[derive(Clone, Debug)]
struct Outcomes(DemoScans);

#[tonic::async_trait]
impl Scans for Outcomes {
    async fn create_scan(
        &self,
        request: Request<CreateScanRequest>,
    ) -> Result<Response<CreateScanReply>, Status> {
        match request.get_ref().url.as_str() {
            "refuse" => Err(NatError::invalid_request("This URL cannot be scanned.").into()),
            "panic" => panic!("the scanner crashed"),
            _ => Ok(Response::new(CreateScanReply {
                scan_id: "scan_1".into(),
            })),
        }
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<Usage>, Status> {
        self.0.get_usage(request).await
    }
}

struct Server {
    addr: SocketAddr,
    free: ApiKey,
    pro: ApiKey,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Server {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.insert_tenant("pro", Plan::PRO).unwrap();
    let free = keys.issue_key("free", None).unwrap().key;
    let pro = keys.issue_key("pro", None).unwrap().key;
    let nat = nat(keys);
    let scans = Outcomes(DemoScans {
        usage: nat.usage_reader(),
        scan_duration: Duration::from_secs(3600),
    });
    let app = app(nat, scans, Duration::from_secs(3600));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nat_grpc_demo::serve(listener, app, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        free,
        pro,
        _stop: stop,
    }
}

impl Server {
    async fn client(&self) -> ScansClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        ScansClient::new(channel)
    }
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", MetadataValue::try_from(key).unwrap());
    request
}

fn scan(url: &str, mode: Mode) -> CreateScanRequest {
    CreateScanRequest {
        url: url.into(),
        mode: mode.into(),
    }
}

/// Asserts a status: its code, message and NAT code.
fn assert_status(status: &Status, code: Code, message: &str, nat: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
    assert_eq!(status.metadata().get("x-nat-error").unwrap(), nat);
}

/// (scans charged, scans running) of the key's tenant, over gRPC.
async fn usage(client: &mut ScansClient<Channel>, key: &str) -> (u64, u32) {
    let usage = client
        .get_usage(with_key(GetUsageRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    (usage.scans_used, usage.scans_running)
}

#[tokio::test]
async fn refused_panicking_and_successful_calls_are_charged_only_on_ok() {
    let s = server().await;
    let mut client = s.client().await;
    let free = s.free.expose();

    // Refused by the handler (a trailers-only INVALID_ARGUMENT): not charged, slot freed.
    let e = client
        .create_scan(with_key(scan("refuse", Mode::Functional), free))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::InvalidArgument,
        "This URL cannot be scanned.",
        "INVALID_REQUEST",
    );
    assert_eq!(usage(&mut client, free).await, (0, 0));

    // Panicking: INTERNAL, and nothing of the panic.
    let e = client
        .create_scan(with_key(scan("panic", Mode::Functional), free))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::Internal,
        "An unexpected error occurred. Retry after a short delay.",
        "INTERNAL_ERROR",
    );
    assert_eq!(usage(&mut client, free).await, (0, 0));

    // Refused by the stack's reader (no url): before any reservation.
    let e = client
        .create_scan(with_key(scan("", Mode::Functional), free))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::InvalidArgument,
        "Missing required field: url.",
        "INVALID_REQUEST",
    );
    // A security scan on Free: the feature gate, from the message's own mode.
    let e = client
        .create_scan(with_key(scan("https://a.example", Mode::Security), free))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::PermissionDenied,
        "Security scanning is not available on the Free plan. Upgrade to access.",
        "FEATURE_NOT_AVAILABLE",
    );
    assert_eq!(usage(&mut client, free).await, (0, 0));

    // Success (its status in the trailers): charged, and the scan holds Free's one slot.
    let reply = client
        .create_scan(with_key(scan("https://a.example", Mode::Functional), free))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.scan_id, "scan_1");
    assert_eq!(usage(&mut client, free).await, (1, 1));
    let e = client
        .create_scan(with_key(scan("https://a.example", Mode::Functional), free))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::ResourceExhausted,
        "Concurrent scan limit reached: 1 scan may run at a time on the Free plan.",
        "RATE_LIMITED",
    );
    assert_eq!(e.metadata().get("retry-after").unwrap(), "30");
    assert_eq!(usage(&mut client, free).await, (1, 1));
}

#[tokio::test]
async fn the_frameworks_refusals_are_grpc_statuses_and_rest_stays_json() {
    let s = server().await;
    let pro = s.pro.expose();

    // An unknown method on the mixed router, with no fallback: UNIMPLEMENTED.
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<_, Usage, _>(
            with_key(GetUsageRequest {}, pro),
            http::uri::PathAndQuery::from_static("/nat.v1.Reports/Get"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_status(&e, Code::Unimplemented, "Method not found.", "NOT_FOUND");
    // An unknown method of the service: tonic's own UNIMPLEMENTED, passed as it is.
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<_, Usage, _>(
            with_key(GetUsageRequest {}, pro),
            http::uri::PathAndQuery::from_static("/nat.v1.Scans/Nope"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);

    // REST on the same port: JSON, the envelope's bytes.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let rest = |method: http::Method, path: &str, ct: &str, body: &'static str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", s.addr))
            .header("x-api-key", pro)
            .header("content-type", ct)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    let response = client
        .request(rest(
            http::Method::GET,
            "/api/v1/nope",
            "application/json",
            "",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        body,
        r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#
    );

    // The first trial's second finding: a plain JSON POST to the gRPC method (tonic would
    // refuse it with a non-zero grpc-status in HTTP 200). And the attack trial's bypass: a
    // full scan, as protobuf, by PUT with another content type (tonic serves any method).
    // Both are refused before tonic: only gRPC may call a gRPC method.
    let not_grpc =
        r#"{"error":"INVALID_REQUEST","message":"Content-Type must be application/grpc."}"#;
    for (method, content_type, body) in [
        (
            http::Method::POST,
            "application/json",
            r#"{"url":"https://example.com"}"#,
        ),
        (
            http::Method::PUT,
            "text/plain",
            "\0\0\0\0\x15\x0a\x11https://a.example\x10\x03",
        ),
        (http::Method::GET, "text/plain", ""),
    ] {
        let response = client
            .request(rest(method, "/nat.v1.Scans/CreateScan", content_type, body))
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, not_grpc);
    }
    let mut scans = s.client().await;
    assert_eq!(usage(&mut scans, pro).await, (0, 0));

    // A message tonic cannot decode: its INTERNAL status comes without tonic's own text.
    let garbage = http::Request::post(format!("http://{}/nat.v1.Scans/GetUsage", s.addr))
        .header("x-api-key", pro)
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x02\xff\xff",
        )))
        .unwrap();
    let response = client.request(garbage).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = http_body_util::BodyExt::collect(body).await.unwrap();
    let status = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| parts.headers.clone());
    assert_eq!(status["grpc-status"], "13");
    assert_eq!(
        status["grpc-message"],
        "An unexpected error occurred. Retry after a short delay."
    );
    // And a REST scan on the same tenant: charged as usual (Pro runs 3 at once).
    let response = client
        .request(rest(
            http::Method::POST,
            "/api/v1/scan",
            "application/json",
            r#"{"url":"https://example.com"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(usage(&mut scans, pro).await, (1, 1));
}

#[tokio::test]
async fn failed_authentication_is_throttled_by_the_clients_address() {
    let s = server().await;
    let mut client = s.client().await;
    for _ in 0..20 {
        let e = client
            .get_usage(with_key(GetUsageRequest {}, ApiKey::generate().expose()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = client
        .get_usage(with_key(GetUsageRequest {}, ApiKey::generate().expose()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.metadata().get("x-nat-error").unwrap(), "RATE_LIMITED");
    assert_eq!(e.metadata().get("x-ratelimit-limit").unwrap(), "20");
    // A live key still works from that address (it is known to the store).
    assert_eq!(usage(&mut client, s.free.expose()).await, (0, 0));
}

/// Connects, sends `bytes`, and reads until the server closes: what it sent, and when.
async fn until_closed(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut received));
    read.await
        .expect("the server closes the connection")
        .unwrap();
    (received, started.elapsed())
}

/// Slow clients cannot hold connections: half a request line is closed after the header
/// timeout, an HTTP/2 connection that only sent its preface (and answers no ping) after the
/// ping's interval and timeout. On tokio's paused clock: no wall time.
#[tokio::test(start_paused = true)]
async fn half_requests_and_silent_http2_connections_are_closed() {
    let s = server().await;
    let timeout = nat_grpc_demo::HEADER_READ_TIMEOUT;
    let (_, waited) = until_closed(s.addr, b"POST /nat.v1.Scans/CreateScan HT").await;
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let (_, waited) = until_closed(s.addr, preface).await;
    assert!(
        waited >= 2 * timeout && waited < 2 * timeout + Duration::from_secs(1),
        "{waited:?}"
    );
}
