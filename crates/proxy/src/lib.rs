//! The portcullis data plane.
//!
//! A request flows once through fixed phases: accept and parse ([`server`]), canonicalise
//! ([`canonical`]), route ([`router`]), then the policy chain ([`chain`]: browser checks,
//! authenticate, authorize, limit, inspect), forward ([`upstream`], over the connections of [`pool`]) and log ([`access_log`]). [`service`]
//! drives the phases in that order.
//!
//! The data plane reads only an immutable [`snapshot::Snapshot`], swapped atomically by the
//! control plane, and never calls the store on a request.

pub mod access_log;
pub mod ai;
pub mod ai_usage;
pub mod balancer;
pub mod body;
pub mod canonical;
pub mod chain;
pub mod error;
mod forward;
mod header_edits;
mod health_check;
pub mod jwks;
pub mod metrics;
pub mod policies;
pub mod pool;
pub mod router;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod targets;
pub mod tls;
pub mod upstream;
pub mod usage;
