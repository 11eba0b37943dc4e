//! The consent service: consentgate's policy decision point and consent ledger.
//!
//! Rooms: [`model`] (domain types), [`store`] (SQLite and PostgreSQL behind one trait),
//! [`ledger`] (hash chain, checkpoints, pseudonyms), [`receipt`] (signed consent receipts),
//! [`engine`] (writes, cached decisions, the change feed), [`service`] (what each RPC means:
//! protocol-free, one error enum with a code per variant), [`convert`] (protobuf ⇄ domain and
//! request validation), [`grpc`] (the thin adapter: identity → convert → service → convert),
//! [`authz`] (which role may call which RPC) and [`server`] (wiring it onto a listener).

pub mod authz;
pub mod convert;
pub mod engine;
pub mod grpc;
pub mod ledger;
pub mod model;
pub mod observe;
pub mod receipt;
pub mod server;
pub mod service;
pub mod store;
pub mod sweep;
#[doc(hidden)]
pub mod testing;
