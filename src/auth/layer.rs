//! [`ApiKeyAuthLayer`] and [`ApiKeyAuth`]: the policy that turns a request's key into its
//! [`Tenant`](crate::tenant::Tenant).

use std::sync::Arc;

use http::Request;
use tower_layer::Layer;

use super::{
    key::{KeyFormat, KeyHash},
    store::{KeyRecord, KeyStore, MemoryKeyStore},
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
    clock: SharedClock,
}

impl<K> ApiKeyAuthLayer<K> {
    /// Authenticates against `store`, with the default key format, no exempt routes and the
    /// system clock.
    pub fn new(store: K) -> Self {
        Self {
            policy: Authenticate {
                store,
                config: Arc::new(Config {
                    exempt: Routes::default(),
                    format: KeyFormat::default(),
                    clock: clock::system(),
                }),
            },
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.policy.config)
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
fn key_hash<B>(req: &Request<B>, format: &KeyFormat) -> Result<KeyHash, &'static str> {
    let mut values = req.headers().get_all(X_API_KEY).iter();
    let value = values.next().ok_or("missing X-API-Key")?;
    if values.next().is_some() {
        return Err("repeated X-API-Key");
    }
    let bytes = value.as_bytes();
    if !format.check(bytes) {
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
                    error
                }
                _ => {
                    req.extensions_mut().insert(record.tenant);
                    return Ok(());
                }
            },
            Ok(None) => {
                let error = NatError::Unauthorized;
                error.report(None, "unknown, revoked or deleted key");
                error
            }
            Err(err) => {
                report::failure("key store", &err);
                let error = NatError::Internal;
                error.report(None, "key store failed");
                error
            }
        };
        Err(error.into())
    }
}

impl<K: KeyStore, B> Policy<B> for Authenticate<K> {
    type Pass = ();
    type Later = K::Future;

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
        let hash = match key_hash(req, &self.config.format) {
            Ok(hash) => hash,
            Err(reason) => {
                let error = NatError::Unauthorized;
                error.report(None, reason);
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
    ) -> Result<(), Rejection> {
        self.config.admit(req, answer)
    }
}
