//! The client side of the contract (feature `client`): what the NAT API's error page tells
//! clients to do, for any `tower` HTTP client (hyper-util's, or any
//! `Service<http::Request<B>>`).
//!
//! - [`ApiError`] reads an error response of any NAT server into a [`NatError`] with what its
//!   code carries (the wait of a 429, the reset date of a 402) and the `X-RateLimit-*`
//!   headers. For the bodies the stack sends, [`NatError::body`] gives back the bytes read.
//! - [`NatRetry`] is a [`tower::retry::Policy`] that does what the page advises:
//!
//!   | answer | what it does |
//!   |---|---|
//!   | 429 | waits `Retry-After` (capped at [`max_wait`](NatRetry::max_wait), 60 s: a longer hint is retried early and may be refused again; at least the first back-off; plus jitter), or backs off exponentially without it; any method (the stack refused it before it did anything) |
//!   | 500, 503, a transport error | honours a `Retry-After` (capped), or backs off exponentially, at most [`server_retries`](NatRetry::server_retries) times; only methods that are safe to repeat (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), unless the request carries [`Idempotent`] or [`retry_any_method`](NatRetry::retry_any_method) is set |
//!   | 400, 401, 402, 403, 404, anything else | never retried: the answer goes to the caller (read a 402's reset date with [`ApiError`]) |
//!
//! - [`poll_scan`] polls a scan until it ends, as the page's back-off example does.
//!
//! Waits use tokio's timer, so tests with paused time see them exactly.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, retry::RetryLayer};
//! use tower_nat::client::NatRetry;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A server that rate-limits the first call.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! let server = tower::service_fn(move |_: Request<Full<Bytes>>| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let response = if n == 0 {
//!             tower_nat::NatError::RateLimited { retry_after: 12, limit: 30 }.into_http_response()
//!         } else {
//!             Response::new(Full::new(Bytes::from_static(b"{}")))
//!         };
//!         Ok::<_, std::convert::Infallible>(response)
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(NatRetry::new().without_jitter()))
//!     .service(server);
//!
//! let start = tokio::time::Instant::now();
//! let response = client.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(start.elapsed(), Duration::from_secs(12));
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::Value;
use tower_service::Service;

use crate::{
    NatError,
    clock::UtcDate,
    headers::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING},
    plan::{Feature, Plan},
};

/// How much of an error body [`ApiError::read`] keeps.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How much of a success body [`ApiError::read`] reads.
const BODY_LIMIT: usize = 1024 * 1024;

/// An error answer of a NAT server: its status, the [`NatError`] its envelope says (when it
/// is one), and the rate-limit headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    error: Option<NatError>,
    retry_after: Option<u64>,
    limit: Option<u32>,
    remaining: Option<u32>,
    body: Bytes,
}

impl ApiError {
    /// Reads an answer's status, headers and body: `None` for a success (1xx–3xx).
    pub fn from_parts(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Option<Self> {
        if !(status.is_client_error() || status.is_server_error()) {
            return None;
        }
        let number = |name: &http::HeaderName| -> Option<u64> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        };
        let limit = number(&X_RATELIMIT_LIMIT).and_then(|n| u32::try_from(n).ok());
        let error = parse_envelope(status, &body, limit);
        let retry_after = number(&header::RETRY_AFTER).or(match &error {
            Some(NatError::RateLimited { retry_after, .. })
            | Some(NatError::ScansRunning { retry_after, .. }) => Some(*retry_after),
            _ => None,
        });
        Some(Self {
            status,
            error,
            retry_after,
            limit,
            remaining: number(&X_RATELIMIT_REMAINING).and_then(|n| u32::try_from(n).ok()),
            body,
        })
    }

