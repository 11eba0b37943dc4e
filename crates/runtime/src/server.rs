//! What every consentgate server needs besides its own service, written once: [`serve`] puts a
//! service's routes behind the auth layer, next to health and reflection (v1 and v1alpha, with
//! `google.rpc` detail types registered so `grpcurl` decodes errors), over plaintext or mutual
//! TLS ([`Edge`]), with TCP_NODELAY and graceful shutdown; [`Running`] is a server spawned in the
//! background, for the suite and tests.

use crate::Telemetry;
use crate::auth::{AuthLayer, Authenticator, RpcRules};
use crate::limits::{LimitLayer, Limits};
use crate::rpc_telemetry::RpcTelemetryLayer;
use crate::tls::{TlsMaterial, accept_tls};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How a server meets the network: who it admits (callers by token or by certificate), whether
/// it speaks TLS, and where kubelet probes its health when the main port needs a client
/// certificate (kubelet's gRPC probe cannot present one).
#[derive(Debug, Default)]
pub struct Edge {
    /// Who the callers are.
    pub authenticator: Authenticator,
    /// TLS material: the server's certificate and the trust bundle client certificates must
    /// chain to. `None` serves plaintext (development, or a mesh that terminates TLS).
    pub tls: Option<TlsMaterial>,
    /// A plaintext listener serving only `grpc.health.v1`, for probes.
    pub probe: Option<TcpListener>,
    /// What the server takes on: rates, calls in flight, streams, HTTP/2 bounds.
    pub limits: Limits,
}

impl Edge {
    /// Plaintext, with these callers and no rate or in-flight limit ([`Limits::unlimited`]):
    /// for benchmarks that measure the service, not its limiter.
    pub fn unlimited(authenticator: Authenticator) -> Edge {
        Edge {
            authenticator,
            limits: Limits::unlimited(),
            ..Edge::default()
        }
    }
}

impl From<Authenticator> for Edge {
    /// Plaintext, with these callers and the default limits.
    fn from(authenticator: Authenticator) -> Edge {
        Edge {
            authenticator,
            ..Edge::default()
        }
    }
}

/// Serves `api` (one service's generated gRPC server, message limits already set) on `listener`
/// until `shutdown` resolves, then reports it NOT_SERVING and drains in-flight calls.
///
/// Every request is traced and measured (`telemetry`: a server span continuing the caller's
/// trace; duration by method and status, calls in flight), then passes the auth layer (`edge`
/// says who the caller is, `rules` which roles may call which RPC) and the caller's limits
/// (deadline, rate, calls in flight, open streams: [`crate::limits`]); health and reflection
/// stay open and unthrottled so probes and `grpcurl` work without credentials. Reflection lists
/// this service only. Every connection is held to the edge's HTTP/2 bounds.
pub async fn serve<S>(
    api: S,
    edge: impl Into<Edge>,
    rules: RpcRules,
    telemetry: &Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let Edge {
        authenticator: auth,
        tls,
        probe,
        limits,
    } = edge.into();
    let health_name = S::NAME;
    let (reporter, health_service) = health();
    reporter
        .set_service_status(health_name, ServingStatus::Serving)
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection(&[health_name]);
    let (probe_stop, probe_stopped) = oneshot::channel::<()>();
    if let Some(probe) = probe {
        let probe_health = health_service.clone();
        let probe_http2 = limits.http2.clone();
        tokio::spawn(async move {
            let served = probe_http2
                .apply(tonic::transport::Server::builder())
                .add_service(probe_health)
                .serve_with_incoming_shutdown(TcpListenerStream::new(probe), async {
                    let _ = probe_stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the health probe listener failed");
            }
        });
    }
    let measured = rules
        .methods()
        .map(str::to_owned)
        .chain(OPEN_METHODS.iter().map(|m| (*m).to_owned()))
        .collect::<Vec<_>>();
    let layers = tower::ServiceBuilder::new()
        .layer(RpcTelemetryLayer::new(
            &telemetry.metrics,
            &telemetry.tracing,
            measured.iter().map(String::as_str),
        ))
        .layer(AuthLayer::new(auth, rules))
        .layer(LimitLayer::new(limits.clone(), &telemetry.metrics))
        .layer(crate::oversize::OversizeLayer);
    let router = limits
        .http2
        .apply(tonic::transport::Server::builder())
        .layer(layers)
        .add_routes(Routes::new(api))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let drained = async move {
        shutdown.await;
        reporter
            .set_service_status(health_name, ServingStatus::NotServing)
            .await;
        // The probe port stays up while calls drain, answering NOT_SERVING.
        drop(probe_stop);
    };
    match tls {
        Some(material) => {
            let _reloader = AbortOnDrop(material.spawn_reloader(TLS_RELOAD_EVERY));
            router
                .serve_with_incoming_shutdown(accept_tls(listener, material), drained)
                .await
        }
        None => {
            // Small request/response pairs: Nagle's algorithm would add tens of milliseconds.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                conn.and_then(|stream| {
                    stream.set_nodelay(true)?;
                    Ok(stream)
                })
            });
            router.serve_with_incoming_shutdown(incoming, drained).await
        }
    }
}

