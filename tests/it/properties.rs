//! Property tests (proptest) on the two entry points that parse hostile input: API-key
//! checking and scan-body validation. Arbitrary bytes never panic and always end in a
//! documented status.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    auth::{ApiKeyAuthLayer, KeyFormat, MemoryKeyStore},
    plan::Plan,
    plan::ScanKind,
    scan_request::{ValidateScanRequestLayer, validate_scan_body},
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

async fn ok(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

const UNAUTHORIZED: &[u8] = br#"{"error":"UNAUTHORIZED","message":"Missing or invalid API key."}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_key_header_is_refused_with_the_one_401(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let store = MemoryKeyStore::new();
        store.insert_tenant("t", Plan::FREE).unwrap();
        let live = store.issue_key("t", None).unwrap().key;
        prop_assume!(bytes != live.expose().as_bytes());
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            // http refuses the value itself (control bytes): it cannot reach a service.
            return Ok(());
        };
        let service = ServiceBuilder::new().layer(ApiKeyAuthLayer::new(store)).service_fn(ok);
        let mut req = Request::new(Full::default());
        req.headers_mut().insert("x-api-key", value);
        let (status, body) = rt().block_on(async {
            let r = service.oneshot(req).await.unwrap();
            (r.status(), r.into_body().collect().await.unwrap().to_bytes())
        });
        prop_assert_eq!(status.as_u16(), 401);
        prop_assert_eq!(&body[..], UNAUTHORIZED);
    }

    #[test]
    fn well_formed_unknown_keys_are_refused(body in "[A-Za-z0-9]{32}") {
        let store = MemoryKeyStore::new();
        store.insert_tenant("t", Plan::FREE).unwrap();
        let key = format!("nat_pk_{body}");
        prop_assert!(KeyFormat::default().check(key.as_bytes()));
        let service = ServiceBuilder::new().layer(ApiKeyAuthLayer::new(store)).service_fn(ok);
        let req = Request::builder().header("x-api-key", key).body(Full::default()).unwrap();
        let status = rt().block_on(service.oneshot(req)).unwrap().status();
        prop_assert_eq!(status.as_u16(), 401);
    }

    #[test]
    fn any_scan_body_ends_in_202_or_the_400_envelope(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let direct = validate_scan_body(&bytes, ScanKind::Functional);
        let service = ServiceBuilder::new().layer(ValidateScanRequestLayer::new()).service_fn(ok);
        let req = Request::post("/api/v1/scan").body(Full::new(Bytes::from(bytes.clone()))).unwrap();
        let (status, body) = rt().block_on(async {
            let r = service.oneshot(req).await.unwrap();
            (r.status(), r.into_body().collect().await.unwrap().to_bytes())
        });
        match direct {
            Ok(_) => {
                prop_assert_eq!(status.as_u16(), 200);
                prop_assert_eq!(&body[..], b"ok");
            }
            Err(error) => {
                prop_assert_eq!(status.as_u16(), 400);
                prop_assert_eq!(error.code(), "INVALID_REQUEST");
                prop_assert_eq!(body, error.body());
            }
        }
    }

    #[test]
    fn json_objects_follow_the_model(
        url in prop_oneof![
            Just(None),
            Just(Some(serde_json::json!(""))),
            "[a-z:/.]{1,20}".prop_map(|s| Some(serde_json::json!(s))),
            any::<i64>().prop_map(|n| Some(serde_json::json!(n))),
            Just(Some(serde_json::Value::Null)),
        ],
        mode in prop_oneof![
            Just(None),
            prop_oneof![Just("functional"), Just("security"), Just("full"), Just("Full"), Just("fast")]
                .prop_map(|m| Some(serde_json::json!(m))),
            any::<bool>().prop_map(|b| Some(serde_json::json!(b))),
        ],
        extra in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..4),
    ) {
        let mut object = serde_json::Map::new();
        for (k, v) in &extra {
            if k != "url" && k != "mode" {
                object.insert(k.clone(), serde_json::json!(v));
            }
        }
        if let Some(u) = &url { object.insert("url".into(), u.clone()); }
        if let Some(m) = &mode { object.insert("mode".into(), m.clone()); }
        let body = serde_json::to_vec(&object).unwrap();
        let got = validate_scan_body(&body, ScanKind::Security);
        let url_ok = matches!(&url, Some(serde_json::Value::String(s)) if !s.is_empty());
        let expected_kind = match &mode {
            None => Some(ScanKind::Security),
            Some(serde_json::Value::String(m)) => ScanKind::from_mode(m),
            Some(_) => None,
        };
        match (url_ok, expected_kind) {
            (true, Some(kind)) => prop_assert_eq!(got, Ok(kind)),
            _ => prop_assert_eq!(got.unwrap_err().code(), "INVALID_REQUEST"),
        }
    }

    /// SPEC §11: a body the validator accepts is one a handler's `serde_json` accepts too,
    /// whatever its nesting depth, numbers and string escapes.
    #[test]
    fn what_the_validator_accepts_serde_json_accepts(value in json_value(), wrap in 0usize..200) {
        let body = format!(
            r#"{{"url":"https://a.example","x":{}{}{}}}"#,
            "[".repeat(wrap),
            value,
            "]".repeat(wrap)
        );
        let parsed = serde_json::from_slice::<serde_json::Value>(body.as_bytes());
        match validate_scan_body(body.as_bytes(), ScanKind::Functional) {
            Ok(_) => prop_assert!(parsed.is_ok(), "accepted, but serde_json says {:?}", parsed),
            // Everything else about the body is valid: only what serde_json refuses is
            // refused.
            Err(error) => {
                prop_assert_eq!(error.message(), "Malformed JSON in request body.");
                prop_assert!(parsed.is_err(), "refused, but serde_json parses it");
            }
        }
    }
}

/// JSON values: numbers near and past `f64`'s range, string escapes (lone surrogates
/// among them), nested arrays and objects.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        ("-?[0-9]{1,3}(\\.[0-9]{1,3})?", -400i32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        "[1-9][0-9]{300,320}",
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\udc00x""#.to_owned()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        "\"[a-z ]{0,5}\"",
        Just("null".to_owned()),
        Just("true".to_owned()),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z]{1,3}", inner), 0..3).prop_map(|members| {
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}
