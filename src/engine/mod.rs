//! The engine every deciding layer runs on. Seven layers decide about a request before the
//! server sees it (billing, authentication, rate limit, scan validation, feature gate,
//! running scans, quota); each is a [`Policy`], and one service, [`PolicyService`], runs a
//! policy (or a [`Chain`] of them, as [`NatLayer`](crate::NatLayer) does) in front of the
//! inner service.
//!
//! The crate docs (`# A request's path through the stack`) follow a request through it.

mod body;
mod chain;
mod policy;
mod reported;
pub(crate) mod service;
#[cfg(test)]
mod tests;

pub use body::NatBody;
pub(crate) use chain::{Chain, ForScans};
pub(crate) use policy::{Decision, Finish, Never, Policy, Refused, Rejection, StoreCall};
pub(crate) use reported::Reported;
pub use service::{PolicyFuture, PolicyService};
