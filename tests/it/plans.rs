//! The open plan model: plans and features of a server's own, per-tenant overrides honoured by
//! every layer, the headers and the usage snapshot; errors at load time, never at request
//! time; a tenant whose plan the table lacks is refused with 500, never given a guess.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    clock::{FakeClock, UtcDate},
    feature_gate::FeatureGateLayer,
    plan::{Allowance, Feature, LimitOverrides, Plan, PlanLimits, Plans},
};

use crate::common::{Counted, INTERNAL, assert_envelope, empty, handler, header, quota_body, send};

const TABLE: &str = r#"{
    "features": {"sso": "Single sign-on", "exports": "Data exports"},
    "plans": {
        "startup": {"extends": "pro", "display_name": "Startup", "requests_per_minute": 60,
                    "functional_scans_per_month": 3, "features": ["security_scanning", "sso"]},
        "hobby": {"requests_per_minute": 5, "functional_scans_per_month": 1,
                  "security_scans_per_month": 0}
    }
}"#;

fn table() -> Arc<Plans> {
    Arc::new(Plans::from_json(TABLE).unwrap())
}

#[test]
fn the_table_reads_plans_and_features_by_name() {
    let plans = table();
    let startup = plans.get(&Plan::new("startup")).unwrap();
    assert_eq!(startup.requests_per_minute, 60);
    assert_eq!(startup.functional_scans_per_month, Allowance::Limited(3));
    // Inherited from pro.
    assert_eq!(startup.security_scans_per_month, Allowance::Limited(100));
    assert_eq!(startup.concurrent_scans, 3);
    let sso = plans.feature("sso").unwrap();
    assert_eq!(sso.display_name(), "Single sign-on");
    assert!(startup.has(sso) && startup.has(&Feature::SECURITY_SCANNING));
    assert!(!startup.has(plans.feature("exports").unwrap()));
    assert_eq!(plans.plan("startup").unwrap().display_name(), "Startup");
    let hobby = plans.get(&Plan::new("hobby")).unwrap();
    assert_eq!((hobby.features.len(), hobby.concurrent_scans), (0, 1));
    // NAT's four are still there, unchanged.
    assert_eq!(plans.get(&Plan::TEAM), Plans::default().get(&Plan::TEAM));
    // The table round-trips through its own JSON.
    let json = serde_json::to_string(&*plans).unwrap();
    assert_eq!(Plans::from_json(&json).unwrap(), *plans);
}

#[test]
fn configuration_errors_come_at_load_time() {
    let cases = [
        (
            r#"{"plans": {"pro": {"features": ["ssso"]}}}"#,
            "invalid plan table: plan `pro` lists the unknown feature `ssso`",
        ),
        (
            r#"{"plans": {"gold": {"requests_per_minute": 10}}}"#,
            "invalid plan table: the new plan `gold` needs `functional_scans_per_month` (or `extends`)",
        ),
        (
            r#"{"plans": {"gold": {"extends": "platinum"}}}"#,
            "invalid plan table: plan `gold` extends the unknown plan `platinum`",
        ),
        (
            r#"{"plans": {"free": {"requests_per_minute": 0}}}"#,
            "invalid plan table: plan `free`: requests_per_minute must be at least 1",
        ),
        (
            r#"{"plans": {"Gold Plan": {"extends": "pro"}}}"#,
            "invalid plan table: `Gold Plan` is not a valid plan name (1 to 64 characters from [a-z0-9_-])",
        ),
        (
            r#"{"plans": {"free": {"rpm": 3}}}"#,
            "invalid plan table: the JSON does not describe a plan table",
        ),
        (
            r#"{"free": {"requests_per_minute": 3}}"#,
            "invalid plan table: the JSON does not describe a plan table",
        ),
        (
            r#"{"plans": {"lite": {"extends": "free", "features": {"remove": ["security_scanning"]}}}}"#,
            "invalid plan table: plan `lite` removes the feature `security_scanning`, which it does not inherit",
        ),
        (
            r#"{"plans": {"plus": {"extends": "pro", "features": {"add": ["sso"]}}}}"#,
            "invalid plan table: plan `plus` lists the unknown feature `sso`",
        ),
        (
            r#"{"plans": {"plus": {"extends": "pro", "features": {"drop": ["x"]}}}}"#,
            "invalid plan table: plan `plus`: `features` is a list of names, or {\"add\": [...], \"remove\": [...]} (unknown field `drop`, expected `add` or `remove`)",
        ),
        (
            r#"{"plans": {"plus": {"extends": "pro", "features": "sso"}}}"#,
            "invalid plan table: plan `plus`: `features` is a list of names, or {\"add\": [...], \"remove\": [...]} (invalid type: string \"sso\", expected struct Edit)",
        ),
    ];
    for (json, message) in cases {
        let error = Plans::from_json(json).unwrap_err();
        assert_eq!(error.to_string(), message, "{json}");
    }
    // The parser's own error, with its position, is the source, not part of the message.
    let error = Plans::from_json(r#"{"plans": {"free": {"rpm": 3}}}"#).unwrap_err();
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(
        source.contains("unknown field `rpm`") && source.contains("column"),
        "{source}"
    );
    // In code, the same checks at `build`.
    let error = Plans::builder()
        .plan(
            Plan::new("gold"),
            PlanLimits {
                features: vec![Feature::new("sso", "SSO")],
                ..Plans::default().get(&Plan::PRO).unwrap().clone()
            },
        )
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid plan table: plan `gold` lists the unknown feature `sso`"
    );
}

