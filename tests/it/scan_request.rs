//! ValidateScanRequest: the 400 table, pass-through of valid bodies byte for byte, and
//! untouched non-scan requests.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use crate::common::{assert_envelope, send};
use crate::common::{chunked, invalid};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{plan::ScanKind, scan_request::ValidateScanRequestLayer};

type Seen = Arc<Mutex<Vec<(Option<ScanKind>, Bytes)>>>;
type Resp = Response<tower_nat::NatBody<Full<Bytes>>>;

fn service(
    layer: ValidateScanRequestLayer,
) -> (
    impl tower::Service<Request<Full<Bytes>>, Response = Resp, Error = Infallible> + Clone,
    Seen,
) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Full<Bytes>>| {
            let log = log.clone();
            async move {
                let kind = req.extensions().get::<ScanKind>().copied();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                log.lock().unwrap().push((kind, body));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"accepted"))))
            }
        });
    (svc, seen)
}

fn scan(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/api/v1/scan")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

#[tokio::test]
async fn the_400_table() {
    let (svc, seen) = service(ValidateScanRequestLayer::new());
    let two_mib = format!(r#"{{"url":"u","pad":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let cases: Vec<(&str, Request<Full<Bytes>>, &str)> = vec![
        (
            "empty",
            scan(""),
            "Request body is empty; expected a JSON object.",
        ),
        (
            "whitespace",
            scan(" \r\n\t"),
            "Request body is empty; expected a JSON object.",
        ),
        ("open brace", scan("{"), "Malformed JSON in request body."),
        ("array", scan("[]"), "Request body must be a JSON object."),
        (
            "string",
            scan(r#""x""#),
            "Request body must be a JSON object.",
        ),
        ("number", scan("42"), "Request body must be a JSON object."),
        (
            "url is a number",
            scan(r#"{"url":1}"#),
            "Invalid field: url must be a non-empty string.",
        ),
        (
            "url is empty",
            scan(r#"{"url":""}"#),
            "Invalid field: url must be a non-empty string.",
        ),
        (
            "no url",
            scan(r#"{"mode":"security"}"#),
            "Missing required field: url.",
        ),
        (
            "unknown mode",
            scan(r#"{"url":"u","mode":"deep"}"#),
            r#"Invalid field: mode must be one of "functional", "security", "full"."#,
        ),
        (
            "mode not a string",
            scan(r#"{"url":"u","mode":["full"]}"#),
            r#"Invalid field: mode must be one of "functional", "security", "full"."#,
        ),
        (
            "2 MiB",
            scan(two_mib.clone()),
            "Request body too large: the limit is 1048576 bytes.",
        ),
        (
            "invalid UTF-8",
            scan(&b"{\"url\":\"\xc3\x28\"}"[..]),
            "Malformed JSON in request body.",
        ),
        (
            "nested junk",
            scan(r#"{"url":{"a":[[[{"b":}]]]}}"#),
            "Malformed JSON in request body.",
        ),
        (
            "duplicate keys",
            scan(r#"{"url":"https://a","url":"https://b"}"#),
            "Duplicate field in request body: url.",
        ),
        (
            "trailing garbage",
            scan(r#"{"url":"u"}{}"#),
            "Malformed JSON in request body.",
        ),
        (
            "wrong content type",
            Request::post("/api/v1/scan")
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(br#"{"url":"u"}"#)))
                .unwrap(),
            "Content-Type must be application/json.",
        ),
        (
            "form content type",
            Request::post("/api/v1/scan")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from_static(b"url=u")))
                .unwrap(),
            "Content-Type must be application/json.",
        ),
        (
            "declared length over the limit",
            Request::post("/api/v1/scan")
                .header("content-length", "5000000")
                .body(Full::new(Bytes::from_static(br#"{"url":"u"}"#)))
                .unwrap(),
            "Request body too large: the limit is 1048576 bytes.",
        ),
    ];
    assert!(cases.len() >= 12);
    for (name, req, message) in cases {
        let got = send(&svc, req).await;
        assert_eq!(got.0, 400, "{name}");
        assert_envelope(&got, 400, &invalid(message));
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the handler was never called"
    );
}

#[tokio::test]
async fn valid_bodies_reach_the_handler_byte_for_byte_with_their_kind() {
    let (svc, seen) = service(ValidateScanRequestLayer::new().default_kind(ScanKind::Full));
    let bodies: [(&str, ScanKind); 4] = [
        (r#"{"url":"https://example.com"}"#, ScanKind::Full),
        (
            r#"{ "url" : "https://example.com", "mode" : "functional" }"#,
            ScanKind::Functional,
        ),
        (
            "{\"mode\":\"security\",\n\"url\":\"https://x\", \"tags\": [1, {\"a\": null}]}",
            ScanKind::Security,
        ),
        (
            r#"{"url":"https://\u00e9.example","mode":"full"}"#,
            ScanKind::Full,
        ),
    ];
    for (body, _) in &bodies {
        let got = send(&svc, scan(*body)).await;
        assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"accepted"[..]));
    }
    let seen = seen.lock().unwrap();
    for ((body, kind), (seen_kind, seen_body)) in bodies.iter().zip(seen.iter()) {
        assert_eq!(*seen_kind, Some(*kind));
        assert_eq!(seen_body, body.as_bytes());
    }
}

#[tokio::test]
async fn other_requests_pass_untouched_and_unread() {
    let (svc, seen) = service(ValidateScanRequestLayer::new());
    for (method, path) in [
        (Method::GET, "/api/v1/scan"),
        (Method::GET, "/api/v1/scan/abc"),
        (Method::POST, "/api/v1/scans"),
        (Method::POST, "/api/v1/scan/"),
        (Method::PUT, "/api/v1/scan"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"not json")))
            .unwrap();
        assert_eq!(send(&svc, req).await.0, 200, "{path}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|(k, b)| k.is_none() && b == "not json"));
}

#[tokio::test]
async fn custom_route_and_limit() {
    let (svc, seen) = service(
        ValidateScanRequestLayer::new()
            .route(Method::POST, "/v2/scans")
            .body_limit(16),
    );
    let big = Request::post("/v2/scans")
        .body(Full::new(Bytes::from_static(
            br#"{"url":"https://example.com"}"#,
        )))
        .unwrap();
    assert_envelope(
        &send(&svc, big).await,
        400,
        &invalid("Request body too large: the limit is 16 bytes."),
    );
    let ok = Request::post("/v2/scans")
        .body(Full::new(Bytes::from_static(br#"{"url":"u"}"#)))
        .unwrap();
    assert_eq!(send(&svc, ok).await.0, 200);
    // The default route is no longer validated.
    assert_eq!(send(&svc, scan("{")).await.0, 200);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn chunked_bodies_that_run_past_the_limit_are_refused() {
    let calls = Arc::new(Mutex::new(0));
    let count = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new().body_limit(1000))
        .service_fn(move |_req: Request<axum::body::Body>| {
            *count.lock().unwrap() += 1;
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        });
    // 100 chunks of 64 bytes, no Content-Length.
    let body = chunked(vec![vec![b' '; 64]; 100]);
    let response = svc
        .oneshot(Request::post("/api/v1/scan").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        bytes,
        invalid("Request body too large: the limit is 1000 bytes.")
    );
    assert_eq!(*calls.lock().unwrap(), 0);
}
