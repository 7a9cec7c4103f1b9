//! The admin API (feature `admin`): tenants, keys and usage over HTTP, for operators and
//! their scripts, over any store that can be administered ([`KeyAdmin`]: the in-memory store
//! and `PgKeyStore`).
//!
//! [`AdminApi::into_router`] gives an axum [`Router`]; mount it where you like (`/admin`),
//! outside [`NatLayer`](crate::NatLayer): admins are not tenants.
//!
//! **Its own authentication.** `Authorization: Bearer <token>`, where the token is one of
//! those given to [`AdminApi::token`] (never an API key): compared as SHA-256 digests, in
//! constant time, against every token. Its check wraps the whole router (every route, the
//! fallback, every method and spelling of a path), so no prefix slip can expose a route: a
//! request that reaches the router is authenticated before it is routed, and one that does not
//! reach it reaches no admin route. A router without tokens refuses everything. Failures get
//! the 401 envelope and are throttled per client address like failed API keys (20 a minute,
//! then 429 for every request from that address, right token or not).
//!
//! **Audit.** Every change is a `tracing` event at `INFO` on the target `tower_nat::audit`,
//! with `admin` (the token's name), `action` (`tenant.create`, `tenant.update`,
//! `tenant.delete`, `key.issue`, `key.revoke`, `key.rotate`, `key.update`), `tenant`,
//! `key_id` and, for a rotation, `new_key_id` (never a key), and counts in
//! `nat_admin_changes_total{action}`. Refused
//! authentication counts in `nat_admin_auth_failures_total`.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /tenants?after=ID&limit=N` | | 200 `{"items": [tenant], "next": ID or null}` |
//! | `POST /tenants` | `{"id", "plan", "overrides"?}` | 201 tenant; 409 if it exists |
//! | `GET /tenants/{id}` | | 200 tenant |
//! | `PATCH /tenants/{id}` | `{"plan"?, "overrides"?}` | 200 tenant |
//! | `DELETE /tenants/{id}` | | 204, its keys deleted with it |
//! | `GET /tenants/{id}/usage` | | 200 [`Usage`](crate::quota::Usage) (with [`AdminApi::usage`]) |
//! | `GET /tenants/{id}/keys?after=ID&limit=N` | | 200 `{"items": [key], "next": ID or null}` |
//! | `POST /tenants/{id}/keys` | `{"expires_at"?}` or none | 201 issued key: the only time it is shown |
//! | `GET /keys/{id}` | | 200 key |
//! | `PATCH /keys/{id}` | `{"expires_at": TIME or null}` | 200 key |
//! | `DELETE /keys/{id}` | | 204: revoked |
//! | `POST /keys/{id}/rotate` | `{"grace_seconds"?}` (0 by default) | 201 the new key; the old one works for the grace |
//!
//! A tenant is `{"id", "plan", "overrides", "created_at"}`; a key is `{"id", "tenant_id",
//! "created_at", "expires_at", "revoked_at", "last_used_at"}`; an issued key is `{"id",
//! "tenant_id", "key", "expires_at"}` with `Cache-Control: no-store`. Times are RFC 3339 in
//! UTC (`2026-03-01T12:00:00Z`). Lists are in id order, 100 items by default and 1,000 at most;
//! `next` is the `after` of the next page. Errors are the envelope: 400 `INVALID_REQUEST`
//! (malformed JSON, an unknown field, an unknown plan, named), 404 `NOT_FOUND`, 409, 400 for a
//! body over 64 KiB, 500 for a failing store; a refused request changes nothing.
//!
//! # Example
//!
//! ```
//! use axum::Router;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_nat::{admin::AdminApi, auth::MemoryKeyStore, plan::Plans};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = MemoryKeyStore::new().plans(Plans::default());
//! // Tokens from configuration, e.g. NAT_ADMIN_TOKENS="ops:<32 or more characters>".
//! let admin = AdminApi::new(keys.clone()).tokens("ops:correct-horse-battery-staple-2026")?;
//! let app: Router = Router::new().nest("/admin", admin.into_router());
//!
//! let request = http::Request::post("/admin/tenants")
//!     .header("authorization", "Bearer correct-horse-battery-staple-2026")
//!     .body(axum::body::Body::from(r#"{"id": "acme", "plan": "gold"}"#))?;
//! let response = app.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 400);
//! assert_eq!(
//!     response.into_body().collect().await?.to_bytes(),
//!     r#"{"error":"INVALID_REQUEST","message":"Unknown plan: gold."}"#
//! );
//!
//! // Without the token, every path under the mount point is the 401, `/admin` itself too.
//! for path in ["/admin", "/admin/tenants", "/admin/nothing"] {
//!     let request = http::Request::get(path).body(axum::body::Body::empty())?;
//!     assert_eq!(app.clone().oneshot(request).await?.status(), 401);
//! }
//! # Ok(()) }
//! ```