/// `extends` with `features` as a change: "startup extends pro and adds exports" keeps pro's
/// security scanning; a plan may also drop an inherited feature, and chains of extension
/// apply each change in turn.
#[test]
fn extended_plans_add_to_and_remove_from_inherited_features() {
    let plans = Plans::from_json(
        r#"{
            "features": {"exports": "Exports", "sso": "Single sign-on"},
            "plans": {
                "startup": {"extends": "pro", "features": {"add": ["exports"]}},
                "scale": {"extends": "startup", "features": {"add": ["sso"], "remove": ["exports"]}},
                "basic": {"extends": "pro", "features": {"remove": ["security_scanning"]}},
                "exact": {"extends": "pro", "features": ["exports"]}
            }
        }"#,
    )
    .unwrap();
    let names = |plan: &str| -> Vec<String> {
        let limits = plans.get(&Plan::new(plan)).unwrap();
        limits
            .features
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    };
    assert_eq!(names("pro"), ["security_scanning"]);
    assert_eq!(names("startup"), ["security_scanning", "exports"]);
    assert_eq!(names("scale"), ["security_scanning", "sso"]);
    assert!(names("basic").is_empty());
    assert_eq!(names("exact"), ["exports"]);
}

/// The whole stack for tenants on the table's plans, with one tenant on its own contract.
fn stack() -> (MemoryKeyStore, NatLayer, FakeClock) {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("young", Plan::new("startup")).unwrap();
    keys.insert_tenant("big", Plan::ENTERPRISE).unwrap();
    keys.set_overrides(
        "big",
        LimitOverrides {
            requests_per_minute: Some(5_000),
            functional_scans_per_month: Some(Allowance::Limited(2)),
            ..LimitOverrides::default()
        },
    )
    .unwrap();
    keys.insert_tenant("ghost", Plan::new("gold")).unwrap();
    let clock = FakeClock::at_date(UtcDate::new(2025, 3, 10).unwrap());
    let nat = NatLayer::new(keys.clone())
        .plans(table())
        .clock(Arc::new(clock.clone()));
    (keys, nat, clock)
}

