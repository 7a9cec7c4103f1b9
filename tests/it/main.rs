//! The integration tests, in one binary, using the crate only through its public API. Tests
//! that change the process's global state live apart: the environment
//! (`tests/billing_env.rs`) and the process-wide log capture (`tests/secrets.rs`). The demo
//! server's end-to-end and soak tests are the `nat-demo` crate's (`demo/tests`).
#![allow(unreachable_pub)]

mod common;

#[cfg(feature = "admin")]
mod admin;

mod auth;
mod billing;
mod compose;
mod concurrency;
mod config;
mod envelope;
mod failover;
mod feature_gate;
mod found_by_tag;
#[cfg(feature = "axum")]
mod framework_errors;
mod fused;
#[cfg(feature = "axum")]
mod grpc;
#[cfg(feature = "axum")]
mod grpc_tonic;
#[cfg(feature = "axum")]
mod hostile;
mod internal_error;
mod key_cache;
mod metrics;
#[cfg(feature = "axum")]
mod placement;
mod plans;
mod properties;
mod quota;
mod quota_events;
mod rate_limit;
#[cfg(feature = "redis")]
mod redis;
mod redis_faults;
mod redis_scale;
#[cfg(feature = "postgres")]
mod revocation;
mod scan_request;
mod shadow;
mod shared_rate_state;
mod suites;
mod throttle;
