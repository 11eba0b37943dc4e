//! Server plumbing every consentgate service shares: caller authentication and RPC
//! authorization, `google.rpc` error construction, telemetry and metrics, health and reflection, shutdown.

pub mod auth;
pub mod delegation;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod metrics_otlp;
pub mod oversize;
pub mod rpc_telemetry;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod traces;

pub use auth::{AuthLayer, Authenticator, CallerIdentity, RpcRules, TokenError};
pub use errors::ErrorCode;
pub use limits::{Http2Limits, Limits, Rate};
pub use metrics::Metrics;
pub use traces::{TraceExport, Tracing};

/// What a service reports about itself: its metrics and its traces (each off by default).
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    /// Its Prometheus registry.
    pub metrics: Metrics,
    /// Its tracer provider.
    pub tracing: Tracing,
}
pub use server::{Edge, Running, serve};
