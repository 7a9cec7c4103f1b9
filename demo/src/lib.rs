//! The NAT demo API: every layer of tower-nat in front of a small axum app, served on hyper
//! with the timeouts a public server needs.
//!
//! `cargo run --example server` (in the tower-nat repository) runs it; the end-to-end tests
//! build it with their own clock and plan table. The app:
//!
//! | route | answers |
//! |---|---|
//! | `GET /api/v1/usage` | the tenant's usage snapshot |
//! | `POST /api/v1/scan` | 202 with a new scan (validated, feature-gated and charged by the layers) |
//! | `GET /api/v1/scan/{id}` | the scan, or 404 `Scan not found.` (also for another tenant's) |
//! | `GET /api/v1/scans` | the tenant's 100 most recent scans |
//! | `POST /api/v1/billing/checkout` | a demo answer (503 while billing is not configured) |
//! | `POST /api/v1/billing/webhook` | a demo answer, without a key (503 while billing is not configured) |
//! | `GET /healthz` | `{"status":"ok"}`, without a key |
//! | `GET /openapi.json` | the API's OpenAPI document, every error the stack sends included ([`openapi`]), without a key |
//!
//! Everything else, and every refusal of axum's own (unrouted paths, wrong methods, bad path
//! parameters), is answered in the NAT envelope.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Extension, Path, State},
    http::StatusCode,
    routing::{get, post},
};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use tower_nat::{
    NatError, NatLayer,
    admin::AdminApi,
    auth::{ApiKey, CachedKeyStore, KeyAdmin, KeyStore, MemoryKeyStore, PgKeyStore},
    billing::BillingConfiguredLayer,
    clock::{SharedClock, SystemClock, UtcDate},
    concurrency::{ScanSlot, SlotStore},
    envelope::ErrorEnvelopeLayer,
    plan::{Plan, Plans},
    quota::{QuotaStore, Usage, UsageReader},
    rate_limit::RateStore,
    tenant::Tenant,
};

/// How long a client may take to send a request's headers, and how long a keep-alive
/// connection may sit idle between requests: hyper counts both from the moment it waits for
/// the next request head. Past it, the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole request may take (its body included) before it is answered 408, in the
/// envelope.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The message of a 404 for a scan that does not exist or is another tenant's.
const SCAN_NOT_FOUND: &str = "Scan not found.";

/// A demo scan.
#[derive(Clone, Debug)]
struct Scan {
    id: String,
    tenant: String,
    url: String,
    mode: String,
    created: Duration,
}

/// The demo's scans, oldest forgotten first beyond [`Scans::KEEP`], so a long run stays small.
#[derive(Debug, Default)]
struct Scans {
    by_id: HashMap<String, Scan>,
    order: VecDeque<String>,
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
    usage: UsageReader,
    scans: Arc<Mutex<Scans>>,
    clock: SharedClock,
    scan_duration: Duration,
}

/// The demo's tenants, keys, plans, clock and billing: everything but the stores, which
/// [`Demo::nat`] puts in memory and a server may swap (Redis, with the `redis` feature).
#[derive(Debug)]
pub struct Demo {
    /// One demo key per plan, cheapest first.
    pub keys: Vec<(Plan, ApiKey)>,
    /// The key store holding them.
    pub key_store: MemoryKeyStore,
    /// The plan table.
    pub plans: Arc<Plans>,
    /// The clock scans and quotas run on.
    pub clock: SharedClock,
    /// How long a demo scan runs.
    pub scan_duration: Duration,
    /// The billing check.
    pub billing: BillingConfiguredLayer,
    /// Where `/metrics` reads the Prometheus text from (none: no `/metrics` route).
    pub metrics: Option<PrometheusHandle>,
    /// The admin API to mount at `/admin`, given the layers' usage reader.
    admin: Option<AdminMount>,
}

