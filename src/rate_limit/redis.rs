//! [`RedisRateStore`]: the same GCRA as [`MemoryRateStore`](super::MemoryRateStore), run in
//! Redis so that every instance of a server shares each tenant's budget.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use ::redis::Script;

use super::{gcra::RateDecision, store::RateStore};
use crate::{
    error::StoreError,
    store::{
        Answer,
        known::{DEFAULT_CAPACITY, Known},
        redis::{RedisBackend, TimeSource},
    },
    tenant::TenantId,
};

/// The script (its keys, arguments and answer are described in its file).
const GCRA: &str = include_str!("../../scripts/redis/rate_gcra.lua");

/// A rate-limit store in Redis. Each check is one round trip: a Lua script run with
/// `EVALSHA` (loaded once, reloaded by itself after a `NOSCRIPT`, for example when Redis
/// restarted).
///
/// **Whose clock:** Redis's own (`TIME`), by default. Every instance then measures against
/// the same clock, so clock skew between application servers cannot hand out extra requests.
/// Tests can use the layer's [`Clock`](crate::clock::Clock) instead
/// ([`TimeSource::Caller`]).
///
/// Each tenant is one small string (`"tat:limit"`) that expires once its state has drained,
/// so idle tenants cost nothing. Requires the `redis` feature and a Tokio runtime.
///
/// **Refusals are answered locally.** When Redis refuses a tenant with a wait `w`, no request
/// of that tenant can pass anywhere before `w` has passed (GCRA's theoretical arrival time
/// only grows, and only admitted requests move it). Until then this store refuses the tenant
/// itself, with the same `Retry-After` and `X-RateLimit-*` numbers counted down on the
/// layer's clock, without asking Redis; a different limit (a plan change) asks Redis. The
/// wait is measured from when the request was sent, so the local refusal ends no later than
/// Redis's would: the status is always the one Redis would give, and the wait it reports is
/// at most one round trip shorter. At most
/// [`local_refusals`](RedisRateStore::local_refusals) tenants are remembered (default
/// 10,000).
#[derive(Clone)]
pub struct RedisRateStore {
    backend: RedisBackend,
    script: Arc<Script>,
    time: TimeSource,
    refused: Arc<Known<Refused>>,
}

/// A tenant refused by Redis: no request passes before `until`; `tat` is its theoretical
/// arrival time. Both on the layer's clock.
#[derive(Clone, Copy, Debug)]
struct Refused {
    limit: u32,
    until: Duration,
    tat: Duration,
}

impl Refused {
    /// The decision Redis would give at `now`, while it is known.
    fn at(&self, limit: u32, now: Duration) -> Option<RateDecision> {
        (self.limit == limit && now < self.until).then(|| RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            retry_after: self.until - now,
            reset: self.tat.saturating_sub(now),
        })
    }
}

impl RedisRateStore {
    /// A store on `backend`, on Redis's clock.
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            backend,
            script: Arc::new(Script::new(GCRA)),
            time: TimeSource::Redis,
            refused: Arc::new(Known::new(DEFAULT_CAPACITY)),
        }
    }

    /// For how many tenants a refusal is remembered and answered without asking Redis
    /// (default 10,000; 0 asks Redis every time).
    #[must_use]
    pub fn local_refusals(mut self, tenants: usize) -> Self {
        self.refused = Arc::new(Known::new(tenants));
        self
    }

    /// Forgets what is known of `tenant` here, so its next check asks Redis: after an
    /// operator changed its state in Redis by hand (other instances forget by themselves
    /// when the wait is over).
    pub fn forget(&self, tenant: &TenantId) {
        self.refused.forget(tenant);
    }

    /// Forgets every known refusal (for example after Redis lost its data).
    pub fn forget_all(&self) {
        self.refused.clear();
    }

    /// How many tenants' refusals are remembered now (expired ones included until replaced).
    pub fn known_refusals(&self) -> usize {
        self.refused.len()
    }

    /// The backend this store runs on.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Whose clock the limiter runs on (default: Redis's).
    #[must_use]
    pub fn time_source(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// The decision for one request of `key` at `limit` requests a minute; `now` is used
    /// with [`TimeSource::Caller`].
    pub async fn check_async(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Result<RateDecision, StoreError> {
        self.run(key, limit, now, false).await
    }

    /// [`RateStore::peek`], as an `async fn`: the state now, counting nothing.
    pub async fn peek_async(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Result<RateDecision, StoreError> {
        self.run(key, limit, now, true).await
    }

    async fn run(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
        peek: bool,
    ) -> Result<RateDecision, StoreError> {
        let redis_key = self.backend.key("rl", key.as_str(), &[]);
        let now_sent = now;
        let now = self.time.arg(now);
        let mut conn = self.backend.connection();
        let mut invocation = self.script.key(redis_key);
        let limit_arg = limit.max(1);
        invocation
            .arg(limit_arg)
            .arg(60_000_000_u64.div_ceil(u64::from(limit_arg)))
            .arg(now)
            .arg(if peek { "1" } else { "0" });
        let reply: Vec<i64> = self
            .backend
            .bounded(invocation.invoke_async(&mut conn))
            .await?;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return Err(StoreError::new(UnexpectedReply));
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let decision = RateDecision {
            allowed: allowed == 1,
            limit,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_us),
            reset: micros(reset_us),
        };
        if !decision.allowed && !peek {
            let refused = Refused {
                limit,
                until: now_sent + decision.retry_after,
                tat: now_sent + decision.reset,
            };
            self.refused.remember(key, refused, |r| r.until > now_sent);
        }
        Ok(decision)
    }
}

impl RateStore for RedisRateStore {
    type Future = Pin<Box<dyn Future<Output = Result<RateDecision, StoreError>> + Send>>;

    fn check(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        if let Some(refused) = self.refused.get(key) {
            if let Some(decision) = refused.at(limit, now) {
                crate::metrics::local_answer("rate", "refused");
                return Answer::Ready(Ok(decision));
            }
        }
        let store = self.clone();
        let key = key.clone();
        Answer::Pending(Box::pin(async move {
            store.check_async(&key, limit, now).await
        }))
    }

    fn peek(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        let store = self.clone();
        let key = key.clone();
        Answer::Pending(Box::pin(
            async move { store.peek_async(&key, limit, now).await },
        ))
    }
}

impl fmt::Debug for RedisRateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateStore")
            .field("backend", &self.backend)
            .field("time", &self.time)
            .finish()
    }
}

#[derive(Debug)]
struct UnexpectedReply;

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unexpected reply from the rate-limit script")
    }
}

impl std::error::Error for UnexpectedReply {}
