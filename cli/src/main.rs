//! `nat`: see the crate's docs, or `nat --help`.

use std::process::ExitCode;

use clap::Parser;
use nat_cli::{Cli, Command, Failure, deepest, execute, read_plans};
use tower_nat::auth::{MemoryKeyStore, PgKeyStore};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("nat: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let plans = read_plans(cli.plans.as_ref())?;
    if let Command::Plans(_) = cli.command {
        // A plan table needs no database (the store is never read).
        let none = MemoryKeyStore::new();
        return execute(&cli.command, &none, cli.json, &mut std::io::stdout()).await;
    }
    let url = cli
        .database_url
        .as_deref()
        .filter(|url| !url.trim().is_empty());
    let url = url.ok_or_else(|| {
        Failure::Usage("set NAT_DATABASE_URL (or --database-url) to the database".into())
    })?;
    let store = PgKeyStore::new(url)
        .map_err(|e| {
            let cause =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |c| c.to_string());
            Failure::Refused(format!("NAT_DATABASE_URL: {cause}"))
        })?
        .plans(plans);
    if let Command::Migrate = cli.command {
        store
            .migrate()
            .await
            .map_err(|e| Failure::Store(deepest(&e)))?;
        if cli.json {
            println!(r#"{{"migrated": true}}"#);
        } else {
            println!("the schema is up to date");
        }
        return Ok(());
    }
    execute(&cli.command, &store, cli.json, &mut std::io::stdout()).await
}
