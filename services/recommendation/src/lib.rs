//! The recommendation service: personalizes when consent allows and falls back to context when it
//! does not. The pure parts (catalog, co-occurrence model, tiers, ranking) have no I/O; personal
//! data arrives only through gated profile reads ([`profile_reader`]).
//!
//! Rooms: [`catalog`], [`model`] (the co-occurrence model and its leases), [`tier`], [`ranking`]
//! (pure), [`profile_reader`] (gated reads), [`store`] (tiers and outcomes, no subject ids),
//! [`service`] (what each RPC means: protocol-free, one error enum with a code per variant),
//! [`convert`] (protobuf ⇄ domain and request validation), [`grpc`] (the thin adapter: identity
//! → convert → service → convert), [`authz`] (which role may call which RPC) and [`server`]
//! (wiring it onto a listener).

pub mod authz;
pub mod catalog;
pub mod convert;
pub mod grpc;
pub mod model;
pub mod observe;
pub mod profile_reader;
pub mod ranking;
pub mod server;
pub mod service;
pub mod store;
pub mod tier;
