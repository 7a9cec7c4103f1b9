//! [`NatBody`]: the response body of every layer, which is either the inner service's body,
//! untouched, or a rejection envelope; and a gRPC answer's body whose end settles the
//! decisions that wait for its `grpc-status`.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Finish;

/// A decision settled when a gRPC answer's body ends (boxed: only gRPC scan creations wait).
pub(crate) trait Deferred: Send {
    /// Settles the decision as [`Finish::settle`] does.
    fn settle(self: Box<Self>, success: bool) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>;
}

impl<P: Finish> Deferred for P {
    fn settle(self: Box<Self>, success: bool) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        Finish::settle(*self, success).map(|f| Box::pin(f) as Pin<Box<_>>)
    }
}

pin_project! {
    /// A response body that is the inner service's body `B` or a NAT error envelope.
    ///
    /// It keeps `B`'s data and error types (the envelope itself never fails), and passes
    /// `size_hint` and `is_end_stream` through, so stacking layers costs no boxing.
    pub struct NatBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rejection { bytes: Option<Bytes> },
        // A gRPC answer whose status comes in its trailers.
        Watched { #[pin] body: B, watch: Box<Watch> },
    }
}

/// What a watched gRPC answer settles when its body ends, and where it stands.
struct Watch {
    // Not settled yet.
    deferred: Option<Box<dyn Deferred>>,
    state: Watching,
    // Rewrites the message of an `INTERNAL` or `UNKNOWN` status in the trailers (an inner
    // error's text must not reach the client).
    scrub: bool,
}

impl Drop for Watch {
    /// The body dropped before its end: the client went away (or reset the stream) while
    /// the answer streamed. The server had answered with a success so far, so the decision
    /// is settled as one, as for a REST answer the client stops reading: otherwise a client
    /// could start a scan and cancel it to run it uncharged and without a slot.
    fn drop(&mut self) {
        if let Some(deferred) = self.deferred.take() {
            drop(deferred.settle(true));
        }
    }
}

enum Watching {
    /// Passing data frames, waiting for the trailers or the end.
    Body,
    /// Settling; then the trailers (or the end) go out.
    Settling(
        Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        Option<HeaderMap>,
    ),
    /// Settled: the rest of the body passes as it is.
    Passing,
    /// Settled at the end of the body.
    Ended,
}

impl<B> NatBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A gRPC answer's body, whose end settles `deferred` (success when its trailers say
    /// `grpc-status: 0`; a failure when they say anything else, when it ends without them,
    /// fails, or is dropped before its end).
    pub(crate) fn watched(body: B, deferred: Box<dyn Deferred>) -> Self {
        Self {
            kind: Kind::Watched {
                body,
                watch: Box::new(Watch {
                    deferred: Some(deferred),
                    state: Watching::Body,
                    scrub: false,
                }),
            },
        }
    }

    /// The same body, with the message of an `INTERNAL` or `UNKNOWN` gRPC status in its
    /// trailers rewritten to the envelope's generic one.
    pub(crate) fn scrubbed(self) -> Self {
        let kind = match self.kind {
            Kind::Inner { body } => Kind::Watched {
                body,
                watch: Box::new(Watch {
                    deferred: None,
                    state: Watching::Body,
                    scrub: true,
                }),
            },
            Kind::Watched { body, mut watch } => {
                watch.scrub = true;
                Kind::Watched { body, watch }
            }
            kind @ Kind::Rejection { .. } => kind,
        };
        Self { kind }
    }

    /// A rejection envelope's bytes; none for a gRPC refusal, whose status is in its
    /// headers: that body is at its end from the start, so the answer goes out as one
    /// `HEADERS` frame with `END_STREAM` (trailers-only), which every gRPC client reads. An
    /// empty `DATA` frame after the headers would make the answer malformed: gRPC's C, Go
    /// and Java clients then report `UNKNOWN` or `INTERNAL` instead of the status.
    pub(crate) fn rejection(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Rejection {
                bytes: Some(bytes).filter(|b| !b.is_empty()),
            },
        }
    }

    /// The same rejection envelope as a body of another inner type (a rejection has no
    /// inner body; an inner body, which never comes here, becomes an empty envelope).
    pub(crate) fn retype<C>(self) -> NatBody<C> {
        match self.kind {
            Kind::Rejection { bytes } => NatBody {
                kind: Kind::Rejection { bytes },
            },
            Kind::Inner { .. } | Kind::Watched { .. } => NatBody::rejection(Bytes::new()),
        }
    }

    /// Whether this body is a rejection written by a layer of this crate.
    pub fn is_rejection(&self) -> bool {
        matches!(self.kind, Kind::Rejection { .. })
    }
}

impl<B> Body for NatBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rejection { bytes } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b.into()))))
            }
            KindProj::Watched { mut body, watch } => loop {
                match &mut watch.state {
                    Watching::Body => {
                        let (success, trailers) = match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => match frame.into_trailers() {
                                Ok(mut trailers) => {
                                    let ok = trailers
                                        .get(crate::grpc::GRPC_STATUS)
                                        .is_some_and(|status| status == "0");
                                    if watch.scrub {
                                        crate::grpc::scrub(&mut trailers);
                                    }
                                    (ok, Some(trailers))
                                }
                                Err(data) => return Poll::Ready(Some(Ok(data))),
                            },
                            // A body error: the call failed. The error goes out now; the
                            // decision, dropped, settles in the background as a failure.
                            Some(Err(error)) => {
                                watch.deferred = None;
                                watch.state = Watching::Passing;
                                return Poll::Ready(Some(Err(error)));
                            }
                            // The end without trailers: no status, so no success.
                            None => (false, None),
                        };
                        let settling = watch.deferred.take().and_then(|d| d.settle(success));
                        watch.state = Watching::Settling(settling, trailers);
                    }
                    Watching::Settling(settling, trailers) => {
                        if let Some(settling) = settling {
                            ready!(settling.as_mut().poll(cx));
                        }
                        let trailers = trailers.take();
                        watch.state = if trailers.is_some() {
                            Watching::Passing
                        } else {
                            Watching::Ended
                        };
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Watching::Passing => return body.poll_frame(cx),
                    Watching::Ended => return Poll::Ready(None),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { bytes } => bytes.is_none(),
            // Its end must be polled, to settle.
            Kind::Watched { body, watch } => match watch.state {
                Watching::Passing => body.is_end_stream(),
                Watching::Ended => true,
                Watching::Body | Watching::Settling(..) => false,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Watched { body, .. } => body.size_hint(),
            Kind::Rejection { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for NatBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { body } => f.debug_tuple("NatBody::Inner").field(body).finish(),
            Kind::Watched { body, .. } => f.debug_tuple("NatBody::Watched").field(body).finish(),
            Kind::Rejection { bytes } => f
                .debug_tuple("NatBody::Rejection")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
