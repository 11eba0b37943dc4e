//! Shared harness for the black-box tests: a real consent server on `127.0.0.1:0` over a
//! private database, and authenticated clients.
#![allow(dead_code)]

use consentgate::suite::{self, ConsentSettings, SuiteConfig};
use consentgate_consent::engine::Engine;
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server;
use consentgate_consent::testing::{self, Backend, TestDb};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::{Authenticator, Running};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// A running consent service.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    /// The database, when this server created it (a second replica shares the first one's).
    pub db: Option<TestDb>,
    pub url: String,
    server: Running<server::StartError>,
}

/// The token each policy caller gets in tests.
pub fn token(caller: &str) -> String {
    format!("test-token-{caller}")
}

/// The default policy, as every test service runs it.
pub fn policy() -> Arc<Policy> {
    Arc::new(Policy::default_policy().expect("default policy"))
}

/// Every policy caller with its test token.
pub fn tokens() -> Vec<(String, String)> {
    policy()
        .callers
        .keys()
        .map(|c| (c.clone(), token(c)))
        .collect()
}

/// The authenticator every test service runs.
pub fn authenticator() -> Authenticator {
    Authenticator::from_policy(&policy(), &tokens()).expect("tokens")
}

/// An authenticator that knows every caller's token but `caller`'s: a service running it
/// refuses that caller's token as unknown, so a test proves the token never reaches it.
pub fn authenticator_without(caller: &str) -> Authenticator {
    let tokens: Vec<_> = tokens().into_iter().filter(|(c, _)| c != caller).collect();
    Authenticator::from_policy(&policy(), &tokens).expect("tokens")
}

