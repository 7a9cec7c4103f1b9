//! The integration tests, in one binary, using the crate only through its public API. Tests
//! that change the process's global state live apart: the environment
//! (`tests/billing_env.rs`) and the process-wide log capture (`tests/secrets.rs`); so does the
//! soak test (`tests/soak.rs`).
#![allow(unreachable_pub)]

mod common;

mod auth;
mod billing;
mod compose;
mod envelope;
mod feature_gate;
mod hostile;
mod internal_error;
mod properties;
mod quota;
mod rate_limit;
#[cfg(feature = "redis")]
mod redis;
mod scan_request;
mod server;
mod store_suite;
