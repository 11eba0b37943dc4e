//! Server plumbing every consentgate service shares: caller authentication and RPC
//! authorization, `google.rpc` error construction, telemetry and metrics, health and reflection, shutdown.

pub mod auth;
pub mod errors;
pub mod metrics;
pub mod rpc_metrics;
pub mod server;
pub mod telemetry;

pub use auth::{AuthLayer, Authenticator, CallerIdentity, RpcRules, TokenError};
pub use errors::ErrorCode;
pub use metrics::Metrics;
pub use server::{Running, serve};
