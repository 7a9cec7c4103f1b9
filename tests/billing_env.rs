//! BillingConfiguredLayer::from_env, alone in its own test binary because it changes the
//! process environment.
#![allow(unsafe_code)]

use tower_nat::billing::BillingConfiguredLayer;

#[test]
fn from_env_reads_the_variables_once() {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        std::env::set_var("STRIPE_SECRET_KEY", "sk_test_1");
        std::env::set_var("STRIPE_WEBHOOK_SECRET", "whsec_1");
    }
    let layer = BillingConfiguredLayer::from_env();
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
