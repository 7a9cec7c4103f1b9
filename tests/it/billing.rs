//! BillingConfigured: every unset/empty combination, billing and other paths, the exempt
//! webhook.

use http::Request;
use tower::ServiceBuilder;
use tower_nat::{
    auth::{ApiKeyAuthLayer, MemoryKeyStore},
    billing::BillingConfiguredLayer,
};

use crate::common::{Counted, STRIPE, UNAUTHORIZED, assert_envelope, empty, get, send};

#[tokio::test]
async fn unset_or_empty_values_block_billing_routes_only() {
    let combos: [(Option<&str>, Option<&str>, bool); 9] = [
        (None, None, false),
        (Some(""), None, false),
        (None, Some(""), false),
        (Some(""), Some(""), false),
        (Some("sk_test_1"), None, false),
        (Some("sk_test_1"), Some(""), false),
        (None, Some("whsec_1"), false),
        (Some(""), Some("whsec_1"), false),
        (Some("sk_test_1"), Some("whsec_1"), true),
    ];
    for (secret, webhook, configured) in combos {
        let layer = BillingConfiguredLayer::from_values(secret, webhook);
        assert_eq!(layer.is_configured(), configured);
        let handler = Counted::default();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(handler.service());
        for path in [
            "/api/v1/billing",
            "/api/v1/billing/",
            "/api/v1/billing/checkout",
            "/api/v1/billing/webhook",
            "/API/V1/BILLING/checkout",
        ] {
            let got = send(&service, empty(Request::post(path))).await;
            if configured {
                assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"ok"[..]), "{path}");
            } else {
                assert_envelope(&got, 503, STRIPE);
            }
        }
        for path in [
            "/api/v1/usage",
            "/api/v1/billingx",
            "/healthz",
            "/api/v1/scan",
        ] {
            let got = send(&service, empty(get(path))).await;
            assert_eq!((got.0.as_u16(), &got.2[..]), (200, &b"ok"[..]), "{path}");
        }
        let expected_calls = if configured { 9 } else { 4 };
        assert_eq!(handler.calls(), expected_calls);
    }
}

#[tokio::test]
async fn custom_prefix() {
    let handler = Counted::default();
    let service = ServiceBuilder::new()
        .layer(BillingConfiguredLayer::new(false).prefix("/billing/"))
        .service(handler.service());
    assert_envelope(
        &send(&service, empty(get("/billing/portal"))).await,
        503,
        STRIPE,
    );
    assert_eq!(send(&service, empty(get("/api/v1/billing/x"))).await.0, 200);
}

#[tokio::test]
async fn the_exempt_webhook_still_gets_503_when_billing_is_off() {
    let handler = Counted::default();
    let keys = MemoryKeyStore::new();
    let stack = |configured| {
        ServiceBuilder::new()
            .layer(BillingConfiguredLayer::new(configured))
            .layer(ApiKeyAuthLayer::new(keys.clone()).exempt("/api/v1/billing/webhook"))
            .service(handler.service())
    };
    let off = stack(false);
    let on = stack(true);
    let webhook = || empty(Request::post("/api/v1/billing/webhook"));
    assert_envelope(&send(&off, webhook()).await, 503, STRIPE);
    assert_eq!(send(&on, webhook()).await.0, 200);
    // Other billing routes still need a key when billing is on.
    let checkout = || empty(Request::post("/api/v1/billing/checkout"));
    assert_envelope(&send(&off, checkout()).await, 503, STRIPE);
    assert_envelope(&send(&on, checkout()).await, 401, UNAUTHORIZED);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test]
async fn every_request_guards_whatever_the_path() {
    let handler = Counted::default();
    let off = ServiceBuilder::new()
        .layer(BillingConfiguredLayer::new(false).every_request())
        .service(handler.service());
    for path in ["/checkout", "/", "/api/v1/usage"] {
        assert_envelope(&send(&off, empty(Request::post(path))).await, 503, STRIPE);
    }
    let on = ServiceBuilder::new()
        .layer(BillingConfiguredLayer::new(true).every_request())
        .service(handler.service());
    assert_eq!(send(&on, empty(Request::post("/checkout"))).await.0, 200);
    assert_eq!(handler.calls(), 1);
}
