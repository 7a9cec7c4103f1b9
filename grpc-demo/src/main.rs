//! Serves the demo: `cargo run -p nat-grpc-demo`, then, with a key it prints,
//! `grpcurl -plaintext -import-path grpc-demo/proto -proto nat/v1/scans.proto
//! -H 'x-api-key: KEY' -d '{"url":"https://example.com"}' 127.0.0.1:50051 nat.v1.Scans/CreateScan`.

use std::time::Duration;

use nat_grpc_demo::{DemoScans, app, nat};
use tower_nat::{auth::MemoryKeyStore, plan::Plan};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = MemoryKeyStore::new();
    for plan in Plan::BUILT_IN {
        let tenant = format!("demo-{plan}");
        keys.insert_tenant(tenant.as_str(), plan.clone()).unwrap();
        let issued = keys.issue_key(&tenant, None).expect("the tenant exists");
        println!("{plan} key: {}", issued.key.expose());
    }
    let nat = nat(keys);
    let scan_duration = Duration::from_secs(30);
    let scans = DemoScans {
        usage: nat.usage_reader(),
        scan_duration,
    };
    let app = app(nat, scans, scan_duration);
    let addr = std::env::var("NAT_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("NAT gRPC + REST demo on http://{}", listener.local_addr()?);
    // Header and ping timeouts, and the client's address for the failed-auth throttle.
    nat_grpc_demo::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
