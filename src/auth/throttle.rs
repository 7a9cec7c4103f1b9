//! Throttling of failed authentication by client address.

use std::{
    fmt,
    hash::BuildHasher,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::Duration,
};

use dashmap::DashMap;
use http::{HeaderMap, Request, header::FORWARDED};

use super::key::{HashOfHash, KeyHash};

/// The address of the peer a request came from, for servers that are not axum (axum's
/// `ConnectInfo<SocketAddr>` is read as well with the `axum` feature). Put it into each
/// request's extensions where the connection is accepted; the hyper example shows how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`; one address is `/32` or `/128`, or
/// `IpNet::from(addr)`), for trusted proxies: the [`ipnet`] crate's.
pub use ipnet::IpNet;

/// Why a string is not an [`IpNet`].
pub use ipnet::AddrParseError as IpNetError;

/// Whether `net` holds `ip` (an IPv4 address mapped into IPv6 counts as the IPv4 one).
fn holds(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
}

/// How failed authentication is throttled: at most `limit` failures per `period` for one
/// client address (a GCRA over failures: one more every `period / limit`). IPv6 addresses
/// count by their network (a /64 by default): one host has a whole /64 to pick from.
#[derive(Clone)]
pub(crate) struct Throttle {
    limit: u32,
    /// `period / limit`, in milliseconds.
    interval: u64,
    /// `period - interval`: how far ahead the next allowed failure may be and still pass.
    tolerance: u64,
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    capacity: usize,
    /// Made on the first failure, shared by every clone of the layer and its services.
    table: Arc<OnceLock<Table>>,
    /// The keys being looked up with a failure counted in advance ([`Provisional`]).
    in_flight: Arc<DashMap<KeyHash, (), HashOfHash>>,
}

/// A failure counted before a key lookup, so that a burst of lookups from one address cannot
/// outrun its allowance (each is counted before it reaches the store); given back
/// ([`Throttle::forgive`]) when the key turns out live. One per key in flight: requests for a
/// key already being looked up (a client's burst on a cold cache) count nothing more, and are
/// counted at their answer if it is a failure.
pub struct Provisional {
    ip: IpAddr,
    hash: KeyHash,
    in_flight: Arc<DashMap<KeyHash, (), HashOfHash>>,
}

impl Drop for Provisional {
    fn drop(&mut self) {
        self.in_flight.remove(&self.hash);
    }
}

impl fmt::Debug for Provisional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provisional").field("ip", &self.ip).finish()
    }
}

/// The addresses that failed lately, in buckets of [`WAYS`] entries: an address's 64-bit
/// keyed hash and the theoretical arrival time of its next failure (milliseconds since the
/// Unix epoch; 0: the entry is free). Fixed size, so memory is bounded. An entry is reused
/// only once its time has passed (it then holds nothing: the address has its whole allowance
/// back), so an address that used up its failures stays refused whatever others send. An
/// address whose bucket is full of live entries shares one allowance with every other such
/// address ([`Table::overflow`]): under a flood of addresses, unknown ones are refused
/// together rather than known ones forgotten.
struct Table {
    buckets: Box<[Mutex<Bucket>]>,
    hasher: foldhash::fast::RandomState,
    overflow: Mutex<u64>,
}

/// Entries per bucket.
const WAYS: usize = 8;

#[derive(Clone, Copy, Default)]
struct Bucket {
    keys: [u64; WAYS],
    tats: [u64; WAYS],
}

/// Where an address stands in its bucket.
enum Entry {
    /// Its own entry.
    Own(usize),
    /// Not there; this entry is free (or its time passed).
    Free(usize),
    /// Not there, and every entry is live.
    Full,
}

impl Bucket {
    fn find(&self, key: u64, now: u64) -> Entry {
        let mut free = None;
        for i in 0..WAYS {
            if self.keys[i] == key {
                return Entry::Own(i);
            }
            if free.is_none() && self.tats[i] <= now {
                free = Some(i);
            }
        }
        free.map_or(Entry::Full, Entry::Free)
    }
}

/// The default number of addresses the throttle remembers (about 1 MiB, made on the first
/// failure).
pub(crate) const DEFAULT_CAPACITY: usize = 65_536;

impl Throttle {
    pub(crate) fn new(limit: u32, period: Duration) -> Self {
        let mut throttle = Self {
            limit: 1,
            interval: 1,
            tolerance: 0,
            trusted: Vec::new(),
            ipv6_prefix: 64,
            capacity: DEFAULT_CAPACITY,
            table: Arc::new(OnceLock::new()),
            in_flight: Arc::new(DashMap::with_hasher(HashOfHash::default())),
        };
        throttle.set_limit(limit, period);
        throttle
    }

    /// At most `limit` failures per `period` (counting starts afresh).
    pub(crate) fn set_limit(&mut self, limit: u32, period: Duration) {
        let limit = limit.max(1);
        let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        self.limit = limit;
        self.interval = (period / u64::from(limit)).max(1);
        self.tolerance = period.saturating_sub(self.interval);
        self.table = Arc::new(OnceLock::new());
    }

