//! Telemetry across process boundaries (and metrics pushed over OTLP when asked).
//! Traces: the three services run as separate processes
//! (`consentgate serve …`), each exporting over OTLP to a collector in this test, so trace
//! context really crosses the wire:
//! - one `Recommend` for a consenting subject is one trace with spans from all three services,
//!   each under its own `service.name`, linked parent to child, continuing the caller's
//!   `traceparent`;
//! - the privacy canary: with every span sampled and `RUST_LOG=trace`, a story whose subject id,
//!   attribute value, event item and answer text are canary strings leaves none of them in any
//!   exported span (name, attribute, event) nor in any log line.

mod common;

use common::*;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::recommendation::v1 as rpb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Every export request the collector received.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("collector").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One exported span, flattened: its service, ids and everything it says.
#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// Every attribute key=value, event name and event attribute, as text.
    text: String,
}

impl Collected {
    fn spans(&self) -> Vec<SpanSeen> {
        let mut seen = Vec::new();
        for request in self.0.lock().expect("collector").iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        AnyValue::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        seen.push(SpanSeen {
                            service: service.clone(),
                            name: span.name.clone(),
                            trace_id: span.trace_id.clone(),
                            span_id: span.span_id.clone(),
                            parent_span_id: span.parent_span_id.clone(),
                            text: format!(
                                "{:?} {:?} {:?}",
                                span.name, span.attributes, span.events
                            ),
                        });
                    }
                }
            }
        }
        seen
    }
}

async fn collector() -> (SocketAddr, Collected) {
    let listener = ephemeral().await;
    let address = listener.local_addr().expect("addr");
    let collected = Collected::default();
    let service = TraceServiceServer::new(collected.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, collected)
}

/// A `consentgate serve` process: where it listens, and everything it logged.
struct Process {
    _child: tokio::process::Child,
    address: SocketAddr,
    output: Arc<Mutex<String>>,
}

/// Starts `consentgate serve <service> <args>` exporting spans to `collector`, with every span
/// sampled and logging at TRACE as JSON; returns once it says where it listens.
async fn serve(service: &str, args: &[String], collector: SocketAddr) -> Process {
    serve_with(service, args, collector, &[]).await
}

/// As [`serve`], with more environment variables.
async fn serve_with(
    service: &str,
    args: &[String],
    collector: SocketAddr,
    env: &[(&str, &str)],
) -> Process {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_consentgate"))
        .arg("serve")
        .arg(service)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .env_remove("OTEL_SERVICE_NAME")
        .env("RUST_LOG", "trace")
        .env("CONSENTGATE_LOG_JSON", "true")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("consentgate serve");
    let output = Arc::new(Mutex::new(String::new()));
    let (found, mut address) = tokio::sync::mpsc::channel::<SocketAddr>(1);
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for pipe in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let output = output.clone();
        let found = found.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening")
                    && !line.contains("metrics")
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(a) = json["address"].as_str().and_then(|a| a.parse().ok())
                {
                    let _ = found.try_send(a);
                }
                let mut all = output.lock().expect("output");
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let address = loop {
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(100), address.recv()).await
        {
            break a;
        }
        let exited = child.try_wait().ok().flatten();
        assert!(
            exited.is_none() && tokio::time::Instant::now() < deadline,
            "{service} did not start ({exited:?}):\n{}",
            output.lock().expect("output")
        );
    };
    Process {
        _child: child,
        address,
        output,
    }
}

/// The three services as separate processes on SQLite files under `dir`.
struct Processes {
    consent: Process,
    profile: Process,
    recommendation: Process,
}

