//! The three services wired together the one way the product runs them (see
//! `docs/architecture.md` §2): the consent service first, the profile service behind its gate,
//! then the recommendation service reading through the profile service. `consentgate up`, the
//! demo's tests, the load generators and the end-to-end tests all start services here, so a
//! change to the wiring lands once.

use consentgate_consent::engine::Engine;
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server as consent_server;
use consentgate_gate::GateConfig;
use consentgate_policy::Policy;
use consentgate_profile::request_key::RequestKey;
use consentgate_profile::server::{self as profile_server, Profile, ProfileConfig};
use consentgate_recommendation::catalog::Catalog;
use consentgate_recommendation::server::{self as recommendation_server, RecommendationConfig};
use consentgate_recommendation::service::Recommender;
use consentgate_runtime::metrics_otlp::{OtlpPush, spawn_push};
use consentgate_runtime::tls::{ClientAuth, Dialer, TlsError, TlsFiles, TlsMaterial};
use consentgate_runtime::traces::TracingError;
use consentgate_runtime::{
    Authenticator, Edge, Metrics, Running, Telemetry, TokenError, TraceExport, Tracing,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The profile service's caller name at the consent service (an enforcer in the policy).
pub const PROFILE_CALLER: &str = "profile-service";
/// The recommendation service's caller name at the consent and profile services.
pub const RECOMMENDATION_CALLER: &str = "recommendation-service";

/// How long a starting service waits for its gate's change stream before giving up: a gate that
/// is not live serves nothing from cache, so "started" means "following consent changes".
const GATE_LIVE_WITHIN: Duration = Duration::from_secs(10);

/// Why the suite (or one of its services) could not start.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The callers' tokens are unusable.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// A service's certificate is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A service needs a token for a caller that has none.
    #[error("no token for caller {0:?}: the services call each other with their own tokens")]
    MissingToken(&'static str),
    /// A listener has no local address.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The `/metrics` endpoint failed.
    #[error("metrics endpoint: {0}")]
    MetricsEndpoint(std::io::Error),
    /// Traces could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// The consent service could not start.
    #[error(transparent)]
    Consent(#[from] consent_server::StartError),
    /// The profile service could not start.
    #[error(transparent)]
    Profile(#[from] profile_server::StartError),
    /// The recommendation service could not start.
    #[error(transparent)]
    Recommendation(#[from] recommendation_server::StartError),
    /// A gate's change stream did not become live in time.
    #[error("the {0}'s gate did not follow consent changes within {GATE_LIVE_WITHIN:?}")]
    GateNotLive(&'static str),
}

/// A service started in the background: its own handle (for counters and tests), its server
/// and, when metrics are on, its metrics endpoint.
pub struct Started<T, E> {
    /// The service's state: the consent engine, the profile service, the recommender.
    pub service: T,
    /// The gRPC server, for its address and to stop it.
    pub server: Running<E>,
    /// What the service counts (metrics disabled when no metrics listener was given) and traces.
    pub telemetry: Telemetry,
    /// The `/metrics` endpoint, when metrics are on.
    pub metrics_server: Option<Running<std::io::Error>>,
    /// Whether it serves TLS (its URL is `https://`).
    pub tls: bool,
}

impl<T, E: Send + 'static> Started<T, E> {
    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.server.address()
    }

    /// Where its `/metrics` endpoint listens, when metrics are on.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(Running::address)
    }

    /// Stops the gRPC server (draining in-flight calls), exports the spans still queued, then
    /// stops the metrics endpoint.
    pub async fn stop(self) -> Result<(), SuiteError>
    where
        SuiteError: From<E>,
    {
        self.server.stop().await?;
        let tracing = self.telemetry.tracing.clone();
        // Waits for the exporter (up to a few seconds): off the async threads.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        if let Some(metrics) = self.metrics_server {
            metrics.stop().await.map_err(SuiteError::MetricsEndpoint)?;
        }
        Ok(())
    }

    /// `http://host:port` (`https://` over TLS), for clients and the other services.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.server.address())
    }
}

/// A running consent service.
pub type ConsentService = Started<Arc<Engine>, consent_server::StartError>;
/// A running profile service.
pub type ProfileService = Started<Profile, profile_server::StartError>;
/// A running recommendation service.
pub type RecommendationService = Started<Arc<Recommender>, recommendation_server::StartError>;