    pub(crate) fn trust(&mut self, proxies: impl IntoIterator<Item = IpNet>) {
        self.trusted.extend(proxies);
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts IPv6 addresses by their first `prefix` bits (at most 128).
    pub(crate) fn ipv6_prefix(&mut self, prefix: u8) {
        self.ipv6_prefix = prefix.min(128);
        self.table = Arc::new(OnceLock::new());
    }

    /// Remembers at most `capacity` addresses (rounded up to a whole bucket).
    pub(crate) fn capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(WAYS);
        self.table = Arc::new(OnceLock::new());
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
        self.trusted.iter().any(|net| holds(net, ip))
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

    fn table(&self) -> &Table {
        self.table.get_or_init(|| {
            let buckets = self.capacity.div_ceil(WAYS).next_power_of_two();
            Table {
                buckets: (0..buckets)
                    .map(|_| Mutex::new(Bucket::default()))
                    .collect(),
                hasher: foldhash::fast::RandomState::default(),
                overflow: Mutex::new(0),
            }
        })
    }

    /// The address's key (never 0) and bucket: IPv6 addresses by their network.
    fn slot(&self, table: &Table, ip: IpAddr) -> (u64, usize) {
        let counted = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let host_bits = 128 - u32::from(self.ipv6_prefix);
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                u128::from(v6) & mask
            }
        };
        // The family too, so no IPv6 network shares a key with an IPv4 address.
        let hash = table.hasher.hash_one((ip.is_ipv6(), counted)).max(1);
        let bucket = (hash >> 32) as usize & (table.buckets.len() - 1);
        (hash, bucket)
    }

    /// How far ahead of `tolerance` a theoretical arrival time is: the wait, if any.
    fn wait_for(&self, tat: u64, now: u64) -> Option<Duration> {
        let ahead = tat.saturating_sub(now);
        (ahead > self.tolerance).then(|| Duration::from_millis(ahead - self.tolerance))
    }

    /// How long `ip` must wait before its requests are looked up again, if it must. The
    /// clock is read only when an address has failed lately.
    #[inline]
    pub(crate) fn wait(&self, ip: IpAddr, now: impl FnOnce() -> Duration) -> Option<Duration> {
        let table = self.table.get()?;
        let (key, bucket) = self.slot(table, ip);
        let now = millis(now());
        let entry = {
            let bucket = lock(&table.buckets[bucket]);
            match bucket.find(key, now) {
                Entry::Own(i) => Some(bucket.tats[i]),
                Entry::Free(_) => return None,
                Entry::Full => None,
            }
        };
        match entry {
            Some(tat) => self.wait_for(tat, now),
            // Under pressure: the allowance every unknown address shares.
            None => self.wait_for(*lock(&table.overflow), now),
        }
    }

    /// Counts one failed authentication of `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Duration) {
        let table = self.table();
        let now = millis(now);
        let (key, bucket) = self.slot(table, ip);
        {
            let mut bucket = lock(&table.buckets[bucket]);
            match bucket.find(key, now) {
                Entry::Own(i) => {
                    bucket.tats[i] = self.next(bucket.tats[i], now);
                    return;
                }
                Entry::Free(i) => {
                    bucket.keys[i] = key;
                    bucket.tats[i] = self.next(0, now);
                    return;
                }
                Entry::Full => {}
            }
        }
        let mut overflow = lock(&table.overflow);
        *overflow = self.next(*overflow, now);
        drop(overflow);
        overflowed();
    }

    /// Counts a failure of `ip` before the lookup of `hash`, unless that key is being looked
    /// up already.
    pub(crate) fn provisional(
        &self,
        ip: IpAddr,
        hash: KeyHash,
        now: Duration,
    ) -> Option<Provisional> {
        match self.in_flight.entry(hash) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(());
                self.failed(ip, now);
                Some(Provisional {
                    ip,
                    hash,
                    in_flight: self.in_flight.clone(),
                })
            }
        }
    }

    /// Gives back a failure counted in advance: the key was live (or the store could not
    /// tell).
    pub(crate) fn forgive(&self, provisional: Provisional, now: Duration) {
        let table = self.table();
        let now = millis(now);
        let (key, bucket) = self.slot(table, provisional.ip);
        {
            let mut bucket = lock(&table.buckets[bucket]);
            if let Entry::Own(i) = bucket.find(key, now) {
                bucket.tats[i] = bucket.tats[i].saturating_sub(self.interval);
                return;
            }
        }
        let mut overflow = lock(&table.overflow);
        *overflow = overflow.saturating_sub(self.interval);
    }

    /// The theoretical arrival time after one more failure.
    fn next(&self, tat: u64, now: u64) -> u64 {
        (tat.max(now) + self.interval).min(MAX_MILLIS)
    }
}

