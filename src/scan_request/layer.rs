//! [`ValidateScanRequestLayer`] and [`ValidateScanRequest`]: which requests are scan
//! creations, and the policy that reads and checks their bodies.

use std::{
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::{Method, Request};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;

use super::validate::{Invalid, content_type_ok, declared_too_large, validate};
use crate::{
    guard::{Policy, Rejection, Step},
    path::{Pattern, client_path},
    plan::ScanKind,
};

/// The default body size limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default scan-creation route: `POST /api/v1/scan`.
pub const DEFAULT_SCAN_PATH: &str = "/api/v1/scan";

/// Which requests are scan creations.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Routes {
    /// `POST /api/v1/scan`, until a route of the server's own replaces it.
    Default,
    /// These methods and paths, as the client sent them.
    Paths(Vec<(Method, Pattern)>),
    /// Every request the layer sees (the layer sits on the scan route itself).
    Every,
}

#[derive(Clone, Debug)]
struct Config {
    routes: Routes,
    limit: usize,
    default_kind: ScanKind,
    shadow: bool,
}

impl Config {
    fn is_scan<B>(&self, req: &Request<B>) -> bool {
        match &self.routes {
            Routes::Every => true,
            Routes::Default => {
                req.method() == Method::POST && client_path(req) == DEFAULT_SCAN_PATH
            }
            Routes::Paths(routes) => {
                let path = client_path(req);
                routes
                    .iter()
                    .any(|(m, p)| req.method() == m && p.matches(path))
            }
        }
    }
}

/// Applies [`ValidateScanRequest`] to a service.
#[derive(Clone, Debug)]
pub struct ValidateScanRequestLayer {
    policy: ValidateScan,
}

/// How [`ValidateScanRequest`] decides.
#[derive(Clone, Debug)]
pub struct ValidateScan {
    config: Arc<Config>,
}

impl Default for ValidateScanRequestLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidateScanRequestLayer {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn policy(&self) -> &ValidateScan {
        &self.policy
    }

    /// Validates `POST /api/v1/scan` (the path the client sent) with a 1 MiB limit; a missing
    /// `mode` means functional.
    pub fn new() -> Self {
        Self {
            policy: ValidateScan {
                config: Arc::new(Config {
                    routes: Routes::Default,
                    limit: DEFAULT_BODY_LIMIT,
                    default_kind: ScanKind::Functional,
                    shadow: false,
                }),
            },
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.policy.config)
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.config_mut().shadow = on;
        self
    }

    /// Treats `method path` as scan creation: the path the client sent, written as an axum
    /// route (`/api/v1/projects/{id}/scans`: `{name}` is any one segment, `{*name}` the rest).
    /// The first call replaces the default `POST /api/v1/scan`; later calls add routes.
    #[must_use]
    pub fn route(mut self, method: Method, path: impl Into<String>) -> Self {
        let route = (method, Pattern::new(&path.into()));
        let config = self.config_mut();
        match &mut config.routes {
            Routes::Paths(routes) => routes.push(route),
            _ => config.routes = Routes::Paths(vec![route]),
        }
        self
    }

    /// Treats every request this layer sees as a scan creation, whatever its path **and
    /// method**: for a layer placed on the scan route's handler itself
    /// (`post(create).route_layer(..)`, a handler's `layer`), so no path is matched at all.
    /// On a whole router, or on a route with other methods, it would take their requests for
    /// scan creations too (and refuse a `GET` without a body with 400).
    #[must_use]
    pub fn every_request(mut self) -> Self {
        self.config_mut().routes = Routes::Every;
        self
    }

    /// Refuses bodies over `bytes` bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config_mut().limit = bytes;
        self
    }

    /// The kind of scan when the body has no `mode`.
    #[must_use]
    pub fn default_kind(mut self, kind: ScanKind) -> Self {
        self.config_mut().default_kind = kind;
        self
    }
}

impl<S> Layer<S> for ValidateScanRequestLayer {
    type Service = ValidateScanRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateScanRequest {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Validates scan-creation requests; answers 400 `INVALID_REQUEST`. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct ValidateScanRequest<S> {
    inner: S,
    policy: ValidateScan,
}

impl<S> ValidateScanRequest<S> {
    crate::inner_accessors!();
}

crate::guard::guarded_service!(impl<> for ValidateScanRequest<S>, policy = ValidateScan);

fn refuse(invalid: Invalid) -> Rejection {
    let reason = invalid.reason();
    let error = invalid.into_error();
    error.report(None, reason);
    error.into()
}

impl<B: Body + From<Bytes>> Policy<B> for ValidateScan {
    type Pass = ();
    type Later = ReadBody<B>;

    const LAYER: &'static str = "scan_request";

    #[inline]
    fn shadow(&self) -> bool {
        self.config.shadow
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<(), ReadBody<B>> {
        // Not a scan creation, or one a layer outside this one validated already.
        if !self.config.is_scan(req) || req.extensions().get::<ScanKind>().is_some() {
            return Step::Pass(());
        }
        // A gRPC call's body is protobuf, never read: its kind is the default one.
        if crate::grpc::is_grpc(req) {
            req.extensions_mut().insert(self.config.default_kind);
            return Step::Pass(());
        }
        if !content_type_ok(req.headers()) {
            return Step::Reject(refuse(Invalid::ContentType));
        }
        if declared_too_large(req.headers(), self.config.limit) {
            return Step::Reject(refuse(Invalid::TooLarge(self.config.limit)));
        }
        // The body is read here and handed back, as bytes, once it is checked.
        let body = mem::replace(req.body_mut(), B::from(Bytes::new()));
        Step::Later(ReadBody {
            body,
            buf: Vec::new(),
            limit: self.config.limit,
        })
    }

    fn resume(&self, read: Result<Bytes, Invalid>, req: &mut Request<B>) -> Step<(), ReadBody<B>> {
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(invalid) => return Step::Reject(refuse(invalid)),
        };
        let checked = validate(&bytes, self.config.default_kind);
        // The handler gets the bytes that were read, whatever the verdict.
        *req.body_mut() = B::from(bytes);
        match checked {
            Ok(kind) => {
                req.extensions_mut().insert(kind);
                Step::Pass(())
            }
            Err(invalid) => Step::Reject(refuse(invalid)),
        }
    }
}

pin_project! {
    /// A scan body being read, within the limit.
    pub struct ReadBody<B> {
        #[pin]
        body: B,
        buf: Vec<u8>,
        limit: usize,
    }
}

impl<B: Body> Future for ReadBody<B> {
    type Output = Result<Bytes, Invalid>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let limit = *this.limit;
        loop {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Ok(Bytes::from(mem::take(this.buf)))),
                Some(Err(_)) => return Poll::Ready(Err(Invalid::Unreadable)),
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if this.buf.len() + data.remaining() > limit {
                        return Poll::Ready(Err(Invalid::TooLarge(limit)));
                    }
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        this.buf.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
        }
    }
}