async fn start_processes(dir: &std::path::Path, collector: SocketAddr) -> Processes {
    write_tokens(dir);
    let path = |name: &str| dir.join(name).display().to_string();
    let sqlite = |name: &str| format!("sqlite://{}", path(name));
    let common = |db: &str| {
        vec![
            "--tokens-file".to_owned(),
            path("tokens.toml"),
            "--database-url".into(),
            sqlite(db),
        ]
    };
    let mut args = common("consent.db");
    // A throwaway server: a fresh key is what it wants (production never creates one).
    args.extend([
        "--key-file".into(),
        path("signing.key"),
        "--create-key-file".into(),
    ]);
    let consent = serve("consent", &args, collector).await;
    let consent_url = format!("http://{}", consent.address);
    wait_serving(consent.address).await;
    let mut args = common("profile.db");
    args.extend([
        "--consent-url".into(),
        consent_url.clone(),
        "--consent-token".into(),
        token("profile-service"),
        "--request-key-file".into(),
        path("request.key"),
    ]);
    // The profile service's deployment secret for request digests.
    std::fs::write(dir.join("request.key"), "11".repeat(32)).expect("request key");
    let profile = serve("profile", &args, collector).await;
    wait_serving(profile.address).await;
    let mut args = common("recommendation.db");
    args.extend([
        "--consent-url".into(),
        consent_url,
        "--profile-url".into(),
        format!("http://{}", profile.address),
        "--service-token".into(),
        token("recommendation-service"),
    ]);
    let recommendation = serve("recommendation", &args, collector).await;
    wait_serving(recommendation.address).await;
    Processes {
        consent,
        profile,
        recommendation,
    }
}

async fn wait_serving(address: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1)
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{address} never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of `address` as `caller`.
async fn channel(address: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn bearer<T>(message: T, caller: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(caller)).parse().expect("header"),
    );
    request
}

/// Grants `who` profiled personalization and model training through `consent` (keys prefixed
/// with `key`), as the preference center would.
async fn grant_personalization(consent: SocketAddr, who: &str, key: &str) {
    let mut pc = consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(
        channel(consent).await,
    );
    for purpose in ["personalize.content.profiled", "train_ai_system"] {
        pc.grant(bearer(
            grant(who, purpose, &format!("{key}-{purpose}")),
            "preference-center",
        ))
        .await
        .expect("grant");
    }
}

/// Writes the callers' tokens as a `--tokens-file` into `dir`.
fn write_tokens(dir: &std::path::Path) {
    let toml: String = tokens()
        .iter()
        .map(|(caller, token)| format!("{caller:?} = {token:?}\n"))
        .collect();
    std::fs::write(dir.join("tokens.toml"), toml).expect("tokens file");
}

