//! [`ConcurrentScansLayer`] and [`ConcurrentScans`]: at most the plan's concurrent scans.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;

use super::store::{Acquired, MemorySlotStore, Slot, SlotStore};
use crate::{
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    guard::{Finish, Policy, Rejection, Step, With},
    plan::{Plan, Plans, ScanKind},
    report,
    store::{Answer, OnStoreError},
    tenant::{Caller, Tenant, TenantId},
};

/// Applies [`ConcurrentScans`] to a service; also releases slots by id and counts them.
#[derive(Clone, Debug)]
pub struct ConcurrentScansLayer<C = MemorySlotStore> {
    policy: Occupy<C>,
}

/// How [`ConcurrentScans`] decides. Shared by every clone of the layer and its services.
#[derive(Clone, Debug)]
pub struct Occupy<C> {
    store: C,
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    plans: Arc<Plans>,
    clock: SharedClock,
    retry_after: Duration,
    lapse: Duration,
    on_store_error: OnStoreError,
    shadow: bool,
}

/// A scan creation whose slot is taken already (by a layer outside this one).
#[derive(Clone, Copy, Debug)]
struct Occupied;

impl ConcurrentScansLayer {
    /// Limits from `plans`, slots in memory on the system clock; a refused creation is told
    /// to retry after 10 s; a slot lapses after an hour.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            policy: Occupy {
                store: MemorySlotStore::new(),
                config: Arc::new(Config {
                    plans: plans.into(),
                    clock: clock::system(),
                    retry_after: Duration::from_secs(10),
                    lapse: Duration::from_secs(3600),
                    on_store_error: OnStoreError::Reject,
                    shadow: false,
                }),
            },
        }
    }
}

impl<C> ConcurrentScansLayer<C> {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn policy(&self) -> &Occupy<C> {
        &self.policy
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.policy.config)
    }

    /// Keeps slots in `store` (e.g. Redis, shared by several instances).
    pub fn with_store<C2>(self, store: C2) -> ConcurrentScansLayer<C2> {
        ConcurrentScansLayer {
            policy: Occupy {
                store,
                config: self.policy.config,
            },
        }
    }

    /// Limits from `plans`.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.config_mut().plans = plans.into();
        self
    }

    /// Reads `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// The `Retry-After` hint of a refused creation (10 s by default; at least 1 s).
    #[must_use]
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.config_mut().retry_after = hint;
        self
    }

    /// How long a slot is held at most (1 hour by default): a scan that never reports back
    /// (a crashed worker) frees its slot then.
    #[must_use]
    pub fn max_scan_duration(mut self, lapse: Duration) -> Self {
        self.config_mut().lapse = lapse;
        self
    }

    /// What happens when the store fails: 500 (the default) or the scan is let through.
    #[must_use]
    pub fn on_store_error(mut self, on_error: OnStoreError) -> Self {
        self.config_mut().on_store_error = on_error;
        self
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through. Scans within the limit still hold their slot (so running
    /// scans are counted); those beyond it run without one. For rolling out new limits on
    /// live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.config_mut().shadow = on;
        self
    }

    /// The slot store.
    pub fn store(&self) -> &C {
        &self.policy.store
    }
}

impl<C: SlotStore> ConcurrentScansLayer<C> {
    /// Frees `tenant`'s slot `slot_id` (the [`ScanSlot::id`] the handler kept with its scan):
    /// the scan finished.
    pub async fn release(&self, tenant: &TenantId, slot_id: &str) -> Result<(), StoreError> {
        let slot = Slot {
            tenant: tenant.clone(),
            id: slot_id.to_owned(),
        };
        match self.policy.store.release(&slot) {
            Answer::Ready(done) => done,
            Answer::Pending(release) => release.await,
        }
    }

    /// How many scans of `tenant` hold a slot now.
    pub async fn running(&self, tenant: &TenantId) -> Result<u32, StoreError> {
        let now = self.policy.config.clock.now();
        match self.policy.store.running(tenant, now) {
            Answer::Ready(count) => count,
            Answer::Pending(count) => count.await,
        }
    }
}

impl<C: SlotStore> crate::quota::CountRunning for ConcurrentScansLayer<C> {
    fn count<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> crate::quota::BoxFuture<'a, Result<u32, StoreError>> {
        Box::pin(self.running(tenant))
    }
}

impl<S, C: Clone> Layer<S> for ConcurrentScansLayer<C> {
    type Service = ConcurrentScans<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrentScans {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Lets a tenant's scan creation through only while fewer than its plan's concurrent scans
/// run; answers 429 `RATE_LIMITED` otherwise. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct ConcurrentScans<S, C = MemorySlotStore> {
    inner: S,
    policy: Occupy<C>,
}

impl<S, C> ConcurrentScans<S, C> {
    crate::inner_accessors!();
}

crate::guard::guarded_service!(impl<C> for ConcurrentScans<S, C>, policy = Occupy<C>);

/// The slot a scan creation holds, in the request's extensions for the handler: keep it with
/// the scan and [`release`](Self::release) it when the scan finishes (or keep its
/// [`id`](Self::id) and call [`ConcurrentScansLayer::release`]).
#[derive(Clone)]
pub struct ScanSlot {
    slot: Slot,
    release: Arc<dyn Fn(&Slot) + Send + Sync>,
}

impl ScanSlot {
    /// The slot's id.
    pub fn id(&self) -> &str {
        &self.slot.id
    }

    /// The tenant whose scan holds it.
    pub fn tenant(&self) -> &TenantId {
        &self.slot.tenant
    }

