//! [`NatError`], the envelope, and [`StoreError`].

use std::{borrow::Cow, fmt};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::{
    clock::UtcDate,
    engine::NatBody,
    headers::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, number},
    plan::{Feature, Plan},
    report,
};

/// The 401 body: the same bytes for every cause.
pub(crate) const UNAUTHORIZED_BODY: &str =
    r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#;
const STRIPE_BODY: &str = r#"{"error":"STRIPE_NOT_CONFIGURED","message":"Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."}"#;
const INTERNAL_BODY: &str = r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#;
const NOT_FOUND_MESSAGE: &str = "The requested resource was not found.";
const NOT_FOUND_BODY: &str =
    r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#;

/// An error answered with the NAT JSON envelope: the one place where every rejection's
/// status, headers and JSON body are written.
///
/// Every body is a JSON object whose first members are `error` (the code) and `message`,
/// followed by the code's own members, with `Content-Type: application/json`. Bodies are
/// byte-stable: the fixed ones are static bytes, the others are rendered the same way every
/// time.
///
/// Handlers return the same type for 400 and 404. With the `axum` feature it is axum's
/// `IntoResponse` (and `?` works on a [`StoreError`]); without a framework,
/// [`NatError::into_http_response`] gives a plain `http::Response`:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_nat::NatError;
///
/// let response: http::Response<Full<Bytes>> = NatError::not_found().into_http_response();
/// assert_eq!(response.status(), 404);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// assert_eq!(
///     NatError::not_found().body(),
///     r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatError {
    /// 400 `INVALID_REQUEST`: the request is malformed; the message says how.
    InvalidRequest {
        /// What is wrong with the request.
        message: Cow<'static, str>,
    },
    /// `INVALID_REQUEST` with a 4xx status other than 400 (405, 406, 408, ...): how
    /// [`ErrorEnvelope`](crate::envelope::ErrorEnvelope) answers a framework's refusal that
    /// keeps its status.
    Rejected {
        /// The 4xx status.
        status: StatusCode,
        /// What is wrong with the request.
        message: Cow<'static, str>,
    },
    /// 401 `UNAUTHORIZED`: missing or invalid API key. One message for every cause, by
    /// contract (no oracle): a server's own authentication answers the same bytes.
    Unauthorized,
    /// 402 `QUOTA_EXCEEDED`: the monthly scan quota is used up until `resets_on`.
    QuotaExceeded {
        /// The first day of the next quota period.
        resets_on: UtcDate,
    },
    /// 403 `FEATURE_NOT_AVAILABLE`: the tenant's plan lacks `feature`.
    FeatureNotAvailable {
        /// The missing feature.
        feature: Feature,
        /// The tenant's current plan.
        plan: Plan,
    },
    /// 404 `NOT_FOUND`: the resource does not exist, or belongs to another tenant (the same
    /// bytes either way).
    NotFound {
        /// What was not found.
        message: Cow<'static, str>,
    },
    /// 429 `RATE_LIMITED` for a scan creation beyond the plan's concurrent scans:
    /// `Concurrent scan limit reached: 1 scan may run at a time on the Free plan.`, with
    /// `retry_after` in the body and a `Retry-After` header. It sets no `X-RateLimit-*`
    /// headers: those describe the requests-per-minute limit, which the request passed (in
    /// [`NatLayer`](crate::NatLayer) the limiter adds its own).
    ScansRunning {
        /// Scans that may run at once.
        limit: u32,
        /// The tenant's plan.
        plan: Plan,
        /// Whole seconds the client is told to wait (a hint: scans end when they end).
        retry_after: u64,
    },
    /// 429 `RATE_LIMITED`: the plan's requests per minute are used up.
    RateLimited {
        /// Whole seconds until a retry is admitted (at least 1).
        retry_after: u64,
        /// The limit, for `X-RateLimit-Limit`.
        limit: u32,
    },
    /// 500 `INTERNAL_ERROR`: something failed on the server; nothing more is said.
    Internal,
    /// 503 `STRIPE_NOT_CONFIGURED`: billing is not configured on this server.
    StripeNotConfigured,
}

