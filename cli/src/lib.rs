//! `nat`, the operator's command line for a tower-nat deployment: the schema, tenants, keys
//! and plan tables, in PostgreSQL through `NAT_DATABASE_URL`.
//!
//! The commands run against any [`KeyAdmin`] store ([`execute`]), so the binary's logic is
//! tested against the in-memory store as well as a real PostgreSQL. Output is for people by
//! default and JSON with `--json`; a key is printed only by the command that issued it.
//!
//! Exit codes: 0 done; 1 the database failed (or could not be reached); 2 the command line
//! is wrong; 3 no such tenant or key; 4 refused input (an unknown plan, a malformed tenant
//! id, time or plan table); 5 the tenant exists already.

use std::{fmt::Write as _, io::Write, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tower_nat::{
    auth::{AdminError, IssuedKey, KeyAdmin, KeyInfo, Page, TenantInfo},
    clock::{parse_rfc3339, rfc3339},
    plan::{Allowance, LimitOverrides, Plan, Plans},
    tenant::{KeyId, TenantId},
};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "nat",
    version,
    about = "Tenants, keys and plan tables of a tower-nat deployment.",
    after_help = "Exit codes: 0 done, 1 the database failed, 2 bad command line, 3 no such \
                  tenant or key, 4 refused input (unknown plan, malformed id, time or plan \
                  table), 5 the tenant exists already."
)]
pub struct Cli {
    /// The database, as a PostgreSQL URL (never printed).
    #[arg(long, env = "NAT_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// The plan table the servers use (JSON); without it, NAT's four plans. Tenants on a
    /// plan it lacks are refused.
    #[arg(long, env = "NAT_PLANS", hide_env_values = true, global = true)]
    pub plans: Option<PathBuf>,
    /// JSON output, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates or updates the schema (safe to run on every deploy).
    Migrate,
    /// Tenants: their plan and limits.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Plan tables.
    #[command(subcommand)]
    Plans(PlanCommand),
}

/// Tenants.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Lists tenants, in id order.
    List(Paging),
    /// Creates a tenant.
    Create {
        /// Its id: 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'.
        id: String,
        /// Its plan.
        #[arg(long)]
        plan: String,
        /// Its own limits, as JSON: {"requests_per_minute": 5000, ...}.
        #[arg(long)]
        overrides: Option<String>,
    },
    /// Shows a tenant.
    Show {
        /// The tenant.
        id: String,
    },
    /// Changes a tenant's plan, its own limits, or both.
    Set {
        /// The tenant.
        id: String,
        /// The new plan.
        #[arg(long)]
        plan: Option<String>,
        /// Its own limits, as JSON (`{}` for none), replacing any it had.
        #[arg(long)]
        overrides: Option<String>,
    },
    /// Deletes a tenant and all its keys.
    Delete {
        /// The tenant.
        id: String,
    },
}

/// Keys.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issues a key: printed this once, never again.
    Issue {
        /// The tenant.
        tenant: String,
        /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Lists a tenant's keys (never the keys themselves), in id order.
    List {
        /// The tenant.
        tenant: String,
        /// Which page.
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows a key (never the key itself).
    Show {
        /// The key's id.
        id: String,
    },
    /// Revokes a key: every instance refuses it within a second.
    Revoke {
        /// The key's id.
        id: String,
    },
    /// Issues a new key for the same tenant; the old one works for the grace period.
    Rotate {
        /// The old key's id.
        id: String,
        /// How long the old key keeps working: seconds, or with s, m, h or d (0 by default).
        #[arg(long, default_value = "0")]
        grace: String,
    },
    /// Sets when a key stops working.
    Expire {
        /// The key's id.
        id: String,
        /// An RFC 3339 time, or `never`.
        at: String,
    },
}

/// Plan tables.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Checks a plan table and prints each plan as the servers will read it (inherited
    /// limits and features resolved).
    Check {
        /// The table (JSON).
        file: PathBuf,
    },
}

/// A page of a listing.
#[derive(Debug, Args)]
pub struct Paging {
    /// Starts after this id (a listing's `next`).
    #[arg(long)]
    pub after: Option<String>,
    /// At most this many (100 by default, 1,000 at most).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

impl Paging {
    fn page(&self) -> Page {
        Page {
            after: self.after.clone(),
            limit: self.limit,
        }
    }
}

/// Why a command failed: what the operator is told, and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The database failed, or could not be reached (1).
    Store(String),
    /// The command line lacks something it needs, e.g. the database (2, as clap's own).
    Usage(String),
    /// No such tenant or key (3).
    NotFound(String),
    /// Refused input (4).
    Refused(String),
    /// The tenant exists already (5).
    Conflict(String),
}

