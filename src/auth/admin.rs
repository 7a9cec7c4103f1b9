//! [`KeyAdmin`]: what a key store that can be administered offers (tenants and keys), the
//! same for the in-memory store and `PgKeyStore`, for the admin API and the CLI.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use serde::Serialize;

use super::store::{IssuedKey, KeyInfo, KeyStore};
use crate::{
    error::StoreError,
    plan::{LimitOverrides, Plan, Plans},
    tenant::{KeyId, TenantId},
};

/// A tenant as an administrator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantInfo {
    /// Its identifier.
    pub id: TenantId,
    /// Its plan.
    pub plan: Plan,
    /// Its own limits, where they differ from its plan's.
    pub overrides: LimitOverrides,
    /// When it was created (time since the Unix epoch).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Duration,
}

pub(crate) fn rfc3339<S: serde::Serializer>(at: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::clock::rfc3339(*at))
}

pub(crate) fn rfc3339_or_null<S: serde::Serializer>(
    at: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

/// A page of a listing: the items after `after` (an id, in id order; `None`: from the
/// first), at most `limit` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The id the page starts after.
    pub after: Option<String>,
    /// How many items at most (at least 1; 100 when 0).
    pub limit: usize,
}

impl Page {
    /// The first `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The limit to apply: at least 1, 100 when none was given, at most 1,000.
    pub fn size(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(1_000),
        }
    }
}

/// Why an administration call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// The plan is not in the store's plan table.
    UnknownPlan(String),
    /// There is no such tenant.
    UnknownTenant,
    /// There is no such key (or, to rotate, no such live key).
    UnknownKey,
    /// A tenant with this id exists already.
    TenantExists,
    /// A tenant id must be 1 to 64 characters from `[A-Za-z0-9._-]`, not `.` or `..` (ids go
    /// into store keys, logs and URLs).
    InvalidTenantId,
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::UnknownPlan(plan) => write!(f, "unknown plan: {plan}"),
            AdminError::UnknownTenant => f.write_str("no such tenant"),
            AdminError::UnknownKey => f.write_str("no such key"),
            AdminError::TenantExists => f.write_str("the tenant exists already"),
            AdminError::InvalidTenantId => {
                f.write_str("a tenant id is 1 to 64 characters from [A-Za-z0-9._-], not . or ..")
            }
            AdminError::Store(_) => f.write_str("the key store failed"),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        AdminError::Store(error)
    }
}

/// Whether `id` may name a new tenant: 1 to 64 characters from `[A-Za-z0-9._-]`, not `.` or
/// `..`.
pub fn valid_tenant_id(id: &str) -> bool {
    // `.` and `..` would be path segments that clients and proxies normalize away.
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `plan`, as the table `plans` knows it (with its display name); an error naming it if the
/// table lacks it. Without a table, `plan` as given.
pub(crate) fn known_plan(plans: Option<&Arc<Plans>>, plan: &Plan) -> Result<Plan, AdminError> {
    match plans {
        None => Ok(plan.clone()),
        Some(plans) => plans
            .plan(plan.name())
            .cloned()
            .ok_or_else(|| AdminError::UnknownPlan(plan.name().to_owned())),
    }
}

/// A key store that can be administered: tenants (create, read, list, set plan and limits,
/// delete) and keys (issue, list, revoke, rotate, set expiry). Every change is announced to
/// the caches in front of the store ([`KeyStore::changes`]). A store given the plan table
/// (`MemoryKeyStore::plans`, `PgKeyStore::plans`) refuses a plan the table lacks
/// ([`AdminError::UnknownPlan`]) rather than create a tenant every request of which would be
/// a 500.
///
/// [`MemoryKeyStore`](super::MemoryKeyStore) and `PgKeyStore` implement it; so can a store
/// of your own, and the admin API and the CLI then serve it.
pub trait KeyAdmin: KeyStore {
    /// Creates a tenant on `plan`, with its own `overrides`: [`AdminError::TenantExists`] if
    /// there is one with this id, [`AdminError::InvalidTenantId`] for an id that is not
    /// [`valid_tenant_id`].
    fn create_tenant(
        &self,
        id: &str,
        plan: &Plan,
        overrides: LimitOverrides,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send;

    /// A tenant, if it exists.
    fn tenant(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<TenantInfo>, AdminError>> + Send;

    /// A page of the tenants, in id order.
    fn tenants(
        &self,
        page: &Page,
    ) -> impl Future<Output = Result<Vec<TenantInfo>, AdminError>> + Send;

    /// Moves a tenant to `plan`.
    fn change_plan(
        &self,
        id: &str,
        plan: &Plan,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send;

    /// Gives a tenant its own limits (replacing any it had).
    fn change_overrides(
        &self,
        id: &str,
        overrides: LimitOverrides,
    ) -> impl Future<Output = Result<TenantInfo, AdminError>> + Send;

    /// Deletes a tenant and all its keys.
    fn remove_tenant(&self, id: &str) -> impl Future<Output = Result<(), AdminError>> + Send;

    /// Issues a key for `tenant`, expiring at `expires_at` (since the Unix epoch) if given:
    /// the only time the key is seen in clear.
    fn issue(
        &self,
        tenant: &str,
        expires_at: Option<Duration>,
    ) -> impl Future<Output = Result<IssuedKey, AdminError>> + Send;

    /// A page of a tenant's keys, in id order, without their secrets.
    fn list_keys(
        &self,
        tenant: &str,
        page: &Page,
    ) -> impl Future<Output = Result<Vec<KeyInfo>, AdminError>> + Send;

    /// The tenant a key belongs to, and the key, if it exists.
    fn key(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<(TenantId, KeyInfo)>, AdminError>> + Send;

    /// Revokes a key. A store that keeps revoked keys (PostgreSQL) takes a second revocation
    /// as done, keeping the first one's time, so a script may retry; the in-memory store
    /// forgets a revoked key, and answers [`AdminError::UnknownKey`] then.
    fn revoke_key(&self, id: &KeyId) -> impl Future<Output = Result<(), AdminError>> + Send;

    /// Issues a new key for the tenant of live key `id`; the old one keeps working for
    /// `grace`.
    fn rotate_key(
        &self,
        id: &KeyId,
        grace: Duration,
    ) -> impl Future<Output = Result<IssuedKey, AdminError>> + Send;

    /// Sets when a key stops working (`None`: never).
    fn change_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<Duration>,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
}
