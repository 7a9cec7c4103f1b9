//! [`RequestBody`]: a request body that can be rebuilt from bytes once read.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Body;
use pin_project_lite::pin_project;

pin_project! {
    /// A request body that is either the server's own streaming body `B` or bytes that were
    /// read already. It is buildable from [`Bytes`], so servers whose body type is not (hyper's
    /// `Incoming`) can map their requests into it before [`ValidateScanRequest`](super::ValidateScanRequest):
    /// `req.map(RequestBody::new)`.
    pub struct RequestBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Streaming { #[pin] body: B },
        Buffered { bytes: Option<Bytes> },
    }
}

impl<B> RequestBody<B> {
    /// Wraps a streaming body.
    pub fn new(body: B) -> Self {
        Self {
            kind: BodyKind::Streaming { body },
        }
    }
}

impl<B> From<Bytes> for RequestBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Buffered { bytes: Some(bytes) },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Streaming { body } => body.poll_frame(cx),
            BodyKindProj::Buffered { bytes } => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(http_body::Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Streaming { body } => body.is_end_stream(),
            BodyKind::Buffered { bytes } => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Streaming { body } => body.size_hint(),
            BodyKind::Buffered { bytes } => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
            BodyKind::Buffered { bytes } => f
                .debug_tuple("RequestBody::Buffered")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
