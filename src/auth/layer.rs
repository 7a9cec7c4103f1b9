//! [`ApiKeyAuthLayer`] and [`ApiKeyAuth`]: the policy that turns a request's key into its
//! [`Tenant`](crate::tenant::Tenant).

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Request};
use tower_layer::Layer;

use super::{
    key::{KeyFormat, KeyHash},
    store::{KeyRecord, KeyStore, MemoryKeyStore},
    tag::PresentedKey,
    throttle::{IpNet, Provisional, Throttle},
};
use crate::{
    clock::SharedClock,
    common::{Common, common_setters},
    engine::{Decision, Policy, PolicyService, Rejection, Reported, StoreCall},
    error::{NatError, StoreError},
    headers::X_API_KEY,
    path::{Routes, client_path},
    store::Answer,
    tenant::{AuthExempt, Tenant},
};

/// Applies [`ApiKeyAuth`] to a service.
#[derive(Clone, Debug)]
pub struct ApiKeyAuthLayer<K = MemoryKeyStore> {
    store: K,
    config: Config,
    common: Common,
}

/// How keys are read and failures throttled.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    exempt: Routes,
    format: KeyFormat,
    header: HeaderName,
    throttle: Option<Throttle>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            exempt: Routes::default(),
            format: KeyFormat::default(),
            header: X_API_KEY,
            throttle: Some(Throttle::new(20, Duration::from_secs(60))),
        }
    }
}

impl Config {
    pub(crate) fn exempt(&mut self, path: impl Into<String>) {
        self.exempt.add_exact(path);
    }

    pub(crate) fn exempt_prefix(&mut self, prefix: impl Into<String>) {
        self.exempt.add_prefix(prefix);
    }

    /// Whether `path` (as the client sends it) is exempt from keys.
    #[cfg(feature = "openapi")]
    pub(crate) fn is_exempt(&self, path: &str) -> bool {
        self.exempt.matches(path)
    }

    /// The header that carries the key.
    #[cfg(feature = "openapi")]
    pub(crate) fn header_name(&self) -> &HeaderName {
        &self.header
    }

    pub(crate) fn key_format(&mut self, format: KeyFormat) {
        self.format = format;
    }

    pub(crate) fn key_header(&mut self, header: HeaderName) {
        self.header = header;
    }

    pub(crate) fn failed_auth_limit(&mut self, limit: u32, period: Duration) {
        match &mut self.throttle {
            Some(throttle) => throttle.set_limit(limit, period),
            None => self.throttle = Some(Throttle::new(limit, period)),
        }
    }

    pub(crate) fn failed_auth_ipv6_prefix(&mut self, prefix: u8) {
        if let Some(throttle) = &mut self.throttle {
            throttle.ipv6_prefix(prefix);
        }
    }

    pub(crate) fn failed_auth_capacity(&mut self, addresses: usize) {
        if let Some(throttle) = &mut self.throttle {
            throttle.capacity(addresses);
        }
    }

    pub(crate) fn without_failed_auth_limit(&mut self) {
        self.throttle = None;
    }

    pub(crate) fn trusted_proxies(&mut self, proxies: impl IntoIterator<Item = IpNet>) {
        if let Some(throttle) = &mut self.throttle {
            throttle.trust(proxies);
        }
    }
}

impl<K> ApiKeyAuthLayer<K> {
    /// Authenticates against `store`, with the default key format, no exempt routes, failed
    /// authentication throttled at 20 a minute per client address, and the system clock.
    pub fn new(store: K) -> Self {
        Self {
            store,
            config: Config::default(),
            common: Common::default(),
        }
    }

    common_setters!(clock, shadow);

