//! Distributed traces over OpenTelemetry: one tracer provider per service, W3C trace context in
//! and out, OTLP export that never blocks a request.
//!
//! Why the OpenTelemetry API directly rather than through `tracing`: under `consentgate up` the
//! three services share one process, and each must report its own `service.name`. A `tracing`
//! subscriber is process-wide; a tracer provider is not. So each service owns a [`Tracing`] (its
//! provider and resource), the RPC layer starts the server span with it and puts the tracer in
//! the request's OpenTelemetry [`Context`]; code below the handler (the gate, stores) opens child
//! spans with [`in_span`] from whatever tracer the current context carries, so shared crates
//! report under the service that called them without being told which one it is.
//!
//! What spans carry: method, status, decisions (verdict, reason codes, purpose, categories,
//! level, revision) and work done. Never a subject id, device id, attribute value, event, answer
//! or pseudonym: the trace id already ties a request together.
//!
//! Export: OTLP over gRPC, configured by the standard `OTEL_*` variables, off unless an endpoint
//! is configured. Ended spans queue (2,048) for a batch exporter on its own thread; when the
//! queue is full (a slow or absent collector) spans are dropped and counted
//! (`consentgate_trace_spans_total{outcome}`), never waited for.

use crate::metrics::{Kind, Metrics};
use metrics::Counter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    FutureExt, Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SPANS: &str = "consentgate_trace_spans_total";

/// Spans waiting for export at most; beyond it they are dropped (and counted).
pub const QUEUE: usize = 2048;

/// One service's traces: a tracer provider with the service's own resource, or nothing (off).
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Provider>>,
}

struct Provider {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct TracingError(String);

impl From<String> for TracingError {
    fn from(why: String) -> Self {
        TracingError(why)
    }
}

/// Where a service's spans go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TraceExport {
    /// Nowhere: no spans (incoming trace context is still passed on).
    #[default]
    Off,
    /// As the standard `OTEL_*` variables say ([`Tracing::from_env`]).
    FromEnv,
    /// To this OTLP/gRPC endpoint (e.g. `http://collector:4317`), sampling every trace that
    /// its caller did not decide against (parent-based, always on).
    Endpoint(String),
}

/// The tracer of the service a request is for, carried in its [`Context`].
#[derive(Clone)]
struct ServiceTracer(SdkTracer);

impl Tracing {
    /// No traces (incoming trace context is still passed on to outgoing calls).
    pub fn disabled() -> Tracing {
        Tracing { inner: None }
    }

    /// Traces configured by the standard variables: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and `OTEL_TRACES_EXPORTER` is not `none`;
    /// sampling from `OTEL_TRACES_SAMPLER`/`_ARG` (default parent-based, always on), resource
    /// attributes from `OTEL_RESOURCE_ATTRIBUTES`. `service` is the `service.name` reported
    /// (the caller decides whether `OTEL_SERVICE_NAME` applies: under `up` it cannot, since
    /// three services share the process). Must run inside a Tokio runtime (the exporter's
    /// client lives there).
    pub fn from_env(service: &str, metrics: &Metrics) -> Result<Tracing, TracingError> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
        let exporter_off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
        if !configured || exporter_off {
            return Ok(Tracing::disabled());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TracingError(e.to_string()))?;
        Ok(Tracing::with_exporter(service, exporter, metrics))
    }

    /// Traces for `service` as `export` says.
    pub fn start(
        export: &TraceExport,
        service: &str,
        metrics: &Metrics,
    ) -> Result<Tracing, TracingError> {
        match export {
            TraceExport::Off => Ok(Tracing::disabled()),
            TraceExport::FromEnv => Tracing::from_env(service, metrics),
            TraceExport::Endpoint(url) => {
                use opentelemetry_otlp::WithExportConfig;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(url.clone())
                    .with_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| TracingError(e.to_string()))?;
                Ok(Tracing::with_exporter(service, exporter, metrics))
            }
        }
    }

    /// Traces exported by `exporter` (tests pass an in-process one), batched as in production.
    pub fn with_exporter(
        service: &str,
        exporter: impl SpanExporter + 'static,
        metrics: &Metrics,
    ) -> Tracing {
        metrics.describe(
            SPANS,
            Kind::Counter,
            None,
            "Spans by fate: exported, export_failed (the collector refused or was unreachable), dropped (the export queue was full).",
        );
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = |outcome: &str| metrics.counter(SPANS, &[("outcome", outcome)]);
        let exporter = CountedExporter {
            inner: exporter,
            queued: queued.clone(),
            exported: counted("exported"),
            failed: counted("export_failed"),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let processor = QueueGuard {
            inner: batch,
            queued,
            dropped: counted("dropped"),
        };
        let provider = SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("consentgate");
        Tracing {
            inner: Some(Arc::new(Provider { provider, tracer })),
        }
    }

    /// Whether spans are recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Exports what is queued and stops (at shutdown; waits at most a few seconds).
    pub fn shutdown(&self) {
        if let Some(p) = &self.inner
            && let Err(e) = p.provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "trace export did not finish at shutdown");
        }
    }

    /// The server span of one call: continues the caller's trace (`headers`' `traceparent`) and
    /// names the span by the method. `None` when nothing is to be recorded or passed on.
    pub(crate) fn server_context(
        &self,
        headers: &http::HeaderMap,
        method: &MethodNames,
    ) -> Option<Context> {
        let parent = if headers.contains_key("traceparent") {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let Some(p) = &self.inner else {
            // Off: no span, but an incoming trace still reaches the calls this one makes.
            return parent.has_active_span().then_some(parent);
        };
        // Attributes only for a span the sampler kept: an unsampled call (most of them, at a
        // production ratio) builds nothing but the non-recording span itself.
        let mut span = p
            .tracer
            .span_builder(method.full)
            .with_kind(SpanKind::Server)
            .start_with_context(&p.tracer, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", method.service),
                KeyValue::new("rpc.method", method.method),
            ]);
        }
        Some(
            parent
                .with_span(span)
                .with_value(ServiceTracer(p.tracer.clone())),
        )
    }
}

