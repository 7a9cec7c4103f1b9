//! The client side (`tower_nat::client`) against the demo over loopback, on tokio's paused
//! clock: the demo's limits run on the same clock, so every wait is exact.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use nat_demo::Demo;
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt, retry::RetryLayer, util::BoxCloneService};
use tower_nat::{
    NatError,
    auth::ApiKey,
    billing::BillingConfiguredLayer,
    client::{ApiError, Idempotent, NatRetry, PollOptions, poll_scan},
    clock::{Clock, UtcDate},
    plan::{Plan, Plans},
};

/// Wall-clock time that follows tokio's (paused) clock, from 2025-01-15.
#[derive(Debug)]
struct TokioClock {
    start: Instant,
    epoch: Duration,
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.epoch + self.start.elapsed()
    }
}

type Http = BoxCloneService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;

struct Running {
    addr: SocketAddr,
    keys: Vec<(Plan, ApiKey)>,
    /// When each request left the client (retries included).
    sent: Arc<Mutex<Vec<Instant>>>,
    http: Http,
}

impl Running {
    /// The demo (Pro: one functional scan a month; scans run 30 s) on a loopback port.
    async fn start() -> Self {
        let clock = TokioClock {
            start: Instant::now(),
            epoch: Duration::from_secs(UtcDate::new(2025, 1, 15).unwrap().unix_seconds()),
        };
        let plans =
            Plans::from_json(r#"{"plans": {"pro": {"functional_scans_per_month": 1}}}"#).unwrap();
        let demo = Demo::new(
            plans,
            Arc::new(clock),
            BillingConfiguredLayer::new(false),
            [None, None, None, None],
            Duration::from_secs(30),
        );
        let app = demo.router(demo.nat());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let http = tower::service_fn(move |req: Request<Full<Bytes>>| {
            log.lock().unwrap().push(Instant::now());
            let client = client.clone();
            async move { client.request(req).await.map_err(BoxError::from) }
        });
        Self {
            addr,
            keys: demo.keys.clone(),
            sent,
            http: BoxCloneService::new(http),
        }
    }

    fn key(&self, plan: &Plan) -> &str {
        self.keys
            .iter()
            .find(|(p, _)| p == plan)
            .unwrap()
            .1
            .expose()
    }

    fn request(&self, method: Method, path: &str, key: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    /// Sends through `policy`; returns the answer and the times of its tries from the first.
    async fn send(
        &self,
        policy: NatRetry,
        req: Request<Full<Bytes>>,
    ) -> (Response<Incoming>, Vec<Duration>) {
        self.sent.lock().unwrap().clear();
        let client = ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(self.http.clone());
        let response = client.oneshot(req).await.unwrap();
        let sent = self.sent.lock().unwrap();
        let tries = sent.iter().map(|t| *t - sent[0]).collect();
        (response, tries)
    }

    /// Spends the rest of `key`'s burst of requests.
    async fn spend_burst(&self, key: &str) {
        loop {
            let req = self.request(Method::GET, "/api/v1/scans", key, "");
            let response = self.http.clone().oneshot(req).await.unwrap();
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                return;
            }
        }
    }
}

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|s| Duration::from_secs(*s)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_exactly_retry_after_then_goes_through() {
    let demo = Running::start().await;
    let free = demo.key(&Plan::FREE).to_owned();
    demo.spend_burst(&free).await;
    // Free: 30 a minute, one every 2 s; the burst is spent, so the next passes in 2 s.
    let req = demo.request(Method::GET, "/api/v1/usage", &free, "");
    let (response, tries) = demo.send(NatRetry::new().without_jitter(), req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(tries, secs(&[0, 2]));

    // A scan creation refused with 429 did nothing, so it is retried too.
    demo.spend_burst(&free).await;
    let scan = r#"{"url":"https://example.com"}"#;
    let req = demo.request(Method::POST, "/api/v1/scan", &free, scan);
    let (response, tries) = demo.send(NatRetry::new().without_jitter(), req).await;
    assert_eq!(response.status(), 202);
    assert_eq!(tries, secs(&[0, 2]));

    // Capped: a 10 s hint (Free's running scan) waited 3 s at most, three times, then given
    // back. (Ten seconds first, so the requests a minute allow every try.)
    tokio::time::sleep(Duration::from_secs(10)).await;
    let req = demo.request(Method::POST, "/api/v1/scan", &free, scan);
    let policy = NatRetry::new()
        .without_jitter()
        .max_wait(Duration::from_secs(3))
        .rate_retries(3);
    let (response, tries) = demo.send(policy, req).await;
    assert_eq!(response.status(), 429);
    assert_eq!(tries, secs(&[0, 3, 6, 9]));
    let error = ApiError::read(response).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(error.limit(), Some(30));
    assert!(matches!(
        error.error(),
        Some(NatError::ScansRunning { limit: 1, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_a_bounded_number_of_times_and_only_when_safe() {
    let demo = Running::start().await;
    let pro = demo.key(&Plan::PRO).to_owned();
    // 503: billing is not configured. A POST is not repeated by default...
    let req = demo.request(Method::POST, "/api/v1/billing/checkout", &pro, "{}");
    let (response, tries) = demo.send(NatRetry::new().without_jitter(), req).await;
    assert_eq!(response.status(), 503);
    assert_eq!(tries, secs(&[0]));
    // ...but is when the caller says it is safe: 1, 2, 4 s, then the last answer.
    let mut req = demo.request(Method::POST, "/api/v1/billing/checkout", &pro, "{}");
    req.extensions_mut().insert(Idempotent);
    let (response, tries) = demo.send(NatRetry::new().without_jitter(), req).await;
    assert_eq!(response.status(), 503);
    assert_eq!(tries, secs(&[0, 1, 3, 7]));
    let policy = NatRetry::new()
        .without_jitter()
        .retry_any_method(true)
        .server_retries(2)
        .backoff(Duration::from_millis(500), Duration::from_secs(60));
    let req = demo.request(Method::POST, "/api/v1/billing/checkout", &pro, "{}");
    let (response, tries) = demo.send(policy, req).await;
    let error = ApiError::read(response).await.unwrap_err();
    assert_eq!(error.error(), Some(&NatError::StripeNotConfigured));
    assert_eq!(
        tries,
        [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(1500)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_on_400_401_402_403_404() {
    let demo = Running::start().await;
    let pro = demo.key(&Plan::PRO).to_owned();
    let free = demo.key(&Plan::FREE).to_owned();
    let scan = r#"{"url":"https://example.com"}"#;
    let policy = || NatRetry::new().without_jitter().retry_any_method(true);

    let req = demo.request(Method::POST, "/api/v1/scan", &pro, scan);
    assert_eq!(demo.send(policy(), req).await.0.status(), 202);
    // 402: not retried; the caller learns the reset date.
    let req = demo.request(Method::POST, "/api/v1/scan", &pro, scan);
    let (response, tries) = demo.send(policy(), req).await;
    assert_eq!(tries, secs(&[0]));
    let error = ApiError::read(response).await.unwrap_err();
    assert_eq!(error.status(), 402);
    assert_eq!(error.resets_on(), UtcDate::new(2025, 2, 1));
    assert_eq!((error.limit(), error.remaining()), (Some(120), Some(118)));
    assert_eq!(
        error.body(),
        &Bytes::from_static(br#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}"#)
    );

    let cases = [
        (
            Method::POST,
            "/api/v1/scan",
            free.as_str(),
            r#"{"url":"https://example.com","mode":"security"}"#,
            403,
        ),
        (Method::POST, "/api/v1/scan", free.as_str(), "{}", 400),
        (Method::GET, "/api/v1/usage", "nat_pk_wrong", "", 401),
        (Method::GET, "/api/v1/scan/scan_0", pro.as_str(), "", 404),
    ];
    for (method, path, key, body, status) in cases {
        let req = demo.request(method, path, key, body);
        let (response, tries) = demo.send(policy(), req).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(tries, secs(&[0]), "{path}");
        let error = ApiError::read(response).await.unwrap_err();
        assert_eq!(error.error().unwrap().body(), error.body(), "{path}");
    }
}

/// The contract page's Python example (`poll_with_backoff`), ported: a scan polled every 5 s,
/// a 429 waited out, the interval doubled after it.
#[tokio::test(start_paused = true)]
async fn the_pages_back_off_example_finishes_a_scan_against_a_rate_limited_demo() {
    let demo = Running::start().await;
    let free = demo.key(&Plan::FREE).to_owned();
    let start = Instant::now();
    let req = demo.request(
        Method::POST,
        "/api/v1/scan",
        &free,
        r#"{"url":"https://example.com"}"#,
    );
    let (response, _) = demo.send(NatRetry::new(), req).await;
    assert_eq!(response.status(), 202);
    let (_, body) = ApiError::read(response).await.unwrap();
    let scan: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = scan["scan_id"].as_str().unwrap().to_owned();
    // Every request of the minute spent: the first poll is refused.
    demo.spend_burst(&free).await;

    demo.sent.lock().unwrap().clear();
    let uri = format!("http://{}/api/v1/scan/{id}", demo.addr)
        .parse()
        .unwrap();
    let mut http = demo.http.clone();
    let done = poll_scan(&mut http, &uri, &free, &PollOptions::default())
        .await
        .unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["scan_id"], id.as_str());
    // 429 at 0 s (Retry-After: 2), then the interval doubled to 10 s: polls at 2, 12, 22 and
    // 32 s; the scan (30 s) is complete at the last.
    let at: Vec<Duration> = demo
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|t| *t - start)
        .collect();
    assert_eq!(at, secs(&[0, 2, 12, 22, 32]));

    // An unknown scan ends the polling with its 404.
    let uri = format!("http://{}/api/v1/scan/scan_0", demo.addr)
        .parse()
        .unwrap();
    let mut http = demo.http.clone();
    let err = poll_scan(&mut http, &uri, &free, &PollOptions::default())
        .await
        .unwrap_err();
    match err {
        tower_nat::client::PollError::Api(error) => assert_eq!(error.status(), 404),
        other => panic!("{other}"),
    }
}
