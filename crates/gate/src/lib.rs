//! The gate: the enforcement client the profile and recommendation services share.
//!
//! It asks the consent service (`Check`), caches decisions, and keeps the cache honest with a
//! `WatchChanges` subscription (docs/architecture.md §3 "Consistency"):
//! - a change event for a person makes that person's older cached decisions stale at once;
//! - cached *allows* are served only while the stream's heartbeat lease runs; once it lapses the
//!   gate asks synchronously until the stream is back and caught up (cached denials are harmless);
//! - an `at_least_as_fresh` token the cache cannot prove it satisfies goes to the consent service;
//! - any error or deadline fails closed: the caller gets [`GateError::Unavailable`], never an allow.
//!
//! What it hands back is a [`Clearance`], which only this crate can construct.

mod breaker;
mod clearance;
mod observe;
mod watch;

pub use clearance::{Clearance, subject_key, subject_of_key};
pub use watch::ChangeNotice;

use breaker::{Admission, Breaker};
use consentgate_proto::consent::v1::CheckRequest;
use consentgate_proto::consent::v1::CheckResponse;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::tls::{Dialer, Target};
use consentgate_runtime::{Metrics, traces};
use observe::GateMetrics;
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use watch::Freshness;

/// Decisions a gate caches unless told otherwise: enough for a busy service's active subjects.
pub const DEFAULT_DECISION_CACHE: u64 = 100_000;

/// How the gate reaches the consent service and how long it trusts what it heard.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The consent service, e.g. `http://127.0.0.1:50051`.
    pub consent_endpoint: String,
    /// Where to open the change stream; `None`: the same endpoint. (Separate so a test can cut
    /// the stream alone, as a network partition would.)
    pub watch_endpoint: Option<String>,
    /// This service's bearer token at the consent service (a caller with the `enforcer` role);
    /// empty when the service is known there by its client certificate (`dialer`).
    pub token: String,
    /// How connections are made: plaintext, or TLS with the service's own certificate for
    /// `https://` endpoints.
    pub dialer: Dialer,
    /// Cached allows are served only this long after the last heartbeat (docs/architecture.md §3: 1 s).
    pub lease: Duration,
    /// The heartbeat interval asked of the consent service; well under the lease, and within
    /// the bounds it accepts (`consentgate_proto::limits`, 100 ms to 10 s): a gate configured
    /// outside them refuses to start rather than watch nothing.
    pub heartbeat: Duration,
    /// Deadline of one Check; past it the read fails closed.
    pub check_timeout: Duration,
    /// Once a Check finds the consent service unreachable (deadline, transport failure,
    /// `UNAVAILABLE`), reads fail closed at once and only one Check per this interval tries it
    /// again (see `breaker`).
    pub probe_every: Duration,
    /// How many decisions to cache; 0 turns the cache off (every read asks).
    pub cache_capacity: u64,
    /// The service's metrics, where the gate reports its cache, lease and stream (disabled by
    /// default).
    pub metrics: Metrics,
}

/// The heartbeat intervals the consent service accepts in a WatchChanges.
fn heartbeat_bounds() -> std::ops::RangeInclusive<Duration> {
    use consentgate_proto::limits::{MAX_HEARTBEAT_MILLIS, MIN_HEARTBEAT_MILLIS};
    Duration::from_millis(MIN_HEARTBEAT_MILLIS.into())
        ..=Duration::from_millis(MAX_HEARTBEAT_MILLIS.into())
}

impl GateConfig {
    /// Defaults for `endpoint` and `token`: 1 s lease, 250 ms heartbeats, 2 s deadline, a probe
    /// every 250 ms while the consent service is unreachable, 100,000 cached decisions.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        GateConfig {
            consent_endpoint: endpoint.into(),
            watch_endpoint: None,
            token: token.into(),
            dialer: Dialer::plaintext(),
            lease: Duration::from_secs(1),
            heartbeat: Duration::from_millis(250),
            check_timeout: Duration::from_secs(2),
            probe_every: Duration::from_millis(250),
            cache_capacity: DEFAULT_DECISION_CACHE,
            metrics: Metrics::disabled(),
        }
    }
}

