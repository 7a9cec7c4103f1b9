//! Memory per tenant of the in-memory stores at 1,000,000 tenants, and what remains after
//! idle eviction, counted by a global allocator that tallies live bytes.
//!
//! ```text
//! cargo run --release --example memory
//! ```
// The counting allocator is the one piece of unsafe code in the repository: it forwards to
// the system allocator and only adds bookkeeping.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use tower_nat::{
    clock::{Clock, FakeClock, UtcDate},
    plan::{Allowance, ScanKind},
    quota::{MemoryQuotaStore, Period, QuotaLimits, QuotaStore, Reserved},
    rate_limit::MemoryRateStore,
    tenant::TenantId,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const TENANTS: usize = 1_000_000;

fn main() {
    // Tenant ids exist before the stores see them (authentication made them); the stores
    // share them by reference count, so their own cost is what is measured.
    let ids: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::from(format!("tenant-{i:07}")))
        .collect();
    let clock = FakeClock::at_date(UtcDate::new(2025, 1, 15).unwrap());

    let before = live();
    let rate = MemoryRateStore::new();
    for id in &ids {
        assert!(rate.check_now(id, 120, clock.now()).allowed);
    }
    let rate_bytes = live() - before;
    clock.advance(Duration::from_secs(1));
    let evicted = rate.evict_idle(clock.now());
    let rate_after = live() - before;

    let before = live();
    let quota = MemoryQuotaStore::new();
    let now = clock.now();
    let period = Period::calendar_month(now);
    let limits = QuotaLimits {
        functional: Allowance::Limited(50),
        security: Allowance::Limited(0),
    };
    for id in &ids {
        let Reserved::Granted(r) = quota.reserve_now(id, ScanKind::Functional, limits, period, now)
        else {
            panic!("quota")
        };
        quota.settle_detached(&r, true);
    }
    let quota_bytes = live() - before;
    let next_month = Duration::from_secs(period.end.unix_seconds());
    let dropped = quota.evict_stale(next_month);
    let quota_after = live() - before;

    let per = |b: isize| b as f64 / TENANTS as f64;
    println!("| state at {TENANTS} tenants | bytes | bytes per tenant | after eviction |");
    println!("|---|---|---|---|");
    println!(
        "| rate limit (MemoryRateStore) | {rate_bytes} | {:.1} | {rate_after} bytes ({evicted} evicted) |",
        per(rate_bytes)
    );
    println!(
        "| quota (MemoryQuotaStore) | {quota_bytes} | {:.1} | {quota_after} bytes ({dropped} dropped) |",
        per(quota_bytes)
    );
    drop((rate, quota, ids));
}
