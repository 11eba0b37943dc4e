//! Shared harness for the black-box tests: a real consent server on `127.0.0.1:0` over a
//! private database, and authenticated clients.
#![allow(dead_code)]

use consentgate_consent::engine::Engine;
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server;
use consentgate_consent::testing::{Backend, TestDb};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The token each policy caller gets in tests.
pub fn token(caller: &str) -> String {
    format!("test-token-{caller}")
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        let db = TestDb::new(backend).await;
        let url = db.url.clone();
        TestServer::start_on(&url, Some(db), Arc::new(LedgerKeys::generate())).await
    }

    /// Another replica of this server: same database, same keys.
    pub async fn replica(&self) -> TestServer {
        TestServer::start_on(&self.url, None, self.engine.keys().clone()).await
    }

    async fn start_on(url: &str, db: Option<TestDb>, keys: Arc<LedgerKeys>) -> TestServer {
        let policy = Arc::new(Policy::default_policy().expect("default policy"));
        let tokens: Vec<(String, String)> = policy
            .callers
            .keys()
            .map(|c| (c.clone(), token(c)))
            .collect();
        let auth = server::authenticator(&policy, &tokens).expect("tokens");
        let engine = server::open_engine(policy, url, keys, 10_000)
            .await
            .expect("engine");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            server::serve(engine.clone(), auth, listener, async {
                let _ = stopped.await;
            })
            .map_ok(),
        );
        TestServer {
            addr,
            engine,
            db,
            url: url.to_owned(),
            stop: Some(stop),
            task: Some(task),
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
        self.engine
            .store()
            .ledger(0, u32::MAX)
            .await
            .expect("ledger")
            .len()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

trait MapOk {
    fn map_ok(self) -> impl std::future::Future<Output = ()> + Send;
}

impl<F: std::future::Future<Output = Result<(), server::StartError>> + Send> MapOk for F {
    async fn map_ok(self) {
        if let Err(e) = self.await {
            panic!("server failed: {e}");
        }
    }
}

/// Adds an `authorization` header with the given raw value.
#[derive(Clone)]
pub struct Bearer(Option<String>);

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