fn req(method: Method, path: &str, key: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .body(Full::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_plan_of_the_servers_own_is_honoured_everywhere() {
    let (keys, nat, _clock) = stack();
    let key = keys.issue_key("young", None).unwrap().key;
    let svc = ServiceBuilder::new().layer(nat.clone()).service(handler());
    let got = send(&svc, req(Method::GET, "/api/v1/usage", key.expose(), "")).await;
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 60);
    let scan = |body| req(Method::POST, "/api/v1/scan", key.expose(), body);
    for _ in 0..3 {
        assert_eq!(send(&svc, scan(r#"{"url":"u"}"#)).await.0, 202);
    }
    assert_envelope(
        &send(&svc, scan(r#"{"url":"u"}"#)).await,
        402,
        &quota_body("2025-04-01"),
    );
    // Security scans: the plan has the feature and Pro's 100.
    assert_eq!(
        send(&svc, scan(r#"{"url":"u","mode":"security"}"#)).await.0,
        202
    );
    let usage = nat
        .usage(&tower_nat::tenant::Tenant::new(
            "young",
            Plan::new("startup"),
            "k",
        ))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_string(&usage).unwrap(),
        r#"{"tenant_id":"young","plan":"startup","scans_used":3,"scans_limit":3,"security_scan_count":1,"monthly_security_scan_quota":100,"approaching_limit":true,"quota_reset_date":"2025-04-01T00:00:00Z","period_start":"2025-03-01T00:00:00Z","period_end":"2025-03-31T23:59:59Z","scans_running":0,"concurrent_scans_limit":3}"#
    );
}

#[tokio::test]
async fn a_features_own_gate_names_the_tables_display_names() {
    let plans = table();
    let sso = plans.feature("sso").unwrap().clone();
    let exports = plans.feature("exports").unwrap().clone();
    let counted = Counted::default();
    let svc = |feature| {
        ServiceBuilder::new()
            .layer(FeatureGateLayer::require(feature, plans.clone()))
            .service(counted.service())
    };
    let as_tenant = |plan: Plan| {
        let mut r = empty(http::Request::get("/sso"));
        r.extensions_mut()
            .insert(tower_nat::tenant::Tenant::new("t", plan, "k"));
        r
    };
    assert_eq!(
        send(&svc(sso.clone()), as_tenant(Plan::new("startup")))
            .await
            .0,
        200
    );
    assert_envelope(
        &send(&svc(exports), as_tenant(Plan::new("startup"))).await,
        403,
        r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Data exports is not available on the Startup plan. Upgrade to access.","feature":"exports","plan":"startup"}"#,
    );
    assert_envelope(
        &send(&svc(sso), as_tenant(Plan::PRO)).await,
        403,
        r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Single sign-on is not available on the Pro plan. Upgrade to access.","feature":"sso","plan":"pro"}"#,
    );
    assert_eq!(counted.calls(), 1);
}

#[tokio::test]
async fn a_tenants_own_limits_are_honoured_everywhere() {
    let (keys, nat, _clock) = stack();
    let key = keys.issue_key("big", None).unwrap().key;
    let svc = ServiceBuilder::new().layer(nat.clone()).service(handler());
    let got = send(&svc, req(Method::GET, "/api/v1/usage", key.expose(), "")).await;
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 5_000);
    assert_eq!(header(&got.1, "x-ratelimit-remaining"), 4_999);
    let scan = || req(Method::POST, "/api/v1/scan", key.expose(), r#"{"url":"u"}"#);
    assert_eq!(send(&svc, scan()).await.0, 202);
    assert_eq!(send(&svc, scan()).await.0, 202);
    assert_envelope(&send(&svc, scan()).await, 402, &quota_body("2025-04-01"));
    let tenant = keys.get(&key.hash()).unwrap().tenant;
    let usage = nat.usage(&tenant).await.unwrap();
    assert_eq!(
        (
            usage.plan.name(),
            usage.scans_limit,
            usage.monthly_security_scan_quota
        ),
        ("enterprise", Some(2), None)
    );
    // A change of contract applies to the next request.
    keys.set_overrides("big", LimitOverrides::default())
        .unwrap();
    assert_eq!(send(&svc, scan()).await.0, 202);
    let got = send(&svc, req(Method::GET, "/api/v1/usage", key.expose(), "")).await;
    assert_eq!(header(&got.1, "x-ratelimit-limit"), 1_000);
}

#[tokio::test]
async fn a_plan_the_table_lacks_is_a_500_never_a_guess() {
    let (keys, nat, _clock) = stack();
    let key = keys.issue_key("ghost", None).unwrap().key;
    let svc = ServiceBuilder::new().layer(nat.clone()).service(handler());
    for (method, path, body) in [
        (Method::GET, "/api/v1/usage", ""),
        (Method::POST, "/api/v1/scan", r#"{"url":"u"}"#),
    ] {
        assert_envelope(
            &send(&svc, req(method, path, key.expose(), body)).await,
            500,
            INTERNAL,
        );
    }
    let tenant = keys.get(&key.hash()).unwrap().tenant;
    let error = nat.usage(&tenant).await.unwrap_err();
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert_eq!(
        cause,
        "the plan `gold` of tenant `ghost` is not in the plan table"
    );
}
