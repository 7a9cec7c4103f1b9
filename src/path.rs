//! Path decisions: the path the client sent, and the route sets layers match it against
//! (exempt routes, the billing prefix, scan-creation routes).
//!
//! Every path decision of the crate is made on the path the client sent. Frameworks may
//! strip a prefix before a layer runs (axum's `Router::nest` and `nest_service` hand the
//! inner router `/scan` for `/api/v1/scan`); axum records the path it received as
//! `axum::extract::OriginalUri`, and with the `axum` feature every layer reads that when it
//! is there, and the request's URI otherwise.

/// The path the client sent: axum's `OriginalUri` when present, the request URI otherwise.
#[inline(always)]
pub(crate) fn client_path<B>(req: &http::Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = req.extensions().get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    req.uri().path()
}

/// A set of exact paths and path prefixes. A prefix `/a/b` matches `/a/b` and `/a/b/...`,
/// not `/a/bc`; a trailing slash on the prefix is ignored.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Routes {
    pub(crate) fn add_exact(&mut self, path: impl Into<String>) {
        self.exact.push(path.into());
    }

    pub(crate) fn add_prefix(&mut self, prefix: impl Into<String>) {
        let mut prefix = prefix.into();
        while prefix.len() > 1 && prefix.ends_with('/') {
            prefix.pop();
        }
        self.prefixes.push(prefix);
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        self.exact.iter().any(|p| p == path)
            || self.prefixes.iter().any(|p| under_prefix(path, p, false))
    }

    /// Like [`Routes::matches`] for prefixes, ignoring ASCII case: for gates where matching
    /// too much is safe and matching too little is not.
    pub(crate) fn matches_prefix_ignore_case(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| under_prefix(path, p, true))
    }
}

fn under_prefix(path: &str, prefix: &str, ignore_case: bool) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::Routes;

    #[test]
    fn prefixes_match_whole_segments() {
        let mut r = Routes::default();
        r.add_prefix("/api/v1/billing/");
        r.add_exact("/healthz");
        assert!(r.matches("/api/v1/billing"));
        assert!(r.matches("/api/v1/billing/"));
        assert!(r.matches("/api/v1/billing/checkout"));
        assert!(!r.matches("/api/v1/billingx"));
        assert!(!r.matches("/API/v1/billing"));
        assert!(r.matches_prefix_ignore_case("/API/V1/Billing/x"));
        assert!(r.matches("/healthz"));
        assert!(!r.matches("/healthz/"));
        assert!(!r.matches("/api/v1/bill"));
    }
}