    /// Reads `response`: `Ok` with its parts and body for a success (1xx–3xx), the error
    /// otherwise. A body over the limit (1 MiB for a success, 64 KiB for an error) or that
    /// fails on the way is read as empty. It has no deadline of its own: put the call and
    /// this read under one `tokio::time::timeout` ([`poll_scan`] does).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::Full;
    /// use tower_nat::client::ApiError;
    ///
    /// let ok = http::Response::new(Full::new(bytes::Bytes::from_static(b"{}")));
    /// let (parts, body) = ApiError::read(ok).await.unwrap();
    /// assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"{}"[..]));
    /// # }
    /// ```
    pub async fn read<B>(response: Response<B>) -> Result<(http::response::Parts, Bytes), Self>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = response.into_parts();
        let success = !(parts.status.is_client_error() || parts.status.is_server_error());
        let limit = if success {
            BODY_LIMIT
        } else {
            ERROR_BODY_LIMIT
        };
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        match Self::from_parts(parts.status, &parts.headers, bytes.clone()) {
            Some(error) => Err(error),
            None => Ok((parts, bytes)),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error the envelope says, or `None` when the body is not a NAT envelope (a proxy's
    /// page, an empty body). A 429 for running scans names its plan by display name only:
    /// the [`Plan`] read back has it, and its lower-cased display name as name.
    pub fn error(&self) -> Option<&NatError> {
        self.error.as_ref()
    }

    /// The envelope's code (`RATE_LIMITED`), if the body is one.
    pub fn code(&self) -> Option<&'static str> {
        self.error.as_ref().map(NatError::code)
    }

    /// How long to wait before retrying: `Retry-After` (or the body's `retry_after`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.map(Duration::from_secs)
    }

    /// The day the quota is back, for a 402.
    pub fn resets_on(&self) -> Option<UtcDate> {
        match &self.error {
            Some(NatError::QuotaExceeded { resets_on }) => Some(*resets_on),
            _ => None,
        }
    }

    /// `X-RateLimit-Limit`: the tenant's requests a minute.
    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// `X-RateLimit-Remaining`: how many more requests, sent at once, would pass.
    pub fn remaining(&self) -> Option<u32> {
        self.remaining
    }

