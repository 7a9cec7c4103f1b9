//! API keys: their format, generation and one-way hash.

use std::fmt;

use sha2::{Digest, Sha256};

/// The prefix every NAT API key starts with.
pub const KEY_PREFIX: &str = "nat_pk_";

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Characters after the prefix in keys made by [`ApiKey::generate`] (about 190 bits).
pub const GENERATED_KEY_LEN: usize = 32;

/// `ALNUM[b]`: whether byte `b` is in `[A-Za-z0-9]`.
static ALNUM: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    table
};

/// How many characters of a key `Debug` and logs may show: the prefix and four more.
const SHOWN: usize = KEY_PREFIX.len() + 4;

/// An API key in clear text, as handed to its owner once.
///
/// `Debug` shows the prefix and four characters only; the whole key is only reachable through
/// [`ApiKey::expose`]. Stores keep [`KeyHash`]es, never `ApiKey`s.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A new random key: `nat_pk_` and 32 characters from `[A-Za-z0-9]`, drawn from the
    /// operating system's random source.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn generate() -> Self {
        let mut key = String::with_capacity(KEY_PREFIX.len() + GENERATED_KEY_LEN);
        key.push_str(KEY_PREFIX);
        let mut buf = [0u8; 64];
        while key.len() < KEY_PREFIX.len() + GENERATED_KEY_LEN {
            getrandom::fill(&mut buf).expect("the operating system's random source failed");
            // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
            for b in buf.iter().filter(|b| **b < 248) {
                if key.len() == KEY_PREFIX.len() + GENERATED_KEY_LEN {
                    break;
                }
                key.push(char::from(ALPHABET[usize::from(*b % 62)]));
            }
        }
        Self(key)
    }

    /// Takes a key in clear text (e.g. a fixed demo key), if it has the default format.
    pub fn parse(key: &str) -> Option<Self> {
        KeyFormat::default()
            .check(key.as_bytes())
            .then(|| Self(key.to_owned()))
    }

    /// The whole key. Hand it to its owner; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key's one-way hash, as stores keep it.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }

    /// The part of the key that is safe to show: the prefix and four characters.
    pub fn redacted(&self) -> &str {
        &self.0[..SHOWN.min(self.0.len())]
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(\"{}…\")", self.redacted())
    }
}

/// The SHA-256 hash of an API key: what stores keep and look keys up by.
///
/// Keys carry about 190 random bits, so a fast hash is enough (no password stretching), and
/// looking a hash up leaks nothing useful through timing: finding a key from its hash is a
/// preimage search.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key`'s bytes.
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from its 32 bytes (e.g. read back from a database).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// A hash from 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

/// The shape a key must have before it is hashed or looked up: `nat_pk_` followed by a number
/// of `[A-Za-z0-9]` characters within a range. Anything else (whitespace, other bytes, a
/// truncated or oversized key) is rejected at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    min_len: usize,
    max_len: usize,
}

impl Default for KeyFormat {
    /// Exactly 32 characters after the prefix, as [`ApiKey::generate`] makes them.
    fn default() -> Self {
        Self {
            min_len: GENERATED_KEY_LEN,
            max_len: GENERATED_KEY_LEN,
        }
    }
}

impl KeyFormat {
    /// Keys with `min_len..=max_len` characters after the prefix.
    ///
    /// # Panics
    /// If `min_len` is 0 or greater than `max_len`, or `max_len` is over 256.
    pub fn new(min_len: usize, max_len: usize) -> Self {
        assert!(
            min_len >= 1 && min_len <= max_len && max_len <= 256,
            "invalid key length range"
        );
        Self { min_len, max_len }
    }

    /// Whether `key` has this format.
    pub fn check(&self, key: &[u8]) -> bool {
        let len = key.len().wrapping_sub(KEY_PREFIX.len());
        if !(self.min_len..=self.max_len).contains(&len) {
            return false;
        }
        let (prefix, body) = key.split_at(KEY_PREFIX.len());
        // One table lookup per byte, folded without early exits: the hot path of every
        // request, and no timing difference between where a bad byte sits.
        prefix == KEY_PREFIX.as_bytes()
            && body.iter().fold(true, |ok, b| ok & ALNUM[usize::from(*b)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_format_and_differ() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert!(KeyFormat::default().check(k.expose().as_bytes()));
            assert_eq!(k.expose().len(), 39);
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::parse("nat_pk_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(\"nat_pk_ABCD…\")");
        assert!(!format!("{:?}", key.hash()).contains("EFGH"));
    }

    #[test]
    fn hex_round_trip() {
        let h = KeyHash::of(b"nat_pk_x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        // SHA-256 of the empty string.
        assert_eq!(
            KeyHash::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn format_rejects_malformed_keys() {
        let f = KeyFormat::default();
        let good = "nat_pk_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        assert!(f.check(good.as_bytes()));
        for bad in [
            "",
            "nat_pk_",
            &good[..good.len() - 1],
            &format!("{good}6"),
            &format!(" {good}"),
            &format!("{good} "),
            &good.replace("nat_pk_", "NAT_PK_"),
            &good.replace("nat_pk_", "nat_sk_"),
            &good.replace('A', "-"),
        ] {
            assert!(!f.check(bad.as_bytes()), "{bad:?}");
        }
    }
}
