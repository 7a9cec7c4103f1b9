//! The demo's `/metrics`: Prometheus text from the recorder the server installs, with exact
//! counts after a known sequence of requests. One test in its own binary: the recorder is
//! global to the process.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use nat_demo::Demo;
use tower::ServiceExt;
use tower_nat::{
    billing::BillingConfiguredLayer,
    clock::{FakeClock, UtcDate},
    plan::{Plan, Plans},
};

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_without_a_key() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 20).unwrap());
    let demo = Demo::new(
        Plans::default(),
        Arc::new(clock),
        BillingConfiguredLayer::new(false),
        Default::default(),
        std::time::Duration::from_secs(3),
    )
    .with_metrics(handle);
    let app = demo.router(demo.nat());
    let free = demo.key(&Plan::FREE).unwrap().expose().to_owned();
    let call = |path: &str, key: Option<&str>, body: Option<&str>| {
        let mut req = Request::builder().uri(path);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let req = match body {
            Some(body) => req
                .method("POST")
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned())),
            None => req.body(Body::empty()),
        };
        app.clone().oneshot(req.unwrap())
    };
    let statuses = [
        call("/api/v1/usage", Some(&free), None)
            .await
            .unwrap()
            .status(),
        call("/api/v1/usage", None, None).await.unwrap().status(),
        call(
            "/api/v1/scan",
            Some(&free),
            Some(r#"{"url":"https://e.example","mode":"security"}"#),
        )
        .await
        .unwrap()
        .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 401, 403]);

    let response = call("/metrics", None, None).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let mut samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    samples.sort();
    assert_eq!(
        samples,
        [
            // The app is called without a client address: its failed authentication could
            // not be throttled, and says so.
            "nat_auth_unthrottled_failures_total 1",
            r#"nat_rejections_total{code="FEATURE_NOT_AVAILABLE",plan="free",layer="feature_gate",shadow="false"} 1"#,
            r#"nat_rejections_total{code="UNAUTHORIZED",plan="none",layer="auth",shadow="false"} 1"#,
            r#"nat_requests_total{outcome="allowed"} 1"#,
            // Registered when the stack was built: present from the start, at 0.
            r#"nat_requests_total{outcome="error"} 0"#,
            r#"nat_requests_total{outcome="rejected"} 2"#,
        ],
        "{text}"
    );
}
