//! API keys: their format, generation and one-way hash.

use std::{
    fmt,
    hash::{BuildHasherDefault, Hasher},
};

use sha2::{Digest, Sha256};

/// The prefix of NAT API keys, and of [`KeyFormat::default`].
pub const KEY_PREFIX: &str = "nat_pk_";

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The digits of a checksum, in base-62 order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters of a checksum: a CRC-32 in base 62, zero-padded (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;

/// Random characters after the prefix in keys made by [`ApiKey::generate`] (about 190 bits).
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

/// How many characters after the prefix `Debug` and logs may show.
const SHOWN: usize = 4;

/// An API key in clear text, as handed to its owner once.
///
/// `Debug` shows the prefix and four characters only; the whole key is only reachable through
/// [`ApiKey::expose`]. Stores keep [`KeyHash`]es, never `ApiKey`s.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    key: String,
    /// How many leading bytes are safe to show: the prefix and four characters.
    shown: usize,
}

impl ApiKey {
    /// A new random key of the default format: `nat_pk_` and 32 characters from
    /// `[A-Za-z0-9]`, drawn from the operating system's random source. Keys of another format
    /// come from [`KeyFormat::generate`].
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn generate() -> Self {
        KeyFormat::default().generate()
    }

    /// Takes a key in clear text (e.g. a fixed demo key), if it has the default format.
    /// [`KeyFormat::parse`] takes keys of another format.
    pub fn parse(key: &str) -> Option<Self> {
        KeyFormat::default().parse(key)
    }

    /// The whole key. Hand it to its owner; never log it.
    pub fn expose(&self) -> &str {
        &self.key
    }

    /// The key's one-way hash, as stores keep it.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.key.as_bytes())
    }

    /// The part of the key that is safe to show: the prefix and four characters.
    pub fn redacted(&self) -> &str {
        &self.key[..self.shown.min(self.key.len())]
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

/// The shape a key must have before it is hashed or looked up.
///
/// A key is a prefix (by default `nat_pk_`), then a number of `[A-Za-z0-9]` characters within
/// a range (by default exactly 32), then, if the format has a checksum, six more characters: the
/// CRC-32 of everything before them, in base 62 (`0-9A-Za-z`, zero-padded), as GitHub's tokens
/// carry. Anything else (whitespace, other bytes, a truncated or oversized key, a wrong
/// checksum) is refused before any hashing or lookup, in time independent of where it differs.
///
/// A checksum lets a server refuse mistyped or made-up keys without a store query, and lets
/// secret scanners recognise a leaked key with few false positives. It adds no secrecy: the
/// random characters carry it (32 of them are about 190 bits).
///
/// ```
/// use tower_nat::auth::KeyFormat;
///
/// let format = KeyFormat::default().prefix("acme_live_").checksum(true);
/// let key = format.generate();
/// assert!(key.expose().starts_with("acme_live_"));
/// assert_eq!(key.expose().len(), "acme_live_".len() + 32 + 6);
/// assert!(format.check(key.expose().as_bytes()));
///
/// // One character changed: refused before it is hashed.
/// let mut typo = key.expose().to_owned();
/// let c = if typo.ends_with('0') { "1" } else { "0" };
/// typo.replace_range(typo.len() - 1.., c);
/// assert!(!format.check(typo.as_bytes()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Box<str>,
    min_len: usize,
    max_len: usize,
    checksum: bool,
}

impl Default for KeyFormat {
    /// `nat_pk_` and exactly 32 characters, no checksum: NAT's keys.
    fn default() -> Self {
        Self {
            prefix: KEY_PREFIX.into(),
            min_len: GENERATED_KEY_LEN,
            max_len: GENERATED_KEY_LEN,
            checksum: false,
        }
    }
}

impl KeyFormat {
    /// Keys with `min_len..=max_len` random characters after the prefix `nat_pk_`.
    ///
    /// # Panics
    /// If `min_len` is 0 or greater than `max_len`, or `max_len` is over 256.
    pub fn new(min_len: usize, max_len: usize) -> Self {
        assert!(
            min_len >= 1 && min_len <= max_len && max_len <= 256,
            "invalid key length range"
        );
        Self {
            min_len,
            max_len,
            ..Self::default()
        }
    }

