//! Hostile and malformed requests through the whole composed stack (`NatLayer` in an axum
//! router, as a server would use it). Each case asserts the documented status, the exact
//! envelope, and whether a handler was reached.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::common::{NOT_FOUND, STRIPE, UNAUTHORIZED, invalid};
use axum::{
    Router,
    body::Body,
    extract::Path,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_nat::{
    NatError, NatLayer,
    auth::{ApiKey, MemoryKeyStore},
    billing::BillingConfiguredLayer,
    plan::Plan,
    tenant::Tenant,
};

const SCAN_NOT_FOUND: &str = r#"{"error":"NOT_FOUND","message":"Scan not found."}"#;
const FORBIDDEN: &str = crate::common::SECURITY_ON_FREE;

struct Stack {
    router: Router,
    pro: ApiKey,
    free: ApiKey,
    hits: Arc<AtomicUsize>,
    scans: Arc<AtomicUsize>,
    nat: NatLayer,
}

fn stack() -> Stack {
    let keys = MemoryKeyStore::new();
    keys.insert_tenant("pro", Plan::PRO).unwrap();
    keys.insert_tenant("free", Plan::FREE).unwrap();
    let pro = keys.issue_key("pro", None).unwrap().key;
    let free = keys.issue_key("free", None).unwrap().key;
    let nat = NatLayer::new(keys)
        .billing(BillingConfiguredLayer::new(false))
        .exempt("/healthz")
        .exempt("/api/v1/billing/webhook");
    let hits = Arc::new(AtomicUsize::new(0));
    let scans = Arc::new(AtomicUsize::new(0));
    let count = |hits: &Arc<AtomicUsize>| {
        let hits = hits.clone();
        move || {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (h1, h2, h3, h4, h5, h6) = (
        count(&hits),
        count(&hits),
        count(&hits),
        count(&hits),
        count(&hits),
        count(&hits),
    );
    let s = scans.clone();
    let router = Router::new()
        .route(
            "/api/v1/usage",
            get(move || async move {
                h1();
                "usage"
            }),
        )
        .route(
            "/api/v1/scan",
            post(move |req: axum::extract::Request| async move {
                h2();
                s.fetch_add(1, Ordering::SeqCst);
                crate::common::end_scan(req.extensions());
                let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (StatusCode::ACCEPTED, body)
            }),
        )
        .route(
            "/api/v1/scan/{id}",
            get(move |Path(_id): Path<String>| async move {
                h3();
                NatError::not_found_with("Scan not found.").into_response()
            }),
        )
        .route(
            "/api/v1/billing/checkout",
            post(move || async move {
                h4();
                "checkout"
            }),
        )
        .route(
            "/api/v1/billing/webhook",
            post(move || async move {
                h5();
                "hook"
            }),
        )
        .route(
            "/healthz",
            get(move || async move {
                h6();
                "up"
            }),
        )
        .layer(nat.clone());
    Stack {
        router,
        pro,
        free,
        hits,
        scans,
        nat,
    }
}

/// A request: method, path, headers (raw bytes allowed), body.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: CaseBody,
    status: u16,
    body_is: Expect,
}

enum CaseBody {
    Bytes(Vec<u8>),
    /// Chunks with no Content-Length.
    Chunks(Vec<Vec<u8>>),
}

enum Expect {
    /// A layer's envelope, exactly; the handler is never reached.
    Exact(String),
    /// The handler's own answer (an echo of the body, "usage", ...).
    Handler,
    /// The handler's own envelope, exactly.
    HandlerExact(String),
}

fn h(name: &'static str, value: &[u8]) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_bytes(value).unwrap(),
    )
}

fn json_ct() -> (HeaderName, HeaderValue) {
    h("content-type", b"application/json")
}

struct Builder<'a> {
    s: &'a Stack,
    cases: Vec<Case>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)] // One argument per column of the case table.
    fn push(
        &mut self,
        name: &'static str,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: CaseBody,
        status: u16,
        body_is: Expect,
    ) {
        self.cases.push(Case {
            name,
            method,
            path: path.to_owned(),
            headers,
            body,
            status,
            body_is,
        });
    }

    fn key(&self, plan: Plan) -> (HeaderName, HeaderValue) {
        let key = if plan == Plan::FREE {
            &self.s.free
        } else {
            &self.s.pro
        };
        h("x-api-key", key.expose().as_bytes())
    }

    /// A header-trick case on GET /api/v1/usage.
    fn auth(&mut self, name: &'static str, headers: Vec<(HeaderName, HeaderValue)>, ok: bool) {
        let (status, body) = if ok {
            (200, Expect::Handler)
        } else {
            (401, Expect::Exact(UNAUTHORIZED.into()))
        };
        self.push(
            name,
            Method::GET,
            "/api/v1/usage",
            headers,
            CaseBody::Bytes(vec![]),
            status,
            body,
        );
    }

    /// A body case on POST /api/v1/scan with the Pro key and a JSON content type.
    fn scan(&mut self, name: &'static str, body: impl Into<Vec<u8>>, outcome: Result<(), &str>) {
        let headers = vec![self.key(Plan::PRO), json_ct()];
        let (status, expect) = match outcome {
            Ok(()) => (202, Expect::Handler),
            Err(message) => (400, Expect::Exact(invalid(message))),
        };
        self.push(
            name,
            Method::POST,
            "/api/v1/scan",
            headers,
            CaseBody::Bytes(body.into()),
            status,
            expect,
        );
    }

    /// A path case.
    fn path(
        &mut self,
        name: &'static str,
        method: Method,
        path: &str,
        key: bool,
        status: u16,
        body: Expect,
    ) {
        let headers = if key {
            vec![self.key(Plan::PRO)]
        } else {
            vec![]
        };
        self.push(
            name,
            method,
            path,
            headers,
            CaseBody::Bytes(vec![]),
            status,
            body,
        );
    }
}