/// A listener on an ephemeral loopback port.
pub async fn ephemeral() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// Consent settings as tests use them: a small state cache and fresh keys unless given.
fn consent_settings(url: &str, keys: Arc<LedgerKeys>, feed_poll: Duration) -> ConsentSettings {
    ConsentSettings {
        database_url: url.to_owned(),
        keys,
        cache_capacity: 10_000,
        feed_poll,
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        let db = TestDb::new(backend).await;
        let url = db.url.clone();
        TestServer::start_on(
            &url,
            Some(db),
            Arc::new(LedgerKeys::generate()),
            consentgate_consent::server::FEED_POLL,
        )
        .await
    }

    /// A consent server over a fresh database, signing with `keys`.
    pub async fn start_with_keys(backend: Backend, keys: Arc<LedgerKeys>) -> TestServer {
        let db = TestDb::new(backend).await;
        let url = db.url.clone();
        TestServer::start_on(&url, Some(db), keys, consentgate_consent::server::FEED_POLL).await
    }

    /// Stops this server and starts it again over the same database with `keys`: what a pod
    /// restarted with a changed key file does.
    pub async fn restart_with_keys(self, keys: Arc<LedgerKeys>) -> TestServer {
        let TestServer {
            db,
            url,
            server,
            engine,
            ..
        } = self;
        drop(engine);
        server.stop().await.expect("consent server");
        TestServer::start_on(&url, db, keys, consentgate_consent::server::FEED_POLL).await
    }

    /// Another replica of this server: same database, same keys.
    pub async fn replica(&self) -> TestServer {
        self.replica_polling_every(consentgate_consent::server::FEED_POLL)
            .await
    }

    /// Another replica that reads the change feed only every `feed_poll` unless a commit notice
    /// wakes it: with an hour, only a notice can tell it of the first replica's writes.
    pub async fn replica_polling_every(&self, feed_poll: Duration) -> TestServer {
        TestServer::start_on(
            &self.url,
            None,
            testing::signing_keys(&self.engine),
            feed_poll,
        )
        .await
    }

    /// Another replica that reaches the database at `url` (the same database through another
    /// way, say a [`CutProxy`]: see [`through`]), reading the change feed every `feed_poll`
    /// unless a commit notice wakes it.
    pub async fn replica_at(&self, url: &str, feed_poll: Duration) -> TestServer {
        TestServer::start_on(url, None, testing::signing_keys(&self.engine), feed_poll).await
    }

    /// A consent server over a fresh database that authenticates with `auth`.
    pub async fn start_authenticating(backend: Backend, auth: Authenticator) -> TestServer {
        let db = TestDb::new(backend).await;
        let url = db.url.clone();
        let settings = consent_settings(
            &url,
            Arc::new(LedgerKeys::generate()),
            consentgate_consent::server::FEED_POLL,
        );
        let started = suite::start_consent(
            policy(),
            auth,
            settings,
            ephemeral().await.into(),
            &Default::default(),
        )
        .await
        .expect("consent service");
        TestServer::around(started, Some(db), &url)
    }

    async fn start_on(
        url: &str,
        db: Option<TestDb>,
        keys: Arc<LedgerKeys>,
        feed_poll: Duration,
    ) -> TestServer {
        TestServer::start_listening(ephemeral().await, url, db, keys, feed_poll).await
    }

    async fn start_listening(
        listener: tokio::net::TcpListener,
        url: &str,
        db: Option<TestDb>,
        keys: Arc<LedgerKeys>,
        feed_poll: Duration,
    ) -> TestServer {
        let started = suite::start_consent(
            policy(),
            authenticator(),
            consent_settings(url, keys, feed_poll),
            listener.into(),
            &Default::default(),
        )
        .await
        .expect("consent service");
        TestServer::around(started, db, url)
    }

    /// Stops the service, keeping what a restart needs: its address, database and keys (a test
    /// restores the database from a backup in between, say).
    pub async fn stop_keeping(self) -> StoppedConsent {
        let keys = testing::signing_keys(&self.engine);
        let TestServer {
            addr,
            db,
            url,
            server,
            engine,
        } = self;
        drop(engine);
        server.stop().await.expect("consent server");
        StoppedConsent {
            addr,
            db,
            url,
            keys,
        }
    }

    /// The harness around a consent service the suite started.
    fn around(started: suite::ConsentService, db: Option<TestDb>, url: &str) -> TestServer {
        TestServer {
            addr: started.address(),
            engine: started.service,
            db,
            url: url.to_owned(),
            server: started.server,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// A client sending `authorization: Bearer <token>` (None: no metadata at all).
    pub async fn client(
        &self,
        bearer: Option<&str>,
    ) -> ConsentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>
    {
        ConsentServiceClient::with_interceptor(
            self.channel().await,
            Bearer(bearer.map(str::to_owned)),
        )
    }

    /// A client authenticated as a policy caller.
    pub async fn as_caller(
        &self,
        caller: &str,
    ) -> ConsentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>
    {
        self.client(Some(&format!("Bearer {}", token(caller))))
            .await
    }

    /// Ledger entries so far (every accepted write appends exactly one).
    pub async fn ledger_len(&self) -> usize {
        testing::ledger(&self.engine).await.expect("ledger").len()
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("consent server");
    }
}

/// A consent service stopped by [`TestServer::stop_keeping`].
pub struct StoppedConsent {
    pub addr: SocketAddr,
    pub db: Option<TestDb>,
    pub url: String,
    keys: Arc<LedgerKeys>,
}

impl StoppedConsent {
    /// Starts it again: same address (as a Kubernetes Service keeps it), database and keys.
    pub async fn start(self) -> TestServer {
        TestServer::start_listening(
            rebind(self.addr).await,
            &self.url,
            self.db,
            self.keys,
            consentgate_consent::server::FEED_POLL,
        )
        .await
    }
}

/// A listener on the address a stopped service had (retried briefly while the old socket goes).
pub async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot listen on {addr} again")
}

/// Adds an `authorization` header with the given raw value.
#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Bearer {
    /// The header a policy caller sends with its test token (for clients of a service this
    /// harness did not start in-process, such as a child `consentgate` process).
    pub fn caller(caller: &str) -> Bearer {
        Bearer(Some(format!("Bearer {}", token(caller))))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            let v: MetadataValue<_> = value
                .parse()
                .map_err(|_| tonic::Status::internal("bad test header"))?;
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}

pub fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

pub fn device(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::DeviceId(id.to_owned())),
    })
}

