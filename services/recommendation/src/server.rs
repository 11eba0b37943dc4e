//! Wires the recommendation service onto a listener: the gate, the profile reader, the change
//! follower and the training sweep that unlearn, the auth layer, health, reflection, message limits, graceful shutdown.

use crate::authz;
use crate::catalog::Catalog;
use crate::grpc::RecommendationApi;
use crate::observe::RecommendationMetrics;
use crate::profile_reader::ProfileReader;
use crate::service::Recommender;
use crate::store::RecommendationStore;
use consentgate_gate::{Gate, GateConfig, GateError};
use consentgate_proto::recommendation::v1::recommendation_service_server::RecommendationServiceServer;
use consentgate_runtime::server::MAX_MESSAGE_BYTES;
use consentgate_runtime::{Edge, Metrics, Telemetry};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gate could not be built.
    #[error("{0}")]
    Gate(#[from] GateError),
    /// The profile service's address or token is unusable.
    #[error("profile service: {0}")]
    Profile(String),
    /// The store could not be opened.
    #[error("cannot open the recommendation store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the recommendation service needs to run.
pub struct RecommendationConfig {
    /// The catalog to start with.
    pub catalog: Catalog,
    /// How to reach the consent service.
    pub gate: GateConfig,
    /// This service's caller name (an enforcer).
    pub name: String,
    /// The profile service, e.g. `http://127.0.0.1:50052`.
    pub profile_url: String,
    /// This service's token at the profile service (empty: known there by its certificate).
    pub profile_token: String,
    /// Its own database: `sqlite://PATH` or `postgres://…` (tiers and outcomes, no subject ids).
    pub database_url: String,
    /// Where the service (and its gate) counts; disabled by default.
    pub metrics: Metrics,
}

/// Opens the store, builds the recommender, starts following consent changes and sweeping lapsed
/// training consents (every [`crate::service::TRAINING_SWEEP`]; see
/// [`Recommender::set_training_sweep`]).
pub async fn open(config: RecommendationConfig) -> Result<Arc<Recommender>, StartError> {
    let store = RecommendationStore::open(&config.database_url).await?;
    // The gate reports into the service's registry, as part of the service.
    let mut gate_config = config.gate;
    gate_config.metrics = config.metrics.clone();
    // Calls to the profile service go out as the gate's do: the same certificate, if any.
    let dialer = gate_config.dialer.clone();
    let gate = Gate::start(gate_config, config.name.clone())?;
    let profile = ProfileReader::new(&config.profile_url, &config.profile_token, &dialer)
        .map_err(StartError::Profile)?;
    let metrics = Arc::new(RecommendationMetrics::new(&config.metrics));
    let recommender = Recommender::new(
        config.catalog,
        gate,
        profile,
        config.name,
        store,
        metrics.clone(),
    );
    let observed = Arc::downgrade(&recommender);
    metrics.model_size(move || observed.upgrade().map_or(0, |r| r.learned_subjects()));
    recommender.follow_changes();
    recommender.sweep_training();
    Ok(recommender)
}

/// Serves the recommendation service on `listener` until `shutdown` resolves.
pub async fn serve(
    recommender: Arc<Recommender>,
    edge: impl Into<Edge>,
    telemetry: Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let api = RecommendationServiceServer::new(RecommendationApi::new(recommender))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    consentgate_runtime::serve(api, edge, authz::rules(), &telemetry, listener, shutdown).await?;
    Ok(())
}