/// Why the gate has no decision to give. Both fail closed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The consent service could not answer (down, deadline, refused our credentials).
    #[error("the consent service is unavailable: {0}")]
    Unavailable(String),
    /// The consent service rejected the question itself (unknown purpose or category: a bug in
    /// the request, passed on with the consent service's field violations; or a caller this
    /// service may not ask on behalf of: `PERMISSION_DENIED`, `DELEGATION_NOT_PERMITTED`).
    #[error("the consent service rejected the check: {}", .0.message())]
    Rejected(tonic::Status),
    /// The gate's configuration is unusable.
    #[error("bad gate configuration: {0}")]
    Config(String),
}

impl GateError {
    /// The status to answer the caller with: `UNAVAILABLE` (reason `CONSENT_UNAVAILABLE`) when the
    /// decision could not be had, the consent service's own status when the question was bad.
    pub fn into_status(self) -> tonic::Status {
        match self {
            GateError::Rejected(status) => status,
            GateError::Unavailable(why) | GateError::Config(why) => {
                consentgate_runtime::errors::status(
                    tonic::Code::Unavailable,
                    "CONSENT_UNAVAILABLE",
                    format!("no consent decision could be obtained, so nothing is returned: {why}"),
                )
            }
        }
    }
}

/// Counters of what the gate did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GateCounters {
    /// Decisions handed out that allowed something.
    pub allows: u64,
    /// Decisions handed out that allowed nothing.
    pub denies: u64,
    /// Decisions served from the cache.
    pub cache_hits: u64,
    /// Decisions fetched from the consent service.
    pub cache_misses: u64,
    /// Cached allows not served because the change stream's lease had lapsed.
    pub lease_lapses: u64,
    /// Checks that failed closed.
    pub failures: u64,
    /// Of those, the ones failed at once by the breaker (no call made).
    pub fast_failures: u64,
}

#[derive(Default)]
struct Counters {
    allows: AtomicU64,
    denies: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    lease_lapses: AtomicU64,
    failures: AtomicU64,
    fast_failures: AtomicU64,
}

/// A cached answer and what the gate knew when it asked.
struct Cached {
    response: Arc<CheckResponse>,
    /// The change stream's high water before the Check was sent.
    issued_high_water: u64,
    valid_until: SystemTime,
}

/// The enforcement client. Cheap to clone; the change-stream task stops when the last clone drops.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a new connection when a call hangs: behind a Service address, a new
    /// connection may reach another replica.
    client: std::sync::RwLock<ConsentServiceClient<Channel>>,
    endpoint: Target,
    breaker: Breaker,
    auth: Option<MetadataValue<Ascii>>,
    name: String,
    cache: Option<moka::sync::Cache<Vec<u8>, Arc<Cached>>>,
    freshness: Arc<Freshness>,
    counters: Counters,
    metrics: Arc<GateMetrics>,
    check_timeout: Duration,
}

