//! Crash durability, tested by crashing (issue 15, item 4): the real `consentgate serve consent`
//! (or `serve profile`) runs as a child process under writes from several concurrent clients at
//! full speed, is killed with SIGKILL at a random moment, is started again on the same
//! database, and is checked after every restart:
//!
//! - consent: every acknowledged write is in the change feed and the subject's history with the
//!   acknowledged revision and content; a retry of every unacknowledged idempotency key applies
//!   exactly once (the same revision when it had committed, one new revision otherwise, and a
//!   second retry answers the same); the ledger verifies; the feed is the gap-free sequence
//!   `1..=high` that a gate resuming from any revision it saw cannot skip past;
//! - profile: every acknowledged attribute, answer and event reads back, an unacknowledged
//!   write is there whole or not at all, and every answered read has its access-log entry.
//!
//! Both on SQLite and PostgreSQL. The CI-sized runs are ordinary tests; the long runs are the
//! ignored `long_run`, configured by environment (docs/durability.md):
//!
//! ```text
//! CONSENTGATE_CRASHES=1000 CONSENTGATE_CRASH_BACKEND=sqlite CONSENTGATE_CRASH_SERVICE=consent \
//! CONSENTGATE_CRASH_SEED=42 cargo test --test crash -- --ignored --nocapture long_run
//! ```
//!
//! Every run prints its seed; the same seed replays the same operations and kill delays (the
//! interleaving of the clients with the kill is up to the machine).

#[path = "crash/child.rs"]
mod child;
mod common;
#[path = "crash/consent.rs"]
mod consent;
#[path = "crash/profile.rs"]
mod profile;

use consentgate_consent::testing::{Backend, TestDb, backends};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Crashes of the consent service per backend in CI.
const CI_CONSENT_CRASHES: u32 = 100;
/// Crashes of the profile service per backend in CI (each restart also chains a journal and
/// re-reads every subject, so fewer).
const CI_PROFILE_CRASHES: u32 = 30;

/// SplitMix64: a small seeded generator, so that a failing run replays from its printed seed
/// (the test crate cannot reach the load generators' copy in `benches/`).
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next draw.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A generator of its own for a part of the run (a client, a cycle), derived from this one's
    /// seed so that the parts do not depend on each other's draws.
    pub fn fork(seed: u64, part: u64) -> Rng {
        let mut r = Rng::new(seed ^ part.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next_u64();
        r
    }
}

/// What a run did, for its report.
#[derive(Debug, Default)]
pub struct Summary {
    /// Kills of a serving process under load.
    pub crashes: u32,
    /// Kills before the process served (during start-up).
    pub kills_starting: u32,
    /// Writes the service answered (before a kill).
    pub acknowledged_writes: u64,
    /// Unacknowledged requests retried after a restart: those that had committed before the
    /// kill, and those that applied on the retry.
    pub retried_committed: u64,
    /// See `retried_committed`.
    pub retried_applied: u64,
    /// Profile only: answered reads whose access-log entries were checked.
    pub answered_reads: u64,
    /// Profile only: unacknowledged writes found whole after the restart, and not at all.
    pub unacknowledged_present: u64,
    /// See `unacknowledged_present`.
    pub unacknowledged_absent: u64,
    /// Consent only: the last revision (as many changes as the run made).
    pub final_revision: u64,
    /// Profile only: reads after a restart retried because they answered `UNAVAILABLE`.
    pub unavailable_retries: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} crashes (+{} during start-up), {} acknowledged writes, in flight at a kill: {} \
             had committed, {} applied on retry; {} answered reads; unacknowledged writes found \
             whole {}, absent {}; final revision {}; reads retried after UNAVAILABLE {}",
            self.crashes,
            self.kills_starting,
            self.acknowledged_writes,
            self.retried_committed,
            self.retried_applied,
            self.answered_reads,
            self.unacknowledged_present,
            self.unacknowledged_absent,
            self.final_revision,
            self.unavailable_retries
        )
    }
}