use std::{borrow::Cow, fmt, net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderValue, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    NatError,
    auth::{AdminError, IpNet, IssuedKey, KeyAdmin, KeyInfo, Page, TenantInfo},
    clock::{self, SharedClock},
    envelope::ErrorEnvelopeLayer,
    plan::{LimitOverrides, Plan},
    quota::UsageReader,
    tenant::{KeyId, Tenant, TenantId},
};

/// The longest grace a rotation may give the old key.
const MAX_GRACE: Duration = Duration::from_secs(366 * 86_400);

/// The largest body the admin API reads.
const BODY_LIMIT: usize = 64 * 1024;

/// The admin API over `store`: build it, give it tokens, and mount
/// [`into_router`](Self::into_router). See the [module docs](self).
#[derive(Clone)]
pub struct AdminApi<S> {
    store: S,
    tokens: Vec<AdminToken>,
    throttle: crate::auth::throttle::Throttle,
    usage: Option<UsageReader>,
    clock: SharedClock,
}

/// One admin token: its name (for the audit) and the SHA-256 of its secret.
#[derive(Clone)]
struct AdminToken {
    name: Arc<str>,
    digest: [u8; 32],
}

/// Why a token was refused at configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminTokenError(Cow<'static, str>);

impl fmt::Display for AdminTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdminTokenError {}

impl<S: KeyAdmin> AdminApi<S> {
    /// The admin API over `store`, with no token yet (it refuses everything until given
    /// one), reading the system clock.
    pub fn new(store: S) -> Self {
        Self {
            store,
            tokens: Vec::new(),
            throttle: crate::auth::throttle::Throttle::new(20, Duration::from_secs(60)),
            usage: None,
            clock: clock::system(),
        }
    }

