//! The profile service: the zero-party and first-party data people share and the brand observes,
//! behind the consent gate (the policy enforcement point), with the access log and the
//! data-subject rights.
//!
//! Rooms: [`model`] (domain types), [`store`] (SQLite and PostgreSQL behind one trait; reads and
//! writes take a consent decision), [`access_log`] (the hash-chained "who read my data" log),
//! [`service`] (what each RPC means: protocol-free, one error enum with a code per variant),
//! [`convert`] (protobuf ⇄ domain and request validation), [`grpc`] (the thin adapter: identity →
//! convert → service → convert), [`withdrawals`] (the withdrawals in force, said plainly),
//! [`retention`] (the sweep), [`authz`] (which role may call which RPC) and [`server`] (wiring it
//! onto a listener).

pub mod access_log;
pub mod authz;
pub mod convert;
pub mod grpc;
pub mod model;
pub mod observe;
pub mod request_key;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod withdrawals;
