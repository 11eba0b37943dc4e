//! Every call's telemetry, after the OpenTelemetry RPC semantic conventions: the server span
//! (continuing the caller's W3C trace context, named by the fully qualified method, ended with
//! the status code), `rpc.server.call.duration` (exposed as `rpc_server_call_duration_seconds`,
//! a histogram) by `rpc.method` and `rpc.response.status_code`, and the calls in flight.
//!
//! The layer sits outside the auth layer, so refused calls are measured with their codes too. A
//! call ends when its response body ends (or is dropped: a client that went away), which is
//! when its gRPC status is known: in the trailers, or in the headers of a trailers-only answer.
//! While the handler runs, the span is the current OpenTelemetry context (child spans and
//! outgoing calls find it there) and log lines carry its `trace_id` and `span_id`.

use crate::metrics::{Kind, Metrics};
use crate::traces::{MethodNames, Tracing};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use metrics::{Gauge, Histogram, Unit};
use opentelemetry::trace::{FutureExt, Status as SpanStatus, TraceContextExt};
use opentelemetry::{Context as TraceContext, KeyValue};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

const DURATION: &str = "rpc_server_call_duration_seconds";
const ACTIVE: &str = "rpc_server_active_requests";
/// The method label of a path that is not one of the server's methods (bounded cardinality).
const OTHER: &str = "_OTHER";

/// Per-method instruments: the in-flight gauge, and one duration histogram per status code,
/// registered on first use so that codes never seen add no series.
struct MethodMetrics {
    name: MethodNames,
    active: Gauge,
    by_code: [OnceLock<Histogram>; 17],
}

/// The layer that traces and measures every call of a server.
#[derive(Clone)]
pub struct RpcTelemetryLayer {
    metrics: Metrics,
    tracing: Tracing,
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
    other: Arc<MethodMetrics>,
}

impl RpcTelemetryLayer {
    /// Traces and measures calls to `methods` (paths `/pkg.Service/Method`); any other path
    /// counts as `_OTHER`.
    pub fn new<'a>(
        metrics: &Metrics,
        tracing: &Tracing,
        methods: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        metrics.describe(
            DURATION,
            Kind::Histogram,
            Some(Unit::Seconds),
            "Duration of RPCs handled by this server, until the status was sent.",
        );
        metrics.describe(
            ACTIVE,
            Kind::Gauge,
            None,
            "RPCs in flight (open WatchChanges streams included).",
        );
        let instruments = |name: &str| {
            Arc::new(MethodMetrics {
                name: MethodNames::of(name),
                active: metrics.gauge(ACTIVE, &[("rpc_method", name)]),
                by_code: Default::default(),
            })
        };
        let methods = methods
            .into_iter()
            .map(|path| (path.to_owned(), instruments(path.trim_start_matches('/'))))
            .collect();
        RpcTelemetryLayer {
            metrics: metrics.clone(),
            tracing: tracing.clone(),
            methods: Arc::new(methods),
            other: instruments(OTHER),
        }
    }
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcTelemetryLayer`] wraps around the server.
#[derive(Clone)]
pub struct RpcTelemetryService<S> {
    inner: S,
    layer: RpcTelemetryLayer,
}

impl<S, B> Service<http::Request<B>> for RpcTelemetryService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self
            .layer
            .methods
            .get(request.uri().path())
            .unwrap_or(&self.layer.other)
            .clone();
        let trace = self
            .layer
            .tracing
            .server_context(request.headers(), &method.name);
        let call = Call::start(method, self.layer.metrics.clone(), trace.clone());
        let Some(trace) = trace else {
            return Box::pin(finish(self.inner.call(request), call));
        };
        // The handler runs inside the span: child spans and outgoing calls find it, and log
        // lines name it (only ids: no request content).
        let _entered = trace.clone().attach();
        let response = self.inner.call(request);
        let logged = match crate::traces::current_ids() {
            Some((trace_id, span_id)) => tracing::info_span!("rpc", %trace_id, %span_id),
            None => tracing::Span::none(),
        };
        Box::pin(tracing::Instrument::instrument(
            finish(response, call).with_context(trace),
            logged,
        ))
    }
}

/// Waits for the response and hands its body the call, to be recorded when the status is sent.
async fn finish<F, E>(response: F, mut call: Call) -> Result<http::Response<tonic::body::Body>, E>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    let mut response = response.await?;
    call.code = grpc_status(response.headers());
    let body = std::mem::replace(response.body_mut(), tonic::body::Body::empty());
    *response.body_mut() = tonic::body::Body::new(MeteredBody { inner: body, call });
    Ok(response)
}

/// One call being measured (and traced, when `trace` holds its span); recorded once, when its
/// status is known or it is abandoned.
struct Call {
    method: Arc<MethodMetrics>,
    metrics: Metrics,
    trace: Option<TraceContext>,
    started: Instant,
    code: Option<Code>,
    recorded: bool,
}

impl Call {
    fn start(method: Arc<MethodMetrics>, metrics: Metrics, trace: Option<TraceContext>) -> Call {
        method.active.increment(1.0);
        Call {
            method,
            metrics,
            trace,
            started: Instant::now(),
            code: None,
            recorded: false,
        }
    }

    fn record(&mut self, ended_without_status: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.method.active.decrement(1.0);
        let code = self.code.unwrap_or(ended_without_status);
        let histogram = self.method.by_code[code as usize].get_or_init(|| {
            self.metrics.histogram(
                DURATION,
                &[
                    ("rpc_method", self.method.name.full),
                    ("rpc_response_status_code", code_name(code)),
                    ("rpc_system", "grpc"),
                ],
            )
        });
        histogram.record(self.started.elapsed().as_secs_f64());
        if let Some(trace) = &self.trace {
            let span = trace.span();
            span.set_attributes([
                KeyValue::new("rpc.grpc.status_code", code as i64),
                KeyValue::new("rpc.response.status_code", code_name(code)),
            ]);
            if is_server_error(code) {
                span.set_status(SpanStatus::error(code_name(code)));
            }
            span.end();
        }
    }
}

/// Codes that say the server failed (the semantic conventions' error status for server spans);
/// a caller's bad request or a refusal is the caller's outcome, not the server's error.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its status was sent: the client went away or the stream was cut.
        self.record(Code::Cancelled);
    }
}

/// A response body that records its call when the trailers (or the end) go by.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.code = Some(code);
                    this.call.record(Code::Ok);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.call.code = Some(status.code());
                this.call.record(Code::Unknown);
            }
            Poll::Ready(None) => this.call.record(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The status code's canonical name, as the semantic conventions spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