impl Failure {
    /// The process's exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Store(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound(_) => 3,
            Failure::Refused(_) => 4,
            Failure::Conflict(_) => 5,
        }
    }

    /// What the operator is told, control characters escaped (an id or a plan name from the
    /// command line may carry a newline or a terminal escape).
    pub fn message(&self) -> String {
        let (Failure::Store(m)
        | Failure::Usage(m)
        | Failure::NotFound(m)
        | Failure::Refused(m)
        | Failure::Conflict(m)) = self;
        m.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    /// An administration error, about `what` (a tenant or key id).
    fn of(error: AdminError, what: &str) -> Self {
        match error {
            AdminError::UnknownPlan(plan) => Failure::Refused(format!("unknown plan: {plan}")),
            AdminError::UnknownTenant => Failure::NotFound(format!("no tenant {what}")),
            AdminError::UnknownKey => Failure::NotFound(format!("no key {what}")),
            AdminError::TenantExists => Failure::Conflict(format!("tenant {what} exists already")),
            AdminError::InvalidTenantId => Failure::Refused(
                "a tenant id is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not . or ..".into(),
            ),
            AdminError::Store(error) => Failure::Store(deepest(&error)),
            other => Failure::Store(other.to_string()),
        }
    }
}

/// An error's last cause: the driver's words (which never carry the URL).
pub fn deepest(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The plan table at `path` (NAT's four plans without one).
pub fn read_plans(path: Option<&PathBuf>) -> Result<Plans, Failure> {
    let Some(path) = path else {
        return Ok(Plans::default());
    };
    let json = std::fs::read_to_string(path)
        .map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
    Plans::from_json(&json).map_err(|e| {
        let position = std::error::Error::source(&e)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        Failure::Refused(format!("{}: {e}{position}", path.display()))
    })
}

/// Runs a command on `store`, writing its output to `out`. `migrate` is the binary's (it is
/// PostgreSQL's alone).
pub async fn execute<S: KeyAdmin>(
    command: &Command,
    store: &S,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut text = String::new();
    match command {
        Command::Migrate => {}
        Command::Plans(PlanCommand::Check { file }) => {
            let plans = read_plans(Some(file))?;
            if json {
                text = to_json(&plans);
            } else {
                plans_table(&plans, &mut text);
            }
        }
        Command::Tenants(command) => tenants(command, store, json, &mut text).await?,
        Command::Keys(command) => keys(command, store, json, &mut text).await?,
    }
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Store(format!("writing the output: {e}")))
}

fn to_json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A listing as the admin API answers it.
#[derive(Serialize)]
struct Listing<T> {
    items: Vec<T>,
    next: Option<String>,
}

fn listing<T>(items: Vec<T>, page: &Page, id: impl Fn(&T) -> String) -> Listing<T> {
    let next = (items.len() == page.size())
        .then(|| items.last().map(&id))
        .flatten();
    Listing { items, next }
}

fn overrides(json: &str) -> Result<LimitOverrides, Failure> {
    serde_json::from_str(json).map_err(|e| Failure::Refused(format!("--overrides: {e}")))
}

fn time(text: &str) -> Result<Duration, Failure> {
    parse_rfc3339(text).ok_or_else(|| {
        Failure::Refused(format!(
            "{text:?} is not an RFC 3339 time in UTC (e.g. 2027-01-01T00:00:00Z)"
        ))
    })
}

/// `3600`, `90s`, `15m`, `1h`, `7d`.
fn grace(text: &str) -> Result<Duration, Failure> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| *s <= 366 * 86_400)
        .ok_or_else(|| {
            Failure::Refused(format!(
                "--grace {text:?}: seconds, or a number with s, m, h or d, at most 366 days"
            ))
        })?;
    Ok(Duration::from_secs(seconds))
}

fn plan(name: &str) -> Plan {
    Plan::new(name)
}

