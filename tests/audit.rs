//! The admin API's audit: every change is one `INFO` event on `tower_nat::audit` naming the
//! admin, the action, the tenant and the key id, never a key or a token. In its own binary:
//! it captures every log line of the process.
#![cfg(feature = "admin")]

use std::sync::{Arc, Mutex};

use axum::Router;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_nat::{
    admin::AdminApi,
    auth::{ClientAddr, MemoryKeyStore},
    plan::Plans,
};

const TOKEN: &str = "ops-token-0123456789-abcdefghijklmnop";

/// What `tracing` wrote, for the audit test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_change_is_audited_without_the_key() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let keys = MemoryKeyStore::new().plans(Plans::default());
    let app = Router::new().nest(
        "/admin",
        AdminApi::new(keys)
            .tokens(&format!("ops:{TOKEN}"))
            .unwrap()
            .into_router(),
    );
    let a = Client(app);
    use Method as M;
    a.call(
        M::POST,
        "/admin/tenants",
        Some(r#"{"id":"acme","plan":"pro"}"#),
    )
    .await;
    a.call(M::PATCH, "/admin/tenants/acme", Some(r#"{"plan":"team"}"#))
        .await;
    let issued = json(&a.call(M::POST, "/admin/tenants/acme/keys", None).await);
    let (id, key) = (
        issued["id"].as_str().unwrap(),
        issued["key"].as_str().unwrap(),
    );
    let path = format!("/admin/keys/{id}");
    a.call(M::PATCH, &path, Some(r#"{"expires_at":null}"#))
        .await;
    let rotated = json(&a.call(M::POST, &format!("{path}/rotate"), None).await);
    let new_id = rotated["id"].as_str().unwrap();
    a.call(M::DELETE, &format!("/admin/keys/{new_id}"), None)
        .await;
    a.call(M::DELETE, "/admin/tenants/acme", None).await;
    // Refused changes are not audited.
    a.call(
        M::POST,
        "/admin/tenants",
        Some(r#"{"id":"b","plan":"gold"}"#),
    )
    .await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tower_nat::audit"))
        .collect();
    let expected = [
        r#"admin="ops" action="tenant.create" tenant="acme""#.to_owned(),
        r#"admin="ops" action="tenant.update" tenant="acme""#.to_owned(),
        format!(r#"admin="ops" action="key.issue" tenant="acme" key_id="{id}""#),
        format!(r#"admin="ops" action="key.update" tenant="acme" key_id="{id}""#),
        format!(
            r#"admin="ops" action="key.rotate" tenant="acme" key_id="{id}" new_key_id="{new_id}""#
        ),
        format!(r#"admin="ops" action="key.revoke" tenant="acme" key_id="{new_id}""#),
        r#"admin="ops" action="tenant.delete" tenant="acme""#.to_owned(),
    ];
    assert_eq!(audit.len(), expected.len(), "{text}");
    for (line, fields) in audit.iter().zip(&expected) {
        assert!(
            line.starts_with(" INFO tower_nat::audit: admin change "),
            "{line}"
        );
        assert!(line.contains(fields.as_str()), "{line} lacks {fields}");
    }
    assert!(!text.contains(key), "a key in the logs");
    assert!(!text.contains(rotated["key"].as_str().unwrap()));
    assert!(!text.contains(TOKEN), "the admin token in the logs");
}

struct Client(Router);

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> Bytes {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .extension(ClientAddr("10.0.0.1:4000".parse().unwrap()))
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let response = self.0.clone().oneshot(req).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}