/// Builds the admin router once the layers' stores are known (for its usage route).
#[derive(Clone)]
struct AdminMount(Arc<dyn Fn(UsageReader) -> Router + Send + Sync>);

impl std::fmt::Debug for AdminMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminMount")
    }
}

impl Demo {
    /// One tenant per built-in plan (`demo-free`, `demo-pro`, ...), each with one key: the
    /// fixed key given for its plan, or a new random one.
    pub fn new(
        plans: Plans,
        clock: SharedClock,
        billing: BillingConfiguredLayer,
        fixed: [Option<ApiKey>; 4],
        scan_duration: Duration,
    ) -> Self {
        let key_store = MemoryKeyStore::new().plans(plans.clone());
        let mut keys = Vec::new();
        for (plan, fixed) in Plan::BUILT_IN.into_iter().zip(fixed) {
            let tenant = format!("demo-{plan}");
            key_store
                .insert_tenant(tenant.as_str(), plan.clone())
                .unwrap();
            let key = fixed.unwrap_or_else(ApiKey::generate);
            key_store.add_key(&tenant, &key, None);
            keys.push((plan, key));
        }
        Self {
            keys,
            key_store,
            plans: Arc::new(plans),
            clock,
            scan_duration,
            billing,
            metrics: None,
            admin: None,
        }
    }

    /// Mounts the admin API at `/admin` (outside the NAT stack: admins are not tenants), over
    /// `store`, for the `name:secret` tokens of `tokens` (`NAT_ADMIN_TOKENS`). The error says
    /// what is wrong with the tokens, never repeating one.
    pub fn with_admin<S: KeyAdmin>(mut self, store: S, tokens: &str) -> Result<Self, String> {
        let api = AdminApi::new(store)
            .clock(self.clock.clone())
            .tokens(tokens)
            .map_err(|e| format!("NAT_ADMIN_TOKENS: {e}"))?;
        self.admin = Some(AdminMount(Arc::new(move |usage| {
            api.clone().usage(usage).into_router()
        })));
        Ok(self)
    }

    /// Serves the metrics `handle` renders at `/metrics` (Prometheus text, no key needed).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The key of `plan`'s demo tenant.
    pub fn key(&self, plan: &Plan) -> Option<&ApiKey> {
        self.keys.iter().find(|(p, _)| p == plan).map(|(_, k)| k)
    }

    /// Every layer of the demo, on in-memory stores: the health check and the Stripe webhook
    /// need no key.
    pub fn nat(&self) -> NatLayer {
        self.nat_with(self.key_store.clone())
    }

    /// Every layer of the demo, with keys from `keys`.
    pub fn nat_with<K>(&self, keys: K) -> NatLayer<K> {
        NatLayer::new(keys)
            .plans(self.plans.clone())
            .clock(self.clock.clone())
            .billing(self.billing.clone())
            .exempt("/healthz")
            .exempt("/openapi.json")
            .exempt("/metrics")
            .exempt("/api/v1/billing/webhook")
            .max_scan_duration(self.scan_duration)
    }

    /// The demo's tenants and keys in PostgreSQL at `url` (schema migrated, tenants and keys
    /// added if missing), behind a cache. The error never repeats the URL.
    pub async fn postgres(&self, url: &str) -> Result<CachedKeyStore<PgKeyStore>, String> {
        // The error never repeats the URL: an invalid one, or a refused `sslmode`.
        let db = PgKeyStore::new(url)
            .map_err(|e| refused("NAT_DATABASE_URL", &e))?
            .plans(self.plans.clone());
        // The deepest cause: the driver's words, never the URL.
        fn failed(e: impl std::error::Error) -> String {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(source) = cause.source() {
                cause = source;
            }
            format!("NAT_DATABASE_URL: {cause}")
        }
        db.migrate().await.map_err(failed)?;
        for (plan, key) in &self.keys {
            let tenant = format!("demo-{plan}");
            db.insert_tenant(&tenant, plan).await.map_err(failed)?;
            db.add_key(&tenant, key, None).await.map_err(failed)?;
        }
        Ok(CachedKeyStore::new(db))
    }