async fn tenants<S: KeyAdmin>(
    command: &TenantCommand,
    store: &S,
    json: bool,
    out: &mut String,
) -> Result<(), Failure> {
    let show = |info: &TenantInfo, out: &mut String| {
        if json {
            out.push_str(&to_json(info));
        } else {
            tenant_line(info, out);
        }
    };
    match command {
        TenantCommand::List(paging) => {
            let page = paging.page();
            let items = store.tenants(&page).await.map_err(|e| Failure::of(e, ""))?;
            let listed = listing(items, &page, |t| t.id.to_string());
            if json {
                out.push_str(&to_json(&listed));
            } else {
                for info in &listed.items {
                    tenant_line(info, out);
                }
                if let Some(next) = &listed.next {
                    let _ = writeln!(out, "(more: --after {next})");
                }
            }
        }
        TenantCommand::Create {
            id,
            plan: name,
            overrides: limits,
        } => {
            let limits = limits
                .as_deref()
                .map(overrides)
                .transpose()?
                .unwrap_or_default();
            let info = store
                .create_tenant(id, &plan(name), limits)
                .await
                .map_err(|e| Failure::of(e, id))?;
            show(&info, out);
        }
        TenantCommand::Show { id } => {
            let info = store.tenant(id).await.map_err(|e| Failure::of(e, id))?;
            let info = info.ok_or_else(|| Failure::of(AdminError::UnknownTenant, id))?;
            show(&info, out);
        }
        TenantCommand::Set {
            id,
            plan: name,
            overrides: limits,
        } => {
            let limits = limits.as_deref().map(overrides).transpose()?;
            if name.is_none() && limits.is_none() {
                return Err(Failure::Refused("give --plan, --overrides or both".into()));
            }
            let mut info = None;
            if let Some(name) = name {
                let changed = store.change_plan(id, &plan(name)).await;
                info = Some(changed.map_err(|e| Failure::of(e, id))?);
            }
            if let Some(limits) = limits {
                let changed = store.change_overrides(id, limits).await;
                info = Some(changed.map_err(|e| Failure::of(e, id))?);
            }
            if let Some(info) = info {
                show(&info, out);
            }
        }
        TenantCommand::Delete { id } => {
            store
                .remove_tenant(id)
                .await
                .map_err(|e| Failure::of(e, id))?;
            if json {
                out.push_str(&to_json(&serde_json::json!({ "deleted": id })));
            } else {
                let _ = writeln!(out, "deleted tenant {id} and its keys");
            }
        }
    }
    Ok(())
}

fn tenant_line(info: &TenantInfo, out: &mut String) {
    let _ = write!(
        out,
        "{}  plan {}  created {}",
        info.id,
        info.plan,
        rfc3339(info.created_at)
    );
    if !info.overrides.is_empty() {
        let limits = serde_json::to_string(&info.overrides).unwrap_or_default();
        let _ = write!(out, "  overrides {limits}");
    }
    out.push('\n');
}

/// A key as the CLI and the admin API show it.
#[derive(Serialize)]
struct KeyView<'a> {
    id: &'a KeyId,
    tenant_id: &'a TenantId,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

impl<'a> KeyView<'a> {
    fn new(tenant_id: &'a TenantId, info: &'a KeyInfo) -> Self {
        Self {
            id: &info.id,
            tenant_id,
            created_at: rfc3339(info.created_at),
            expires_at: info.expires_at.map(rfc3339),
            revoked_at: info.revoked_at.map(rfc3339),
            last_used_at: info.last_used_at.map(rfc3339),
        }
    }

    fn line(&self, out: &mut String) {
        let or = |t: &Option<String>, none: &str| t.clone().unwrap_or_else(|| none.to_owned());
        let _ = writeln!(
            out,
            "{}  tenant {}  created {}  expires {}  revoked {}  last used {}",
            self.id,
            self.tenant_id,
            self.created_at,
            or(&self.expires_at, "never"),
            or(&self.revoked_at, "no"),
            or(&self.last_used_at, "never"),
        );
    }
}

/// An issued key: the only output that carries one.
fn issued(
    key: &IssuedKey,
    tenant: &str,
    expires_at: Option<Duration>,
    json: bool,
    out: &mut String,
) {
    if json {
        out.push_str(&to_json(&serde_json::json!({
            "id": key.id,
            "tenant_id": tenant,
            "key": key.key.expose(),
            "expires_at": expires_at.map(rfc3339),
        })));
    } else {
        let _ = writeln!(out, "{}  {}", key.id, key.key.expose());
        let _ = writeln!(
            out,
            "(the key is shown this once: hand it to its owner now; keep the id to revoke it)"
        );
    }
}

