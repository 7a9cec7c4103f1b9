//! The `SlotStore` suite: at most the limit held, slots freed by release (twice harmless)
//! and by their lapse, tenants independent, and concurrent acquisitions that never hold more
//! than the limit.

use std::{future::Future, time::Duration};

use tower_nat::{
    StoreError,
    clock::Clock,
    concurrency::{Acquired, Slot, SlotStore},
    store::Answer,
    tenant::TenantId,
};

use super::{Stores, conformance};

/// A store's answer, now or awaited.
async fn answer<T, F: Future<Output = Result<T, StoreError>>>(answer: Answer<T, F>) -> T {
    match answer {
        Answer::Ready(answer) => answer.unwrap(),
        Answer::Pending(future) => future.await.unwrap(),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

async fn acquire<C: SlotStore>(
    store: &C,
    tenant: &TenantId,
    limit: u32,
    now: Duration,
) -> Option<Slot> {
    match answer(store.acquire(tenant, limit, now, HOUR)).await {
        Acquired::Granted(slot) => Some(slot),
        Acquired::Full => None,
    }
}

async fn limit_and_release<R, Q, C: SlotStore>(s: Stores<R, Q, C>) {
    let store = s.slots;
    let now = s.clock.now();
    let acme = TenantId::from("acme");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(acquire(&store, &acme, 3, now).await.expect("a free slot"));
    }
    let mut ids: Vec<&str> = held.iter().map(|s| s.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct slot ids");
    assert!(held.iter().all(|s| s.tenant == acme));
    assert_eq!(acquire(&store, &acme, 3, now).await, None);
    assert_eq!(answer(store.running(&acme, now)).await, 3);
    // Released: its slot is free again; releasing it twice changes nothing.
    answer(store.release(&held[0])).await;
    answer(store.release(&held[0])).await;
    assert_eq!(answer(store.running(&acme, now)).await, 2);
    let again = acquire(&store, &acme, 3, now)
        .await
        .expect("the freed slot");
    assert_eq!(acquire(&store, &acme, 3, now).await, None);
    // A lower limit (a downgrade) admits nothing until enough end.
    assert_eq!(acquire(&store, &acme, 2, now).await, None);
    for slot in [&held[1], &held[2], &again] {
        answer(store.release(slot)).await;
    }
    assert_eq!(answer(store.running(&acme, now)).await, 0);
    // Released without waiting (from `Drop`): the count follows, at once or within a bound.
    let slot = acquire(&store, &acme, 3, now).await.unwrap();
    store.release_detached(&slot);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while answer(store.running(&acme, now)).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a detached release lands"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn slots_lapse_and_tenants_are_independent<R, Q, C: SlotStore>(s: Stores<R, Q, C>) {
    let store = s.slots;
    let (a, b) = (TenantId::from("a"), TenantId::from("b"));
    let start = s.clock.now();
    assert!(acquire(&store, &a, 1, start).await.is_some());
    assert_eq!(acquire(&store, &a, 1, start).await, None);
    // Another tenant has slots of its own.
    assert!(acquire(&store, &b, 1, start).await.is_some());
    // A scan that never reports back frees its slot when it lapses, not before.
    let almost = start + HOUR - Duration::from_secs(1);
    assert_eq!(acquire(&store, &a, 1, almost).await, None);
    assert_eq!(answer(store.running(&a, almost)).await, 1);
    let after = start + HOUR;
    assert_eq!(answer(store.running(&a, after)).await, 0);
    assert!(acquire(&store, &a, 1, after).await.is_some());
}

async fn concurrent_acquisitions_never_exceed_the_limit<R, Q, C: SlotStore>(s: Stores<R, Q, C>) {
    let now = s.clock.now();
    let tenant = TenantId::from("busy");
    let tries: Vec<_> = (0..32)
        .map(|_| {
            let (store, tenant) = (s.slots.clone(), tenant.clone());
            tokio::spawn(async move { acquire(&store, &tenant, 5, now).await.is_some() })
        })
        .collect();
    let mut granted = 0;
    for t in tries {
        granted += usize::from(t.await.unwrap());
    }
    assert_eq!(granted, 5);
    assert_eq!(answer(s.slots.running(&tenant, now)).await, 5);
}

macro_rules! slot_suite {
    ($($backend:ident),+) => {
        $(conformance!($backend =>
            limit_and_release,
            slots_lapse_and_tenants_are_independent,
            concurrent_acquisitions_never_exceed_the_limit,
        );)+
    };
}

slot_suite!(memory, later);
#[cfg(feature = "redis")]
slot_suite!(redis, redis_cluster);