/// What the consent service needs.
pub struct ConsentSettings {
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// The ledger's signing key and the per-subject pseudonym keys' root.
    pub keys: Arc<LedgerKeys>,
    /// Subject states the engine keeps in memory.
    pub cache_capacity: u64,
    /// How often the engine reads the change feed when no commit notice woke it
    /// ([`consent_server::FEED_POLL`] unless a test or an operator says otherwise).
    pub feed_poll: Duration,
}

/// A service's listeners: its gRPC port, and its metrics port (`None`: metrics off).
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The `/metrics` port, apart from the gRPC port so that a NetworkPolicy can open it to the
    /// monitoring namespace only.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// A gRPC listener with metrics off.
    fn from(grpc: TcpListener) -> Self {
        Listeners {
            grpc,
            metrics: None,
        }
    }
}

/// The `service.name` of each service's spans.
pub const CONSENT_SERVICE_NAME: &str = "consentgate-consent";
/// The profile service's `service.name`.
pub const PROFILE_SERVICE_NAME: &str = "consentgate-profile";
/// The recommendation service's `service.name`.
pub const RECOMMENDATION_SERVICE_NAME: &str = "consentgate-recommendation";

/// A service's telemetry: metrics collected and served when it has a metrics listener, spans
/// exported as `traces` says under the service's own name.
fn telemetry(
    service: &str,
    metrics: Option<TcpListener>,
    traces: &TraceExport,
) -> Result<(Telemetry, Option<Running<std::io::Error>>), SuiteError> {
    // Metrics over OTLP follow the standard variables where traces do (`up`).
    let push = (*traces == TraceExport::FromEnv)
        .then(OtlpPush::from_env)
        .flatten();
    let (metrics, endpoint) =
        consentgate_runtime::metrics::served_or_pushed(metrics, push.is_some())?;
    let tracing = Tracing::start(traces, service, &metrics)?;
    if let Some(push) = push {
        // Runs for the life of the process (`up` is one process for all three).
        drop(
            spawn_push(metrics.clone(), service.to_owned(), push)
                .map_err(|e| SuiteError::Tracing(TracingError::from(e.to_string())))?,
        );
    }
    Ok((Telemetry { metrics, tracing }, endpoint))
}

/// Starts the consent service on `listeners`, its spans exported as `traces` says.
pub async fn start_consent(
    policy: Arc<Policy>,
    edge: impl Into<Edge>,
    settings: ConsentSettings,
    listeners: Listeners,
    traces: &TraceExport,
) -> Result<ConsentService, SuiteError> {
    let (telemetry, metrics_server) = telemetry(CONSENT_SERVICE_NAME, listeners.metrics, traces)?;
    let engine = consent_server::open_engine(
        policy,
        &settings.database_url,
        settings.keys,
        settings.cache_capacity,
        consentgate_consent::store::DEFAULT_IDEMPOTENCY_WINDOW,
    )
    .await?;
    let served = engine.clone();
    let observed = telemetry.clone();
    let feed_poll = settings.feed_poll;
    let edge = edge.into();
    let tls = edge.tls.is_some();
    let server = Running::spawn(listeners.grpc, move |listener, shutdown| {
        consent_server::serve(served, feed_poll, edge, observed, listener, shutdown)
    })?;
    Ok(Started {
        service: engine,
        server,
        telemetry,
        metrics_server,
        tls,
    })
}

/// Starts the profile service on `listeners`, once its gate follows consent changes. Its
/// metrics (and its gate's) are collected when `listeners` has a metrics port.
pub async fn start_profile(
    config: ProfileConfig,
    edge: impl Into<Edge>,
    listeners: Listeners,
    traces: &TraceExport,
) -> Result<ProfileService, SuiteError> {
    let (telemetry, metrics_server) = telemetry(PROFILE_SERVICE_NAME, listeners.metrics, traces)?;
    let mut config = config;
    config.metrics = telemetry.metrics.clone();
    config.tracing = telemetry.tracing.clone();
    let profile = Profile::open(config).await?;
    if !profile.gate().wait_live(GATE_LIVE_WITHIN).await {
        return Err(SuiteError::GateNotLive("profile service"));
    }
    let served = profile.shared.clone();
    let observed = telemetry.clone();
    let edge = edge.into();
    let tls = edge.tls.is_some();
    let server = Running::spawn(listeners.grpc, move |listener, shutdown| {
        profile_server::serve(
            Profile { shared: served },
            edge,
            observed,
            listener,
            shutdown,
        )
    })?;
    Ok(Started {
        service: profile,
        server,
        telemetry,
        metrics_server,
        tls,
    })
}