    /// The demo app behind `nat` (whatever its stores), with a request timeout outside it
    /// whose 408 is put in the envelope too.
    pub fn router<K, R, Q, C>(&self, nat: NatLayer<K, R, Q, C>) -> Router
    where
        K: KeyStore,
        R: RateStore,
        Q: QuotaStore,
        C: SlotStore,
    {
        let state = AppState {
            usage: nat.usage_reader(),
            scans: Arc::default(),
            clock: self.clock.clone(),
            scan_duration: self.scan_duration,
        };
        let api = Router::new()
            .route("/usage", get(usage))
            .route("/scan", post(create_scan))
            .route("/scan/{id}", get(get_scan))
            .route("/scans", get(list_scans))
            .route("/billing/checkout", post(checkout))
            .route("/billing/webhook", post(webhook));
        let document = Bytes::from(openapi(&nat).to_pretty_json().unwrap_or_default());
        let mut app = Router::new()
            .nest("/api/v1", api)
            .route("/healthz", get(healthz))
            .route(
                "/openapi.json",
                get(move || {
                    let document = document.clone();
                    async move { ([(http::header::CONTENT_TYPE, "application/json")], document) }
                }),
            );
        if let Some(handle) = self.metrics.clone() {
            app = app.route(
                "/metrics",
                get(move || {
                    let text = handle.render();
                    async move {
                        (
                            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            text,
                        )
                    }
                }),
            );
        }
        let usage = state.usage.clone();
        let mut app = app.with_state(state).layer(nat);
        if let Some(admin) = &self.admin {
            // After the stack's layer: the admin routes are outside it.
            app = app.nest("/admin", (admin.0)(usage));
        }
        app.layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(ErrorEnvelopeLayer::new())
    }
}

/// The demo API's OpenAPI document: its operations, with every error `nat` can answer to
/// each, the key they need and the rate-limit headers (exempt routes, the scan route, the
/// billing prefix and the plan table decide which).
pub fn openapi<K, R, Q, C>(nat: &NatLayer<K, R, Q, C>) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{
        Content, HttpMethod, InfoBuilder, OpenApiBuilder, PathItem, PathsBuilder, RefOr, Required,
        ResponseBuilder, Schema,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
    };
    // path, method, operation id, summary, success status and description, JSON body.
    let operations = [
        (
            "/api/v1/usage",
            HttpMethod::Get,
            "usage",
            "The tenant's usage this period",
            "200",
            "The usage snapshot.",
            false,
        ),
        (
            "/api/v1/scan",
            HttpMethod::Post,
            "create_scan",
            "Start a scan",
            "202",
            "The new scan.",
            true,
        ),
        (
            "/api/v1/scan/{id}",
            HttpMethod::Get,
            "get_scan",
            "A scan",
            "200",
            "The scan.",
            false,
        ),
        (
            "/api/v1/scans",
            HttpMethod::Get,
            "list_scans",
            "The tenant's recent scans",
            "200",
            "The scans.",
            false,
        ),
        (
            "/api/v1/billing/checkout",
            HttpMethod::Post,
            "checkout",
            "Start a checkout",
            "200",
            "A demo answer.",
            true,
        ),
        (
            "/api/v1/billing/webhook",
            HttpMethod::Post,
            "webhook",
            "Stripe's webhook",
            "200",
            "Received.",
            false,
        ),
        (
            "/healthz",
            HttpMethod::Get,
            "healthz",
            "Health check",
            "200",
            "`{\"status\":\"ok\"}`",
            false,
        ),
    ];
    let mut paths = PathsBuilder::new();
    for (path, method, id, summary, status, description, body) in operations {
        let mut op = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .response(status, ResponseBuilder::new().description(description));
        if body {
            let json = Content::new(None::<RefOr<Schema>>);
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json)
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        if path.contains("{id}") {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .build(),
            );
        }
        paths = paths.path(path, PathItem::new(method, op));
    }
    let info = InfoBuilder::new()
        .title("NAT demo API")
        .version("1")
        .build();
    let mut doc = OpenApiBuilder::new().info(info).paths(paths).build();
    nat.openapi_errors()
        .not_found_message(SCAN_NOT_FOUND)
        .apply(&mut doc);
    doc
}

