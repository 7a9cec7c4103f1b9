//! Metrics: the README's tour of every error through `NatLayer`, with exact counts for every
//! series; store calls, failures and fail-open; and nothing but the facade without a
//! recorder. Each test records into its own recorder (`metrics::with_local_recorder` on a
//! current-thread runtime), so tests running at once do not mix their counts.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::Layer;
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    clock::{FakeClock, UtcDate},
    plan::{Allowance, LimitOverrides, Plan},
};

use crate::common::{
    empty, get, handler, send,
    stores::{Broken, Later},
};

/// Every series recorded while `f` ran: "name{label=value,...}" (labels sorted) → the
/// counter's value, or the number of a histogram's samples.
fn recorded<F: Future>(f: impl FnOnce() -> F) -> (F::Output, BTreeMap<String, u64>) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    });
    let series = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(g) => g.into_inner() as u64,
            };
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .filter(|(_, value)| *value > 0)
        .collect();
    (out, series)
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn scan(key: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post("/api/v1/scan")
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap()
}

#[test]
fn the_tour_of_every_error_counts_every_series_exactly() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    keys.set_overrides(
        "free",
        LimitOverrides {
            functional_scans_per_month: Some(Allowance::Limited(1)),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    keys.insert_tenant("limited", Plan::PRO).unwrap();
    keys.set_overrides(
        "limited",
        LimitOverrides {
            requests_per_minute: Some(1),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    let free = keys.issue_key("free", None).unwrap().key;
    let limited = keys.issue_key("limited", None).unwrap().key;
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let nat = NatLayer::new(keys).clock(Arc::new(clock));
    let f = free.expose();
    let l = limited.expose();

    // The stack registers its request counters when it wraps the handler: inside the
    // recorder's scope.
    let (statuses, series) = recorded(|| async {
        let service = nat.layer(handler());
        let get_with = |key: Option<&str>, outcome: Option<&str>| {
            let mut b = get("/api/v1/usage");
            if let Some(key) = key {
                b = b.header("x-api-key", key);
            }
            if let Some(outcome) = outcome {
                b = b.header("x-outcome", outcome);
            }
            empty(b)
        };
        let mut statuses = Vec::new();
        for req in [
            get_with(Some(f), None),                                     // 200
            get_with(None, None),                                        // 401
            scan(f, "{}"),                                               // 400
            scan(f, r#"{"url":"https://a.example","mode":"security"}"#), // 403
            scan(f, r#"{"url":"https://a.example"}"#),                   // 202
            scan(f, r#"{"url":"https://a.example"}"#),                   // 402
            get_with(Some(l), None),                                     // 200, 0 left
            get_with(Some(l), None),                                     // 429
            get_with(Some(f), Some("panic")),                            // 500 (the handler)
            get_with(Some(f), Some("404")),                              // the handler's own 404
        ] {
            statuses.push(send(&service, req).await.0.as_u16());
        }
        let billing = http::Request::post("/api/v1/billing/checkout")
            .header("x-api-key", f)
            .body(http_body_util::Full::default())
            .unwrap();
        statuses.push(send(&service, billing).await.0.as_u16()); // 503
        statuses
    });
    assert_eq!(
        statuses,
        [200, 401, 400, 403, 202, 402, 200, 429, 500, 404, 503]
    );
    assert_eq!(
        series,
        expect(&[
            // The tour's requests carry no client address: its one failed authentication
            // could not be throttled, and says so.
            ("nat_auth_unthrottled_failures_total{}", 1),
            ("nat_quota_exhausted_total{kind=functional,plan=free}", 1),
            ("nat_rate_limit_near_limit_total{plan=pro}", 1),
            (
                "nat_rejections_total{code=FEATURE_NOT_AVAILABLE,layer=feature_gate,plan=free,shadow=false}",
                1
            ),
            (
                "nat_rejections_total{code=INVALID_REQUEST,layer=scan_request,plan=free,shadow=false}",
                1
            ),
            (
                "nat_rejections_total{code=QUOTA_EXCEEDED,layer=quota,plan=free,shadow=false}",
                1
            ),
            (
                "nat_rejections_total{code=RATE_LIMITED,layer=rate_limit,plan=pro,shadow=false}",
                1
            ),
            (
                "nat_rejections_total{code=STRIPE_NOT_CONFIGURED,layer=billing,plan=none,shadow=false}",
                1
            ),
            (
                "nat_rejections_total{code=UNAUTHORIZED,layer=auth,plan=none,shadow=false}",
                1
            ),
            ("nat_requests_total{outcome=allowed}", 4),
            ("nat_requests_total{outcome=error}", 1),
            ("nat_requests_total{outcome=rejected}", 6),
        ])
    );
}

#[test]
fn store_calls_failures_and_fail_open_are_counted() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("acme", Plan::PRO).unwrap();
    let key = keys.issue_key("acme", None).unwrap().key;
    // Keys answer later (timed); the rate store fails later (timed, an error, fail open).
    let nat = NatLayer::new(Later(keys)).with_rate_store(Broken::Later);
    let (status, series) = recorded(|| async {
        let service = nat.layer(handler());
        send(
            &service,
            empty(get("/api/v1/usage").header("x-api-key", key.expose())),
        )
        .await
        .0
    });
    assert_eq!(status, 200);
    assert_eq!(
        series,
        expect(&[
            ("nat_fail_open_total{layer=rate_limit}", 1),
            ("nat_requests_total{outcome=allowed}", 1),
            (
                "nat_store_duration_seconds{op=check,outcome=error,store=rate}",
                1
            ),
            (
                "nat_store_duration_seconds{op=lookup,outcome=ok,store=key}",
                1
            ),
            ("nat_store_errors_total{op=check,store=rate}", 1),
        ])
    );
}

#[test]
fn a_failing_key_store_is_an_error_outcome() {
    let nat = NatLayer::new(Broken::Now);
    let key = tower_nat::auth::ApiKey::generate();
    let (status, series) = recorded(|| async {
        let service = nat.layer(handler());
        send(&service, empty(get("/").header("x-api-key", key.expose())))
            .await
            .0
    });
    assert_eq!(status, 500);
    assert_eq!(
        series,
        expect(&[
            (
                "nat_rejections_total{code=INTERNAL_ERROR,layer=auth,plan=none,shadow=false}",
                1
            ),
            ("nat_requests_total{outcome=error}", 1),
            ("nat_store_errors_total{op=lookup,store=key}", 1),
        ])
    );
}

#[test]
fn shadow_mode_counts_what_would_have_been_refused() {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    let free = keys.issue_key("free", None).unwrap().key;
    let nat = NatLayer::new(keys).shadow(true);
    let (statuses, series) = recorded(|| async {
        let service = nat.layer(handler());
        let security = scan(
            free.expose(),
            r#"{"url":"https://a.example","mode":"security"}"#,
        );
        vec![
            send(&service, empty(get("/api/v1/usage"))).await.0,
            send(&service, security).await.0,
        ]
    });
    assert_eq!(statuses, [200, 202]);
    assert_eq!(
        series,
        expect(&[
            ("nat_auth_unthrottled_failures_total{}", 1),
            // Free has no security scans: behind the feature gate, the quota would refuse
            // too (each layer decides as if the ones before had let the request through);
            // only real refusals count as exhausted quotas.
            (
                "nat_rejections_total{code=FEATURE_NOT_AVAILABLE,layer=feature_gate,plan=free,shadow=true}",
                1
            ),
            (
                "nat_rejections_total{code=QUOTA_EXCEEDED,layer=quota,plan=free,shadow=true}",
                1
            ),
            (
                "nat_rejections_total{code=UNAUTHORIZED,layer=auth,plan=none,shadow=true}",
                1
            ),
            (
                "nat_rejections_total{code=UNAUTHORIZED,layer=rate_limit,plan=none,shadow=true}",
                1
            ),
            ("nat_requests_total{outcome=allowed}", 2),
        ])
    );
}
