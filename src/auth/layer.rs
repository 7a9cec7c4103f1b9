//! [`ApiKeyAuthLayer`] and [`ApiKeyAuth`]: the policy that turns a request's key into its
//! [`Tenant`](crate::tenant::Tenant).

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Request};
use tower_layer::Layer;

use super::{
    key::{KeyFormat, KeyHash},
    store::{KeyRecord, KeyStore, MemoryKeyStore},
    throttle::{IpNet, Throttle},
};
use crate::{
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    guard::{Policy, Rejection, Step},
    headers::X_API_KEY,
    path::{Routes, client_path},
    report,
    store::Answer,
    tenant::{AuthExempt, Tenant},
};

/// Applies [`ApiKeyAuth`] to a service.
#[derive(Clone, Debug)]
pub struct ApiKeyAuthLayer<K = MemoryKeyStore> {
    policy: Authenticate<K>,
}

/// How [`ApiKeyAuth`] decides. Shared by every clone of the layer and its services.
#[derive(Clone, Debug)]
pub struct Authenticate<K> {
    store: K,
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    exempt: Routes,
    format: KeyFormat,
    header: HeaderName,
    clock: SharedClock,
    throttle: Option<Throttle>,
    shadow: bool,
}

impl<K> ApiKeyAuthLayer<K> {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn policy(&self) -> &Authenticate<K> {
        &self.policy
    }

    /// Authenticates against `store`, with the default key format, no exempt routes, failed
    /// authentication throttled at 20 a minute per client address, and the system clock.
    pub fn new(store: K) -> Self {
        Self {
            policy: Authenticate {
                store,
                config: Arc::new(Config {
                    exempt: Routes::default(),
                    format: KeyFormat::default(),
                    header: X_API_KEY,
                    clock: clock::system(),
                    throttle: Some(Throttle::new(20, Duration::from_secs(60))),
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

    /// Lets requests to `path` (as the client sent it, written as an axum route: `/healthz`,
    /// `/public/{id}`) through without a key.
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.config_mut().exempt.add_exact(path);
        self
    }

    /// Lets requests to `prefix` and everything below it through without a key
    /// (`/public` exempts `/public` and `/public/...`, not `/publicity`).
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config_mut().exempt.add_prefix(prefix);
        self
    }

    /// Accepts keys of this format (by default exactly 32 characters after `nat_pk_`).
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.config_mut().format = format;
        self
    }

    /// Reads keys from `header` instead of `X-API-Key`. The NAT contract has `X-API-Key` as the
    /// only way in; a server not bound by it may choose another header (never `Authorization`
    /// by accident: the value must be the bare key).
    #[must_use]
    pub fn key_header(mut self, header: HeaderName) -> Self {
        self.config_mut().header = header;
        self
    }

    /// Throttles failed authentication: once a client address has failed `limit` times within
    /// `period`, its requests get 429 `RATE_LIMITED` with an honest `Retry-After` before any
    /// store lookup, unless their key is already known to be live (a cache hit, so customers
    /// behind one gateway address keep working); it may fail once more every
    /// `period / limit`. The default is 20 a minute. The address is
    /// [`ClientAddr`](super::ClientAddr) or axum's `ConnectInfo<SocketAddr>`; requests with
    /// neither are not throttled.
    #[must_use]
    pub fn failed_auth_limit(mut self, limit: u32, period: Duration) -> Self {
        let trusted = self.trusted_proxies_now();
        let mut throttle = Throttle::new(limit, period);
        throttle.trust(trusted);
        self.config_mut().throttle = Some(throttle);
        self
    }

    /// Turns throttling of failed authentication off.
    #[must_use]
    pub fn without_failed_auth_limit(mut self) -> Self {
        self.config_mut().throttle = None;
        self
    }

    /// Trusts these proxies: for a request from one of them, the client address is the
    /// right-most address of `X-Forwarded-For` (or `Forwarded`) that is not a trusted proxy.
    /// No proxy is trusted by default, and headers from untrusted peers are ignored.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        if let Some(throttle) = &mut self.config_mut().throttle {
            throttle.trust(proxies);
        }
        self
    }

    fn trusted_proxies_now(&self) -> Vec<IpNet> {
        self.policy
            .config
            .throttle
            .as_ref()
            .map(|t| t.trusted().to_vec())
            .unwrap_or_default()
    }

    /// Checks key expiry against `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// The key store.
    pub fn store(&self) -> &K {
        &self.policy.store
    }
}

impl<S, K: Clone> Layer<S> for ApiKeyAuthLayer<K> {
    type Service = ApiKeyAuth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Authenticates every request by its `X-API-Key` header and puts its [`Tenant`](crate::tenant::Tenant) into the
/// request's extensions; answers 401 `UNAUTHORIZED` otherwise. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct ApiKeyAuth<S, K = MemoryKeyStore> {
    inner: S,
    policy: Authenticate<K>,
}