    /// Accepts `secret` as `Authorization: Bearer <secret>`, audited as `name`. Names are 1
    /// to 64 characters from `[a-z0-9_-]` and unique; secrets are 32 to 256 visible ASCII
    /// characters (no spaces), so that they cannot be guessed. The error never repeats the
    /// secret.
    pub fn token(mut self, name: &str, secret: &str) -> Result<Self, AdminTokenError> {
        if !crate::plan::valid_name(name) {
            return Err(AdminTokenError(
                format!("the admin token name `{name}` is not 1 to 64 characters from [a-z0-9_-]")
                    .into(),
            ));
        }
        if self.tokens.iter().any(|t| &*t.name == name) {
            return Err(AdminTokenError(
                format!("two admin tokens are named `{name}`").into(),
            ));
        }
        if !(32..=256).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError(
                format!(
                    "the admin token `{name}` must be 32 to 256 visible ASCII characters, \
                     without spaces"
                )
                .into(),
            ));
        }
        self.tokens.push(AdminToken {
            name: Arc::from(name),
            digest: Sha256::digest(secret.as_bytes()).into(),
        });
        Ok(self)
    }

    /// Accepts the tokens of `spec`: `name:secret` pairs separated by commas, as an
    /// environment variable holds them (`NAT_ADMIN_TOKENS=ops:...,ci:...`). See
    /// [`token`](Self::token).
    pub fn tokens(self, spec: &str) -> Result<Self, AdminTokenError> {
        spec.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .try_fold(self, |api, pair| match pair.split_once(':') {
                Some((name, secret)) => api.token(name, secret),
                None => Err(AdminTokenError(
                    "admin tokens are written name:secret, separated by commas".into(),
                )),
            })
    }

    /// Serves `GET /tenants/{id}/usage` from `reader`
    /// ([`NatLayer::usage_reader`](crate::NatLayer::usage_reader): the same stores and plan
    /// table as the layers).
    #[must_use]
    pub fn usage(mut self, reader: UsageReader) -> Self {
        self.usage = Some(reader);
        self
    }

    /// Reads `clock` for the throttle and for rotations' grace (the system clock by default).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Refuses a client address with 429 for `period / limit` after it fails `limit`
    /// times in a row (20 a minute by default), as the API keys' throttle does.
    #[must_use]
    pub fn failed_auth_limit(mut self, limit: u32, period: Duration) -> Self {
        self.throttle.set_limit(limit, period);
        self
    }

    /// Reads the client address from `X-Forwarded-For` (or `Forwarded`) when the peer is
    /// one of `proxies`, as [`ApiKeyAuthLayer::trusted_proxies`](crate::auth::ApiKeyAuthLayer::trusted_proxies) does.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.throttle.trust(proxies);
        self
    }

    /// The router: every route behind the token check, every error in the envelope.
    pub fn into_router(self) -> Router {
        let gate = Arc::new(Gate {
            tokens: self.tokens,
            throttle: self.throttle,
            clock: self.clock,
        });
        let state = Arc::new(Shared {
            store: self.store,
            usage: self.usage,
        });
        Router::new()
            .route("/tenants", get(list_tenants::<S>).post(create_tenant::<S>))
            .route(
                "/tenants/{id}",
                get(get_tenant::<S>)
                    .patch(update_tenant::<S>)
                    .delete(delete_tenant::<S>),
            )
            .route("/tenants/{id}/usage", get(tenant_usage::<S>))
            .route(
                "/tenants/{id}/keys",
                get(list_keys::<S>).post(issue_key::<S>),
            )
            .route(
                "/keys/{id}",
                get(get_key::<S>)
                    .patch(update_key::<S>)
                    .delete(revoke_key::<S>),
            )
            .route("/keys/{id}/rotate", post(rotate_key::<S>))
            .fallback(|| async { NatError::not_found() })
            .with_state(state)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .layer(middleware::from_fn_with_state(gate, authenticate))
            .layer(ErrorEnvelopeLayer::new())
    }
}

impl<S> fmt::Debug for AdminApi<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|t| &*t.name).collect();
        f.debug_struct("AdminApi")
            .field("tokens", &names)
            .field("usage", &self.usage.is_some())
            .finish_non_exhaustive()
    }
}

/// What the token check needs.
struct Gate {
    tokens: Vec<AdminToken>,
    throttle: crate::auth::throttle::Throttle,
    clock: SharedClock,
}

/// Who made a change: the name of the token the request carried.
#[derive(Clone)]
struct Admin(Arc<str>);