/// Waits until the collector holds spans of every one of `services` in `trace_id`.
async fn spans_of(collected: &Collected, trace_id: &[u8], services: &[&str]) -> Vec<SpanSeen> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<SpanSeen> = collected
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if services
            .iter()
            .all(|svc| spans.iter().any(|s| s.service == *svc))
        {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {} never had spans of all of {services:?}: {spans:#?}",
            hex(trace_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_recommend_is_one_trace_across_three_processes_continuing_the_callers() {
    let (collector_at, collected) = collector().await;
    let dir = tempdir("traces");
    let p = start_processes(&dir, collector_at).await;
    let who = "trace-ann";
    grant_personalization(p.consent.address, who, "t").await;
    let mut collector_client =
        ppb::profile_service_client::ProfileServiceClient::new(channel(p.profile.address).await);
    collector_client
        .record_events(bearer(
            product_views(who, &["sku-00001", "sku-00002"]),
            "collector",
        ))
        .await
        .expect("collect");

    // The caller's own trace: the recommendation service continues it.
    let trace_id = [0x4b; 16];
    let caller_span = [0x11; 8];
    let mut request = bearer(
        rpb::RecommendRequest {
            subject: subject(who),
            context: Some(rpb::RecommendContext {
                device: "mobile".into(),
                region: "EU".into(),
                ..Default::default()
            }),
            n: 5,
            at_least_as_fresh: String::new(),
        },
        "recommendation-service",
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span))
            .parse()
            .expect("traceparent"),
    );
    let mut rec = rpb::recommendation_service_client::RecommendationServiceClient::new(
        channel(p.recommendation.address).await,
    );
    let answer = rec
        .recommend(request)
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(answer.tier(), rpb::Tier::Profiled);

    let spans = spans_of(
        &collected,
        &trace_id,
        &[
            "consentgate-recommendation",
            "consentgate-profile",
            "consentgate-consent",
        ],
    )
    .await;
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);
    let server = |service: &str, method: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == method)
            .unwrap_or_else(|| panic!("no {method} span from {service}: {spans:#?}"))
    };
    let recommend = server(
        "consentgate-recommendation",
        "consentgate.recommendation.v1.RecommendationService/Recommend",
    );
    assert_eq!(
        recommend.parent_span_id, caller_span,
        "continues the caller's span"
    );
    assert!(recommend.text.contains("rpc.system") && recommend.text.contains("grpc"));
    let read = server(
        "consentgate-profile",
        "consentgate.profile.v1.ProfileService/ReadSubject",
    );
    let read_parent = by_id(&read.parent_span_id).expect("the read's parent was exported");
    assert_eq!(
        read_parent.service, "consentgate-recommendation",
        "the profile read is a child of the recommendation service's work"
    );
    // Every consent Check in the trace is the child of a gate span in the service that asked.
    let checks: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.service == "consentgate-consent" && s.name.ends_with("/Check"))
        .collect();
    assert!(!checks.is_empty(), "{spans:#?}");
    for check in checks {
        let parent = by_id(&check.parent_span_id).expect("the check's parent was exported");
        assert!(
            parent.name.starts_with("consentgate.gate.check")
                && parent.service != "consentgate-consent",
            "{parent:?}"
        );
        assert!(check.text.contains("consentgate.verdict"), "{check:?}");
    }
    // The access log's flush (background work, no request its parent) is a root span of the
    // profile service, in a trace of its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let flush = loop {
        if let Some(flush) = collected.spans().into_iter().find(|s| {
            s.service == "consentgate-profile" && s.name == "consentgate.profile.access_log.flush"
        }) {
            break flush;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access-log flush span from the profile service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        flush.parent_span_id.is_empty(),
        "the flush has no parent: {flush:?}"
    );
    assert_ne!(flush.trace_id, trace_id, "{flush:?}");
    // Log lines written inside the request carry its trace id.
    let logged = p.recommendation.output.lock().expect("output").clone();
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{}\"", hex(&trace_id)))),
        "no log line names the trace"
    );
    // Every span links to a parent in the trace, except the one continuing the caller's.
    for span in &spans {
        if span.span_id != recommend.span_id {
            assert!(
                by_id(&span.parent_span_id).is_some(),
                "{span:?} has no parent in the trace"
            );
        }
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_canary_of_personal_data_reaches_a_span_or_a_log_line() {
    let (collector_at, collected) = collector().await;
    let dir = tempdir("canary");
    let p = start_processes(&dir, collector_at).await;
    let who = "canary-subject-7f3a";
    let value = "canary-value-91c2";
    let item = "canary-item-5d0e";
    let answer = "canary-answer-b4e8";
    let mut pc = consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(
        channel(p.consent.address).await,
    );
    grant_personalization(p.consent.address, who, "c").await;
    let mut profile =
        ppb::profile_service_client::ProfileServiceClient::new(channel(p.profile.address).await);
    profile
        .set_attributes(bearer(
            ppb::SetAttributesRequest {
                subject: subject(who),
                attributes: vec![attribute(
                    "favorite_sport",
                    value,
                    "user.preferences.stated",
                    "personalize.content.profiled",
                )],
                ..Default::default()
            },
            "preference-center",
        ))
        .await
        .expect("attributes");
    profile
        .record_events(bearer(product_views(who, &[item]), "collector"))
        .await
        .expect("events");
    profile
        .submit_answers(bearer(
            ppb::SubmitAnswersRequest {
                subject: subject(who),
                purpose: "personalize.content.profiled".into(),
                answers: vec![ppb::AnswerInput {
                    kind: ppb::AnswerKind::Survey as i32,
                    question_id: "why".into(),
                    answer: answer.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "preference-center",
        ))
        .await
        .expect("answers");
    let mut rec = rpb::recommendation_service_client::RecommendationServiceClient::new(
        channel(p.recommendation.address).await,
    );
    rec.recommend(bearer(
        rpb::RecommendRequest {
            subject: subject(who),
            context: Some(rpb::RecommendContext {
                current_item_id: item.into(),
                ..Default::default()
            }),
            n: 3,
            at_least_as_fresh: String::new(),
        },
        "recommendation-service",
    ))
    .await
    .expect("recommend");
    profile
        .get_profile(bearer(
            get_profile(who, "personalize.content.profiled"),
            "recommendation-service",
        ))
        .await
        .expect("read");
    pc.withdraw(bearer(
        withdraw(who, "personalize.content.profiled", "c-w"),
        "preference-center",
    ))
    .await
    .expect("withdraw");
    profile
        .erase_subject(bearer(
            ppb::EraseSubjectRequest {
                subject: subject(who),
                idempotency_key: "c-erase".into(),
            },
            "privacy-ops",
        ))
        .await
        .expect("erase");

    // Every service has exported spans of the story before we look.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collected.spans();
        let services: std::collections::BTreeSet<&str> =
            spans.iter().map(|s| s.service.as_str()).collect();
        if services.len() == 3 && spans.iter().any(|s| s.name.ends_with("/EraseSubject")) {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans missing: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exported = format!("{:?}", collected.0.lock().expect("collector"));
    let logs: String = [&p.consent, &p.profile, &p.recommendation]
        .iter()
        .map(|proc| proc.output.lock().expect("output").clone())
        .collect();
    assert!(logs.lines().count() > 100, "TRACE logging produced lines");
    for canary in [who, value, item, answer] {
        assert!(
            !exported.contains(canary),
            "{canary} in an exported span: {spans:#?}"
        );
        let line = logs.lines().find(|l| l.contains(canary));
        assert!(line.is_none(), "{canary} in a log line: {line:?}");
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "consentgate-{name}-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A collector that never answers: an export waits until the exporter's own deadline.
struct Stalled;

#[tonic::async_trait]
impl TraceService for Stalled {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_or_absent_collector_never_holds_a_request_and_dropped_spans_are_counted() {
    use consentgate_consent::testing::{Backend, TestDb};
    use consentgate_runtime::{Metrics, Telemetry, TraceExport, Tracing};
    let stalled_at = {
        let listener = ephemeral().await;
        let address = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Stalled))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    };
    // A port nobody listens on: the collector is down.
    let absent_at = ephemeral().await.local_addr().expect("addr");
    for (collector, case) in [(stalled_at, "stalled"), (absent_at, "absent")] {
        let db = TestDb::new(Backend::Sqlite).await;
        let engine = consentgate_consent::server::open_engine(
            policy(),
            &db.url,
            Arc::new(consentgate_consent::ledger::LedgerKeys::generate()),
            10_000,
            consentgate_consent::store::DEFAULT_IDEMPOTENCY_WINDOW,
        )
        .await
        .expect("engine");
        let metrics = Metrics::enabled();
        let tracing = Tracing::start(
            &TraceExport::Endpoint(format!("http://{collector}")),
            "consentgate-consent",
            &metrics,
        )
        .expect("tracing");
        let listener = ephemeral().await;
        let address = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(consentgate_consent::server::serve(
            engine,
            consentgate_consent::server::FEED_POLL,
            authenticator(),
            Telemetry {
                metrics: metrics.clone(),
                tracing: tracing.clone(),
            },
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client =
            consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(
                channel(address).await,
            );
        // Each Check makes two spans (the server span and the decision's): more than the
        // export queue holds, while no export can finish.
        let checks = consentgate_runtime::traces::QUEUE + 500;
        let all = tokio::time::timeout(Duration::from_secs(120), async {
            for i in 0..checks {
                client
                    .check(bearer(
                        check(&format!("s{i}"), "personalize.content.profiled", &[]),
                        "recommendation-service",
                    ))
                    .await
                    .expect("check");
            }
        })
        .await;
        assert!(all.is_ok(), "{case}: requests waited for the exporter");
        let spans = |text: &str, outcome: &str| -> u64 {
            let line = format!("consentgate_trace_spans_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        let text = metrics.render();
        let made = 2 * checks as u64;
        let (dropped, exported, failed) = (
            spans(&text, "dropped"),
            spans(&text, "exported"),
            spans(&text, "export_failed"),
        );
        assert_eq!(
            exported, 0,
            "{case}: nothing can have been exported\n{text}"
        );
        assert!(
            dropped + failed + consentgate_runtime::traces::QUEUE as u64 >= made,
            "{case}: every span is exported, failed, dropped or still queued: made {made}, dropped {dropped}, failed {failed}\n{text}"
        );
        if case == "stalled" {
            assert!(
                dropped > 0,
                "{case}: the full queue dropped spans, counted\n{text}"
            );
        } else {
            assert!(failed > 0, "{case}: failed exports are counted\n{text}");
        }
        let _ = stop.send(());
        let _ = server.await;
        // Shutting down waits for the exporter at most a few seconds, off the async threads.
        tokio::task::spawn_blocking(move || tracing.shutdown())
            .await
            .expect("shutdown");
    }
}

/// Every metrics export request a collector received.
#[derive(Clone, Default)]
struct MetricsCollected(
    Arc<
        Mutex<Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>>,
    >,
);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService
    for MetricsCollected
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
        >,
        tonic::Status,
    > {
        self.0.lock().expect("collector").push(request.into_inner());
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_pushed_over_otlp_when_asked() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let listener = ephemeral().await;
    let collector_at = listener.local_addr().expect("addr");
    let collected = MetricsCollected::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(collected.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempdir("otlp-metrics");
    write_tokens(&dir);
    let path = |name: &str| dir.join(name).display().to_string();
    let args = vec![
        "--tokens-file".to_owned(),
        path("tokens.toml"),
        "--database-url".into(),
        format!("sqlite://{}", path("consent.db")),
        "--key-file".into(),
        path("signing.key"),
        "--create-key-file".into(),
    ];
    let consent = serve_with(
        "consent",
        &args,
        collector_at,
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    )
    .await;
    wait_serving(consent.address).await;
    let mut client =
        consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(
            channel(consent.address).await,
        );
    client
        .check(bearer(
            check("m-1", "personalize.content.profiled", &[]),
            "recommendation-service",
        ))
        .await
        .expect("check");
    // A push after the call carries it: the RPC histogram for Check, under the service's name.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = collected.0.lock().expect("collector").iter().any(|request| {
            request.resource_metrics.iter().any(|rm| {
                let named = rm.resource.as_ref().is_some_and(|r| {
                    format!("{:?}", r.attributes).contains("consentgate-consent")
                });
                named
                    && rm.scope_metrics.iter().flat_map(|s| &s.metrics).any(|m| {
                        m.name == "rpc_server_call_duration"
                            && m.unit == "s"
                            && matches!(&m.data, Some(Data::Histogram(h)) if h.data_points.iter().any(|p| {
                                p.count >= 1
                                    && format!("{:?}", p.attributes).contains("ConsentService/Check")
                            }))
                    })
            })
        });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pushed Check histogram: {} requests",
            collected.0.lock().expect("collector").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(consent);
    let _ = std::fs::remove_dir_all(&dir);
}
