//! Server plumbing every consentgate service shares: caller authentication and RPC
//! authorization, `google.rpc` error construction, telemetry, health and reflection, shutdown.

pub mod auth;
pub mod errors;
pub mod server;
pub mod telemetry;

pub use auth::{AuthLayer, Authenticator, CallerIdentity, RpcRules, TokenError};
pub use errors::ErrorCode;
pub use server::{Running, serve};
