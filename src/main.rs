//! The `consentgate` binary: `up` (the embedded suite), `serve` (one service, for production),
//! `policy validate`, `ledger verify`, `keys` (the signing keyring: show, stage, rotate, verify
//! a receipt), `restore reapply-erasures` and `import` (consent records from another platform).
//! It only parses configuration and wires libraries.

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use consentgate::suite::{self, ConsentSettings, SuiteConfig};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server as consent_server;
use consentgate_gate::GateConfig;
use consentgate_policy::Policy;
use consentgate_profile::request_key::RequestKey;
use consentgate_profile::server::{self as profile_server, Profile, ProfileConfig};
use consentgate_recommendation::catalog::Catalog;
use consentgate_recommendation::server::{self as recommendation_server, RecommendationConfig};
use consentgate_runtime::metrics_otlp::{OtlpPush, spawn_push};
use consentgate_runtime::tls::{ClientAuth, Dialer, TlsFiles, TlsMaterial};
use consentgate_runtime::{
    Authenticator, Edge, Http2Limits, Limits, Rate, Running, Telemetry, TraceExport, Tracing,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod seed;

/// mimalloc instead of the system allocator: a request allocates and frees many small strings
/// and a few large buffers, a pattern on which glibc's malloc spent about a seventh of the
/// services' CPU time in the recommendation benchmark (fastbin consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "consentgate",
    version,
    about = "Consent-gated personalization over gRPC"
)]
struct Cli {
    /// Log as JSON lines (for log collectors) instead of human-readable text. Like every
    /// boolean setting, its variable takes true/false, 1/0, yes/no or on/off.
    #[arg(long, env = "CONSENTGATE_LOG_JSON", global = true, value_parser = BoolishValueParser::new())]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start, so the size of its largest variant (a service's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start the suite on loopback with SQLite under the data folder and development tokens.
    Up {
        /// Where the SQLite databases and the signing key live.
        #[arg(long, env = "CONSENTGATE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The consent service's address.
        #[arg(
            long,
            env = "CONSENTGATE_CONSENT_LISTEN",
            default_value = "127.0.0.1:50051"
        )]
        consent_listen: String,
        /// The profile service's address.
        #[arg(
            long,
            env = "CONSENTGATE_PROFILE_LISTEN",
            default_value = "127.0.0.1:50052"
        )]
        profile_listen: String,
        /// The recommendation service's address.
        #[arg(
            long,
            env = "CONSENTGATE_RECOMMENDATION_LISTEN",
            default_value = "127.0.0.1:50053"
        )]
        recommendation_listen: String,
        /// The policy file; the shipped default when absent.
        #[arg(long, env = "CONSENTGATE_POLICY")]
        policy: Option<PathBuf>,
        /// The consent service's Prometheus `/metrics` address (`off`: no metrics).
        #[arg(
            long,
            env = "CONSENTGATE_CONSENT_METRICS_LISTEN",
            default_value = "127.0.0.1:9464"
        )]
        consent_metrics_listen: String,
        /// The profile service's Prometheus `/metrics` address (`off`: no metrics).
        #[arg(
            long,
            env = "CONSENTGATE_PROFILE_METRICS_LISTEN",
            default_value = "127.0.0.1:9465"
        )]
        profile_metrics_listen: String,
        /// The recommendation service's Prometheus `/metrics` address (`off`: no metrics).
        #[arg(
            long,
            env = "CONSENTGATE_RECOMMENDATION_METRICS_LISTEN",
            default_value = "127.0.0.1:9466"
        )]
        recommendation_metrics_listen: String,
        /// Serve mutual TLS with development certificates (made under `DATA_DIR/certs` on first
        /// use): every caller, the services included, is known by its certificate.
        #[arg(long, env = "CONSENTGATE_MTLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        mtls: bool,
    },
    /// Make a development CA and a certificate per caller (SPIFFE IDs as URI SANs) for trying
    /// mTLS: `DIR/<caller>/{tls.crt,tls.key,ca.crt}` and `DIR/identities.toml`.
    DevCerts {
        /// Where to write them.
        #[arg(long, default_value = "./certs")]
        out: PathBuf,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = consentgate::dev_certs::DEV_TRUST_DOMAIN)]
        trust_domain: String,
        /// The Kubernetes namespace the SPIFFE IDs name.
        #[arg(long, default_value = consentgate::dev_certs::DEV_NAMESPACE)]
        namespace: String,
        /// Host names and addresses every certificate may serve (repeat the flag).
        #[arg(long = "host", default_values_t = dev_hosts())]
        hosts: Vec<String>,
        /// The policy whose callers get certificates; the shipped default when absent.
        #[arg(long, env = "CONSENTGATE_POLICY")]
        policy: Option<PathBuf>,
    },
    /// Run one service, configured by flags or environment variables (production).
    Serve {
        #[command(subcommand)]
        service: Service,
    },
    /// Play the product's story against running services (start them with `up` first).
    Demo {
        /// The consent service.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        consent: String,
        /// The profile service.
        #[arg(long, default_value = "http://127.0.0.1:50052")]
        profile: String,
        /// The recommendation service.
        #[arg(long, default_value = "http://127.0.0.1:50053")]
        recommendation: String,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Consent ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// The consent service's signing keys: show them, stage and rotate a key, verify a receipt
    /// (docs/operations.md, "Rotating the signing key").
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// After restoring a database from a backup (docs/operations.md, "Backup and restore").
    Restore {
        #[command(subcommand)]
        command: RestoreCommand,
    },
    /// Import consent records exported from another platform: a JSONL file, one record per line
    /// (docs/import.md), streamed to the consent service's ImportConsents with a progress bar.
    /// Lines not stored are reported with their line number and reason. Run the same command
    /// again to resume an interrupted import. Exit status: 0 when every line was stored (or was
    /// already), 2 when some were rejected, 1 when the import could not finish.
    Import {
        /// The JSONL file.
        file: PathBuf,
        /// The platform the records come from (a-z, 0-9, '.', '_', '-'): a record's id is
        /// unique within its source, and imported once, for good.
        #[arg(long)]
        source: String,
        /// The consent service.
        #[arg(
            long,
            env = "CONSENTGATE_CONSENT_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        consent: String,
        /// A token of a caller with the privacy_ops role.
        #[arg(long, env = "CONSENTGATE_PRIVACY_OPS_TOKEN", hide_env_values = true)]
        token: String,
        /// Records per chunk (1 to 1,000).
        #[arg(long, default_value_t = 500)]
        chunk: usize,
        /// Write the rejected lines here (one JSON object per line) instead of to stderr.
        #[arg(long)]
        rejects: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RestoreCommand {
    /// Re-apply every erasure done since the backup, across the three services (the profile
    /// service's ReapplyErasures): safe to run at any time, and a second run changes nothing.
    /// Exits non-zero unless the run completed.
    ReapplyErasures {
        /// The profile service, which runs the re-application.
        #[arg(
            long,
            env = "CONSENTGATE_PROFILE_URL",
            default_value = "http://127.0.0.1:50052"
        )]
        profile: String,
        /// A token of a caller with the privacy_ops role, for the profile service only (it calls
        /// the consent and recommendation services with its own identity, on this caller's
        /// behalf).
        #[arg(long, env = "CONSENTGATE_PRIVACY_OPS_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Subcommand)]
enum Service {
    /// The consent service.
    Consent(ConsentArgs),
    /// The profile service.
    Profile(ProfileArgs),
    /// The recommendation service.
    Recommendation(RecommendationArgs),
}

/// Where a served service exposes its metrics.
#[derive(clap::Args)]
struct MetricsArgs {
    /// The Prometheus `/metrics` address, apart from the gRPC port so that a NetworkPolicy can
    /// open it to the monitoring namespace only (`off`: no metrics are collected).
    #[arg(
        long = "metrics-listen",
        env = "CONSENTGATE_METRICS_LISTEN",
        default_value = "0.0.0.0:9464"
    )]
    metrics_listen: String,
}

