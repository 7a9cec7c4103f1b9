//! Plan and feature names: [`Plan`] and [`Feature`], each a name with a display name.

use std::{fmt, hash, sync::Arc};

use serde::{Serialize, Serializer};

/// A string that is either static (the built-in plans and features, usable in `const`s) or
/// shared by reference count (names read from configuration). Cloning never copies the text.
#[derive(Clone)]
pub(crate) enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Shared(Arc::from(s))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Shared(Arc::from(s))
    }
}

/// Whether `name` can name a plan or a feature: 1 to 64 characters from `[a-z0-9_-]`. Names
/// appear in JSON bodies, logs and metric labels, so they are kept plain.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

macro_rules! named {
    ($(#[$meta:meta])* $name:ident, $example:literal, $display_example:literal) => {
        $(#[$meta])*
        #[derive(Clone)]
        // First, so that a record that holds a plan can keep it near its other hot fields.
        #[repr(C)]
        pub struct $name {
            // 1 + the index of a built-in name, 0 for the others: built-ins compare as one
            // byte.
            builtin: u8,
            name: Text,
            display: Text,
        }

        impl $name {
            #[doc = concat!("The name as configuration, JSON bodies and logs write it (e.g. `", $example, "`).")]
            pub fn name(&self) -> &str {
                self.name.as_str()
            }

            #[doc = concat!("The name as messages write it (e.g. `", $display_example, "`).")]
            pub fn display_name(&self) -> &str {
                self.display.as_str()
            }

            const fn builtin(index: u8, name: &'static str, display: &'static str) -> Self {
                Self {
                    name: Text::Static(name),
                    display: Text::Static(display),
                    builtin: index + 1,
                }
            }

            /// A name of the server's own, or a built-in one given by its text.
            fn dynamic(name: &str, display: &str) -> Self {
                let builtin = Self::BUILT_IN
                    .iter()
                    .find(|b| b.name() == name)
                    .map_or(0, |b| b.builtin);
                Self {
                    name: Text::from(name),
                    display: Text::from(display),
                    builtin,
                }
            }
        }

        /// Equal when the names are equal; the display name does not count.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                if self.builtin != 0 || other.builtin != 0 {
                    return self.builtin == other.builtin;
                }
                self.name() == other.name()
            }
        }

        impl Eq for $name {}

        impl hash::Hash for $name {
            fn hash<H: hash::Hasher>(&self, state: &mut H) {
                self.name().hash(state);
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.name(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }
    };
}

named!(
    /// A plan, by name: one of NAT's four ([`Plan::FREE`], [`Plan::PRO`], [`Plan::TEAM`],
    /// [`Plan::ENTERPRISE`]) or one of your own, defined in the [`Plans`](super::Plans) table.
    ///
    /// Key stores hand plans out by name ([`Plan::new`]); what a plan allows is looked up in
    /// the table, so a plan the table does not define is refused with 500 `INTERNAL_ERROR`
    /// (and reported), never given any limits by guess. Cheap to clone.
    Plan,
    "pro",
    "Pro"
);

named!(
    /// A plan feature a route or a scan kind can require: the built-in
    /// [`Feature::SECURITY_SCANNING`] and [`Feature::WEBHOOKS`], or one of your own defined in
    /// the [`Plans`](super::Plans) table ([`Plans::feature`](super::Plans::feature) looks it up).
    Feature,
    "security_scanning",
    "Security scanning"
);

impl Plan {
    /// The index of a built-in plan in [`Plan::BUILT_IN`].
    pub(crate) fn builtin_index(&self) -> Option<usize> {
        usize::from(self.builtin).checked_sub(1)
    }

    /// NAT's Free plan (`free`).
    pub const FREE: Plan = Plan::builtin(0, "free", "Free");
    /// NAT's Pro plan (`pro`).
    pub const PRO: Plan = Plan::builtin(1, "pro", "Pro");
    /// NAT's Team plan (`team`).
    pub const TEAM: Plan = Plan::builtin(2, "team", "Team");
    /// NAT's Enterprise plan (`enterprise`).
    pub const ENTERPRISE: Plan = Plan::builtin(3, "enterprise", "Enterprise");

    /// NAT's four plans, cheapest first.
    pub const BUILT_IN: [Plan; 4] = [Plan::FREE, Plan::PRO, Plan::TEAM, Plan::ENTERPRISE];

    /// A plan called `name` whose messages call it `display_name` (e.g. `startup`,
    /// `Startup`), to define in a [`Plans`](super::Plans) table.
    pub fn named(name: &str, display_name: &str) -> Self {
        Plan::dynamic(name, display_name)
    }

    /// The plan called `name` (as a key store or a database row names it). Its display name is
    /// the built-in one for NAT's four plans and `name` otherwise; the [`Plans`](super::Plans)
    /// table has the configured one.
    pub fn new(name: &str) -> Self {
        match Plan::BUILT_IN.into_iter().find(|p| p.name() == name) {
            Some(plan) => plan,
            None => Plan::dynamic(name, name),
        }
    }
}

impl Feature {
    /// Security scans (scan modes `security` and `full`).
    pub const SECURITY_SCANNING: Feature =
        Feature::builtin(0, "security_scanning", "Security scanning");
    /// Outgoing webhooks.
    pub const WEBHOOKS: Feature = Feature::builtin(1, "webhooks", "Webhooks");

    /// The two built-in features.
    pub const BUILT_IN: [Feature; 2] = [Feature::SECURITY_SCANNING, Feature::WEBHOOKS];

    /// A feature of your own, to define in a [`Plans`](super::Plans) table with
    /// [`PlansBuilder::feature`](super::PlansBuilder::feature). Layers only know features that
    /// their table defines.
    pub fn new(name: &str, display_name: &str) -> Self {
        Feature::dynamic(name, display_name)
    }
}
