//! The plan table: [`Plans`], built in code ([`PlansBuilder`]) or read from JSON
//! ([`Plans::from_json`]), and its error ([`PlansError`]).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};

use super::{Allowance, Feature, Limits, Plan, PlanLimits, name::valid_name};
use crate::tenant::Tenant;

/// The plan table: what each plan allows, and which features exist.
///
/// `Plans::default()` is NAT's table:
///
/// | | Free | Pro | Team | Enterprise |
/// |---|---|---|---|---|
/// | requests / minute | 30 | 120 | 300 | 1,000 |
/// | functional scans / month | 50 | 500 | 2,000 | unlimited |
/// | security scans / month | 0 | 100 | 500 | unlimited |
/// | security scanning | no | yes | yes | yes |
/// | webhooks | no | no | yes | yes |
/// | concurrent scans | 1 | 3 | 10 | 50 |
///
/// Plans and features of your own are defined by name, in code or in JSON; everything is
/// checked when the table is built (a plan listing a feature that no one defined, a limit of
/// 0 requests a minute, a malformed name), never when a request arrives.
///
/// ```
/// use tower_nat::plan::{Allowance, Feature, Plan, PlanLimits, Plans};
///
/// let plans = Plans::from_json(r#"{
///     "features": {"sso": "Single sign-on"},
///     "plans": {
///         "free": {"requests_per_minute": 10},
///         "startup": {"extends": "pro", "display_name": "Startup", "requests_per_minute": 60,
///                     "features": {"add": ["sso"]}}
///     }
/// }"#).unwrap();
/// let startup = plans.get(&Plan::new("startup")).unwrap();
/// assert_eq!(startup.requests_per_minute, 60);
/// assert_eq!(startup.functional_scans_per_month, Allowance::Limited(500)); // from pro
/// assert!(startup.has(plans.feature("sso").unwrap()));
/// assert!(startup.has(&Feature::SECURITY_SCANNING)); // from pro too
/// assert_eq!(plans.get(&Plan::FREE).unwrap().requests_per_minute, 10);
///
/// // The same in code:
/// let sso = Feature::new("sso", "Single sign-on");
/// let same = Plans::builder()
///     .feature(sso.clone())
///     .plan(Plan::FREE, PlanLimits { requests_per_minute: 10, ..Plans::default().get(&Plan::FREE).unwrap().clone() })
///     .plan(
///         Plan::named("startup", "Startup"),
///         PlanLimits {
///             requests_per_minute: 60,
///             features: vec![Feature::SECURITY_SCANNING, sso],
///             ..Plans::default().get(&Plan::PRO).unwrap().clone()
///         },
///     )
///     .build()
///     .unwrap();
/// assert_eq!(same, plans);
///
/// // Unknown features are refused when the table is read.
/// let error = Plans::from_json(r#"{"plans": {"pro": {"features": ["ssso"]}}}"#).unwrap_err();
/// assert_eq!(error.to_string(), "invalid plan table: plan `pro` lists the unknown feature `ssso`");
/// // So is removing a feature the plan does not have.
/// let json = r#"{"plans": {"lite": {"extends": "free", "features": {"remove": ["security_scanning"]}}}}"#;
/// assert_eq!(
///     Plans::from_json(json).unwrap_err().to_string(),
///     "invalid plan table: plan `lite` removes the feature `security_scanning`, which it does not inherit"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plans {
    plans: Vec<(Plan, PlanLimits)>,
    features: Vec<Feature>,
    // Where each of NAT's four plans sits in `plans`: found without comparing names.
    built_in: [Option<usize>; 4],
}

impl Default for Plans {
    fn default() -> Self {
        let limited = Allowance::Limited;
        let plan = |rpm, functional, security, features: &[Feature], concurrent| PlanLimits {
            requests_per_minute: rpm,
            functional_scans_per_month: functional,
            security_scans_per_month: security,
            features: features.to_vec(),
            concurrent_scans: concurrent,
        };
        let security = [Feature::SECURITY_SCANNING];
        let all = Feature::BUILT_IN;
        Self {
            plans: vec![
                (Plan::FREE, plan(30, limited(50), limited(0), &[], 1)),
                (
                    Plan::PRO,
                    plan(120, limited(500), limited(100), &security, 3),
                ),
                (
                    Plan::TEAM,
                    plan(300, limited(2_000), limited(500), &all, 10),
                ),
                (
                    Plan::ENTERPRISE,
                    plan(1_000, Allowance::Unlimited, Allowance::Unlimited, &all, 50),
                ),
            ],
            features: Feature::BUILT_IN.to_vec(),
            built_in: [Some(0), Some(1), Some(2), Some(3)],
        }
    }
}

