//! The profile service: the zero-party and first-party data people share and the brand observes,
//! behind the consent gate (the policy enforcement point), with the access log and the
//! data-subject rights.

pub mod access_log;
pub mod authz;
pub mod grpc;
pub mod model;
mod reads;
pub mod retention;
pub mod rights;
pub mod server;
pub mod store;
pub mod withdrawals;
