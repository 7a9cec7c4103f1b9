//! [`QuotaGuardLayer`] and [`QuotaGuard`]: the policy that reserves a scan, and the
//! settlement that charges or releases it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Request;
use pin_project_lite::pin_project;
use tower_layer::Layer;

use super::{
    events::{Notify, QuotaEvents},
    store::{MemoryQuotaStore, Period, QuotaLimits, QuotaStore, Reservation, Reserved},
    usage::{Usage, UsageReader},
};
use crate::{
    clock::SharedClock,
    common::{Common, common_setters, tenant_limits},
    engine::{Decision, Finish, Policy, PolicyService, Rejection, Reported, StoreCall},
    error::{NatError, StoreError},
    plan::{Plans, ScanKind},
    report,
    store::{Answer, OnStoreError},
    tenant::{Tenant, TenantId},
};

/// How quota enforcement behaves.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) on_store_error: OnStoreError,
    pub(crate) events: Option<Listener>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            on_store_error: OnStoreError::Reject,
            events: None,
        }
    }
}

/// The server's [`QuotaEvents`].
#[derive(Clone)]
pub(crate) struct Listener(Arc<dyn QuotaEvents>);

impl Listener {
    pub(crate) fn new(events: impl QuotaEvents) -> Self {
        Self(Arc::new(events))
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaEvents")
    }
}

/// Applies [`QuotaGuard`] to a service; also answers usage queries ([`QuotaGuardLayer::usage`]).
#[derive(Clone, Debug)]
pub struct QuotaGuardLayer<Q = MemoryQuotaStore> {
    store: Q,
    config: Config,
    common: Common,
}

impl QuotaGuardLayer {
    /// Quotas from `plans`, usage in memory, calendar months on the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            store: MemoryQuotaStore::new(),
            config: Config::default(),
            common: Common::new(plans),
        }
    }
}

impl<Q> QuotaGuardLayer<Q> {
    /// The layer over `store`, with `config` and `common` (a stack's).
    pub(crate) fn from_parts(store: Q, config: Config, common: Common) -> Self {
        Self {
            store,
            config,
            common,
        }
    }

    common_setters!(plans, clock, shadow);

    /// Keeps usage in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_store<Q2>(self, store: Q2) -> QuotaGuardLayer<Q2> {
        QuotaGuardLayer {
            store,
            config: self.config,
            common: self.common,
        }
    }

    /// Tells `events` when a tenant goes past 80 % or reaches 100 % of a quota, once per
    /// tenant, quota and period (see [`QuotaEvents`]).
    #[must_use]
    pub fn events(mut self, events: impl QuotaEvents) -> Self {
        self.config.events = Some(Listener::new(events));
        self
    }

    /// What to do when the store fails; by default answer 500 (never give scans away).
    #[must_use]
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.config.on_store_error = choice;
        self
    }

    /// The store.
    pub fn store(&self) -> &Q {
        &self.store
    }
}

impl<Q: QuotaStore> QuotaGuardLayer<Q> {
    /// The usage snapshot of `tenant` now: everything `GET /api/v1/usage` answers.
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        self.usage_reader().usage(tenant).await
    }

    /// A cheap, cloneable handle that reads usage snapshots, for handlers.
    pub fn usage_reader(&self) -> UsageReader {
        UsageReader::new(self.store.clone(), self.common.clone())
    }

    /// The policy, with `common`'s plans, clock and shadow mode.
    pub(crate) fn policy(store: Q, config: &Config, common: &Common) -> Reported<Reserve<Q>> {
        let policy = Reserve {
            store,
            config: config.clone(),
            plans: common.plans.clone(),
            clock: common.clock.clone(),
            count_exhausted: !common.shadow,
        };
        Reported::new(policy, "quota", common.shadow)
    }
}

impl<S, Q: QuotaStore> Layer<S> for QuotaGuardLayer<Q> {
    type Service = QuotaGuard<S, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = Self::policy(self.store.clone(), &self.config, &self.common);
        PolicyService::new(inner, Arc::new(policy))
    }
}