impl Gate {
    /// The token `header` carries, if it is one of ours: every token's digest is compared,
    /// each in constant time.
    fn admit(&self, header: Option<&HeaderValue>) -> Option<Arc<str>> {
        let secret = header?.as_bytes().strip_prefix(b"Bearer ")?;
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let mut found = None;
        for token in &self.tokens {
            let difference = token
                .digest
                .iter()
                .zip(&digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(difference) == 0 {
                found = Some(token.name.clone());
            }
        }
        found
    }
}

/// The token check, before routing: a throttled address is refused (429), a request without
/// one of the tokens is refused (401) and counted against its address.
async fn authenticate(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let client: Option<IpAddr> = gate.throttle.client(&req);
    if let Some(ip) = client {
        if let Some(wait) = gate.throttle.wait(ip, || gate.clock.now()) {
            ::metrics::counter!(crate::metrics::ADMIN_AUTH_FAILURES).increment(1);
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let limit = gate.throttle.limit();
            return NatError::RateLimited { retry_after, limit }.into_response();
        }
    }
    match gate.admit(req.headers().get(header::AUTHORIZATION)) {
        Some(name) => {
            req.extensions_mut().insert(Admin(name));
            next.run(req).await
        }
        None => {
            ::metrics::counter!(crate::metrics::ADMIN_AUTH_FAILURES).increment(1);
            match client {
                Some(ip) => gate.throttle.failed(ip, gate.clock.now()),
                None => crate::auth::throttle::unattributed(),
            }
            NatError::Unauthorized.into_response()
        }
    }
}

/// What the handlers share.
struct Shared<S> {
    store: S,
    usage: Option<UsageReader>,
}

type AdminState<S> = State<Arc<Shared<S>>>;

/// An audit event and its count.
fn audit(admin: &Admin, action: &'static str, tenant: &str, key_id: Option<&KeyId>) {
    audit_with(admin, action, tenant, key_id, None);
}

/// [`audit`], naming the key a change made (a rotation's successor) as `new_key_id`.
fn audit_with(
    admin: &Admin,
    action: &'static str,
    tenant: &str,
    key_id: Option<&KeyId>,
    new_key_id: Option<&KeyId>,
) {
    ::metrics::counter!(crate::metrics::ADMIN_CHANGES, "action" => action).increment(1);
    tracing::info!(
        target: "tower_nat::audit",
        admin = &*admin.0,
        action,
        tenant,
        key_id = key_id.map(KeyId::as_str),
        new_key_id = new_key_id.map(KeyId::as_str),
        "admin change"
    );
}

/// An administration error as the envelope answers it.
fn refusal(error: AdminError, tenant: &str) -> NatError {
    match error {
        AdminError::UnknownPlan(plan) => {
            NatError::invalid_request(format!("Unknown plan: {plan}."))
        }
        AdminError::UnknownTenant => NatError::not_found_with("Tenant not found."),
        AdminError::UnknownKey => NatError::not_found_with("Key not found."),
        AdminError::TenantExists => NatError::rejected(
            StatusCode::CONFLICT,
            format!("Tenant {tenant} exists already."),
        ),
        AdminError::InvalidTenantId => NatError::invalid_request(
            "A tenant id is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not . or ..",
        ),
        AdminError::Store(error) => {
            crate::report::failure("admin API (key store)", &error);
            NatError::Internal
        }
        #[allow(unreachable_patterns)]
        _ => NatError::Internal,
    }
}

/// A JSON body of type `T`; `Default` when the body is empty and `empty_ok`.
fn json<T: for<'de> Deserialize<'de> + Default>(
    body: &Bytes,
    empty_ok: bool,
) -> Result<T, NatError> {
    if body.is_empty() && empty_ok {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        // serde's words name the field and what was expected, never internals.
        let what = error.to_string();
        let what = what.split(" at line ").next().unwrap_or_default();
        NatError::invalid_request(format!("Invalid JSON body: {what}."))
    })
}

/// A plan named in a body: the name's form is checked here, its existence by the store.
fn plan_named(name: &str) -> Result<Plan, NatError> {
    if !crate::plan::valid_name(name) {
        return Err(NatError::invalid_request(format!(
            "Unknown plan: {}.",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(Plan::new(name))
}

/// An RFC 3339 time in a body.
fn time(text: Option<&str>) -> Result<Option<Duration>, NatError> {
    text.map(|text| {
        crate::clock::parse_rfc3339(text).ok_or_else(|| {
            NatError::invalid_request("Times are RFC 3339 in UTC, e.g. 2026-03-01T12:00:00Z.")
        })
    })
    .transpose()
}

/// `?after=ID&limit=N`.
fn page(uri: &Uri) -> Result<Page, NatError> {
    let mut page = Page::first(0);
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after"
                if value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                page.after = Some(value.to_owned()).filter(|v| !v.is_empty());
            }
            "limit" => {
                page.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000).contains(n))
                    .ok_or_else(|| {
                        NatError::invalid_request("limit is a number from 1 to 1000.")
                    })?;
            }
            "after" => return Err(NatError::invalid_request("after is an id from a listing.")),
            _ => {}
        }
    }
    Ok(page)
}

