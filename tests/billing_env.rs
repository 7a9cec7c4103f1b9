//! BillingConfiguredLayer::from_env, alone in its own test binary because it changes the
//! process environment.
#![allow(unsafe_code)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{NatLayer, auth::MemoryKeyStore, billing::BillingConfiguredLayer};

/// What `NatLayer::new` answers to the Stripe webhook (exempt from keys).
async fn nat_layer_status() -> u16 {
    let service = ServiceBuilder::new()
        .layer(NatLayer::new(MemoryKeyStore::new()).exempt("/api/v1/billing/webhook"))
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let req = Request::post("/api/v1/billing/webhook").body(Full::default());
    service
        .oneshot(req.unwrap())
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn from_env_reads_the_variables_once() {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        std::env::set_var("STRIPE_SECRET_KEY", "sk_test_1");
        std::env::set_var("STRIPE_WEBHOOK_SECRET", "whsec_1");
    }
    let layer = BillingConfiguredLayer::from_env();
    assert_eq!(
        nat_layer_status().await,
        503,
        "NatLayer::new reads no environment"
    );
    unsafe {
        std::env::set_var("STRIPE_WEBHOOK_SECRET", "");
    }
    assert!(layer.is_configured(), "read at construction, not later");
    assert!(!BillingConfiguredLayer::from_env().is_configured());
    unsafe {
        std::env::remove_var("STRIPE_SECRET_KEY");
        std::env::remove_var("STRIPE_WEBHOOK_SECRET");
    }
    assert!(!BillingConfiguredLayer::from_env().is_configured());
    let debug = format!("{layer:?}");
    assert!(
        !debug.contains("sk_test_1") && !debug.contains("whsec_1"),
        "{debug}"
    );
}
