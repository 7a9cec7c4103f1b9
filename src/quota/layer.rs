//! [`QuotaGuardLayer`] and [`QuotaGuard`]: the policy that reserves a scan, and the
//! settlement that charges or releases it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;

use super::{
    events::{Notify, QuotaEvents},
    store::{MemoryQuotaStore, Period, QuotaLimits, QuotaStore, Reservation, Reserved},
    usage::{Usage, UsageReader},
};
use crate::{
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    guard::{Finish, Policy, Rejection, Step, With},
    plan::{Plans, ScanKind},
    report,
    store::{Answer, OnStoreError},
    tenant::{Caller, Tenant, TenantId},
};

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) plans: Arc<Plans>,
    pub(super) clock: SharedClock,
    on_store_error: OnStoreError,
    shadow: bool,
    events: Option<Listener>,
}

/// The server's [`QuotaEvents`].
#[derive(Clone)]
struct Listener(Arc<dyn QuotaEvents>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaEvents")
    }
}

/// Applies [`QuotaGuard`] to a service; also answers usage queries ([`QuotaGuardLayer::usage`]).
#[derive(Clone, Debug)]
pub struct QuotaGuardLayer<Q = MemoryQuotaStore> {
    policy: Reserve<Q>,
}

/// How [`QuotaGuard`] decides. Shared by every clone of the layer and its services.
#[derive(Clone, Debug)]
pub struct Reserve<Q> {
    store: Q,
    config: Arc<Config>,
}

impl QuotaGuardLayer {
    /// Quotas from `plans`, usage in memory, calendar months on the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            policy: Reserve {
                store: MemoryQuotaStore::new(),
                config: Arc::new(Config {
                    plans: plans.into(),
                    clock: clock::system(),
                    on_store_error: OnStoreError::Reject,
                    shadow: false,
                    events: None,
                }),
            },
        }
    }
}

impl<Q> QuotaGuardLayer<Q> {
    /// What this layer decides with (for the stack, which decides in one service).
    #[inline]
    pub(crate) fn policy(&self) -> &Reserve<Q> {
        &self.policy
    }

    /// Keeps usage in `store` (e.g. Redis, shared by several instances).
    #[must_use]
    pub fn with_store<Q2>(self, store: Q2) -> QuotaGuardLayer<Q2> {
        QuotaGuardLayer {
            policy: Reserve {
                store,
                config: self.policy.config,
            },
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.policy.config)
    }

    /// Tells `events` when a tenant goes past 80 % or reaches 100 % of a quota, once per
    /// tenant, quota and period (see [`QuotaEvents`]).
    #[must_use]
    pub fn events(mut self, events: impl QuotaEvents) -> Self {
        self.config_mut().events = Some(Listener(Arc::new(events)));
        self
    }

    /// Runs in shadow mode (or not): the layer decides as usual and reports what it would have
    /// refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would reject"), but
    /// lets every request through untouched. For rolling out new limits on live traffic.
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.config_mut().shadow = on;
        self
    }

    /// Reads each tenant's quotas from `plans`.
    #[must_use]
    pub fn plans(mut self, plans: impl Into<Arc<Plans>>) -> Self {
        self.config_mut().plans = plans.into();
        self
    }

    /// Takes the current time (and so the period) from `clock`.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// What to do when the store fails; by default answer 500 (never give scans away).
    #[must_use]
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.config_mut().on_store_error = choice;
        self
    }

    /// The store.
    pub fn store(&self) -> &Q {
        &self.policy.store
    }
}

impl<Q: QuotaStore> QuotaGuardLayer<Q> {
    /// The usage snapshot of `tenant` now: everything `GET /api/v1/usage` answers.
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        self.usage_reader().usage(tenant).await
    }

    /// A cheap, cloneable handle that reads usage snapshots, for handlers.
    pub fn usage_reader(&self) -> UsageReader {
        UsageReader::new(self.policy.store.clone(), self.policy.config.clone())
    }
}

impl<S, Q: Clone> Layer<S> for QuotaGuardLayer<Q> {
    type Service = QuotaGuard<S, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaGuard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Reserves a scan before a scan-creation request reaches the handler, charges it when the
/// handler answers 2xx, and releases it otherwise; answers 402 `QUOTA_EXCEEDED` when the quota
/// has no room. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct QuotaGuard<S, Q = MemoryQuotaStore> {
    inner: S,
    policy: Reserve<Q>,
}

impl<S, Q> QuotaGuard<S, Q> {
    crate::inner_accessors!();
}

crate::guard::guarded_service!(impl<Q> for QuotaGuard<S, Q>, policy = Reserve<Q>);

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