/// Starts the recommendation service on `listeners`, once its gate follows consent changes. Its
/// metrics (and its gate's) are collected when `listeners` has a metrics port.
pub async fn start_recommendation(
    config: RecommendationConfig,
    edge: impl Into<Edge>,
    listeners: Listeners,
    traces: &TraceExport,
) -> Result<RecommendationService, SuiteError> {
    let (telemetry, metrics_server) =
        telemetry(RECOMMENDATION_SERVICE_NAME, listeners.metrics, traces)?;
    let mut config = config;
    config.metrics = telemetry.metrics.clone();
    let recommender = recommendation_server::open(config).await?;
    if !recommender.gate.wait_live(GATE_LIVE_WITHIN).await {
        return Err(SuiteError::GateNotLive("recommendation service"));
    }
    let served = recommender.clone();
    let observed = telemetry.clone();
    let edge = edge.into();
    let tls = edge.tls.is_some();
    let server = Running::spawn(listeners.grpc, move |listener, shutdown| {
        recommendation_server::serve(served, edge, observed, listener, shutdown)
    })?;
    Ok(Started {
        service: recommender,
        server,
        telemetry,
        metrics_server,
        tls,
    })
}

/// Everything the suite needs: the policy, the callers' tokens, three listeners and three
/// databases. Binding is the caller's job, so tests pass `127.0.0.1:0` and `up` fixed ports.
pub struct SuiteConfig {
    /// The policy all three services run.
    pub policy: Arc<Policy>,
    /// `(caller, token)` for every caller; the services use [`PROFILE_CALLER`]'s and
    /// [`RECOMMENDATION_CALLER`]'s tokens with each other.
    pub tokens: Vec<(String, String)>,
    /// The consent service.
    pub consent: ConsentSettings,
    /// The consent service's listeners.
    pub consent_listeners: Listeners,
    /// The profile service's database.
    pub profile_database_url: String,
    /// The profile service's listeners.
    pub profile_listeners: Listeners,
    /// Decisions the profile service's gate caches (0: every read asks the consent service).
    pub profile_decision_cache: u64,
    /// The profile service's deployment secret for request digests.
    pub profile_request_key: RequestKey,
    /// How often the profile service's retention sweep runs.
    pub retention_every: Duration,
    /// The recommendation service's database (tiers and outcomes, no subject ids).
    pub recommendation_database_url: String,
    /// The recommendation service's listeners.
    pub recommendation_listeners: Listeners,
    /// The catalog to recommend from.
    pub catalog: Catalog,
    /// Where the services' spans go (each under its own `service.name`).
    pub traces: TraceExport,
    /// Mutual TLS between everyone (`None`: plaintext, callers known by their tokens).
    pub tls: Option<SuiteTls>,
}

/// The suite over mutual TLS: every service serves and calls with its own certificate, and
/// every caller is known by its certificate's SPIFFE ID (tokens are refused).
#[derive(Clone, Debug)]
pub struct SuiteTls {
    /// A directory laid out by [`crate::dev_certs::write_dev_certs`]: `<caller>/tls.crt`, …
    /// for every caller and for [`CONSENT_SERVER`].
    pub certs: PathBuf,
    /// `(caller, SPIFFE ID)` for every caller.
    pub identities: Vec<(String, String)>,
}

/// The name of the consent service's own certificate directory under [`SuiteTls::certs`] (the
/// consent service calls no one, so it is no caller of the policy).
pub const CONSENT_SERVER: &str = "consent-service";

impl SuiteTls {
    /// The edge of the service whose certificate lives under `certs/<name>`: TLS with that
    /// certificate, client certificates required, callers known by [`SuiteTls::identities`].
    pub fn edge(&self, policy: &Policy, name: &str) -> Result<Edge, SuiteError> {
        let material = TlsMaterial::load(
            TlsFiles::in_dir(&self.certs.join(name)),
            ClientAuth::Required,
        )?;
        Ok(Edge {
            authenticator: Authenticator::default().with_identities(policy, &self.identities)?,
            tls: Some(material),
            probe: None,
            limits: Default::default(),
        })
    }
}