    /// Lets requests to `path` (as the client sent it, written as an axum route: `/healthz`,
    /// `/public/{id}`) through without a key.
    #[must_use]
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.config.exempt(path);
        self
    }

    /// Lets requests to `prefix` and everything below it through without a key
    /// (`/public` exempts `/public` and `/public/...`, not `/publicity`).
    #[must_use]
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.exempt_prefix(prefix);
        self
    }

    /// Accepts keys of this format (by default exactly 32 characters after `nat_pk_`).
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.config.key_format(format);
        self
    }

    /// Reads keys from `header` instead of `X-API-Key`. The NAT contract has `X-API-Key` as the
    /// only way in; a server not bound by it may choose another header (never `Authorization`
    /// by accident: the value must be the bare key).
    #[must_use]
    pub fn key_header(mut self, header: HeaderName) -> Self {
        self.config.key_header(header);
        self
    }
    /// Throttles failed authentication: once a client address has failed `limit` times within
    /// `period`, its requests get 429 `RATE_LIMITED` with an honest `Retry-After` before any
    /// store lookup, unless their key is already known to be live (a cache hit, so customers
    /// behind one gateway address keep working); it may fail once more every
    /// `period / limit`. The default is 20 a minute. The address is
    /// [`ClientAddr`](super::ClientAddr) or axum's `ConnectInfo<SocketAddr>`; requests with
    /// neither cannot be throttled (each such failure is counted in
    /// `nat_auth_unthrottled_failures_total`, and the first is reported at `WARN`).
    ///
    /// An address that used up its failures stays refused for the rest of its window,
    /// whatever other addresses send. Memory is bounded
    /// ([`failed_auth_capacity`](Self::failed_auth_capacity) addresses); when the table is
    /// full of addresses that failed lately, new addresses share one allowance of the same
    /// size, so a flood from many addresses is refused together rather than known
    /// addresses being forgotten (counted in `nat_auth_throttle_overflow_total`).
    #[must_use]
    pub fn failed_auth_limit(mut self, limit: u32, period: Duration) -> Self {
        self.config.failed_auth_limit(limit, period);
        self
    }

    /// Counts IPv6 clients by their first `prefix` bits (a /64 by default: a single host
    /// may hold a whole /64); IPv4 clients by their address.
    #[must_use]
    pub fn failed_auth_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.config.failed_auth_ipv6_prefix(prefix);
        self
    }

    /// Remembers at most about `addresses` client addresses that failed lately (65,536 by
    /// default, about 1 MiB, allocated on the first failure).
    #[must_use]
    pub fn failed_auth_capacity(mut self, addresses: usize) -> Self {
        self.config.failed_auth_capacity(addresses);
        self
    }

    /// Turns throttling of failed authentication off.
    #[must_use]
    pub fn without_failed_auth_limit(mut self) -> Self {
        self.config.without_failed_auth_limit();
        self
    }

    /// Trusts these proxies: for a request from one of them, the client address is the
    /// right-most address of `X-Forwarded-For` (or `Forwarded`) that is not a trusted proxy.
    /// No proxy is trusted by default, and headers from untrusted peers are ignored.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.config.trusted_proxies(proxies);
        self
    }

    /// The key store.
    pub fn store(&self) -> &K {
        &self.store
    }
}

impl<K: Clone> ApiKeyAuthLayer<K> {
    /// The policy, with `common`'s clock and shadow mode.
    pub(crate) fn policy(store: K, config: &Config, common: &Common) -> Reported<Authenticate<K>> {
        let policy = Authenticate {
            store,
            config: config.clone(),
            clock: common.clock.clone(),
        };
        Reported::new(policy, "auth", common.shadow)
    }
}

/// Authenticates every request by its `X-API-Key` header and puts its
/// [`Tenant`](crate::tenant::Tenant) into the request's extensions; answers 401
/// `UNAUTHORIZED` otherwise. See the [module docs](super).
pub type ApiKeyAuth<S, K = MemoryKeyStore> = PolicyService<S, Reported<Authenticate<K>>>;

impl<S, K: KeyStore> Layer<S> for ApiKeyAuthLayer<K> {
    type Service = ApiKeyAuth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = Self::policy(self.store.clone(), &self.config, &self.common);
        PolicyService::new(inner, Arc::new(policy))
    }
}

/// How [`ApiKeyAuth`] decides.
#[derive(Clone, Debug)]
pub struct Authenticate<K> {
    store: K,
    config: Config,
    clock: SharedClock,
}