/// The demo's settings, read from the environment.
#[derive(Debug)]
pub struct Settings {
    /// `NAT_ADDR`: where to listen (default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// `NAT_PLANS`: a JSON plan table file (see `Plans::from_json`).
    pub plans: Plans,
    /// `NAT_DEMO_KEY_FREE`, `_PRO`, `_TEAM`, `_ENTERPRISE`: fixed demo keys.
    pub fixed_keys: [Option<ApiKey>; 4],
    /// `NAT_SCAN_SECONDS`: how long a demo scan runs (default 3).
    pub scan_duration: Duration,
    /// `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`: both set, billing routes answer.
    pub billing: BillingConfiguredLayer,
    /// `NAT_REDIS_URL`: keep rate limits, quotas and running scans in Redis (one URL), or in
    /// a Redis Cluster (several comma-separated URLs, or `redis+cluster://host:port,...`).
    pub redis_url: Option<String>,
    /// `NAT_INSTANCES`: with Redis, how many instances share it; while Redis fails, each
    /// enforces its share of every rate limit locally (unset: requests pass while Redis is
    /// down).
    pub instances: Option<std::num::NonZeroU32>,
    /// `NAT_DATABASE_URL`: keep tenants and keys in PostgreSQL.
    pub database_url: Option<String>,
    /// `NAT_METRICS`: serve Prometheus metrics at `/metrics` (on unless `0`).
    pub metrics: bool,
    /// `NAT_ADMIN_TOKENS`: the admin API at `/admin`, for these `name:secret` tokens.
    pub admin_tokens: Option<String>,
}

impl Settings {
    /// Reads the settings; the error says which variable is wrong (never echoing a key).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let addr = var("NAT_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
            .parse()
            .map_err(|_| "NAT_ADDR must be an address such as 127.0.0.1:8080".to_owned())?;
        let plans = match var("NAT_PLANS") {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("NAT_PLANS: cannot read {path}: {e}"))?;
                Plans::from_json(&text).map_err(|e| {
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    format!("NAT_PLANS: {e}{cause}")
                })?
            }
            None => Plans::default(),
        };
        let mut fixed_keys: [Option<ApiKey>; 4] = Default::default();
        for (slot, plan) in fixed_keys.iter_mut().zip(Plan::BUILT_IN) {
            let name = format!("NAT_DEMO_KEY_{}", plan.name().to_uppercase());
            if let Some(value) = var(&name) {
                // Never echo the value: it is meant to be a secret.
                *slot = Some(ApiKey::parse(&value).ok_or_else(|| {
                    format!("{name} must be nat_pk_ followed by 32 letters or digits")
                })?);
            }
        }
        let seconds = match var("NAT_SCAN_SECONDS") {
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| "NAT_SCAN_SECONDS must be a whole number".to_owned())?,
            None => 3,
        };
        let instances = match var("NAT_INSTANCES") {
            Some(n) => Some(
                n.parse::<std::num::NonZeroU32>()
                    .map_err(|_| "NAT_INSTANCES must be a whole number of at least 1".to_owned())?,
            ),
            None => None,
        };
        Ok(Self {
            addr,
            plans,
            instances,
            fixed_keys,
            scan_duration: Duration::from_secs(seconds),
            billing: BillingConfiguredLayer::from_env(),
            redis_url: var("NAT_REDIS_URL"),
            database_url: var("NAT_DATABASE_URL"),
            metrics: var("NAT_METRICS").is_none_or(|v| v != "0"),
            admin_tokens: var("NAT_ADMIN_TOKENS"),
        })
    }

    /// The demo these settings describe, on the system clock.
    pub fn demo(&self) -> Demo {
        Demo::new(
            self.plans.clone(),
            Arc::new(SystemClock),
            self.billing.clone(),
            self.fixed_keys.clone(),
            self.scan_duration,
        )
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight finish
/// (for at most [`SHUTDOWN_GRACE`]).
///
/// Each connection gets [`HEADER_READ_TIMEOUT`] to send a request's headers, and may sit idle
/// between requests for as long; HTTP/2 connections are pinged and closed when silent. The
/// client's address reaches handlers and layers as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HEADER_READ_TIMEOUT))
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is not an error of the server.
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn usage(State(state): State<AppState>, tenant: Tenant) -> Result<Json<Usage>, NatError> {
    Ok(Json(state.usage.usage(&tenant).await?))
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

fn new_scan_id() -> Result<String, NatError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|_| NatError::Internal)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("scan_{hex}"))
}

