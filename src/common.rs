//! What the deciding layers share: one configuration ([`Common`]: the plan table, the clock,
//! shadow mode), the request's tenant and its limits ([`tenant_limits`]), and what a failed
//! store call means ([`store_failed`]).
//!
//! [`NatLayer`](crate::NatLayer) keeps one `Common` and hands it to every policy when it
//! wraps a service, so a setting reaches every layer whatever the order of the calls that
//! made it; a layer used alone keeps its own.

use std::sync::Arc;

use http::Request;

use crate::{
    clock::{self, SharedClock},
    engine::Rejection,
    error::{NatError, StoreError},
    plan::{Limits, Plans},
    store::OnStoreError,
    tenant::{AuthExempt, Tenant, TenantId},
};

/// The settings every deciding layer reads.
#[derive(Clone, Debug)]
pub(crate) struct Common {
    /// Each tenant's limits.
    pub(crate) plans: Arc<Plans>,
    /// Key expiry, rate limits, quota periods, slot lapses.
    pub(crate) clock: SharedClock,
    /// Decide and report, but let every request through untouched.
    pub(crate) shadow: bool,
}

impl Common {
    /// `plans`, the system clock, enforced.
    pub(crate) fn new(plans: impl Into<Arc<Plans>>) -> Self {
        Self {
            plans: plans.into(),
            clock: clock::system(),
            shadow: false,
        }
    }
}

impl Default for Common {
    fn default() -> Self {
        Self::new(Plans::default())
    }
}

/// The request's tenant and its limits (its plan's, with its own overrides); `Ok(None)` for
/// a request authentication let through without one on purpose
/// ([`AuthExempt`]). A request with neither is refused with 401 (the layers behind
/// authentication fail closed), and a tenant whose plan the table lacks with 500.
#[inline]
pub(crate) fn tenant_limits<'p, 'r: 'p, B>(
    req: &'r Request<B>,
    plans: &'p Plans,
) -> Result<Option<(&'r Tenant, Limits<'p>)>, Rejection> {
    let extensions = req.extensions();
    let Some(tenant) = extensions.get::<Tenant>() else {
        if extensions.get::<AuthExempt>().is_some() {
            return Ok(None);
        }
        return Err(Rejection::new(
            NatError::Unauthorized,
            "no tenant in the request (fails closed)",
        ));
    };
    match plans.limits(tenant) {
        Some(limits) => Ok(Some((tenant, limits))),
        None => Err(Rejection::new(
            NatError::Internal,
            "the tenant's plan is not in the plan table",
        )
        .tenant(tenant.id())),
    }
}

/// A store call that failed: reported (a sampled `ERROR` with the cause,
/// `nat_store_errors_total{store, op}`), then let through (`Ok`, counted in
/// `nat_fail_open_total{layer}`) or refused with 500, as `choice` says.
#[cold]
pub(crate) fn store_failed(
    choice: OnStoreError,
    (layer, store, op): (&'static str, &'static str, &'static str),
    error: &StoreError,
    tenant: Option<&TenantId>,
) -> Result<(), Rejection> {
    crate::report::failure(store, error);
    crate::metrics::store_error(store, op);
    match choice {
        OnStoreError::Allow => {
            crate::metrics::fail_open(layer);
            Ok(())
        }
        OnStoreError::Reject => {
            let rejection = Rejection::new(NatError::Internal, "store failed");
            Err(match tenant {
                Some(tenant) => rejection.tenant(tenant),
                None => rejection,
            })
        }
    }
}

/// The `plans`, `clock` and `shadow` setters of a layer whose builder has a `common: Common`
/// field: `common_setters!(plans, clock, shadow);` (the ones it reads).
macro_rules! common_setters {
    (plans) => {
        /// Reads each tenant's limits from `plans`.
        #[must_use]
        pub fn plans(mut self, plans: impl Into<std::sync::Arc<crate::plan::Plans>>) -> Self {
            self.common.plans = plans.into();
            self
        }
    };
    (clock) => {
        /// Reads the time from `clock` (the system clock by default).
        #[must_use]
        pub fn clock(mut self, clock: crate::clock::SharedClock) -> Self {
            self.common.clock = clock;
            self
        }
    };
    (shadow) => {
        /// Runs in shadow mode (or not): the layer decides as usual and reports what it would
        /// have refused (`nat_rejections_total{shadow="true"}` and a `DEBUG` event "would
        /// reject"), but lets every request through untouched. For rolling out new limits
        /// on live traffic.
        #[must_use]
        pub fn shadow(mut self, on: bool) -> Self {
            self.common.shadow = on;
            self
        }
    };
    ($($setter:ident),+) => {
        $(crate::common::common_setters!($setter);)+
    };
}
pub(crate) use common_setters;
