//! A server for an external load generator (`wrk`): the same axum app, bare or behind
//! `NatLayer`, on a loopback port, with 1,000 tenants whose throwaway keys are written to a
//! file for the generator's script to rotate through. `benches/wrk/run.sh` alternates the
//! two servers round by round and reports the ratio.
//!
//! ```text
//! cargo run --release --features axum --example wrk_target -- bare 127.0.0.1:8181 /tmp/keys
//! cargo run --release --features axum --example wrk_target -- nat 127.0.0.1:8182 /tmp/keys
//! cargo run --release --features axum --example wrk_target -- glue 127.0.0.1:8184 /tmp/keys
//! ```
//!
//! `glue` is what a server author writes instead of this crate, for two of its nine jobs: a
//! middleware that takes the SHA-256 of `X-API-Key`, finds the tenant in a `HashMap`, puts it
//! in the extensions or answers a JSON 401; then tower_governor keyed by that tenant, with
//! `use_headers()`. It reads the keys `nat` wrote to the file.
//!
//! The keys are made for this run and live only in this process and that file: they are
//! written for the load generator, as a real server never would.

use std::{collections::HashMap, io::Write, sync::Arc};

use axum::{
    Json, Router, extract::Request, middleware::Next, response::IntoResponse, routing::get,
};
use sha2::Digest;
use tower_nat::{
    NatLayer,
    auth::MemoryKeyStore,
    billing::BillingConfiguredLayer,
    plan::{Plan, PlanLimits, Plans},
};

const TENANTS: usize = 1_000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(key_file)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: wrk_target bare|bare-headers|nat|nat-exempt|glue ADDR KEY_FILE");
        std::process::exit(2);
    };
    let app = Router::new().route(
        "/api/v1/scans",
        get(|| async { Json(serde_json::json!({"scans": []})) }),
    );
    let app = match mode.as_str() {
        "bare" => app,
        // The bare app with the two headers the contract puts on every response, as fixed
        // values: what those bytes cost on the wire, without the stack.
        "bare-headers" => app.layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                let headers = response.headers_mut();
                headers.insert(
                    "x-ratelimit-limit",
                    http::HeaderValue::from_static("10000000"),
                );
                headers.insert(
                    "x-ratelimit-remaining",
                    http::HeaderValue::from_static("9999999"),
                );
                response
            },
        )),
        "nat" | "nat-exempt" => {
            // One plan whose limit no tenant reaches: every request is admitted, as with the
            // bare server.
            let limits = PlanLimits {
                requests_per_minute: 10_000_000,
                ..Plans::default().get(&Plan::ENTERPRISE).unwrap().clone()
            };
            let plans = Plans::builder()
                .plan(Plan::ENTERPRISE, limits)
                .build()
                .unwrap();
            let keys = MemoryKeyStore::new();
            let mut file = std::fs::File::create(key_file).expect("the key file can be written");
            for i in 0..TENANTS {
                let id = format!("tenant-{i:04}");
                keys.insert_tenant(id.as_str(), Plan::ENTERPRISE).unwrap();
                let key = keys.issue_key(&id, None).unwrap().key;
                writeln!(file, "{}", key.expose()).unwrap();
            }
            let nat = NatLayer::new(keys)
                .plans(plans)
                .billing(BillingConfiguredLayer::new(false));
            // `nat-exempt`: the route needs no key (the stack's outer layers only).
            let nat = if mode == "nat-exempt" {
                nat.exempt("/api/v1/scans")
            } else {
                nat
            };
            app.layer(nat)
        }
        "glue" => {
            let text = std::fs::read_to_string(key_file).expect("nat wrote the key file");
            let keys: HashMap<[u8; 32], Arc<str>> = text
                .lines()
                .enumerate()
                .map(|(i, key)| {
                    (
                        sha2::Sha256::digest(key).into(),
                        format!("tenant-{i:04}").into(),
                    )
                })
                .collect();
            let keys = Arc::new(keys);
            let mut builder = tower_governor::governor::GovernorConfigBuilder::default()
                .key_extractor(GlueTenantKey);
            builder.per_nanosecond(1).burst_size(1_000_000_000);
            let governor = tower_governor::GovernorLayer {
                config: Arc::new(builder.use_headers().finish().unwrap()),
            };
            app.layer(governor).layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let keys = keys.clone();
                    glue_auth(keys, req, next)
                },
            ))
        }
        other => {
            eprintln!("unknown mode {other}: bare, bare-headers, nat, nat-exempt or glue");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .expect("the address is free");
    axum::serve(listener, app).await.unwrap();
}

/// The glue's tenant, in the request's extensions.
#[derive(Clone)]
struct GlueTenant(Arc<str>);

/// tower_governor keyed by the glue's tenant.
#[derive(Clone)]
struct GlueTenantKey;

impl tower_governor::key_extractor::KeyExtractor for GlueTenantKey {
    type Key = Arc<str>;

    fn extract<T>(
        &self,
        req: &http::Request<T>,
    ) -> Result<Arc<str>, tower_governor::GovernorError> {
        req.extensions()
            .get::<GlueTenant>()
            .map(|t| t.0.clone())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The glue's authentication: SHA-256 of the key, a `HashMap` lookup, the tenant in the
/// extensions, or a JSON 401.
async fn glue_auth(
    keys: Arc<HashMap<[u8; 32], Arc<str>>>,
    mut req: Request,
    next: Next,
) -> axum::response::Response {
    let tenant = req
        .headers()
        .get("x-api-key")
        .map(|key| <[u8; 32]>::from(sha2::Sha256::digest(key.as_bytes())))
        .and_then(|hash| keys.get(&hash).cloned());
    match tenant {
        Some(tenant) => {
            req.extensions_mut().insert(GlueTenant(tenant));
            next.run(req).await
        }
        None => (
            http::StatusCode::UNAUTHORIZED,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#,
        )
            .into_response(),
    }
}