/// Who may call a served service, and over what: tokens, certificates, TLS.
#[derive(clap::Args)]
struct AccessArgs {
    /// TOML file of `caller-name = "token"` lines: callers known by a bearer token (mount it
    /// from a secret).
    #[arg(long, env = "CONSENTGATE_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// TOML file of `caller-name = "spiffe://…"` lines: callers known by their client
    /// certificate's SPIFFE ID (needs --tls-dir). Such a caller is refused with a token alone.
    #[arg(long, env = "CONSENTGATE_IDENTITIES_FILE")]
    identities_file: Option<PathBuf>,
    /// Directory holding `tls.crt`, `tls.key` and `ca.crt` (a cert-manager secret): serve TLS,
    /// verify client certificates against `ca.crt`, and present `tls.crt` when calling
    /// `https://` addresses. Re-read every 5 s, so rotated certificates need no restart.
    #[arg(long, env = "CONSENTGATE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// With --tls-dir: `required` (every connection presents a client certificate from the
    /// trust bundle) or `optional` (callers without one authenticate by token).
    #[arg(long, env = "CONSENTGATE_TLS_CLIENT_AUTH", value_enum, default_value_t = ClientAuthArg::Required)]
    tls_client_auth: ClientAuthArg,
    /// A plaintext address serving only gRPC health, for kubelet's probes (which cannot present
    /// a client certificate); none when absent.
    #[arg(long, env = "CONSENTGATE_PROBE_LISTEN")]
    probe_listen: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What one replica takes on (docs/operations.md, "Limits"): every limit is per replica.
#[derive(clap::Args)]
struct LimitArgs {
    /// Each caller's request rate at this replica: `N` per second (burst N/5), `N/B` (burst B),
    /// or `off`.
    #[arg(long, env = "CONSENTGATE_CALLER_RATE", default_value = "10000/2000", value_parser = parse_rate)]
    caller_rate: RateArg,
    /// A named caller's rate instead (`caller=N`, `caller=N/B` or `caller=off`; repeat, or
    /// separate with commas in the variable).
    #[arg(
        long = "caller-rate-for",
        env = "CONSENTGATE_CALLER_RATES",
        value_delimiter = ','
    )]
    caller_rates: Vec<String>,
    /// Calls in flight at this replica before new ones are shed with UNAVAILABLE (0: no bound).
    #[arg(long, env = "CONSENTGATE_MAX_IN_FLIGHT", default_value_t = 256)]
    max_in_flight: usize,
    /// Calls in flight per caller at this replica before its new ones are refused with
    /// RESOURCE_EXHAUSTED (0: no bound).
    #[arg(
        long,
        env = "CONSENTGATE_MAX_IN_FLIGHT_PER_CALLER",
        default_value_t = 128
    )]
    max_in_flight_per_caller: usize,
    /// Open WatchChanges streams per caller at this replica.
    #[arg(
        long,
        env = "CONSENTGATE_MAX_STREAMS_PER_CALLER",
        default_value_t = 1000
    )]
    max_streams_per_caller: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(
        long,
        env = "CONSENTGATE_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 512
    )]
    http2_max_concurrent_streams: u32,
    /// The largest request metadata (header list) accepted, in bytes.
    #[arg(long, env = "CONSENTGATE_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024)]
    max_header_list_bytes: u32,
    /// Seconds between HTTP/2 pings on a connection; one unanswered for
    /// --http2-keepalive-timeout-secs closes it.
    #[arg(long, env = "CONSENTGATE_HTTP2_KEEPALIVE_SECS", default_value_t = 30)]
    http2_keepalive_secs: u64,
    /// Seconds a ping may go unanswered.
    #[arg(
        long,
        env = "CONSENTGATE_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    http2_keepalive_timeout_secs: u64,
    /// Close connections gracefully after this many seconds, so clients spread over new
    /// replicas (cuts consent watchers' streams too: they reconnect); none when absent.
    #[arg(long, env = "CONSENTGATE_MAX_CONNECTION_AGE_SECS")]
    max_connection_age_secs: Option<u64>,
}

/// A rate flag's value: a rate, or none (`off`).
#[derive(Clone, Copy, Debug)]
struct RateArg(Option<Rate>);

/// `N`, `N/B` or `off`.
fn parse_rate(text: &str) -> Result<RateArg, String> {
    match text.trim() {
        "off" => Ok(RateArg(None)),
        rate => rate.parse().map(|rate| RateArg(Some(rate))),
    }
}

