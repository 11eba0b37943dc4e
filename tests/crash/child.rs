//! The service under test as a child process: the real `consentgate serve …` binary, started
//! on a database that outlives it, killed with SIGKILL (as the OOM killer or a lost node would),
//! and started again on the same data. Each start listens on a fresh loopback port and appends
//! its output to one log file, whose tail a failure quotes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a start may take before the harness calls it hung (a PostgreSQL start on a busy
/// machine takes a second or two; a journal to chain, a little more).
const START_PATIENCE: Duration = Duration::from_secs(60);

/// How to start one service: `consentgate serve <service> <args> --listen <port>`.
pub struct Service {
    /// `consent` or `profile`.
    name: &'static str,
    args: Vec<String>,
    log: PathBuf,
    starts: u32,
}

/// One running (or starting) process of the service.
pub struct Process {
    child: tokio::process::Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
}

impl Service {
    /// `args` are everything `serve <name>` needs apart from `--listen`; output goes to `log`.
    pub fn new(name: &'static str, args: Vec<String>, log: PathBuf) -> Service {
        Service {
            name,
            args,
            log,
            starts: 0,
        }
    }

    /// Starts a process without waiting for it (a kill during start-up is a crash too).
    pub fn spawn(&mut self) -> Process {
        self.starts += 1;
        let addr = free_port();
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the child's log");
        use std::io::Write;
        let _ = writeln!(out, "===== start {} on {addr}", self.starts);
        let err = out.try_clone().expect("the child's log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_consentgate"))
            .args(["serve", self.name, "--listen", &addr.to_string()])
            .args(&self.args)
            // Only what the arguments say: no CONSENTGATE_* of the caller's shell leaks in.
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start consentgate");
        Process { child, addr }
    }

    /// Starts a process and waits until its health service says it serves.
    pub async fn start(&mut self) -> Process {
        let mut process = self.spawn();
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "consentgate serve {} exited ({status}) while starting:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if serving(process.addr).await {
                return process;
            }
            assert!(
                Instant::now() < deadline,
                "consentgate serve {} did not serve within {START_PATIENCE:?}:\n{}",
                self.name,
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Process {
    /// Its process id, while it runs (tests/limits.rs reads its memory).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: no shutdown hook, no flush, no graceful anything.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// A channel to it (connected lazily, so that a dead process is an error of the first call,
    /// not of this).
    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect_lazy()
    }
}

/// Whether the server at `addr` answers its health check with SERVING.
async fn serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The last 20 lines of a child's log, for a failure report.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
