//! The plan catalogue: [`Plans`] (what each [`Plan`] allows, which [`Feature`]s exist), the
//! scan kinds that spend allowances ([`ScanKind`], [`Allowance`]), and per-tenant
//! [`LimitOverrides`].
//!
//! NAT's four plans are the default table; plans and features of your own are defined by
//! name, in code ([`PlansBuilder`]) or in JSON ([`Plans::from_json`]). Every layer reads the
//! limits of a request's tenant through [`Plans::limits`]: its plan's, with the tenant's own
//! overrides on top.
//!
//! ```
//! use tower_nat::{plan::{LimitOverrides, Plan, Plans}, tenant::Tenant};
//!
//! let plans = Plans::default();
//! let mut acme = Tenant::new("acme", Plan::ENTERPRISE, "key_1");
//! acme.set_overrides(LimitOverrides {
//!     requests_per_minute: Some(5_000), // the contract's number
//!     ..LimitOverrides::default()
//! });
//! let limits = plans.limits(&acme).unwrap();
//! assert_eq!(limits.requests_per_minute(), 5_000);
//! assert_eq!(limits.concurrent_scans(), 50); // the plan's
//! assert!(plans.limits(&Tenant::new("x", Plan::new("gold"), "key_2")).is_none());
//! ```

mod limits;
mod name;
mod scan_kind;
mod table;

pub use limits::{Allowance, LimitOverrides, Limits, PlanLimits};
#[cfg(feature = "admin")]
pub(crate) use name::valid_name;
pub use name::{Feature, Plan};
pub use scan_kind::ScanKind;
pub use table::{Plans, PlansBuilder, PlansError};