impl<S, K> ApiKeyAuth<S, K> {
    crate::inner_accessors!();
}

crate::guard::guarded_service!(impl<K> for ApiKeyAuth<S, K>, policy = Authenticate<K>);

/// The hash of the request's one well-formed `X-API-Key`, or why there is none (only
/// reported, never sent: the client sees one 401 for every cause).
fn key_hash<B>(req: &Request<B>, config: &Config) -> Result<KeyHash, &'static str> {
    let mut values = req.headers().get_all(&config.header).iter();
    let value = values.next().ok_or("missing key header")?;
    if values.next().is_some() {
        return Err("repeated key header");
    }
    let bytes = value.as_bytes();
    if !config.format.check(bytes) {
        return Err("malformed key");
    }
    Ok(KeyHash::of(bytes))
}

impl Config {
    /// What a lookup's answer means: the tenant goes into the request, or the request is
    /// refused.
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        answer: Result<Option<KeyRecord>, StoreError>,
    ) -> Result<(), Rejection> {
        let error = match answer {
            Ok(Some(record)) => match record.expires_at {
                Some(at) if self.clock.now() >= at => {
                    let error = NatError::Unauthorized;
                    error.report(Some(record.tenant.id()), "expired key");
                    self.failed(req);
                    return Err(error.into());
                }
                _ => {
                    req.extensions_mut().insert(record.tenant);
                    return Ok(());
                }
            },
            Ok(None) => {
                let error = NatError::Unauthorized;
                error.report(None, "unknown, revoked or deleted key");
                self.failed(req);
                error
            }
            Err(err) => {
                report::failure("key store", &err);
                crate::metrics::store_error("key", "lookup");
                let error = NatError::Internal;
                error.report(None, "key store failed");
                error
            }
        };
        Err(error.into())
    }
}

impl Config {
    /// Counts a failed authentication against the request's client address.
    fn failed<B>(&self, req: &Request<B>) {
        if let Some(throttle) = &self.throttle {
            if let Some(ip) = throttle.client(req) {
                throttle.failed(ip, self.clock.now());
            }
        }
    }

    /// The answer to a client that failed too often: 429, unless the store vouches for its
    /// key (known live, or known live before and looked up again).
    #[cold]
    fn throttled<B, K: KeyStore>(
        &self,
        req: &mut Request<B>,
        store: &K,
        limit: u32,
        wait: Duration,
    ) -> Step<(), K::Future> {
        if let Ok(hash) = key_hash(req, self) {
            match store.known(&hash) {
                Some(Answer::Ready(answer)) => return Step::of(self.admit(req, answer)),
                Some(Answer::Pending(lookup)) => return Step::Later(lookup),
                None => {}
            }
        }
        let error = NatError::RateLimited {
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            limit,
        };
        error.report(None, "too many failed authentications from this address");
        Step::Reject(error.into())
    }
}

impl<K: KeyStore, B> Policy<B> for Authenticate<K> {
    type Pass = ();
    type Later = K::Future;

    const LAYER: &'static str = "auth";

    #[inline]
    fn shadow(&self) -> bool {
        self.config.shadow
    }

    fn store_call(
        &self,
        answer: &Result<Option<KeyRecord>, StoreError>,
    ) -> Option<(&'static str, &'static str, bool)> {
        Some(("key", "lookup", answer.is_ok()))
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<(), K::Future> {
        // Authenticated (or exempted) by a layer of the server's own outside this one.
        let extensions = req.extensions();
        if extensions.get::<Tenant>().is_some() || extensions.get::<AuthExempt>().is_some() {
            return Step::Pass(());
        }
        if self.config.exempt.matches(client_path(req)) {
            req.extensions_mut().insert(AuthExempt);
            return Step::Pass(());
        }
        let config = &*self.config;
        if let Some(throttle) = &config.throttle {
            if let Some(ip) = throttle.client(req) {
                if let Some(wait) = throttle.wait(ip, || config.clock.now()) {
                    let limit = throttle.limit();
                    return config.throttled(req, &self.store, limit, wait);
                }
            }
        }
        let hash = match key_hash(req, config) {
            Ok(hash) => hash,
            Err(reason) => {
                let error = NatError::Unauthorized;
                error.report(None, reason);
                config.failed(req);
                return Step::Reject(error.into());
            }
        };
        match self.store.lookup(&hash) {
            Answer::Ready(answer) => Step::of(self.config.admit(req, answer)),
            Answer::Pending(lookup) => Step::Later(lookup),
        }
    }

    fn resume(
        &self,
        answer: Result<Option<KeyRecord>, StoreError>,
        req: &mut Request<B>,
    ) -> Step<(), K::Future> {
        Step::of(self.config.admit(req, answer))
    }
}