    /// The body as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(error) => write!(f, "{} {error}", self.status.as_u16()),
            None => write!(f, "{} (not a NAT error envelope)", self.status.as_u16()),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct Envelope {
    error: String,
    message: String,
    retry_after: Option<u64>,
    quota_reset_date: Option<String>,
    feature: Option<String>,
    plan: Option<String>,
}

/// The [`NatError`] of an envelope, when `body` is one whose message agrees with its code.
fn parse_envelope(status: StatusCode, body: &[u8], limit: Option<u32>) -> Option<NatError> {
    let e: Envelope = serde_json::from_slice(body).ok()?;
    let error = match e.error.as_str() {
        "INVALID_REQUEST" => NatError::rejected(status, e.message.clone()),
        "UNAUTHORIZED" => NatError::Unauthorized,
        "QUOTA_EXCEEDED" => {
            let date = e.quota_reset_date.as_deref()?;
            let since = crate::clock::parse_rfc3339(date)?;
            NatError::QuotaExceeded {
                resets_on: UtcDate::from_unix(since),
            }
        }
        "FEATURE_NOT_AVAILABLE" => {
            // "<Feature> is not available on the <Plan> plan. Upgrade to access."
            let (feature_display, rest) = e.message.split_once(" is not available on the ")?;
            let plan_display = rest.strip_suffix(" plan. Upgrade to access.")?;
            NatError::FeatureNotAvailable {
                feature: Feature::new(e.feature.as_deref()?, feature_display),
                plan: Plan::named(e.plan.as_deref()?, plan_display),
            }
        }
        "NOT_FOUND" => NatError::not_found_with(e.message.clone()),
        "RATE_LIMITED" => {
            let retry_after = e.retry_after?;
            match e.message.strip_prefix("Concurrent scan limit reached: ") {
                // "<n> scan(s) may run at a time on the <Plan> plan."
                Some(rest) => {
                    let (n, rest) = rest.split_once(' ')?;
                    let plan = rest.split_once(" may run at a time on the ")?.1;
                    let plan = plan.strip_suffix(" plan.")?;
                    NatError::ScansRunning {
                        limit: n.parse().ok()?,
                        plan: Plan::named(&plan.to_ascii_lowercase(), plan),
                        retry_after,
                    }
                }
                None => NatError::RateLimited {
                    retry_after,
                    limit: limit.unwrap_or(0),
                },
            }
        }
        "INTERNAL_ERROR" => NatError::Internal,
        "STRIPE_NOT_CONFIGURED" => NatError::StripeNotConfigured,
        _ => return None,
    };
    (error.status() == status && error.message() == e.message).then_some(error)
}

/// Marks a request as safe to repeat whatever its method, for [`NatRetry`] (insert it in the
/// request's extensions).
#[derive(Clone, Copy, Debug, Default)]
pub struct Idempotent;

/// A [`tower::retry::Policy`] that follows the NAT API's advice; see the
/// [module docs](self). One policy value is cloned per request, so its counts are the
/// request's own.
#[derive(Clone, Debug)]
pub struct NatRetry {
    max_wait: Duration,
    base: Duration,
    max_backoff: Duration,
    rate_retries: u32,
    server_retries: u32,
    jitter: bool,
    any_method: bool,
    // Per request (the policy is cloned for each).
    rate_attempts: u32,
    server_attempts: u32,
    seed: u64,
}

impl Default for NatRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl NatRetry {
    /// Waits of at most 60 s, back-off from 1 s doubling up to 60 s, 10 retries of a 429, 3
    /// of a 500 or 503, jitter on, safe methods only.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // A failing source of randomness only makes the jitter predictable.
        let _ = getrandom::fill(&mut seed);
        Self {
            max_wait: Duration::from_secs(60),
            base: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            rate_retries: 10,
            server_retries: 3,
            jitter: true,
            any_method: false,
            rate_attempts: 0,
            server_attempts: 0,
            seed: u64::from_le_bytes(seed) | 1,
        }
    }

    /// The longest `Retry-After` honoured: a longer one is waited this long (the retry may
    /// be refused again).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The first back-off (doubled after each retry) and the longest.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_backoff = max;
        self
    }

    /// How many times a 429 is retried.
    #[must_use]
    pub fn rate_retries(mut self, retries: u32) -> Self {
        self.rate_retries = retries;
        self
    }

    /// How many times a 500, a 503 or a transport error is retried.
    #[must_use]
    pub fn server_retries(mut self, retries: u32) -> Self {
        self.server_retries = retries;
        self
    }

    /// Waits exactly the computed time (for tests; clients should keep the jitter, which
    /// spreads the retries of many clients over up to 10 % more).
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Retries 500 and 503 answers of every method, not only those safe to repeat.
    #[must_use]
    pub fn retry_any_method(mut self, on: bool) -> Self {
        self.any_method = on;
        self
    }

    /// The wait before the next try of a request with `method` (and extensions) that got
    /// `answer` (a status and headers, or `None` for a transport error), or `None` not to
    /// retry. Counts the retry. A client without `tower` (reqwest) loops on it.
    pub fn next_wait(
        &mut self,
        method: &Method,
        idempotent: bool,
        answer: Option<(StatusCode, &HeaderMap)>,
    ) -> Option<Duration> {
        let safe = idempotent || self.any_method || is_idempotent(method);
        let retry_after = |headers: &HeaderMap| -> Option<Duration> {
            let secs: u64 = headers
                .get(header::RETRY_AFTER)?
                .to_str()
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(Duration::from_secs(secs))
        };
        let wait = match answer {
            Some((StatusCode::TOO_MANY_REQUESTS, headers)) => {
                if self.rate_attempts >= self.rate_retries {
                    return None;
                }
                let n = self.rate_attempts;
                self.rate_attempts += 1;
                match retry_after(headers) {
                    // Never a burst of immediate retries, whatever the header says.
                    Some(wait) => wait.min(self.max_wait).max(self.base),
                    None => self.backoff_for(n),
                }
            }
            Some((StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE, _))
            | None
                if safe =>
            {
                if self.server_attempts >= self.server_retries {
                    return None;
                }
                let n = self.server_attempts;
                self.server_attempts += 1;
                match answer.and_then(|(_, headers)| retry_after(headers)) {
                    Some(wait) => wait.min(self.max_wait).max(self.base),
                    None => self.backoff_for(n),
                }
            }
            _ => return None,
        };
        Some(self.jittered(wait))
    }

    /// The `n`th back-off (from 0): base × 2ⁿ, at most the maximum.
    fn backoff_for(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max_backoff)
    }

    /// `wait` plus up to 10 % of it, at random.
    fn jittered(&mut self, wait: Duration) -> Duration {
        if !self.jitter {
            return wait;
        }
        self.step();
        let tenth = wait.as_nanos() / 10;
        let extra = if tenth == 0 {
            0
        } else {
            u128::from(self.seed) % tenth
        };
        wait.saturating_add(Duration::from_nanos(
            u64::try_from(extra).unwrap_or(u64::MAX),
        ))
    }

    /// Moves the jitter's generator on (xorshift64: enough to spread clients, not for
    /// secrets).
    fn step(&mut self) {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
    }
}

