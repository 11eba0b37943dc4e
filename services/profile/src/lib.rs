//! The profile service: the zero-party and first-party data people share and the brand observes,
//! behind the consent gate (the policy enforcement point), with the access log and the
//! data-subject rights.

pub mod access_log;
pub mod authz;
pub mod convert;
pub mod grpc;
pub mod model;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod withdrawals;