impl NatError {
    /// A 400 whose message says what is wrong.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        NatError::InvalidRequest {
            message: message.into(),
        }
    }

    /// `INVALID_REQUEST` with the 4xx `status` (400 if `status` is not a client error).
    pub fn rejected(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        let message = message.into();
        if status == StatusCode::BAD_REQUEST || !status.is_client_error() {
            return NatError::InvalidRequest { message };
        }
        NatError::Rejected { status, message }
    }

    /// A 404 with the generic message `The requested resource was not found.`.
    pub fn not_found() -> Self {
        NatError::NotFound {
            message: Cow::Borrowed(NOT_FOUND_MESSAGE),
        }
    }

    /// A 404 with a message of your own, e.g. `Scan not found.`. Use the same message for a
    /// missing resource and another tenant's, so the two cannot be told apart.
    pub fn not_found_with(message: impl Into<Cow<'static, str>>) -> Self {
        NatError::NotFound {
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            NatError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            NatError::Rejected { status, .. } => *status,
            NatError::Unauthorized => StatusCode::UNAUTHORIZED,
            NatError::QuotaExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            NatError::FeatureNotAvailable { .. } => StatusCode::FORBIDDEN,
            NatError::NotFound { .. } => StatusCode::NOT_FOUND,
            NatError::RateLimited { .. } | NatError::ScansRunning { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            NatError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            NatError::StripeNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The envelope's `error` code, e.g. `RATE_LIMITED`.
    pub fn code(&self) -> &'static str {
        match self {
            NatError::InvalidRequest { .. } | NatError::Rejected { .. } => "INVALID_REQUEST",
            NatError::Unauthorized => "UNAUTHORIZED",
            NatError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            NatError::FeatureNotAvailable { .. } => "FEATURE_NOT_AVAILABLE",
            NatError::NotFound { .. } => "NOT_FOUND",
            NatError::RateLimited { .. } | NatError::ScansRunning { .. } => "RATE_LIMITED",
            NatError::Internal => "INTERNAL_ERROR",
            NatError::StripeNotConfigured => "STRIPE_NOT_CONFIGURED",
        }
    }

    /// The envelope's `message`.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            NatError::InvalidRequest { message }
            | NatError::Rejected { message, .. }
            | NatError::NotFound { message } => message.clone(),
            NatError::Unauthorized => "Missing or invalid API key.".into(),
            NatError::QuotaExceeded { resets_on } => {
                format!("Monthly scan quota exhausted. Quota resets on {resets_on}.").into()
            }
            NatError::FeatureNotAvailable { feature, plan } => format!(
                "{} is not available on the {} plan. Upgrade to access.",
                feature.display_name(),
                plan.display_name()
            )
            .into(),
            NatError::RateLimited { retry_after, .. } => {
                format!("Rate limit exceeded. Retry after {retry_after} seconds.").into()
            }
            NatError::ScansRunning { limit, plan, .. } => format!(
                "Concurrent scan limit reached: {limit} {} may run at a time on the {} plan.",
                if *limit == 1 { "scan" } else { "scans" },
                plan.display_name()
            )
            .into(),
            NatError::Internal => "An unexpected error occurred. Retry after a short delay.".into(),
            NatError::StripeNotConfigured => "Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET.".into(),
        }
    }

    /// The envelope's bytes: `{"error":…,"message":…,…}`.
    pub fn body(&self) -> Bytes {
        match self {
            NatError::Unauthorized => Bytes::from_static(UNAUTHORIZED_BODY.as_bytes()),
            NatError::StripeNotConfigured => Bytes::from_static(STRIPE_BODY.as_bytes()),
            NatError::Internal => Bytes::from_static(INTERNAL_BODY.as_bytes()),
            NatError::NotFound { message } if message == NOT_FOUND_MESSAGE => {
                Bytes::from_static(NOT_FOUND_BODY.as_bytes())
            }
            NatError::InvalidRequest { message }
            | NatError::Rejected { message, .. }
            | NatError::NotFound { message } => {
                let mut out = envelope_start(self.code(), message);
                out.push('}');
                out.into()
            }
            NatError::QuotaExceeded { resets_on } => {
                let mut out = envelope_start(self.code(), &self.message());
                out.push_str(",\"quota_reset_date\":\"");
                out.push_str(&resets_on.midnight_rfc3339());
                out.push_str("\"}");
                out.into()
            }
            NatError::FeatureNotAvailable { feature, plan } => {
                let mut out = envelope_start(self.code(), &self.message());
                out.push_str(",\"feature\":\"");
                out.push_str(feature.name());
                out.push_str("\",\"plan\":\"");
                out.push_str(plan.name());
                out.push_str("\"}");
                out.into()
            }
            NatError::RateLimited { retry_after, .. }
            | NatError::ScansRunning { retry_after, .. } => {
                let mut out = envelope_start(self.code(), &self.message());
                out.push_str(",\"retry_after\":");
                out.push_str(&retry_after.to_string());
                out.push('}');
                out.into()
            }
        }
    }

    /// The full response, without any framework, with any body type that can be made from
    /// [`Bytes`] (`http_body_util::Full<Bytes>`, `axum::body::Body`, ...).
    pub fn into_http_response<B: From<Bytes>>(self) -> Response<B> {
        self.to_response_with(B::from)
    }

    /// The full response with the rejection variant of [`NatBody`], for middleware.
    pub(crate) fn to_response<B>(&self) -> Response<NatBody<B>> {
        self.to_response_with(NatBody::rejection)
    }

    fn to_response_with<T>(&self, make_body: impl FnOnce(Bytes) -> T) -> Response<T> {
        let mut response = Response::new(make_body(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let NatError::ScansRunning { retry_after, .. } = self {
            headers.insert(header::RETRY_AFTER, number(*retry_after));
        }
        if let NatError::RateLimited { retry_after, limit } = self {
            headers.insert(header::RETRY_AFTER, number(*retry_after));
            headers.insert(X_RATELIMIT_LIMIT, number(u64::from(*limit)));
            headers.insert(X_RATELIMIT_REMAINING, number(0));
        }
        response
    }
}

fn envelope_start(code: &str, message: &str) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"error\":\"");
    out.push_str(code);
    out.push_str("\",\"message\":");
    // serde_json escapes quotes, backslashes and control characters; writing to a String
    // cannot fail.
    out.push_str(&serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned()));
    out
}

