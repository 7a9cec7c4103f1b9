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

/// A route path as axum writes it: literal segments, `{name}` for any one non-empty
/// segment, and `{*name}` last for the rest of the path (at least one character). A path of
/// literal segments only matches exactly that path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Segments(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl Pattern {
    pub(crate) fn new(path: &str) -> Self {
        if !path.contains('{') {
            return Pattern::Exact(path.to_owned());
        }
        let segments = path
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if name.starts_with('*') => Segment::Rest,
                    Some(_) => Segment::Param,
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect();
        Pattern::Segments(segments)
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        let segments = match self {
            Pattern::Exact(exact) => return exact == path,
            Pattern::Segments(segments) => segments,
        };
        let mut parts = path.split('/');
        for segment in segments {
            match segment {
                Segment::Rest => return parts.any(|p| !p.is_empty()),
                Segment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(literal) => {
                    if parts.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// A set of route paths ([`Pattern`]s) and path prefixes. A prefix `/a/b` matches `/a/b` and
/// `/a/b/...`, not `/a/bc`; a trailing slash on the prefix is ignored.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    exact: Vec<Pattern>,
    prefixes: Vec<String>,
}

impl Routes {
    pub(crate) fn add_exact(&mut self, path: impl Into<String>) {
        self.exact.push(Pattern::new(&path.into()));
    }

    pub(crate) fn add_prefix(&mut self, prefix: impl Into<String>) {
        let mut prefix = prefix.into();
        while prefix.len() > 1 && prefix.ends_with('/') {
            prefix.pop();
        }
        self.prefixes.push(prefix);
    }

    /// Whether no path is in the set (nothing to match: the path need not be read).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        self.exact.iter().any(|p| p.matches(path))
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
    use super::{Pattern, Routes};

    #[test]
    fn patterns_match_as_axum_routes_do() {
        let p = Pattern::new("/api/v1/projects/{id}/scans");
        assert!(p.matches("/api/v1/projects/7/scans"));
        for path in [
            "/api/v1/projects//scans",
            "/api/v1/projects/7/scans/",
            "/api/v1/projects/7",
            "/api/v1/projects/7/scans/x",
            "/api/v1/projects/7/scan",
        ] {
            assert!(!p.matches(path), "{path}");
        }
        let rest = Pattern::new("/files/{*path}");
        assert!(rest.matches("/files/a") && rest.matches("/files/a/b/c"));
        assert!(!rest.matches("/files/") && !rest.matches("/files"));
        let exact = Pattern::new("/healthz");
        assert!(exact.matches("/healthz") && !exact.matches("/healthz/"));
    }

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