/// A page of `items` as the API answers it: `next` is the last id when the page is full.
fn listing<T: Serialize>(items: Vec<T>, page: &Page, id: impl Fn(&T) -> String) -> Response {
    #[derive(Serialize)]
    struct Listing<T> {
        items: Vec<T>,
        next: Option<String>,
    }
    let next = (items.len() == page.size())
        .then(|| items.last().map(&id))
        .flatten();
    axum::Json(Listing { items, next }).into_response()
}

fn created(body: impl Serialize) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// An issued key: shown once, never cached.
fn issued(key: &IssuedKey, tenant: &str, expires_at: Option<Duration>) -> Response {
    #[derive(Serialize)]
    struct Issued<'a> {
        id: &'a KeyId,
        tenant_id: &'a str,
        key: &'a str,
        expires_at: Option<String>,
    }
    let mut response = created(Issued {
        id: &key.id,
        tenant_id: tenant,
        key: key.key.expose(),
        expires_at: expires_at.map(crate::clock::rfc3339),
    });
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A key as the API shows it.
struct KeyView {
    tenant_id: TenantId,
    info: KeyInfo,
}

impl Serialize for KeyView {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeMap;
        let time = |at: Option<Duration>| at.map(crate::clock::rfc3339);
        let info = &self.info;
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("id", &info.id)?;
        map.serialize_entry("tenant_id", &self.tenant_id)?;
        map.serialize_entry("created_at", &crate::clock::rfc3339(info.created_at))?;
        map.serialize_entry("expires_at", &time(info.expires_at))?;
        map.serialize_entry("revoked_at", &time(info.revoked_at))?;
        map.serialize_entry("last_used_at", &time(info.last_used_at))?;
        map.end()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    plan: String,
    #[serde(default)]
    overrides: LimitOverrides,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TenantChange {
    plan: Option<String>,
    overrides: Option<LimitOverrides>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    expires_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    /// Present (a time or `null`) or absent; absent is an error.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    #[serde(default)]
    grace_seconds: u64,
}

async fn list_tenants<S: KeyAdmin>(
    State(s): AdminState<S>,
    uri: Uri,
) -> Result<Response, NatError> {
    let page = page(&uri)?;
    let tenants = s.store.tenants(&page).await.map_err(|e| refusal(e, ""))?;
    Ok(listing(tenants, &page, |t| t.id.to_string()))
}

async fn create_tenant<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    body: Bytes,
) -> Result<Response, NatError> {
    let new: NewTenant = json(&body, false)?;
    let plan = plan_named(&new.plan)?;
    let tenant = s
        .store
        .create_tenant(&new.id, &plan, new.overrides)
        .await
        .map_err(|e| refusal(e, &new.id))?;
    audit(&admin, "tenant.create", &new.id, None);
    Ok(created(tenant))
}

/// The tenant, or the 404.
async fn tenant<S: KeyAdmin>(s: &Shared<S>, id: &str) -> Result<TenantInfo, NatError> {
    s.store
        .tenant(id)
        .await
        .map_err(|e| refusal(e, id))?
        .ok_or_else(|| refusal(AdminError::UnknownTenant, id))
}

async fn get_tenant<S: KeyAdmin>(
    State(s): AdminState<S>,
    Path(id): Path<String>,
) -> Result<Response, NatError> {
    Ok(axum::Json(tenant(&s, &id).await?).into_response())
}

async fn update_tenant<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, NatError> {
    let change: TenantChange = json(&body, false)?;
    let plan = change.plan.as_deref().map(plan_named).transpose()?;
    if plan.is_none() && change.overrides.is_none() {
        return Err(NatError::invalid_request("Give plan, overrides or both."));
    }
    // Both are checked before either is applied: an unknown plan changes nothing.
    let mut info = tenant(&s, &id).await?;
    if let Some(plan) = &plan {
        info = s
            .store
            .change_plan(&id, plan)
            .await
            .map_err(|e| refusal(e, &id))?;
    }
    if let Some(overrides) = change.overrides {
        info = s
            .store
            .change_overrides(&id, overrides)
            .await
            .map_err(|e| refusal(e, &id))?;
    }
    audit(&admin, "tenant.update", &id, None);
    Ok(axum::Json(info).into_response())
}