/// The request's one well-formed `X-API-Key` (not yet hashed), or why there is none (only
/// reported, never sent: the client sees one 401 for every cause).
fn presented<'r, B>(
    req: &'r Request<B>,
    config: &Config,
) -> Result<PresentedKey<'r>, &'static str> {
    let mut values = req.headers().get_all(&config.header).iter();
    let value = values.next().ok_or("missing key header")?;
    if values.next().is_some() {
        return Err("repeated key header");
    }
    let bytes = value.as_bytes();
    if !config.format.check(bytes) {
        return Err("malformed key");
    }
    Ok(PresentedKey::new(bytes))
}

/// The 401, for every cause.
#[cold]
fn unauthorized(reason: &'static str) -> Rejection {
    Rejection::new(NatError::Unauthorized, reason)
}

/// A key lookup under way, and what its answer is for.
type Lookup<F> = StoreCall<F, Awaiting>;

/// What a key lookup's answer is for.
#[derive(Debug)]
pub enum Awaiting {
    /// A client that failed too often: the refusal it gets unless the key is live.
    Throttled(Throttled),
    /// A failure counted in advance, given back if the key is live.
    Counted(Provisional),
    /// Nothing counted yet: a failure is counted at the answer.
    Plain,
}

/// A client that failed too often: its limit and how long it waits.
#[derive(Clone, Copy, Debug)]
pub struct Throttled {
    limit: u32,
    wait: Duration,
}

impl Throttled {
    /// The 429 (with an honest `Retry-After`).
    #[cold]
    fn refusal(self) -> Rejection {
        let error = NatError::RateLimited {
            retry_after: self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0),
            limit: self.limit,
        };
        Rejection::new(error, "too many failed authentications from this address")
    }
}

