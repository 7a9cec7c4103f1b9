//! The engine on its own: a chain asks its policies in order and stops at a refusal, which
//! carries what passed before; waits resume in order with the instance that was polled ready;
//! reporting in shadow mode lets everything through; the service settles by the response's
//! verdict (status, `grpc-status` in headers or trailers).

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_service::Service;

use super::{Chain, Decision, Finish, Policy, PolicyService, Rejection, Reported};
use crate::error::NatError;

type Log = Arc<Mutex<Vec<String>>>;

/// What the inner service answers.
type Answer = fn() -> Response<http_body_util::Full<Bytes>>;

fn entries(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// A decision that writes `x-<name>` and logs its settlement.
#[derive(Debug)]
struct Mark(Option<(&'static str, Log)>);

impl Finish for Mark {
    type Settle = Ready<()>;

    fn respond<B>(&self, response: &mut Response<B>) {
        if let Some((name, _)) = &self.0 {
            let header = http::HeaderName::from_bytes(format!("x-{name}").as_bytes()).unwrap();
            response
                .headers_mut()
                .insert(header, HeaderValue::from_static("1"));
        }
    }

    fn waits(&self) -> bool {
        self.0.is_some()
    }

    fn settle(self, success: bool) -> Option<Ready<()>> {
        let (name, log) = self.0?;
        log.lock()
            .unwrap()
            .push(format!("{name} settled {success}"));
        Some(ready(()))
    }

    fn nothing() -> Self {
        Mark(None)
    }
}

/// What a test policy does.
#[derive(Clone, Copy, Debug)]
enum Does {
    Pass,
    Refuse,
    /// Passes after a wait.
    Wait,
}

#[derive(Clone, Debug)]
struct Test {
    name: &'static str,
    does: Does,
    log: Log,
}

impl<B> Policy<B> for Test {
    type Pass = Mark;
    type Later = Ready<&'static str>;

    fn decide(&self, _: &mut Request<B>) -> Decision<Mark, Self::Later> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} decides", self.name));
        match self.does {
            Does::Pass => Decision::Pass(Mark(Some((self.name, self.log.clone())))),
            Does::Refuse => Decision::refuse(Rejection::new(NatError::not_found(), "test")),
            Does::Wait => Decision::Later(ready(self.name)),
        }
    }

    fn resume(&self, answer: &'static str, _: &mut Request<B>) -> Decision<Mark, Self::Later> {
        self.log.lock().unwrap().push(format!("{answer} resumes"));
        Decision::Pass(Mark(Some((self.name, self.log.clone()))))
    }
}

fn chain(log: &Log, a: Does, b: Does) -> Chain<Test, Test> {
    let policy = |name, does| Test {
        name,
        does,
        log: log.clone(),
    };
    Chain(policy("a", a), policy("b", b))
}

/// An inner service answering `status` (and `headers`), counting which of its clones were
/// polled ready and called.
#[derive(Clone)]
struct Inner {
    ready: bool,
    log: Log,
    answer: Answer,
}

impl Service<Request<()>> for Inner {
    type Response = Response<http_body_util::Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let ready_before = std::mem::replace(&mut self.ready, false);
        self.log
            .lock()
            .unwrap()
            .push(format!("inner called (polled ready: {ready_before})"));
        ready(Ok((self.answer)()))
    }
}

async fn run<P: Policy<()>>(policy: P, log: &Log, answer: Answer) -> (StatusCode, HeaderMap) {
    let inner = Inner {
        ready: false,
        log: log.clone(),
        answer,
    };
    let service = PolicyService::new(inner, Arc::new(policy));
    let response = service.oneshot(Request::new(())).await.unwrap();
    let (parts, body) = response.into_parts();
    body.collect().await.unwrap();
    (parts.status, parts.headers)
}

/// A trailers-only gRPC answer with `status`.
fn grpc(status: &'static str) -> Response<http_body_util::Full<Bytes>> {
    let mut r = Response::new(http_body_util::Full::default());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static(status));
    r
}