    /// Frees the slot (in the background for a remote store): the scan finished. Releasing
    /// twice is harmless.
    pub fn release(&self) {
        (self.release)(&self.slot);
    }
}

impl fmt::Debug for ScanSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanSlot")
            .field("tenant", &self.slot.tenant)
            .field("id", &self.slot.id)
            .finish()
    }
}

/// A slot held while the handler runs: kept when it answers 2xx, freed otherwise (also when
/// the request future is dropped).
pub struct Hold<C: SlotStore>(Option<Box<Held<C>>>);

struct Held<C: SlotStore> {
    store: C,
    slot: Option<Slot>,
}

impl<C: SlotStore> Drop for Held<C> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.store.release_detached(&slot);
        }
    }
}

impl<C: SlotStore> fmt::Debug for Hold<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.0.as_ref().and_then(|h| h.slot.as_ref());
        f.debug_tuple("Hold").field(&slot).finish()
    }
}

impl<C: SlotStore> Finish for Hold<C> {
    type Settle = Released<C::ReleaseFuture>;

    fn finish<B>(self, response: &mut Response<B>) -> Option<Self::Settle> {
        let mut held = self.0?;
        let slot = held.slot.take()?;
        if response.status().is_success() {
            // The scan runs: the slot is its own until released or lapsed.
            return None;
        }
        match held.store.release(&slot) {
            Answer::Ready(done) => {
                if let Err(error) = done {
                    release_failed(&error);
                }
                None
            }
            Answer::Pending(release) => Some(Released { release }),
        }
    }

    fn nothing() -> Self {
        Hold(None)
    }

    /// In shadow mode a scan still holds its slot (running scans are counted, so refusals
    /// that would happen are seen); only would-be refusals pass without one.
    fn shadowed(self) -> Self {
        self
    }
}

fn release_failed(error: &StoreError) {
    report::failure("slot store (release)", error);
    crate::metrics::store_error("slots", "release");
}

pin_project! {
    /// A release under way before the response is answered.
    pub struct Released<F> {
        #[pin]
        release: F,
    }
}

impl<F: Future<Output = Result<(), StoreError>>> Future for Released<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Err(error) = ready!(self.project().release.poll(cx)) {
            release_failed(&error);
        }
        Poll::Ready(())
    }
}

impl<C: SlotStore> Occupy<C> {
    /// What the store's answer means for the request.
    #[allow(clippy::result_large_err)] // consumed at once by the caller
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        answer: Result<Acquired, StoreError>,
        limit: u32,
    ) -> Result<Hold<C>, Rejection> {
        let config = &self.config;
        match answer {
            Ok(Acquired::Granted(slot)) => {
                let store = self.store.clone();
                let handle = ScanSlot {
                    slot: slot.clone(),
                    release: Arc::new(move |slot| store.release_detached(slot)),
                };
                let extensions = req.extensions_mut();
                extensions.insert(handle);
                extensions.insert(Occupied);
                Ok(Hold(Some(Box::new(Held {
                    store: self.store.clone(),
                    slot: Some(slot),
                }))))
            }
            Ok(Acquired::Full) => {
                let tenant = Tenant::of(req);
                let error = NatError::ScansRunning {
                    limit,
                    plan: tenant.map_or(Plan::FREE, |t| t.plan().clone()),
                    retry_after: config.retry_after.as_secs().max(1),
                };
                error.report(tenant.map(Tenant::id), "concurrent scan limit reached");
                Err(error.into())
            }
            Err(err) => {
                report::failure("slot store", &err);
                crate::metrics::store_error("slots", "acquire");
                match config.on_store_error {
                    OnStoreError::Allow => {
                        crate::metrics::fail_open("concurrency");
                        Ok(Hold(None))
                    }
                    OnStoreError::Reject => {
                        let error = NatError::Internal;
                        error.report(Tenant::of(req).map(Tenant::id), "slot store failed");
                        Err(error.into())
                    }
                }
            }
        }
    }
}

impl<C: SlotStore, B> Policy<B> for Occupy<C> {
    type Pass = Hold<C>;
    type Later = With<C::AcquireFuture, u32>;

    const LAYER: &'static str = "concurrency";

    #[inline]
    fn shadow(&self) -> bool {
        self.config.shadow
    }

    fn store_call(
        &self,
        (answer, _): &(Result<Acquired, StoreError>, u32),
    ) -> Option<(&'static str, &'static str, bool)> {
        Some(("slots", "acquire", answer.is_ok()))
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<Hold<C>, Self::Later> {
        let extensions = req.extensions();
        // Only scan creation takes a slot, and only once.
        if extensions.get::<ScanKind>().is_none() || extensions.get::<Occupied>().is_some() {
            return Step::Pass(Hold(None));
        }
        let tenant = match Caller::of(extensions) {
            Caller::Tenant(t) => t,
            Caller::Exempt => return Step::Pass(Hold(None)),
            Caller::Unknown => {
                let reason = "no tenant in the request (concurrency fails closed)";
                return Step::refused(None, NatError::Unauthorized, reason);
            }
        };
        let Some(limits) = self.config.plans.limits(tenant) else {
            let reason = "the tenant's plan is not in the plan table";
            return Step::refused(Some(tenant.id()), NatError::Internal, reason);
        };
        let limit = limits.concurrent_scans();
        let now = self.config.clock.now();
        match self
            .store
            .acquire(tenant.id(), limit, now, self.config.lapse)
        {
            Answer::Ready(answer) => Step::of(self.admit(req, answer, limit)),
            Answer::Pending(acquire) => Step::Later(With::new(acquire, limit)),
        }
    }

    fn resume(
        &self,
        (answer, limit): (Result<Acquired, StoreError>, u32),
        req: &mut Request<B>,
    ) -> Step<Hold<C>, Self::Later> {
        Step::of(self.admit(req, answer, limit))
    }
}
