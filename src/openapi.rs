//! The stack's errors in your OpenAPI document (feature `openapi`, with [utoipa]).
//!
//! [`NatErrors`] is made from the [`NatLayer`](crate::NatLayer) that serves the API
//! ([`NatLayer::openapi_errors`](crate::NatLayer::openapi_errors)), so it knows what the stack can answer to each operation:
//!
//! | operation | errors documented |
//! |---|---|
//! | every one | 500 `INTERNAL_ERROR` |
//! | not exempt from keys | 401 `UNAUTHORIZED`, 429 `RATE_LIMITED` |
//! | a scan creation (not exempt) | 400 `INVALID_REQUEST`; 403 `FEATURE_NOT_AVAILABLE` when a plan lacks a scan feature; 402 `QUOTA_EXCEEDED` when a plan's quota is finite; 429 for the running scans too |
//! | under the billing prefix while billing is not configured | 503 `STRIPE_NOT_CONFIGURED` (also when exempt from keys) |
//! | with a path parameter (`/scan/{id}`) | 404 `NOT_FOUND`, which handlers answer with [`NatError::not_found`] |
//! | with a request body | 400 `INVALID_REQUEST` (the framework's body rejections, put in the envelope) |
//!
//! A Free-only plan table has no 403 to document, a table with unlimited quotas no 402, and a
//! stack in shadow mode refuses nothing. [`NatErrors::add`] documents what a route's own
//! layers add (e.g. a [`require_feature`](crate::NatLayer::require_feature) gate's 403).
//!
//! Each error is a response with the envelope's schema ([`envelope_schema`], a component
//! named `NatError`), its headers (`Retry-After`, `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining`, and `RateLimit` / `RateLimit-Policy` when the draft headers are
//! on) and its example. The examples are made by the code that makes the responses: the
//! envelope of [`NatError`], the rate limiter's own arithmetic for the cheapest plan's 429,
//! the scan validator's answer to a body without `url`. An example's description holds the
//! body byte for byte, since a JSON value in the document may order its members otherwise.
//!
//! # Example
//!
//! ```
//! use tower_nat::{NatLayer, auth::MemoryKeyStore};
//! use utoipa::openapi::{
//!     HttpMethod, OpenApiBuilder, PathItem, PathsBuilder,
//!     path::OperationBuilder,
//! };
//!
//! let nat = NatLayer::new(MemoryKeyStore::new()).exempt("/healthz");
//! let mut doc = OpenApiBuilder::new()
//!     .paths(
//!         PathsBuilder::new()
//!             .path("/api/v1/scan", PathItem::new(HttpMethod::Post, OperationBuilder::new()))
//!             .path("/healthz", PathItem::new(HttpMethod::Get, OperationBuilder::new())),
//!     )
//!     .build();
//! nat.openapi_errors().apply(&mut doc);
//!
//! let scan = doc.paths.paths["/api/v1/scan"].post.as_ref().unwrap();
//! let codes: Vec<&str> = scan.responses.responses.keys().map(String::as_str).collect();
//! assert_eq!(codes, ["400", "401", "402", "403", "429", "500"]);
//! let health = doc.paths.paths["/healthz"].get.as_ref().unwrap();
//! assert_eq!(health.responses.responses.keys().collect::<Vec<_>>(), ["500"]);
//! ```
//!
//! The examples name plans of your table (the one with the fewest requests a minute, one
//! without security scanning), as the errors themselves do to those plans' tenants; serve
//! the document behind your own authentication if those names are private.
//!
//! `apply` also declares the key: a security scheme `api_key` (the stack's key header,
//! `X-API-Key` by default) required by every operation that is not exempt, and the
//! `X-RateLimit-*` headers on the success responses of operations behind the limiter.
//!
//! Paths are matched as the client sends them. A document whose paths are relative to a
//! `servers` URL (`/scan` under `/api/v1`) names that prefix with
//! [`base_path`](NatErrors::base_path); otherwise its scan route is not recognised.
//!
//! # With utoipa's derive macros
//!
//! The errors come from the running configuration, so they are added to the generated
//! document rather than through `#[openapi(modifiers(...))]` (which takes a static value):
//!
//! ```
//! use tower_nat::{NatLayer, auth::MemoryKeyStore};
//! use utoipa::OpenApi;
//!
//! /// Starts a scan.
//! #[utoipa::path(post, path = "/scan", responses((status = 202, description = "Started")))]
//! async fn create_scan() {}
//!
//! #[derive(OpenApi)]
//! #[openapi(paths(create_scan))]
//! struct V1;
//!
//! #[derive(OpenApi)]
//! #[openapi(nest((path = "/api/v1", api = V1)))]
//! struct Api;
//!
//! let nat = NatLayer::new(MemoryKeyStore::new());
//! let mut doc = Api::openapi();
//! nat.openapi_errors().apply(&mut doc);
//! let scan = doc.paths.paths["/api/v1/scan"].post.as_ref().unwrap();
//! assert!(scan.responses.responses.contains_key("402"));
//! assert!(scan.security.is_some());
//! ```

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, Method, Request};
use serde_json::Value;
use utoipa::{
    Modify,
    openapi::{
        ContentBuilder, Object, ObjectBuilder, OpenApi, RefOr, ResponseBuilder, Schema, Type,
        example::ExampleBuilder,
        header::HeaderBuilder,
        path::{Operation, PathItem},
        security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme},
    },
};

