//! The server's RPC metrics, after the OpenTelemetry RPC semantic conventions:
//! `rpc.server.call.duration` (exposed as `rpc_server_call_duration_seconds`, a histogram) by
//! `rpc.method` and `rpc.response.status_code`, and the calls in flight by method.
//!
//! The layer sits outside the auth layer, so refused calls are counted with their codes too. A
//! call ends when its response body ends (or is dropped: a client that went away), which is
//! when its gRPC status is known: in the trailers, or in the headers of a trailers-only answer.

use crate::metrics::{Kind, Metrics};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use metrics::{Gauge, Histogram, Unit};
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
    name: String,
    active: Gauge,
    by_code: [OnceLock<Histogram>; 17],
}

/// The layer that measures every call of a server.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
    other: Arc<MethodMetrics>,
}

impl RpcMetricsLayer {
    /// Measures calls to `methods` (paths `/pkg.Service/Method`); any other path counts as
    /// `_OTHER`.
    pub fn new<'a>(metrics: &Metrics, methods: impl IntoIterator<Item = &'a str>) -> Self {
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
                name: name.to_owned(),
                active: metrics.gauge(ACTIVE, &[("rpc_method", name)]),
                by_code: Default::default(),
            })
        };
        let methods = methods
            .into_iter()
            .map(|path| (path.to_owned(), instruments(path.trim_start_matches('/'))))
            .collect();
        RpcMetricsLayer {
            metrics: metrics.clone(),
            methods: Arc::new(methods),
            other: instruments(OTHER),
        }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the server.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B> Service<http::Request<B>> for RpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
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
        let call = Call::start(method, self.layer.metrics.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let mut call = call;
            call.code = grpc_status(response.headers());
            let body = std::mem::replace(response.body_mut(), tonic::body::Body::empty());
            *response.body_mut() = tonic::body::Body::new(MeteredBody { inner: body, call });
            Ok(response)
        })
    }
}

/// One call being measured; recorded once, when its status is known or it is abandoned.
struct Call {
    method: Arc<MethodMetrics>,
    metrics: Metrics,
    started: Instant,
    code: Option<Code>,
    recorded: bool,
}

impl Call {
    fn start(method: Arc<MethodMetrics>, metrics: Metrics) -> Call {
        method.active.increment(1.0);
        Call {
            method,
            metrics,
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
                    ("rpc_method", &self.method.name),
                    ("rpc_response_status_code", code_name(code)),
                    ("rpc_system", "grpc"),
                ],
            )
        });
        histogram.record(self.started.elapsed().as_secs_f64());
    }
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