impl Plans {
    /// A builder that starts from NAT's table.
    pub fn builder() -> PlansBuilder {
        PlansBuilder {
            plans: Plans::default(),
        }
    }

    /// Reads a table from JSON: `{"features": {NAME: DISPLAY_NAME, ...}, "plans": {NAME:
    /// {...}, ...}}`, both members optional.
    ///
    /// - A plan of NAT's four keeps every field the JSON leaves out, so
    ///   `{"plans": {"free": {"requests_per_minute": 10}}}` changes one number.
    /// - A new plan either `extends` another (and changes what it lists) or gives
    ///   `requests_per_minute`, `functional_scans_per_month` and `security_scans_per_month`;
    ///   `features` defaults to none and `concurrent_scans` to 1.
    /// - Fields: `display_name`, `requests_per_minute` (at least 1),
    ///   `functional_scans_per_month` and `security_scans_per_month` (a number or
    ///   `"unlimited"`), `features`, `concurrent_scans`.
    /// - `features` is a list of names, which replaces the features the plan extends (or
    ///   redefines), or `{"add": [...], "remove": [...]}`, which changes them: "startup
    ///   extends pro and adds exports" is `{"extends": "pro", "features": {"add":
    ///   ["exports"]}}`, and keeps security scanning. Removing a feature the plan does not
    ///   inherit is an error.
    /// - Names are 1 to 64 characters from `[a-z0-9_-]`. Unknown fields, unknown features and
    ///   unknown `extends` are errors.
    pub fn from_json(json: &str) -> Result<Self, PlansError> {
        let doc: Doc = serde_json::from_str(json).map_err(PlansError::json)?;
        let mut builder = Plans::builder();
        for (name, display) in doc.features {
            builder = builder.feature(Feature::new(&name, &display));
        }
        let mut pending: Vec<(String, PartialPlan)> = doc.plans.into_iter().collect();
        // New plans may extend each other: resolve them in as many passes as it takes.
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for (name, partial) in pending {
                let base_name = partial.extends.clone().unwrap_or_else(|| name.clone());
                let base = builder
                    .plans
                    .plans
                    .iter()
                    .find(|(p, _)| p.name() == base_name)
                    .cloned();
                match base {
                    Some((plan, limits)) => {
                        let plan = if partial.extends.is_some() {
                            Plan::new(&name)
                        } else {
                            plan
                        };
                        builder = partial.apply(builder, plan, Some(limits), &name)?;
                    }
                    None if partial.extends.is_some() => waiting.push((name, partial)),
                    None => builder = partial.apply(builder, Plan::new(&name), None, &name)?,
                }
            }
            if waiting.len() == before {
                let (name, partial) = &waiting[0];
                return Err(PlansError::new(format!(
                    "plan `{name}` extends the unknown plan `{}`",
                    partial.extends.as_deref().unwrap_or_default()
                )));
            }
            pending = waiting;
        }
        builder.build()
    }

    /// What `plan` allows, if the table defines it.
    pub fn get(&self, plan: &Plan) -> Option<&PlanLimits> {
        self.find(plan).map(|(_, l)| l)
    }

    /// The entry of `plan`: NAT's four by their index, others by name.
    #[inline]
    fn find(&self, plan: &Plan) -> Option<&(Plan, PlanLimits)> {
        match plan.builtin_index() {
            Some(i) => self.built_in[i].map(|at| &self.plans[at]),
            None => self.entry(plan.name()),
        }
    }

    /// The plan called `name`, with its configured display name.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.entry(name).map(|(plan, _)| plan)
    }

    /// The feature called `name`, if the table defines it.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name() == name)
    }

    /// The limits that apply to `tenant`: its plan's, with its overrides on top. `None` when
    /// the table does not define the tenant's plan.
    #[inline]
    pub fn limits<'a>(&'a self, tenant: &'a Tenant) -> Option<Limits<'a>> {
        self.find(tenant.plan())
            .map(|(plan, limits)| Limits::new(plan, limits, tenant.overrides()))
    }

    /// Every plan, in table order (NAT's four first).
    pub fn iter(&self) -> impl Iterator<Item = (&Plan, &PlanLimits)> {
        self.plans.iter().map(|(p, l)| (p, l))
    }

    /// Every defined feature (the two built-in ones first).
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    fn entry(&self, name: &str) -> Option<&(Plan, PlanLimits)> {
        self.plans.iter().find(|(p, _)| p.name() == name)
    }
}

