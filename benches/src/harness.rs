//! The consent service under test, started in-process as the suite starts it
//! (`consentgate::suite::start_consent`) on 127.0.0.1:0, on its own Tokio runtime so that its
//! worker threads are not shared with the load generator's; with `--mtls`, the same service (one
//! engine, one cache) also behind a second port that speaks mutual TLS, so that plaintext and
//! mTLS calls differ by the transport alone.

use crate::workload::Tokens;
use anyhow::Context;
use consentgate::dev_certs::{DEV_NAMESPACE, DEV_TRUST_DOMAIN, spiffe_id, write_dev_certs};
use consentgate::suite::{self, CONSENT_SERVER, ConsentSettings, RECOMMENDATION_CALLER, SuiteTls};
use consentgate_consent::engine::Engine;
use consentgate_consent::ledger::{LedgerKeys, random_key};
use consentgate_consent::server::StartError;
use consentgate_policy::Policy;
use consentgate_runtime::tls::TlsFiles;
use consentgate_runtime::{Authenticator, Edge, Limits, Running, TraceExport};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// A running server and what the benchmark needs to drive and observe it.
pub struct Harness {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The engine, for [`Engine::store_loads`].
    pub engine: Arc<Engine>,
    /// Tokens of the callers the benchmark acts as.
    pub tokens: Tokens,
    /// A short, unique name for this run (subject ids include it).
    pub run_id: String,
    /// What database it runs on, for the report (no credentials).
    pub database: String,
    /// The mutual-TLS port, when asked for.
    pub mtls: Option<MtlsDoor>,
    runtime: Option<Runtime>,
    server: Option<Running<StartError>>,
    mtls_server: Option<Running<StartError>>,
    dir: Option<PathBuf>,
    certs: Option<PathBuf>,
}

/// The consent service's second port: TLS with the service's certificate from a development CA
/// (`consentgate::dev_certs`), client certificates required, `recommendation-service` known by
/// its certificate's SPIFFE ID alone (no token), as `consentgate up --mtls` serves it.
#[derive(Clone)]
pub struct MtlsDoor {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate, key and trust bundle of the caller the benchmark acts as over mTLS
    /// (`recommendation-service`), laid out as cert-manager writes a secret.
    pub caller: TlsFiles,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The database URL with any password removed, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Harness {
    /// Starts the service with `threads` worker threads: on a fresh SQLite file in a new temporary
    /// directory, or on `database_url` (PostgreSQL) when given. With `telemetry`, as production
    /// runs it observed: metrics collected (and served), spans exported over OTLP to a sink in
    /// this process, sampled as `OTEL_TRACES_SAMPLER`/`_ARG` say. With `mtls`, also serves the
    /// same engine on a second port over mutual TLS ([`MtlsDoor`]).
    pub fn start(
        database_url: Option<&str>,
        threads: usize,
        cache_capacity: u64,
        telemetry: bool,
        mtls: bool,
    ) -> anyhow::Result<Harness> {
        let run_id = hex(&random_key()[..6]);
        let (url, dir, database) = match database_url {
            Some(url) => (url.to_owned(), None, redact(url)),
            None => {
                let dir = std::env::temp_dir().join(format!("consentgate-bench-{run_id}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let url = format!("sqlite://{}", dir.join("consent.db").display());
                (
                    url,
                    Some(dir),
                    "SQLite, fresh file in a temporary directory (WAL, synchronous=FULL)"
                        .to_owned(),
                )
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("consent-server")
            .enable_all()
            .build()?;
        let policy =
            Arc::new(Policy::default_policy().map_err(|e| anyhow::anyhow!("default policy: {e}"))?);
        let tokens = Tokens {
            preference_center: format!("bench-pc-{}", hex(&random_key())),
            enforcer: format!("bench-rec-{}", hex(&random_key())),
        };
        let auth = Authenticator::from_policy(
            &policy,
            &[
                (
                    "preference-center".to_owned(),
                    tokens.preference_center.clone(),
                ),
                ("recommendation-service".to_owned(), tokens.enforcer.clone()),
            ],
        )?;
        let settings = ConsentSettings {
            database_url: url,
            keys: Arc::new(LedgerKeys::generate()),
            cache_capacity,
            feed_poll: consentgate_consent::server::FEED_POLL,
        };
        let started = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let (listeners, traces) = if telemetry {
                let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let sink = sink::start().await?;
                (
                    suite::Listeners {
                        grpc,
                        metrics: Some(metrics),
                    },
                    TraceExport::Endpoint(format!("http://{sink}")),
                )
            } else {
                (grpc.into(), TraceExport::Off)
            };
            suite::start_consent(
                policy.clone(),
                Edge::unlimited(auth),
                settings,
                listeners,
                &traces,
            )
            .await
            .context("starting the consent service")
        })?;
        let (mtls, mtls_server, certs) = if mtls {
            let certs = std::env::temp_dir().join(format!("consentgate-bench-{run_id}-certs"));
            let (door, server) = runtime.block_on(open_mtls_door(
                &policy,
                &started.service,
                &started.telemetry,
                &certs,
            ))?;
            (Some(door), Some(server), Some(certs))
        } else {
            (None, None, None)
        };
        let database = if telemetry {
            let sampler = |v: &str| std::env::var(v).unwrap_or_else(|_| "unset".into());
            format!(
                "{database}; telemetry on: metrics collected and served, spans exported over OTLP to an in-process sink (OTEL_TRACES_SAMPLER={}, OTEL_TRACES_SAMPLER_ARG={})",
                sampler("OTEL_TRACES_SAMPLER"),
                sampler("OTEL_TRACES_SAMPLER_ARG")
            )
        } else {
            database
        };
        Ok(Harness {
            addr: started.address(),
            engine: started.service,
            tokens,
            run_id,
            database,
            mtls,
            runtime: Some(runtime),
            server: Some(started.server),
            mtls_server,
            dir,
            certs,
        })
    }

    /// Shuts the server down gracefully (clients must be gone) and removes the temporary database.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let (Some(runtime), Some(server)) = (self.runtime.as_ref(), self.mtls_server.take()) {
            result = runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), server.stop()).await
                })
                .map_err(|_| anyhow::anyhow!("the mTLS port did not shut down within 10 s"))
                .and_then(|r| r.map_err(|e| anyhow::anyhow!("the mTLS port failed: {e}")));
        }
        if let (Some(runtime), Some(server)) = (self.runtime.as_ref(), self.server.take()) {
            let stopped = match runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), server.stop()).await
            }) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("server failed: {e}")),
                Err(_) => Err(anyhow::anyhow!("server did not shut down within 10 s")),
            };
            result = result.and(stopped);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        for dir in [self.dir.take(), self.certs.take()].into_iter().flatten() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown_inner();
    }
}

