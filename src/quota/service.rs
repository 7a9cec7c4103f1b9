use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    store::{MemoryQuotaStore, Period, QuotaLimits, QuotaStore, Reservation, Reserved},
    usage::Usage,
};
use crate::{
    body::{NatBody, wrap},
    clock::{self, SharedClock},
    error::{NatError, StoreError},
    scan_request::ScanKind,
    store::{Answer, OnStoreError},
    tenant::{Caller, Plans, Tenant, TenantId},
};

struct Config {
    plans: Arc<Plans>,
    clock: SharedClock,
    on_store_error: OnStoreError,
}

/// Applies [`QuotaGuard`] to a service; also answers usage queries ([`QuotaGuardLayer::usage`]).
pub struct QuotaGuardLayer<Q = MemoryQuotaStore> {
    store: Q,
    config: Arc<Config>,
}

impl QuotaGuardLayer {
    /// Quotas from `plans`, usage in memory, calendar months on the system clock.
    pub fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self::with_store(MemoryQuotaStore::new(), plans)
    }
}

impl<Q> QuotaGuardLayer<Q> {
    /// Quotas from `plans`, usage in `store`.
    pub fn with_store(store: Q, plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            store,
            config: Arc::new(Config {
                plans: plans.into(),
                clock: clock::system(),
                on_store_error: OnStoreError::Reject,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure QuotaGuardLayer before cloning it")
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
        &self.store
    }
}

impl<Q: QuotaStore> QuotaGuardLayer<Q> {
    /// The usage snapshot of `tenant` now: everything `GET /api/v1/usage` answers.
    pub async fn usage(&self, tenant: &Tenant) -> Result<Usage, StoreError> {
        super::usage::snapshot(&self.store, &self.config.plans, &self.config.clock, tenant).await
    }
}

impl<Q: Clone> Clone for QuotaGuardLayer<Q> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

impl<Q: fmt::Debug> fmt::Debug for QuotaGuardLayer<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaGuardLayer")
            .field("store", &self.store)
            .field("on_store_error", &self.config.on_store_error)
            .finish()
    }
}

impl<S, Q: Clone> Layer<S> for QuotaGuardLayer<Q> {
    type Service = QuotaGuard<S, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaGuard {
            inner,
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

/// Reserves a scan before a scan-creation request reaches the handler, charges it when the
/// handler answers 2xx, and releases it otherwise; answers 402 `QUOTA_EXCEEDED` when the quota
/// has no room. See the [module docs](super).
pub struct QuotaGuard<S, Q = MemoryQuotaStore> {
    inner: S,
    store: Q,
    config: Arc<Config>,
}

impl<S, Q> QuotaGuard<S, Q> {
    crate::inner_accessors!();
}

impl<S: Clone, Q: Clone> Clone for QuotaGuard<S, Q> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, Q: fmt::Debug> fmt::Debug for QuotaGuard<S, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaGuard")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish()
    }
}

/// A reservation and what becomes of it if the request future is dropped: released while
/// the handler runs (an error, a panic, a client gone), settled as decided once the handler
/// answered. Disarmed when the settlement is done.
struct Held<Q: QuotaStore> {
    store: Q,
    reservation: Option<Reservation>,
    charge_on_drop: bool,
}

