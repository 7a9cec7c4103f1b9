//! Header names the crate writes, and cheap integer header values.

use std::sync::OnceLock;

use http::{HeaderName, HeaderValue};

/// `X-API-Key`: the only header that carries an API key.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// `X-RateLimit-Limit`: the tenant's requests per minute.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: how many more requests, sent at once, would pass.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `RateLimit` (IETF draft 09): `"default";r=R;t=S`, the remaining requests and the seconds
/// until a full burst is back.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (IETF draft 09): `"default";q=L;w=60`, the limit a minute.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

const CACHED: usize = 4096;

/// `n` as a header value. Values below 4096 are clones from one table of ready values (made
/// once): a clone of a static value costs neither an allocation, nor a reference count, nor
/// the byte-by-byte check that building a value from text makes.
pub(crate) fn number(n: u64) -> HeaderValue {
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    match usize::try_from(n) {
        Ok(i) if i < CACHED => {
            let table = TABLE.get_or_init(|| {
                let mut text = String::new();
                let mut ends = Vec::with_capacity(CACHED);
                for k in 0..CACHED {
                    text.push_str(&k.to_string());
                    ends.push(text.len());
                }
                // One allocation for the life of the process, about 15 KiB.
                let text: &'static str = Box::leak(text.into_boxed_str());
                let mut start = 0;
                ends.into_iter()
                    .map(|end| {
                        let s = &text[start..end];
                        start = end;
                        HeaderValue::from_static(s)
                    })
                    .collect()
            });
            table[i].clone()
        }
        _ => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_render_in_decimal() {
        for n in [0, 1, 9, 10, 4095, 4096, 1_000_000, u64::MAX] {
            assert_eq!(super::number(n).to_str().unwrap(), n.to_string());
        }
    }
}