/// A method's names as its server span carries them, `'static` so that no call allocates them:
/// each distinct method path is leaked once for the life of the process (a fixed set: the
/// methods of the services this binary serves, and `_OTHER`).
#[derive(Debug, Clone, Copy)]
pub struct MethodNames {
    /// `pkg.Service/Method`: the span's name.
    pub full: &'static str,
    /// `pkg.Service`: `rpc.service`.
    pub service: &'static str,
    /// `Method`: `rpc.method`.
    pub method: &'static str,
}

impl MethodNames {
    /// The names of `full` (`pkg.Service/Method`, without the leading slash).
    pub fn of(full: &str) -> MethodNames {
        static INTERNED: std::sync::Mutex<Vec<MethodNames>> = std::sync::Mutex::new(Vec::new());
        let mut interned = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = interned.iter().find(|m| m.full == full) {
            return *known;
        }
        let leaked: &'static str = Box::leak(full.to_owned().into_boxed_str());
        let (service, method) = leaked.rsplit_once('/').unwrap_or((leaked, leaked));
        let names = MethodNames {
            full: leaked,
            service,
            method,
        };
        interned.push(names);
        names
    }
}

impl Tracing {
    /// Runs `work` as a root span `name` of this service: for background work that no request
    /// is the parent of (the access log's flush). Sampled by the ratio alone; off: just runs it.
    pub async fn in_root_span<F: Future>(&self, name: &'static str, work: F) -> F::Output {
        let Some(p) = &self.inner else {
            return work.await;
        };
        let span = p
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .start_with_context(&p.tracer, &Context::new());
        let cx = Context::new()
            .with_span(span)
            .with_value(ServiceTracer(p.tracer.clone()));
        let out = work.with_context(cx.clone()).await;
        cx.span().end();
        out
    }
}

/// Runs `work` as a child span `name` of the current span (with `attributes`), when the current
/// request is traced; else just runs it. For the work that costs: store calls, the ledger, the
/// access log, the gate's decisions, ranking.
pub async fn in_span<F: Future, A: IntoIterator<Item = KeyValue>>(
    name: &'static str,
    attributes: impl FnOnce() -> A,
    work: F,
) -> F::Output {
    match child(name, attributes) {
        Some(cx) => {
            let out = work.with_context(cx.clone()).await;
            cx.span().end();
            out
        }
        None => work.await,
    }
}

/// As [`in_span`], for work that does not wait.
pub fn in_span_sync<T, A: IntoIterator<Item = KeyValue>>(
    name: &'static str,
    attributes: impl FnOnce() -> A,
    work: impl FnOnce() -> T,
) -> T {
    match child(name, attributes) {
        Some(cx) => {
            let guard = cx.clone().attach();
            let out = work();
            drop(guard);
            cx.span().end();
            out
        }
        None => work(),
    }
}

/// `attributes` is called only for a sampled span: an unsampled request formats nothing.
fn child<A: IntoIterator<Item = KeyValue>>(
    name: &'static str,
    attributes: impl FnOnce() -> A,
) -> Option<Context> {
    let current = Context::current();
    let tracer = current.get::<ServiceTracer>()?.0.clone();
    if !current.span().span_context().is_sampled() {
        return None;
    }
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes())
        .start_with_context(&tracer, &current);
    Some(current.with_span(span))
}

/// Records `attributes` on the current span (e.g. a decision's verdict once it is known).
/// `attributes` is called only when the span records (a sampled request), so the values an
/// operator debugs by are formatted for the requests that are kept, and no others.
pub fn annotate<A: IntoIterator<Item = KeyValue>>(attributes: impl FnOnce() -> A) {
    Context::map_current(|cx| {
        let span = cx.span();
        if span.is_recording() {
            span.set_attributes(attributes());
        }
    });
}

/// Puts the current trace context (`traceparent`, `tracestate`) into an outgoing call's metadata,
/// so that the service called continues this trace.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    Context::map_current(|cx| {
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
        }
    });
}

/// The current span's ids, for log lines (`None` outside a sampled request: an unsampled call,
/// most of them in production, formats nothing and opens no log span).
pub fn current_ids() -> Option<(String, String)> {
    Context::map_current(|cx| {
        let span = cx.span();
        let ids = span.span_context();
        ids.is_sampled()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// In front of the batch processor: counts spans waiting for export and drops (counting them)
/// those beyond [`QUEUE`] before the batch processor would have to, so that every span's fate is
/// a metric. The count comes down when an export of them finishes, whatever its outcome.
#[derive(Debug)]
struct QueueGuard {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    dropped: Counter,
}

impl SpanProcessor for QueueGuard {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the exporter did with each batch, and releases the batch from the queue count.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    exported: Counter,
    failed: Counter,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let counter = if result.is_ok() {
            &self.exported
        } else {
            &self.failed
        };
        counter.increment(u64::try_from(n).unwrap_or(u64::MAX));
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