pub fn target(who: &str, purpose: &str) -> Option<pb::ConsentTarget> {
    Some(pb::ConsentTarget {
        subject: subject(who),
        purpose: purpose.to_owned(),
        ..Default::default()
    })
}

pub fn grant(who: &str, purpose: &str, key: &str) -> pb::GrantRequest {
    pb::GrantRequest {
        target: target(who, purpose),
        consent_type: pb::ConsentType::Explicit as i32,
        notice_version: "2.0".into(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

pub fn withdraw(who: &str, purpose: &str, key: &str) -> pb::WithdrawRequest {
    pb::WithdrawRequest {
        target: target(who, purpose),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

pub fn check(who: &str, purpose: &str, categories: &[&str]) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: subject(who),
        purpose: purpose.to_owned(),
        data_categories: categories.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    }
}

/// The `BadRequest` field violations of an error.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo` reason of an error.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|e| e.reason)
        .unwrap_or_default()
}

// ------------------------------------------------------------------ the profile service

use consentgate_gate::{Gate, GateConfig};
use consentgate_proto::profile::v1 as profile_pb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A profile-service client with a bearer token.
pub type ProfileClient =
    ProfileServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// How a test wants its profile service.
#[derive(Clone, Copy)]
pub struct ProfileOptions {
    /// Decisions the gate caches (0: off).
    pub cache_capacity: u64,
    /// The gate's heartbeat lease.
    pub lease: Duration,
    /// Route the change stream through a proxy the test can cut.
    pub cuttable_stream: bool,
}

/// Where the profile service's erasure cascade reaches the recommendation service.
#[derive(Clone, Default)]
pub struct Cascade(pub Option<String>);

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            cache_capacity: 10_000,
            lease: Duration::from_secs(1),
            cuttable_stream: false,
        }
    }
}

/// A running profile service in front of a [`TestServer`].
pub struct ProfileServer {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub gate: Gate,
    pub proxy: Option<CutProxy>,
    pool: sqlx::AnyPool,
    /// The service's store, to chain its journaled access-log entries before counting rows.
    store: Arc<dyn consentgate_profile::store::ProfileStore>,
    server: Running<consentgate_profile::server::StartError>,
}

impl ProfileServer {
    pub async fn start(consent: &TestServer, backend: Backend) -> ProfileServer {
        ProfileServer::start_with(consent, backend, ProfileOptions::default()).await
    }

    pub async fn start_with(
        consent: &TestServer,
        backend: Backend,
        options: ProfileOptions,
    ) -> ProfileServer {
        ProfileServer::start_full(consent, backend, options, Cascade::default()).await
    }

    pub async fn start_full(
        consent: &TestServer,
        backend: Backend,
        options: ProfileOptions,
        cascade: Cascade,
    ) -> ProfileServer {
        let db = TestDb::new(backend).await;
        ProfileServer::start_on(ephemeral().await, consent, db, options, cascade).await
    }

