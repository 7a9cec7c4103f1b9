//! Who a request is: the [`Tenant`] that authentication puts into a request's extensions,
//! with its identifiers ([`TenantId`], [`KeyId`]), and [`AuthExempt`] for routes that need
//! no key.
//!
//! Any authentication layer can insert a [`Tenant`]; the layers behind it
//! ([`PlanRateLimit`](crate::rate_limit::PlanRateLimit),
//! [`FeatureGate`](crate::feature_gate::FeatureGate),
//! [`QuotaGuard`](crate::quota::QuotaGuard)) read it and fail closed without one.
//!
//! With the `axum` feature a handler takes the tenant as an extractor: `tenant: Tenant`
//! answers the 401 envelope when there is none, `tenant: Option<Tenant>` never fails (for
//! routes exempt from authentication).
//!
//! ```
//! use tower_nat::{plan::Plan, tenant::Tenant};
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(Tenant::new("acme", Plan::PRO, "key_1"));
//! let tenant = Tenant::of(&req).unwrap();
//! assert_eq!((tenant.id().as_str(), tenant.plan().name()), ("acme", "pro"));
//! ```

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use serde::{Serialize, Serializer};

use crate::{
    plan::{LimitOverrides, Plan},
    rate_limit::store::{SharedSlot, Slot},
};

macro_rules! shared_str_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `other` is this very identifier (a clone of it), not only equal.
            #[allow(dead_code, reason = "the rate limiter uses it for tenant ids only")]
            pub(crate) fn is(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

shared_str_id!(
    /// A tenant's identifier. Cheap to clone (reference counted).
    TenantId
);
shared_str_id!(
    /// An API key's identifier: safe to log, never the key itself. Cheap to clone.
    KeyId
);

/// The authenticated tenant of a request: who it is, which plan it is on, which key it used,
/// and its own limits where they differ from its plan's. It travels in the request's
/// extensions.
///
/// Cloning it is one reference-count increment: key stores keep one per key and hand out
/// clones.
#[derive(Clone, PartialEq, Eq)]
pub struct Tenant(Arc<Inner>);

// In this order, so that what a request reads (after `Arc`'s counts: its rate state, its id,
// whether it has limits of its own, which built-in plan it is on) lies in the allocation's
// first 64 bytes, most often one cache line: with 100,000 tenants it is rarely in a cache.
#[repr(C)]
struct Inner {
    /// The tenant's state in the first in-memory rate store that limited it through this
    /// record, so that its later requests reach it without a table lookup.
    rate: OnceLock<Arc<SharedSlot>>,
    id: TenantId,
    /// `None` for most tenants: those on their plan's limits.
    overrides: Option<Box<LimitOverrides>>,
    plan: Plan,
    key_id: KeyId,
}

impl Clone for Inner {
    /// The same tenant; the copy finds its rate state anew.
    fn clone(&self) -> Self {
        Self {
            rate: OnceLock::new(),
            id: self.id.clone(),
            overrides: self.overrides.clone(),
            plan: self.plan.clone(),
            key_id: self.key_id.clone(),
        }
    }
}

impl PartialEq for Inner {
    fn eq(&self, other: &Self) -> bool {
        (&self.id, &self.plan, &self.key_id, self.overrides())
            == (&other.id, &other.plan, &other.key_id, other.overrides())
    }
}

impl Inner {
    fn overrides(&self) -> &LimitOverrides {
        self.overrides.as_deref().unwrap_or(&LimitOverrides::NONE)
    }
}

impl Eq for Inner {}

impl Tenant {
    /// A tenant context, with its plan's limits.
    pub fn new(id: impl Into<TenantId>, plan: Plan, key_id: impl Into<KeyId>) -> Self {
        Self(Arc::new(Inner {
            id: id.into(),
            plan,
            key_id: key_id.into(),
            overrides: None,
            rate: OnceLock::new(),
        }))
    }

    /// The tenant's rate state in store `store`, if this record holds it.
    #[inline]
    pub(crate) fn rate_slot(&self, store: u64) -> Option<&Slot> {
        self.0
            .rate
            .get()
            .filter(|shared| shared.store == store)
            .map(|shared| &shared.slot)
    }

    /// Keeps the tenant's rate state `shared` with this record (if it holds none).
    pub(crate) fn keep_rate_slot(&self, shared: &Arc<SharedSlot>) {
        let _ = self.0.rate.set(shared.clone());
    }

    /// Gives the tenant its own limits, on top of its plan's (replacing any it had).
    pub fn set_overrides(&mut self, overrides: LimitOverrides) {
        let overrides = (!overrides.is_empty()).then(|| Box::new(overrides));
        Arc::make_mut(&mut self.0).overrides = overrides;
    }

    /// The tenant's identifier.
    pub fn id(&self) -> &TenantId {
        &self.0.id
    }

    /// The tenant's current plan.
    pub fn plan(&self) -> &Plan {
        &self.0.plan
    }

    /// The identifier of the key the request used.
    pub fn key_id(&self) -> &KeyId {
        &self.0.key_id
    }

    /// The tenant's own limits, where they differ from its plan's.
    pub fn overrides(&self) -> &LimitOverrides {
        self.0.overrides()
    }

    /// The tenant of `req`, if one was authenticated.
    pub fn of<B>(req: &http::Request<B>) -> Option<&Tenant> {
        req.extensions().get::<Tenant>()
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Tenant");
        d.field("id", &self.0.id)
            .field("plan", &self.0.plan)
            .field("key_id", &self.0.key_id);
        if let Some(overrides) = &self.0.overrides {
            d.field("overrides", overrides);
        }
        d.finish()
    }
}

/// Marks a request that authentication let through without a tenant on purpose (an exempt
/// route such as `/healthz`). [`ApiKeyAuth`](crate::auth::ApiKeyAuth) inserts it; a server's
/// own authentication can too.
///
/// Layers that need a tenant pass a request carrying `AuthExempt` through untouched; a request
/// with neither a [`Tenant`] nor `AuthExempt` is refused with 401 (they fail closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthExempt;

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
    use http::request::Parts;

    use super::Tenant;
    use crate::error::NatError;

    /// The request's tenant; without one, the 401 envelope (the same bytes as
    /// [`ApiKeyAuth`](crate::auth::ApiKeyAuth)'s).
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    impl<S: Send + Sync> FromRequestParts<S> for Tenant {
        type Rejection = NatError;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Tenant>()
                .cloned()
                .ok_or(NatError::Unauthorized)
        }
    }

    /// The request's tenant, or `None` (a route exempt from authentication).
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    impl<S: Send + Sync> OptionalFromRequestParts<S> for Tenant {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Tenant>().cloned())
        }
    }
}
