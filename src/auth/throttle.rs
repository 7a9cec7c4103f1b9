//! Throttling of failed authentication by client address.

use std::{
    fmt,
    hash::BuildHasher,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use http::{HeaderMap, Request, header::FORWARDED};

/// The address of the peer a request came from, for servers that are not axum (axum's
/// `ConnectInfo<SocketAddr>` is read as well with the `axum` feature). Put it into each
/// request's extensions where the connection is accepted; the hyper example shows how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address), for trusted proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNetError(String);

impl fmt::Display for IpNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IP network: {:?}", self.0)
    }
}

impl std::error::Error for IpNetError {}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpNetError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }
}

impl IpNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let (ip, ip_len) = bits(ip.to_canonical());
        let (net, net_len) = bits(self.addr.to_canonical());
        if ip_len != net_len {
            return false;
        }
        let host_bits = u32::from(net_len - self.prefix.min(net_len));
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        ip & mask == net & mask
    }
}

/// How failed authentication is throttled: at most `limit` failures per `period` for one
/// client address (a GCRA over failures: one more every `period / limit`).
#[derive(Clone)]
pub(crate) struct Throttle {
    limit: u32,
    /// `period / limit`, in milliseconds.
    interval: u64,
    /// `period - interval`: how far ahead the next allowed failure may be and still pass.
    tolerance: u64,
    trusted: Vec<IpNet>,
    table: std::sync::Arc<Table>,
}

/// Slots of 64 bits: a 16-bit tag of the address, and the theoretical arrival time of its next
/// failure in milliseconds since the Unix epoch (48 bits). Fixed size, so memory is bounded;
/// an address whose time has passed holds nothing and its slot is reused.
struct Table {
    slots: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
}

const SLOTS: usize = 1 << 13;
const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

impl Throttle {
    pub(crate) fn new(limit: u32, period: Duration) -> Self {
        let limit = limit.max(1);
        let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let interval = (period / u64::from(limit)).max(1);
        Self {
            limit,
            interval,
            tolerance: period.saturating_sub(interval),
            trusted: Vec::new(),
            table: std::sync::Arc::new(Table {
                slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
                hasher: foldhash::fast::RandomState::default(),
            }),
        }
    }

    pub(crate) fn trust(&mut self, proxies: impl IntoIterator<Item = IpNet>) {
        self.trusted.extend(proxies);
    }

    pub(crate) fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// The client's address: the peer's, or behind trusted proxies the right-most address of
    /// `X-Forwarded-For` (or `Forwarded`) that is not a trusted proxy.
    pub(crate) fn client<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = peer(req)?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        Some(self.forwarded_client(req.headers()).unwrap_or(peer))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let xff: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let hops: Vec<IpAddr> = if xff.is_empty() {
            headers
                .get_all(FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect()
        } else {
            xff.iter()
                .map(|hop| hop.trim().parse().ok())
                .collect::<Option<_>>()?
        };
        let mut last = None;
        for hop in hops.into_iter().rev() {
            let hop = hop.to_canonical();
            if !self.is_trusted(hop) {
                return Some(hop);
            }
            last = Some(hop);
        }
        last
    }

    fn slots(&self, ip: IpAddr) -> (u64, [usize; 2]) {
        let hash = self.table.hasher.hash_one(ip);
        let tag = (hash >> 48) | 1;
        let first = (hash as usize) & (SLOTS - 1);
        let second = ((hash >> 16) as usize) & (SLOTS - 1);
        (tag, [first, second])
    }

    /// How long `ip` must wait before its requests are looked up again, if it must. The
    /// clock is read only for an address that has failed lately.
    #[inline]
    pub(crate) fn wait(&self, ip: IpAddr, now: impl FnOnce() -> Duration) -> Option<Duration> {
        let (tag, slots) = self.slots(ip);
        for i in slots {
            let slot = self.table.slots[i].load(Ordering::Acquire);
            if slot >> TAT_BITS == tag {
                let now = millis(now());
                let tat = slot & TAT_MASK;
                let ahead = tat.saturating_sub(now);
                return (ahead > self.tolerance)
                    .then(|| Duration::from_millis(ahead - self.tolerance));
            }
        }
        None
    }