/// How often a TLS server re-reads its certificate, key and trust bundle. cert-manager renews
/// well before expiry (a third of the lifetime by default), so seconds of delay cost nothing.
pub const TLS_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops a background task when the server it belongs to ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The methods every server has besides its own: health and reflection (v1 and v1alpha).
const OPEN_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// A server running in the background: its address, and a way to stop it and wait for the drain.
#[derive(Debug)]
pub struct Running<E> {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// `None` once [`Running::ended`] has seen it end.
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> Running<E> {
    /// Spawns `serve(listener, shutdown)` on the current runtime. It stops when [`Running::stop`]
    /// is called or the handle is dropped.
    pub fn spawn<F>(
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, ShutdownSignal) -> F,
    ) -> std::io::Result<Running<E>>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, ShutdownSignal(stopped)));
        Ok(Running {
            address,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Asks it to shut down and waits until in-flight calls have drained.
    pub async fn stop(mut self) -> Result<(), E> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished().await
    }

    /// Waits until it ends by itself (a server error, or its shutdown signal).
    pub async fn finished(mut self) -> Result<(), E> {
        self.ended().await
    }

    /// Resolves when it has ended (by itself, or stopped), keeping the handle: what a supervisor
    /// selects on to notice one of several servers failing. Its outcome is told once; asked
    /// again (say by [`Running::stop`] afterwards), an ended server answers `Ok` at once.
    pub async fn ended(&mut self) -> Result<(), E> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let outcome = task.await;
        self.task = None;
        match outcome {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // Cancelled: the runtime is shutting down, which is an end like any other.
            Err(_) => Ok(()),
        }
    }
}

/// Resolves when a [`Running`] server is asked to stop (or its handle is dropped).
#[derive(Debug)]
pub struct ShutdownSignal(oneshot::Receiver<()>);

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// The largest message a server accepts or sends (4 MiB): bounds memory per request.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Reflection services listing `services` (a server's own, and health), with every consentgate,
/// `grpc.health.v1` and `google.rpc` type resolvable: on a port of the suite, only that port's
/// service is advertised.
pub fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(consentgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    let v1 = builder()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    (v1, v1alpha)
}

/// A health service and its reporter; the reporter flips to NOT_SERVING on shutdown.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    #[tokio::test]
    async fn a_server_that_fails_is_seen_once_and_then_stops_at_once() {
        let mut failing = Running::spawn(listener().await, |_, _| async {
            Err::<(), _>("the port went away")
        })
        .expect("spawn");
        assert_eq!(failing.ended().await, Err("the port went away"));
        assert_eq!(failing.stop().await, Ok(()), "already ended: told once");
    }

    #[tokio::test]
    async fn stop_ends_a_server_waiting_for_its_signal() {
        let running = Running::spawn(listener().await, |_, shutdown| async move {
            shutdown.await;
            Ok::<(), &str>(())
        })
        .expect("spawn");
        assert_eq!(running.stop().await, Ok(()));
    }
}
