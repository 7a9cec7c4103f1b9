//! End to end: the demo server (the `nat-demo` crate, as `cargo run --example server` runs
//! it) on an ephemeral loopback port, spoken to over real HTTP by a real client. Every code of
//! the contract, with exact bytes and headers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, routing::get};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use nat_demo::Demo;
use tower_nat::{
    auth::ApiKey,
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
};

const UNAUTHORIZED: &str = r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#;
const STRIPE: &str = r#"{"error":"STRIPE_NOT_CONFIGURED","message":"Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."}"#;
const NOT_FOUND: &str =
    r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#;

fn invalid(message: &str) -> String {
    format!(r#"{{"error":"INVALID_REQUEST","message":{message:?}}}"#)
}

/// The demo, served by `nat_demo::serve` (stopped when dropped), and a client for it.
struct Running {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    keys: Vec<(Plan, ApiKey)>,
    clock: FakeClock,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What came back.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    /// Asserts a NAT envelope: status, JSON content type and exact body.
    fn assert_envelope(&self, status: u16, body: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.headers["content-type"], "application/json");
        assert_eq!(self.body, body);
    }
}

impl Running {
    async fn start(router: Router, keys: Vec<(Plan, ApiKey)>, clock: FakeClock) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(nat_demo::serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            keys,
            clock,
            _stop: stop,
        }
    }

    fn key(&self, plan: Plan) -> &str {
        self.keys
            .iter()
            .find(|(p, _)| *p == plan)
            .unwrap()
            .1
            .expose()
    }

    /// `method path` with an optional key and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("the server answers within 10 s")
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

async fn demo(billing: BillingConfiguredLayer) -> Running {
    let plans = Plans::from_json(
        r#"{"plans": {"free": {"requests_per_minute": 8, "functional_scans_per_month": 2, "concurrent_scans": 3}}}"#,
    )
    .unwrap();
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap());
    let fixed_free = ApiKey::parse("nat_pk_FreeFreeFreeFreeFreeFreeFree0000").unwrap();
    let demo = Demo::new(
        plans,
        Arc::new(clock.clone()),
        billing,
        [Some(fixed_free), None, None, None],
        Duration::from_secs(3),
    );
    Running::start(demo.router(demo.nat()), demo.keys, clock).await
}