    /// Starts on `listener` over an existing database (a restart keeps both).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        consent: &TestServer,
        db: TestDb,
        options: ProfileOptions,
        cascade: Cascade,
    ) -> ProfileServer {
        let mut gate =
            GateConfig::new(format!("http://{}", consent.addr), token("profile-service"));
        gate.cache_capacity = options.cache_capacity;
        gate.lease = options.lease;
        gate.heartbeat = (options.lease / 4).max(Duration::from_millis(u64::from(
            consentgate_proto::limits::MIN_HEARTBEAT_MILLIS,
        )));
        let proxy = if options.cuttable_stream {
            let proxy = CutProxy::start(consent.addr).await;
            gate.watch_endpoint = Some(format!("http://{}", proxy.addr));
            Some(proxy)
        } else {
            None
        };
        let started = suite::start_profile(
            consentgate_profile::server::ProfileConfig {
                policy: policy(),
                database_url: db.url.clone(),
                gate,
                name: suite::PROFILE_CALLER.into(),
                retention_every: Duration::from_secs(3600),
                recommendation_url: cascade.0,
                metrics: Default::default(),
                request_key: consentgate_profile::request_key::RequestKey::generate(),
                tracing: Default::default(),
            },
            authenticator(),
            listener.into(),
            &Default::default(),
        )
        .await
        .expect("profile service");
        ProfileServer::around(started, db, proxy).await
    }

    /// Stops the service, keeping its address and database for a restart.
    pub async fn stop_keeping(self) -> (SocketAddr, TestDb) {
        self.server.stop().await.expect("profile server");
        self.pool.close().await;
        (self.addr, self.db)
    }

    /// The harness around a profile service the suite started.
    async fn around(
        started: suite::ProfileService,
        db: TestDb,
        proxy: Option<CutProxy>,
    ) -> ProfileServer {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await
            .expect("test pool");
        ProfileServer {
            addr: started.address(),
            db,
            gate: started.service.gate().clone(),
            proxy,
            pool,
            store: started.service.shared.store.clone(),
            server: started.server,
        }
    }

    /// A client authenticated as a policy caller.
    pub async fn as_caller(&self, caller: &str) -> ProfileClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        ProfileServiceClient::with_interceptor(
            channel,
            Bearer(Some(format!("Bearer {}", token(caller)))),
        )
    }

    /// A client with a raw `authorization` value (None: no header).
    pub async fn client(&self, bearer: Option<&str>) -> ProfileClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        ProfileServiceClient::with_interceptor(channel, Bearer(bearer.map(str::to_owned)))
    }

    /// Rows in each profile table, for "nothing changed" assertions.
    pub async fn row_counts(&self) -> Vec<(String, i64)> {
        use sqlx::Row;
        // Every recorded read counts, chained or still in the journal.
        self.store
            .flush_access()
            .await
            .expect("flush the access journal");
        let mut out = Vec::new();
        for table in [
            "attributes",
            "events",
            "answers",
            "subject_keys",
            "access_log",
            "dsar_requests",
        ] {
            let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&self.pool)
                .await
                .expect("count")
                .get(0);
            out.push((table.to_owned(), n));
        }
        out
    }

    /// Every text value in every profile table, for "nothing about the subject remains" scans.
    pub async fn all_text(&self) -> String {
        self.store
            .flush_access()
            .await
            .expect("flush the access journal");
        use sqlx::Row;
        let columns = [
            (
                "attributes",
                "subject || ' ' || name || ' ' || value || ' ' || partner",
            ),
            (
                "events",
                "subject || ' ' || item_id || ' ' || query || ' ' || page",
            ),
            (
                "answers",
                "subject || ' ' || question || ' ' || answer || ' ' || item_id",
            ),
            ("subject_keys", "subject"),
            (
                "access_log",
                "pseudonym || ' ' || caller || ' ' || purpose || ' ' || categories",
            ),
            (
                "dsar_requests",
                "request_id || ' ' || COALESCE(idempotency, '') || ' ' || detail",
            ),
        ];
        let mut out = String::new();
        for (table, expr) in columns {
            for row in sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {expr} FROM {table}")))
                .fetch_all(&self.pool)
                .await
                .expect("scan")
            {
                out.push_str(&row.get::<String, _>(0));
                out.push('\n');
            }
        }
        out
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("profile server");
    }
}

/// A PostgreSQL URL's server address (`user@host:port/db`), for a proxy in front of it.
pub fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.replace("localhost", "127.0.0.1");
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:5432")
    };
    host.parse().expect("a PostgreSQL server address")
}

