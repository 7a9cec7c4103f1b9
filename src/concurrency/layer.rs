//! [`ConcurrentScansLayer`] and [`ConcurrentScans`]: at most the plan's concurrent scans.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::Request;
use pin_project_lite::pin_project;
use tower_layer::Layer;

use super::store::{Acquired, MemorySlotStore, Slot, SlotStore};
use crate::{
    clock::SharedClock,
    common::{Common, common_setters, tenant_limits},
    engine::{Decision, Finish, Policy, PolicyService, Rejection, Reported, StoreCall},
    error::{NatError, StoreError},
    plan::{Plan, Plans, ScanKind},
    report,
    store::{Answer, OnStoreError},
    tenant::TenantId,
};

/// Applies [`ConcurrentScans`] to a service; also releases slots by id and counts them.
#[derive(Clone, Debug)]
pub struct ConcurrentScansLayer<C = MemorySlotStore> {
    store: C,
    config: Config,
    common: Common,
}

/// How the running-scan limit behaves.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) retry_after: Duration,
    pub(crate) lapse: Duration,
    pub(crate) on_store_error: OnStoreError,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retry_after: Duration::from_secs(10),
            lapse: Duration::from_secs(3600),
            on_store_error: OnStoreError::Reject,
        }
    }
}

/// A scan creation whose slot is taken already (by a layer outside this one).
#[derive(Clone, Copy, Debug)]
struct Occupied;

impl ConcurrentScansLayer {
    /// Limits from `plans`, slots in memory on the system clock; a refused creation is told
    /// to retry after 10 s; a slot lapses after an hour.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            store: MemorySlotStore::new(),
            config: Config::default(),
            common: Common::new(plans),
        }
    }
}

impl<C> ConcurrentScansLayer<C> {
    /// The layer over `store`, with `config` and `common` (a stack's).
    pub(crate) fn from_parts(store: C, config: Config, common: Common) -> Self {
        Self {
            store,
            config,
            common,
        }
    }

    common_setters!(plans, clock, shadow);

    /// Keeps slots in `store` (e.g. Redis, shared by several instances).
    pub fn with_store<C2>(self, store: C2) -> ConcurrentScansLayer<C2> {
        ConcurrentScansLayer {
            store,
            config: self.config,
            common: self.common,
        }
    }

    /// The `Retry-After` hint of a refused creation (10 s by default; at least 1 s).
    #[must_use]
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.config.retry_after = hint;
        self
    }

    /// How long a slot is held at most (1 hour by default): a scan that never reports back
    /// (a crashed worker) frees its slot then.
    #[must_use]
    pub fn max_scan_duration(mut self, lapse: Duration) -> Self {
        self.config.lapse = lapse;
        self
    }

    /// What happens when the store fails: 500 (the default) or the scan is let through.
    #[must_use]
    pub fn on_store_error(mut self, on_error: OnStoreError) -> Self {
        self.config.on_store_error = on_error;
        self
    }

    /// The slot store.
    pub fn store(&self) -> &C {
        &self.store
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
        match self.store.release(&slot) {
            Answer::Ready(done) => done,
            Answer::Pending(release) => release.await,
        }
    }

    /// How many scans of `tenant` hold a slot now.
    pub async fn running(&self, tenant: &TenantId) -> Result<u32, StoreError> {
        let now = self.common.clock.now();
        match self.store.running(tenant, now) {
            Answer::Ready(count) => count,
            Answer::Pending(count) => count.await,
        }
    }

    /// The policy, with `common`'s plans, clock and shadow mode.
    pub(crate) fn policy(store: C, config: &Config, common: &Common) -> Reported<Occupy<C>> {
        let policy = Occupy {
            store,
            config: config.clone(),
            plans: common.plans.clone(),
            clock: common.clock.clone(),
        };
        Reported::new(policy, "concurrency", common.shadow)
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

impl<S, C: SlotStore> Layer<S> for ConcurrentScansLayer<C> {
    type Service = ConcurrentScans<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = Self::policy(self.store.clone(), &self.config, &self.common);
        PolicyService::new(inner, Arc::new(policy))
    }
}

/// Lets a tenant's scan creation through only while fewer than its plan's concurrent scans
/// run; answers 429 `RATE_LIMITED` otherwise. See the [module docs](super).
pub type ConcurrentScans<S, C = MemorySlotStore> = PolicyService<S, Reported<Occupy<C>>>;

/// How [`ConcurrentScans`] decides.
#[derive(Clone, Debug)]
pub struct Occupy<C> {
    store: C,
    config: Config,
    plans: Arc<Plans>,
    clock: SharedClock,
}

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

    fn waits(&self) -> bool {
        self.0.is_some()
    }

    fn settle(self, success: bool) -> Option<Self::Settle> {
        let mut held = self.0?;
        let slot = held.slot.take()?;
        if success {
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

/// What an acquisition is for: the tenant, its limit and its plan.
type For = (TenantId, u32, Plan);

/// An acquisition under way.
type Acquiring<F> = StoreCall<F, For>;

impl<C: SlotStore> Occupy<C> {
    /// What the store's answer means for the request.
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        answer: Result<Acquired, StoreError>,
        (tenant, limit, plan): For,
    ) -> Decision<Hold<C>, Acquiring<C::AcquireFuture>> {
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
                Decision::Pass(Hold(Some(Box::new(Held {
                    store: self.store.clone(),
                    slot: Some(slot),
                }))))
            }
            Ok(Acquired::Full) => Decision::refuse(self.full(limit, plan, &tenant)),
            Err(error) => {
                let call = ("concurrency", "slots", "acquire");
                let choice = self.config.on_store_error;
                match crate::common::store_failed(choice, call, &error, Some(&tenant)) {
                    Ok(()) => Decision::Pass(Hold(None)),
                    Err(rejection) => Decision::refuse(rejection),
                }
            }
        }
    }

    #[cold]
    fn full(&self, limit: u32, plan: Plan, tenant: &TenantId) -> Rejection {
        let error = NatError::ScansRunning {
            limit,
            plan,
            retry_after: self.config.retry_after.as_secs().max(1),
        };
        Rejection::new(error, "concurrent scan limit reached").tenant(tenant)
    }
}

impl<C: SlotStore, B> Policy<B> for Occupy<C> {
    type Pass = Hold<C>;
    type Later = Acquiring<C::AcquireFuture>;

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Decision<Hold<C>, Self::Later> {
        let extensions = req.extensions();
        // Only scan creation takes a slot, and only once.
        if extensions.get::<ScanKind>().is_none() || extensions.get::<Occupied>().is_some() {
            return Decision::Pass(Hold(None));
        }
        let (tenant, limits) = match tenant_limits(req, &self.plans) {
            Ok(Some(found)) => found,
            Ok(None) => return Decision::Pass(Hold(None)),
            Err(rejection) => return Decision::refuse(rejection),
        };
        let limit = limits.concurrent_scans();
        let context = (tenant.id().clone(), limit, limits.plan().clone());
        let now = self.clock.now();
        match self
            .store
            .acquire(&context.0, limit, now, self.config.lapse)
        {
            Answer::Ready(answer) => self.admit(req, answer, context),
            Answer::Pending(acquire) => {
                Decision::Later(StoreCall::new(acquire, context, "slots", "acquire"))
            }
        }
    }

    fn resume(
        &self,
        (answer, context): (Result<Acquired, StoreError>, For),
        req: &mut Request<B>,
    ) -> Decision<Hold<C>, Self::Later> {
        self.admit(req, answer, context)
    }
}