fn accepted() -> Response<http_body_util::Full<Bytes>> {
    let mut r = Response::new(http_body_util::Full::default());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

#[tokio::test]
async fn a_chain_asks_in_order_and_a_refusal_carries_what_passed_before() {
    let log = Log::default();
    let (status, headers) = run(chain(&log, Does::Pass, Does::Pass), &log, accepted).await;
    assert_eq!(status, 202);
    assert!(headers.contains_key("x-a") && headers.contains_key("x-b"));
    assert_eq!(
        entries(&log),
        [
            "a decides",
            "b decides",
            "inner called (polled ready: true)",
            "b settled true",
            "a settled true"
        ]
    );
    // The second refuses: the first's headers are on the envelope, and it is settled as a
    // failure; the inner service is not called.
    let (status, headers) = run(chain(&log, Does::Pass, Does::Refuse), &log, accepted).await;
    assert_eq!(status, 404);
    assert!(headers.contains_key("x-a") && !headers.contains_key("x-b"));
    assert_eq!(entries(&log), ["a decides", "b decides", "a settled false"]);
    // The first refuses: the second is never asked.
    let (status, _) = run(chain(&log, Does::Refuse, Does::Pass), &log, accepted).await;
    assert_eq!(status, 404);
    assert_eq!(entries(&log), ["a decides"]);
}

#[tokio::test]
async fn waits_resume_in_order_with_the_instance_polled_ready() {
    let log = Log::default();
    let (status, headers) = run(chain(&log, Does::Wait, Does::Wait), &log, accepted).await;
    assert_eq!(status, 202);
    assert!(headers.contains_key("x-a") && headers.contains_key("x-b"));
    assert_eq!(
        entries(&log),
        [
            "a decides",
            "a resumes",
            "b decides",
            "b resumes",
            // The instance that was polled ready is the one called, after the wait.
            "inner called (polled ready: true)",
            "b settled true",
            "a settled true"
        ]
    );
}

#[tokio::test]
async fn shadow_mode_lets_every_request_through_untouched() {
    let log = Log::default();
    let shadowed = |name, does| {
        Reported::new(
            Test {
                name,
                does,
                log: log.clone(),
            },
            "test",
            true,
        )
    };
    // A refusal becomes a pass that does nothing; a pass does nothing either.
    let policy = Chain(shadowed("a", Does::Pass), shadowed("b", Does::Refuse));
    let (status, headers) = run(policy, &log, accepted).await;
    assert_eq!(status, 202);
    assert!(!headers.contains_key("x-a") && !headers.contains_key("x-b"));
    assert_eq!(
        entries(&log),
        [
            "a decides",
            "b decides",
            "inner called (polled ready: true)"
        ]
    );
    // Enforced, the same refusal is answered.
    let policy = Reported::new(
        Test {
            name: "b",
            does: Does::Refuse,
            log: log.clone(),
        },
        "test",
        false,
    );
    assert_eq!(run(policy, &log, accepted).await.0, 404);
}

#[tokio::test]
async fn a_response_is_settled_by_its_verdict() {
    let log = Log::default();
    let pass = || chain(&log, Does::Pass, Does::Pass);
    let cases: [(Answer, bool); 5] = [
        (accepted, true),
        (
            || {
                let mut r = Response::new(http_body_util::Full::default());
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            },
            false,
        ),
        (|| Response::new(http_body_util::Full::default()), true),
        (|| grpc("0"), true),
        (|| grpc("3"), false),
    ];
    for (answer, success) in cases {
        run(pass(), &log, answer).await;
        let settled: Vec<String> = entries(&log)
            .into_iter()
            .filter(|e| e.contains("settled"))
            .collect();
        assert_eq!(
            settled,
            [
                format!("b settled {success}"),
                format!("a settled {success}")
            ]
        );
    }
}