use crate::{
    NatError,
    auth::layer as auth,
    billing::Config as BillingCheck,
    clock::UtcDate,
    plan::{Allowance, Feature, Plans},
    rate_limit::gcra,
    scan_request::{self, layer::Config as ValidationConfig},
};

/// The name of the envelope's schema among the document's components.
pub const SCHEMA_NAME: &str = "NatError";

/// The name of the key's security scheme among the document's components.
pub const SECURITY_SCHEME: &str = "api_key";

/// One of the errors the stack documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400 `INVALID_REQUEST`.
    InvalidRequest,
    /// 401 `UNAUTHORIZED`.
    Unauthorized,
    /// 402 `QUOTA_EXCEEDED`.
    QuotaExceeded,
    /// 403 `FEATURE_NOT_AVAILABLE`.
    FeatureNotAvailable,
    /// 404 `NOT_FOUND`.
    NotFound,
    /// 429 `RATE_LIMITED` (the plan's requests a minute, or failed authentications).
    RateLimited,
    /// 429 `RATE_LIMITED` for a scan creation beyond the running scans (documented in the
    /// same 429 response).
    ScansRunning,
    /// 500 `INTERNAL_ERROR`.
    Internal,
    /// 503 `STRIPE_NOT_CONFIGURED`.
    StripeNotConfigured,
}

impl ErrorKind {
    /// Every kind, in the order of their statuses.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Unauthorized,
        ErrorKind::QuotaExceeded,
        ErrorKind::FeatureNotAvailable,
        ErrorKind::NotFound,
        ErrorKind::RateLimited,
        ErrorKind::ScansRunning,
        ErrorKind::Internal,
        ErrorKind::StripeNotConfigured,
    ];

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`ErrorKind`]s: what the stack can answer to one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorSet(u16);

impl ErrorSet {
    /// No error.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The set with `kind` added.
    #[must_use]
    pub fn with(self, kind: ErrorKind) -> Self {
        Self(self.0 | kind.bit())
    }