impl Gate {
    /// Builds the gate and starts following the change stream. Connections are made lazily, so a
    /// service starts while the consent service is down (and fails closed until it is up).
    /// `name` is this service's caller name, recorded as the caller of its own checks.
    pub fn start(config: GateConfig, name: impl Into<String>) -> Result<Gate, GateError> {
        let endpoint = |url: &str| -> Result<Target, GateError> {
            Ok(config
                .dialer
                .target(url)
                .map_err(|e| GateError::Config(format!("consent endpoint: {e}")))?
                .configure(|endpoint| {
                    endpoint
                        .connect_timeout(Duration::from_secs(1))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_timeout(Duration::from_secs(5))
                }))
        };
        let heartbeats = heartbeat_bounds();
        if !heartbeats.contains(&config.heartbeat) {
            return Err(GateError::Config(format!(
                "heartbeat {:?} is outside what the consent service accepts ({:?} to {:?})",
                config.heartbeat,
                heartbeats.start(),
                heartbeats.end()
            )));
        }
        let check_endpoint = endpoint(&config.consent_endpoint)?;
        let client = connect(&check_endpoint);
        // The stream has a connection of its own, so a replica that hangs the stream is left
        // behind by reconnecting it alone (and the checks' connection likewise).
        let watch_endpoint = match &config.watch_endpoint {
            Some(url) => endpoint(url)?,
            None => check_endpoint.clone(),
        };
        let auth: Option<MetadataValue<Ascii>> = match config.token.as_str() {
            "" => None,
            token => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| GateError::Config("the token is not valid header text".into()))?,
            ),
        };
        let metrics = Arc::new(GateMetrics::new(&config.metrics));
        let freshness = Arc::new(Freshness::new(
            config.lease,
            config.cache_capacity,
            metrics.lapses.clone(),
        ));
        let (live, age) = (Arc::downgrade(&freshness), Arc::downgrade(&freshness));
        metrics.on_scrape(
            move || live.upgrade().is_some_and(|f| f.live()),
            move || age.upgrade().and_then(|f| f.heartbeat_age()),
        );
        tokio::spawn(watch::follow(
            move || connect(&watch_endpoint),
            auth.clone(),
            config.heartbeat,
            Arc::downgrade(&freshness),
            metrics.clone(),
        ));
        let cache = (config.cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(Duration::from_secs(3600))
                .build()
        });
        Ok(Gate {
            inner: Arc::new(Inner {
                client: std::sync::RwLock::new(client),
                endpoint: check_endpoint,
                breaker: Breaker::new(config.probe_every),
                auth,
                name: name.into(),
                cache,
                freshness,
                counters: Counters::default(),
                metrics,
                check_timeout: config.check_timeout,
            }),
        })
    }

    /// Whether the change stream is live and caught up (cached allows are being served).
    pub fn stream_live(&self) -> bool {
        self.inner.freshness.live()
    }

    /// Waits until the change stream is live, up to `timeout`; whether it is.
    pub async fn wait_live(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.stream_live() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Every consent change the stream delivers from now on. A receiver that falls more than 4,096
    /// changes behind gets `Lagged` and must treat everything it derived as stale.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeNotice> {
        self.inner.freshness.notices.subscribe()
    }

    /// Whether the change stream has since reported a change to the decision's subject (a
    /// person) newer than the state it was computed from. Services that keep something derived
    /// under a decision check this while holding the lock their change follower takes: the
    /// stream raises the floor before it announces the change ([`Gate::subscribe`]), so
    /// either the check sees the change, or the follower runs afterwards and drops what was
    /// kept. Devices are never reported superseded here (their changes are not kept per device).
    pub fn superseded(&self, decision: &Clearance) -> bool {
        decision.subject_key.starts_with("s:")
            && self.inner.freshness.floor(&decision.subject_key) > decision.revision()
    }

    /// What the gate has done so far.
    pub fn counters(&self) -> GateCounters {
        let c = &self.inner.counters;
        GateCounters {
            allows: c.allows.load(Ordering::Relaxed),
            denies: c.denies.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            lease_lapses: c.lease_lapses.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            fast_failures: c.fast_failures.load(Ordering::Relaxed),
        }
    }

    /// `message` as a request with this service's own credentials (the gate's token), the
    /// current trace context and a deadline of 10 s or what remains of the caller's, if less:
    /// for the calls a service makes that are not
    /// decisions (data-subject requests, to the consent service or another service). A service
    /// acting for a caller says so in the message's `on_behalf_of`; it never forwards that
    /// caller's credentials.
    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        authorize(request.metadata_mut(), &self.inner.auth);
        traces::inject(request.metadata_mut());
        request.set_timeout(consentgate_deadline::budget(Duration::from_secs(10)));
        request
    }

    /// A client of the consent service over the gate's connection, for calls that are not
    /// decisions (data-subject requests); make their requests with [`Gate::authorized`].
    pub fn consent_client(&self) -> ConsentServiceClient<Channel> {
        self.inner
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether reads are failing fast because the consent service was found unreachable (they
    /// fail closed either way; this one does not wait for a deadline).
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Sends one call to the consent service through the breaker: fails closed at once while it
    /// is open (but for the probe), and opens it when the service cannot be reached.
    async fn call<T, F, Fut>(&self, send: F) -> Result<T, GateError>
    where
        F: FnOnce(ConsentServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let probe = match self.inner.breaker.admit() {
            Admission::Closed => None,
            Admission::Probe => Some(ProbeGuard(&self.inner.breaker)),
            Admission::Rejected(wait) => {
                self.inner
                    .counters
                    .fast_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.inner.metrics.fast_failures.increment(1);
                return Err(self.unavailable(format!(
                    "it could not be reached moments ago; it is tried again within {} ms",
                    wait.as_millis().max(1)
                )));
            }
        };
        // Whether the caller's own deadline, not the gate's check timeout, bounds this call: then
        // a deadline answer says the caller ran out of time, nothing about the consent service.
        let caller_bound =
            consentgate_deadline::budget(self.inner.check_timeout) < self.inner.check_timeout;
        let answer =
            tokio::time::timeout(self.inner.check_timeout, send(self.consent_client())).await;
        if let Ok(Err(status)) = &answer
            && caller_bound
            && matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            )
        {
            // Neither a success nor a trip: a probe is released for the next call to make.
            drop(probe);
            return Err(self.unavailable(format!(
                "the caller's deadline passed while the consent service was asked ({:?})",
                status.code()
            )));
        }
        // The call ended: the probe (if this was it) is resolved below, not abandoned.
        let probed = probe.map(std::mem::forget).is_some();
        match answer {
            Ok(Ok(response)) => {
                self.inner.breaker.succeeded();
                Ok(response.into_inner())
            }
            Ok(Err(status)) => {
                if unreachable(status.code()) {
                    self.trip(probed);
                } else {
                    self.inner.breaker.succeeded();
                }
                Err(self.failed(status))
            }
            Err(_) => {
                self.trip(probed);
                Err(self.unavailable("the check deadline passed".into()))
            }
        }
    }

    /// A question asked no older than what this gate already knows of its subject: a person's
    /// cached decision went stale because the stream reported a change, and the replica asked
    /// may not have applied that change to its own cache yet (its follower may lag its stream),
    /// so the change's revision goes along as `at_least_as_fresh` and the replica reads through
    /// if it is behind. (Devices carry no per-device floor: their questions go as they are.)
    /// Once the database went back behind the stream (`Freshness::diverged`) the floors name
    /// revisions it no longer has, and the question goes as it is.
    fn as_fresh_as_known(
        &self,
        mut request: CheckRequest,
        subject: &str,
        min_revision: u64,
    ) -> CheckRequest {
        if subject.starts_with("s:") && !self.inner.freshness.diverged() {
            let known = self.inner.freshness.floor(subject);
            if known > min_revision {
                request.at_least_as_fresh = known.to_string();
            }
        }
        request
    }

    /// The consent service could not be reached: fail fast from now until a probe gets through,
    /// which goes over a new connection (the old one may be stuck to a hung replica: a timeout
    /// alone does not close it).
    fn trip(&self, probe: bool) {
        let opened = self.inner.breaker.unreachable(probe);
        // One new connection per outage and per failed probe, not one per failed call.
        if opened || probe {
            *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) =
                connect(&self.inner.endpoint);
        }
        if opened {
            self.inner.metrics.breaker_opened.increment(1);
            tracing::warn!(
                probe_every_ms = self.inner.breaker.probe_every().as_millis() as u64,
                "the consent service is unreachable: reads fail closed at once, one probe per interval"
            );
        }
    }

    /// Asks whether `request.purpose` may use `request.data_categories` of `request.subject`.
    /// `on_behalf_of` names the original caller when this service acts for another one
    /// (delegation); the caller-purpose rule then applies to it.
    pub async fn check(
        &self,
        request: CheckRequest,
        on_behalf_of: Option<&str>,
    ) -> Result<Clearance, GateError> {
        traces::in_span("consentgate.gate.check", || [], async {
            traces::annotate(|| {
                [KeyValue::new(
                    "consentgate.purpose",
                    request.purpose.clone(),
                )]
            });
            let decided = self.decide(request, on_behalf_of).await;
            if let Ok(clearance) = &decided {
                annotate_decision(clearance);
            }
            decided
        })
        .await
    }

    async fn decide(
        &self,
        request: CheckRequest,
        on_behalf_of: Option<&str>,
    ) -> Result<Clearance, GateError> {
        let caller = on_behalf_of.unwrap_or(&self.inner.name).to_owned();
        let Prepared {
            request,
            subject,
            min_revision,
            key,
        } = prepare(request, on_behalf_of)?;
        if let Some(response) = self.cached(&key, &subject, min_revision) {
            self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.hits.increment(1);
            traces::annotate(|| [KeyValue::new("consentgate.gate.cache", "hit")]);
            return Ok(self.hand_out(subject, request.purpose, caller, response, true));
        }
        traces::annotate(|| [KeyValue::new("consentgate.gate.cache", "miss")]);
        self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.misses.increment(1);
        let issued_high_water = self.issued_high_water();
        let response = Arc::new(
            self.ask(self.as_fresh_as_known(request.clone(), &subject, min_revision))
                .await?,
        );
        self.remember(key, response.clone(), issued_high_water);
        Ok(self.hand_out(subject, request.purpose, caller, response, false))
    }

    /// Many checks at once, answered in order: cached answers are served as [`Gate::check`]
    /// would, and every miss goes to the consent service in one `BatchCheck` call (up to 1,000).
    /// All fail closed together: one error, and no decision is handed out.
    pub async fn check_many(
        &self,
        requests: Vec<CheckRequest>,
        on_behalf_of: Option<&str>,
    ) -> Result<Vec<Clearance>, GateError> {
        let count = requests.len();
        let checks = move || {
            [KeyValue::new(
                "consentgate.checks",
                i64::try_from(count).unwrap_or(i64::MAX),
            )]
        };
        traces::in_span(
            "consentgate.gate.check_many",
            checks,
            self.decide_many(requests, on_behalf_of),
        )
        .await
    }

    async fn decide_many(
        &self,
        requests: Vec<CheckRequest>,
        on_behalf_of: Option<&str>,
    ) -> Result<Vec<Clearance>, GateError> {
        if requests.len() > 1000 {
            return Err(GateError::Rejected(
                consentgate_runtime::errors::invalid_argument(
                    "checks",
                    "at most 1,000 checks per batch",
                ),
            ));
        }
        let caller = on_behalf_of.unwrap_or(&self.inner.name).to_owned();
        let mut prepared = Vec::with_capacity(requests.len());
        for request in requests {
            let p = prepare(request, on_behalf_of)?;
            let hit = self.cached(&p.key, &p.subject, p.min_revision);
            prepared.push((p.request, p.subject, p.key, hit));
        }
        let misses: Vec<CheckRequest> = prepared
            .iter()
            .filter(|p| p.3.is_none())
            .map(|p| {
                let token = p.0.at_least_as_fresh.parse().unwrap_or(0);
                self.as_fresh_as_known(p.0.clone(), &p.1, token)
            })
            .collect();
        let issued_high_water = self.issued_high_water();
        let mut answers = if misses.is_empty() {
            Vec::new().into_iter()
        } else {
            self.ask_batch(misses).await?.into_iter()
        };
        let mut decisions = Vec::with_capacity(prepared.len());
        for (request, subject, key, hit) in prepared {
            let (response, from_cache) = match hit {
                Some(response) => {
                    self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                    self.inner.metrics.hits.increment(1);
                    (response, true)
                }
                None => {
                    self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                    self.inner.metrics.misses.increment(1);
                    let response = Arc::new(answers.next().ok_or_else(|| {
                        GateError::Unavailable("BatchCheck answered fewer checks than asked".into())
                    })?);
                    self.remember(key, response.clone(), issued_high_water);
                    (response, false)
                }
            };
            decisions.push(self.hand_out(
                subject,
                request.purpose,
                caller.clone(),
                response,
                from_cache,
            ));
        }
        Ok(decisions)
    }

    fn remember(&self, key: Vec<u8>, response: Arc<CheckResponse>, issued_high_water: u64) {
        if let Some(cache) = &self.inner.cache {
            let valid_until = response
                .valid_until
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            cache.insert(
                key,
                Arc::new(Cached {
                    response,
                    issued_high_water,
                    valid_until,
                }),
            );
        }
    }

    async fn ask_batch(&self, checks: Vec<CheckRequest>) -> Result<Vec<CheckResponse>, GateError> {
        let asked = checks.len();
        let mut call =
            tonic::Request::new(consentgate_proto::consent::v1::BatchCheckRequest { checks });
        authorize(call.metadata_mut(), &self.inner.auth);
        traces::inject(call.metadata_mut());
        call.set_timeout(consentgate_deadline::budget(self.inner.check_timeout));
        let results = self
            .call(|mut client| async move { client.batch_check(call).await })
            .await?
            .results;
        if results.len() == asked {
            Ok(results)
        } else {
            Err(self.unavailable(format!(
                "BatchCheck answered {} of {asked} checks",
                results.len()
            )))
        }
    }

    /// What the change stream had applied before a check is sent (see [`Gate::cached`]).
    fn issued_high_water(&self) -> u64 {
        self.inner
            .freshness
            .high_water()
            .max(self.inner.freshness.last_device_change())
    }

    /// A failed call: a bad question is passed on (a malformed one, a consistency token from the
    /// future, or one asked on behalf of a caller the policy does not let this service act for:
    /// an answer, not an outage, so it counts as no failure); anything else fails closed.
    fn failed(&self, status: tonic::Status) -> GateError {
        let reason = consentgate_runtime::errors::reason_of(&status);
        let token_ahead = status.code() == tonic::Code::FailedPrecondition
            && reason.as_deref() == Some("TOKEN_AHEAD_OF_DATABASE");
        let not_delegable = status.code() == tonic::Code::PermissionDenied
            && reason.as_deref() == Some("DELEGATION_NOT_PERMITTED");
        if status.code() == tonic::Code::InvalidArgument || token_ahead || not_delegable {
            GateError::Rejected(status)
        } else {
            self.unavailable(format!("{:?}: {}", status.code(), status.message()))
        }
    }

    /// Counts a failure and fails closed.
    fn unavailable(&self, why: String) -> GateError {
        self.inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.fail_closed.increment(1);
        GateError::Unavailable(why)
    }

    fn hand_out(
        &self,
        subject_key: String,
        purpose: String,
        caller: String,
        response: Arc<CheckResponse>,
        from_cache: bool,
    ) -> Clearance {
        let decision = Clearance {
            subject_key,
            purpose,
            caller,
            response,
            from_cache,
        };
        let counter = if decision.allows_anything() {
            &self.inner.counters.allows
        } else {
            &self.inner.counters.denies
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    /// A cached answer, if one exists that is provably fresh enough to serve.
    fn cached(&self, key: &[u8], subject: &str, min_revision: u64) -> Option<Arc<CheckResponse>> {
        let entry = self.inner.cache.as_ref()?.get(key)?;
        // Past `valid_until` a record behind the answer (a category's, the personalization
        // level's) may have expired without any change event: only the consent service knows.
        // This holds for denials too: an expired denial may hide a level that has since dropped.
        if SystemTime::now() >= entry.valid_until {
            return None;
        }
        let fresh = &self.inner.freshness;
        // Read the high water first: the stream task raises floors before the high water, so
        // every floor up to this high water is visible below. (Read the other way round, a change
        // landing between the two reads would pass as "already applied".)
        let high_water = fresh.high_water();
        // A change to a device may touch a linked person, and a change to a device's person touches
        // the device: either is stale once such a change arrived after the check was sent.
        if fresh.last_device_change() > entry.issued_high_water {
            return None;
        }
        if subject.starts_with("s:") {
            if fresh.floor(subject) > entry.response.revision {
                return None;
            }
        } else if high_water > entry.issued_high_water {
            return None;
        }
        // The token is satisfied if the stream has applied every change up to it (any change of
        // this subject would have made the entry stale above) or the entry itself is that new.
        if min_revision > entry.response.revision && min_revision > high_water {
            return None;
        }
        let allows = matches!(
            entry.response.verdict(),
            consentgate_proto::consent::v1::Verdict::Allow
                | consentgate_proto::consent::v1::Verdict::Partial
        );
        if allows && !fresh.live() {
            self.inner
                .counters
                .lease_lapses
                .fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.withheld.increment(1);
            traces::annotate(|| [KeyValue::new("consentgate.gate.lease", "lapsed")]);
            return None;
        }
        Some(entry.response.clone())
    }

    async fn ask(&self, request: CheckRequest) -> Result<CheckResponse, GateError> {
        let mut call = tonic::Request::new(request);
        authorize(call.metadata_mut(), &self.inner.auth);
        traces::inject(call.metadata_mut());
        call.set_timeout(consentgate_deadline::budget(self.inner.check_timeout));
        self.call(|mut client| async move { client.check(call).await })
            .await
    }
}

/// The breaker's probe while under way: dropped before the call ended (the caller went away),
/// it frees the next probe, or every read would fail fast forever.
struct ProbeGuard<'a>(&'a Breaker);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.abandoned();
    }
}