/// A run's scratch folder (databases, key, tokens, the child's log); kept when the run failed.
pub struct Scratch(pub PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "consentgate-crash-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let tokens: String = common::tokens()
            .iter()
            .map(|(caller, token)| format!("\"{caller}\" = \"{token}\"\n"))
            .collect();
        std::fs::write(dir.join("tokens.toml"), tokens).expect("tokens file");
        Scratch(dir)
    }

    /// A file in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the crash run's files are kept in {}", self.0.display());
            // CI keeps the output, not the folder: quote the end of every child's log.
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "--- the last lines of {} ---\n{}",
                        path.display(),
                        child::tail(&path)
                    );
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The seed: `CONSENTGATE_CRASH_SEED`, else the clock.
fn seed() -> u64 {
    match std::env::var("CONSENTGATE_CRASH_SEED") {
        Ok(s) => s.parse().expect("CONSENTGATE_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Consent,
    Profile,
}

/// One run: `crashes` kills of `target` on `backend`, with its report printed.
async fn crash_run(target: Target, backend: Backend, crashes: u32) -> Summary {
    log_warnings_to_test_output();
    let seed = seed();
    println!(
        "crash run: {target:?} on {backend:?}, {crashes} crashes, seed {seed} \
         (replay with CONSENTGATE_CRASH_SEED={seed})"
    );
    let scratch = Scratch::new(&format!("{target:?}-{backend:?}").to_lowercase());
    let db = TestDb::new(backend).await;
    let began = Instant::now();
    let summary = match target {
        Target::Consent => consent::run(&scratch, &db.url, crashes, seed).await,
        Target::Profile => profile::run(&scratch, backend, &db.url, crashes, seed).await,
    };
    println!(
        "crash run: {target:?} on {backend:?}, seed {seed}: {summary} in {:.1?}",
        began.elapsed()
    );
    summary
}

/// Sends the warnings and errors of the services this test binary runs in process (the
/// consent service in front of a crashing profile service) to the output of the test that ran
/// them, which a failing test prints: a store failure is logged by class only, and that class
/// is what a failure report needs.
fn log_warnings_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_test_writer()
            .try_init();
    });
}

/// Whether this run covers PostgreSQL (in CI it must: `backends` fails when it is not set).
fn postgres_covered() -> bool {
    backends().contains(&Backend::Postgres)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_survives_kill_9_on_sqlite() {
    let s = crash_run(Target::Consent, Backend::Sqlite, CI_CONSENT_CRASHES).await;
    assert_eq!(s.crashes, CI_CONSENT_CRASHES);
    assert!(
        s.acknowledged_writes > u64::from(CI_CONSENT_CRASHES),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_survives_kill_9_on_postgres() {
    if !postgres_covered() {
        return;
    }
    let s = crash_run(Target::Consent, Backend::Postgres, CI_CONSENT_CRASHES).await;
    assert_eq!(s.crashes, CI_CONSENT_CRASHES);
    assert!(
        s.acknowledged_writes > u64::from(CI_CONSENT_CRASHES),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profile_survives_kill_9_on_sqlite() {
    let s = crash_run(Target::Profile, Backend::Sqlite, CI_PROFILE_CRASHES).await;
    assert_eq!(s.crashes, CI_PROFILE_CRASHES);
    assert!(s.answered_reads > u64::from(CI_PROFILE_CRASHES), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profile_survives_kill_9_on_postgres() {
    if !postgres_covered() {
        return;
    }
    let s = crash_run(Target::Profile, Backend::Postgres, CI_PROFILE_CRASHES).await;
    assert_eq!(s.crashes, CI_PROFILE_CRASHES);
    assert!(s.answered_reads > u64::from(CI_PROFILE_CRASHES), "{s:?}");
}

/// The finding the crash run turned up, made deterministic: after a kill between the commit
/// that chains a SQLite access journal and the deletion of its file, the next start must not
/// chain the journal again, or the access report lists a read twice (docs/durability.md,
/// "Findings").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journal_chained_twice() {
    let scratch = Scratch::new("journal");
    let db = TestDb::new(Backend::Sqlite).await;
    let (answered, entries) = profile::journal_chained_twice(&scratch, &db.url).await;
    assert_eq!(
        entries, answered,
        "{answered} reads answered, {entries} access-log entries: a journal chained twice"
    );
}

/// The long run, outside CI: `CONSENTGATE_CRASHES` (default 1,000) kills of
/// `CONSENTGATE_CRASH_SERVICE` (`consent` or `profile`) on `CONSENTGATE_CRASH_BACKEND`
/// (`sqlite` or `postgres`), seeded by `CONSENTGATE_CRASH_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run it by hand (docs/durability.md)"]
async fn long_run() {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let crashes: u32 = var("CONSENTGATE_CRASHES", "1000")
        .parse()
        .expect("CONSENTGATE_CRASHES is a number");
    let backend = match var("CONSENTGATE_CRASH_BACKEND", "sqlite").as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => {
            assert!(postgres_covered(), "set CONSENTGATE_TEST_POSTGRES_URL");
            Backend::Postgres
        }
        other => panic!("CONSENTGATE_CRASH_BACKEND={other}: sqlite or postgres"),
    };
    let target = match var("CONSENTGATE_CRASH_SERVICE", "consent").as_str() {
        "consent" => Target::Consent,
        "profile" => Target::Profile,
        other => panic!("CONSENTGATE_CRASH_SERVICE={other}: consent or profile"),
    };
    let s = crash_run(target, backend, crashes).await;
    assert_eq!(s.crashes, crashes);
}

/// Whether a failed call is what a killed server looks like (anything else is a bug: a write
/// the service refused, a conflict of idempotency keys).
pub fn died(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
    )
}

/// How long the load runs before the kill: uniform in `1..max_ms` milliseconds.
pub fn kill_delay(rng: &mut Rng, max_ms: u64) -> Duration {
    Duration::from_millis(1 + rng.below(max_ms))
}
