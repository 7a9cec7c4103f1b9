//! [`LocalFallback`]: rate limiting that goes on locally while a shared store fails.

use std::{
    fmt,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;

use super::{
    gcra::RateDecision,
    store::{MemoryRateStore, RateStore},
};
use crate::{error::StoreError, store::Answer, tenant::TenantId};

/// How long the fallback answers locally before one request asks the shared store again.
pub const DEFAULT_RETRY_EVERY: Duration = Duration::from_secs(1);

/// A rate store that enforces each tenant's share of its limit locally while its shared store
/// (Redis) fails: the third choice beside letting requests through and refusing them
/// ([`OnStoreError`](crate::store::OnStoreError)).
///
/// - **The share:** the plan's limit divided by the number of instances, rounded down, at
///   least 1. With `N` instances the whole fleet admits at most about the plan's limit while
///   the shared store is down. The headers are those of the local limit
///   (`X-RateLimit-Limit` is the share). A fleet that scales sets the count as it changes
///   ([`set_instances`](LocalFallback::set_instances)).
/// - **Switching:** a check that fails is answered locally, and for the next
///   [`retry_every`](LocalFallback::retry_every) (default 1 s) every check is answered
///   locally without trying the shared store, so no request waits for its timeout. Then one
///   request asks the shared store again; as soon as one succeeds, the shared store answers
///   every request again, from its own state.
/// - **What is exact:** while the shared store answers, exactly what it says. During an
///   outage each instance counts alone, so the fleet's total depends on how requests are
///   spread; when it comes back the shared store's state is the one it had (what was
///   admitted locally is not added to it).
///
/// Every local answer counts in `nat_store_local_answers_total{why="fallback"}`, and every
/// failed check in `nat_store_errors_total`.
///
/// ```
/// # #[cfg(feature = "redis")]
/// # async fn f() -> Result<(), tower_nat::StoreError> {
/// use std::num::NonZeroU32;
/// use tower_nat::{
///     plan::Plans,
///     rate_limit::{LocalFallback, PlanRateLimitLayer, RedisRateStore},
///     store::redis::RedisBackend,
/// };
///
/// let redis = RedisRateStore::new(RedisBackend::open("redis://127.0.0.1:6379/")?);
/// // Four instances: each admits a quarter of a plan's limit while Redis is down.
/// let store = LocalFallback::new(redis, NonZeroU32::new(4).unwrap());
/// let layer = PlanRateLimitLayer::new(Plans::default()).with_store(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalFallback<S> {
    shared: S,
    local: MemoryRateStore,
    state: Arc<State>,
}

struct State {
    instances: AtomicU32,
    retry_every: u64,
    /// Nanoseconds on the layer's clock until which checks are answered locally; 0 while the
    /// shared store answers.
    local_until: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<S: RateStore> LocalFallback<S> {
    /// Falls back from `shared` to a local share of each limit: the limit divided by
    /// `instances`.
    pub fn new(shared: S, instances: NonZeroU32) -> Self {
        Self {
            shared,
            local: MemoryRateStore::new(),
            state: Arc::new(State {
                instances: AtomicU32::new(instances.get()),
                retry_every: nanos(DEFAULT_RETRY_EVERY),
                local_until: AtomicU64::new(0),
            }),
        }
    }

    /// How long checks are answered locally after a failure before the shared store is asked
    /// again (default 1 s).
    #[must_use]
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.state = Arc::new(State {
            instances: AtomicU32::new(self.state.instances.load(Ordering::Relaxed)),
            retry_every: nanos(every).max(1),
            local_until: AtomicU64::new(0),
        });
        self
    }

    /// The shared store.
    pub fn shared(&self) -> &S {
        &self.shared
    }

    /// Whether checks are answered locally now (the shared store failed less than
    /// [`retry_every`](Self::retry_every) ago, or has not answered since).
    pub fn is_local(&self) -> bool {
        self.state.local_until.load(Ordering::Acquire) != 0
    }

    /// Each instance's share of `limit`.
    pub fn share(&self, limit: u32) -> u32 {
        (limit / self.state.instances.load(Ordering::Relaxed)).max(1)
    }