    /// Counts one failed authentication of `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Duration) {
        let now = millis(now);
        let (tag, slots) = self.slots(ip);
        let table = &self.table.slots;
        loop {
            let seen = slots.map(|i| table[i].load(Ordering::Acquire));
            // Its own slot, else a free one (time passed), else the one closest to free.
            let pick = (0..2)
                .find(|&j| seen[j] >> TAT_BITS == tag)
                .or_else(|| (0..2).find(|&j| seen[j] & TAT_MASK <= now))
                .unwrap_or(usize::from(seen[1] & TAT_MASK < seen[0] & TAT_MASK));
            let mine = seen[pick] >> TAT_BITS == tag;
            let tat = if mine {
                (seen[pick] & TAT_MASK).max(now)
            } else {
                now
            };
            let next = (tat + self.interval).min(TAT_MASK) | (tag << TAT_BITS);
            if table[slots[pick]]
                .compare_exchange(seen[pick], next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX) & TAT_MASK
}

/// The peer address a server put into the request.
#[inline]
fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
    let extensions = req.extensions();
    if let Some(ClientAddr(addr)) = extensions.get::<ClientAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    None
}

/// The address in one element of a `Forwarded` header (`for=192.0.2.1`,
/// `for="[2001:db8::1]:4711"`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim_matches('"');
        if let Some(v6) = value.strip_prefix('[') {
            return v6.split(']').next()?.parse().ok();
        }
        value
            .parse()
            .ok()
            .or_else(|| value.parse::<SocketAddr>().ok().map(|a| a.ip()))
    })
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("limit", &self.limit)
            .field("interval_ms", &self.interval)
            .field("trusted", &self.trusted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "2001:db8::1".parse().unwrap();
        assert!(one.contains("2001:db8::1".parse().unwrap()));
        assert!(!one.contains("2001:db8::2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn twenty_failures_a_minute_then_one_every_three_seconds() {
        let t = Throttle::new(20, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let now = Duration::from_secs(1_800_000_000);
        for _ in 0..20 {
            assert_eq!(t.wait(ip, || now), None);
            t.failed(ip, now);
        }
        assert_eq!(t.wait(ip, || now), Some(Duration::from_secs(3)));
        assert_eq!(t.wait(other, || now), None);
        let later = now + Duration::from_millis(2999);
        assert_eq!(t.wait(ip, || later), Some(Duration::from_millis(1)));
        assert_eq!(t.wait(ip, || now + Duration::from_secs(3)), None);
        // A minute of quiet forgets everything.
        let quiet = now + Duration::from_secs(60);
        for _ in 0..20 {
            assert_eq!(t.wait(ip, || quiet), None);
            t.failed(ip, quiet);
        }
        assert!(t.wait(ip, || quiet).is_some());
    }

    #[test]
    fn forwarded_addresses_are_read_right_to_left_past_trusted_proxies() {
        let mut t = Throttle::new(20, Duration::from_secs(60));
        t.trust(["10.0.0.0/8".parse().unwrap()]);
        let req = |peer: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let mut req = b.body(()).unwrap();
            req.extensions_mut()
                .insert(ClientAddr(SocketAddr::new(peer.parse().unwrap(), 1)));
            req
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // An untrusted peer's headers are ignored.
        let r = req("203.0.113.9", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(t.client(&r), ip("203.0.113.9"));
        // Behind a trusted proxy: the right-most untrusted hop (the left one is the
        // client's own claim).
        let r = req(
            "10.0.0.1",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.2.2.2")],
        );
        assert_eq!(t.client(&r), ip("198.51.100.4"));
        let r = req(
            "10.0.0.1",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::9]:4711\";proto=https",
            )],
        );
        assert_eq!(t.client(&r), ip("2001:db8::9"));
        // Garbage in the header: the proxy's address.
        let r = req("10.0.0.1", &[("x-forwarded-for", "not an address")]);
        assert_eq!(t.client(&r), ip("10.0.0.1"));
        // No address at all: nothing to throttle by.
        assert_eq!(t.client(&Request::new(())), None);
    }
}