/// The three services, running.
pub struct Suite {
    /// The consent service.
    pub consent: ConsentService,
    /// The profile service.
    pub profile: ProfileService,
    /// The recommendation service.
    pub recommendation: RecommendationService,
}

/// Starts the three services, each wired to the others as in production: the profile gate and
/// the recommendation gate ask the consent service, the recommendation service reads through the
/// profile service, and the profile service's erasure cascade reaches the recommendation service.
pub async fn start(config: SuiteConfig) -> Result<Suite, SuiteError> {
    let auth = Authenticator::from_policy(&config.policy, &config.tokens)?;
    let tls = config.tls.as_ref();
    let token_of = |caller: &'static str| match tls {
        // Known by its certificate: no token.
        Some(_) => Ok(String::new()),
        None => config
            .tokens
            .iter()
            .find(|(name, _)| name == caller)
            .map(|(_, token)| token.clone())
            .ok_or(SuiteError::MissingToken(caller)),
    };
    let edge_of = |name: &str| -> Result<Edge, SuiteError> {
        match tls {
            Some(tls) => tls.edge(&config.policy, name),
            None => Ok(auth.clone().into()),
        }
    };
    let (consent_edge, profile_edge, recommendation_edge) = (
        edge_of(CONSENT_SERVER)?,
        edge_of(PROFILE_CALLER)?,
        edge_of(RECOMMENDATION_CALLER)?,
    );
    let dialer_of = |edge: &Edge| match &edge.tls {
        Some(material) => Dialer::tls(material.clone()),
        None => Dialer::plaintext(),
    };
    let (profile_dialer, recommendation_dialer) =
        (dialer_of(&profile_edge), dialer_of(&recommendation_edge));
    let profile_token = token_of(PROFILE_CALLER)?;
    let recommendation_token = token_of(RECOMMENDATION_CALLER)?;
    let recommendation_url = format!(
        "{}://{}",
        if tls.is_some() { "https" } else { "http" },
        config.recommendation_listeners.grpc.local_addr()?
    );

    let consent = start_consent(
        config.policy.clone(),
        consent_edge,
        config.consent,
        config.consent_listeners,
        &config.traces,
    )
    .await?;
    let mut gate = GateConfig::new(consent.url(), profile_token);
    gate.cache_capacity = config.profile_decision_cache;
    gate.dialer = profile_dialer;
    let profile = start_profile(
        ProfileConfig {
            policy: config.policy.clone(),
            database_url: config.profile_database_url,
            gate,
            name: PROFILE_CALLER.into(),
            retention_every: config.retention_every,
            recommendation_url: Some(recommendation_url),
            metrics: Metrics::disabled(),
            request_key: config.profile_request_key,
            tracing: Default::default(),
        },
        profile_edge,
        config.profile_listeners,
        &config.traces,
    )
    .await?;
    let recommendation = start_recommendation(
        RecommendationConfig {
            catalog: config.catalog,
            gate: GateConfig {
                dialer: recommendation_dialer,
                ..GateConfig::new(consent.url(), recommendation_token.clone())
            },
            name: RECOMMENDATION_CALLER.into(),
            profile_url: profile.url(),
            profile_token: recommendation_token,
            database_url: config.recommendation_database_url,
            metrics: Metrics::disabled(),
        },
        recommendation_edge,
        config.recommendation_listeners,
        &config.traces,
    )
    .await?;
    Ok(Suite {
        consent,
        profile,
        recommendation,
    })
}

impl Suite {
    /// Stops the services in the reverse order of their start (callers before callees), each
    /// after draining its in-flight calls.
    pub async fn stop(self) -> Result<(), SuiteError> {
        self.recommendation.stop().await?;
        self.profile.stop().await?;
        self.consent.stop().await
    }

    /// Runs until `shutdown` resolves or one of the services ends by itself (a server error),
    /// then stops the others; a service's failure is the answer, so `up` exits with it.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SuiteError> {
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            ended = self.consent.server.ended() => ended.map_err(SuiteError::from),
            ended = self.profile.server.ended() => ended.map_err(SuiteError::from),
            ended = self.recommendation.server.ended() => ended.map_err(SuiteError::from),
        };
        let stopped = self.stop().await;
        outcome.and(stopped)
    }
}
