//! Mutual TLS: a service's own certificate (for serving and for its outgoing calls), the trust
//! bundle every peer certificate must chain to, both reloaded from disk while the service runs
//! (cert-manager rotates them), and the SPIFFE identity of a verified peer.
//!
//! The handshake happens here, not in tonic, for two reasons: tonic's TLS configuration is fixed
//! at start (a rotated certificate would need a restart), and the peer's identity is read once
//! per connection (the URI SAN of its verified certificate) instead of once per request.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

/// Where a service's TLS material lives: PEM files, as cert-manager writes them into a
/// `kubernetes.io/tls` secret (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The service's certificate chain (its own certificate first).
    pub cert: PathBuf,
    /// The private key of that certificate.
    pub key: PathBuf,
    /// The trust bundle: peers' certificates (clients' and servers') must chain to one of these.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The three files cert-manager writes into a mounted secret directory.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
        }
    }
}

/// Whether a server insists on client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Every connection presents a certificate that chains to the trust bundle (mTLS).
    #[default]
    Required,
    /// A connection may come without one (its requests then need a bearer token); one that is
    /// presented must still chain to the trust bundle.
    Optional,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A service's TLS material, loaded and checked, and kept current: [`TlsMaterial::reload`]
/// (called every few seconds by [`TlsMaterial::spawn_reloader`]) swaps in new files once they
/// parse and fit together, so new connections use them; established ones keep theirs.
#[derive(Clone)]
pub struct TlsMaterial {
    shared: Arc<Shared>,
}

struct Shared {
    files: TlsFiles,
    client_auth: ClientAuth,
    current: RwLock<Configs>,
    /// Digest of the three files' bytes as last loaded: unchanged files are not re-parsed.
    fingerprint: Mutex<[u8; 32]>,
}

#[derive(Clone)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.shared.files)
            .field("client_auth", &self.shared.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads `files`; fails when any is missing, malformed, or they do not fit together.
    pub fn load(files: TlsFiles, client_auth: ClientAuth) -> Result<TlsMaterial, TlsError> {
        let (bytes, fingerprint) = read_all(&files)?;
        let current = build(&files, &bytes, client_auth)?;
        Ok(TlsMaterial {
            shared: Arc::new(Shared {
                files,
                client_auth,
                current: RwLock::new(current),
                fingerprint: Mutex::new(fingerprint),
            }),
        })
    }

    /// Re-reads the files. `Ok(true)` when they changed and were swapped in, `Ok(false)` when
    /// unchanged; on error the material in use stays (a half-written rotation is retried later).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (bytes, fingerprint) = read_all(&self.shared.files)?;
        if *lock(&self.shared.fingerprint) == fingerprint {
            return Ok(false);
        }
        let configs = build(&self.shared.files, &bytes, self.shared.client_auth)?;
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = configs;
        *lock(&self.shared.fingerprint) = fingerprint;
        Ok(true)
    }

    /// Reloads every `every` until the material is dropped everywhere else, logging rotations
    /// and (without their contents) failures.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                match (TlsMaterial { shared }).reload() {
                    Ok(true) => tracing::info!("TLS certificate or trust bundle rotated"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS material not reloaded; keeping the current one")
                    }
                }
            }
        })
    }

    fn configs(&self) -> Configs {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An acceptor for one new connection, with the material current now.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs().server)
    }

    /// A connector for one new outgoing connection, with the material current now.
    fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.configs().client)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