    /// Keys start with `prefix` instead of `nat_pk_`.
    ///
    /// # Panics
    /// If `prefix` is empty, longer than 32 bytes, or holds anything but visible ASCII
    /// characters.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        assert!(
            !prefix.is_empty()
                && prefix.len() <= 32
                && prefix.bytes().all(|b| b.is_ascii_graphic()),
            "a key prefix is 1 to 32 visible ASCII characters"
        );
        self.prefix = prefix.into();
        self
    }

    /// Keys end with a six-character checksum (see the type's docs), or not.
    #[must_use]
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }

    /// The prefix keys start with.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether keys end with a checksum.
    pub fn has_checksum(&self) -> bool {
        self.checksum
    }

    /// A new random key of this format: the prefix, 32 random characters (or the nearest
    /// length the range allows) and the checksum if the format has one.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn generate(&self) -> ApiKey {
        let len = GENERATED_KEY_LEN.clamp(self.min_len, self.max_len);
        let mut key = String::with_capacity(self.prefix.len() + len + CHECKSUM_LEN);
        key.push_str(&self.prefix);
        let end = self.prefix.len() + len;
        let mut buf = [0u8; 64];
        while key.len() < end {
            getrandom::fill(&mut buf).expect("the operating system's random source failed");
            // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
            for b in buf.iter().filter(|b| **b < 248) {
                if key.len() == end {
                    break;
                }
                key.push(char::from(ALPHABET[usize::from(*b % 62)]));
            }
        }
        if self.checksum {
            let sum = checksum(key.as_bytes());
            key.extend(sum.iter().map(|b| char::from(*b)));
        }
        ApiKey {
            key,
            shown: self.prefix.len() + SHOWN,
        }
    }

    /// Takes a key in clear text, if it has this format.
    pub fn parse(&self, key: &str) -> Option<ApiKey> {
        self.check(key.as_bytes()).then(|| ApiKey {
            key: key.to_owned(),
            shown: self.prefix.len() + SHOWN,
        })
    }

    /// Whether `key` has this format (and, if the format has one, the right checksum).
    pub fn check(&self, key: &[u8]) -> bool {
        let tail = if self.checksum { CHECKSUM_LEN } else { 0 };
        let len = key.len().wrapping_sub(self.prefix.len()).wrapping_sub(tail);
        if !(self.min_len..=self.max_len).contains(&len) {
            return false;
        }
        let (prefix, rest) = key.split_at(self.prefix.len());
        // One table lookup per byte, folded without early exits: the hot path of every
        // request, and no timing difference between where a bad byte sits.
        let ok = prefix == self.prefix.as_bytes()
            && rest.iter().fold(true, |ok, b| ok & ALNUM[usize::from(*b)]);
        if !self.checksum || !ok {
            return ok;
        }
        let (signed, sum) = key.split_at(key.len() - CHECKSUM_LEN);
        checksum(signed) == sum
    }
}

/// The CRC-32 of `bytes` as six base-62 digits, most significant first.
fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(bytes);
    let mut out = [b'0'; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Hashes a [`KeyHash`] by its first eight bytes. A SHA-256 output is already uniform, and
/// only the server inserts keys, so no client can crowd a bucket: hashing it again would be
/// wasted work on every request.
#[derive(Default)]
pub(crate) struct HashWords(u64);

impl Hasher for HashWords {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The hasher of maps keyed by [`KeyHash`].
pub(crate) type HashOfHash = BuildHasherDefault<HashWords>;

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
    fn checksums_are_crc32_in_base62() {
        // The CRC-32 check value: CRC-32 of "123456789" is 0xCBF43926, "3jZRME" in base 62.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(checksum(b"123456789"), *b"3jZRME");
        assert_eq!(checksum(b""), *b"000000");
    }

    #[test]
    fn checksummed_keys_refuse_every_single_character_change() {
        let format = KeyFormat::default().checksum(true);
        let key = format.generate();
        let bytes = key.expose().as_bytes();
        assert_eq!(bytes.len(), 7 + 32 + 6);
        assert!(format.check(bytes));
        assert!(!KeyFormat::default().check(bytes));
        for i in KEY_PREFIX.len()..bytes.len() {
            for c in ALPHABET.iter().filter(|c| **c != bytes[i]) {
                let mut changed = bytes.to_vec();
                changed[i] = *c;
                assert!(!format.check(&changed), "{i} {c}");
            }
        }
    }

    #[test]
    fn custom_prefixes_are_redacted_after_the_prefix() {
        let format = KeyFormat::new(20, 40).prefix("acme_");
        let key = format.generate();
        assert_eq!(key.expose().len(), 5 + 32);
        assert_eq!(key.redacted(), &key.expose()[..9]);
        assert!(format.parse(key.expose()).is_some());
        assert!(format.parse(&key.expose()[1..]).is_none());
        assert!(!format.check(b"nat_pk_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"));
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