#[tokio::test]
async fn every_code_over_the_wire() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let free = s.key(Plan::FREE).to_owned();
    assert_eq!(
        free, "nat_pk_FreeFreeFreeFreeFreeFreeFree0000",
        "NAT_DEMO_KEY_* style fixed key"
    );

    // 200: usage.
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    a.assert_envelope(
        200,
        r#"{"tenant_id":"demo-free","plan":"free","scans_used":0,"scans_limit":2,"security_scan_count":0,"monthly_security_scan_quota":0,"approaching_limit":false,"quota_reset_date":"2025-02-01T00:00:00Z","period_start":"2025-01-01T00:00:00Z","period_end":"2025-01-31T23:59:59Z","scans_running":0,"concurrent_scans_limit":3}"#,
    );
    assert_eq!(a.headers["x-ratelimit-limit"], "8");
    assert_eq!(a.headers["x-ratelimit-remaining"], "7");

    // 401: no key, a bad key, Bearer.
    s.call(Method::GET, "/api/v1/usage", None, None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
    s.call(Method::GET, "/api/v1/usage", Some("nat_pk_nope"), None)
        .await
        .assert_envelope(401, UNAUTHORIZED);

    // 400: malformed and incomplete scan bodies.
    let a = s
        .call(Method::POST, "/api/v1/scan", Some(&free), Some("{"))
        .await;
    a.assert_envelope(
        400,
        r#"{"error":"INVALID_REQUEST","message":"Malformed JSON in request body."}"#,
    );
    assert_eq!(a.headers["x-ratelimit-remaining"], "6");
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"mode":"functional"}"#),
        )
        .await;
    a.assert_envelope(
        400,
        r#"{"error":"INVALID_REQUEST","message":"Missing required field: url."}"#,
    );

    // 403: security scans on Free.
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"url":"https://e.example","mode":"security"}"#),
        )
        .await;
    a.assert_envelope(
        403,
        r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Security scanning is not available on the Free plan. Upgrade to access.","feature":"security_scanning","plan":"free"}"#,
    );

    // 202 twice, then 402: the Free quota is 2 here.
    for _ in 0..2 {
        let a = s
            .call(
                Method::POST,
                "/api/v1/scan",
                Some(&free),
                Some(r#"{"url":"https://e.example"}"#),
            )
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"url":"https://e.example"}"#),
        )
        .await;
    a.assert_envelope(
        402,
        r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}"#,
    );

    // 404: unknown route (with a key), unknown scan.
    let a = s
        .call(Method::GET, "/api/v1/nothing-here", Some(&free), None)
        .await;
    a.assert_envelope(
        404,
        r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#,
    );

    // That was the 8th request this minute: 429 with every header.
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    a.assert_envelope(
        429,
        r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 8 seconds.","retry_after":8}"#,
    );
    assert_eq!(a.headers["retry-after"], "8");
    assert_eq!(a.headers["x-ratelimit-limit"], "8");
    assert_eq!(a.headers["x-ratelimit-remaining"], "0");
    // Waiting Retry-After seconds is enough.
    s.clock.advance(Duration::from_secs(8));
    let a = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains(r#""scans_used":2"#), "{}", a.body);

    // 503: billing routes while Stripe is not configured, the webhook included.
    let pro = s.key(Plan::PRO);
    s.call(
        Method::POST,
        "/api/v1/billing/checkout",
        Some(pro),
        Some(r#"{"plan":"team"}"#),
    )
    .await
    .assert_envelope(503, STRIPE);
    s.call(Method::POST, "/api/v1/billing/webhook", None, Some("{}"))
        .await
        .assert_envelope(503, STRIPE);

    // Health is exempt.
    let a = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
}

#[tokio::test]
async fn a_scan_polled_to_completion_and_tenants_cannot_see_each_other() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let (pro, team) = (s.key(Plan::PRO).to_owned(), s.key(Plan::TEAM).to_owned());
    let a = s
        .call(
            Method::POST,
            "/api/v1/scan",
            Some(&pro),
            Some(r#"{"url":"https://e.example","mode":"full"}"#),
        )
        .await;
    assert_eq!(a.status, 202);
    let created: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(created["status"], "running");
    assert_eq!(created["created_at"], "2025-01-20T00:00:00Z");
    let id = created["scan_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/scan/{id}");

    let mut polls = 0;
    let status = loop {
        let a = s.call(Method::GET, &path, Some(&pro), None).await;
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        polls += 1;
        if v["status"] == "completed" || polls == 10 {
            break v;
        }
        s.clock.advance(Duration::from_secs(1));
    };
    assert_eq!(status["status"], "completed");
    assert_eq!(status["completed_at"], "2025-01-20T00:00:03Z");
    assert_eq!(polls, 4);

    // Polling was never charged: one full scan is one of each.
    let usage = s.call(Method::GET, "/api/v1/usage", Some(&pro), None).await;
    let usage: serde_json::Value = serde_json::from_str(&usage.body).unwrap();
    assert_eq!(
        (
            usage["scans_used"].as_u64(),
            usage["security_scan_count"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Another tenant's scan and a scan that never existed: the same bytes.
    let foreign = s.call(Method::GET, &path, Some(&team), None).await;
    let missing = s
        .call(
            Method::GET,
            "/api/v1/scan/scan_0000000000000000",
            Some(&team),
            None,
        )
        .await;
    foreign.assert_envelope(404, r#"{"error":"NOT_FOUND","message":"Scan not found."}"#);
    assert_eq!(
        (foreign.status, &foreign.body),
        (missing.status, &missing.body)
    );

    // Listing shows only the tenant's own scans.
    let own = s.call(Method::GET, "/api/v1/scans", Some(&pro), None).await;
    let own: serde_json::Value = serde_json::from_str(&own.body).unwrap();
    assert_eq!(own["scans"].as_array().unwrap().len(), 1);
    let other = s
        .call(Method::GET, "/api/v1/scans", Some(&team), None)
        .await;
    assert_eq!(other.body, r#"{"scans":[]}"#);
}

#[tokio::test]
async fn configured_billing_answers_as_a_demo_and_the_webhook_needs_no_key() {
    let s = demo(BillingConfiguredLayer::new(true)).await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/billing/webhook",
            None,
            Some(r#"{"type":"invoice.paid"}"#),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, r#"{"demo":true,"received":true}"#)
    );
    let a = s
        .call(Method::POST, "/api/v1/billing/checkout", None, Some("{}"))
        .await;
    a.assert_envelope(401, UNAUTHORIZED);
    let a = s
        .call(
            Method::POST,
            "/api/v1/billing/checkout",
            Some(s.key(Plan::FREE)),
            Some(r#"{"plan":"pro"}"#),
        )
        .await;
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (v["demo"].as_bool(), v["plan"].as_str()),
        (Some(true), Some("pro"))
    );
}

async fn boom() -> &'static str {
    panic!("database password is hunter2")
}

#[tokio::test]
async fn internal_errors_over_the_wire() {
    let d = Demo::new(
        Plans::default(),
        Arc::new(FakeClock::default()),
        BillingConfiguredLayer::new(false),
        Default::default(),
        Duration::from_secs(1),
    );
    let router: Router = Router::new().route("/boom", get(boom)).layer(d.nat());
    let s = Running::start(router, d.keys, FakeClock::default()).await;
    let a = s
        .call(Method::GET, "/boom", Some(s.key(Plan::TEAM)), None)
        .await;
    a.assert_envelope(
        500,
        r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#,
    );
    // The server keeps serving after the panic.
    let a = s.call(Method::GET, "/boom", None, None).await;
    a.assert_envelope(401, UNAUTHORIZED);
}

/// Writes `bytes` on a new connection and reads until the server closes it (or two minutes
/// pass, and the test fails): what came back, and how long it took on tokio's clock.
async fn until_closed(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut received));
    read.await
        .expect("the server closes the connection")
        .unwrap();
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// Whether `waited` is `timeout`, give or take a second.
fn about(waited: Duration, timeout: Duration) -> bool {
    waited >= timeout && waited < timeout + Duration::from_secs(1)
}

/// A connection that sends half a request line, and a keep-alive connection left idle, are
/// both closed after the demo's header-read timeout (on tokio's paused clock: the test takes
/// no wall time).
#[tokio::test(start_paused = true)]
async fn half_requests_and_idle_connections_are_closed() {
    let timeout = nat_demo::HEADER_READ_TIMEOUT;
    let s = demo(BillingConfiguredLayer::new(false)).await;

    let (text, waited) = until_closed(s.addr, b"GET /healthz HT").await;
    assert!(about(waited, timeout), "{waited:?}");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    let request = b"GET /healthz HTTP/1.1\r\nhost: demo\r\n\r\n";
    let (text, waited) = until_closed(s.addr, request).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");
    assert!(about(waited, timeout), "{waited:?}");
}

/// The demo's own routes answer in the envelope too: a path parameter that is not UTF-8,
/// a method the route does not have, a path that does not exist.
#[tokio::test]
async fn the_demos_own_refusals_are_in_the_envelope() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let pro = s.key(Plan::PRO).to_owned();
    s.call(Method::GET, "/api/v1/scan/%FF", Some(&pro), None)
        .await
        .assert_envelope(400, &invalid("Invalid URL: Invalid UTF-8 in `id`"));
    let a = s
        .call(Method::DELETE, "/api/v1/usage", Some(&pro), None)
        .await;
    a.assert_envelope(405, &invalid("Method not allowed."));
    assert_eq!(a.headers["allow"], "GET,HEAD");
    s.call(Method::GET, "/api/v2/usage", Some(&pro), None)
        .await
        .assert_envelope(404, NOT_FOUND);
}

/// A request whose body never finishes is answered 408 in the envelope after the demo's
/// request timeout (tokio's paused clock: no wall time).
#[tokio::test(start_paused = true)]
async fn a_slow_body_gets_a_408_in_the_envelope() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let key = s.key(Plan::PRO).to_owned();
    let head = format!(
        "POST /api/v1/scan HTTP/1.1\r\nhost: demo\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"url\":"
    );
    let (text, waited) = until_closed(s.addr, head.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout"), "{text}");
    assert!(
        text.ends_with(r#"{"error":"INVALID_REQUEST","message":"Request Timeout."}"#),
        "{text}"
    );
    assert!(
        waited >= nat_demo::REQUEST_TIMEOUT
            && waited < nat_demo::REQUEST_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test]
async fn pro_runs_three_scans_at_once_and_a_finished_scan_frees_its_slot() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let pro = s.key(Plan::PRO).to_owned();
    let create = || {
        s.call(
            Method::POST,
            "/api/v1/scan",
            Some(&pro),
            Some(r#"{"url":"https://e.example"}"#),
        )
    };
    for _ in 0..3 {
        assert_eq!(create().await.status, 202);
    }
    let a = create().await;
    a.assert_envelope(
        429,
        r#"{"error":"RATE_LIMITED","message":"Concurrent scan limit reached: 3 scans may run at a time on the Pro plan.","retry_after":10}"#,
    );
    assert_eq!(a.headers["retry-after"], "10");
    let usage = s.call(Method::GET, "/api/v1/usage", Some(&pro), None).await;
    assert!(usage.body.contains(r#""scans_used":3"#), "{}", usage.body);
    assert!(
        usage
            .body
            .ends_with(r#""scans_running":3,"concurrent_scans_limit":3}"#),
        "{}",
        usage.body
    );
    // The demo's scans take 3 s: then their slots are free.
    s.clock.advance(Duration::from_secs(3));
    assert_eq!(create().await.status, 202);
    let usage = s.call(Method::GET, "/api/v1/usage", Some(&pro), None).await;
    assert!(
        usage
            .body
            .ends_with(r#""scans_running":1,"concurrent_scans_limit":3}"#)
    );
}

/// The trial's critical finding, as it was found: a Free key and a gRPC `Content-Type` on the
/// demo's REST scan route created a security scan (202, charged as functional). Every
/// variant is now refused, the gRPC ones in gRPC form, and nothing is charged.
#[tokio::test]
async fn a_grpc_content_type_on_the_scan_route_is_refused() {
    let s = demo(BillingConfiguredLayer::new(false)).await;
    let free = s.key(Plan::FREE).to_owned();
    let send = |content_type: &'static str, body: &'static str| {
        let req = Request::post(format!("http://{}/api/v1/scan", s.addr))
            .header("x-api-key", &free)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let client = s.client.clone();
        async move {
            let response = client.request(req).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.status, parts.headers, body)
        }
    };
    let security = r#"{"url":"https://example.com","mode":"security"}"#;
    // (Free has 8 requests a minute here: seven of them are spent below.)
    let no_url = r#"{"mode":"functional"}"#;
    for (content_type, body) in [
        ("application/grpc", security),
        ("application/grpc+json", security),
        ("application/grpc+proto", no_url),
        ("APPLICATION/GRPC", no_url),
    ] {
        let (status, headers, bytes) = send(content_type, body).await;
        assert_eq!(status, 200, "{content_type}");
        assert_eq!(headers["grpc-status"], "3", "{content_type}");
        // This client speaks HTTP/1.1, where a gRPC call's final status cannot arrive.
        assert_eq!(headers["grpc-message"], "gRPC calls need HTTP/2.");
        assert!(bytes.is_empty());
    }
    for content_type in ["application/grpc-web", "application/grpcx"] {
        let (status, _, bytes) = send(content_type, security).await;
        assert_eq!(status, 400);
        assert_eq!(bytes, invalid("Content-Type must be application/json."));
    }
    let usage = s
        .call(Method::GET, "/api/v1/usage", Some(&free), None)
        .await;
    assert!(
        usage
            .body
            .contains(r#""scans_used":0,"scans_limit":2,"security_scan_count":0"#),
        "{}",
        usage.body
    );
}

/// The demo with `NAT_ADMIN_TOKENS`: the admin API at `/admin`, outside the stack, behind its
/// own token; a key it issues works at once and stops at once when revoked, and a tenant on a
/// plan the table lacks is refused.
#[tokio::test]
async fn the_admin_api_issues_and_revokes_keys() {
    let token = "ops-0123456789abcdef0123456789abcdef";
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap());
    let demo = Demo::new(
        Plans::default(),
        Arc::new(clock.clone()),
        BillingConfiguredLayer::new(false),
        [None, None, None, None],
        Duration::from_secs(3),
    );
    let keys = demo.key_store.clone();
    let demo = demo.with_admin(keys, &format!("ops:{token}")).unwrap();
    let s = Running::start(demo.router(demo.nat()), demo.keys, clock).await;
    let admin = |method: Method, path: &str, body: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", s.addr))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let client = s.client.clone();
        async move {
            let response = client.request(req).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
        }
    };
    // The admin API takes no API key, and an API key does not open it.
    let pro = s.key(Plan::PRO).to_owned();
    s.call(Method::GET, "/admin/tenants", Some(&pro), None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
    let (status, body) = admin(Method::GET, "/admin/tenants?limit=2", None).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with(r#"{"items":[{"id":"demo-enterprise","plan":"enterprise""#),
        "{body}"
    );
    assert!(body.ends_with(r#""next":"demo-free"}"#), "{body}");

    let (status, body) = admin(
        Method::POST,
        "/admin/tenants",
        Some(r#"{"id":"acme","plan":"gold"}"#),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, invalid("Unknown plan: gold.").as_str())
    );
    let (status, _) = admin(
        Method::POST,
        "/admin/tenants",
        Some(r#"{"id":"acme","plan":"team"}"#),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = admin(Method::POST, "/admin/tenants/acme/keys", None).await;
    assert_eq!(status, 201);
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key = issued["key"].as_str().unwrap().to_owned();
    let reply = s.call(Method::GET, "/api/v1/usage", Some(&key), None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .body
            .starts_with(r#"{"tenant_id":"acme","plan":"team""#),
        "{}",
        reply.body
    );
    let (status, body) = admin(Method::GET, "/admin/tenants/acme/usage", None).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with(r#"{"tenant_id":"acme","plan":"team","scans_used":0"#),
        "{body}"
    );

    let path = format!("/admin/keys/{}", issued["id"].as_str().unwrap());
    assert_eq!(
        admin(Method::DELETE, &path, None).await,
        (204, String::new())
    );
    s.call(Method::GET, "/api/v1/usage", Some(&key), None)
        .await
        .assert_envelope(401, UNAUTHORIZED);
}

#[tokio::test]
async fn database_urls_are_refused_with_the_reason_and_never_echoed() {
    let demo = Demo::new(
        Plans::default(),
        Arc::new(FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap())),
        BillingConfiguredLayer::new(false),
        [None, None, None, None],
        Duration::from_secs(3),
    );
    let refused = |url: &'static str| {
        let demo = &demo;
        async move {
            let message = demo.postgres(url).await.expect_err("refused");
            assert!(!message.contains("hunter2"), "{message}");
            message
        }
    };
    assert_eq!(
        refused("not a url").await,
        "NAT_DATABASE_URL: postgres: invalid connection string"
    );
    let prefer = refused("postgres://nat:hunter2@127.0.0.1:1/nat?sslmode=prefer").await;
    assert!(
        prefer.starts_with("NAT_DATABASE_URL: postgres: sslmode=prefer is refused"),
        "{prefer}"
    );
    let tls = refused("postgres://nat:hunter2@127.0.0.1:1/nat?sslmode=verify-full").await;
    if cfg!(feature = "tls") {
        // The system's roots load; the database is not there.
        assert!(tls.starts_with("NAT_DATABASE_URL: "), "{tls}");
        assert!(!tls.contains("`tls` feature"), "{tls}");
    } else {
        assert_eq!(
            tls,
            "NAT_DATABASE_URL: postgres: sslmode=verify-full needs tower-nat's `tls` feature: \
             run the demo with --features tls"
        );
    }
}