/// Reserves a scan before a scan-creation request reaches the handler, charges it when the
/// handler answers 2xx, and releases it otherwise; answers 402 `QUOTA_EXCEEDED` when the quota
/// has no room. See the [module docs](super).
pub type QuotaGuard<S, Q = MemoryQuotaStore> = PolicyService<S, Reported<Reserve<Q>>>;

/// How [`QuotaGuard`] decides.
#[derive(Clone, Debug)]
pub struct Reserve<Q> {
    store: Q,
    config: Config,
    plans: Arc<Plans>,
    clock: SharedClock,
    // Counts refusals in `nat_quota_exhausted_total` (not in shadow mode).
    count_exhausted: bool,
}

/// Marks a request whose scan a quota guard reserved, so a second guard on its way (a
/// per-route one inside [`NatLayer`](crate::NatLayer)'s) does not charge it again.
#[derive(Clone, Copy, Debug)]
struct Charged;

/// A reservation and what becomes of it if the request future is dropped: released while
/// the handler runs (an error, a panic, a client gone), settled as decided once the handler
/// answered. Disarmed when the settlement is done.
#[derive(Debug)]
struct Held<Q: QuotaStore> {
    store: Q,
    reservation: Option<Reservation>,
    charge_on_drop: bool,
    notify: Option<Notify>,
}

impl<Q: QuotaStore> Held<Q> {
    /// The settlement is done: reported if it failed, events sent if it charged.
    fn settled(&mut self, settled: Result<(), StoreError>) {
        let reservation = self.reservation.take();
        let charged = settled.is_ok() && self.charge_on_drop;
        report_settle(settled, reservation.as_ref());
        if let (true, Some(notify), Some(reservation)) = (charged, &self.notify, &reservation) {
            notify.charged(&self.store, reservation);
        }
    }
}

impl<Q: QuotaStore> Drop for Held<Q> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.store.settle_detached(&r, self.charge_on_drop);
        }
    }
}

/// What a passed scan creation carries to its response: the reservation to settle, if any
/// (boxed: only scan creations have one, and every other request carries a null pointer).
#[derive(Debug)]
pub struct Charge<Q: QuotaStore>(Option<Box<Held<Q>>>);

/// What a reservation is for: the tenant, the period, and where events go.
type For = (TenantId, Period, Option<Notify>);

impl<Q: QuotaStore> Reserve<Q> {
    /// What a store's answer means for the request.
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        (tenant, period, notify): For,
        answer: Result<Reserved, StoreError>,
    ) -> Decision<Charge<Q>, StoreCall<Q::ReserveFuture, For>> {
        match answer {
            Ok(Reserved::Granted(reservation)) => {
                // Marked, so no second guard on its way charges it again.
                req.extensions_mut().insert(Charged);
                Decision::Pass(Charge(Some(Box::new(Held {
                    store: self.store.clone(),
                    reservation: Some(reservation),
                    charge_on_drop: false,
                    notify,
                }))))
            }
            Ok(Reserved::Exhausted) => Decision::refuse(self.exhausted(req, &tenant, period)),
            Err(error) => {
                let call = ("quota", "quota", "reserve");
                let choice = self.config.on_store_error;
                match crate::common::store_failed(choice, call, &error, Some(&tenant)) {
                    Ok(()) => Decision::Pass(Charge(None)),
                    Err(rejection) => Decision::refuse(rejection),
                }
            }
        }
    }

    /// The 402, counted in `nat_quota_exhausted_total`.
    #[cold]
    fn exhausted<B>(&self, req: &Request<B>, tenant: &TenantId, period: Period) -> Rejection {
        if self.count_exhausted {
            if let (Some(t), Some(kind)) = (Tenant::of(req), req.extensions().get::<ScanKind>()) {
                crate::metrics::quota_exhausted(t.plan().name(), kind.as_str());
            }
        }
        let error = NatError::QuotaExceeded {
            resets_on: period.end,
        };
        Rejection::new(error, "scan quota exhausted").tenant(tenant)
    }
}

