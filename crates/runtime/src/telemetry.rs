//! Logging set up in one place: an env filter (`RUST_LOG`), and JSON output for production.
//!
//! Logs never carry personal data: handlers log pseudonymized subject ids only
//! (see [`pseudonymize`]), never request bodies.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` selects machine-readable output.
pub fn init(service: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialized");
    }
}

/// A stable, keyed pseudonym for log lines: lets operators correlate one subject's requests
/// without the logs identifying the person. The key is per process and never logged.
pub fn pseudonymize(key: &[u8], subject: &str) -> String {
    consentgate_chain::log_pseudonym(key, subject)
}