/// Builds a [`Plans`] table in code, starting from NAT's. Everything is checked by
/// [`build`](Self::build).
#[derive(Clone, Debug)]
#[must_use]
pub struct PlansBuilder {
    plans: Plans,
}

impl PlansBuilder {
    /// Defines a feature (or changes a defined feature's display name).
    pub fn feature(mut self, feature: Feature) -> Self {
        match self.plans.features.iter_mut().find(|f| **f == feature) {
            Some(existing) => *existing = feature,
            None => self.plans.features.push(feature),
        }
        self
    }

    /// Defines a plan, or replaces what a defined plan allows (and its display name).
    pub fn plan(mut self, plan: Plan, limits: PlanLimits) -> Self {
        let table = &mut self.plans;
        match table.plans.iter().position(|(p, _)| *p == plan) {
            Some(at) => table.plans[at] = (plan, limits),
            None => {
                if let Some(i) = plan.builtin_index() {
                    table.built_in[i] = Some(table.plans.len());
                }
                table.plans.push((plan, limits));
            }
        }
        self
    }

    /// The table, if every name is well formed, every limit allows at least one request a
    /// minute, and every feature a plan lists is defined.
    pub fn build(mut self) -> Result<Plans, PlansError> {
        for feature in &self.plans.features {
            if !valid_name(feature.name()) {
                return Err(PlansError::new(format!(
                    "`{}` is not a valid feature name (1 to 64 characters from [a-z0-9_-])",
                    feature.name()
                )));
            }
        }
        for (plan, limits) in &mut self.plans.plans {
            if !valid_name(plan.name()) {
                return Err(PlansError::new(format!(
                    "`{}` is not a valid plan name (1 to 64 characters from [a-z0-9_-])",
                    plan.name()
                )));
            }
            if limits.requests_per_minute == 0 {
                return Err(PlansError::new(format!(
                    "plan `{plan}`: requests_per_minute must be at least 1"
                )));
            }
            for feature in &mut limits.features {
                // Plans carry the table's own feature values, display names included.
                match self.plans.features.iter().find(|f| *f == feature) {
                    Some(defined) => *feature = defined.clone(),
                    None => {
                        return Err(PlansError::new(format!(
                            "plan `{plan}` lists the unknown feature `{feature}`"
                        )));
                    }
                }
            }
        }
        Ok(self.plans)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    features: BTreeMap<String, String>,
    #[serde(default)]
    plans: BTreeMap<String, PartialPlan>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialPlan {
    extends: Option<String>,
    display_name: Option<String>,
    requests_per_minute: Option<u32>,
    functional_scans_per_month: Option<Allowance>,
    security_scans_per_month: Option<Allowance>,
    /// A list (the plan's features) or `{"add": [...], "remove": [...]}` (changes to the
    /// features it extends or redefines).
    features: Option<serde_json::Value>,
    concurrent_scans: Option<u32>,
}

/// What a plan's `features` says.
enum FeatureChange {
    /// These, replacing the inherited ones.
    Replace(Vec<String>),
    /// The inherited ones, with these added and removed.
    Edit {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

impl FeatureChange {
    fn read(value: serde_json::Value, plan: &str) -> Result<Self, PlansError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Edit {
            #[serde(default)]
            add: Vec<String>,
            #[serde(default)]
            remove: Vec<String>,
        }
        let wrong = |e: serde_json::Error| {
            PlansError::new(format!(
                "plan `{plan}`: `features` is a list of names, or {{\"add\": [...], \"remove\": [...]}} ({e})"
            ))
        };
        if value.is_array() {
            return serde_json::from_value(value)
                .map(Self::Replace)
                .map_err(wrong);
        }
        let edit: Edit = serde_json::from_value(value).map_err(wrong)?;
        Ok(Self::Edit {
            add: edit.add,
            remove: edit.remove,
        })
    }
}

impl PartialPlan {
    /// Adds the plan `name` to `builder`: `base`'s limits (if any) with this plan's fields on
    /// top.
    fn apply(
        self,
        builder: PlansBuilder,
        mut plan: Plan,
        base: Option<PlanLimits>,
        name: &str,
    ) -> Result<PlansBuilder, PlansError> {
        let missing = |field: &str| {
            PlansError::new(format!(
                "the new plan `{name}` needs `{field}` (or `extends`)"
            ))
        };
        let limits = match base {
            Some(mut limits) => {
                if let Some(n) = self.requests_per_minute {
                    limits.requests_per_minute = n;
                }
                if let Some(a) = self.functional_scans_per_month {
                    limits.functional_scans_per_month = a;
                }
                if let Some(a) = self.security_scans_per_month {
                    limits.security_scans_per_month = a;
                }
                if let Some(n) = self.concurrent_scans {
                    limits.concurrent_scans = n;
                }
                limits
            }
            None => PlanLimits {
                requests_per_minute: self
                    .requests_per_minute
                    .ok_or_else(|| missing("requests_per_minute"))?,
                functional_scans_per_month: self
                    .functional_scans_per_month
                    .ok_or_else(|| missing("functional_scans_per_month"))?,
                security_scans_per_month: self
                    .security_scans_per_month
                    .ok_or_else(|| missing("security_scans_per_month"))?,
                features: Vec::new(),
                concurrent_scans: self.concurrent_scans.unwrap_or(1),
            },
        };
        let mut limits = limits;
        let feature = |f: &String| {
            builder.plans.feature(f).cloned().ok_or_else(|| {
                PlansError::new(format!("plan `{name}` lists the unknown feature `{f}`"))
            })
        };
        match self
            .features
            .map(|v| FeatureChange::read(v, name))
            .transpose()?
        {
            None => {}
            Some(FeatureChange::Replace(names)) => {
                limits.features = names.iter().map(feature).collect::<Result<_, _>>()?;
            }
            Some(FeatureChange::Edit { add, remove }) => {
                for f in &remove {
                    let gone = feature(f)?;
                    let before = limits.features.len();
                    limits.features.retain(|had| *had != gone);
                    if limits.features.len() == before {
                        return Err(PlansError::new(format!(
                            "plan `{name}` removes the feature `{f}`, which it does not inherit"
                        )));
                    }
                }
                for f in &add {
                    let added = feature(f)?;
                    if !limits.features.contains(&added) {
                        limits.features.push(added);
                    }
                }
            }
        }
        if let Some(display) = self.display_name {
            plan = Plan::named(plan.name(), &display);
        }
        Ok(builder.plan(plan, limits))
    }
}

impl Serialize for Plans {
    /// The table as [`Plans::from_json`] reads it, every field written out.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Features<'a>(&'a [Feature]);
        impl Serialize for Features<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                for f in self.0.iter().filter(|f| !Feature::BUILT_IN.contains(f)) {
                    map.serialize_entry(f.name(), f.display_name())?;
                }
                map.end()
            }
        }
        #[derive(Serialize)]
        struct Entry<'a> {
            display_name: &'a str,
            #[serde(flatten)]
            limits: &'a PlanLimits,
        }
        struct Entries<'a>(&'a [(Plan, PlanLimits)]);
        impl Serialize for Entries<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (plan, limits) in self.0 {
                    let entry = Entry {
                        display_name: plan.display_name(),
                        limits,
                    };
                    map.serialize_entry(plan.name(), &entry)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("features", &Features(&self.features))?;
        map.serialize_entry("plans", &Entries(&self.plans))?;
        map.end()
    }
}

/// Why a plan table was refused: its JSON is malformed, or a name, limit or reference in it
/// is not valid. The JSON parser's own error, with its line and column, is the
/// [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct PlansError {
    message: String,
    source: Option<serde_json::Error>,
}

impl PlansError {
    fn new(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }

    pub(crate) fn unknown_feature(name: &str) -> Self {
        Self::new(format!("unknown feature `{name}`"))
    }

    fn json(error: serde_json::Error) -> Self {
        Self {
            message: "the JSON does not describe a plan table".to_owned(),
            source: Some(error),
        }
    }
}

impl fmt::Display for PlansError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plan table: {}", self.message)
    }
}

impl std::error::Error for PlansError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}