    /// The set without `kind`.
    #[must_use]
    pub fn without(self, kind: ErrorKind) -> Self {
        Self(self.0 & !kind.bit())
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: ErrorKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The kinds in the set, in the order of their statuses.
    pub fn iter(self) -> impl Iterator<Item = ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<ErrorKind> for ErrorSet {
    fn from_iter<I: IntoIterator<Item = ErrorKind>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

/// What the stack answers, per operation, as OpenAPI responses. Made by
/// [`NatLayer::openapi_errors`](crate::NatLayer::openapi_errors); see the [module docs](self).
#[derive(Clone, Debug)]
pub struct NatErrors {
    auth: auth::Config,
    validation: ValidationConfig,
    billing: BillingCheck,
    plans: Arc<Plans>,
    shadow: bool,
    draft_headers: bool,
    scan_retry_after: Duration,
    reset_date: UtcDate,
    not_found: NatError,
    base_path: String,
    added: Vec<(Method, String, ErrorSet)>,
}

/// The parts of a [`NatLayer`]'s configuration that decide what it can answer.
pub(crate) struct Source {
    pub(crate) auth: auth::Config,
    pub(crate) validation: ValidationConfig,
    pub(crate) billing: BillingCheck,
    pub(crate) plans: Arc<Plans>,
    pub(crate) shadow: bool,
    pub(crate) draft_headers: bool,
    pub(crate) scan_retry_after: Duration,
}

impl NatErrors {
    pub(crate) fn new(source: Source) -> Self {
        Self {
            auth: source.auth,
            validation: source.validation,
            billing: source.billing,
            plans: source.plans,
            shadow: source.shadow,
            draft_headers: source.draft_headers,
            scan_retry_after: source.scan_retry_after,
            // The contract page's own example date.
            reset_date: UtcDate::new(2025, 2, 1).expect("a valid date"),
            not_found: NatError::not_found(),
            base_path: String::new(),
            added: Vec::new(),
        }
    }

    /// The quota reset date of the 402 example (default 2025-02-01, as on the contract's page).
    #[must_use]
    pub fn example_reset_date(mut self, date: UtcDate) -> Self {
        self.reset_date = date;
        self
    }

    /// The message of the 404 example: the one your handlers answer with
    /// [`NatError::not_found_with`] (default: [`NatError::not_found`]'s).
    #[must_use]
    pub fn not_found_message(mut self, message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.not_found = NatError::not_found_with(message);
        self
    }

    /// The prefix the document's paths are relative to (its `servers` URL's path, e.g.
    /// `/api/v1`): the stack sees `/api/v1/scan` where the document says `/scan`.
    #[must_use]
    pub fn base_path(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        while prefix.ends_with('/') {
            prefix.pop();
        }
        self.base_path = prefix;
        self
    }

    /// Documents `errors` on `method` `path` too (the OpenAPI path, e.g. `/api/v1/exports`),
    /// for what a route's own layers answer: a [`require_feature`](crate::NatLayer::require_feature)
    /// gate's 403, a handler's 404.
    #[must_use]
    pub fn add(mut self, method: Method, path: impl Into<String>, errors: ErrorSet) -> Self {
        self.added.push((method, path.into(), errors));
        self
    }

    /// What the stack can answer to `method` on `path`, an OpenAPI path (`{name}` for a
    /// parameter), for an operation with a request body or not.
    pub fn errors_for(&self, method: &Method, path: &str, has_body: bool) -> ErrorSet {
        self.classify(method, path, has_body).0
    }

    /// [`errors_for`](Self::errors_for), with what the responses' examples and headers
    /// depend on.
    fn classify(&self, method: &Method, path: &str, has_body: bool) -> (ErrorSet, Context) {
        // The path a client sends for the template: every parameter one segment.
        let full = format!("{}{path}", self.base_path);
        let concrete: String = full
            .split('/')
            .map(|s| if s.starts_with('{') { "p" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let mut set = ErrorSet::empty().with(ErrorKind::Internal);
        if path.contains('{') {
            set = set.with(ErrorKind::NotFound);
        }
        if has_body {
            set = set.with(ErrorKind::InvalidRequest);
        }
        let added = self
            .added
            .iter()
            .filter(|(m, p, _)| m == method && p == path)
            .fold(ErrorSet::empty(), |all, (_, _, errors)| {
                ErrorSet(all.0 | errors.0)
            });
        if self.shadow {
            // Every layer in shadow mode lets the request through, the route's own gates
            // made by the stack included: only what handlers answer stays.
            let handlers: ErrorSet = [ErrorKind::InvalidRequest, ErrorKind::NotFound]
                .into_iter()
                .filter(|k| added.contains(*k))
                .collect();
            return (ErrorSet(set.0 | handlers.0), Context::default());
        }
        set = ErrorSet(set.0 | added.0);
        if self.billing.refuses(&concrete) {
            set = set.with(ErrorKind::StripeNotConfigured);
        }
        if self.auth.is_exempt(&concrete) {
            return (set, Context::default());
        }
        let mut context = Context {
            limited: true,
            scan: false,
        };
        set = set
            .with(ErrorKind::Unauthorized)
            .with(ErrorKind::RateLimited);
        let Ok(req) = Request::builder()
            .method(method.clone())
            .uri(&concrete)
            .body(())
        else {
            return (set, context);
        };
        if self.validation.is_scan_creation(&req) {
            context.scan = true;
            set = set
                .with(ErrorKind::InvalidRequest)
                .with(ErrorKind::ScansRunning);
            let plans = || self.plans.iter().map(|(_, limits)| limits);
            if self.lacking_plan().is_some() {
                set = set.with(ErrorKind::FeatureNotAvailable);
            }
            let finite = |a: Allowance| a.limit().is_some();
            if plans().any(|l| {
                finite(l.functional_scans_per_month)
                    || l.has(&Feature::SECURITY_SCANNING) && finite(l.security_scans_per_month)
            }) {
                set = set.with(ErrorKind::QuotaExceeded);
            }
        }
        (set, context)
    }

    /// Documents the stack's errors on every operation of `openapi`, and adds the envelope's
    /// schema to its components. Responses the document already has for a status are kept.
    pub fn apply(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(SCHEMA_NAME.to_owned(), envelope_schema());
        // Header names are case-insensitive; the contract writes this one `X-API-Key`.
        let header = self.auth.header_name();
        let header = if *header == crate::headers::X_API_KEY {
            "X-API-Key"
        } else {
            header.as_str()
        };
        let scheme = SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            header,
            "The tenant's API key (`nat_pk_...`).",
        )));
        components
            .security_schemes
            .entry(SECURITY_SCHEME.to_owned())
            .or_insert(scheme);
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let has_body = operation.request_body.is_some();
                let (set, context) = self.classify(&method, path, has_body);
                if set.contains(ErrorKind::Unauthorized) && operation.security.is_none() {
                    let required = SecurityRequirement::new(SECURITY_SCHEME, Vec::<String>::new());
                    operation.security = Some(vec![required]);
                }
                if context.limited {
                    self.success_headers(operation);
                }
                for (status, response) in self.responses_in(set, context) {
                    operation
                        .responses
                        .responses
                        .entry(status)
                        .or_insert(response.into());
                }
            }
        }
    }

