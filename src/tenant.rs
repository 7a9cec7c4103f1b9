//! The tenant context ([`Tenant`]) that authentication puts into a request's extensions, the
//! [`Plan`]s, and the plan table ([`Plans`]) with the NAT defaults.
//!
//! Any authentication layer can insert a [`Tenant`]; the layers behind it
//! ([`PlanRateLimit`](crate::rate_limit::PlanRateLimit),
//! [`FeatureGate`](crate::feature_gate::FeatureGate),
//! [`QuotaGuard`](crate::quota::QuotaGuard)) read it and fail closed without one.
//!
//! ```
//! use tower_nat::tenant::{Plan, Plans, Quota, Tenant};
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(Tenant::new("acme", Plan::Pro, "key_1"));
//!
//! let plans = Plans::from_json(r#"{"free": {"requests_per_minute": 10}}"#).unwrap();
//! assert_eq!(plans.get(Plan::Free).requests_per_minute, 10);
//! assert_eq!(plans.get(Plan::Free).functional_scans_per_month, Quota::Limited(50));
//! assert_eq!(plans.get(Plan::Enterprise).security_scans_per_month, Quota::Unlimited);
//! ```

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A tenant's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// The free plan.
    Free,
    /// The Pro plan.
    Pro,
    /// The Team plan.
    Team,
    /// The Enterprise plan.
    Enterprise,
}

impl Plan {
    /// Every plan, cheapest first.
    pub const ALL: [Plan; 4] = [Plan::Free, Plan::Pro, Plan::Team, Plan::Enterprise];

    /// The lowercase name used in JSON (`free`, `pro`, `team`, `enterprise`).
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Team => "team",
            Plan::Enterprise => "enterprise",
        }
    }

    /// The display name used in messages (`Free`, `Pro`, `Team`, `Enterprise`).
    pub fn display_name(self) -> &'static str {
        match self {
            Plan::Free => "Free",
            Plan::Pro => "Pro",
            Plan::Team => "Team",
            Plan::Enterprise => "Enterprise",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = UnknownPlan;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(UnknownPlan)
    }
}

/// The error of parsing a [`Plan`] from an unknown name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownPlan;

impl fmt::Display for UnknownPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown plan (expected free, pro, team or enterprise)")
    }
}

impl std::error::Error for UnknownPlan {}

/// A plan feature that a route or a scan kind can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// Security scans (scan modes `security` and `full`).
    SecurityScanning,
    /// Outgoing webhooks.
    Webhooks,
}

impl Feature {
    /// The snake-case name used in the 403 envelope's `feature` member.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::SecurityScanning => "security_scanning",
            Feature::Webhooks => "webhooks",
        }
    }

    /// The name used at the start of the 403 message.
    pub fn display_name(self) -> &'static str {
        match self {
            Feature::SecurityScanning => "Security scanning",
            Feature::Webhooks => "Webhooks",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A monthly scan allowance: a number of scans, or no limit.
///
/// In JSON it is a non-negative integer or the string `"unlimited"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quota {
    /// At most this many scans a period (0: none at all).
    Limited(u64),
    /// No limit.
    Unlimited,
}

impl Quota {
    /// The limit, or `None` for unlimited.
    pub fn limit(self) -> Option<u64> {
        match self {
            Quota::Limited(n) => Some(n),
            Quota::Unlimited => None,
        }
    }
}

impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Quota::Limited(n) => serializer.serialize_u64(*n),
            Quota::Unlimited => serializer.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Quota;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or \"unlimited\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quota, E> {
                Ok(Quota::Limited(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quota, E> {
                if v == "unlimited" {
                    Ok(Quota::Unlimited)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What one plan allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanLimits {
    /// Requests a minute (at least 1).
    pub requests_per_minute: u32,
    /// Functional scans a quota period.
    pub functional_scans_per_month: Quota,
    /// Security scans a quota period.
    pub security_scans_per_month: Quota,
    /// Whether security scans (`security`, `full`) are allowed at all.
    pub security_scanning: bool,
    /// Whether outgoing webhooks are allowed.
    pub webhooks: bool,
    /// Scans that may run at once.
    pub concurrent_scans: u32,
}

impl PlanLimits {
    /// Whether this plan includes `feature`.
    pub fn has(&self, feature: Feature) -> bool {
        match feature {
            Feature::SecurityScanning => self.security_scanning,
            Feature::Webhooks => self.webhooks,
        }
    }

    /// The NAT defaults for `plan` (see the crate's SPEC, section 3).
    pub fn default_for(plan: Plan) -> Self {
        let (rpm, functional, security, security_scanning, webhooks, concurrent) = match plan {
            Plan::Free => (30, Quota::Limited(50), Quota::Limited(0), false, false, 1),
            Plan::Pro => (
                120,
                Quota::Limited(500),
                Quota::Limited(100),
                true,
                false,
                3,
            ),
            Plan::Team => (
                300,
                Quota::Limited(2_000),
                Quota::Limited(500),
                true,
                true,
                10,
            ),
            Plan::Enterprise => (1_000, Quota::Unlimited, Quota::Unlimited, true, true, 50),
        };
        Self {
            requests_per_minute: rpm,
            functional_scans_per_month: functional,
            security_scans_per_month: security,
            security_scanning,
            webhooks,
            concurrent_scans: concurrent,
        }
    }
}

/// The plan table: one [`PlanLimits`] per [`Plan`]. `Default` gives the NAT defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plans {
    limits: [PlanLimits; 4],
}

impl Default for Plans {
    fn default() -> Self {
        Self {
            limits: Plan::ALL.map(PlanLimits::default_for),
        }
    }
}

impl Plans {
    /// The limits of `plan`.
    pub fn get(&self, plan: Plan) -> &PlanLimits {
        &self.limits[plan.index()]
    }

    /// Replaces the limits of `plan`.
    ///
    /// # Panics
    /// If `limits.requests_per_minute` is 0.
    #[must_use]
    pub fn with(mut self, plan: Plan, limits: PlanLimits) -> Self {
        assert!(
            limits.requests_per_minute > 0,
            "requests_per_minute must be at least 1"
        );
        self.limits[plan.index()] = limits;
        self
    }

    /// Reads a plan table from JSON. Plans and fields that are absent keep their defaults, so
    /// `{"free": {"requests_per_minute": 10}}` changes one number. Unknown plans or fields and
    /// a `requests_per_minute` of 0 are errors.
    pub fn from_json(json: &str) -> Result<Self, PlansError> {
        serde_json::from_str(json).map_err(|e| PlansError(e.to_string()))
    }
}

impl Serialize for Plans {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(4))?;
        for plan in Plan::ALL {
            map.serialize_entry(plan.as_str(), self.get(plan))?;
        }
        map.end()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    requests_per_minute: Option<u32>,
    functional_scans_per_month: Option<Quota>,
    security_scans_per_month: Option<Quota>,
    security_scanning: Option<bool>,
    webhooks: Option<bool>,
    concurrent_scans: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialPlans {
    free: Option<PartialLimits>,
    pro: Option<PartialLimits>,
    team: Option<PartialLimits>,
    enterprise: Option<PartialLimits>,
}

impl<'de> Deserialize<'de> for Plans {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = PartialPlans::deserialize(deserializer)?;
        let mut plans = Plans::default();
        let overrides = [raw.free, raw.pro, raw.team, raw.enterprise];
        for (plan, partial) in Plan::ALL.into_iter().zip(overrides) {
            let Some(p) = partial else { continue };
            let limits = &mut plans.limits[plan.index()];
            if let Some(rpm) = p.requests_per_minute {
                if rpm == 0 {
                    return Err(de::Error::custom(format!(
                        "{plan}: requests_per_minute must be at least 1"
                    )));
                }
                limits.requests_per_minute = rpm;
            }
            if let Some(q) = p.functional_scans_per_month {
                limits.functional_scans_per_month = q;
            }
            if let Some(q) = p.security_scans_per_month {
                limits.security_scans_per_month = q;
            }
            if let Some(b) = p.security_scanning {
                limits.security_scanning = b;
            }
            if let Some(b) = p.webhooks {
                limits.webhooks = b;
            }
            if let Some(n) = p.concurrent_scans {
                limits.concurrent_scans = n;
            }
        }
        Ok(plans)
    }
}

/// The error of [`Plans::from_json`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlansError(String);

impl fmt::Display for PlansError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plan table: {}", self.0)
    }
}

impl std::error::Error for PlansError {}

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

/// The authenticated tenant of a request: who it is, which plan it is on, and which key it
/// used. It travels in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    id: TenantId,
    plan: Plan,
    key_id: KeyId,
}

impl Tenant {
    /// A tenant context.
    pub fn new(id: impl Into<TenantId>, plan: Plan, key_id: impl Into<KeyId>) -> Self {
        Self {
            id: id.into(),
            plan,
            key_id: key_id.into(),
        }
    }

    /// The tenant's identifier.
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    /// The tenant's current plan.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The identifier of the key the request used.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The tenant of `req`, if one was authenticated.
    pub fn of<B>(req: &http::Request<B>) -> Option<&Tenant> {
        req.extensions().get::<Tenant>()
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

/// What a tenant-scoped layer finds in a request's extensions.
pub(crate) enum Caller<'a> {
    Tenant(&'a Tenant),
    Exempt,
    Unknown,
}

impl<'a> Caller<'a> {
    pub(crate) fn of(extensions: &'a http::Extensions) -> Self {
        match extensions.get::<Tenant>() {
            Some(t) => Caller::Tenant(t),
            None if extensions.get::<AuthExempt>().is_some() => Caller::Exempt,
            None => Caller::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_plans_page() {
        let plans = Plans::default();
        let rpm: Vec<u32> = Plan::ALL
            .iter()
            .map(|p| plans.get(*p).requests_per_minute)
            .collect();
        assert_eq!(rpm, [30, 120, 300, 1000]);
        assert!(!plans.get(Plan::Free).has(Feature::SecurityScanning));
        assert!(plans.get(Plan::Pro).has(Feature::SecurityScanning));
        assert!(!plans.get(Plan::Pro).has(Feature::Webhooks));
        assert!(plans.get(Plan::Team).has(Feature::Webhooks));
        assert_eq!(plans.get(Plan::Team).concurrent_scans, 10);
    }

    #[test]
    fn json_overrides_and_round_trips() {
        let plans = Plans::from_json(
            r#"{"pro": {"security_scans_per_month": "unlimited", "concurrent_scans": 4}}"#,
        )
        .unwrap();
        assert_eq!(
            plans.get(Plan::Pro).security_scans_per_month,
            Quota::Unlimited
        );
        assert_eq!(plans.get(Plan::Pro).concurrent_scans, 4);
        assert_eq!(plans.get(Plan::Pro).requests_per_minute, 120);
        let json = serde_json::to_string(&plans).unwrap();
        assert_eq!(Plans::from_json(&json).unwrap(), plans);
    }

    #[test]
    fn json_errors() {
        for bad in [
            r#"{"gold": {}}"#,
            r#"{"free": {"rpm": 3}}"#,
            r#"{"free": {"requests_per_minute": 0}}"#,
            r#"{"free": {"functional_scans_per_month": -1}}"#,
            r#"{"free": {"functional_scans_per_month": "lots"}}"#,
            "[]",
        ] {
            assert!(Plans::from_json(bad).is_err(), "{bad}");
        }
    }
}