/// Locks a bucket; a panic while one was held (none can happen: the code under the lock only
/// reads and writes integers) leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failure counted in the shared allowance: metered, and reported (sampled).
#[cold]
fn overflowed() {
    static FULL: crate::report::Sampler = crate::report::Sampler::new();
    ::metrics::counter!(crate::metrics::THROTTLE_OVERFLOW).increment(1);
    if let Some(suppressed) = FULL.admit() {
        tracing::warn!(
            target: "tower_nat",
            suppressed,
            "failed-authentication throttle full: unknown addresses share one allowance"
        );
    }
}

/// A failed authentication the throttle cannot count: the request carries no client address.
/// Metered; reported once per process at `WARN`.
#[cold]
pub(crate) fn unattributed() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    ::metrics::counter!(crate::metrics::THROTTLE_UNATTRIBUTED).increment(1);
    WARNED.call_once(|| {
        tracing::warn!(
            target: "tower_nat",
            "failed authentication is not throttled: requests carry no client address \
             (serve axum with into_make_service_with_connect_info::<SocketAddr>(), or insert \
             auth::ClientAddr)"
        );
    });
}

const MAX_MILLIS: u64 = u64::MAX / 2;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(MAX_MILLIS)
        .min(MAX_MILLIS)
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
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(holds(&net, "10.1.2.3".parse().unwrap()));
        assert!(!holds(&net, "11.0.0.1".parse().unwrap()));
        assert!(holds(&net, "::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "2001:db8::1/128".parse().unwrap();
        assert!(holds(&one, "2001:db8::1".parse().unwrap()));
        assert!(!holds(&one, "2001:db8::2".parse().unwrap()));
        let from = IpNet::from("192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(holds(&from, "192.0.2.1".parse().unwrap()));
        assert!(!holds(&from, "192.0.2.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(holds(&all, "1.2.3.4".parse().unwrap()));
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

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn a_flood_of_other_addresses_never_frees_a_throttled_one() {
        // The trial's attack: 4,000 addresses × 20 failures each, while one address is
        // throttled; then 10,000 addresses. The throttled one stays throttled, and no
        // address gets more than 20 failures through in the minute.
        let t = Throttle::new(20, Duration::from_secs(60));
        let now = Duration::from_secs(1_800_000_000);
        let victim: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..20 {
            t.failed(victim, now);
        }
        assert_eq!(t.wait(victim, || now), Some(Duration::from_secs(3)));
        for round in 0..20 {
            for i in 0..4_000 {
                let at = now + Duration::from_millis(round);
                if t.wait(v4(i), || at).is_none() {
                    t.failed(v4(i), at);
                }
            }
        }
        assert_eq!(t.wait(victim, || now), Some(Duration::from_secs(3)));
        let mut admitted = vec![0u32; 10_000];
        for _ in 0..40 {
            for (i, n) in admitted.iter_mut().enumerate() {
                let ip = v4(100_000 + i as u32);
                if t.wait(ip, || now).is_none() {
                    *n += 1;
                    t.failed(ip, now);
                }
            }
        }
        assert!(
            admitted.iter().all(|&n| n <= 20),
            "{:?}",
            admitted.iter().max()
        );
        assert_eq!(t.wait(victim, || now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_full_table_makes_unknown_addresses_share_one_allowance() {
        let mut t = Throttle::new(5, Duration::from_secs(60));
        t.capacity(WAYS);
        let now = Duration::from_secs(1_800_000_000);
        // One bucket of 8: filled by 8 addresses that each failed once.
        for i in 0..WAYS as u32 {
            t.failed(v4(i), now);
        }
        // Every other address now shares one allowance of 5 failures a minute.
        let mut admitted = 0;
        for i in 100..200 {
            if t.wait(v4(i), || now).is_none() {
                admitted += 1;
                t.failed(v4(i), now);
            }
        }
        assert_eq!(admitted, 5);
        // The known addresses keep their own allowance (4 more each).
        assert_eq!(t.wait(v4(0), || now), None);
        // Once their failures are forgiven (a minute / 5 each), their entries are free again.
        let later = now + Duration::from_secs(12);
        assert_eq!(t.wait(v4(150), || later), None);
    }

    #[test]
    fn ipv6_clients_count_by_their_network() {
        let mut t = Throttle::new(3, Duration::from_secs(60));
        let now = Duration::from_secs(1_800_000_000);
        let host =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, last));
        for i in 0..3 {
            t.failed(host(i), now);
        }
        // Another address of the same /64: the same allowance.
        assert!(t.wait(host(999), || now).is_some());
        let other = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        assert_eq!(t.wait(other, || now), None);
        // Counted by whole address with a /128.
        t.ipv6_prefix(128);
        for _ in 0..3 {
            t.failed(host(0), now);
        }
        assert_eq!(t.wait(host(999), || now), None);
        assert!(t.wait(host(0), || now).is_some());
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