    /// The limiter's headers on the operation's success responses.
    fn success_headers(&self, operation: &mut Operation) {
        for (status, response) in operation.responses.responses.iter_mut() {
            let (true, RefOr::T(response)) = (status.starts_with('2'), response) else {
                continue;
            };
            for (name, description) in self.limiter_headers() {
                response.headers.entry(name.to_owned()).or_insert_with(|| {
                    HeaderBuilder::new()
                        .schema(header_schema(name))
                        .description(Some(description))
                        .build()
                });
            }
        }
    }

    /// The headers the limiter puts on every response that passed it.
    fn limiter_headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = vec![
            (
                "X-RateLimit-Limit",
                "The tenant's requests a minute (on every response that passed the rate limiter).",
            ),
            (
                "X-RateLimit-Remaining",
                "How many more requests, sent at once, would pass (0 on the 429).",
            ),
        ];
        if self.draft_headers {
            out.push((
                "RateLimit",
                "IETF draft: `\"default\";r=REMAINING;t=SECONDS_TO_A_FULL_BURST`.",
            ));
            out.push((
                "RateLimit-Policy",
                "IETF draft: `\"default\";q=LIMIT;w=60`.",
            ));
        }
        out
    }

    /// The responses for `set`, keyed by status (`"429"`).
    pub fn responses(&self, set: ErrorSet) -> Vec<(String, utoipa::openapi::Response)> {
        self.responses_in(set, Context::ANY)
    }

    fn responses_in(
        &self,
        set: ErrorSet,
        context: Context,
    ) -> Vec<(String, utoipa::openapi::Response)> {
        let mut out: Vec<(String, utoipa::openapi::Response)> = Vec::new();
        for documented in self.documented_in(set, context) {
            let status = documented.status.to_string();
            let mut content = ContentBuilder::new().schema(Some(schema_ref()));
            for (name, example) in &documented.examples {
                let body = String::from_utf8_lossy(&example.body).into_owned();
                let value: Value = serde_json::from_slice(&example.body).unwrap_or(Value::Null);
                content = content.examples_from_iter([(
                    name.clone(),
                    ExampleBuilder::new()
                        .summary(example.summary.clone())
                        .description(format!("The body, byte for byte: `{body}`"))
                        .value(Some(value))
                        .build(),
                )]);
            }
            let mut response = ResponseBuilder::new()
                .description(documented.description)
                .content("application/json", content.build());
            for (name, description) in &documented.headers {
                response = response.header(
                    *name,
                    HeaderBuilder::new()
                        .schema(header_schema(name))
                        .description(Some(*description))
                        .build(),
                );
            }
            out.push((status, response.build()));
        }
        out
    }

    /// Each status of `set` with its examples and headers.
    pub fn documented(&self, set: ErrorSet) -> Vec<Documented> {
        self.documented_in(set, Context::ANY)
    }

    fn documented_in(&self, set: ErrorSet, context: Context) -> Vec<Documented> {
        let mut out: Vec<Documented> = Vec::new();
        let after_limiter = |kind: ErrorKind| {
            !matches!(
                kind,
                ErrorKind::Unauthorized | ErrorKind::StripeNotConfigured | ErrorKind::Internal
            )
        };
        for kind in set.iter() {
            let mut examples = self.examples(kind);
            let headers = self.headers(&examples, context.limited && after_limiter(kind));
            if kind == ErrorKind::InvalidRequest && !context.scan {
                // The framework's body rejections: their message is the framework's.
                examples.clear();
            }
            let status = kind_status(kind);
            match out.iter_mut().find(|d| d.status == status) {
                Some(same) => {
                    same.examples
                        .extend(examples.into_iter().map(|e| (e.name.clone(), e)));
                    for header in headers {
                        if !same.headers.iter().any(|(n, _)| *n == header.0) {
                            same.headers.push(header);
                        }
                    }
                }
                None => out.push(Documented {
                    status,
                    description: description(kind),
                    examples: examples.into_iter().map(|e| (e.name.clone(), e)).collect(),
                    headers,
                }),
            }
        }
        out
    }

    /// The plan lacking security scanning that the 403 example names, if any plan does.
    fn lacking_plan(&self) -> Option<crate::plan::Plan> {
        self.plans
            .iter()
            .find(|(_, l)| !l.has(&Feature::SECURITY_SCANNING))
            .map(|(plan, _)| plan.clone())
    }

    /// The plan with the fewest requests a minute: the 429 examples' plan.
    fn cheapest(&self) -> Option<(crate::plan::Plan, u32, u32)> {
        self.plans
            .iter()
            .min_by_key(|(_, l)| l.requests_per_minute)
            .map(|(p, l)| (p.clone(), l.requests_per_minute, l.concurrent_scans))
    }

    /// The examples of `kind`, made by the code that makes the responses.
    fn examples(&self, kind: ErrorKind) -> Vec<Example> {
        let example = |name: &str, summary: &str, error: NatError, headers: HeaderMap| Example {
            name: name.to_owned(),
            summary: summary.to_owned(),
            body: error.body(),
            error,
            headers,
        };
        let plain = |name: &str, summary: &str, error: NatError| {
            let headers = error
                .clone()
                .into_http_response::<bytes::Bytes>()
                .into_parts()
                .0
                .headers;
            example(name, summary, error, headers)
        };
        match kind {
            ErrorKind::InvalidRequest => {
                let default = self.validation.default_kind();
                match scan_request::validate_scan_body(b"{}", default) {
                    Err(error) => vec![plain("missing_url", "A scan without `url`", error)],
                    Ok(_) => Vec::new(),
                }
            }
            ErrorKind::Unauthorized => vec![plain(
                "unauthorized",
                "No key, or a key that is not valid",
                NatError::Unauthorized,
            )],
            ErrorKind::QuotaExceeded => vec![plain(
                "quota_exceeded",
                "The month's scans are used up",
                NatError::QuotaExceeded {
                    resets_on: self.reset_date,
                },
            )],
            ErrorKind::FeatureNotAvailable => match self.lacking_plan() {
                Some(plan) => vec![plain(
                    "feature_not_available",
                    "A security scan on a plan without it",
                    NatError::FeatureNotAvailable {
                        feature: Feature::SECURITY_SCANNING,
                        plan,
                    },
                )],
                None => Vec::new(),
            },
            ErrorKind::NotFound => vec![plain(
                "not_found",
                "No such resource, or another tenant's",
                self.not_found.clone(),
            )],
            ErrorKind::RateLimited => match self.cheapest() {
                Some((plan, limit, _)) => {
                    let (error, headers) = rate_limited(limit, self.draft_headers);
                    vec![example(
                        "rate_limited",
                        &format!(
                            "The {} plan's requests a minute are used up",
                            plan.display_name()
                        ),
                        error,
                        headers,
                    )]
                }
                None => Vec::new(),
            },
            ErrorKind::ScansRunning => match self.cheapest() {
                Some((plan, limit, running)) => {
                    let error = NatError::ScansRunning {
                        limit: running,
                        plan: plan.clone(),
                        retry_after: self.scan_retry_after.as_secs().max(1),
                    };
                    let mut headers = error
                        .clone()
                        .into_http_response::<bytes::Bytes>()
                        .into_parts()
                        .0
                        .headers;
                    // It passed the limiter: the limiter's headers, as after a first request.
                    let (passed, _) = gcra::check(0, 0, limit);
                    crate::rate_limit::passed_headers(&mut headers, &passed, self.draft_headers);
                    vec![example(
                        "scans_running",
                        &format!(
                            "The {} plan's running scans are all taken",
                            plan.display_name()
                        ),
                        error,
                        headers,
                    )]
                }
                None => Vec::new(),
            },
            ErrorKind::Internal => vec![plain(
                "internal_error",
                "Something failed on the server",
                NatError::Internal,
            )],
            ErrorKind::StripeNotConfigured => vec![plain(
                "stripe_not_configured",
                "Billing is not configured on this server",
                NatError::StripeNotConfigured,
            )],
        }
    }

    /// The headers documented on a response with `examples`: those sent with them, and the
    /// limiter's when the request passed it.
    fn headers(
        &self,
        examples: &[Example],
        after_limiter: bool,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        let sent: Vec<String> = examples
            .iter()
            .flat_map(|e| e.headers.keys().map(|k| k.as_str().to_owned()))
            .collect();
        let has = |name: &str| sent.iter().any(|s| s == name);
        if has("retry-after") {
            out.push((
                "Retry-After",
                "Whole seconds to wait before retrying (at least 1).",
            ));
        }
        let limiter_sent = has("x-ratelimit-limit") || has("ratelimit");
        if after_limiter || limiter_sent {
            for (name, description) in self.limiter_headers() {
                let draft = name.starts_with("RateLimit");
                if after_limiter || has(&name.to_ascii_lowercase()) || draft && has("ratelimit") {
                    out.push((name, description));
                }
            }
        }
        out
    }
}

