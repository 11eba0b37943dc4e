//! Wires the consent service onto a listener: auth layer, health, reflection, message limits,
//! TCP_NODELAY, graceful shutdown. `main` only parses configuration and calls [`serve`].

use crate::authz;
use crate::engine::Engine;
use crate::grpc::ConsentApi;
use crate::ledger::LedgerKeys;
use crate::store::{self, StoreError};
use consentgate_policy::Policy;
use consentgate_proto::consent::v1::consent_service_server::ConsentServiceServer;
use consentgate_runtime::server::{MAX_MESSAGE_BYTES, health, reflection};
use consentgate_runtime::{AuthLayer, Authenticator, CallerIdentity};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A token names a caller the policy does not define.
    #[error("caller token for {0:?}, which the policy does not define under [callers]")]
    UnknownCaller(String),
    /// Two callers share a token.
    #[error("callers {0:?} and {1:?} share a token; every caller needs its own")]
    SharedToken(String, String),
    /// The store could not be opened.
    #[error("cannot open the consent store: {0}")]
    Store(#[from] StoreError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the authenticator: each (caller, token) pair, with the caller's roles from the policy.
pub fn authenticator(
    policy: &Policy,
    tokens: &[(String, String)],
) -> Result<Authenticator, StartError> {
    let mut auth = Authenticator::default();
    for (i, (name, token)) in tokens.iter().enumerate() {
        let caller = policy
            .callers
            .get(name)
            .ok_or_else(|| StartError::UnknownCaller(name.clone()))?;
        if let Some((other, _)) = tokens[..i].iter().find(|(_, t)| t == token) {
            return Err(StartError::SharedToken(other.clone(), name.clone()));
        }
        let roles = caller.roles.iter().map(|r| r.as_str().to_owned()).collect();
        auth.insert(
            token,
            CallerIdentity {
                name: name.clone(),
                roles,
            },
        );
    }
    Ok(auth)
}

/// Opens the store named by `database_url` (migrating it) and builds the engine.
pub async fn open_engine(
    policy: Arc<Policy>,
    database_url: &str,
    keys: Arc<LedgerKeys>,
    cache_capacity: u64,
) -> Result<Arc<Engine>, StartError> {
    let store = store::open(database_url, keys.clone()).await?;
    Ok(Arc::new(
        Engine::new(policy, store, keys, cache_capacity).await?,
    ))
}

/// Serves the consent service on `listener` until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    engine: Arc<Engine>,
    auth: Authenticator,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let (reporter, health_service) = health();
    reporter
        .set_serving::<ConsentServiceServer<ConsentApi>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection();
    let closing = engine.clone();
    tokio::spawn(
        engine
            .clone()
            .follow_changes(std::time::Duration::from_millis(200)),
    );
    let consent = ConsentServiceServer::new(ConsentApi::new(engine))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Small request/response pairs: Nagle's algorithm would add tens of milliseconds.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    });
    tonic::transport::Server::builder()
        .layer(AuthLayer::new(auth, authz::rules()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(consent)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            closing.begin_shutdown();
            reporter
                .set_not_serving::<ConsentServiceServer<ConsentApi>>()
                .await;
        })
        .await?;
    Ok(())
}