async fn keys<S: KeyAdmin>(
    command: &KeyCommand,
    store: &S,
    json: bool,
    out: &mut String,
) -> Result<(), Failure> {
    match command {
        KeyCommand::Issue { tenant, expires_at } => {
            let expires_at = expires_at.as_deref().map(time).transpose()?;
            let key = store
                .issue(tenant, expires_at)
                .await
                .map_err(|e| Failure::of(e, tenant))?;
            issued(&key, tenant, expires_at, json, out);
        }
        KeyCommand::List { tenant, paging } => {
            let page = paging.page();
            let items = store
                .list_keys(tenant, &page)
                .await
                .map_err(|e| Failure::of(e, tenant))?;
            let tenant_id = TenantId::from(tenant.as_str());
            let views: Vec<KeyView<'_>> =
                items.iter().map(|k| KeyView::new(&tenant_id, k)).collect();
            let listed = listing(views, &page, |k| k.id.to_string());
            if json {
                out.push_str(&to_json(&listed));
            } else {
                for key in &listed.items {
                    key.line(out);
                }
                if let Some(next) = &listed.next {
                    let _ = writeln!(out, "(more: --after {next})");
                }
            }
        }
        KeyCommand::Show { id } => {
            let (tenant, info) = found_key(store, id).await?;
            let view = KeyView::new(&tenant, &info);
            if json {
                out.push_str(&to_json(&view));
            } else {
                view.line(out);
            }
        }
        KeyCommand::Revoke { id } => {
            let key_id = KeyId::from(id.as_str());
            store
                .revoke_key(&key_id)
                .await
                .map_err(|e| Failure::of(e, id))?;
            if json {
                out.push_str(&to_json(&serde_json::json!({ "revoked": id })));
            } else {
                let _ = writeln!(out, "revoked {id}");
            }
        }
        KeyCommand::Rotate { id, grace: text } => {
            let grace = grace(text)?;
            let (tenant, old) = found_key(store, id).await?;
            let key = store
                .rotate_key(&old.id, grace)
                .await
                .map_err(|e| Failure::of(e, id))?;
            issued(&key, tenant.as_str(), old.expires_at, json, out);
            if !json {
                let _ = writeln!(
                    out,
                    "(the old key {id} works for {} more seconds)",
                    grace.as_secs()
                );
            }
        }
        KeyCommand::Expire { id, at } => {
            let expires_at = match at.as_str() {
                "never" => None,
                at => Some(time(at)?),
            };
            let key_id = KeyId::from(id.as_str());
            store
                .change_expiry(&key_id, expires_at)
                .await
                .map_err(|e| Failure::of(e, id))?;
            let (tenant, info) = found_key(store, id).await?;
            let view = KeyView::new(&tenant, &info);
            if json {
                out.push_str(&to_json(&view));
            } else {
                view.line(out);
            }
        }
    }
    Ok(())
}

async fn found_key<S: KeyAdmin>(store: &S, id: &str) -> Result<(TenantId, KeyInfo), Failure> {
    let key_id = KeyId::from(id);
    store
        .key(&key_id)
        .await
        .map_err(|e| Failure::of(e, id))?
        .ok_or_else(|| Failure::of(AdminError::UnknownKey, id))
}

fn allowance(a: Allowance) -> String {
    match a.limit() {
        Some(n) => n.to_string(),
        None => "unlimited".into(),
    }
}

/// The table as people read it: one line per plan, features resolved.
fn plans_table(plans: &Plans, out: &mut String) {
    let rows: Vec<[String; 7]> = plans
        .iter()
        .map(|(plan, limits)| {
            let features: Vec<&str> = limits.features.iter().map(|f| f.name()).collect();
            [
                plan.name().to_owned(),
                plan.display_name().to_owned(),
                limits.requests_per_minute.to_string(),
                allowance(limits.functional_scans_per_month),
                allowance(limits.security_scans_per_month),
                limits.concurrent_scans.to_string(),
                if features.is_empty() {
                    "-".to_owned()
                } else {
                    features.join(",")
                },
            ]
        })
        .collect();
    let header = [
        "PLAN",
        "NAME",
        "REQ/MIN",
        "FUNCTIONAL/MO",
        "SECURITY/MO",
        "CONCURRENT",
        "FEATURES",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
}
