//! gRPC through `NatLayer`, without a network: refusals are trailers-only statuses; a gRPC
//! `Content-Type` never skips a check (SPEC §11); a gRPC answer succeeds only with
//! `grpc-status: 0`, read from its headers or from the trailers at its end; the framework's
//! own refusals to a gRPC call are gRPC statuses; and REST shares the tenant's limits.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::Request as AxumRequest,
    routing::{get, post},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::Full;
use prost::Message;
use tower::{Layer, ServiceBuilder};
use tower_nat::{
    NatError, NatLayer,
    auth::{ApiKey, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    grpc::{ErrorFormat, ErrorFormatLayer, is_grpc_media},
    plan::{Allowance, LimitOverrides, Plan, Plans, ScanKind},
    scan_request::ValidateScanRequestLayer,
    tenant::Tenant,
};

use crate::common::{Answer, UNAUTHORIZED, assert_envelope, handler, invalid, send};

/// The scan-creation message of the tests' gRPC service.
#[derive(Clone, PartialEq, prost::Message)]
struct CreateScan {
    #[prost(string, tag = "1")]
    url: String,
    /// 0 unspecified, 1 functional, 2 security, 3 full.
    #[prost(int32, tag = "2")]
    mode: i32,
}

/// The server's reader of the scan message's kind.
fn read_mode(message: &[u8]) -> Result<ScanKind, NatError> {
    let scan = CreateScan::decode(message)
        .map_err(|_| NatError::invalid_request("Malformed CreateScan message."))?;
    if scan.url.is_empty() {
        return Err(NatError::invalid_request("Missing required field: url."));
    }
    match scan.mode {
        0 | 1 => Ok(ScanKind::Functional),
        2 => Ok(ScanKind::Security),
        3 => Ok(ScanKind::Full),
        _ => Err(NatError::invalid_request("Invalid field: mode.")),
    }
}

/// One uncompressed gRPC frame around `message`.
fn frame(message: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

fn create_scan(mode: i32) -> Bytes {
    frame(
        &CreateScan {
            url: "https://a.example".into(),
            mode,
        }
        .encode_to_vec(),
    )
}

fn grpc_with(
    path: &str,
    content_type: &str,
    key: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(path)
        .version(http::Version::HTTP_2)
        .header("content-type", content_type);
    if let Some(key) = key {
        b = b.header("x-api-key", key);
    }
    b.body(Full::new(body)).unwrap()
}

fn grpc(path: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    grpc_with(path, "application/grpc+proto", key, create_scan(1))
}

/// Asserts a trailers-only gRPC status: HTTP 200, no body, the status, message and code.
fn assert_status(got: &Answer, code: &str, message: &str, nat: &str) {
    assert_eq!(got.0, 200, "{:?}", got.1);
    assert_eq!(got.1["content-type"], "application/grpc");
    assert_eq!(got.1["grpc-status"], code, "{:?}", got.1);
    assert_eq!(
        got.1["grpc-message"],
        percent_encoded(message).as_str(),
        "{:?}",
        got.1
    );
    assert_eq!(got.1["x-nat-error"], nat);
    assert!(got.2.is_empty());
}

/// A `grpc-message` as the protocol writes it (the tests' messages are ASCII, with `%`
/// written `%25`).
fn percent_encoded(message: &str) -> String {
    message.replace('%', "%25")
}

/// A Free tenant with small limits, its key, and a stack on a fake clock.
fn free_stack() -> (NatLayer, ApiKey, Tenant) {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.set_overrides(
        "free",
        LimitOverrides {
            requests_per_minute: Some(100),
            functional_scans_per_month: Some(Allowance::Limited(3)),
            concurrent_scans: Some(2),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    let key = keys.issue_key("free", None).unwrap().key;
    let mut tenant = Tenant::new("free", Plan::FREE, "k");
    tenant.set_overrides(LimitOverrides {
        functional_scans_per_month: Some(Allowance::Limited(3)),
        concurrent_scans: Some(2),
        ..LimitOverrides::default()
    });
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    let nat = NatLayer::new(keys).clock(Arc::new(clock));
    (nat, key, tenant)
}

/// (scans charged, scans running) of `tenant` now.
async fn usage(nat: &NatLayer, tenant: &Tenant) -> (u64, u32) {
    let usage = nat.usage(tenant).await.unwrap();
    (usage.scans_used, usage.scans_running)
}

#[tokio::test]
async fn every_refusal_is_a_grpc_status_and_rest_shares_the_limits() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.set_overrides(
        "free",
        LimitOverrides {
            requests_per_minute: Some(6),
            functional_scans_per_month: Some(Allowance::Limited(1)),
            concurrent_scans: Some(5),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    let key = keys.issue_key("free", None).unwrap().key;
    let k = Some(key.expose());
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 10).unwrap());
    let nat = NatLayer::new(keys)
        .clock(Arc::new(clock))
        .scan_validation(ValidateScanRequestLayer::new().grpc_kind(read_mode));
    // The scan method gets its meaning by placement; REST scans by path.
    let service = Router::new()
        .route(
            "/nat.v1.Scans/Create",
            post(crate::common::instant_scan).route_layer(nat.scan_creation()),
        )
        .route("/nat.v1.Usage/Get", post(|| async { "" }))
        .route("/api/v1/usage", get(|| async { "{}" }))
        .route("/api/v1/scan", post(crate::common::instant_scan))
        .layer(nat);

    let none = send(&service, grpc("/nat.v1.Usage/Get", None)).await;
    assert_status(&none, "16", "Missing or invalid API key.", "UNAUTHORIZED");
    // REST on the same stack: JSON.
    let rest = send(
        &service,
        Request::get("/api/v1/usage")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_envelope(&rest, 401, UNAUTHORIZED);

    // A scan over gRPC (its kind read from its message by the server's reader) is charged:
    // the second hits the quota.
    let ok = send(&service, grpc("/nat.v1.Scans/Create", k)).await;
    assert_eq!(ok.0, 202, "{:?}", ok.1);
    let quota = send(&service, grpc("/nat.v1.Scans/Create", k)).await;
    assert_status(
        &quota,
        "8",
        "Monthly scan quota exhausted. Quota resets on 2026-04-01.",
        "QUOTA_EXCEEDED",
    );
    assert_eq!(quota.1["x-nat-quota-reset"], "2026-04-01T00:00:00Z");
    // The same quota over REST.
    let rest = send(
        &service,
        Request::post("/api/v1/scan")
            .header("x-api-key", key.expose())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"url":"https://a.example"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(rest.0, 402);

    // Six requests a minute in all, gRPC and REST together: three so far (202, 402, 402),
    // three more, then RESOURCE_EXHAUSTED with its metadata.
    for _ in 0..3 {
        assert_eq!(send(&service, grpc("/nat.v1.Usage/Get", k)).await.0, 200);
    }
    let limited = send(&service, grpc("/nat.v1.Usage/Get", k)).await;
    assert_status(
        &limited,
        "8",
        "Rate limit exceeded. Retry after 10 seconds.",
        "RATE_LIMITED",
    );
    assert_eq!(limited.1["retry-after"], "10");
    assert_eq!(limited.1["x-ratelimit-limit"], "6");
    assert_eq!(limited.1["x-ratelimit-remaining"], "0");
}

/// What a handler that trusts whatever reaches it saw: the kind the stack gave each scan.
#[derive(Clone, Default)]
struct Trusting(Arc<Mutex<Vec<Option<ScanKind>>>>);

impl Trusting {
    fn router(&self) -> Router {
        let seen = self.0.clone();
        let create = move |req: AxumRequest| {
            let seen = seen.clone();
            async move {
                let kind = req.extensions().get::<ScanKind>().copied();
                if let Some(slot) = req.extensions().get::<tower_nat::concurrency::ScanSlot>() {
                    slot.release();
                }
                seen.lock().unwrap().push(kind);
                (StatusCode::ACCEPTED, r#"{"scan_id":"s1"}"#)
            }
        };
        Router::new()
            .route("/api/v1/scan", post(create.clone()))
            .route("/nat.v1.Scans/Create", post(create))
    }

    fn seen(&self) -> Vec<Option<ScanKind>> {
        self.0.lock().unwrap().clone()
    }
}

/// The trial's critical finding: a Free key, `Content-Type: application/grpc` (and its
/// variants) on the REST scan route, a security scan in a JSON body: 202, charged as
/// functional. Now, with a handler that trusts whatever reaches it, nothing gets through
/// unchecked and nothing is charged.
#[tokio::test]
async fn a_grpc_content_type_never_skips_scan_validation() {
    let (nat, key, tenant) = free_stack();
    let handler = Trusting::default();
    let service = handler.router().layer(nat.clone());
    let security = Bytes::from_static(br#"{"url":"https://example.com","mode":"security"}"#);
    let no_url = Bytes::from_static(br#"{"mode":"functional"}"#);
    let unknown = "The scan's mode could not be determined.";

    // Every gRPC media type, in any case: a scan creation whose kind the stack cannot
    // establish is refused (in gRPC form: the request said it was gRPC).
    for content_type in [
        "application/grpc",
        "application/grpc+json",
        "application/grpc+proto",
        "APPLICATION/GRPC",
        "Application/gRPC+Proto; charset=utf-8",
    ] {
        for body in [security.clone(), no_url.clone()] {
            let req = grpc_with("/api/v1/scan", content_type, Some(key.expose()), body);
            let got = send(&service, req).await;
            assert_status(&got, "3", unknown, "INVALID_REQUEST");
        }
    }
    // Not gRPC at all: the JSON checks, in JSON.
    let bad_type = invalid("Content-Type must be application/json.");
    for content_type in [
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpcx",
        "application/grpc+",
        "text/grpc",
    ] {
        let req = grpc_with(
            "/api/v1/scan",
            content_type,
            Some(key.expose()),
            security.clone(),
        );
        assert_envelope(&send(&service, req).await, 400, &bad_type);
    }
    // The trial's 1.5 MB body: refused too (its kind is unknown before its size matters).
    let big = Bytes::from(vec![b' '; 1_500_000]);
    let req = grpc_with("/api/v1/scan", "application/grpc", Some(key.expose()), big);
    assert_status(&send(&service, req).await, "3", unknown, "INVALID_REQUEST");
    assert!(handler.seen().is_empty());
    assert_eq!(usage(&nat, &tenant).await, (0, 0));

    // JSON, as the contract says: the security scan is the feature gate's 403, and a
    // functional one passes with its kind.
    let req = grpc_with(
        "/api/v1/scan",
        "application/json",
        Some(key.expose()),
        security,
    );
    assert_eq!(send(&service, req).await.0, 403);
    let functional = Bytes::from_static(br#"{"url":"https://example.com"}"#);
    let req = grpc_with(
        "/api/v1/scan",
        "application/json",
        Some(key.expose()),
        functional,
    );
    assert_eq!(send(&service, req).await.0, 202);
    assert_eq!(handler.seen(), [Some(ScanKind::Functional)]);
    assert_eq!(usage(&nat, &tenant).await, (1, 0));
}

/// How a gRPC scan creation tells its kind: the server's reader of its message, or a
/// `ScanKind` a layer of the server's own inserted; the body is read within the limit either
/// way, and a kind the reader refuses is INVALID_ARGUMENT.
#[tokio::test]
async fn a_grpc_scan_kind_comes_from_the_server() {
    let (nat, key, tenant) = free_stack();
    let k = Some(key.expose());
    let handler = Trusting::default();
    let validation = ValidateScanRequestLayer::new()
        .route(http::Method::POST, "/api/v1/scan")
        .grpc_route("/nat.v1.Scans/Create", read_mode);
    let nat = nat.scan_validation(validation);
    let service = handler.router().layer(nat.clone());
    let path = "/nat.v1.Scans/Create";
    let ct = "application/grpc";

    // Security on Free: the feature gate's 403, as PERMISSION_DENIED.
    let got = send(&service, grpc_with(path, ct, k, create_scan(2))).await;
    assert_status(
        &got,
        "7",
        "Security scanning is not available on the Free plan. Upgrade to access.",
        "FEATURE_NOT_AVAILABLE",
    );
    // The reader's own refusals, and frames that are not one uncompressed message.
    let no_url = frame(
        &CreateScan {
            url: String::new(),
            mode: 1,
        }
        .encode_to_vec(),
    );
    let got = send(&service, grpc_with(path, ct, k, no_url)).await;
    assert_status(&got, "3", "Missing required field: url.", "INVALID_REQUEST");
    let malformed = "Malformed gRPC message in request body.";
    let mut compressed = create_scan(1).to_vec();
    compressed[0] = 1;
    let mut two = create_scan(1).to_vec();
    two.extend_from_slice(&create_scan(1));
    for body in [
        Bytes::new(),
        Bytes::from_static(b"\0\0\0"),
        Bytes::from(compressed),
        Bytes::from(two),
        create_scan(1).slice(..8),
    ] {
        let got = send(&service, grpc_with(path, ct, k, body)).await;
        assert_status(&got, "3", malformed, "INVALID_REQUEST");
    }
    // Over the limit: refused, by its length as read (gRPC bodies carry none).
    let big = frame(&vec![0; 1_100_000]);
    let got = send(&service, grpc_with(path, ct, k, big)).await;
    assert_status(
        &got,
        "3",
        "Request body too large: the limit is 1048576 bytes.",
        "INVALID_REQUEST",
    );
    assert!(handler.seen().is_empty());
    assert_eq!(usage(&nat, &tenant).await, (0, 0));
    // A functional scan: read, given its kind, charged.
    let got = send(&service, grpc_with(path, ct, k, create_scan(1))).await;
    assert_eq!(got.0, 202);
    assert_eq!(handler.seen(), [Some(ScanKind::Functional)]);
    assert_eq!(usage(&nat, &tenant).await, (1, 0));

    // Without a reader: a kind the server's own layer inserted before the stack.
    let (nat, key, tenant) = free_stack();
    let validation = ValidateScanRequestLayer::new().route(http::Method::POST, path);
    let nat = nat.scan_validation(validation);
    let by_method = tower::util::MapRequestLayer::new(|mut req: Request<Full<Bytes>>| {
        if req.uri().path() == "/nat.v1.Scans/Create" {
            req.extensions_mut().insert(ScanKind::Functional);
        }
        req
    });
    let handler = Trusting::default();
    let service = ServiceBuilder::new()
        .layer(by_method)
        .layer(nat.clone())
        .service(handler.router());
    let got = send(
        &service,
        grpc_with(path, ct, Some(key.expose()), create_scan(2)),
    )
    .await;
    assert_eq!(got.0, 202);
    assert_eq!(handler.seen(), [Some(ScanKind::Functional)]);
    assert_eq!(usage(&nat, &tenant).await, (1, 0));
    // The limit still holds for such calls.
    let big = Bytes::from(vec![0; 1_100_000]);
    let got = send(&service, grpc_with(path, ct, Some(key.expose()), big)).await;
    assert_eq!(got.1["grpc-status"], "3");
    assert_eq!(usage(&nat, &tenant).await, (1, 0));
}

/// The attack trial's bypass: the grpc-demo named its scan method `POST` only, and tonic
/// serves any HTTP method, so a `PUT` ran scans past every check. A gRPC method named with
/// `grpc_route` is a scan creation whatever the HTTP method, and only gRPC may call it; a
/// gRPC call to a REST scan route needs a kind from the server.
#[tokio::test]
async fn a_grpc_method_is_a_scan_creation_whatever_the_http_method() {
    let (nat, key, tenant) = free_stack();
    let validation = ValidateScanRequestLayer::new()
        .route(http::Method::POST, "/api/v1/scan")
        .grpc_route("/nat.v1.Scans/Create", read_mode);
    let nat = nat.scan_validation(validation);
    let handler = Trusting::default();
    // Routed as tonic's generated services are: any method reaches the service.
    let seen = handler.clone();
    let any_method = axum::routing::any(move |req: AxumRequest| {
        let seen = seen.clone();
        async move {
            seen.0
                .lock()
                .unwrap()
                .push(req.extensions().get::<ScanKind>().copied());
            (StatusCode::OK, "")
        }
    });
    let service = Router::new()
        .route("/api/v1/scan", post(crate::common::instant_scan))
        .route_service("/nat.v1.Scans/Create", any_method.with_state(()))
        .layer(nat.clone());
    let call = |method: &str, content_type: &str, body: Bytes| {
        Request::builder()
            .method(method)
            .version(http::Version::HTTP_2)
            .uri("/nat.v1.Scans/Create")
            .header("content-type", content_type)
            .header("x-api-key", key.expose())
            .body(Full::new(body))
            .unwrap()
    };
    let not_grpc = invalid("Content-Type must be application/grpc.");
    for method in ["PUT", "GET", "DELETE", "PATCH", "OPTIONS", "FOO"] {
        // The trial's request: a full scan, as protobuf, with another content type.
        let got = send(&service, call(method, "text/plain", create_scan(3))).await;
        assert_envelope(&got, 400, &not_grpc);
        // As gRPC: checked as any gRPC scan (a full scan on Free is the feature gate's).
        let got = send(&service, call(method, "application/grpc", create_scan(3))).await;
        assert_eq!(got.1["grpc-status"], "7", "{method}");
    }
    let got = send(&service, call("POST", "application/json", create_scan(1))).await;
    assert_envelope(&got, 400, &not_grpc);
    assert!(handler.seen().is_empty());
    assert_eq!(usage(&nat, &tenant).await, (0, 0));

    // A gRPC frame to the REST scan route: its reader is the gRPC method's, not this route's.
    let req = grpc_with(
        "/api/v1/scan",
        "application/grpc",
        Some(key.expose()),
        create_scan(1),
    );
    let got = send(&service, req).await;
    assert_status(
        &got,
        "3",
        "The scan's mode could not be determined.",
        "INVALID_REQUEST",
    );
    // Over HTTP/1.x a gRPC answer's final status (in its trailers) never reaches the client,
    // which would pay for a scan it sees fail: refused before any charge, every version.
    for version in [http::Version::HTTP_10, http::Version::HTTP_11] {
        let mut req = call("POST", "application/grpc", create_scan(1));
        *req.version_mut() = version;
        let got = send(&service, req).await;
        assert_status(&got, "3", "gRPC calls need HTTP/2.", "INVALID_REQUEST");
    }
    assert!(handler.seen().is_empty());
    assert_eq!(usage(&nat, &tenant).await, (0, 0));
    // And a gRPC scan by PUT is a scan like any other: charged, holding its slot.
    let got = send(&service, call("PUT", "application/grpc", create_scan(1))).await;
    assert_eq!(got.0, 200);
    assert_eq!(handler.seen(), [Some(ScanKind::Functional)]);
    assert_eq!(usage(&nat, &tenant).await, (1, 1));
}

/// SPEC §1: a 500's message is never an inner error's text. A gRPC server's INTERNAL and
/// UNKNOWN statuses carry theirs (tonic's decoder: "protocol error: ..."); the stack
/// rewrites them, in a trailers-only answer and in the trailers, and keeps the others.
#[tokio::test]
async fn inner_error_text_in_grpc_statuses_never_reaches_the_client() {
    let (nat, key, _) = free_stack();
    let status = |code: &'static str, message: &'static str, trailers: bool| {
        move || async move {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            h.insert("grpc-message", HeaderValue::from_static(message));
            let mut response = if trailers {
                let frames = vec![Ok(Frame::data(frame(b""))), Ok(Frame::trailers(h))];
                Response::new(Body::new(AnswerBody {
                    frames: frames.into_iter(),
                }))
            } else {
                let mut response = Response::new(Body::empty());
                response.headers_mut().extend(h);
                response
            };
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            response
        }
    };
    let secret = "protocol error: invalid compression flag: 123 at db.internal:5432";
    let service = Router::new()
        .route("/a.B/Internal", post(status("13", secret, false)))
        .route("/a.B/Unknown", post(status("2", secret, false)))
        .route("/a.B/InternalLater", post(status("13", secret, true)))
        .route("/a.B/NotFound", post(status("5", "Scan not found.", false)))
        .route(
            "/a.B/NotFoundLater",
            post(status("5", "Scan not found.", true)),
        )
        .layer(nat);
    let generic = "An unexpected error occurred. Retry after a short delay.";
    for path in ["/a.B/Internal", "/a.B/Unknown"] {
        let got = send(&service, grpc(path, Some(key.expose()))).await;
        assert_eq!(got.1["grpc-message"], generic, "{path}");
        assert_eq!(got.1["x-nat-error"], "INTERNAL_ERROR");
    }
    let got = send(&service, grpc("/a.B/NotFound", Some(key.expose()))).await;
    assert_eq!(got.1["grpc-message"], "Scan not found.");
    // A gRPC server answers whatever the request's content type says, so the answer is
    // scrubbed whatever it says too.
    let spellings = [
        "application/grpc+proto",
        "application/json",
        "text/plain",
        "application/grpc-web",
        "application/grpcx",
        "",
    ];
    for media in spellings {
        for path in ["/a.B/Internal", "/a.B/Unknown"] {
            let req = grpc_with(path, media, Some(key.expose()), create_scan(1));
            let got = send(&service, req).await;
            assert_eq!(got.1["grpc-message"], generic, "{path} as {media:?}");
            assert_eq!(got.1["x-nat-error"], "INTERNAL_ERROR");
        }
    }
    // Trailers: read them as a client does.
    for (path, message, media) in [
        ("/a.B/InternalLater", generic, "application/grpc"),
        ("/a.B/InternalLater", generic, "application/json"),
        ("/a.B/NotFoundLater", "Scan not found.", "application/grpc"),
    ] {
        let req = grpc_with(path, media, Some(key.expose()), create_scan(1));
        let response = tower::ServiceExt::oneshot(service.clone(), req)
            .await
            .unwrap();
        let collected = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        let trailers = collected.trailers().unwrap().clone();
        assert_eq!(trailers["grpc-message"], message, "{path}");
    }
}

/// A gRPC answer's body: `data`, then `end`.
enum End {
    /// Trailers with this `grpc-status`.
    Status(&'static str),
    /// Trailers without a `grpc-status`.
    NoStatus,
    /// No trailers at all.
    Nothing,
    /// A body error.
    Error,
}

/// A body of one data frame and then `end`.
struct AnswerBody {
    frames: std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>,
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.frames.next())
    }
}

fn answer(end: End) -> Response<Body> {
    let mut frames = vec![Ok(Frame::data(frame(b"\x0a\x02s1")))];
    match end {
        End::Status(status) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static(status));
            frames.push(Ok(Frame::trailers(trailers)));
        }
        End::NoStatus => frames.push(Ok(Frame::trailers(HeaderMap::new()))),
        End::Nothing => {}
        End::Error => frames.push(Err(std::io::Error::other("stream reset"))),
    }
    let body = AnswerBody {
        frames: frames.into_iter(),
    };
    let mut response = Response::new(Body::new(body));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// SPEC §10: a gRPC call succeeds only with `grpc-status: 0`, in a trailers-only answer's
/// headers or in the trailers at the end of its body. Otherwise its scan is not charged and
/// its slot is freed, exactly as for a REST 4xx/5xx: the trial's Free tenant locked out of
/// scanning for an hour by refused calls.
#[tokio::test]
async fn a_grpc_call_is_charged_only_when_its_status_is_ok() {
    let (nat, key, tenant) = free_stack();
    let nat = nat.scan_validation(ValidateScanRequestLayer::new().grpc_kind(read_mode));
    let path = "/nat.v1.Scans/Create";
    // The handler's answer, chosen by the request's `x-answer` header; its slots stay held
    // (a scan runs until the server releases it).
    let create = |req: AxumRequest| async move {
        let how = req.headers()["x-answer"].to_str().unwrap().to_owned();
        match how.as_str() {
            "ok" => answer(End::Status("0")),
            "failed" => answer(End::Status("13")),
            "no-status" => answer(End::NoStatus),
            "nothing" => answer(End::Nothing),
            "error" => answer(End::Error),
            "refused" => {
                // What tonic answers for an `Err(Status)`: trailers-only.
                let mut r = Response::new(Body::empty());
                let h = r.headers_mut();
                h.insert("content-type", HeaderValue::from_static("application/grpc"));
                h.insert("grpc-status", HeaderValue::from_static("3"));
                r
            }
            "ok-headers" => {
                let mut r = Response::new(Body::empty());
                let h = r.headers_mut();
                h.insert("content-type", HeaderValue::from_static("application/grpc"));
                h.insert("grpc-status", HeaderValue::from_static("0"));
                r
            }
            "json-200" => Response::new(Body::from(r#"{"scan_id":"s1"}"#)),
            other => panic!("{other}"),
        }
    };
    let service = Router::new()
        .route(path, post(create).route_layer(nat.scan_creation()))
        .layer(nat.clone());
    let call = |how: &'static str| {
        let mut req = grpc_with(path, "application/grpc", Some(key.expose()), create_scan(1));
        req.headers_mut()
            .insert("x-answer", HeaderValue::from_static(how));
        req
    };

    // Failures of every kind: nothing charged, no slot held.
    for how in ["failed", "no-status", "nothing", "refused"] {
        let got = send(&service, call(how)).await;
        assert_eq!(got.0, 200, "{how}");
        assert_eq!(usage(&nat, &tenant).await, (0, 0), "{how}");
    }
    let response = tower::ServiceExt::oneshot(service.clone(), call("error"))
        .await
        .unwrap();
    let read = http_body_util::BodyExt::collect(response.into_body()).await;
    assert!(read.is_err());
    assert_eq!(usage(&nat, &tenant).await, (0, 0));
    // Success, from the trailers and from a trailers-only answer: charged, and the scan
    // holds its slot. The trailers reach the client as they were.
    let got = send(&service, call("ok")).await;
    assert_eq!(got.0, 200);
    assert_eq!(got.2, frame(b"\x0a\x02s1"));
    assert_eq!(usage(&nat, &tenant).await, (1, 1));
    // The attack trial's cancellation: the server accepted the scan (its answer began as a
    // success) and the client reset the stream before the trailers. The scan runs, so it is
    // charged and keeps its slot, as a REST answer the client stops reading would.
    let response = tower::ServiceExt::oneshot(service.clone(), call("ok"))
        .await
        .unwrap();
    assert_eq!(
        usage(&nat, &tenant).await,
        (1, 2),
        "held while the answer streams"
    );
    drop(response);
    assert_eq!(usage(&nat, &tenant).await, (2, 2));
    // Two running: the concurrency limit answers, and the call is not charged.
    let got = send(&service, call("ok")).await;
    assert_status(
        &got,
        "8",
        "Concurrent scan limit reached: 2 scans may run at a time on the Free plan.",
        "RATE_LIMITED",
    );
    assert_eq!(usage(&nat, &tenant).await, (2, 2));
}

/// The same through later-answering stores: the settlement at the body's end is awaited
/// before the trailers are delivered.
#[tokio::test]
async fn a_grpc_answers_end_waits_for_its_settlement() {
    use crate::common::stores::Later;
    use tower_nat::{concurrency::MemorySlotStore, quota::MemoryQuotaStore};
    let (nat, key, tenant) = free_stack();
    let path = "/nat.v1.Scans/Create";
    let validation = ValidateScanRequestLayer::new().grpc_route(path, read_mode);
    let nat = nat
        .scan_validation(validation)
        .with_quota_store(Later(MemoryQuotaStore::new()))
        .with_slot_store(Later(MemorySlotStore::new()));
    let service = Router::new()
        .route(path, post(|| async { answer(End::Status("0")) }))
        .layer(nat.clone());
    let req = grpc_with(path, "application/grpc", Some(key.expose()), create_scan(1));
    let got = send(&service, req).await;
    assert_eq!(got.0, 200);
    assert_eq!(nat.usage(&tenant).await.unwrap().scans_used, 1);
    let service = Router::new()
        .route(path, post(|| async { answer(End::Status("14")) }))
        .layer(nat.clone());
    let req = grpc_with(path, "application/grpc", Some(key.expose()), create_scan(1));
    send(&service, req).await;
    let usage = nat.usage(&tenant).await.unwrap();
    assert_eq!((usage.scans_used, usage.scans_running), (1, 1));
}

/// SPEC §10: the framework's own refusals to a gRPC call are gRPC statuses, on one router
/// with REST and no fallback of its own; REST calls keep their JSON.
#[tokio::test]
async fn the_frameworks_refusals_to_grpc_calls_are_grpc_statuses() {
    let (nat, key, _) = free_stack();
    let k = Some(key.expose());
    let service = Router::new()
        .route("/nat.v1.Usage/Get", post(|| async { "" }))
        .route("/api/v1/usage", get(|| async { "{}" }))
        .route(
            "/nat.v1.Usage/Missing",
            post(|| async { NatError::not_found_with("Scan not found.") }),
        )
        .route(
            "/nat.v1.Usage/Broken",
            post(|| async { (StatusCode::BAD_GATEWAY, "upstream said: secret") }),
        )
        .route(
            "/nat.v1.Usage/Teapot",
            post(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .layer(nat);

    let unknown = send(&service, grpc("/nat.v1.Nope/Nothing", k)).await;
    assert_status(&unknown, "12", "Method not found.", "NOT_FOUND");
    let wrong_method = send(
        &service,
        Request::get("/nat.v1.Usage/Get")
            .header("content-type", "application/grpc")
            .header("x-api-key", key.expose())
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_status(
        &wrong_method,
        "12",
        "Method not allowed.",
        "INVALID_REQUEST",
    );
    // A handler's JSON envelope keeps its code and message.
    let missing = send(&service, grpc("/nat.v1.Usage/Missing", k)).await;
    assert_status(&missing, "5", "Scan not found.", "NOT_FOUND");
    let broken = send(&service, grpc("/nat.v1.Usage/Broken", k)).await;
    assert_status(
        &broken,
        "13",
        "An unexpected error occurred. Retry after a short delay.",
        "INTERNAL_ERROR",
    );
    let teapot = send(&service, grpc("/nat.v1.Usage/Teapot", k)).await;
    assert_status(&teapot, "3", "short and stout", "INVALID_REQUEST");
    // The rate-limit headers of the passed request survive as metadata.
    assert!(teapot.1.contains_key("x-ratelimit-remaining"));

    // REST: JSON, as before.
    let rest = send(
        &service,
        Request::get("/api/v1/nope")
            .header("x-api-key", key.expose())
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_envelope(&rest, 404, crate::common::NOT_FOUND);
}

#[test]
fn grpc_is_recognised_by_its_media_type() {
    for yes in [
        "application/grpc",
        "APPLICATION/GRPC",
        "application/grpc+proto",
        "application/grpc+json",
        "application/grpc; charset=utf-8",
        " application/grpc+proto ; x=y",
    ] {
        assert!(is_grpc_media(&HeaderValue::from_static(yes)), "{yes}");
    }
    for no in [
        "application/grpcx",
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web-text",
        "application/grpc+",
        "application/grpc+ proto",
        "application/json",
        "text/grpc",
        "grpc",
        "",
    ] {
        assert!(!is_grpc_media(&HeaderValue::from_static(no)), "{no}");
    }
}

#[tokio::test]
async fn the_format_can_be_forced_and_every_code_maps() {
    let plans = Arc::new(Plans::default());
    // Billing (503 → 14) and a feature gate (403 → 7), forced to gRPC for a JSON request.
    let service = ServiceBuilder::new()
        .layer(ErrorFormatLayer::new(ErrorFormat::Grpc))
        .layer(BillingConfiguredLayer::new(false))
        .service(handler());
    let req = Request::post("/api/v1/billing/checkout")
        .body(Default::default())
        .unwrap();
    let got = send(&service, req).await;
    assert_status(
        &got,
        "14",
        "Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET.",
        "STRIPE_NOT_CONFIGURED",
    );
    let gate = ServiceBuilder::new()
        .layer(tower::util::MapRequestLayer::new(
            |mut req: Request<Full<Bytes>>| {
                // The server's own layer says which kind the call is.
                req.extensions_mut().insert(ScanKind::Security);
                req
            },
        ))
        .layer(ValidateScanRequestLayer::new())
        .layer(tower_nat::feature_gate::FeatureGateLayer::scans(plans))
        .service(handler());
    let free = crate::common::tenant("t", Plan::FREE);
    let mut req = grpc("/api/v1/scan", None);
    req.extensions_mut().insert(free);
    let got = send(&gate, req).await;
    assert_status(
        &got,
        "7",
        "Security scanning is not available on the Free plan. Upgrade to access.",
        "FEATURE_NOT_AVAILABLE",
    );
    // And forced to JSON for a gRPC request.
    let json = ServiceBuilder::new()
        .layer(ErrorFormatLayer::new(ErrorFormat::Json))
        .layer(BillingConfiguredLayer::new(false))
        .service(handler());
    let got = send(&json, grpc("/api/v1/billing/checkout", None)).await;
    assert_eq!(got.0, 503);
    // A handler's panic behind the stack is INTERNAL (13) for gRPC.
    let nat = NatLayer::new(MemoryKeyStore::new()).exempt("/boom");
    let service = nat.layer(handler());
    let mut req = grpc("/boom", None);
    req.headers_mut()
        .insert("x-outcome", HeaderValue::from_static("panic"));
    let got = send(&service, req).await;
    assert_status(
        &got,
        "13",
        "An unexpected error occurred. Retry after a short delay.",
        "INTERNAL_ERROR",
    );
}
