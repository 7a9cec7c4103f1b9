//! One conformance suite per store trait, run over every backend that implements it, so the
//! backends agree on every number (as tower-sessions runs one suite per store):
//!
//! | trait | memory | a later-answering double | Redis | Redis Cluster | PostgreSQL | `LocalFallback` |
//! |---|---|---|---|---|---|---|
//! | `RateStore` | yes | yes | yes | yes | | over memory, and over Redis |
//! | `QuotaStore` | yes | yes | yes | yes | | |
//! | `SlotStore` | yes | yes | yes | yes | | |
//! | `KeyStore` (with its administration) | yes | yes | | | yes | |
//!
//! Each backend is a function returning its stores on a fake clock, or `None` where its
//! server is not installed (which fails under `CI=true`); each suite is a list of test
//! functions generic over the trait; [`conformance`] runs each test on each backend.

pub mod keys;
pub mod quota;
pub mod rate;
pub mod slots;

use std::num::NonZeroU32;

use tower_nat::{
    clock::{FakeClock, UtcDate},
    concurrency::MemorySlotStore,
    quota::MemoryQuotaStore,
    rate_limit::{LocalFallback, MemoryRateStore},
};

use crate::common::stores::Later;

/// A backend's stores, on a shared fake clock; `guard` keeps its servers running.
pub struct Stores<R, Q, C> {
    pub rate: R,
    pub quota: Q,
    pub slots: C,
    pub clock: FakeClock,
    #[allow(dead_code)]
    pub guard: Option<Box<dyn std::any::Any + Send>>,
}

pub fn clock() -> FakeClock {
    FakeClock::at_date(UtcDate::new(2025, 6, 10).unwrap())
}

pub async fn memory() -> Option<Stores<MemoryRateStore, MemoryQuotaStore, MemorySlotStore>> {
    Some(Stores {
        rate: MemoryRateStore::new(),
        quota: MemoryQuotaStore::new(),
        slots: MemorySlotStore::new(),
        clock: clock(),
        guard: None,
    })
}

/// The in-memory stores, answering after a yield: every call takes the engine's path for a
/// remote store.
pub async fn later()
-> Option<Stores<Later<MemoryRateStore>, Later<MemoryQuotaStore>, Later<MemorySlotStore>>> {
    Some(Stores {
        rate: Later(MemoryRateStore::new()),
        quota: Later(MemoryQuotaStore::new()),
        slots: Later(MemorySlotStore::new()),
        clock: clock(),
        guard: None,
    })
}

/// The local fallback over a healthy in-memory store: it must answer as the store does.
pub async fn fallback()
-> Option<Stores<LocalFallback<MemoryRateStore>, MemoryQuotaStore, MemorySlotStore>> {
    let stores = memory().await?;
    Some(Stores {
        rate: LocalFallback::new(stores.rate, NonZeroU32::new(4).unwrap()),
        quota: stores.quota,
        slots: stores.slots,
        clock: stores.clock,
        guard: None,
    })
}

#[cfg(feature = "redis")]
type RedisStores = Stores<
    tower_nat::rate_limit::RedisRateStore,
    tower_nat::quota::RedisQuotaStore,
    tower_nat::concurrency::RedisSlotStore,
>;

/// The Redis stores over `backend`, on the caller's clock.
#[cfg(feature = "redis")]
fn redis_stores(
    backend: tower_nat::store::redis::RedisBackend,
    guard: Box<dyn std::any::Any + Send>,
) -> RedisStores {
    use tower_nat::{
        concurrency::RedisSlotStore, quota::RedisQuotaStore, rate_limit::RedisRateStore,
        store::redis::TimeSource,
    };
    Stores {
        rate: RedisRateStore::new(backend.clone()).time_source(TimeSource::Caller),
        quota: RedisQuotaStore::new(backend.clone()).time_source(TimeSource::Caller),
        slots: RedisSlotStore::new(backend).time_source(TimeSource::Caller),
        clock: clock(),
        guard: Some(guard),
    }
}

#[cfg(feature = "redis")]
pub async fn redis() -> Option<RedisStores> {
    use tower_nat::store::redis::RedisBackend;
    let server = crate::common::redis_server::RedisServer::start()?;
    let backend = RedisBackend::open_with_timeout(&server.url(), std::time::Duration::from_secs(2))
        .unwrap()
        .prefix("suite:");
    Some(redis_stores(backend, Box::new(server)))
}

/// The same stores on a three-master Redis Cluster.
#[cfg(feature = "redis")]
pub async fn redis_cluster() -> Option<RedisStores> {
    use tower_nat::store::redis::RedisBackend;
    let cluster = crate::common::redis_cluster::RedisCluster::start()?;
    let backend =
        RedisBackend::open_cluster_with_timeout(&cluster.urls(), std::time::Duration::from_secs(2))
            .unwrap()
            .prefix("suite:");
    assert!(backend.is_cluster());
    Some(redis_stores(backend, Box::new(cluster)))
}

/// The local fallback over a healthy Redis.
#[cfg(feature = "redis")]
pub async fn fallback_redis() -> Option<
    Stores<
        LocalFallback<tower_nat::rate_limit::RedisRateStore>,
        tower_nat::quota::RedisQuotaStore,
        tower_nat::concurrency::RedisSlotStore,
    >,
> {
    let stores = redis().await?;
    Some(Stores {
        rate: LocalFallback::new(stores.rate, NonZeroU32::new(4).unwrap()),
        quota: stores.quota,
        slots: stores.slots,
        clock: stores.clock,
        guard: stores.guard,
    })
}

/// Runs each of `tests` on `backend`, in a module named after the backend:
/// `conformance!(redis => burst, peek);`.
macro_rules! conformance {
    ($backend:ident => $($test:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(stores) = crate::suites::$backend().await {
                        super::$test(stores).await;
                    }
                }
            )+
        }
    };
}
pub(crate) use conformance;
