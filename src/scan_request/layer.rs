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
    engine::{Decision, Policy, PolicyService, Rejection, Reported},
    error::NatError,
    path::{Pattern, client_path},
    plan::ScanKind,
};

/// The default body size limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default scan-creation route: `POST /api/v1/scan`.
pub const DEFAULT_SCAN_PATH: &str = "/api/v1/scan";

/// Which requests are scan creations.
#[derive(Clone, Debug)]
enum Routes {
    /// `POST /api/v1/scan`, until a route of the server's own replaces it.
    Default,
    /// These routes, matched on the path the client sent.
    Paths(Vec<Route>),
    /// Every request the layer sees (the layer sits on the scan route itself).
    Every,
}

/// A scan-creation route.
#[derive(Clone, Debug)]
struct Route {
    /// A REST route's method; `None` for a gRPC method (its server takes any HTTP method).
    method: Option<Method>,
    path: Pattern,
    /// A gRPC method's reader of its message.
    grpc: Option<GrpcKind>,
}

/// How a scan creation's body tells its kind.
#[derive(Clone, Debug)]
pub enum How {
    /// A JSON body's `mode`.
    Json,
    /// A gRPC message, read by the server's reader.
    Grpc(GrpcKind),
    /// A gRPC call whose kind the server inserted ([`ScanKind`] in the extensions).
    Inserted(ScanKind),
}

/// Which requests are scan creations, and how their bodies are checked.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    routes: Routes,
    limit: usize,
    default_kind: ScanKind,
    grpc_kind: Option<GrpcKind>,
}

/// The server's reader of a gRPC scan-creation message: its kind, or the error to refuse it
/// with.
#[derive(Clone)]
pub struct GrpcKind(Arc<ReadKind>);

/// How the server reads a gRPC scan message's kind.
type ReadKind = dyn Fn(&[u8]) -> Result<ScanKind, NatError> + Send + Sync;

impl std::fmt::Debug for GrpcKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcKind")
    }
}

/// Marks a scan creation this crate's validation read and checked, so a second validation on
/// its way (by path outside, by placement inside) neither reads it nor checks it again.
#[derive(Clone, Copy, Debug)]
struct Checked;

impl Config {
    /// Whether `req` is a scan creation.
    #[cfg(feature = "openapi")]
    pub(crate) fn is_scan_creation<B>(&self, req: &Request<B>) -> bool {
        self.route(req).is_some()
    }

    /// The kind of a JSON scan body without `mode`.
    #[cfg(feature = "openapi")]
    pub(crate) fn default_kind(&self) -> ScanKind {
        self.default_kind
    }

    /// The route `req` is a scan creation of (`Some(None)`: by placement), if any.
    fn route<B>(&self, req: &Request<B>) -> Option<Option<&Route>> {
        match &self.routes {
            Routes::Every => Some(None),
            Routes::Default => (req.method() == Method::POST
                && client_path(req) == DEFAULT_SCAN_PATH)
                .then_some(None),
            Routes::Paths(routes) => {
                let path = client_path(req);
                routes
                    .iter()
                    .find(|r| {
                        r.method.as_ref().is_none_or(|m| req.method() == m) && r.path.matches(path)
                    })
                    .map(Some)
            }
        }
    }

    /// How the kind of a scan creation `req` on `route` is told, or why it cannot be.
    fn how<B>(&self, req: &Request<B>, route: Option<&Route>) -> Result<How, Invalid> {
        let grpc = crate::grpc::is_grpc(req);
        // Over HTTP/1.x the status a gRPC answer ends with (in its trailers) does not reach
        // the client: the scan would be charged for an answer it never sees as a success.
        if grpc && req.version() < http::Version::HTTP_2 {
            return Err(Invalid::GrpcNeedsHttp2);
        }
        let reader = match route {
            // A gRPC method's server serves whatever reaches it: only gRPC may.
            Some(Route {
                grpc: Some(reader), ..
            }) => {
                return if grpc {
                    Ok(How::Grpc(reader.clone()))
                } else {
                    Err(Invalid::NotGrpc)
                };
            }
            Some(_) => None,
            None => self.grpc_kind.as_ref(),
        };
        if !grpc {
            return if content_type_ok(req.headers()) {
                Ok(How::Json)
            } else {
                Err(Invalid::ContentType)
            };
        }
        // A gRPC call elsewhere: the placed layer's reader, or the server's own word.
        match (reader, req.extensions().get::<ScanKind>()) {
            (Some(reader), _) => Ok(How::Grpc(reader.clone())),
            (None, Some(kind)) => Ok(How::Inserted(*kind)),
            (None, None) => Err(Invalid::UnknownKind),
        }
    }
}

/// Applies [`ValidateScanRequest`] to a service.
#[derive(Clone, Debug)]
pub struct ValidateScanRequestLayer {
    config: Config,
    shadow: bool,
}