const MALFORMED: &str = "Malformed JSON in request body.";
const TOO_LARGE: &str = "Request body too large: the limit is 1048576 bytes.";

fn cases(s: &Stack) -> Vec<Case> {
    let mut b = Builder {
        s,
        cases: Vec::new(),
    };
    let pro = s.pro.expose().as_bytes().to_vec();
    let cat = |a: &[u8], c: &[u8]| [a, c].concat();

    // Header tricks.
    b.auth("no key", vec![], false);
    b.auth("empty key", vec![h("x-api-key", b"")], false);
    b.auth(
        "two identical valid keys",
        vec![b.key(Plan::PRO), b.key(Plan::PRO)],
        false,
    );
    b.auth(
        "valid key then a bad one",
        vec![b.key(Plan::PRO), h("x-api-key", b"nat_pk_bad")],
        false,
    );
    b.auth(
        "leading space",
        vec![h("x-api-key", &cat(b" ", &pro))],
        false,
    );
    b.auth(
        "trailing space",
        vec![h("x-api-key", &cat(&pro, b" "))],
        false,
    );
    b.auth(
        "trailing tab",
        vec![h("x-api-key", &cat(&pro, b"\t"))],
        false,
    );
    b.auth(
        "inner tab",
        vec![h("x-api-key", &[&pro[..20], b"\t", &pro[21..]].concat())],
        false,
    );
    b.auth(
        "obs-text byte 0xff",
        vec![h("x-api-key", &[&pro[..38], &[0xff][..]].concat())],
        false,
    );
    b.auth(
        "UTF-8 in the key",
        vec![h("x-api-key", &[&pro[..37], "é".as_bytes()].concat())],
        false,
    );
    b.auth(
        "64 KiB key",
        vec![h("x-api-key", &cat(b"nat_pk_", &vec![b'a'; 65_536]))],
        false,
    );
    b.auth(
        "1 MiB key",
        vec![h("x-api-key", &cat(b"nat_pk_", &vec![b'A'; 1 << 20]))],
        false,
    );
    b.auth(
        "upper-case prefix",
        vec![h("x-api-key", &cat(b"NAT_PK_", &pro[7..]))],
        false,
    );
    b.auth("prefix only", vec![h("x-api-key", b"nat_pk_")], false);
    b.auth(
        "truncated by one",
        vec![h("x-api-key", &pro[..pro.len() - 1])],
        false,
    );
    b.auth(
        "percent-encoded key",
        vec![h("x-api-key", &cat(b"nat_pk_%41", &pro[10..]))],
        false,
    );
    b.auth(
        "Bearer only",
        vec![h("authorization", &cat(b"Bearer ", &pro))],
        false,
    );
    b.auth(
        "Basic only",
        vec![h("authorization", b"Basic bmF0X3BrXzo=")],
        false,
    );
    b.auth(
        "key in a cookie",
        vec![h("cookie", &cat(b"x-api-key=", &pro))],
        false,
    );
    b.auth("key in another header", vec![h("x-api-token", &pro)], false);
    b.auth(
        "valid key plus a Bearer for nobody",
        vec![b.key(Plan::PRO), h("authorization", b"Bearer nat_pk_x")],
        true,
    );
    b.push(
        "key in the query string",
        Method::GET,
        &format!("/api/v1/usage?x-api-key={}", s.pro.expose()),
        vec![],
        CaseBody::Bytes(vec![]),
        401,
        Expect::Exact(UNAUTHORIZED.into()),
    );

    // Body tricks on scan creation (Pro tenant).
    b.scan("valid", br#"{"url":"https://e.example"}"#.to_vec(), Ok(()));
    b.scan(
        "empty body",
        vec![],
        Err("Request body is empty; expected a JSON object."),
    );
    b.scan(
        "only whitespace",
        b" \n\t ".to_vec(),
        Err("Request body is empty; expected a JSON object."),
    );
    b.scan("open brace", b"{".to_vec(), Err(MALFORMED));
    b.scan(
        "truncated string",
        br#"{"url":"htt"#.to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "truncated after comma",
        br#"{"url":"u","#.to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "null",
        b"null".to_vec(),
        Err("Request body must be a JSON object."),
    );
    b.scan(
        "array of objects",
        br#"[{"url":"u"}]"#.to_vec(),
        Err("Request body must be a JSON object."),
    );
    b.scan(
        "number",
        b"12".to_vec(),
        Err("Request body must be a JSON object."),
    );
    b.scan(
        "url deep inside 10,000 arrays",
        format!(
            r#"{{"url":{}"u"{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        Err(MALFORMED),
    );
    // What the validator accepts, a handler's `serde_json` accepts too (SPEC §11): nesting
    // past its limit and numbers out of range are 400 here, never a 500 from the handler.
    b.scan(
        "ignored member nested 100,000 deep",
        format!(
            r#"{{"url":"u","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        Err(MALFORMED),
    );
    b.scan(
        "huge integer in an ignored member",
        format!(r#"{{"url":"u","n":{}}}"#, "9".repeat(500)),
        Err(MALFORMED),
    );
    b.scan(
        "out-of-range float in an ignored member",
        br#"{"url":"u","n":1e999999}"#.to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "large but finite integer in an ignored member",
        format!(r#"{{"url":"u","n":{}}}"#, "9".repeat(300)),
        Ok(()),
    );
    b.scan(
        "url is a huge number",
        format!(r#"{{"url":{}}}"#, "9".repeat(30)),
        Err("Invalid field: url must be a non-empty string."),
    );
    b.scan(
        "url is a number out of range",
        format!(r#"{{"url":{}}}"#, "9".repeat(400)),
        Err(MALFORMED),
    );
    b.scan(
        "invalid UTF-8 in url",
        b"{\"url\":\"\xc3\x28\"}".to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "invalid UTF-8 outside strings",
        b"{\"url\":\"u\"\xff}".to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "UTF-8 byte order mark",
        b"\xef\xbb\xbf{\"url\":\"u\"}".to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "lone surrogate escape",
        br#"{"url":"\ud800"}"#.to_vec(),
        Err(MALFORMED),
    );
    b.scan(
        "escaped NUL in url",
        br#"{"url":"\u0000"}"#.to_vec(),
        Ok(()),
    );
    b.scan(
        "duplicate url",
        br#"{"url":"https://a","url":"https://b"}"#.to_vec(),
        Err("Duplicate field in request body: url."),
    );
    b.scan(
        "duplicate mode",
        br#"{"url":"u","mode":"functional","mode":"full"}"#.to_vec(),
        Err("Duplicate field in request body: mode."),
    );
    b.scan(
        "mode in upper case",
        br#"{"url":"u","mode":"FULL"}"#.to_vec(),
        Err(r#"Invalid field: mode must be one of "functional", "security", "full"."#),
    );
    b.scan(
        "mode is a number",
        br#"{"url":"u","mode":1}"#.to_vec(),
        Err(r#"Invalid field: mode must be one of "functional", "security", "full"."#),
    );
    b.scan(
        "empty url",
        br#"{"url":""}"#.to_vec(),
        Err("Invalid field: url must be a non-empty string."),
    );
    b.scan(
        "url is an object",
        br#"{"url":{"href":"u"}}"#.to_vec(),
        Err("Invalid field: url must be a non-empty string."),
    );
    b.scan(
        "exactly 1 MiB",
        {
            let mut v = br#"{"url":"u","pad":""#.to_vec();
            v.resize((1 << 20) - 2, b'a');
            v.extend_from_slice(b"\"}");
            v
        },
        Ok(()),
    );
    b.scan(
        "1 MiB and one byte",
        {
            let mut v = br#"{"url":"u","pad":""#.to_vec();
            v.resize((1 << 20) - 1, b'a');
            v.extend_from_slice(b"\"}");
            v
        },
        Err(TOO_LARGE),
    );
    let pro_key = b.key(Plan::PRO);
    let ct = |value: &[u8]| vec![pro_key.clone(), h("content-type", value)];
    let body = || CaseBody::Bytes(br#"{"url":"u"}"#.to_vec());
    let cases_ct: [(&'static str, &[u8], bool); 5] = [
        ("text/plain", b"text/plain", false),
        ("multipart", b"multipart/form-data; boundary=x", false),
        (
            "JSON with a charset",
            b"application/json; charset=utf-8",
            true,
        ),
        ("vendor +json", b"application/vnd.nat+json", true),
        (
            "content type with a 0xff byte",
            b"application/json\xff",
            false,
        ),
    ];
    for (name, value, ok) in cases_ct {
        let headers = ct(value);
        if ok {
            b.push(
                name,
                Method::POST,
                "/api/v1/scan",
                headers,
                body(),
                202,
                Expect::Handler,
            );
        } else {
            b.push(
                name,
                Method::POST,
                "/api/v1/scan",
                headers,
                body(),
                400,
                Expect::Exact(invalid("Content-Type must be application/json.")),
            );
        }
    }
    b.push(
        "declared length over the limit",
        Method::POST,
        "/api/v1/scan",
        vec![
            b.key(Plan::PRO),
            json_ct(),
            h("content-length", b"99999999"),
        ],
        body(),
        400,
        Expect::Exact(invalid(TOO_LARGE)),
    );
    b.push(
        "chunked body that runs past the limit",
        Method::POST,
        "/api/v1/scan",
        vec![b.key(Plan::PRO), json_ct()],
        CaseBody::Chunks((0..40).map(|_| vec![b' '; 32 * 1024]).collect()),
        400,
        Expect::Exact(invalid(TOO_LARGE)),
    );
    b.push(
        "chunked valid body",
        Method::POST,
        "/api/v1/scan",
        vec![b.key(Plan::PRO), json_ct()],
        CaseBody::Chunks(vec![
            b"{\"url\"".to_vec(),
            b":\"https://e.example\"".to_vec(),
            b"}".to_vec(),
        ]),
        202,
        Expect::Handler,
    );
    let free = vec![b.key(Plan::FREE), json_ct()];
    b.push(
        "Free asks for a security scan",
        Method::POST,
        "/api/v1/scan",
        free.clone(),
        CaseBody::Bytes(br#"{"url":"u","mode":"security"}"#.to_vec()),
        403,
        Expect::Exact(FORBIDDEN.into()),
    );
    b.push(
        "Free asks for a full scan",
        Method::POST,
        "/api/v1/scan",
        free,
        CaseBody::Bytes(br#"{"url":"u","mode":"full"}"#.to_vec()),
        403,
        Expect::Exact(FORBIDDEN.into()),
    );

    // Path tricks.
    let stripe = || Expect::Exact(STRIPE.into());
    let nf = || Expect::Exact(NOT_FOUND.into());
    let unauth = || Expect::Exact(UNAUTHORIZED.into());
    b.path(
        "billing checkout",
        Method::POST,
        "/api/v1/billing/checkout",
        true,
        503,
        stripe(),
    );
    b.path(
        "billing in capitals",
        Method::POST,
        "/API/V1/BILLING/checkout",
        true,
        503,
        stripe(),
    );
    b.path(
        "billing root",
        Method::GET,
        "/api/v1/billing",
        true,
        503,
        stripe(),
    );
    b.path(
        "billing root with a trailing slash",
        Method::GET,
        "/api/v1/billing/",
        true,
        503,
        stripe(),
    );
    b.path(
        "billing with dot segments",
        Method::POST,
        "/api/v1/billing/../usage",
        true,
        503,
        stripe(),
    );
    b.path(
        "billing webhook without a key",
        Method::POST,
        "/api/v1/billing/webhook",
        false,
        503,
        stripe(),
    );
    b.path(
        "doubled slash before billing",
        Method::POST,
        "/api/v1//billing/checkout",
        true,
        404,
        nf(),
    );
    b.path(
        "encoded slash after billing",
        Method::POST,
        "/api/v1/billing%2Fcheckout",
        true,
        404,
        nf(),
    );
    b.path(
        "dot segments toward billing",
        Method::POST,
        "/api/v1/usage/../billing/checkout",
        true,
        404,
        nf(),
    );
    b.path(
        "healthz",
        Method::GET,
        "/healthz",
        false,
        200,
        Expect::Handler,
    );
    b.path(
        "healthz with a trailing slash",
        Method::GET,
        "/healthz/",
        false,
        401,
        unauth(),
    );
    b.path(
        "healthz in capitals",
        Method::GET,
        "/HEALTHZ",
        false,
        401,
        unauth(),
    );
    b.path(
        "scan creation with a trailing slash",
        Method::POST,
        "/api/v1/scan/",
        true,
        404,
        nf(),
    );
    b.path(
        "scan id made of dots",
        Method::GET,
        "/api/v1/scan/%2e%2e",
        true,
        404,
        Expect::HandlerExact(SCAN_NOT_FOUND.into()),
    );
    b.path(
        "unknown method on scans",
        Method::PATCH,
        "/api/v1/scan",
        true,
        405,
        Expect::Exact(invalid("Method not allowed.")),
    );
    b.path(
        "16 KiB path without a key",
        Method::GET,
        &format!("/{}", "a".repeat(16_384)),
        false,
        401,
        unauth(),
    );
    b.path(
        "16 KiB path with a key",
        Method::GET,
        &format!("/{}", "a".repeat(16_384)),
        true,
        404,
        nf(),
    );
    b.path(
        "encoded key-looking path",
        Method::GET,
        "/api/v1/usage%3Fx-api-key%3Dnat_pk_x",
        true,
        404,
        nf(),
    );
    b.cases
}

#[tokio::test]
async fn hostile_requests_get_the_documented_answer_and_nothing_else() {
    let s = stack();
    let cases = cases(&s);
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut expected_hits = 0;
    let mut accepted_scans = 0;
    for case in cases {
        let mut req = Request::builder()
            .method(case.method.clone())
            .uri(case.path.as_str());
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        let body = match case.body {
            CaseBody::Bytes(bytes) => Body::from(bytes),
            CaseBody::Chunks(chunks) => crate::common::chunked(chunks),
        };
        let before = s.hits.load(Ordering::SeqCst);
        let response: Response = s
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").cloned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, case.status, "{}: {text}", case.name);
        let should_reach = match &case.body_is {
            Expect::Exact(expected) | Expect::HandlerExact(expected) => {
                assert_eq!(text, *expected, "{}", case.name);
                assert_eq!(content_type.unwrap(), "application/json", "{}", case.name);
                matches!(case.body_is, Expect::HandlerExact(_))
            }
            Expect::Handler => true,
        };
        let reached = s.hits.load(Ordering::SeqCst) > before;
        assert_eq!(reached, should_reach, "{}: handler reached?", case.name);
        if reached {
            expected_hits += 1;
        }
        if reached && case.path == "/api/v1/scan" {
            accepted_scans += 1;
        }
        // No answer ever carries a key.
        assert!(!text.contains(&s.pro.expose()[7..]), "{}", case.name);
    }
    assert_eq!(s.hits.load(Ordering::SeqCst), expected_hits);
    // Nothing lost, nothing extra: usage equals the scans the handler accepted.
    assert_eq!(s.scans.load(Ordering::SeqCst), accepted_scans);
    let usage = s
        .nat
        .usage(&Tenant::new("pro", Plan::PRO, "k"))
        .await
        .unwrap();
    assert_eq!(usage.scans_used as usize, accepted_scans);
}
