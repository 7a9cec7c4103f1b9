//! The `QuotaStore` suite: the exact quota and its reset date, released scans, and
//! concurrent creations that never overdraw, through the layer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_nat::{
    clock::UtcDate,
    plan::{Plan, Plans},
    quota::{QuotaGuardLayer, QuotaStore},
    scan_request::ValidateScanRequestLayer,
};

use super::{Stores, conformance};
use crate::common::{Gated, handler, scan, send, tenant};

async fn exact_quota_reset_date_and_release<R, Q: QuotaStore, C>(s: Stores<R, Q, C>) {
    let plans = Plans::from_json(
        r#"{"plans": {"pro": {"functional_scans_per_month": 3, "security_scans_per_month": 1}}}"#,
    )
    .unwrap();
    let quota = QuotaGuardLayer::new(plans)
        .with_store(s.quota.clone())
        .clock(Arc::new(s.clock.clone()));
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(handler());
    let pro = tenant("q-pro", Plan::PRO);
    assert_eq!(
        send(&svc, scan(&pro, "functional", Some("500"))).await.0,
        500
    );
    assert_eq!(send(&svc, scan(&pro, "full", None)).await.0, 202);
    assert_eq!(send(&svc, scan(&pro, "full", None)).await.0, 402);
    assert_eq!(send(&svc, scan(&pro, "security", None)).await.0, 402);
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    assert_eq!(
        send(&svc, scan(&pro, "functional", Some("404"))).await.0,
        404
    );
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
    let got = send(&svc, scan(&pro, "functional", None)).await;
    assert_eq!(
        std::str::from_utf8(&got.2).unwrap(),
        r#"{"error":"QUOTA_EXCEEDED","message":"Monthly scan quota exhausted. Quota resets on 2025-07-01.","quota_reset_date":"2025-07-01T00:00:00Z"}"#
    );
    // Commits may settle in the background: the usage read waits for them by polling a
    // bounded number of times.
    let mut usage = quota.usage(&pro).await.unwrap();
    for _ in 0..100 {
        if (usage.scans_used, usage.security_scan_count) == (3, 1) {
            break;
        }
        tokio::task::yield_now().await;
        usage = quota.usage(&pro).await.unwrap();
    }
    assert_eq!((usage.scans_used, usage.security_scan_count), (3, 1));
    // A new month starts from zero.
    s.clock.set(Duration::from_secs(
        UtcDate::new(2025, 7, 1).unwrap().unix_seconds(),
    ));
    assert_eq!(send(&svc, scan(&pro, "functional", None)).await.0, 202);
}

async fn concurrent_creations_never_overdraw<R, Q: QuotaStore, C>(s: Stores<R, Q, C>) {
    let quota = QuotaGuardLayer::new(Plans::default())
        .with_store(s.quota.clone())
        .clock(Arc::new(s.clock.clone()));
    // Admitted requests are held in flight until every request has been decided.
    let gated = Gated::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(ValidateScanRequestLayer::new())
        .layer(quota.clone())
        .service(gated.service());
    let free = tenant("c-free", Plan::FREE);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (svc, free) = (svc.clone(), free.clone());
            let (refused, gated) = (refused.clone(), gated.clone());
            tokio::spawn(async move {
                let status = svc
                    .oneshot(scan(&free, "functional", None))
                    .await
                    .unwrap()
                    .status();
                if status == StatusCode::PAYMENT_REQUIRED {
                    refused.fetch_add(1, Ordering::SeqCst);
                    gated.notify();
                }
                status
            })
        })
        .collect();
    gated
        .until(|| gated.inside() + refused.load(Ordering::SeqCst) >= 64)
        .await;
    assert_eq!((gated.inside(), refused.load(Ordering::SeqCst)), (50, 14));
    gated.open(64);
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::ACCEPTED {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
    let mut used = 0;
    for _ in 0..1000 {
        used = quota.usage(&free).await.unwrap().scans_used;
        if used == 50 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(used, 50);
}

macro_rules! quota_suite {
    ($($backend:ident),+) => {
        $(conformance!($backend =>
            exact_quota_reset_date_and_release,
            concurrent_creations_never_overdraw,
        );)+
    };
}

quota_suite!(memory, later);
#[cfg(feature = "redis")]
quota_suite!(redis, redis_cluster);