/// Whether `method` is safe to repeat (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B, ResB, E> tower::retry::Policy<Request<B>, Response<ResB>, E> for NatRetry
where
    B: Clone,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let idempotent = req.extensions().get::<Idempotent>().is_some();
        let answer = match result {
            Ok(response) => Some((response.status(), response.headers())),
            Err(_) => None,
        };
        let wait = self.next_wait(req.method(), idempotent, answer)?;
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // tower clones the policy for each request after this call: each request's retries
        // then draw other jitter than its neighbours'.
        self.step();
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// How [`poll_scan`] polls.
#[derive(Clone, Debug)]
pub struct PollOptions {
    /// The wait between polls, doubled after each 429 up to `max_interval` (the page advises
    /// 5–10 s; default 5 s). A 429's own wait is at least 1 s.
    pub interval: Duration,
    /// The longest wait between polls, a `Retry-After` included (default 60 s).
    pub max_interval: Duration,
    /// How many requests at most (default 10, as on the page).
    pub max_requests: u32,
    /// The statuses that end a scan (default `completed`, `failed`, `cancelled`).
    pub terminal: Vec<String>,
    /// How long one poll may take, its whole body included (default 30 s).
    pub request_timeout: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(60),
            max_requests: 10,
            terminal: ["completed", "failed", "cancelled"]
                .map(str::to_owned)
                .to_vec(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`poll_scan`] ended without a finished scan.
#[derive(Debug)]
#[non_exhaustive]
pub enum PollError<E> {
    /// The server answered an error other than 429 (a 404 for an unknown scan, a 401, ...).
    Api(ApiError),
    /// The client failed.
    Transport(E),
    /// A success whose body is not a JSON object with a string `status`, or could not be read
    /// whole (over 1 MiB, or failed on the way).
    Body,
    /// An answer that is neither a success nor an error (a redirect).
    Unexpected(StatusCode),
    /// One poll took longer than [`PollOptions::request_timeout`].
    RequestTimedOut,
    /// `max_requests` polls and the scan still runs.
    TimedOut,
    /// The key cannot be sent in a header (it is not a NAT key); nothing was sent.
    InvalidKey,
}

impl<E: std::fmt::Display> std::fmt::Display for PollError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Api(e) => write!(f, "the server refused: {e}"),
            PollError::Transport(e) => write!(f, "the request failed: {e}"),
            PollError::Body => f.write_str("the scan's body is not JSON with a status"),
            PollError::Unexpected(status) => write!(f, "the server answered {status}"),
            PollError::RequestTimedOut => f.write_str("a poll got no whole answer in time"),
            PollError::TimedOut => {
                f.write_str("the scan did not complete within the polls allowed")
            }
            PollError::InvalidKey => f.write_str("the API key is not a valid header value"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for PollError<E> {}

/// Polls `GET uri` (a scan, e.g. `http://host/api/v1/scan/scan_1`) with `api_key` until its
/// `status` is terminal, as the contract page's back-off example does: on a 429 it waits
/// `Retry-After` (or the interval) and doubles the interval; otherwise it waits the interval
/// between polls. Returns the scan's JSON.
///
/// Give it the plain client, not one wrapped in [`NatRetry`]: it answers 429s itself (a
/// retry layer would hide them, and the interval would never grow).
pub async fn poll_scan<S, ReqB, ResB>(
    client: &mut S,
    uri: &http::Uri,
    api_key: &str,
    options: &PollOptions,
) -> Result<Value, PollError<S::Error>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: Default,
    ResB: Body,
    ResB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut delay = options.interval;
    for poll in 1..=options.max_requests {
        let mut request = Request::new(ReqB::default());
        *request.uri_mut() = uri.clone();
        let mut key = http::HeaderValue::from_str(api_key).map_err(|_| PollError::InvalidKey)?;
        key.set_sensitive(true);
        request.headers_mut().insert(crate::headers::X_API_KEY, key);
        let answer = async {
            std::future::poll_fn(|cx| client.poll_ready(cx))
                .await
                .map_err(PollError::Transport)?;
            let response = client.call(request).await.map_err(PollError::Transport)?;
            Ok(ApiError::read(response).await)
        };
        // One deadline for the answer and its whole body: a server that never answers, or
        // trickles its body, cannot hold the poller.
        let answer = tokio::time::timeout(options.request_timeout, answer)
            .await
            .map_err(|_| PollError::RequestTimedOut)??;
        let last = poll == options.max_requests;
        match answer {
            Err(error) if error.status() == StatusCode::TOO_MANY_REQUESTS => {
                // The page's example waits what the server says: at least a second (a
                // `Retry-After: 0` would make a tight loop) and at most the longest interval
                // (a hostile server cannot park the poller).
                let wait = error.retry_after().unwrap_or(delay).clamp(
                    Duration::from_secs(1),
                    options.max_interval.max(Duration::from_secs(1)),
                );
                delay = delay.saturating_mul(2).min(options.max_interval);
                if !last {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
            Err(error) => return Err(PollError::Api(error)),
            Ok((parts, _)) if !parts.status.is_success() => {
                return Err(PollError::Unexpected(parts.status));
            }
            Ok((_, body)) => {
                let scan: Value = serde_json::from_slice(&body).map_err(|_| PollError::Body)?;
                let status = scan
                    .get("status")
                    .and_then(Value::as_str)
                    .ok_or(PollError::Body)?;
                if options.terminal.iter().any(|t| t == status) {
                    return Ok(scan);
                }
            }
        }
        if !last {
            tokio::time::sleep(delay).await;
        }
    }
    Err(PollError::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn response(error: &NatError) -> (StatusCode, HeaderMap, Bytes) {
        let (parts, body) = error.clone().into_http_response::<Bytes>().into_parts();
        (parts.status, parts.headers, body)
    }

    #[test]
    fn every_error_round_trips_through_its_bytes() {
        let errors = [
            NatError::invalid_request("Missing required field: url."),
            NatError::rejected(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
            NatError::Unauthorized,
            NatError::QuotaExceeded {
                resets_on: UtcDate::new(2025, 2, 1).unwrap(),
            },
            NatError::FeatureNotAvailable {
                feature: Feature::SECURITY_SCANNING,
                plan: Plan::FREE,
            },
            NatError::FeatureNotAvailable {
                feature: Feature::new("exports", "Data exports"),
                plan: Plan::named("startup", "Startup"),
            },
            NatError::not_found(),
            NatError::not_found_with("Scan not found."),
            NatError::RateLimited {
                retry_after: 12,
                limit: 30,
            },
            NatError::ScansRunning {
                limit: 3,
                plan: Plan::PRO,
                retry_after: 10,
            },
            NatError::Internal,
            NatError::StripeNotConfigured,
        ];
        for error in errors {
            let (status, headers, body) = response(&error);
            let read = ApiError::from_parts(status, &headers, body.clone()).unwrap();
            let back = read.error().unwrap();
            assert_eq!(back.body(), body, "{error}");
            assert_eq!(back.status(), status);
            assert_eq!(back.code(), error.code());
        }
        let (status, headers, body) = response(&NatError::RateLimited {
            retry_after: 12,
            limit: 30,
        });
        let read = ApiError::from_parts(status, &headers, body).unwrap();
        assert_eq!(read.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!((read.limit(), read.remaining()), (Some(30), Some(0)));
    }

    #[test]
    fn what_is_not_an_envelope_is_said_so() {
        let headers = HeaderMap::new();
        for body in [
            &b"<html>Bad gateway</html>"[..],
            b"",
            br#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 3 seconds."}"#,
            br#"{"error":"UNAUTHORIZED","message":"Nope."}"#,
            br#"{"error":"SOMETHING_NEW","message":"?"}"#,
        ] {
            let read =
                ApiError::from_parts(StatusCode::BAD_GATEWAY, &headers, Bytes::from(body)).unwrap();
            assert_eq!(read.error(), None);
        }
        assert!(ApiError::from_parts(StatusCode::OK, &headers, Bytes::new()).is_none());
    }

    fn with_retry_after(secs: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(s) = secs {
            h.insert(header::RETRY_AFTER, s.into());
        }
        h
    }

    #[test]
    fn waits_follow_the_advice() {
        let mut p = NatRetry::new().without_jitter().rate_retries(8);
        let none = with_retry_after(None);
        let waits: Vec<u64> = (0..9)
            .map_while(|_| {
                p.next_wait(
                    &Method::POST,
                    false,
                    Some((StatusCode::TOO_MANY_REQUESTS, &none)),
                )
            })
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);

        let mut p = NatRetry::new().without_jitter();
        let long = with_retry_after(Some(120));
        let wait = p.next_wait(
            &Method::GET,
            false,
            Some((StatusCode::TOO_MANY_REQUESTS, &long)),
        );
        assert_eq!(wait, Some(Duration::from_secs(60)));

        for status in [400, 401, 402, 403, 404, 409, 502] {
            let status = StatusCode::from_u16(status).unwrap();
            let mut p = NatRetry::new().retry_any_method(true);
            assert_eq!(p.next_wait(&Method::GET, true, Some((status, &none))), None);
        }
        let mut p = NatRetry::new().without_jitter();
        assert_eq!(
            p.next_wait(
                &Method::POST,
                false,
                Some((StatusCode::INTERNAL_SERVER_ERROR, &none))
            ),
            None
        );
        let waits: Vec<u64> = (0..5)
            .map_while(|_| p.next_wait(&Method::GET, false, None))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4]);
    }

    #[test]
    fn hostile_hints_neither_panic_nor_burst() {
        let mut p = NatRetry::new()
            .max_wait(Duration::MAX)
            .backoff(Duration::from_secs(1), Duration::MAX);
        let huge = with_retry_after(Some(u64::MAX));
        let w = p.next_wait(
            &Method::GET,
            false,
            Some((StatusCode::TOO_MANY_REQUESTS, &huge)),
        );
        assert!(w.is_some());
        let zero = with_retry_after(Some(0));
        let mut p = NatRetry::new().without_jitter();
        let w = p.next_wait(
            &Method::GET,
            false,
            Some((StatusCode::TOO_MANY_REQUESTS, &zero)),
        );
        assert_eq!(w, Some(Duration::from_secs(1)));
        let mut p = NatRetry::new()
            .rate_retries(200)
            .backoff(Duration::MAX, Duration::MAX);
        for _ in 0..200 {
            assert!(
                p.next_wait(
                    &Method::GET,
                    false,
                    Some((StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()))
                )
                .is_some()
            );
        }
    }

    /// A server answering each poll with the next of `answers` (status, headers, body), and
    /// never answering once they run out.
    type Full = http_body_util::Full<Bytes>;
    type Answer = Result<Response<Full>, std::convert::Infallible>;
    type Answering = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

    fn scripted(
        answers: Vec<(u16, Option<&'static str>, &'static str)>,
    ) -> impl Service<
        Request<Full>,
        Response = Response<Full>,
        Error = std::convert::Infallible,
        Future = Answering,
    > {
        let answers = std::sync::Arc::new(std::sync::Mutex::new(answers.into_iter()));
        tower::service_fn(move |_: Request<http_body_util::Full<Bytes>>| {
            let next = answers.lock().unwrap().next();
            Box::pin(async move {
                let Some((status, retry_after, body)) = next else {
                    std::future::pending::<()>().await;
                    unreachable!()
                };
                let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
                    body.as_bytes(),
                )));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(wait) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, wait.parse().unwrap());
                }
                Ok(response)
            }) as Answering
        })
    }

    #[tokio::test(start_paused = true)]
    async fn polling_waits_at_least_a_second_and_stops_at_what_is_not_a_scan() {
        let uri: http::Uri = "http://nat.example/api/v1/scan/scan_1".parse().unwrap();
        let options = PollOptions {
            max_requests: 3,
            ..PollOptions::default()
        };
        let limited = r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 0 seconds.","retry_after":0}"#;
        let start = tokio::time::Instant::now();
        let mut server = scripted(vec![
            (429, Some("0"), limited),
            (200, None, r#"{"status":"running"}"#),
            (200, None, r#"{"status":"completed"}"#),
        ]);
        let done = poll_scan(&mut server, &uri, "nat_pk_x", &options)
            .await
            .unwrap();
        assert_eq!(done["status"], "completed");
        // 1 s (not 0) after the 429, then the doubled interval, 10 s.
        assert_eq!(start.elapsed(), Duration::from_secs(11));

        let start = tokio::time::Instant::now();
        let mut server = scripted(vec![(200, None, r#"{"status":"running"}"#); 3]);
        let err = poll_scan(&mut server, &uri, "nat_pk_x", &options)
            .await
            .unwrap_err();
        assert!(matches!(err, PollError::TimedOut));
        // No wait after the last poll.
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        let mut server = scripted(vec![(302, None, r#"{"status":"completed"}"#)]);
        let err = poll_scan(&mut server, &uri, "nat_pk_x", &options)
            .await
            .unwrap_err();
        assert!(matches!(err, PollError::Unexpected(StatusCode::FOUND)));

        let start = tokio::time::Instant::now();
        let mut server = scripted(vec![]);
        let err = poll_scan(&mut server, &uri, "nat_pk_x", &options)
            .await
            .unwrap_err();
        assert!(matches!(err, PollError::RequestTimedOut));
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        let mut server = scripted(vec![]);
        let err = poll_scan(&mut server, &uri, "bad\nkey", &options)
            .await
            .unwrap_err();
        assert!(matches!(err, PollError::InvalidKey));
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let mut p = NatRetry::new().rate_retries(1000);
        let h = with_retry_after(Some(10));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let w = p
                .next_wait(
                    &Method::GET,
                    false,
                    Some((StatusCode::TOO_MANY_REQUESTS, &h)),
                )
                .unwrap();
            assert!(
                w >= Duration::from_secs(10) && w < Duration::from_secs(11),
                "{w:?}"
            );
            seen.insert(w.as_millis() / 100);
        }
        // Spread over the whole tenth, not one value.
        assert_eq!(seen.len(), 10);
    }
}
