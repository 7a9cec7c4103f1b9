//! Path matching shared by the layers' route settings (exempt routes, billing prefix).

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