/// How [`ValidateScanRequest`] decides.
#[derive(Clone, Debug)]
pub struct ValidateScan {
    config: Config,
}

impl Default for ValidateScanRequestLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidateScanRequestLayer {
    /// Validates `POST /api/v1/scan` (the path the client sent) with a 1 MiB limit; a missing
    /// `mode` means functional.
    pub fn new() -> Self {
        Self {
            config: Config {
                routes: Routes::Default,
                limit: DEFAULT_BODY_LIMIT,
                default_kind: ScanKind::Functional,
                grpc_kind: None,
            },
            shadow: false,
        }
    }

    /// What the layer checks (for a stack, which keeps its own shadow mode).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Treats `method path` as scan creation: the path the client sent, written as an axum
    /// route (`/api/v1/projects/{id}/scans`: `{name}` is any one segment, `{*name}` the rest).
    /// The first call replaces the default `POST /api/v1/scan`; later calls add routes.
    #[must_use]
    pub fn route(mut self, method: Method, path: impl Into<String>) -> Self {
        self.config.add(Route {
            method: Some(method),
            path: Pattern::new(&path.into()),
            grpc: None,
        });
        self
    }

    /// Treats the gRPC method at `path` (`/package.Service/Method`, as the client sent it)
    /// as scan creation, whatever the HTTP method (a gRPC server serves any), and reads each
    /// call's kind from its one protobuf message with `read` (the bytes after the 5-byte gRPC
    /// frame header). An `Err` refuses the call with that error (an
    /// [`NatError::invalid_request`] is `INVALID_ARGUMENT`). A request to it that is not gRPC
    /// is refused with 400: it cannot be read, and the gRPC server would serve it anyway.
    /// Like [`route`](Self::route), the first route replaces the default
    /// `POST /api/v1/scan`. See the [module docs](super#grpc).
    ///
    /// ```
    /// use http::Method;
    /// use prost::Message;
    /// use tower_nat::{NatError, plan::ScanKind, scan_request::ValidateScanRequestLayer};
    ///
    /// /// The method's request message (prost-generated, or derived as here).
    /// #[derive(Clone, PartialEq, prost::Message)]
    /// struct CreateScan {
    ///     #[prost(string, tag = "1")]
    ///     url: String,
    ///     #[prost(string, tag = "2")]
    ///     mode: String,
    /// }
    ///
    /// let validation = ValidateScanRequestLayer::new()
    ///     .route(Method::POST, "/api/v1/scan")
    ///     .grpc_route("/nat.v1.Scans/CreateScan", |message| {
    ///         let scan = CreateScan::decode(message)
    ///             .map_err(|_| NatError::invalid_request("Malformed CreateScan message."))?;
    ///         match scan.mode.as_str() {
    ///             "" => Ok(ScanKind::Functional),
    ///             mode => ScanKind::from_mode(mode)
    ///                 .ok_or_else(|| NatError::invalid_request("Invalid field: mode.")),
    ///         }
    ///     });
    /// # let _ = validation;
    /// ```
    #[must_use]
    pub fn grpc_route(
        mut self,
        path: impl Into<String>,
        read: impl Fn(&[u8]) -> Result<ScanKind, NatError> + Send + Sync + 'static,
    ) -> Self {
        self.config.add(Route {
            method: None,
            path: Pattern::new(&path.into()),
            grpc: Some(GrpcKind(Arc::new(read))),
        });
        self
    }

    /// Treats every request this layer sees as a scan creation, whatever its path **and
    /// method**: for a layer placed on the scan route's handler itself
    /// (`post(create).route_layer(..)`, a handler's `layer`), so no path is matched at all.
    /// On a whole router, or on a route with other methods, it would take their requests for
    /// scan creations too (and refuse a `GET` without a body with 400).
    #[must_use]
    pub fn every_request(mut self) -> Self {
        self.config.routes = Routes::Every;
        self
    }

    /// Refuses bodies over `bytes` bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.limit = bytes;
        self
    }

    /// The kind of scan when the body has no `mode`.
    #[must_use]
    pub fn default_kind(mut self, kind: ScanKind) -> Self {
        self.config.default_kind = kind;
        self
    }

    /// How a gRPC call reaching a layer placed on a scan route ([`every_request`](Self::every_request),
    /// [`NatLayer::scan_creation`](crate::NatLayer::scan_creation)) tells its kind: `read`
    /// gets its one protobuf message, as for [`grpc_route`](Self::grpc_route).
    ///
    /// Without a reader, a gRPC scan creation needs a [`ScanKind`] put into its extensions by
    /// the server, before this layer (a layer of the server's own that knows the method);
    /// with neither it is refused with 400 (`INVALID_ARGUMENT`), never given a kind it did
    /// not ask for. Either way its body is read within the size limit and handed on as it
    /// came. See the [module docs](super#grpc).
    #[must_use]
    pub fn grpc_kind(
        mut self,
        read: impl Fn(&[u8]) -> Result<ScanKind, NatError> + Send + Sync + 'static,
    ) -> Self {
        self.config.grpc_kind = Some(GrpcKind(Arc::new(read)));
        self
    }
}