fn read_all(files: &TlsFiles) -> Result<(FileBytes, [u8; 32]), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let bytes = FileBytes {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        ca: read(&files.ca)?,
    };
    let mut digest = Sha256::new();
    for part in [&bytes.cert, &bytes.key, &bytes.ca] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    Ok((bytes, digest.finalize().into()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(
    files: &TlsFiles,
    bytes: &FileBytes,
    client_auth: ClientAuth,
) -> Result<Configs, TlsError> {
    let pem_error = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&bytes.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(&files.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes.key)
        .map_err(|e| pem_error(&files.key, format!("not a PEM private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&bytes.ca) {
        let ca = ca.map_err(|e| pem_error(&files.ca, format!("not a PEM certificate: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| pem_error(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_error(&files.ca, "no CA certificate in the file".into()));
    }
    let roots = Arc::new(roots);
    let config_error = |e: rustls::Error| TlsError::Config(e.to_string());

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    let verifier = match client_auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_error)?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// What the server knows about a connection's peer, in every request's extensions: its address
/// and, when it presented a verified certificate, the certificate's SPIFFE ID.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// The TCP peer.
    pub tcp: Option<TcpConnectInfo>,
    /// The `spiffe://` URI SAN of the verified client certificate, if it presented one.
    pub spiffe_id: Option<Arc<str>>,
    /// Whether it presented a verified certificate at all (with or without a SPIFFE ID).
    pub has_certificate: bool,
}

/// The SPIFFE ID of a certificate: its one `spiffe://` URI SAN. None when it has none, or more
/// than one (the SPIFFE X.509 profile allows exactly one; two would make the identity ambiguous).
pub fn spiffe_id_of(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(*uri)
            }
            _ => None,
        });
    let first = ids.next()?;
    ids.next().is_none().then(|| first.to_owned())
}

/// A server-side TLS connection with its peer's identity, read once at the handshake.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How long a client may take to finish its TLS handshake: a slow or silent client holds a
/// handshake slot, not the accept loop.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes may be in progress at once; further connections wait in the kernel's
/// accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently (each
/// bounded by [`HANDSHAKE_TIMEOUT`]), yielding the connections that verified. A failed handshake
/// (no certificate, another CA, an expired certificate) closes that connection only.
pub fn accept_tls(
    listener: TcpListener,
    material: TlsMaterial,
) -> impl tokio_stream::Stream<Item = io::Result<TlsConnection>> {
    let (send, receive) = tokio::sync::mpsc::channel(MAX_PENDING_HANDSHAKES);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if send.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = material.acceptor();
            let send = send.clone();
            tokio::spawn(async move {
                let tcp_info = tcp.connect_info();
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                let peer = PeerIdentity {
                    tcp: Some(tcp_info),
                    spiffe_id: certificate.and_then(|c| spiffe_id_of(c)).map(Arc::from),
                    has_certificate: certificate.is_some(),
                };
                let _ = send.send(Ok(TlsConnection { stream, peer })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receive)
}

/// Makes the channels a service's outgoing calls use: plaintext, or TLS with the service's own
/// certificate (so the called service knows who is calling) for `https://` addresses.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<TlsMaterial>,
}

impl Dialer {
    /// Plaintext only: an `https://` address is refused.
    pub fn plaintext() -> Dialer {
        Dialer { tls: None }
    }

    /// TLS with `material` for `https://` addresses (plaintext `http://` ones stay possible,
    /// for a peer outside the mesh; the deployment decides which addresses it gives).
    pub fn tls(material: TlsMaterial) -> Dialer {
        Dialer {
            tls: Some(material),
        }
    }

    /// Whether outgoing calls can use TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Where outgoing calls to `url` go: `http://` plaintext, `https://` TLS with this
    /// service's certificate (refused when it has none).
    pub fn target(&self, url: &str) -> Result<Target, DialError> {
        let bad = |e: &dyn std::fmt::Display| DialError(format!("address {url:?}: {e}"));
        let uri: Uri = url.parse().map_err(|e| bad(&e))?;
        match uri.scheme_str() {
            Some("http") => Ok(Target {
                endpoint: Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e))?,
                tls: None,
            }),
            Some("https") => {
                let Some(material) = &self.tls else {
                    return Err(bad(
                        &"https:// needs this service's TLS certificate (--tls-dir)",
                    ));
                };
                // tonic refuses `https://` with a custom connector; the connector below does the
                // TLS, and the origin keeps `:scheme` and `:authority` as the caller wrote them.
                let authority = uri.authority().ok_or_else(|| bad(&"no host"))?;
                let plain = format!("http://{authority}");
                Ok(Target {
                    endpoint: Endpoint::from_shared(plain)
                        .map_err(|e| bad(&e))?
                        .origin(uri),
                    tls: Some(material.clone()),
                })
            }
            _ => Err(bad(&"the scheme must be http:// or https://")),
        }
    }
}

/// One outgoing address, ready to connect: its tonic endpoint and, for `https://`, the TLS
/// material the connection presents.
#[derive(Clone, Debug)]
pub struct Target {
    endpoint: Endpoint,
    tls: Option<TlsMaterial>,
}

impl Target {
    /// Adjusts the endpoint (timeouts, keepalive) before connecting.
    pub fn configure(mut self, adjust: impl FnOnce(Endpoint) -> Endpoint) -> Target {
        self.endpoint = adjust(self.endpoint);
        self
    }

    /// A channel that connects on first use (and reconnects with the material current then).
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            Some(material) => self.endpoint.connect_with_connector_lazy(TlsDial {
                material: material.clone(),
            }),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// Whether calls through it use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Why an outgoing address cannot be dialled.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DialError(String);

/// The connector behind a TLS channel: TCP, then a handshake presenting the service's current
/// certificate and verifying the server's against the trust bundle and the address's host name.
#[derive(Clone)]
struct TlsDial {
    material: TlsMaterial,
}

impl tower::Service<Uri> for TlsDial {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.material.connector();
        Box::pin(async move {
            let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the address has no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            // Small request/response pairs: Nagle's algorithm would add tens of milliseconds.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|_| invalid("the host is not a valid TLS server name"))?
                .to_owned();
            let stream = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
