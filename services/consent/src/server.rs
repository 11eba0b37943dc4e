//! Wires the consent service onto a listener: opens the store and engine, follows the change feed
//! between replicas, and hands its routes to the shared [`consentgate_runtime::serve`]. `main`
//! only parses configuration and calls [`open_engine`] and [`serve`].

use crate::authz;
use crate::engine::Engine;
use crate::grpc::ConsentApi;
use crate::ledger::LedgerKeys;
use crate::observe::{self, ConsentMetrics};
use crate::store::{self, StoreError};
use crate::sweep;
use consentgate_policy::Policy;
use consentgate_proto::consent::v1::consent_service_server::ConsentServiceServer;
use consentgate_runtime::server::MAX_MESSAGE_BYTES;
use consentgate_runtime::{Edge, Telemetry};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often a replica reads the shared change feed when no commit notice woke it: the safety
/// net under `LISTEN`/`NOTIFY` on PostgreSQL, and the proof that the replica still sees its
/// database (see [`Engine::follow_changes`]).
pub const FEED_POLL: Duration = Duration::from_millis(250);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open the consent store: {0}")]
    Store(#[from] StoreError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the store named by `database_url` (migrating it) and builds the engine, which
/// remembers idempotency keys for `idempotency_window` ([`store::DEFAULT_IDEMPOTENCY_WINDOW`]
/// unless configured).
pub async fn open_engine(
    policy: Arc<Policy>,
    database_url: &str,
    keys: Arc<LedgerKeys>,
    cache_capacity: u64,
    idempotency_window: Duration,
) -> Result<Arc<Engine>, StartError> {
    let store = store::open_with_window(database_url, keys.clone(), idempotency_window).await?;
    Ok(Arc::new(
        Engine::new(policy, store, keys, cache_capacity).await?,
    ))
}

/// Serves the consent service on `listener` until `shutdown` resolves, then drains in-flight calls.
/// The engine follows the change feed meanwhile, reading it every `feed_poll` at the least.
pub async fn serve(
    engine: Arc<Engine>,
    feed_poll: Duration,
    edge: impl Into<Edge>,
    telemetry: Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    tokio::spawn(engine.clone().follow_changes(feed_poll));
    tokio::spawn(sweep::forget_expired_idempotency_keys(
        engine.clone(),
        sweep::SWEEP_EVERY,
    ));
    let observed = Arc::new(ConsentMetrics::new(&telemetry.metrics));
    observe::follow_group_commits(&telemetry.metrics, engine.clone());
    if telemetry.metrics.is_enabled() {
        tokio::spawn(observe::follow_ledger(engine.clone(), observed.clone()));
    }
    let closing = engine.clone();
    let api = ConsentServiceServer::new(ConsentApi::new(engine, observed))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    consentgate_runtime::serve(
        api,
        edge,
        authz::rules(),
        &telemetry,
        listener,
        async move {
            shutdown.await;
            // Watch streams end first, so that gates reconnect to another replica.
            closing.begin_shutdown();
        },
    )
    .await?;
    Ok(())
}
