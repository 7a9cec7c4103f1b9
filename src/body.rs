//! [`NatBody`]: the response body of every layer, which is either the inner service's body,
//! untouched, or a rejection envelope.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

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
    }
}

impl<B> NatBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A rejection envelope's bytes.
    pub(crate) fn rejection(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Rejection { bytes: Some(bytes) },
        }
    }

    /// The same rejection envelope as a body of another inner type (a rejection has no
    /// inner body; an inner body, which never comes here, becomes an empty envelope).
    pub(crate) fn retype<C>(self) -> NatBody<C> {
        match self.kind {
            Kind::Rejection { bytes } => NatBody {
                kind: Kind::Rejection { bytes },
            },
            Kind::Inner { .. } => NatBody::rejection(Bytes::new()),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
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
            Kind::Rejection { bytes } => f
                .debug_tuple("NatBody::Rejection")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

/// Maps a response's body into [`NatBody`].
pub(crate) fn wrap<B>(response: http::Response<B>) -> http::Response<NatBody<B>> {
    response.map(NatBody::new)
}
