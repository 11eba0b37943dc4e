//! The recommendation service: personalizes when consent allows and falls back to context when it
//! does not. The pure parts (catalog, co-occurrence model, tiers, ranking) have no I/O; personal
//! data arrives only through gated profile reads ([`profile_reader`]).

pub mod authz;
pub mod catalog;
pub mod grpc;
pub mod model;
pub mod profile_reader;
pub mod ranking;
pub mod server;
pub mod store;
pub mod tier;
