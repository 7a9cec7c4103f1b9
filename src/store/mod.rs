//! What every store trait shares: an answer that is ready at once or comes later.

use std::fmt;

use crate::error::StoreError;

/// A store's answer: known now (an in-memory store), or a future (a database, Redis).
///
/// A ready answer lets a layer decide inside `call`, without cloning the inner service.
pub enum Answer<T, F> {
    /// The answer is known now.
    Ready(Result<T, StoreError>),
    /// The answer comes later.
    Pending(F),
}

impl<T: fmt::Debug, F> fmt::Debug for Answer<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Answer::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// What a layer does when its store fails (a backend down or slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Let the request through (rate limiting's default: an outage of the limiter's store
    /// should not become an outage of the API).
    Allow,
    /// Answer 500 `INTERNAL_ERROR` (quota enforcement's default: never give away scans).
    Reject,
}

#[cfg(feature = "redis")]
pub(crate) mod known;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
