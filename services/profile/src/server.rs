//! Wires the profile service onto a listener: the gate, the access-log writer, retention, the
//! auth layer, health, reflection, message limits and graceful shutdown.

use crate::access_log::AccessLog;
use crate::authz;
use crate::grpc::ProfileApi;
use crate::observe::ProfileMetrics;
use crate::request_key::RequestKey;
use crate::service::Service;
use crate::store::{self, ProfileStore, StoreError};
use consentgate_gate::{Gate, GateConfig, GateError};
use consentgate_policy::Policy;
use consentgate_proto::profile::v1::profile_service_server::ProfileServiceServer;
use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use consentgate_runtime::server::MAX_MESSAGE_BYTES;
use consentgate_runtime::{Edge, Metrics, Telemetry, Tracing};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open the profile store: {0}")]
    Store(#[from] StoreError),
    /// The gate could not be built.
    #[error("{0}")]
    Gate(#[from] GateError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the profile service needs to run.
pub struct ProfileConfig {
    /// The policy (the same file the consent service runs).
    pub policy: Arc<Policy>,
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// How to reach the consent service.
    pub gate: GateConfig,
    /// This service's caller name at the consent service.
    pub name: String,
    /// How often the retention sweep runs.
    pub retention_every: Duration,
    /// The recommendation service, for the erasure cascade (`None`: not deployed).
    pub recommendation_url: Option<String>,
    /// Where the service (and its gate, through `gate.metrics`) counts; disabled by default.
    pub metrics: Metrics,
    /// The deployment secret keying the digests of erasure requests' idempotency keys
    /// ([`crate::request_key`]).
    pub request_key: RequestKey,
    /// The service's tracer, for spans of background work no request is the parent of (the
    /// access log's flush); request spans come from the server's layer. Off by default.
    pub tracing: Tracing,
}

/// A running profile service's parts, opened and ready to serve.
pub struct Profile {
    /// The service the handlers call.
    pub shared: Arc<Service>,
}

impl Profile {
    /// Opens the store (migrating it), starts the gate, the access-log writer and retention.
    pub async fn open(config: ProfileConfig) -> Result<Profile, StartError> {
        let store = store::open(&config.database_url).await?;
        Self::with_store(config, store)
    }

    /// As [`Profile::open`], over an already opened store.
    pub fn with_store(
        config: ProfileConfig,
        store: Arc<dyn ProfileStore>,
    ) -> Result<Profile, StartError> {
        // The gate reports into the service's registry, as part of the service.
        let mut gate_config = config.gate;
        gate_config.metrics = config.metrics.clone();
        // The erasure cascade calls out as the gate does: the same certificate, if any.
        let dialer = gate_config.dialer.clone();
        let gate = Gate::start(gate_config, config.name.clone())?;
        let recommendation = match &config.recommendation_url {
            Some(url) => Some(RecommendationServiceClient::new(
                dialer
                    .target(url)
                    .map_err(|e| GateError::Config(format!("recommendation endpoint: {e}")))?
                    .connect_lazy(),
            )),
            None => None,
        };
        let metrics = Arc::new(ProfileMetrics::new(&config.metrics));
        let log = AccessLog::start(store.clone(), metrics.clone(), config.tracing.clone());
        crate::retention::spawn(
            store.clone(),
            config.policy.clone(),
            config.retention_every,
            metrics.clone(),
        );
        Ok(Profile {
            shared: Arc::new(Service {
                all_categories: config.policy.categories.keys().cloned().collect(),
                policy: config.policy,
                store,
                gate,
                log,
                name: config.name,
                recommendation,
                metrics,
                request_key: config.request_key,
            }),
        })
    }

    /// The gate (its counters show cache hits, allows and denies).
    pub fn gate(&self) -> &Gate {
        &self.shared.gate
    }
}

/// Serves the profile service on `listener` until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    profile: Profile,
    edge: impl Into<Edge>,
    telemetry: Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let api = ProfileServiceServer::new(ProfileApi::new(profile.shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    consentgate_runtime::serve(api, edge, authz::rules(), &telemetry, listener, shutdown).await?;
    Ok(())
}