impl LimitArgs {
    /// The limits, with every caller named in --caller-rate-for checked against the policy (a
    /// misspelt name would silently leave that caller at the default).
    fn limits(&self, policy: &Policy) -> anyhow::Result<Limits> {
        let mut caller_rates = std::collections::HashMap::new();
        for entry in self.caller_rates.iter().filter(|e| !e.trim().is_empty()) {
            let (caller, rate) = entry
                .split_once('=')
                .with_context(|| format!("--caller-rate-for {entry:?}: expected caller=rate"))?;
            let caller = caller.trim();
            anyhow::ensure!(
                policy.callers.contains_key(caller),
                "--caller-rate-for names {caller:?}, which the policy does not define under [callers]"
            );
            let rate =
                parse_rate(rate).map_err(|e| anyhow::anyhow!("--caller-rate-for {caller}: {e}"))?;
            caller_rates.insert(caller.to_owned(), rate.0);
        }
        anyhow::ensure!(
            self.max_streams_per_caller > 0,
            "--max-streams-per-caller must be at least 1"
        );
        anyhow::ensure!(
            self.http2_max_concurrent_streams > 0,
            "--http2-max-concurrent-streams must be at least 1"
        );
        anyhow::ensure!(
            self.max_header_list_bytes >= 1024,
            "--max-header-list-bytes must be at least 1024"
        );
        Ok(Limits {
            caller_rate: self.caller_rate.0,
            caller_rates,
            max_in_flight: (self.max_in_flight > 0).then_some(self.max_in_flight),
            max_in_flight_per_caller: (self.max_in_flight_per_caller > 0)
                .then_some(self.max_in_flight_per_caller),
            max_streams_per_caller: self.max_streams_per_caller,
            http2: Http2Limits {
                max_concurrent_streams: self.http2_max_concurrent_streams,
                max_header_list_bytes: self.max_header_list_bytes,
                keepalive_interval: Duration::from_secs(self.http2_keepalive_secs.max(1)),
                keepalive_timeout: Duration::from_secs(self.http2_keepalive_timeout_secs.max(1)),
                max_connection_age: self.max_connection_age_secs.map(Duration::from_secs),
                ..Http2Limits::default()
            },
        })
    }
}

/// `--tls-client-auth`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ClientAuthArg {
    /// mTLS: every connection presents a client certificate.
    Required,
    /// A client certificate is verified when presented; callers without one use a token.
    Optional,
}

#[derive(clap::Args)]
struct RecommendationArgs {
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Address to listen on.
    #[arg(long, env = "CONSENTGATE_LISTEN", default_value = "0.0.0.0:50053")]
    listen: String,
    /// The policy file (for caller roles); the shipped default when absent.
    #[arg(long, env = "CONSENTGATE_POLICY")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
    /// The consent service, e.g. `http://consent:50051`.
    #[arg(long, env = "CONSENTGATE_CONSENT_URL")]
    consent_url: String,
    /// The profile service, e.g. `http://profile:50052`.
    #[arg(long, env = "CONSENTGATE_PROFILE_URL")]
    profile_url: String,
    /// This service's caller name (an enforcer).
    #[arg(
        long,
        env = "CONSENTGATE_CALLER_NAME",
        default_value = "recommendation-service"
    )]
    caller_name: String,
    /// This service's token at the consent and profile services (from a secret); not needed
    /// when it calls them over `https://` with its certificate (--tls-dir).
    #[arg(
        long,
        env = "CONSENTGATE_SERVICE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    service_token: String,
    /// Its own database: `sqlite://PATH` or `postgres://USER@HOST/DB` (tiers and outcomes).
    #[arg(long, env = "CONSENTGATE_DATABASE_URL")]
    database_url: String,
    /// A JSONL catalog; the deterministic 5,000-item demo catalog when absent.
    #[arg(long, env = "CONSENTGATE_CATALOG")]
    catalog: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ProfileArgs {
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Address to listen on.
    #[arg(long, env = "CONSENTGATE_LISTEN", default_value = "0.0.0.0:50052")]
    listen: String,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` (the profile service's own database).
    #[arg(long, env = "CONSENTGATE_DATABASE_URL")]
    database_url: String,
    /// The policy file (the same one the consent service runs); the shipped default when absent.
    #[arg(long, env = "CONSENTGATE_POLICY")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
    /// The consent service, e.g. `http://consent:50051`.
    #[arg(long, env = "CONSENTGATE_CONSENT_URL")]
    consent_url: String,
    /// This service's caller name at the consent service (an enforcer).
    #[arg(
        long,
        env = "CONSENTGATE_CALLER_NAME",
        default_value = "profile-service"
    )]
    caller_name: String,
    /// This service's token at the consent service (mount it from a secret); not needed when
    /// it calls it over `https://` with its certificate (--tls-dir).
    #[arg(
        long,
        env = "CONSENTGATE_CONSENT_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    consent_token: String,
    /// How long cached allows are served after the last change-stream heartbeat, in ms.
    #[arg(long, env = "CONSENTGATE_LEASE_MS", default_value_t = 1000)]
    lease_ms: u64,
    /// How many consent decisions the gate caches (0: no cache).
    #[arg(long, env = "CONSENTGATE_DECISION_CACHE", default_value_t = 100_000)]
    decision_cache: u64,
    /// How often the retention sweep runs, in seconds.
    #[arg(long, env = "CONSENTGATE_RETENTION_EVERY_SECS", default_value_t = 3600)]
    retention_every_secs: u64,
    /// The recommendation service, for the erasure cascade, e.g. `http://recommendation:50053`.
    #[arg(long, env = "CONSENTGATE_RECOMMENDATION_URL")]
    recommendation_url: Option<String>,
    /// A file of 64 hex digits (mount it from a Secret; the same on every replica, never
    /// changed): the key of the digests under which erasure requests' idempotency keys are kept.
    #[arg(long, env = "CONSENTGATE_REQUEST_KEY_FILE")]
    request_key_file: PathBuf,
}

