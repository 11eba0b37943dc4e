//! The network between the rehearsal's processes: a round-robin TCP balancer where a Kubernetes
//! Service would be, and a proxy in front of PostgreSQL that the test cuts, as a partition would.
//!
//! Both are plain TCP (gRPC's HTTP/2 and PostgreSQL's protocol pass through untouched), like
//! kube-proxy: a Service balances *connections*, not calls, which is what the gates and the
//! services' clients meet in a cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// How long a balancer tries one backend before it skips to the next (a dead pod's port refuses
/// at once; this bounds a hung one).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What a [`Balancer`] routes to and what it did, behind one lock.
#[derive(Default)]
struct State {
    /// The ready endpoints, by pod name (the EndpointSlice of the Service).
    endpoints: Vec<(String, SocketAddr)>,
    /// Where the next connection starts looking.
    next: usize,
    /// While set, every connection is dropped and new ones are refused.
    cut: bool,
    /// Open connections, so that a cut can drop them.
    open: Vec<AbortHandle>,
    /// Connections accepted per pod.
    per_pod: BTreeMap<String, u64>,
}

/// A TCP round-robin balancer over a set of endpoints that the test keeps current, as the
/// endpoints controller does from readiness: a connection goes to the next endpoint that
/// accepts it; one that refuses (a killed pod the controller has not removed yet) is skipped.
#[derive(Clone)]
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// What it is in front of, for the report.
    pub name: String,
    state: Arc<Mutex<State>>,
    skipped: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Balancer {
    /// Listens on an ephemeral loopback port with no endpoints yet.
    pub async fn start(name: &str) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a balancer");
        let balancer = Balancer {
            addr: listener.local_addr().expect("balancer address"),
            name: name.to_owned(),
            state: Arc::default(),
            skipped: Arc::default(),
            refused: Arc::default(),
        };
        let serving = balancer.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let balancer = serving.clone();
                tokio::spawn(async move { balancer.route(inbound).await });
            }
        });
        balancer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one inbound connection to the next endpoint that takes it.
    async fn route(&self, mut inbound: TcpStream) {
        let candidates = {
            let mut state = self.lock();
            if state.cut || state.endpoints.is_empty() {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let n = state.endpoints.len();
            let start = state.next % n;
            state.next = (start + 1) % n;
            (0..n)
                .map(|i| state.endpoints[(start + i) % n].clone())
                .collect::<Vec<_>>()
        };
        for (pod, backend) in candidates {
            let Ok(Ok(mut outbound)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await
            else {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let task = tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
            let mut state = self.lock();
            if state.cut {
                // Cut while this connection was being made: it never existed.
                task.abort();
                return;
            }
            *state.per_pod.entry(pod).or_default() += 1;
            state.open.retain(|h| !h.is_finished());
            state.open.push(task.abort_handle());
            return;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a ready pod (its readiness probe passed).
    pub fn add(&self, pod: &str, addr: SocketAddr) {
        let mut state = self.lock();
        state.endpoints.retain(|(p, _)| p != pod);
        state.endpoints.push((pod.to_owned(), addr));
    }

    /// Removes a pod, as the endpoints controller does when a pod starts terminating: new
    /// connections go elsewhere, established ones stay (the pod drains them itself).
    pub fn remove(&self, pod: &str) {
        self.lock().endpoints.retain(|(p, _)| p != pod);
    }

    /// A partition: every open connection is dropped and new ones are refused until
    /// [`Balancer::restore`].
    pub fn cut(&self) {
        let mut state = self.lock();
        state.cut = true;
        for handle in state.open.drain(..) {
            handle.abort();
        }
    }

    /// Ends a partition.
    pub fn restore(&self) {
        self.lock().cut = false;
    }

    /// Connections per pod, connection attempts that skipped a dead endpoint, and connections
    /// refused (cut, or no endpoint took them).
    pub fn stats(&self) -> (BTreeMap<String, u64>, u64, u64) {
        (
            self.lock().per_pod.clone(),
            self.skipped.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