/// Adds this service's bearer token, when it has one (a service known by its certificate sends
/// none).
pub(crate) fn authorize(
    metadata: &mut tonic::metadata::MetadataMap,
    auth: &Option<MetadataValue<Ascii>>,
) {
    if let Some(auth) = auth {
        metadata.insert("authorization", auth.clone());
    }
}

/// A client over a new connection to `endpoint` (made lazily, so a gate starts while the consent
/// service is down).
fn connect(endpoint: &Target) -> ConsentServiceClient<Channel> {
    ConsentServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(consentgate_runtime::server::MAX_MESSAGE_BYTES)
}

/// Codes that say the consent service could not be reached (rather than answered): these open
/// the breaker. `RESOURCE_EXHAUSTED` is an answer (a limit on this caller), not an outage.
fn unreachable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

/// What an operator debugs a decision by (never whom it is about): verdict, reason, level,
/// revision, purpose and the categories allowed.
fn annotate_decision(clearance: &Clearance) {
    traces::annotate(|| {
        [
            KeyValue::new("consentgate.verdict", format!("{:?}", clearance.verdict())),
            KeyValue::new("consentgate.reason", clearance.reason().to_owned()),
            KeyValue::new(
                "consentgate.personalization_level",
                format!("{:?}", clearance.personalization_level()),
            ),
            KeyValue::new(
                "consentgate.revision",
                i64::try_from(clearance.revision()).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "consentgate.categories_allowed",
                clearance.allowed_categories().join(","),
            ),
        ]
    });
}