impl Modify for NatErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        self.apply(openapi);
    }
}

/// What an operation's responses depend on beyond its error set.
#[derive(Clone, Copy, Debug, Default)]
struct Context {
    /// The request passes the rate limiter (not exempt, not in shadow mode).
    limited: bool,
    /// A scan creation: its 400 is the scan validator's.
    scan: bool,
}

impl Context {
    /// For a set documented without an operation: every header and example that may apply.
    const ANY: Context = Context {
        limited: true,
        scan: true,
    };
}

/// The HTTP status of `kind`.
fn kind_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Unauthorized => 401,
        ErrorKind::QuotaExceeded => 402,
        ErrorKind::FeatureNotAvailable => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RateLimited | ErrorKind::ScansRunning => 429,
        ErrorKind::Internal => 500,
        ErrorKind::StripeNotConfigured => 503,
    }
}

/// One documented status: its examples (by name) and headers (name, description).
#[derive(Debug)]
#[non_exhaustive]
pub struct Documented {
    /// The HTTP status.
    pub status: u16,
    /// The response's description.
    pub description: &'static str,
    /// The examples, by name.
    pub examples: Vec<(String, Example)>,
    /// The headers, with their descriptions.
    pub headers: Vec<(&'static str, &'static str)>,
}

/// One documented example: the error, its body and the headers sent with it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Example {
    /// The example's name in the document.
    pub name: String,
    /// Its summary.
    pub summary: String,
    /// The error.
    pub error: NatError,
    /// The body, as the stack sends it.
    pub body: bytes::Bytes,
    /// The headers the stack sends with it (the limiter's too where it adds them).
    pub headers: HeaderMap,
}