impl<Q: QuotaStore, B> Policy<B> for Reserve<Q> {
    type Pass = Charge<Q>;
    type Later = StoreCall<Q::ReserveFuture, For>;

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Decision<Charge<Q>, Self::Later> {
        let extensions = req.extensions();
        // Only scan creation is charged: polling, listing and usage pass untouched, and so
        // does a scan an outer guard reserved already.
        let Some(kind) = extensions.get::<ScanKind>().copied() else {
            return Decision::Pass(Charge(None));
        };
        if extensions.get::<Charged>().is_some() {
            return Decision::Pass(Charge(None));
        }
        let (tenant, limits) = match tenant_limits(req, &self.plans) {
            Ok(Some(found)) => found,
            Ok(None) => return Decision::Pass(Charge(None)),
            Err(rejection) => return Decision::refuse(rejection),
        };
        let limits = QuotaLimits {
            functional: limits.functional_scans(),
            security: limits.security_scans(),
        };
        let id = tenant.id().clone();
        let now = self.clock.now();
        let period = self.store.period(&id, now);
        let notify = self.config.events.as_ref().map(|events| Notify {
            events: events.0.clone(),
            limits,
            plan: tenant.plan().clone(),
            now,
        });
        match self.store.reserve(&id, kind, limits, period, now) {
            Answer::Ready(answer) => self.admit(req, (id, period, notify), answer),
            Answer::Pending(reserve) => {
                let context = (id, period, notify);
                Decision::Later(StoreCall::new(reserve, context, "quota", "reserve"))
            }
        }
    }

    fn resume(
        &self,
        (answer, context): (Result<Reserved, StoreError>, For),
        req: &mut Request<B>,
    ) -> Decision<Charge<Q>, Self::Later> {
        self.admit(req, context, answer)
    }
}

impl<Q: QuotaStore> Finish for Charge<Q> {
    type Settle = Settling<Q>;

    fn nothing() -> Self {
        Charge(None)
    }

    fn waits(&self) -> bool {
        self.0.is_some()
    }

    /// Charges the scan when the request succeeded (a 2xx answer; for gRPC, `grpc-status`
    /// 0), releases it otherwise; the settlement is awaited, so the tenant's next request
    /// sees it.
    #[inline]
    fn settle(self, success: bool) -> Option<Settling<Q>> {
        let mut held = self.0?;
        held.charge_on_drop = success;
        let reservation = held.reservation.as_ref()?;
        match held.store.settle(reservation, success) {
            Answer::Ready(settled) => {
                held.settled(settled);
                None
            }
            Answer::Pending(settle) => Some(Settling {
                settle,
                held: Some(held),
            }),
        }
    }
}

pin_project! {
    /// A settlement under way. Dropped before it finishes, the reservation is settled in the
    /// background as decided.
    pub struct Settling<Q: QuotaStore> {
        #[pin]
        settle: Q::SettleFuture,
        held: Option<Box<Held<Q>>>,
    }
}

impl<Q: QuotaStore> Future for Settling<Q> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let settled = ready!(this.settle.poll(cx));
        if let Some(mut held) = this.held.take() {
            // Done (or failed and left to lapse): nothing more on drop.
            held.settled(settled);
        }
        Poll::Ready(())
    }
}

fn report_settle(settled: Result<(), StoreError>, reservation: Option<&Reservation>) {
    if let Err(error) = settled {
        report::failure("quota store (settlement)", &error);
        crate::metrics::store_error("quota", "settle");
        tracing::debug!(
            target: "tower_nat",
            tenant = reservation.map(|r| r.tenant().as_str()),
            "a reservation could not be settled; it lapses by itself"
        );
    }
}
