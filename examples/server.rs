//! The NAT API demo: every layer of tower-nat composed in front of a small axum app, on
//! loopback, with in-memory stores.
//!
//! ```text
//! cargo run --example server
//! ```
//!
//! Environment:
//! - `NAT_ADDR`: where to listen (default `127.0.0.1:8080`).
//! - `NAT_DEMO_KEY_FREE`, `NAT_DEMO_KEY_PRO`, `NAT_DEMO_KEY_TEAM`, `NAT_DEMO_KEY_ENTERPRISE`:
//!   fixed demo keys (`nat_pk_` and 32 letters or digits); random ones otherwise.
//! - `NAT_PLANS`: a JSON file that overrides the plan table, e.g.
//!   `{"free": {"requests_per_minute": 5, "functional_scans_per_month": 3}}`.
//! - `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`: both set, billing routes answer (as a
//!   demo); otherwise they answer 503 `STRIPE_NOT_CONFIGURED`.
//! - `NAT_SCAN_SECONDS`: how long a demo scan runs (default 3).
//! - `NAT_REDIS_URL`: keep rate limits and quotas in Redis (`redis://127.0.0.1:6379/`), shared
//!   by every instance; needs `--features redis`.
//!
//! On start it prints the address and one key per plan (`free key: nat_pk_...`). They are
//! demo keys, printed so you can use them; a real server never prints or logs keys.
#![allow(dead_code)] // The end-to-end tests include this file as a module.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};
use tower_nat::{
    NatError, NatLayer, StoreError, Tenant,
    auth::{ApiKey, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    clock::{SharedClock, SystemClock, UtcDate},
    quota::{QuotaStore, Usage},
    rate_limit::RateStore,
    tenant::{Plan, Plans},
};

/// A demo scan.
#[derive(Clone, Debug)]
struct Scan {
    id: String,
    tenant: String,
    url: String,
    mode: String,
    created: Duration,
}

type UsageFn = Arc<
    dyn Fn(Tenant) -> Pin<Box<dyn Future<Output = Result<Usage, StoreError>> + Send>> + Send + Sync,
>;

/// The demo's scans, oldest forgotten first beyond [`Scans::KEEP`], so a long run stays small.
#[derive(Default)]
struct Scans {
    by_id: HashMap<String, Scan>,
    order: std::collections::VecDeque<String>,
}

impl Scans {
    const KEEP: usize = 10_000;

    fn insert(&mut self, scan: Scan) {
        self.order.push_back(scan.id.clone());
        self.by_id.insert(scan.id.clone(), scan);
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

#[derive(Clone)]
struct AppState {
    usage: UsageFn,
    scans: Arc<Mutex<Scans>>,
    clock: SharedClock,
    scan_duration: Duration,
    billing_configured: bool,
}

/// Everything the demo is made of, so tests can build it with their own clock and plans.
pub struct Demo {
    /// The composed layers (and usage queries).
    pub nat: NatLayer,
    /// One demo key per plan, cheapest first.
    pub keys: Vec<(Plan, ApiKey)>,
    /// The clock scans and quotas run on.
    pub clock: SharedClock,
    /// How long a demo scan runs.
    pub scan_duration: Duration,
    /// The billing check.
    pub billing: BillingConfiguredLayer,
    /// Redis for rate limits and quotas, if any.
    pub redis_url: Option<String>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // ApiKey's Debug shows only a prefix.
        f.debug_struct("Demo")
            .field("nat", &self.nat)
            .field("keys", &self.keys)
            .field("scan_duration", &self.scan_duration)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// One tenant per plan (`demo-free`, `demo-pro`, ...), each with one key: the fixed key
    /// given for its plan, or a new random one.
    pub fn new(
        plans: Plans,
        clock: SharedClock,
        billing: BillingConfiguredLayer,
        fixed: [Option<ApiKey>; 4],
        scan_duration: Duration,
    ) -> Self {
        let store = MemoryKeyStore::new();
        let mut keys = Vec::new();
        for (plan, fixed) in Plan::ALL.into_iter().zip(fixed) {
            let tenant = format!("demo-{plan}");
            store.insert_tenant(tenant.as_str(), plan);
            let key = fixed.unwrap_or_else(ApiKey::generate);
            store.add_key(&tenant, &key, None).expect("tenant exists");
            keys.push((plan, key));
        }
        let nat = NatLayer::new(store)
            .clock(clock.clone())
            .plans(plans)
            .billing(billing.clone())
            .exempt("/healthz")
            .exempt("/api/v1/billing/webhook");
        Self {
            nat,
            keys,
            clock,
            scan_duration,
            billing,
            redis_url: None,
        }
    }

    /// The demo configured from the environment (see the file's docs).
    pub fn from_env() -> Result<Self, String> {
        let plans = match std::env::var("NAT_PLANS") {
            Ok(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("NAT_PLANS: cannot read {path}: {e}"))?;
                Plans::from_json(&text).map_err(|e| format!("NAT_PLANS: {e}"))?
            }
            Err(_) => Plans::default(),
        };
        let mut fixed: [Option<ApiKey>; 4] = Default::default();
        for (slot, plan) in fixed.iter_mut().zip(Plan::ALL) {
            let var = format!("NAT_DEMO_KEY_{}", plan.as_str().to_uppercase());
            if let Ok(value) = std::env::var(&var) {
                // Never echo the value: it is meant to be a secret.
                *slot = Some(ApiKey::parse(&value).ok_or_else(|| {
                    format!("{var} must be nat_pk_ followed by 32 letters or digits")
                })?);
            }
        }
        let seconds = match std::env::var("NAT_SCAN_SECONDS") {
            Ok(s) => s
                .parse::<u64>()
                .map_err(|_| "NAT_SCAN_SECONDS must be a whole number".to_owned())?,
            Err(_) => 3,
        };
        let mut demo = Self::new(
            plans,
            Arc::new(SystemClock),
            BillingConfiguredLayer::from_env(),
            fixed,
            Duration::from_secs(seconds),
        );
        demo.redis_url = std::env::var("NAT_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty());
        Ok(demo)
    }

    /// The demo app with every layer in front of it, on Redis stores when `redis_url` is set.
    pub fn router(&self) -> Result<Router, String> {
        match &self.redis_url {
            None => Ok(self.router_with(self.nat.clone())),
            Some(url) => self.redis_router(url),
        }
    }

    #[cfg(feature = "redis")]
    fn redis_router(&self, url: &str) -> Result<Router, String> {
        use tower_nat::{
            quota::RedisQuotaStore, rate_limit::RedisRateStore, store::redis::RedisBackend,
        };
        let backend = RedisBackend::open(url).map_err(|e| format!("NAT_REDIS_URL: {e}"))?;
        let nat = self
            .nat
            .clone()
            .with_rate_store(RedisRateStore::new(backend.clone()))
            .with_quota_store(RedisQuotaStore::new(backend));
        Ok(self.router_with(nat))
    }

    #[cfg(not(feature = "redis"))]
    fn redis_router(&self, _url: &str) -> Result<Router, String> {
        Err(
            "NAT_REDIS_URL is set, but the example was built without the redis feature: \
             run it with --features redis"
                .to_owned(),
        )
    }

    fn router_with<R, Q>(&self, nat: NatLayer<MemoryKeyStore, R, Q>) -> Router
    where
        R: RateStore,
        Q: QuotaStore,
    {
        let for_usage = nat.clone();
        let usage_of: UsageFn = Arc::new(move |tenant: Tenant| {
            let nat = for_usage.clone();
            Box::pin(async move { nat.usage(&tenant).await })
        });
        let state = AppState {
            usage: usage_of,
            scans: Arc::default(),
            clock: self.clock.clone(),
            scan_duration: self.scan_duration,
            billing_configured: self.billing.is_configured(),
        };
        Router::new()
            .route("/api/v1/usage", get(usage))
            .route("/api/v1/scan", post(create_scan))
            .route("/api/v1/scan/{id}", get(get_scan))
            .route("/api/v1/scans", get(list_scans))
            .route("/api/v1/billing/checkout", post(checkout))
            .route("/api/v1/billing/webhook", post(webhook))
            .route("/healthz", get(healthz))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(state)
            .layer(nat)
    }
}

/// A `NatError` as an axum response (no `axum` feature needed).
fn nat_error(error: NatError) -> Response {
    error.into_response().map(axum::body::Body::new)
}

async fn not_found() -> Response {
    nat_error(NatError::not_found())
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn usage(State(state): State<AppState>, Extension(tenant): Extension<Tenant>) -> Response {
    match (state.usage)(tenant).await {
        Ok(usage) => Json(usage).into_response(),
        Err(_) => nat_error(NatError::Internal),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time since the Unix epoch.
fn rfc3339(t: Duration) -> String {
    let secs = t.as_secs() % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        UtcDate::from_unix(t),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn scan_json(scan: &Scan, now: Duration, duration: Duration) -> Value {
    let done = now >= scan.created + duration;
    let mut value = json!({
        "scan_id": scan.id,
        "status": if done { "completed" } else { "running" },
        "url": scan.url,
        "mode": scan.mode,
        "created_at": rfc3339(scan.created),
    });
    if done {
        value["completed_at"] = json!(rfc3339(scan.created + duration));
    }
    value
}

fn new_scan_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("scan_{hex}")
}

async fn create_scan(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    body: Bytes,
) -> Response {
    // ValidateScanRequest has checked the body: it is an object with a string `url` and a
    // known `mode`, if any.
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return nat_error(NatError::Internal);
    };
    let scan = Scan {
        id: new_scan_id(),
        tenant: tenant.id().to_string(),
        url: body["url"].as_str().unwrap_or_default().to_owned(),
        mode: body["mode"].as_str().unwrap_or("functional").to_owned(),
        created: state.clock.now(),
    };
    let value = scan_json(&scan, scan.created, state.scan_duration);
    state.scans.lock().unwrap().insert(scan);
    (StatusCode::ACCEPTED, Json(value)).into_response()
}

async fn get_scan(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Response {
    let scans = state.scans.lock().unwrap();
    match scans.by_id.get(&id) {
        // Another tenant's scan is as missing as one that never existed: the same bytes.
        Some(scan) if scan.tenant == tenant.id().as_str() => {
            Json(scan_json(scan, state.clock.now(), state.scan_duration)).into_response()
        }
        _ => nat_error(NatError::not_found_with("Scan not found.")),
    }
}

async fn list_scans(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
) -> Json<Value> {
    // The tenant's 100 most recent scans, oldest first.
    let now = state.clock.now();
    let scans = state.scans.lock().unwrap();
    let mut list: Vec<Value> = scans
        .order
        .iter()
        .rev()
        .filter_map(|id| scans.by_id.get(id))
        .filter(|s| s.tenant == tenant.id().as_str())
        .take(100)
        .map(|s| scan_json(s, now, state.scan_duration))
        .collect();
    list.reverse();
    Json(json!({ "scans": list }))
}

async fn checkout(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    body: Bytes,
) -> Response {
    // BillingConfigured answers 503 before this runs when Stripe is not configured.
    debug_assert!(state.billing_configured);
    let plan = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["plan"].as_str().map(str::to_owned));
    Json(json!({
        "demo": true,
        "message": "Demo server: no checkout session was created and Stripe was not called.",
        "tenant_id": tenant.id(),
        "plan": plan,
    }))
    .into_response()
}

async fn webhook() -> Json<Value> {
    Json(json!({"received": true, "demo": true}))
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    let demo = match Demo::from_env() {
        Ok(demo) => demo,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = match std::env::var("NAT_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()
    {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!("error: NAT_ADDR must be an address such as 127.0.0.1:8080");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "NAT demo API listening on http://{}",
        listener.local_addr().unwrap()
    );
    for (plan, key) in &demo.keys {
        println!("{plan} key: {}", key.expose());
    }
    println!(
        "billing: {}",
        if demo.billing.is_configured() {
            "configured (demo responses)"
        } else {
            "not configured (503 on /api/v1/billing/*)"
        }
    );
    if demo.redis_url.is_some() {
        println!("stores: Redis (NAT_REDIS_URL)");
    }
    println!("press Ctrl-C to stop");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down");
    };
    let router = match demo.router() {
        Ok(router) => router,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(listener, router, shutdown).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