impl Config {
    /// What a store's answer means for the request.
    #[allow(clippy::result_large_err)] // consumed at once by the caller
    fn admit<Q: QuotaStore>(
        &self,
        store: &Q,
        (tenant, period, notify): (&TenantId, Period, Option<Notify>),
        answer: Result<Reserved, StoreError>,
    ) -> Result<Charge<Q>, Rejection> {
        match answer {
            Ok(Reserved::Granted(reservation)) => Ok(Charge(Some(Box::new(Held {
                store: store.clone(),
                reservation: Some(reservation),
                charge_on_drop: false,
                notify,
            })))),
            Ok(Reserved::Exhausted) => {
                let error = NatError::QuotaExceeded {
                    resets_on: period.end,
                };
                error.report(Some(tenant), "scan quota exhausted");
                Err(error.into())
            }
            Err(err) => {
                report::failure("quota store", &err);
                crate::metrics::store_error("quota", "reserve");
                match self.on_store_error {
                    OnStoreError::Allow => {
                        crate::metrics::fail_open("quota");
                        Ok(Charge(None))
                    }
                    OnStoreError::Reject => {
                        let error = NatError::Internal;
                        error.report(Some(tenant), "quota store failed");
                        Err(error.into())
                    }
                }
            }
        }
    }
}

/// Marks a reserved scan in `req`, so no second guard charges it.
fn mark<Q: QuotaStore, B>(
    req: &mut Request<B>,
    decided: Result<Charge<Q>, Rejection>,
    shadow: bool,
) -> Result<Charge<Q>, Rejection> {
    match &decided {
        Ok(Charge(Some(_))) => {
            req.extensions_mut().insert(Charged);
        }
        Err(rejection)
            if !shadow && matches!(rejection.error(), NatError::QuotaExceeded { .. }) =>
        {
            let extensions = req.extensions();
            if let (Some(t), Some(kind)) = (Tenant::of(req), extensions.get::<ScanKind>()) {
                crate::metrics::quota_exhausted(t.plan().name(), kind.as_str());
            }
        }
        _ => {}
    }
    decided
}

impl<Q: QuotaStore, B> Policy<B> for Reserve<Q> {
    type Pass = Charge<Q>;
    type Later = With<Q::ReserveFuture, (TenantId, Period, Option<Notify>)>;

    const LAYER: &'static str = "quota";

    #[inline]
    fn shadow(&self) -> bool {
        self.config.shadow
    }

    fn store_call(
        &self,
        (answer, _): &(
            Result<Reserved, StoreError>,
            (TenantId, Period, Option<Notify>),
        ),
    ) -> Option<(&'static str, &'static str, bool)> {
        Some(("quota", "reserve", answer.is_ok()))
    }

    #[inline]
    fn decide(&self, req: &mut Request<B>) -> Step<Charge<Q>, Self::Later> {
        let extensions = req.extensions();
        // Only scan creation is charged: polling, listing and usage pass untouched, and so
        // does a scan an outer guard reserved already.
        let Some(kind) = extensions.get::<ScanKind>().copied() else {
            return Step::Pass(Charge(None));
        };
        if extensions.get::<Charged>().is_some() {
            return Step::Pass(Charge(None));
        }
        let tenant = match Caller::of(extensions) {
            Caller::Tenant(t) => t,
            Caller::Exempt => return Step::Pass(Charge(None)),
            Caller::Unknown => {
                let reason = "no tenant in the request (quota fails closed)";
                return Step::refused(None, NatError::Unauthorized, reason);
            }
        };
        let Some(limits) = self.config.plans.limits(tenant) else {
            let reason = "the tenant's plan is not in the plan table";
            return Step::refused(Some(tenant.id()), NatError::Internal, reason);
        };
        let limits = QuotaLimits {
            functional: limits.functional_scans(),
            security: limits.security_scans(),
        };
        let id = tenant.id().clone();
        let now = self.config.clock.now();
        let period = self.store.period(&id, now);
        let notify = self.config.events.as_ref().map(|events| Notify {
            events: events.0.clone(),
            limits,
            plan: tenant.plan().clone(),
            now,
        });
        match self.store.reserve(&id, kind, limits, period, now) {
            Answer::Ready(answer) => {
                let decided = self
                    .config
                    .admit(&self.store, (&id, period, notify), answer);
                Step::of(mark(req, decided, self.config.shadow))
            }
            Answer::Pending(reserve) => Step::Later(With::new(reserve, (id, period, notify))),
        }
    }

    fn resume(
        &self,
        (answer, (tenant, period, notify)): (
            Result<Reserved, StoreError>,
            (TenantId, Period, Option<Notify>),
        ),
        req: &mut Request<B>,
    ) -> Step<Charge<Q>, Self::Later> {
        let decided = self
            .config
            .admit(&self.store, (&tenant, period, notify), answer);
        Step::of(mark(req, decided, self.config.shadow))
    }
}

impl<Q: QuotaStore> Finish for Charge<Q> {
    type Settle = Settling<Q>;

    fn nothing() -> Self {
        Charge(None)
    }

    /// Charges the scan when the handler answered 2xx, releases it otherwise; the
    /// settlement is awaited, so the tenant's next request sees it.
    #[inline]
    fn finish<B>(self, response: &mut Response<B>) -> Option<Settling<Q>> {
        let mut held = self.0?;
        let charge = response.status().is_success();
        held.charge_on_drop = charge;
        let reservation = held.reservation.as_ref()?;
        match held.store.settle(reservation, charge) {
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
