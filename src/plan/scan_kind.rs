//! [`ScanKind`]: what a scan-creation request asks for.

use super::Feature;

/// The kind of scan a request asks for (the body's `mode`).
///
/// [`ValidateScanRequest`](crate::scan_request::ValidateScanRequest) puts it into the request's
/// extensions; [`FeatureGate`](crate::feature_gate::FeatureGate) and
/// [`QuotaGuard`](crate::quota::QuotaGuard) read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// A functional scan (`"functional"`).
    Functional,
    /// A security scan (`"security"`): needs [`Feature::SECURITY_SCANNING`].
    Security,
    /// Both (`"full"`): needs [`Feature::SECURITY_SCANNING`] and is charged one of each.
    Full,
}

impl ScanKind {
    /// The `mode` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanKind::Functional => "functional",
            ScanKind::Security => "security",
            ScanKind::Full => "full",
        }
    }

    /// The mode named `s`, if any.
    pub fn from_mode(s: &str) -> Option<Self> {
        match s {
            "functional" => Some(ScanKind::Functional),
            "security" => Some(ScanKind::Security),
            "full" => Some(ScanKind::Full),
            _ => None,
        }
    }

    /// The plan feature this kind needs, if any.
    pub fn required_feature(self) -> Option<Feature> {
        match self {
            ScanKind::Functional => None,
            ScanKind::Security | ScanKind::Full => Some(Feature::SECURITY_SCANNING),
        }
    }

    /// Functional scans this kind is charged.
    pub fn functional_cost(self) -> u64 {
        u64::from(matches!(self, ScanKind::Functional | ScanKind::Full))
    }

    /// Security scans this kind is charged.
    pub fn security_cost(self) -> u64 {
        u64::from(matches!(self, ScanKind::Security | ScanKind::Full))
    }
}