impl<Q: QuotaStore> Held<Q> {
    fn new(store: Q, reservation: Reservation) -> Self {
        Self {
            store,
            reservation: Some(reservation),
            charge_on_drop: false,
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

enum Verdict {
    Pass(Option<Reservation>),
    Reject(NatError),
}

fn verdict(
    config: &Config,
    tenant: &TenantId,
    period: Period,
    answer: Result<Reserved, StoreError>,
) -> Verdict {
    match answer {
        Ok(Reserved::Granted(r)) => Verdict::Pass(Some(r)),
        Ok(Reserved::Exhausted) => {
            let error = NatError::QuotaExceeded {
                resets_on: period.end,
            };
            error.report(Some(tenant), "scan quota exhausted");
            Verdict::Reject(error)
        }
        Err(err) => {
            tracing::error!(target: "tower_nat", tenant = tenant.as_str(), error = %err, "quota store failed");
            match config.on_store_error {
                OnStoreError::Allow => Verdict::Pass(None),
                OnStoreError::Reject => {
                    let error = NatError::Internal;
                    error.report(Some(tenant), "quota store failed");
                    Verdict::Reject(error)
                }
            }
        }
    }
}

impl<S, Q, ReqB, ResB> Service<Request<ReqB>> for QuotaGuard<S, Q>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    Q: QuotaStore,
{
    type Response = Response<NatBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Q, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Only scan creation is charged: polling, listing and usage pass untouched.
        let Some(kind) = req.extensions().get::<ScanKind>().copied() else {
            return ResponseFuture::pass(self.inner.call(req), &self.store, None);
        };
        let tenant = match Caller::of(req.extensions()) {
            Caller::Tenant(t) => t,
            Caller::Exempt => return ResponseFuture::pass(self.inner.call(req), &self.store, None),
            Caller::Unknown => {
                let error = NatError::Unauthorized;
                error.report(None, "no tenant in the request (quota fails closed)");
                return ResponseFuture::reject(error);
            }
        };
        let plan = self.config.plans.get(tenant.plan());
        let limits = QuotaLimits {
            functional: plan.functional_scans_per_month,
            security: plan.security_scans_per_month,
        };
        let period = self.store.period(tenant.id(), self.config.clock.now());
        match self.store.reserve(tenant.id(), kind, limits, period) {
            Answer::Ready(answer) => match verdict(&self.config, tenant.id(), period, answer) {
                Verdict::Pass(r) => ResponseFuture::pass(self.inner.call(req), &self.store, r),
                Verdict::Reject(error) => ResponseFuture::reject(error),
            },
            Answer::Pending(reserve) => {
                let id = tenant.id().clone();
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Reserve {
                        reserve,
                        pending: Some(Box::new(Pending {
                            inner,
                            req,
                            tenant: id,
                            period,
                            store: self.store.clone(),
                            config: self.config.clone(),
                        })),
                    },
                }
            }
        }
    }
}

struct Pending<S, Q, ReqB> {
    inner: S,
    req: Request<ReqB>,
    tenant: TenantId,
    period: Period,
    store: Q,
    config: Arc<Config>,
}

pin_project! {
    /// The response future of [`QuotaGuard`].
    pub struct ResponseFuture<S, Q, ReqB>
    where
        S: Service<Request<ReqB>>,
        Q: QuotaStore,
    {
        #[pin]
        state: State<S, Q, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Q, ReqB>
    where
        S: Service<Request<ReqB>>,
        Q: QuotaStore,
    {
        Reserve {
            #[pin]
            reserve: Q::ReserveFuture,
            pending: Option<Box<Pending<S, Q, ReqB>>>,
        },
        Inner {
            #[pin]
            future: S::Future,
            held: Option<Held<Q>>,
        },
        Settle {
            #[pin]
            settle: Q::SettleFuture,
            held: Option<Held<Q>>,
            result: Option<Result<S::Response, S::Error>>,
        },
        Reject { error: Option<NatError> },
    }
}

impl<S, Q, ReqB> ResponseFuture<S, Q, ReqB>
where
    S: Service<Request<ReqB>>,
    Q: QuotaStore,
{
    fn pass(future: S::Future, store: &Q, reservation: Option<Reservation>) -> Self {
        Self {
            state: State::Inner {
                future,
                held: reservation.map(|r| Held::new(store.clone(), r)),
            },
        }
    }

    fn reject(error: NatError) -> Self {
        Self {
            state: State::Reject { error: Some(error) },
        }
    }
}

impl<S, Q, ReqB, ResB> Future for ResponseFuture<S, Q, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    Q: QuotaStore,
{
    type Output = Result<Response<NatBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Reserve { reserve, pending } => {
                    let answer = ready!(reserve.poll(cx));
                    let Pending {
                        mut inner,
                        req,
                        tenant,
                        period,
                        store,
                        config,
                    } = *pending.take().expect("polled after completion");
                    match verdict(&config, &tenant, period, answer) {
                        Verdict::Pass(reservation) => State::Inner {
                            // Held before the call, so a panic in `call` releases it too.
                            held: reservation.map(|r| Held::new(store, r)),
                            future: inner.call(req),
                        },
                        Verdict::Reject(error) => State::Reject { error: Some(error) },
                    }
                }
                StateProj::Inner { future, held } => {
                    let result = ready!(future.poll(cx));
                    let Some(mut held) = held.take() else {
                        return Poll::Ready(result.map(wrap));
                    };
                    let charge = matches!(&result, Ok(r) if r.status().is_success());
                    held.charge_on_drop = charge;
                    let Some(reservation) = held.reservation.as_ref() else {
                        return Poll::Ready(result.map(wrap));
                    };
                    match held.store.settle(reservation, charge) {
                        Answer::Ready(settled) => {
                            let tenant = reservation_tenant(&held);
                            held.reservation = None;
                            report_settle(settled, tenant);
                            return Poll::Ready(result.map(wrap));
                        }
                        Answer::Pending(settle) => State::Settle {
                            settle,
                            held: Some(held),
                            result: Some(result),
                        },
                    }
                }
                StateProj::Settle {
                    settle,
                    held,
                    result,
                } => {
                    let settled = ready!(settle.poll(cx));
                    if let Some(mut held) = held.take() {
                        // Done (or failed and left to lapse): nothing more on drop.
                        let tenant = reservation_tenant(&held);
                        held.reservation = None;
                        report_settle(settled, tenant);
                    }
                    let result = result.take().expect("polled after completion");
                    return Poll::Ready(result.map(wrap));
                }
                StateProj::Reject { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Ok(error.to_response()));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

fn reservation_tenant<Q: QuotaStore>(held: &Held<Q>) -> Option<TenantId> {
    held.reservation.as_ref().map(|r| r.tenant().clone())
}

fn report_settle(settled: Result<(), StoreError>, tenant: Option<TenantId>) {
    if let Err(error) = settled {
        tracing::error!(
            target: "tower_nat",
            tenant = tenant.as_ref().map(TenantId::as_str),
            error = %error,
            "quota store could not settle a reservation; it lapses by itself"
        );
    }
}

impl<S, Q, ReqB> fmt::Debug for ResponseFuture<S, Q, ReqB>
where
    S: Service<Request<ReqB>>,
    Q: QuotaStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Reserve { .. } => "Reserve",
            State::Inner { .. } => "Inner",
            State::Settle { .. } => "Settle",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