/// The same PostgreSQL URL with its server replaced by `addr` (a proxy in front of it).
pub fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{path}", user.unwrap_or_default())
}

/// A TCP proxy that a test can cut, as a network partition would.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, conns) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().expect("lock").push(handle);
            }
        });
        CutProxy {
            addr,
            cut,
            connections,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for handle in self.connections.lock().expect("lock").drain(..) {
            handle.abort();
        }
    }
}

/// The profile-service form of a subject.
pub fn attribute(
    name: &str,
    value: &str,
    category: &str,
    purpose: &str,
) -> profile_pb::AttributeInput {
    profile_pb::AttributeInput {
        name: name.into(),
        value: value.into(),
        data_category: category.into(),
        source: consentgate_proto::common::v1::DataSource::ZeroParty as i32,
        purpose: purpose.into(),
        ..Default::default()
    }
}

/// A RecordEvents request: `who` viewed `items`, collected under profiled personalization.
pub fn product_views(who: &str, items: &[&str]) -> profile_pb::RecordEventsRequest {
    profile_pb::RecordEventsRequest {
        subject: subject(who),
        purpose: "personalize.content.profiled".into(),
        events: items
            .iter()
            .map(|item| profile_pb::EventInput {
                kind: profile_pb::EventKind::ProductView as i32,
                item_id: (*item).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A GetProfile request.
pub fn get_profile(who: &str, purpose: &str) -> profile_pb::GetProfileRequest {
    profile_pb::GetProfileRequest {
        subject: subject(who),
        purpose: purpose.into(),
        ..Default::default()
    }
}

// ------------------------------------------------------------------ the recommendation service

use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use consentgate_recommendation::service::Recommender;

/// A recommendation-service client with a bearer token.
pub type RecommendationClient =
    RecommendationServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A running recommendation service.
pub struct RecommendationServer {
    pub addr: SocketAddr,
    pub recommender: Arc<Recommender>,
    server: Running<consentgate_recommendation::server::StartError>,
}

impl RecommendationServer {
    /// Starts on `listener`, asking `consent` and reading `profile`.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        consent: &TestServer,
        profile: &ProfileServer,
        database_url: &str,
    ) -> RecommendationServer {
        RecommendationServer::start_authenticating(
            listener,
            consent,
            profile,
            database_url,
            authenticator(),
        )
        .await
    }

    /// As [`RecommendationServer::start_on`], authenticating its callers with `auth`.
    pub async fn start_authenticating(
        listener: tokio::net::TcpListener,
        consent: &TestServer,
        profile: &ProfileServer,
        database_url: &str,
        auth: Authenticator,
    ) -> RecommendationServer {
        let started = suite::start_recommendation(
            consentgate_recommendation::server::RecommendationConfig {
                catalog: consentgate_recommendation::catalog::Catalog::demo(5000),
                gate: GateConfig::new(
                    format!("http://{}", consent.addr),
                    token(suite::RECOMMENDATION_CALLER),
                ),
                name: suite::RECOMMENDATION_CALLER.into(),
                profile_url: format!("http://{}", profile.addr),
                profile_token: token(suite::RECOMMENDATION_CALLER),
                database_url: database_url.to_owned(),
                metrics: Default::default(),
            },
            auth,
            listener.into(),
            &Default::default(),
        )
        .await
        .expect("recommendation service");
        RecommendationServer::around(started)
    }

    /// The harness around a recommendation service the suite started.
    fn around(started: suite::RecommendationService) -> RecommendationServer {
        RecommendationServer {
            addr: started.address(),
            recommender: started.service,
            server: started.server,
        }
    }

    /// A client authenticated as a policy caller.
    pub async fn as_caller(&self, caller: &str) -> RecommendationClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        RecommendationServiceClient::with_interceptor(
            channel,
            Bearer(Some(format!("Bearer {}", token(caller)))),
        )
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("recommendation server");
    }
}

/// The three services, wired as `consentgate up` wires them, on ephemeral ports.
pub struct Suite {
    pub consent: TestServer,
    pub profile: ProfileServer,
    pub recommendation: RecommendationServer,
    /// The recommendation service's own database.
    pub recommendation_db: TestDb,
    /// The services' `/metrics` endpoints, when started with [`Suite::start_with_metrics`].
    pub metrics: Option<SuiteMetrics>,
}

/// Where each service of a suite serves `/metrics`, and the endpoints themselves (they stop
/// when this is dropped).
pub struct SuiteMetrics {
    pub consent: std::net::SocketAddr,
    pub profile: std::net::SocketAddr,
    pub recommendation: std::net::SocketAddr,
    _endpoints: Vec<consentgate_runtime::Running<std::io::Error>>,
}

impl Suite {
    /// The suite as `consentgate up` wires it ([`suite::start`]), each service on its own
    /// database of `backend`.
    pub async fn start(backend: Backend) -> Suite {
        Suite::start_observed(backend, false).await
    }

    /// As [`Suite::start`], with each service's metrics collected and served on a port of its own.
    pub async fn start_with_metrics(backend: Backend) -> Suite {
        Suite::start_observed(backend, true).await
    }

    async fn start_observed(backend: Backend, metrics: bool) -> Suite {
        let listeners = || async move {
            suite::Listeners {
                grpc: ephemeral().await,
                metrics: if metrics {
                    Some(ephemeral().await)
                } else {
                    None
                },
            }
        };
        let consent_db = TestDb::new(backend).await;
        let profile_db = TestDb::new(backend).await;
        let recommendation_db = TestDb::new(backend).await;
        let consent_url = consent_db.url.clone();
        let started = suite::start(SuiteConfig {
            policy: policy(),
            tokens: tokens(),
            consent: consent_settings(
                &consent_url,
                Arc::new(LedgerKeys::generate()),
                consentgate_consent::server::FEED_POLL,
            ),
            consent_listeners: listeners().await,
            profile_database_url: profile_db.url.clone(),
            profile_listeners: listeners().await,
            profile_decision_cache: ProfileOptions::default().cache_capacity,
            profile_request_key: consentgate_profile::request_key::RequestKey::generate(),
            retention_every: Duration::from_secs(3600),
            recommendation_database_url: recommendation_db.url.clone(),
            recommendation_listeners: listeners().await,
            catalog: consentgate_recommendation::catalog::Catalog::demo(5000),
            traces: Default::default(),
            tls: None,
        })
        .await
        .expect("suite");
        let mut started = started;
        let metrics = match (
            started.consent.metrics_server.take(),
            started.profile.metrics_server.take(),
            started.recommendation.metrics_server.take(),
        ) {
            (Some(consent), Some(profile), Some(recommendation)) => Some(SuiteMetrics {
                consent: consent.address(),
                profile: profile.address(),
                recommendation: recommendation.address(),
                _endpoints: vec![consent, profile, recommendation],
            }),
            _ => None,
        };
        Suite {
            metrics,
            consent: TestServer::around(started.consent, Some(consent_db), &consent_url),
            profile: ProfileServer::around(started.profile, profile_db, None).await,
            recommendation: RecommendationServer::around(started.recommendation),
            recommendation_db,
        }
    }

    /// Stops the recommendation service and starts a new one on the same database.
    pub async fn restart_recommendation(&mut self) {
        let fresh = RecommendationServer::start_on(
            ephemeral().await,
            &self.consent,
            &self.profile,
            &self.recommendation_db.url,
        )
        .await;
        std::mem::replace(&mut self.recommendation, fresh)
            .stop()
            .await;
    }

    pub async fn stop(self) {
        self.recommendation.stop().await;
        self.profile.stop().await;
        self.consent.stop().await;
    }
}
