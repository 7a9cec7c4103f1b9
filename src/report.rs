//! How the crate reports what it does through `tracing` (target `tower_nat`).
//!
//! - A refusal a client caused (401, 400, 402, 403, 404, 429, 503) is a `DEBUG` event: a
//!   flood of bad keys must not become a flood of logs.
//! - A failure of the server (a 500, a store error, a panic) is an `ERROR` event, sampled:
//!   at most [`BURST`] events of each kind a second, the next one after a quiet spell saying
//!   how many were left out (`suppressed`).
//! - Keys are never part of any event; a store error is written with its whole chain of
//!   causes.

use std::{
    error::Error,
    fmt::Write as _,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Events of one kind let through each second before the rest are counted instead.
pub(crate) const BURST: u64 = 5;

/// Lets [`BURST`] events a second through and counts the others.
pub(crate) struct Sampler {
    // Second (since the first event) and events in it, packed: second << 16 | count.
    window: AtomicU64,
    suppressed: AtomicU64,
}

fn seconds() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

impl Sampler {
    pub(crate) const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last event)` when this event may be written.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = seconds();
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, count) = (current >> 16, current & 0xffff);
            let next = if second == now {
                if count >= BURST {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                (now << 16) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }
}

/// A rejection by `layer`: `DEBUG`, or a sampled `ERROR` for a 500.
pub(crate) fn rejection(code: &str, status: u16, tenant: Option<&str>, layer: &str, reason: &str) {
    static INTERNAL: Sampler = Sampler::new();
    if status >= 500 && status != 503 {
        if let Some(suppressed) = INTERNAL.admit() {
            tracing::error!(target: "tower_nat", code, status, tenant, layer, reason, suppressed, "request failed");
        }
    } else {
        tracing::debug!(target: "tower_nat", code, status, tenant, layer, reason, "request rejected");
    }
}

/// A failure of `what` (a store, the inner service): a sampled `ERROR` with the error's
/// whole chain.
pub(crate) fn failure(what: &'static str, error: &(dyn Error + 'static)) {
    static FAILURES: Sampler = Sampler::new();
    if let Some(suppressed) = FAILURES.admit() {
        tracing::error!(target: "tower_nat", what, error = %chain(error), suppressed, "failure");
    }
}

/// `error` and its causes, `: `-separated; a cause whose text the chain already ends with
/// (an error that prints its source and also returns it) is written once.
pub(crate) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_counts() {
        let sampler = Sampler::new();
        let admitted = (0..20).filter_map(|_| sampler.admit()).count() as u64;
        // Within one second (a slow machine may straddle two).
        assert!((BURST..=2 * BURST).contains(&admitted), "{admitted}");
    }

    /// An error with a source, as `StoreError` is.
    #[derive(Debug)]
    struct Wrapping<E>(E);

    impl<E> std::fmt::Display for Wrapping<E> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("store error")
        }
    }

    impl<E: Error + 'static> Error for Wrapping<E> {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chains_are_written_once_each() {
        let io = std::io::Error::other("connection refused");
        assert_eq!(chain(&Wrapping(io)), "store error: connection refused");
    }

    /// An error that prints its source and also returns it (as the `redis` crate's do).
    #[derive(Debug)]
    struct Echoing(std::io::Error);

    impl std::fmt::Display for Echoing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "io: {}", self.0)
        }
    }

    impl Error for Echoing {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        let echoing = Echoing(std::io::Error::other("connection refused"));
        assert_eq!(
            chain(&Wrapping(echoing)),
            "store error: io: connection refused"
        );
    }
}