/// The 429 of a tenant on `limit` requests a minute that sent `limit + 1` at once: the
/// limiter's own arithmetic, and its headers.
fn rate_limited(limit: u32, draft: bool) -> (NatError, HeaderMap) {
    let mut tat = 0;
    let mut decision = gcra::check(tat, 0, limit).0;
    for _ in 0..=limit {
        let (d, next) = gcra::check(tat, 0, limit);
        decision = d;
        match next {
            Some(next) => tat = next,
            None => break,
        }
    }
    let error = NatError::RateLimited {
        retry_after: decision.retry_after_secs(),
        limit: decision.limit,
    };
    let mut headers = error
        .clone()
        .into_http_response::<bytes::Bytes>()
        .into_parts()
        .0
        .headers;
    crate::rate_limit::refused_headers(&mut headers, &decision, draft);
    (error, headers)
}

fn description(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => {
            "`INVALID_REQUEST`: the request is malformed; the message says how."
        }
        ErrorKind::Unauthorized => {
            "`UNAUTHORIZED`: the `X-API-Key` header is missing, or its key is not valid (one message for every cause)."
        }
        ErrorKind::QuotaExceeded => {
            "`QUOTA_EXCEEDED`: the month's scans of this kind are used up; `quota_reset_date` says when they are back. Do not retry before it."
        }
        ErrorKind::FeatureNotAvailable => {
            "`FEATURE_NOT_AVAILABLE`: the tenant's plan lacks the feature. Do not retry."
        }
        ErrorKind::NotFound => {
            "`NOT_FOUND`: the resource does not exist, or belongs to another tenant."
        }
        ErrorKind::RateLimited | ErrorKind::ScansRunning => {
            "`RATE_LIMITED`: the plan's requests a minute are used up, or (for a scan creation) its running scans, or the client address failed authentication too often. Wait `Retry-After` seconds."
        }
        ErrorKind::Internal => {
            "`INTERNAL_ERROR`: something failed on the server. Retry after a short delay."
        }
        ErrorKind::StripeNotConfigured => {
            "`STRIPE_NOT_CONFIGURED`: billing is not configured on this server."
        }
    }
}

