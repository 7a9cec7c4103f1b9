//! Every envelope's bytes, status and headers, exactly as the contract gives them.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tower_nat::{
    NatError,
    clock::UtcDate,
    plan::{Feature, Plan},
};

async fn render(error: NatError) -> (u16, Vec<(String, String)>, String) {
    let response: http::Response<Full<Bytes>> = error.into_http_response();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn json_only() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

#[tokio::test]
async fn fixed_envelopes() {
    let cases = [
        (
            NatError::Unauthorized,
            401,
            r#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#,
        ),
        (
            NatError::StripeNotConfigured,
            503,
            r#"{"error":"STRIPE_NOT_CONFIGURED","message":"Billing is not configured on this server. Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."}"#,
        ),
        (
            NatError::Internal,
            500,
            r#"{"error":"INTERNAL_ERROR","message":"An unexpected error occurred. Retry after a short delay."}"#,
        ),
        (
            NatError::not_found(),
            404,
            r#"{"error":"NOT_FOUND","message":"The requested resource was not found."}"#,
        ),
        (
            NatError::not_found_with("Scan not found."),
            404,
            r#"{"error":"NOT_FOUND","message":"Scan not found."}"#,
        ),
        (
            NatError::invalid_request("Missing required field: url."),
            400,
            r#"{"error":"INVALID_REQUEST","message":"Missing required field: url."}"#,
        ),
        (
            NatError::invalid_request("quote \" backslash \\ newline \n"),
            400,
            r#"{"error":"INVALID_REQUEST","message":"quote \" backslash \\ newline \n"}"#,
        ),
        (
            NatError::QuotaExceeded {
                resets_on: UtcDate::new(2025, 2, 1).unwrap(),
            },
            402,
            r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-02-01.","quota_reset_date":"2025-02-01T00:00:00Z"}"#,
        ),
        (
            NatError::FeatureNotAvailable {
                feature: Feature::SECURITY_SCANNING,
                plan: Plan::FREE,
            },
            403,
            r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Security scanning is not available on the Free plan. Upgrade to access.","feature":"security_scanning","plan":"free"}"#,
        ),
        (
            NatError::FeatureNotAvailable {
                feature: Feature::new("sso", "Single sign-on"),
                plan: Plan::named("startup", "Startup"),
            },
            403,
            r#"{"error":"FEATURE_NOT_AVAILABLE","message":"Single sign-on is not available on the Startup plan. Upgrade to access.","feature":"sso","plan":"startup"}"#,
        ),
    ];
    for (error, status, body) in cases {
        let code = error.code();
        let got = render(error.clone()).await;
        assert_eq!(got, (status, json_only(), body.to_owned()), "{code}");
        // Byte-stable: the same error renders the same bytes again.
        assert_eq!(error.body(), body.as_bytes());
        // First two members are `error` and `message`.
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"], code);
        assert!(body.starts_with(&format!("{{\"error\":\"{code}\",\"message\":")));
    }
}

#[tokio::test]
async fn rate_limited_envelope_has_its_headers() {
    let got = render(NatError::RateLimited {
        retry_after: 12,
        limit: 30,
    })
    .await;
    assert_eq!(got.0, 429);
    assert_eq!(
        got.1,
        vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("retry-after".to_owned(), "12".to_owned()),
            ("x-ratelimit-limit".to_owned(), "30".to_owned()),
            ("x-ratelimit-remaining".to_owned(), "0".to_owned()),
        ]
    );
    // Byte for byte as the Common API Errors page shows it.
    assert_eq!(
        got.2,
        r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 12 seconds.","retry_after":12}"#
    );
}

#[test]
fn codes_and_statuses() {
    let all = [
        (NatError::invalid_request("x"), 400, "INVALID_REQUEST"),
        (NatError::Unauthorized, 401, "UNAUTHORIZED"),
        (
            NatError::QuotaExceeded {
                resets_on: UtcDate::new(2025, 1, 1).unwrap(),
            },
            402,
            "QUOTA_EXCEEDED",
        ),
        (
            NatError::FeatureNotAvailable {
                feature: Feature::WEBHOOKS,
                plan: Plan::PRO,
            },
            403,
            "FEATURE_NOT_AVAILABLE",
        ),
        (NatError::not_found(), 404, "NOT_FOUND"),
        (
            NatError::RateLimited {
                retry_after: 1,
                limit: 1,
            },
            429,
            "RATE_LIMITED",
        ),
        (NatError::Internal, 500, "INTERNAL_ERROR"),
        (NatError::StripeNotConfigured, 503, "STRIPE_NOT_CONFIGURED"),
        (
            NatError::rejected(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
            405,
            "INVALID_REQUEST",
        ),
        // Not a client error: a plain 400.
        (
            NatError::rejected(StatusCode::BAD_GATEWAY, "x"),
            400,
            "INVALID_REQUEST",
        ),
    ];
    for (error, status, code) in all {
        assert_eq!(error.status().as_u16(), status);
        assert_eq!(error.code(), code);
        assert_eq!(error.to_string(), format!("{code}: {}", error.message()));
    }
}

#[cfg(feature = "axum")]
mod axum_responses {
    use axum::{
        Json,
        response::{IntoResponse, Response},
    };
    use http_body_util::BodyExt;
    use tower_nat::{NatError, StoreError};

    /// The call the README shows, with axum's trait in scope: axum's response, not a
    /// framework-free one.
    fn not_found() -> Response {
        NatError::not_found().into_response()
    }

    async fn handler(fail: bool) -> Result<Json<u8>, NatError> {
        let value: Result<u8, StoreError> = if fail {
            Err(StoreError::new(
                "db: password authentication failed for hunter2",
            ))
        } else {
            Ok(7)
        };
        Ok(Json(value?))
    }

    #[tokio::test]
    async fn the_natural_calls_give_axum_responses() {
        let response = not_found();
        assert_eq!(response.status(), 404);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, crate::common::NOT_FOUND);

        let response = handler(true).await.into_response();
        assert_eq!(response.status(), 500);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, crate::common::INTERNAL);
        let response = handler(false).await.into_response();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "7"
        );
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_into_response_gives_the_same_bytes() {
    use axum::response::IntoResponse;
    let response = IntoResponse::into_response(NatError::RateLimited {
        retry_after: 3,
        limit: 120,
    });
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.headers()["x-ratelimit-limit"], "120");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        r#"{"error":"RATE_LIMITED","message":"Rate limit exceeded. Retry after 3 seconds.","retry_after":3}"#
    );
}