/// A request made ready to check: delegation set, its subject's key, its freshness token, and
/// its cache key.
struct Prepared {
    request: CheckRequest,
    subject: String,
    min_revision: u64,
    key: Vec<u8>,
}

fn prepare(mut request: CheckRequest, on_behalf_of: Option<&str>) -> Result<Prepared, GateError> {
    let subject = request
        .subject
        .as_ref()
        .and_then(subject_key)
        .ok_or_else(|| {
            GateError::Rejected(consentgate_runtime::errors::invalid_argument(
                "subject",
                "a subject_id or device_id is required",
            ))
        })?;
    request.on_behalf_of = on_behalf_of.unwrap_or_default().to_owned();
    let min_revision = if request.at_least_as_fresh.is_empty() {
        0
    } else {
        request.at_least_as_fresh.parse::<u64>().map_err(|_| {
            GateError::Rejected(consentgate_runtime::errors::invalid_argument(
                "at_least_as_fresh",
                "must be a revision returned by a consent write (a decimal number)",
            ))
        })?
    };
    let key = cache_key(&request);
    Ok(Prepared {
        request,
        subject,
        min_revision,
        key,
    })
}

/// The cache key: the request without its freshness token (freshness is checked separately).
fn cache_key(request: &CheckRequest) -> Vec<u8> {
    use prost::Message;
    let mut keyed = request.clone();
    keyed.at_least_as_fresh.clear();
    keyed.encode_to_vec()
}
