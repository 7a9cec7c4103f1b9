//! What a plan allows ([`PlanLimits`]), per-tenant overrides ([`LimitOverrides`]) and the two
//! combined for one request ([`Limits`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::{Feature, Plan};

/// A monthly scan allowance: a number of scans, or no limit.
///
/// In JSON it is a non-negative integer or the string `"unlimited"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allowance {
    /// At most this many scans a period (0: none at all).
    Limited(u64),
    /// No limit.
    Unlimited,
}

impl Allowance {
    /// The limit, or `None` for unlimited.
    pub fn limit(self) -> Option<u64> {
        match self {
            Allowance::Limited(n) => Some(n),
            Allowance::Unlimited => None,
        }
    }
}

impl Serialize for Allowance {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Allowance::Limited(n) => serializer.serialize_u64(*n),
            Allowance::Unlimited => serializer.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for Allowance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Allowance;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or \"unlimited\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Allowance, E> {
                Ok(Allowance::Limited(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Allowance, E> {
                if v == "unlimited" {
                    Ok(Allowance::Unlimited)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What one plan allows: requests a minute, monthly scan allowances, features, and scans that
/// may run at once. The field names are the plan table's JSON names.
///
/// ```
/// use tower_nat::plan::{Allowance, Feature, PlanLimits};
///
/// let startup = PlanLimits {
///     requests_per_minute: 60,
///     functional_scans_per_month: Allowance::Limited(200),
///     security_scans_per_month: Allowance::Limited(20),
///     features: vec![Feature::SECURITY_SCANNING],
///     concurrent_scans: 2,
/// };
/// assert!(startup.has(&Feature::SECURITY_SCANNING));
/// assert!(!startup.has(&Feature::WEBHOOKS));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanLimits {
    /// Requests a minute (at least 1; a table with 0 is refused when it is built).
    pub requests_per_minute: u32,
    /// Functional scans a quota period.
    pub functional_scans_per_month: Allowance,
    /// Security scans a quota period.
    pub security_scans_per_month: Allowance,
    /// The plan's features.
    pub features: Vec<Feature>,
    /// Scans that may run at once.
    pub concurrent_scans: u32,
}

impl PlanLimits {
    /// Whether the plan includes `feature`.
    pub fn has(&self, feature: &Feature) -> bool {
        self.features.contains(feature)
    }
}

/// One tenant's own limits, where they differ from its plan's: an enterprise contract at
/// 5,000 requests a minute, a customer granted more scans this year. Unset fields follow the
/// plan. A key store carries them with the tenant ([`Tenant::set_overrides`]), and every
/// layer, header and usage snapshot honours them.
///
/// In JSON: `{"requests_per_minute": 5000, "functional_scans_per_month": "unlimited"}`.
///
/// [`Tenant::set_overrides`]: crate::tenant::Tenant::set_overrides
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Requests a minute (at least 1: 0 counts as 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Functional scans a month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functional_scans_per_month: Option<Allowance>,
    /// Security scans a month (the plan must still include security scanning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_scans_per_month: Option<Allowance>,
    /// Scans that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_scans: Option<u32>,
}

impl LimitOverrides {
    /// Nothing overridden (the default).
    pub(crate) const NONE: Self = Self {
        requests_per_minute: None,
        functional_scans_per_month: None,
        security_scans_per_month: None,
        concurrent_scans: None,
    };

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::NONE
    }
}

/// The limits that apply to one tenant: its plan's, with its own overrides on top.
/// [`Plans::limits`](super::Plans::limits) makes it; it borrows, so it costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    plan: &'a Plan,
    base: &'a PlanLimits,
    overrides: &'a LimitOverrides,
}

impl<'a> Limits<'a> {
    pub(crate) fn new(plan: &'a Plan, base: &'a PlanLimits, overrides: &'a LimitOverrides) -> Self {
        Self {
            plan,
            base,
            overrides,
        }
    }

    /// The plan, with its configured display name.
    pub fn plan(&self) -> &'a Plan {
        self.plan
    }

    /// Requests a minute.
    #[inline]
    pub fn requests_per_minute(&self) -> u32 {
        self.overrides
            .requests_per_minute
            .unwrap_or(self.base.requests_per_minute)
            .max(1)
    }

    /// The monthly allowance for functional scans.
    pub fn functional_scans(&self) -> Allowance {
        self.overrides
            .functional_scans_per_month
            .unwrap_or(self.base.functional_scans_per_month)
    }

    /// The monthly allowance for security scans.
    pub fn security_scans(&self) -> Allowance {
        self.overrides
            .security_scans_per_month
            .unwrap_or(self.base.security_scans_per_month)
    }

    /// Whether the plan includes `feature`.
    pub fn has(&self, feature: &Feature) -> bool {
        self.base.has(feature)
    }

    /// Scans that may run at once.
    pub fn concurrent_scans(&self) -> u32 {
        self.overrides
            .concurrent_scans
            .unwrap_or(self.base.concurrent_scans)
    }
}