    /// Sets the number of instances (for a fleet that scales): the next local answers use
    /// the new share. Clones share the setting.
    pub fn set_instances(&self, instances: NonZeroU32) {
        self.state
            .instances
            .store(instances.get(), Ordering::Relaxed);
    }
}

impl State {
    /// Whether the shared store should be asked at `now`: it answers, or it is time for one
    /// request to try it again (that request is the only one to).
    fn ask_shared(&self, now: u64) -> bool {
        let until = self.local_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        let next = now.saturating_add(self.retry_every);
        self.local_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn failed(&self, now: u64) {
        self.local_until.store(
            now.saturating_add(self.retry_every).max(1),
            Ordering::Release,
        );
    }

    fn answered(&self) {
        if self.local_until.load(Ordering::Relaxed) != 0 {
            self.local_until.store(0, Ordering::Release);
            tracing::info!(target: "tower_nat", "the shared rate-limit store answers again");
        }
    }
}

impl<S: RateStore> LocalFallback<S> {
    fn local(&self, key: &TenantId, limit: u32, now: Duration, peek: bool) -> RateDecision {
        crate::metrics::local_answer("rate", "fallback");
        let share = self.share(limit);
        if peek {
            self.local.peek_now(key, share, now)
        } else {
            self.local.check_now(key, share, now)
        }
    }

    fn after(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
        peek: bool,
        answer: Result<RateDecision, StoreError>,
    ) -> Result<RateDecision, StoreError> {
        match answer {
            Ok(decision) => {
                self.state.answered();
                Ok(decision)
            }
            Err(error) => {
                if !self.is_local() {
                    tracing::warn!(
                        target: "tower_nat",
                        error = %crate::report::chain(&error),
                        "the shared rate-limit store failed; limiting locally"
                    );
                }
                crate::metrics::store_error("rate", if peek { "peek" } else { "check" });
                self.state.failed(nanos(now));
                Ok(self.local(key, limit, now, peek))
            }
        }
    }

    fn run(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
        peek: bool,
    ) -> Answer<RateDecision, FallbackFuture<S>> {
        if !self.state.ask_shared(nanos(now)) {
            return Answer::Ready(Ok(self.local(key, limit, now, peek)));
        }
        let answer = if peek {
            self.shared.peek(key, limit, now)
        } else {
            self.shared.check(key, limit, now)
        };
        match answer {
            Answer::Ready(answer) => Answer::Ready(self.after(key, limit, now, peek, answer)),
            Answer::Pending(future) => Answer::Pending(FallbackFuture {
                future,
                then: Some((self.clone(), key.clone(), limit, now, peek)),
            }),
        }
    }
}

pin_project! {
    /// A check of the shared store that falls back to the local share if it fails.
    pub struct FallbackFuture<S: RateStore> {
        #[pin]
        future: S::Future,
        then: Option<(LocalFallback<S>, TenantId, u32, Duration, bool)>,
    }
}

impl<S: RateStore> Future for FallbackFuture<S> {
    type Output = Result<RateDecision, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.future.poll(cx));
        let Some((store, key, limit, now, peek)) = this.then.take() else {
            return Poll::Ready(answer);
        };
        Poll::Ready(store.after(&key, limit, now, peek, answer))
    }
}

impl<S: RateStore> RateStore for LocalFallback<S> {
    type Future = FallbackFuture<S>;

    #[inline]
    fn check(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        self.run(key, limit, now, false)
    }

    fn peek(
        &self,
        key: &TenantId,
        limit: u32,
        now: Duration,
    ) -> Answer<RateDecision, Self::Future> {
        self.run(key, limit, now, true)
    }
}

impl<S: fmt::Debug> fmt::Debug for LocalFallback<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFallback")
            .field("shared", &self.shared)
            .field("instances", &self.state.instances.load(Ordering::Relaxed))
            .field("retry_every", &Duration::from_nanos(self.state.retry_every))
            .field(
                "local",
                &(self.state.local_until.load(Ordering::Relaxed) != 0),
            )
            .finish_non_exhaustive()
    }
}