impl Config {
    /// Adds a route; the first replaces the default.
    fn add(&mut self, route: Route) {
        match &mut self.routes {
            Routes::Paths(routes) => routes.push(route),
            routes => *routes = Routes::Paths(vec![route]),
        }
    }
}

impl Config {
    /// The same checks for a layer placed on the scan route itself.
    pub(crate) fn every_request(&self) -> Self {
        Self {
            routes: Routes::Every,
            ..self.clone()
        }
    }

    /// The policy, reported, enforced unless `shadow`.
    pub(crate) fn policy(&self, shadow: bool) -> Reported<ValidateScan> {
        let policy = ValidateScan {
            config: self.clone(),
        };
        Reported::new(policy, "scan_request", shadow)
    }
}

impl<S> Layer<S> for ValidateScanRequestLayer {
    type Service = ValidateScanRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService::new(inner, Arc::new(self.config.policy(self.shadow)))
    }
}

/// Validates scan-creation requests; answers 400 `INVALID_REQUEST`. See the
/// [module docs](super).
pub type ValidateScanRequest<S> = PolicyService<S, Reported<ValidateScan>>;

#[cold]
fn refuse(invalid: Invalid) -> Rejection {
    let reason = invalid.reason();
    Rejection::new(invalid.into_error(), reason)
}

impl<B: Body + From<Bytes> + Send + 'static> Policy<B> for ValidateScan {
    type Pass = ();
    type Later = ReadBody<B>;

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Decision<(), ReadBody<B>> {
        // Not a scan creation, or one a validation outside this one checked already.
        let Some(route) = self.config.route(req) else {
            return Decision::Pass(());
        };
        if req.extensions().get::<Checked>().is_some() {
            return Decision::Pass(());
        }
        // A gRPC call's kind comes from the server (a reader of its message, or a `ScanKind`
        // it inserted), never from a default; any other request's from its JSON body.
        let how = match self.config.how(req, route) {
            Ok(how) => how,
            Err(invalid) => return Decision::refuse(refuse(invalid)),
        };
        if declared_too_large(req.headers(), self.config.limit) {
            return Decision::refuse(refuse(Invalid::TooLarge(self.config.limit)));
        }
        // The body is read here and handed back, as bytes, once it is checked.
        let body = mem::replace(req.body_mut(), B::from(Bytes::new()));
        Decision::Later(ReadBody {
            body,
            buf: Vec::new(),
            limit: self.config.limit,
            how: Some(how),
        })
    }

    fn resume(
        &self,
        (read, how): (Result<Bytes, Invalid>, How),
        req: &mut Request<B>,
    ) -> Decision<(), ReadBody<B>> {
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(invalid) => return Decision::refuse(refuse(invalid)),
        };
        let checked = match how {
            How::Json => validate(&bytes, self.config.default_kind),
            How::Grpc(GrpcKind(read)) => {
                grpc_message(&bytes).and_then(|message| read(message).map_err(Invalid::Refused))
            }
            How::Inserted(kind) => Ok(kind),
        };
        // The handler gets the bytes that were read, whatever the verdict.
        *req.body_mut() = B::from(bytes);
        match checked {
            Ok(kind) => {
                let extensions = req.extensions_mut();
                extensions.insert(kind);
                extensions.insert(Checked);
                Decision::Pass(())
            }
            Err(invalid) => Decision::refuse(refuse(invalid)),
        }
    }
}

/// The one uncompressed message of a unary gRPC request body: a 5-byte header (compression
/// flag 0, then the message's length, big-endian) and exactly that many bytes.
fn grpc_message(body: &[u8]) -> Result<&[u8], Invalid> {
    match body {
        [0, a, b, c, d, message @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == message.len() =>
        {
            Ok(message)
        }
        _ => Err(Invalid::GrpcMessage),
    }
}

pin_project! {
    /// A scan body being read, within the limit.
    pub struct ReadBody<B> {
        #[pin]
        body: B,
        buf: Vec<u8>,
        limit: usize,
        how: Option<How>,
    }
}

impl<B: Body> Future for ReadBody<B> {
    type Output = (Result<Bytes, Invalid>, How);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let limit = *this.limit;
        let read = loop {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                None => break Ok(Bytes::from(mem::take(this.buf))),
                Some(Err(_)) => break Err(Invalid::Unreadable),
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if this.buf.len() + data.remaining() > limit {
                        break Err(Invalid::TooLarge(limit));
                    }
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        this.buf.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
        };
        let how = this.how.take().expect("polled after completion");
        Poll::Ready((read, how))
    }
}
