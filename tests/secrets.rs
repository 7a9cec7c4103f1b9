//! Secrets hygiene: no `Debug` output, error, log line or response carries an API key beyond
//! its short prefix, whatever happens to the request. In its own binary: it captures every
//! log line of the process.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    routing::{get, post},
};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_nat::{
    NatLayer, StoreError,
    auth::{ApiKey, ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::FakeClock,
    plan::{Plan, Plans},
};

/// Everything `tracing` writes, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn no_log_line_response_or_debug_output_carries_a_key() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::FREE).unwrap();
    let live = keys.issue_key("acme", None).unwrap().key;
    let expiring = keys
        .issue_key("acme", Some(Duration::from_secs(10)))
        .unwrap()
        .key;
    let revoked_key = ApiKey::generate();
    let revoked_id = keys.add_key("acme", &revoked_key, None).unwrap();
    keys.revoke(&revoked_id);
    let unknown = ApiKey::generate();
    let plans = Plans::from_json(
        r#"{"plans": {"free": {"requests_per_minute": 8, "functional_scans_per_month": 1, "concurrent_scans": 2}}}"#,
    )
    .unwrap();
    let clock = FakeClock::new(Duration::from_secs(1_750_000_000));
    let nat = NatLayer::new(keys.clone())
        .clock(Arc::new(clock))
        .plans(plans)
        .billing(BillingConfiguredLayer::new(false));
    let router = Router::new()
        .route(
            "/api/v1/scan",
            post(|| async { (http::StatusCode::ACCEPTED, "{}") }),
        )
        .route("/api/v1/usage", get(|| async { "usage" }))
        .route("/boom", get(boom))
        .layer(nat.clone());
    let keys_used = [&live, &expiring, &revoked_key, &unknown];
    let mut responses = String::new();
    let send = |key: &ApiKey, method: &str, path: &str, body: &'static str| {
        let router = router.clone();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key.expose())
            .header("authorization", format!("Bearer {}", key.expose()))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        async move {
            let r = router.oneshot(req).await.unwrap();
            let head = format!("{:?}", r.headers());
            let body = r.into_body().collect().await.unwrap().to_bytes();
            format!("{head} {}", String::from_utf8_lossy(&body))
        }
    };
    for key in keys_used {
        for (method, path, body) in [
            ("GET", "/api/v1/usage", ""),
            ("POST", "/api/v1/scan", r#"{"url":"u"}"#),
            ("POST", "/api/v1/scan", r#"{"url":"u"}"#),
            ("POST", "/api/v1/scan", r#"{"url":"u","mode":"security"}"#),
            ("POST", "/api/v1/scan", "{"),
            ("POST", "/api/v1/billing/checkout", "{}"),
            ("GET", "/boom", ""),
            ("GET", "/nope", ""),
            ("GET", "/api/v1/usage", ""),
            ("GET", "/api/v1/usage", ""),
        ] {
            responses.push_str(&send(key, method, path, body).await);
        }
    }
    let written = logs.0.lock().unwrap().len();
    // A flood of bad keys: one DEBUG line each, nothing at INFO or above.
    for _ in 0..1_000 {
        send(&unknown, "GET", "/api/v1/usage", "").await;
    }
    let flood = String::from_utf8(logs.0.lock().unwrap()[written..].to_vec()).unwrap();
    let lines: Vec<&str> = flood.lines().collect();
    assert_eq!(lines.len(), 1_000, "{flood}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" DEBUG ") && l.contains("code=\"UNAUTHORIZED\"")),
        "{flood}"
    );
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("UNAUTHORIZED"),
        "rejections are reported: {logs}"
    );
    assert!(logs.contains("RATE_LIMITED") && logs.contains("QUOTA_EXCEEDED"));
    assert!(logs.contains("INTERNAL_ERROR") && logs.contains("STRIPE_NOT_CONFIGURED"));
    assert!(logs.contains("tenant=\"acme\""));
    // These requests carry no client address: failed authentication cannot be throttled,
    // and that is said once, at WARN, not once per failure.
    let unthrottled: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("failed authentication is not throttled"))
        .collect();
    assert_eq!(unthrottled.len(), 1, "{logs}");
    assert!(unthrottled[0].contains(" WARN "), "{}", unthrottled[0]);
    // A panic is reported without its message (which may carry a secret) by default.
    assert!(logs.contains("inner service panicked"));
    assert!(!logs.contains("the handler failed"), "{logs}");
    let debug = [
        format!("{live:?}"),
        format!("{:?}", live.hash()),
        format!("{keys:?}"),
        format!("{nat:?}"),
        format!("{:?}", ApiKeyAuthLayer::new(keys.clone())),
        format!("{}", StoreError::new("backend down")),
    ]
    .join("\n");
    for key in keys_used {
        // The prefix and four characters may appear; nothing after them.
        let secret = &key.expose()[11..];
        for (what, text) in [
            ("logs", &logs),
            ("responses", &responses),
            ("debug", &debug),
        ] {
            assert!(!text.contains(secret), "{what} leak a key");
        }
    }
}

async fn boom() -> &'static str {
    panic!("the handler failed")
}
