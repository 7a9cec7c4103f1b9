//! The `nat` command line: every command against the in-memory store (its exact output and
//! exit codes), then the binary itself against a real PostgreSQL, as an operator runs it.

#![allow(unreachable_pub, missing_docs)]

#[path = "../../tests/it/common/pg_server.rs"]
#[allow(dead_code)]
mod pg_server;

use std::{process::Command as Process, sync::Arc};

use clap::Parser;
use nat_cli::{Cli, Failure, execute};
use tower_nat::{
    auth::MemoryKeyStore,
    clock::{FakeClock, UtcDate},
    plan::Plans,
};

/// Runs `nat ARGS` against `store`: the output, or the failure.
async fn nat(store: &MemoryKeyStore, args: &str) -> Result<String, Failure> {
    let cli = Cli::try_parse_from(std::iter::once("nat").chain(args.split(' '))).unwrap();
    let mut out = Vec::new();
    execute(&cli.command, store, cli.json, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn store() -> (MemoryKeyStore, FakeClock) {
    let clock = FakeClock::at_date(UtcDate::new(2026, 3, 1).unwrap());
    let store = MemoryKeyStore::new()
        .clock(Arc::new(clock.clone()))
        .plans(Plans::default());
    (store, clock)
}

#[tokio::test]
async fn tenants_for_people_and_for_scripts() {
    let (store, _) = store();
    assert_eq!(
        nat(&store, "tenants create acme --plan pro").await.unwrap(),
        "acme  plan pro  created 2026-03-01T00:00:00Z\n"
    );
    assert_eq!(
        nat(
            &store,
            "--json tenants create beta --plan free --overrides {\"requests_per_minute\":5}"
        )
        .await
        .unwrap(),
        "{\n  \"id\": \"beta\",\n  \"plan\": \"free\",\n  \"overrides\": {\n    \"requests_per_minute\": 5\n  },\n  \"created_at\": \"2026-03-01T00:00:00Z\"\n}\n"
    );
    assert_eq!(
        nat(&store, "tenants list").await.unwrap(),
        "acme  plan pro  created 2026-03-01T00:00:00Z\n\
         beta  plan free  created 2026-03-01T00:00:00Z  overrides {\"requests_per_minute\":5}\n"
    );
    assert_eq!(
        nat(&store, "tenants list --limit 1").await.unwrap(),
        "acme  plan pro  created 2026-03-01T00:00:00Z\n(more: --after acme)\n"
    );
    let page: serde_json::Value = serde_json::from_str(
        &nat(&store, "tenants list --json --after acme")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page["items"][0]["id"], "beta");
    assert_eq!(page["next"], serde_json::Value::Null);
    assert_eq!(
        nat(&store, "tenants set acme --plan team --overrides {}")
            .await
            .unwrap(),
        "acme  plan team  created 2026-03-01T00:00:00Z\n"
    );
    assert_eq!(
        nat(&store, "tenants show acme").await.unwrap(),
        "acme  plan team  created 2026-03-01T00:00:00Z\n"
    );
    assert_eq!(
        nat(&store, "tenants delete beta").await.unwrap(),
        "deleted tenant beta and its keys\n"
    );

    // Refusals, each with its exit code, and nothing changed.
    let refused = [
        ("tenants create gamma --plan gold", 4, "unknown plan: gold"),
        (
            "tenants create acme --plan pro",
            5,
            "tenant acme exists already",
        ),
        (
            "tenants create a{b} --plan pro",
            4,
            "a tenant id is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not . or ..",
        ),
        (
            "tenants create gamma --plan pro --overrides {\"rpm\":1}",
            4,
            "--overrides: unknown field `rpm`, expected one of `requests_per_minute`, `functional_scans_per_month`, `security_scans_per_month`, `concurrent_scans` at line 1 column 6",
        ),
        ("tenants show beta", 3, "no tenant beta"),
        ("tenants set acme --plan gold", 4, "unknown plan: gold"),
        ("tenants set acme", 4, "give --plan, --overrides or both"),
        ("tenants delete beta", 3, "no tenant beta"),
    ];
    for (args, code, message) in refused {
        let failure = nat(&store, args).await.unwrap_err();
        assert_eq!(
            (failure.code(), failure.message().as_str()),
            (code, message),
            "{args}"
        );
    }
    // What the operator typed comes back with its control characters escaped: an id
    // cannot forge a line of output or send a terminal escape.
    let failure = Failure::NotFound("no key a\nnat: done\u{1b}[2J".into());
    assert_eq!(failure.message(), "no key a\\nnat: done\\u{1b}[2J");
    assert_eq!(
        nat(&store, "tenants list").await.unwrap(),
        "acme  plan team  created 2026-03-01T00:00:00Z\n"
    );
}

#[tokio::test]
async fn keys_are_printed_once_by_the_command_that_issued_them() {
    let (store, clock) = store();
    nat(&store, "tenants create acme --plan pro").await.unwrap();
    let out = nat(&store, "keys issue acme").await.unwrap();
    let mut lines = out.lines();
    let first: Vec<&str> = lines.next().unwrap().split("  ").collect();
    let (id, key) = (first[0], first[1]);
    assert!(
        id.starts_with("key_") && key.starts_with("nat_pk_"),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some("(the key is shown this once: hand it to its owner now; keep the id to revoke it)")
    );
    let line = format!(
        "{id}  tenant acme  created 2026-03-01T00:00:00Z  expires never  revoked no  last used never\n"
    );
    assert_eq!(nat(&store, "keys list acme").await.unwrap(), line);
    assert_eq!(nat(&store, &format!("keys show {id}")).await.unwrap(), line);
    let json = nat(&store, &format!("--json keys show {id}"))
        .await
        .unwrap();
    assert_eq!(
        json,
        format!(
            "{{\n  \"id\": \"{id}\",\n  \"tenant_id\": \"acme\",\n  \"created_at\": \"2026-03-01T00:00:00Z\",\n  \"expires_at\": null,\n  \"revoked_at\": null,\n  \"last_used_at\": null\n}}\n"
        )
    );
    assert!(!json.contains(key));

    // Expiry, set and cleared.
    let out = nat(&store, &format!("keys expire {id} 2026-06-01T00:00:00Z"))
        .await
        .unwrap();
    assert!(out.contains("expires 2026-06-01T00:00:00Z"), "{out}");
    let out = nat(&store, &format!("keys expire {id} never"))
        .await
        .unwrap();
    assert!(out.contains("expires never"), "{out}");

    // Rotation: the new key printed once, the old one working for the grace.
    clock.advance(std::time::Duration::from_secs(10));
    let out = nat(&store, &format!("--json keys rotate {id} --grace 1h"))
        .await
        .unwrap();
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["tenant_id"], "acme");
    assert!(rotated["key"].as_str().unwrap().starts_with("nat_pk_"));
    let old = nat(&store, &format!("keys show {id}")).await.unwrap();
    assert!(old.contains("expires 2026-03-01T01:00:10Z"), "{old}");

    // Revocation.
    assert_eq!(
        nat(&store, &format!("keys revoke {id}")).await.unwrap(),
        format!("revoked {id}\n")
    );
    let refused = [
        (format!("keys revoke {id}"), 3, format!("no key {id}")),
        (
            "keys issue nobody".to_owned(),
            3,
            "no tenant nobody".to_owned(),
        ),
        (
            "keys issue acme --expires-at tomorrow".to_owned(),
            4,
            "\"tomorrow\" is not an RFC 3339 time in UTC (e.g. 2027-01-01T00:00:00Z)".to_owned(),
        ),
        (
            format!("keys rotate {} --grace 1y", rotated["id"].as_str().unwrap()),
            4,
            "--grace \"1y\": seconds, or a number with s, m, h or d, at most 366 days".to_owned(),
        ),
        (
            "keys list nobody".to_owned(),
            3,
            "no tenant nobody".to_owned(),
        ),
    ];
    for (args, code, message) in refused {
        let failure = nat(&store, &args).await.unwrap_err();
        assert_eq!(
            (failure.code(), failure.message().as_str()),
            (code, message.as_str()),
            "{args}"
        );
    }
}

#[tokio::test]
async fn plan_tables_are_checked_and_printed_resolved() {
    let dir = std::env::temp_dir().join(format!("nat-cli-plans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("plans.json");
    std::fs::write(
        &good,
        r#"{"features": {"exports": "Exports"},
            "plans": {"startup": {"extends": "pro", "display_name": "Startup",
                                  "features": {"add": ["exports"]}}}}"#,
    )
    .unwrap();
    let (store, _) = store();
    let out = nat(&store, &format!("plans check {}", good.display()))
        .await
        .unwrap();
    assert_eq!(
        out,
        "PLAN        NAME        REQ/MIN  FUNCTIONAL/MO  SECURITY/MO  CONCURRENT  FEATURES\n\
         free        Free        30       50             0            1           -\n\
         pro         Pro         120      500            100          3           security_scanning\n\
         team        Team        300      2000           500          10          security_scanning,webhooks\n\
         enterprise  Enterprise  1000     unlimited      unlimited    50          security_scanning,webhooks\n\
         startup     Startup     120      500            100          3           security_scanning,exports\n"
    );
    let json: serde_json::Value = serde_json::from_str(
        &nat(&store, &format!("plans check --json {}", good.display()))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        json["plans"]["startup"]["features"],
        serde_json::json!(["security_scanning", "exports"])
    );
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"plans": {"pro": {"features": ["ssso"]}}}"#).unwrap();
    let failure = nat(&store, &format!("plans check {}", bad.display()))
        .await
        .unwrap_err();
    assert_eq!(failure.code(), 4);
    assert_eq!(
        failure.message(),
        format!(
            "{}: invalid plan table: plan `pro` lists the unknown feature `ssso`",
            bad.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nat ARGS` as a process, with the database at `url`: exit code, stdout, stderr.
fn run(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_nat"))
        .args(args)
        .env("NAT_DATABASE_URL", url)
        .env_remove("NAT_PLANS")
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap(),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn the_binary_against_postgresql() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    let url = server.url();
    let no_secret = |text: &str| {
        assert!(!text.contains("hunter2") && !text.contains(&url), "{text}");
    };
    assert_eq!(
        run(&url, &["migrate"]),
        (0, "the schema is up to date\n".into(), String::new())
    );
    assert_eq!(run(&url, &["migrate"]).0, 0);
    let (code, out, _) = run(&url, &["tenants", "create", "acme", "--plan", "pro"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("acme  plan pro  created "), "{out}");
    let (code, out, _) = run(&url, &["--json", "keys", "issue", "acme"]);
    assert_eq!(code, 0);
    let issued: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (id, key) = (
        issued["id"].as_str().unwrap().to_owned(),
        issued["key"].as_str().unwrap().to_owned(),
    );
    let (code, out, _) = run(&url, &["keys", "list", "acme"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("{id}  tenant acme  created ")),
        "{out}"
    );
    assert!(out.contains("revoked no"), "{out}");
    assert!(!out.contains(&key));
    assert_eq!(
        run(&url, &["keys", "revoke", &id]),
        (0, format!("revoked {id}\n"), String::new())
    );
    // PostgreSQL keeps revoked keys, listed with the time.
    let (_, out, _) = run(&url, &["keys", "show", &id]);
    assert!(!out.contains("revoked no"), "{out}");

    let failures = [
        (
            vec!["tenants", "create", "beta", "--plan", "gold"],
            4,
            "nat: unknown plan: gold\n",
        ),
        (
            vec!["tenants", "create", "acme", "--plan", "pro"],
            5,
            "nat: tenant acme exists already\n",
        ),
        (
            vec!["keys", "revoke", "key_0000000000000000"],
            3,
            "nat: no key key_0000000000000000\n",
        ),
        (
            vec!["tenants", "show", "nobody"],
            3,
            "nat: no tenant nobody\n",
        ),
    ];
    // A second revocation is done again (a script may retry), the first one's time kept.
    assert_eq!(
        run(&url, &["keys", "revoke", &id]),
        (0, format!("revoked {id}\n"), String::new())
    );
    for (args, code, err) in failures {
        let (got, out, stderr) = run(&url, &args);
        assert_eq!(
            (got, out.as_str(), stderr.as_str()),
            (code, "", err),
            "{args:?}"
        );
    }
    // A plan of the servers' own table, given with --plans.
    let dir = std::env::temp_dir().join(format!("nat-cli-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table = dir.join("plans.json");
    std::fs::write(&table, r#"{"plans": {"gold": {"extends": "team"}}}"#).unwrap();
    let table = table.to_str().unwrap();
    let (code, out, _) = run(
        &url,
        &[
            "--plans", table, "tenants", "create", "beta", "--plan", "gold",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);

    // No database: exit 1, and the error names nothing secret.
    let down = "postgres://nat:hunter2@127.0.0.1:1/nat";
    let (code, out, err) = run(down, &["tenants", "list"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.starts_with("nat: "), "{err}");
    no_secret(&err);
    assert!(!err.contains("127.0.0.1:1/nat"), "{err}");
    // Not a URL: exit 4; no URL: exit 2, a command line that lacks something.
    let (code, _, err) = run("not a url", &["tenants", "list"]);
    assert_eq!(
        (code, err.as_str()),
        (
            4,
            "nat: NAT_DATABASE_URL: postgres: invalid connection string\n"
        )
    );
    let (code, _, err) = run(" ", &["tenants", "list"]);
    assert_eq!(
        (code, err.as_str()),
        (
            2,
            "nat: set NAT_DATABASE_URL (or --database-url) to the database\n"
        )
    );
    let out = Process::new(env!("CARGO_BIN_EXE_nat"))
        .args(["tenants", "list"])
        .env_remove("NAT_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "nat: set NAT_DATABASE_URL (or --database-url) to the database\n"
    );
    // A wrong command line: clap's exit code 2.
    assert_eq!(run(&url, &["keys", "frobnicate"]).0, 2);
    drop(server);
}