async fn delete_tenant<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Result<Response, NatError> {
    s.store
        .remove_tenant(&id)
        .await
        .map_err(|e| refusal(e, &id))?;
    audit(&admin, "tenant.delete", &id, None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn tenant_usage<S: KeyAdmin>(
    State(s): AdminState<S>,
    Path(id): Path<String>,
) -> Result<Response, NatError> {
    let Some(reader) = &s.usage else {
        return Err(NatError::not_found());
    };
    let info = tenant(&s, &id).await?;
    let mut tenant = Tenant::new(info.id, info.plan, "admin");
    tenant.set_overrides(info.overrides);
    let usage = reader.usage(&tenant).await.map_err(|error| {
        crate::report::failure("admin API (usage)", &error);
        NatError::Internal
    })?;
    Ok(axum::Json(usage).into_response())
}

async fn list_keys<S: KeyAdmin>(
    State(s): AdminState<S>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, NatError> {
    let page = page(&uri)?;
    let keys = s
        .store
        .list_keys(&id, &page)
        .await
        .map_err(|e| refusal(e, &id))?;
    let tenant_id = TenantId::from(id.as_str());
    let views: Vec<KeyView> = keys
        .into_iter()
        .map(|info| KeyView {
            tenant_id: tenant_id.clone(),
            info,
        })
        .collect();
    Ok(listing(views, &page, |k| k.info.id.to_string()))
}

async fn issue_key<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, NatError> {
    let new: NewKey = json(&body, true)?;
    let expires_at = time(new.expires_at.as_deref())?;
    let key = s
        .store
        .issue(&id, expires_at)
        .await
        .map_err(|e| refusal(e, &id))?;
    audit(&admin, "key.issue", &id, Some(&key.id));
    Ok(issued(&key, &id, expires_at))
}

/// The key and its tenant, or the 404.
async fn key<S: KeyAdmin>(s: &Shared<S>, id: &KeyId) -> Result<KeyView, NatError> {
    let (tenant_id, info) = s
        .store
        .key(id)
        .await
        .map_err(|e| refusal(e, ""))?
        .ok_or_else(|| refusal(AdminError::UnknownKey, ""))?;
    Ok(KeyView { tenant_id, info })
}

async fn get_key<S: KeyAdmin>(
    State(s): AdminState<S>,
    Path(id): Path<String>,
) -> Result<Response, NatError> {
    Ok(axum::Json(key(&s, &KeyId::from(id)).await?).into_response())
}

async fn update_key<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, NatError> {
    let change: KeyChange = json(&body, false)?;
    let Some(expires_at) = change.expires_at else {
        return Err(NatError::invalid_request(
            "Give expires_at (a time or null).",
        ));
    };
    let expires_at = time(expires_at.as_deref())?;
    let id = KeyId::from(id);
    s.store
        .change_expiry(&id, expires_at)
        .await
        .map_err(|e| refusal(e, ""))?;
    let view = key(&s, &id).await?;
    audit(&admin, "key.update", view.tenant_id.as_str(), Some(&id));
    Ok(axum::Json(view).into_response())
}

async fn revoke_key<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Result<Response, NatError> {
    let id = KeyId::from(id);
    let view = key(&s, &id).await?;
    s.store.revoke_key(&id).await.map_err(|e| refusal(e, ""))?;
    audit(&admin, "key.revoke", view.tenant_id.as_str(), Some(&id));
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate_key<S: KeyAdmin>(
    State(s): AdminState<S>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, NatError> {
    let rotation: Rotation = json(&body, true)?;
    let grace = Duration::from_secs(rotation.grace_seconds);
    if grace > MAX_GRACE {
        return Err(NatError::invalid_request(
            "grace_seconds is at most 31622400 (366 days).",
        ));
    }
    let id = KeyId::from(id);
    let old = key(&s, &id).await?;
    let new = s
        .store
        .rotate_key(&id, grace)
        .await
        .map_err(|e| refusal(e, ""))?;
    audit_with(
        &admin,
        "key.rotate",
        old.tenant_id.as_str(),
        Some(&id),
        Some(&new.id),
    );
    Ok(issued(&new, old.tenant_id.as_str(), old.info.expires_at))
}