#[derive(clap::Args)]
struct ConsentArgs {
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Address to listen on.
    #[arg(long, env = "CONSENTGATE_LISTEN", default_value = "0.0.0.0:50051")]
    listen: String,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "CONSENTGATE_DATABASE_URL")]
    database_url: String,
    /// The policy file; the shipped default when absent.
    #[arg(long, env = "CONSENTGATE_POLICY")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
    /// The key file: a keyring (signing keys by key id and the tombstone key) or a bare seed
    /// of 64 hex digits. A missing or malformed file stops the service.
    #[arg(long, env = "CONSENTGATE_KEY_FILE")]
    key_file: PathBuf,
    /// Create a new keyring (mode 0600) when the key file is missing. Off by default: a replica
    /// that did not find its mounted key would otherwise sign with a key of its own, which no
    /// other replica or auditor knows.
    #[arg(long, env = "CONSENTGATE_KEY_FILE_CREATE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    create_key_file: bool,
    /// How many subjects' consent states to keep in memory.
    #[arg(long, env = "CONSENTGATE_CACHE_CAPACITY", default_value_t = 100_000)]
    cache_capacity: u64,
    /// How often (ms) to read the shared change feed when no commit notice arrived: on
    /// PostgreSQL replicas hear each other's commits at once (LISTEN/NOTIFY) and this is the
    /// safety net; a replica that cannot read the feed for four polls stops heartbeating.
    #[arg(long, env = "CONSENTGATE_FEED_POLL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    feed_poll_ms: u64,
    /// How long (hours) an idempotency key is remembered: a retry within it gets the first
    /// write's answer, a key reused after it is a new request. Keys past it are swept. 168 = 7
    /// days, as payment APIs keep theirs; at most a year.
    #[arg(long, env = "CONSENTGATE_IDEMPOTENCY_WINDOW_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8_784))]
    idempotency_window_hours: u64,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file; prints every problem with file, line and reason.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Re-walk the consent ledger in a database and check its signed checkpoints.
    Verify {
        /// The consent database.
        #[arg(long, env = "CONSENTGATE_DATABASE_URL")]
        database_url: String,
        /// The key file (keyring or bare seed): its keys verify the checkpoints by key id.
        #[arg(long, env = "CONSENTGATE_KEY_FILE")]
        key_file: PathBuf,
        /// Start after this entry, which you verified before (a previous run's `--from-seq`
        /// hint), instead of the genesis: only the entries since are walked.
        #[arg(long, requires = "from_hash")]
        from_seq: Option<u64>,
        /// The hash (64 hex digits) of the `--from-seq` entry as you verified it; the stored
        /// entry must still have it.
        #[arg(long, requires = "from_seq")]
        from_hash: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new keyring (a random signing key and tombstone key), mode 0600; never over an
    /// existing file.
    Init {
        /// Where to write it.
        #[arg(long, env = "CONSENTGATE_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Print every key's id, status and public key (never a secret).
    Show {
        /// The key file.
        #[arg(long, env = "CONSENTGATE_KEY_FILE")]
        key_file: PathBuf,
        /// Print the public keys as a JWK Set (RFC 7517) for verifiers instead.
        #[arg(long)]
        jwks: bool,
    },
    /// Add a new key that verifies at once and signs after `rotate`: roll the file out to every
    /// replica before rotating. A bare seed file becomes a keyring with the same keys.
    Stage {
        /// The key file, replaced atomically.
        #[arg(long, env = "CONSENTGATE_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Make the staged key the signing key and retire the current one (its public key kept,
    /// its secret dropped). The tombstone key never changes.
    Rotate {
        /// The key file, replaced atomically.
        #[arg(long, env = "CONSENTGATE_KEY_FILE")]
        key_file: PathBuf,
        /// Without a staged key, sign with a fresh key at once: only for a file one process uses.
        #[arg(long)]
        immediate: bool,
    },
    /// Verify a receipt (a compact JWS) with the key its `kid` names; prints the receipt.
    VerifyReceipt {
        /// The keys: a key file.
        #[arg(long, conflicts_with = "jwks", required_unless_present = "jwks")]
        key_file: Option<PathBuf>,
        /// The keys: a JWK Set (`keys show --jwks`, or `jwks` of ListSigningKeys).
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// The receipt JWS; `-` or absent: read from standard input.
        jws: Option<String>,
    },
}

/// `restore reapply-erasures`: asks the profile service to re-apply erasures and prints what
/// was done (counts only: the run names nobody).
async fn reapply_erasures(profile: &str, token: &str) -> anyhow::Result<()> {
    use consentgate_proto::profile::v1 as pb;
    let channel = tonic::transport::Channel::from_shared(profile.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to the profile service at {profile}"))?;
    let mut client = pb::profile_service_client::ProfileServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::ReapplyErasuresRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    let reply = client
        .reapply_erasures(request)
        .await
        .map_err(|s| anyhow::anyhow!("ReapplyErasures failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let outcome = reply.outcome.unwrap_or_default();
    println!("request {}", reply.request_id);
    for step in &outcome.steps {
        println!("- {step}");
    }
    if reply.state != pb::RequestState::Completed as i32 {
        anyhow::bail!("the run did not complete; fix the cause above and run it again");
    }
    println!(
        "completed: {} erased again in the consent database, {} in the profile database",
        outcome.consent_subjects_erased, outcome.profile_subjects_erased
    );
    Ok(())
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<Arc<Policy>> {
    let policy = match path {
        Some(p) => Policy::from_file(p),
        None => Policy::default_policy(),
    };
    Ok(Arc::new(policy.map_err(|e| {
        anyhow::anyhow!("the policy is invalid, refusing to start:\n{e}")
    })?))
}

/// A TOML file of `caller-name = "value"` lines (tokens, or SPIFFE IDs).
fn load_pairs(path: &Path, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} file {}", path.display()))?;
    let map: std::collections::BTreeMap<String, String> =
        toml::from_str(&text).with_context(|| format!("parsing {what} file {}", path.display()))?;
    Ok(map.into_iter().collect())
}

/// What every `serve` subcommand does first: telemetry under the service's name, the policy, and
/// who may call (the authenticator from the policy's callers, the tokens and identities files)
/// over what (TLS material, if any).
fn serving(
    service: &str,
    log_json: bool,
    policy: Option<&Path>,
    access: &AccessArgs,
) -> anyhow::Result<(Arc<Policy>, Access)> {
    consentgate_runtime::telemetry::init(service, log_json);
    let policy = load_policy(policy)?;
    let tokens = match &access.tokens_file {
        Some(path) => load_pairs(path, "tokens")?,
        None => Vec::new(),
    };
    let identities = match &access.identities_file {
        Some(path) => load_pairs(path, "identities")?,
        None => Vec::new(),
    };
    if tokens.is_empty() && identities.is_empty() {
        anyhow::bail!("no callers configured: give --tokens-file, --identities-file or both");
    }
    if !identities.is_empty() && access.tls_dir.is_none() {
        anyhow::bail!(
            "--identities-file needs --tls-dir: callers are known by certificate only over TLS"
        );
    }
    let authenticator =
        Authenticator::from_policy(&policy, &tokens)?.with_identities(&policy, &identities)?;
    let limits = access.limits.limits(&policy)?;
    let tls = match &access.tls_dir {
        Some(dir) => {
            let client_auth = match access.tls_client_auth {
                ClientAuthArg::Required => ClientAuth::Required,
                ClientAuthArg::Optional => ClientAuth::Optional,
            };
            let material = TlsMaterial::load(TlsFiles::in_dir(dir), client_auth).map_err(|e| {
                anyhow::anyhow!("the TLS material is unusable, refusing to start: {e}")
            })?;
            tracing::info!(dir = %dir.display(), ?client_auth, "serving mutual TLS");
            Some(material)
        }
        None => None,
    };
    Ok((
        policy,
        Access {
            limits,
            authenticator,
            tls,
            probe_listen: access.probe_listen.clone(),
        },
    ))
}

/// A served service's callers and transport, before its listeners are bound.
struct Access {
    authenticator: Authenticator,
    limits: Limits,
    tls: Option<TlsMaterial>,
    probe_listen: Option<String>,
}

impl Access {
    /// How outgoing calls are made: with this service's certificate when it has one.
    fn dialer(&self) -> Dialer {
        match &self.tls {
            Some(material) => Dialer::tls(material.clone()),
            None => Dialer::plaintext(),
        }
    }

    /// The server's edge, with the probe listener bound.
    async fn edge(self, service: &str) -> anyhow::Result<Edge> {
        let probe = match &self.probe_listen {
            Some(address) => Some(listen(address, &format!("{service} health probes")).await?),
            None => None,
        };
        Ok(Edge {
            authenticator: self.authenticator,
            tls: self.tls,
            probe,
            limits: self.limits,
        })
    }
}

/// The addresses development certificates serve: loopback and the services' names in `deploy/`.
fn dev_hosts() -> Vec<String> {
    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for service in ["consent", "profile", "recommendation"] {
        hosts.push(service.to_owned());
        hosts.push(format!("{service}.consentgate.svc"));
        hosts.push(format!("{service}.consentgate.svc.cluster.local"));
    }
    hosts
}

/// Writes development certificates for every caller of `policy` and the consent service.
fn write_dev_certs(
    dir: &Path,
    trust_domain: &str,
    namespace: &str,
    hosts: &[String],
    policy: &Policy,
) -> anyhow::Result<()> {
    let callers: Vec<String> = policy.callers.keys().cloned().collect();
    consentgate::dev_certs::write_dev_certs(
        dir,
        trust_domain,
        namespace,
        &callers,
        &[suite::CONSENT_SERVER.to_owned()],
        hosts,
    )
    .with_context(|| format!("writing development certificates under {}", dir.display()))?;
    Ok(())
}

/// Refuses to start a service whose outgoing calls would carry no credential at all.
fn outgoing_credentials(token: &str, dialer: &Dialer) -> anyhow::Result<()> {
    if token.is_empty() && !dialer.has_tls() {
        anyhow::bail!(
            "this service needs a token for its calls to other services, or --tls-dir to call them with its certificate"
        );
    }
    Ok(())
}

/// Binds a service's metrics listener, unless `address` is `off`.
async fn listen_metrics(
    address: &str,
    service: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if address == "off" {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics address {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "{service} metrics at /metrics");
    Ok(Some(listener))
}

/// A served service's listeners: gRPC, and metrics unless they are off.
async fn listeners(
    grpc: &str,
    metrics: &MetricsArgs,
    service: &str,
) -> anyhow::Result<suite::Listeners> {
    Ok(suite::Listeners {
        grpc: listen(grpc, service).await?,
        metrics: listen_metrics(&metrics.metrics_listen, service).await?,
    })
}

/// Binds a service's listener and says where it listens.
async fn listen(address: &str, service: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "{service} listening");
    Ok(listener)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Validate { file },
        } => match Policy::from_file(&file) {
            Ok(p) => {
                println!(
                    "{}: ok ({} purposes, {} data categories, {} jurisdictions, {} callers)",
                    file.display(),
                    p.purposes.len(),
                    p.categories.len(),
                    p.jurisdictions.len(),
                    p.callers.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Command::Ledger {
            command:
                LedgerCommand::Verify {
                    database_url,
                    key_file,
                    from_seq,
                    from_hash,
                },
        } => {
            use consentgate_consent::ledger::{Start, verify_from};
            let start = match (from_seq, from_hash) {
                (Some(seq), Some(hash)) => Start::Verified {
                    seq,
                    hash: hex::decode(&hash)
                        .ok()
                        .filter(|h| h.len() == 32 && seq > 0)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--from-seq must be at least 1 and --from-hash 64 hex digits"
                            )
                        })?,
                },
                _ => Start::Genesis,
            };
            let keys = Arc::new(LedgerKeys::load(&key_file)?);
            let store = consentgate_consent::store::open(&database_url, keys.clone()).await?;
            let report = verify_from(store.as_ref(), keys.verifiers(), &start).await?;
            match report.broken {
                None => {
                    println!(
                        "ledger ok: {} entries after entry {} ({:.0} entries/s), {} signed checkpoints, head {}",
                        report.entries_checked,
                        report.from_seq,
                        report.entries_per_second(),
                        report.checkpoints_checked,
                        hex_head(&report.head_hash)
                    );
                    println!(
                        "next time, verify only what follows: --from-seq {} --from-hash {}",
                        report.head_seq,
                        hex_head(&report.head_hash)
                    );
                    for kid in &report.signers {
                        match kid {
                            Some(kid) => println!("checkpoints signed by key id {kid}"),
                            None => println!(
                                "checkpoints without a key id (before key ids), verified by key id {}",
                                keys.verifiers().unlabelled_kid().unwrap_or("?")
                            ),
                        }
                    }
                }
                Some((seq, problem)) => {
                    eprintln!("ledger BROKEN at entry {seq}: {problem}");
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Command::Keys { command } => keys_command(command),
        Command::Import {
            file,
            source,
            consent,
            token,
            chunk,
            rejects,
        } => {
            let summary = consentgate::import::run(&consentgate::import::ImportArgs {
                file: &file,
                source: &source,
                consent: &consent,
                token: &token,
                chunk,
                rejects: rejects.as_deref(),
            })
            .await?;
            println!(
                "{} lines: {} imported, {} in history only (the subject had a newer record), {} already imported, {} rejected, {} malformed",
                summary.lines,
                summary.imported,
                summary.history_only,
                summary.duplicate,
                summary.rejected,
                summary.malformed
            );
            if summary.rejected + summary.malformed > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Restore {
            command: RestoreCommand::ReapplyErasures { profile, token },
        } => reapply_erasures(&profile, &token).await,
        Command::Serve {
            service: Service::Consent(args),
        } => {
            let (policy, access) = serving(
                "consentgate-consent",
                cli.log_json,
                args.policy.as_deref(),
                &args.access,
            )?;
            let keys = if args.create_key_file {
                LedgerKeys::load_or_create(&args.key_file)
            } else {
                LedgerKeys::load(&args.key_file)
            }
            .map_err(|e| anyhow::anyhow!("the key file is unusable, refusing to start: {e}"))?;
            tracing::info!(kid = keys.kid(), "signing checkpoints and receipts");
            let keys = Arc::new(keys);
            let engine = consent_server::open_engine(
                policy,
                &args.database_url,
                keys,
                args.cache_capacity,
                Duration::from_secs(args.idempotency_window_hours * 3600),
            )
            .await?;
            let listeners = listeners(&args.listen, &args.metrics, "consent service").await?;
            let (telemetry, endpoint) =
                served_telemetry(listeners.metrics, suite::CONSENT_SERVICE_NAME)?;
            consent_server::serve(
                engine,
                Duration::from_millis(args.feed_poll_ms),
                access.edge("consent service").await?,
                telemetry.clone(),
                listeners.grpc,
                consentgate_runtime::server::shutdown_signal(),
            )
            .await?;
            finish_telemetry(telemetry, endpoint).await
        }
        Command::Serve {
            service: Service::Profile(args),
        } => {
            let (policy, access) = serving(
                "consentgate-profile",
                cli.log_json,
                args.policy.as_deref(),
                &args.access,
            )?;
            outgoing_credentials(&args.consent_token, &access.dialer())?;
            let mut gate = GateConfig::new(args.consent_url, args.consent_token);
            gate.dialer = access.dialer();
            gate.lease = std::time::Duration::from_millis(args.lease_ms);
            gate.cache_capacity = args.decision_cache;
            let listeners = listeners(&args.listen, &args.metrics, "profile service").await?;
            let (telemetry, endpoint) =
                served_telemetry(listeners.metrics, suite::PROFILE_SERVICE_NAME)?;
            let profile = Profile::open(ProfileConfig {
                policy,
                database_url: args.database_url,
                gate,
                name: args.caller_name,
                retention_every: std::time::Duration::from_secs(args.retention_every_secs),
                recommendation_url: args.recommendation_url.clone(),
                metrics: telemetry.metrics.clone(),
                request_key: RequestKey::load(&args.request_key_file)?,
                tracing: telemetry.tracing.clone(),
            })
            .await?;
            profile_server::serve(
                profile,
                access.edge("profile service").await?,
                telemetry.clone(),
                listeners.grpc,
                consentgate_runtime::server::shutdown_signal(),
            )
            .await?;
            finish_telemetry(telemetry, endpoint).await
        }
        Command::Serve {
            service: Service::Recommendation(args),
        } => {
            let (_, access) = serving(
                "consentgate-recommendation",
                cli.log_json,
                args.policy.as_deref(),
                &args.access,
            )?;
            outgoing_credentials(&args.service_token, &access.dialer())?;
            let catalog = match &args.catalog {
                Some(path) => Catalog::from_jsonl(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => Catalog::demo(5000),
            };
            let listeners =
                listeners(&args.listen, &args.metrics, "recommendation service").await?;
            let (telemetry, endpoint) =
                served_telemetry(listeners.metrics, suite::RECOMMENDATION_SERVICE_NAME)?;
            let recommender = recommendation_server::open(RecommendationConfig {
                catalog,
                gate: GateConfig {
                    dialer: access.dialer(),
                    ..GateConfig::new(args.consent_url, args.service_token.clone())
                },
                name: args.caller_name,
                profile_url: args.profile_url,
                profile_token: args.service_token,
                database_url: args.database_url,
                metrics: telemetry.metrics.clone(),
            })
            .await?;
            recommendation_server::serve(
                recommender,
                access.edge("recommendation service").await?,
                telemetry.clone(),
                listeners.grpc,
                consentgate_runtime::server::shutdown_signal(),
            )
            .await?;
            finish_telemetry(telemetry, endpoint).await
        }
        Command::DevCerts {
            out,
            trust_domain,
            namespace,
            hosts,
            policy,
        } => {
            let policy = load_policy(policy.as_deref())?;
            write_dev_certs(&out, &trust_domain, &namespace, &hosts, &policy)?;
            println!(
                "Development CA and certificates written under {} ({} callers and {}); callers' SPIFFE IDs in {}",
                out.display(),
                policy.callers.len(),
                suite::CONSENT_SERVER,
                out.join("identities.toml").display()
            );
            Ok(())
        }
        Command::Demo {
            consent,
            profile,
            recommendation,
        } => {
            let suite = consentgate::demo::Endpoints {
                consent,
                profile,
                recommendation,
                token: |caller| format!("dev-{caller}"),
            };
            let run_id = format!(
                "{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
            );
            consentgate::demo::run(&suite, &run_id, |line| println!("{line}")).await?;
            Ok(())
        }
        Command::Up {
            data_dir,
            consent_listen,
            profile_listen,
            recommendation_listen,
            policy,
            consent_metrics_listen,
            profile_metrics_listen,
            recommendation_metrics_listen,
            mtls,
        } => {
            consentgate_runtime::telemetry::init("consentgate", cli.log_json);
            let policy = load_policy(policy.as_deref())?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let keys = Arc::new(LedgerKeys::load_or_create(
                &data_dir.join("consent-signing.key"),
            )?);
            let tls = if mtls {
                use consentgate::dev_certs::{DEV_NAMESPACE, DEV_TRUST_DOMAIN, spiffe_id};
                let certs = data_dir.join("certs");
                if !certs.join("ca.crt").exists() {
                    write_dev_certs(
                        &certs,
                        DEV_TRUST_DOMAIN,
                        DEV_NAMESPACE,
                        &dev_hosts(),
                        &policy,
                    )?;
                }
                let identities = policy
                    .callers
                    .keys()
                    .map(|name| {
                        (
                            name.clone(),
                            spiffe_id(DEV_TRUST_DOMAIN, DEV_NAMESPACE, name),
                        )
                    })
                    .collect();
                Some(suite::SuiteTls { certs, identities })
            } else {
                None
            };
            // Development tokens: predictable so that the README's grpcurl commands work as
            // written. Under mTLS every caller is known by its certificate instead.
            let tokens: Vec<(String, String)> = match &tls {
                Some(_) => Vec::new(),
                None => policy
                    .callers
                    .keys()
                    .map(|name| (name.clone(), format!("dev-{name}")))
                    .collect(),
            };
            let seeder = match &tls {
                Some(tls) => seed::Callers::DevCertificates(tls.certs.clone()),
                None => seed::Callers::DevTokens,
            };
            let suite = suite::start(SuiteConfig {
                policy: policy.clone(),
                tokens: tokens.clone(),
                consent: ConsentSettings {
                    database_url: format!("sqlite://{}", data_dir.join("consent.db").display()),
                    keys,
                    cache_capacity: 100_000,
                    feed_poll: consent_server::FEED_POLL,
                },
                consent_listeners: suite::Listeners {
                    grpc: listen(&consent_listen, "consent service").await?,
                    metrics: listen_metrics(&consent_metrics_listen, "consent service").await?,
                },
                profile_database_url: format!("sqlite://{}", data_dir.join("profile.db").display()),
                profile_listeners: suite::Listeners {
                    grpc: listen(&profile_listen, "profile service").await?,
                    metrics: listen_metrics(&profile_metrics_listen, "profile service").await?,
                },
                profile_decision_cache: consentgate_gate::DEFAULT_DECISION_CACHE,
                profile_request_key: RequestKey::load_or_create(
                    &data_dir.join("profile-request.key"),
                )?,
                retention_every: std::time::Duration::from_secs(3600),
                recommendation_database_url: format!(
                    "sqlite://{}",
                    data_dir.join("recommendation.db").display()
                ),
                recommendation_listeners: suite::Listeners {
                    grpc: listen(&recommendation_listen, "recommendation service").await?,
                    metrics: listen_metrics(
                        &recommendation_metrics_listen,
                        "recommendation service",
                    )
                    .await?,
                },
                catalog: Catalog::demo(5000),
                traces: TraceExport::FromEnv,
                tls: tls.clone(),
            })
            .await?;
            let address = suite.consent.address().to_string();
            let profile_address = suite.profile.address().to_string();
            seed::demo_consents(&address, &seeder)
                .await
                .context("seeding demo consents")?;
            // Events and answers append, so the demo profile is seeded once per data folder.
            let seeded = data_dir.join("profile-demo-seeded");
            if !seeded.exists() {
                seed::demo_profiles(&profile_address, &seeder)
                    .await
                    .context("seeding demo profiles")?;
                std::fs::write(&seeded, "demo profiles seeded\n")?;
            }
            match &tls {
                Some(tls) => print_mtls_banner(&suite, &tls.certs),
                None => print_banner(&suite, &tokens, &policy),
            }
            suite
                .run_until(consentgate_runtime::server::shutdown_signal())
                .await?;
            Ok(())
        }
    }
}

/// A served service's telemetry: metrics collected and served on `listener` (when there is
/// one), spans exported as the standard `OTEL_*` variables say, under `OTEL_SERVICE_NAME` or
/// `default_name`.
fn served_telemetry(
    listener: Option<tokio::net::TcpListener>,
    default_name: &str,
) -> anyhow::Result<(Telemetry, Option<Running<std::io::Error>>)> {
    let push = OtlpPush::from_env();
    let (metrics, endpoint) =
        consentgate_runtime::metrics::served_or_pushed(listener, push.is_some())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_name.to_owned());
    let tracing = Tracing::start(&TraceExport::FromEnv, &name, &metrics)?;
    if tracing.is_enabled() {
        tracing::info!(service = %name, "exporting traces over OTLP");
    }
    if let Some(push) = push {
        tracing::info!(service = %name, every = ?push.every, "pushing metrics over OTLP");
        // Runs for the life of the process.
        drop(spawn_push(metrics.clone(), name, push)?);
    }
    Ok((Telemetry { metrics, tracing }, endpoint))
}

/// After the service has drained: exports the spans still queued, stops the metrics endpoint.
async fn finish_telemetry(
    telemetry: Telemetry,
    endpoint: Option<Running<std::io::Error>>,
) -> anyhow::Result<()> {
    let tracing = telemetry.tracing;
    tokio::task::spawn_blocking(move || tracing.shutdown()).await?;
    if let Some(endpoint) = endpoint {
        endpoint.stop().await.context("metrics endpoint")?;
    }
    Ok(())
}

fn hex_head(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `up --mtls` prints: where the certificates are and how to call with one.
fn print_mtls_banner(suite: &suite::Suite, certs: &Path) {
    let consent = suite.consent.address();
    let profile = suite.profile.address();
    let recommendation = suite.recommendation.address();
    let certs = certs.display();
    println!("consentgate is up over mutual TLS (development certificates, loopback only)");
    println!("  consent service   {consent}");
    println!("  profile service   {profile}");
    println!("  recommendation    {recommendation}");
    println!();
    println!("Every caller is known by its certificate (no tokens): {certs}/<caller>/tls.crt");
    println!("Try:");
    println!(
        "  grpcurl -cacert {certs}/ca.crt -cert {certs}/privacy-ops/tls.crt -key {certs}/privacy-ops/tls.key -d '{{\"subject\":{{\"subject_id\":\"demo-alice\"}}}}' {profile} consentgate.profile.v1.ProfileService/GetAccessReport"
    );
    println!(
        "  grpcurl -cacert {certs}/ca.crt -cert {certs}/recommendation-service/tls.crt -key {certs}/recommendation-service/tls.key -d '{{\"subject\":{{\"subject_id\":\"demo-alice\"}},\"n\":5}}' {recommendation} consentgate.recommendation.v1.RecommendationService/Recommend"
    );
    println!("Press Ctrl-C to stop.");
}

fn print_banner(suite: &suite::Suite, tokens: &[(String, String)], policy: &Policy) {
    let consent = suite.consent.address().to_string();
    let profile = suite.profile.address().to_string();
    let recommendation = suite.recommendation.address().to_string();
    println!("consentgate is up (development mode: SQLite, development tokens, loopback only)");
    println!(
        "  consent service   {consent}   (policy {}, {} purposes)",
        policy.version,
        policy.purposes.len()
    );
    println!("  profile service   {profile}   (every read and write passes the consent gate)");
    println!(
        "  recommendation    {recommendation}   (5,000-item demo catalog; tiers follow consent)"
    );
    println!();
    let metrics = [
        ("consent service", suite.consent.metrics_address()),
        ("profile service", suite.profile.metrics_address()),
        ("recommendation", suite.recommendation.metrics_address()),
    ];
    if metrics.iter().any(|(_, address)| address.is_some()) {
        println!("Prometheus metrics (scrape each; the gRPC ports do not serve them):");
        for (service, address) in metrics {
            if let Some(address) = address {
                println!("  {service:<17} http://{address}/metrics");
            }
        }
        println!();
    }
    println!("Development caller tokens (send as `authorization: Bearer <token>`):");
    for (name, token) in tokens {
        let roles: Vec<&str> = policy.callers[name]
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect();
        println!("  {name:<24} {token:<30} roles: {}", roles.join(", "));
    }
    println!();
    println!("Try:");
    println!("  grpcurl -plaintext {consent} list");
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer dev-preference-center' -d '{{\"target\":{{\"subject\":{{\"subject_id\":\"alice\"}},\"purpose\":\"personalize.content.profiled\"}},\"consent_type\":\"CONSENT_TYPE_EXPLICIT\",\"notice_version\":\"2.0\",\"idempotency_key\":\"try-1\"}}' {consent} consentgate.consent.v1.ConsentService/Grant"
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer dev-recommendation-service' -d '{{\"subject\":{{\"subject_id\":\"alice\"}},\"purpose\":\"personalize.content.profiled\",\"data_categories\":[\"user.behavior.purchase_history\"]}}' {consent} consentgate.consent.v1.ConsentService/Check"
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer dev-recommendation-service' -d '{{\"subject\":{{\"subject_id\":\"demo-alice\"}},\"purpose\":\"personalize.content.profiled\"}}' {profile} consentgate.profile.v1.ProfileService/GetProfile"
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer dev-privacy-ops' -d '{{\"subject\":{{\"subject_id\":\"demo-alice\"}}}}' {profile} consentgate.profile.v1.ProfileService/GetAccessReport"
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer dev-recommendation-service' -d '{{\"subject\":{{\"subject_id\":\"demo-alice\"}},\"context\":{{\"device\":\"mobile\",\"region\":\"EU\"}},\"n\":5}}' {recommendation} consentgate.recommendation.v1.RecommendationService/Recommend"
    );
    println!();
    println!("Then play the story in another terminal: cargo run --release -- demo");
    println!("Press Ctrl-C to stop.");
}

/// `consentgate keys …`: offline work on a key file; prints public keys and ids only.
fn keys_command(command: KeysCommand) -> anyhow::Result<()> {
    use consentgate_consent::ledger::{Keyring, VerifyingKeys, keyring};
    let now = time::OffsetDateTime::now_utc();
    match command {
        KeysCommand::Init { key_file } => {
            let ring = Keyring::generate(now);
            ring.create(&key_file)?;
            println!(
                "{}: new keyring, signing key id {}",
                key_file.display(),
                ring.keys().kid()
            );
        }
        KeysCommand::Show { key_file, jwks } => {
            let keys = LedgerKeys::load(&key_file)?;
            if jwks {
                println!("{}", keys.verifiers().jwks());
            } else {
                for line in keyring::describe(&keys) {
                    println!("{line}");
                }
            }
        }
        KeysCommand::Stage { key_file } => {
            let mut ring = Keyring::read(&key_file)?;
            let kid = ring
                .stage(now)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
            ring.replace(&key_file)?;
            println!(
                "staged key id {kid}: roll this file out to every replica, then run `consentgate keys rotate`"
            );
        }
        KeysCommand::Rotate {
            key_file,
            immediate,
        } => {
            let mut ring = Keyring::read(&key_file)?;
            let rotation = ring
                .rotate(now, immediate)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
            ring.replace(&key_file)?;
            println!(
                "signing key id {} (retired {}, which still verifies what it signed); roll this file out to every replica",
                rotation.current, rotation.retired
            );
        }
        KeysCommand::VerifyReceipt {
            key_file,
            jwks,
            jws,
        } => {
            let keys = match (key_file, jwks) {
                (Some(path), _) => LedgerKeys::load(&path)?.verifiers().clone(),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    VerifyingKeys::from_jwks(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                (None, None) => anyhow::bail!("give --key-file or --jwks"),
            };
            let jws = match jws.filter(|j| j != "-") {
                Some(jws) => jws,
                None => std::io::read_to_string(std::io::stdin()).context("reading the receipt")?,
            };
            match consentgate_consent::receipt::verify_with(jws.trim(), &keys) {
                Ok(verified) => {
                    eprintln!("receipt ok: signed by key id {}", verified.kid);
                    println!("{}", verified.json);
                }
                Err(e) => {
                    eprintln!("receipt does NOT verify: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand's flags are well-formed (clap checks names, ids and defaults only when
    /// a command is parsed: a clash would otherwise surface at `serve` time in production).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_served_service_takes_its_own_and_the_metrics_address() {
        for service in ["consent", "profile", "recommendation"] {
            let parsed = Cli::try_parse_from([
                "consentgate",
                "serve",
                service,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--help",
            ]);
            let help = parsed.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(help.contains("--metrics-listen"), "{service}: {help}");
        }
    }
}