fn header_schema(name: &str) -> Object {
    let kind = match name {
        "RateLimit" | "RateLimit-Policy" => Type::String,
        _ => Type::Integer,
    };
    ObjectBuilder::new().schema_type(kind).build()
}

fn schema_ref() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(SCHEMA_NAME))
}

/// The envelope's schema: `error` and `message` always, and each code's own members.
pub fn envelope_schema() -> RefOr<Schema> {
    let string = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .build()
    };
    let codes: Vec<Value> = [
        "INVALID_REQUEST",
        "UNAUTHORIZED",
        "QUOTA_EXCEEDED",
        "FEATURE_NOT_AVAILABLE",
        "NOT_FOUND",
        "RATE_LIMITED",
        "INTERNAL_ERROR",
        "STRIPE_NOT_CONFIGURED",
    ]
    .into_iter()
    .map(Value::from)
    .collect();
    let object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "The NAT error envelope: `error` and `message` first, then the code's own members.",
        ))
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes))
                .description(Some("The error code.")),
        )
        .required("error")
        .property("message", string("A sentence for humans."))
        .required("message")
        .property(
            "retry_after",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .description(Some(
                    "`RATE_LIMITED`: whole seconds to wait, as `Retry-After`.",
                )),
        )
        .property(
            "quota_reset_date",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .description(Some(
                    "`QUOTA_EXCEEDED`: midnight UTC of the first day of the next period.",
                )),
        )
        .property(
            "feature",
            string("`FEATURE_NOT_AVAILABLE`: the missing feature."),
        )
        .property(
            "plan",
            string("`FEATURE_NOT_AVAILABLE`: the tenant's plan."),
        )
        .build();
    RefOr::T(Schema::Object(object))
}

/// The operations of a path item, with their methods.
fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    let mut out = Vec::new();
    let slots: [(Method, &mut Option<Operation>); 8] = [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ];
    for (method, slot) in slots {
        if let Some(op) = slot.as_mut() {
            out.push((method, op));
        }
    }
    out
}