impl<K: KeyStore> Authenticate<K> {
    /// What a lookup's answer means: the tenant goes into the request, or the request is
    /// refused.
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        answer: Result<Option<KeyRecord>, StoreError>,
        counted: Option<Provisional>,
    ) -> Result<(), Rejection> {
        match answer {
            Ok(Some(record)) => match record.expires_at {
                Some(at) if self.clock.now() >= at => {
                    self.failed_unless(req, counted);
                    Err(unauthorized("expired key").tenant(record.tenant.id()))
                }
                _ => {
                    self.forgive(counted);
                    req.extensions_mut().insert(record.tenant);
                    Ok(())
                }
            },
            Ok(None) => {
                self.failed_unless(req, counted);
                Err(unauthorized("unknown, revoked or deleted key"))
            }
            Err(error) => {
                self.forgive(counted);
                let key = ("auth", "key", "lookup");
                crate::common::store_failed(crate::store::OnStoreError::Reject, key, &error, None)
            }
        }
    }

    /// Counts a failed authentication, unless it was counted in advance.
    fn failed_unless<B>(&self, req: &Request<B>, counted: Option<Provisional>) {
        if counted.is_none() {
            self.failed(req);
        }
    }

    /// Gives back a failure counted in advance.
    fn forgive(&self, counted: Option<Provisional>) {
        if let (Some(throttle), Some(counted)) = (&self.config.throttle, counted) {
            throttle.forgive(counted, self.clock.now());
        }
    }

    /// Counts a failed authentication against the request's client address.
    fn failed<B>(&self, req: &Request<B>) {
        if let Some(throttle) = &self.config.throttle {
            match throttle.client(req) {
                Some(ip) => throttle.failed(ip, self.clock.now()),
                None => super::throttle::unattributed(),
            }
        }
    }

    /// A lookup's answer, now or later; for a throttled client (`throttled`) only a live key
    /// passes, and anything else (unknown, expired, a failing store) is the 429: the answer
    /// says nothing about the key.
    fn lookup<B>(
        &self,
        req: &mut Request<B>,
        answer: Answer<Option<KeyRecord>, K::Future>,
        throttled: Option<Throttled>,
    ) -> Decision<(), Lookup<K::Future>> {
        let awaiting = match throttled {
            Some(throttled) => Awaiting::Throttled(throttled),
            None => Awaiting::Plain,
        };
        match answer {
            Answer::Ready(answer) => self.answered(req, answer, awaiting),
            Answer::Pending(lookup) => {
                Decision::Later(StoreCall::new(lookup, awaiting, "key", "lookup"))
            }
        }
    }

    /// A lookup that goes to the store for `hash`: its failure is counted before it starts
    /// (one per key in flight), so a burst of lookups from one address cannot outrun the
    /// throttle.
    fn query<B>(&self, req: &Request<B>, hash: KeyHash, lookup: K::Future) -> Lookup<K::Future> {
        let counted = self.config.throttle.as_ref().and_then(|throttle| {
            let ip = throttle.client(req)?;
            throttle.provisional(ip, hash, self.clock.now())
        });
        let awaiting = counted.map_or(Awaiting::Plain, Awaiting::Counted);
        StoreCall::new(lookup, awaiting, "key", "lookup")
    }

    /// What a lookup's answer means.
    fn answered<B>(
        &self,
        req: &mut Request<B>,
        answer: Result<Option<KeyRecord>, StoreError>,
        awaiting: Awaiting,
    ) -> Decision<(), Lookup<K::Future>> {
        let throttled = match awaiting {
            Awaiting::Throttled(throttled) => throttled,
            Awaiting::Counted(counted) => {
                return Decision::of(self.admit(req, answer, Some(counted)));
            }
            Awaiting::Plain => return Decision::of(self.admit(req, answer, None)),
        };
        match answer {
            Ok(Some(record)) if record.expires_at.is_none_or(|at| self.clock.now() < at) => {
                req.extensions_mut().insert(record.tenant);
                Decision::Pass(())
            }
            Err(error) => {
                crate::report::failure("key", &error);
                crate::metrics::store_error("key", "lookup");
                Decision::refuse(throttled.refusal())
            }
            Ok(_) => Decision::refuse(throttled.refusal()),
        }
    }

    /// The answer to a client that failed too often: 429, unless the store vouches for its
    /// key (known live, or known live before and looked up again).
    #[cold]
    fn throttled<B>(
        &self,
        req: &mut Request<B>,
        throttled: Throttled,
    ) -> Decision<(), Lookup<K::Future>> {
        if let Ok(key) = presented(req, &self.config) {
            if let Some(answer) = self.store.known(&key.hash()) {
                return self.lookup(req, answer, Some(throttled));
            }
        }
        Decision::refuse(throttled.refusal())
    }
}

impl<K: KeyStore, B> Policy<B> for Authenticate<K> {
    type Pass = ();
    type Later = Lookup<K::Future>;

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Decision<(), Self::Later> {
        // Authenticated (or exempted) by a layer of the server's own outside this one.
        let extensions = req.extensions();
        if extensions.get::<Tenant>().is_some() || extensions.get::<AuthExempt>().is_some() {
            return Decision::Pass(());
        }
        let config = &self.config;
        if !config.exempt.is_empty() && config.exempt.matches(client_path(req)) {
            req.extensions_mut().insert(AuthExempt);
            return Decision::Pass(());
        }
        if let Some(throttle) = &config.throttle {
            if let Some(ip) = throttle.client(req) {
                if let Some(wait) = throttle.wait(ip, || self.clock.now()) {
                    let limit = throttle.limit();
                    return self.throttled(req, Throttled { limit, wait });
                }
            }
        }
        let key = match presented(req, config) {
            Ok(key) => key,
            Err(reason) => {
                self.failed(req);
                return Decision::refuse(unauthorized(reason));
            }
        };
        match self.store.find(&key) {
            Answer::Ready(answer) => self.answered(req, answer, Awaiting::Plain),
            Answer::Pending(lookup) => {
                let hash = key.hash();
                Decision::Later(self.query(req, hash, lookup))
            }
        }
    }

    fn resume(
        &self,
        (answer, awaiting): (Result<Option<KeyRecord>, StoreError>, Awaiting),
        req: &mut Request<B>,
    ) -> Decision<(), Self::Later> {
        self.answered(req, answer, awaiting)
    }
}