/// Writes a development CA's certificates under `certs` (the consent service's and
/// `recommendation-service`'s, for 127.0.0.1) and serves `engine` on a new port over mutual
/// TLS, as the suite wires the consent service under `--mtls`. The plaintext port's feed
/// follower already keeps the engine current; this port's `serve` starts a second one, which
/// reads the (idle) feed every 250 ms: noise far below a request's cost.
async fn open_mtls_door(
    policy: &Policy,
    engine: &Arc<Engine>,
    telemetry: &consentgate_runtime::Telemetry,
    certs: &std::path::Path,
) -> anyhow::Result<(MtlsDoor, Running<StartError>)> {
    write_dev_certs(
        certs,
        DEV_TRUST_DOMAIN,
        DEV_NAMESPACE,
        &[RECOMMENDATION_CALLER.to_owned()],
        &[CONSENT_SERVER.to_owned()],
        &["127.0.0.1".to_owned()],
    )
    .context("writing development certificates")?;
    let mut edge = SuiteTls {
        certs: certs.to_owned(),
        identities: vec![(
            RECOMMENDATION_CALLER.to_owned(),
            spiffe_id(DEV_TRUST_DOMAIN, DEV_NAMESPACE, RECOMMENDATION_CALLER),
        )],
    }
    .edge(policy, CONSENT_SERVER)
    .context("the consent service's TLS edge")?;
    // Like the plaintext port: the service measured, not its limiter.
    edge.limits = Limits::unlimited();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (engine, telemetry) = (engine.clone(), telemetry.clone());
    let server = Running::spawn(listener, move |listener, shutdown| {
        consentgate_consent::server::serve(
            engine,
            consentgate_consent::server::FEED_POLL,
            edge,
            telemetry,
            listener,
            shutdown,
        )
    })?;
    Ok((
        MtlsDoor {
            addr: server.address(),
            caller: TlsFiles::in_dir(&certs.join(RECOMMENDATION_CALLER)),
        },
        server,
    ))
}

/// An OTLP trace collector that accepts and discards: where the benchmark's spans go, so that
/// their cost (recording, batching, encoding, sending) is paid as in production.
mod sink {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use std::net::SocketAddr;

    struct Discard;

    #[tonic::async_trait]
    impl TraceService for Discard {
        async fn export(
            &self,
            _request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Starts the sink on the current runtime; where it listens.
    pub async fn start() -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Discard))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(address)
    }
}