fn scans(state: &AppState) -> std::sync::MutexGuard<'_, Scans> {
    state
        .scans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn create_scan(
    State(state): State<AppState>,
    tenant: Tenant,
    slot: Option<Extension<ScanSlot>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), NatError> {
    // ValidateScanRequest has checked the body: an object with a string `url` and a known
    // `mode`, if any.
    let body: Value = serde_json::from_slice(&body).map_err(|_| NatError::Internal)?;
    let scan = Scan {
        id: new_scan_id()?,
        tenant: tenant.id().to_string(),
        url: body["url"].as_str().unwrap_or_default().to_owned(),
        mode: body["mode"].as_str().unwrap_or("functional").to_owned(),
        created: state.clock.now(),
    };
    let value = scan_json(&scan, scan.created, state.scan_duration);
    scans(&state).insert(scan);
    // The scan ends after the demo's scan duration: its concurrency slot is freed then (and
    // lapses at that time on the layer's clock anyway: `max_scan_duration`).
    if let Some(Extension(slot)) = slot {
        let duration = state.scan_duration;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            slot.release();
        });
    }
    Ok((StatusCode::ACCEPTED, Json(value)))
}

async fn get_scan(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, NatError> {
    let scans = scans(&state);
    match scans.by_id.get(&id) {
        // Another tenant's scan is as missing as one that never existed: the same bytes.
        Some(scan) if scan.tenant == tenant.id().as_str() => Ok(Json(scan_json(
            scan,
            state.clock.now(),
            state.scan_duration,
        ))),
        _ => Err(NatError::not_found_with(SCAN_NOT_FOUND)),
    }
}

async fn list_scans(State(state): State<AppState>, tenant: Tenant) -> Json<Value> {
    // The tenant's 100 most recent scans, oldest first.
    let now = state.clock.now();
    let scans = scans(&state);
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

async fn checkout(tenant: Tenant, body: Bytes) -> Json<Value> {
    // BillingConfigured answers 503 before this runs when Stripe is not configured.
    let plan = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["plan"].as_str().map(str::to_owned));
    Json(json!({
        "demo": true,
        "message": "Demo server: no checkout session was created and Stripe was not called.",
        "tenant_id": tenant.id(),
        "plan": plan,
    }))
}

async fn webhook() -> Json<Value> {
    Json(json!({"received": true, "demo": true}))
}

/// Why the store named by the environment variable `var` was refused (never its URL), and
/// what to do when it asks for TLS that this build lacks.
pub fn refused(var: &str, error: &tower_nat::StoreError) -> String {
    let cause =
        std::error::Error::source(error).map_or_else(|| error.to_string(), |c| c.to_string());
    let mut message = format!("{var}: {cause}");
    if message.contains("`tls` feature") {
        message.push_str(": run the demo with --features tls");
    }
    message
}