impl fmt::Display for NatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for NatError {}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for NatError {
    fn into_response(self) -> axum_core::response::Response {
        self.into_http_response()
    }
}

/// A store failure in a handler: `?` turns it into the 500 envelope. The cause is reported
/// through `tracing` (target `tower_nat`, level `ERROR`, sampled), never sent.
impl From<StoreError> for NatError {
    fn from(error: StoreError) -> Self {
        report::failure("store", &error);
        NatError::Internal
    }
}

/// The error of a store (key, rate-limit or quota store): the backend failed or timed out.
///
/// Layers answer it with 500 `INTERNAL_ERROR` (or, where configured, let the request through)
/// and report it through `tracing`; its text never reaches a client. It displays as
/// `store error` and keeps the backend's error as its [`source`](std::error::Error::source),
/// so reporters that walk the chain print each cause once; `{:#}` prints the causes too
/// (`store error: invalid Redis URL: ...`), for a server's own start-up messages.
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Wraps a backend error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&crate::report::chain(self))
        } else {
            f.write_str("store error")
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn store_errors_show_their_causes_only_when_asked() {
        let store = StoreError::new(std::io::Error::other("connection refused"));
        assert_eq!(format!("{store:#}"), "store error: connection refused");
        assert_eq!(format!("{store}"), "store error");
    }
}
