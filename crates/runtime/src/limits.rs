//! What one replica takes on, and how it says no.
//!
//! A consent gate that one caller can flood is a gate every caller loses. After the auth layer
//! has said who the caller is, [`LimitLayer`] applies, per request:
//!
//! 1. **The caller's deadline** (`grpc-timeout`): a call whose deadline has passed is not
//!    started; the handler runs within it ([`consentgate_deadline::within`], so no store
//!    transaction begins after it and calls to other services carry what remains), and the
//!    caller is answered `DEADLINE_EXCEEDED` when it passes.
//! 2. **The caller's rate**: a token bucket per authenticated caller (never per address: many
//!    callers share a proxy, one caller spreads over many pods). Over budget: `RESOURCE_EXHAUSTED`
//!    with `google.rpc.RetryInfo` saying when a token is back, and a `QuotaFailure`.
//! 3. **Calls in flight**, per caller and for the whole replica. Past the caller's share a call
//!    is refused with `RESOURCE_EXHAUSTED` (reason `TOO_MANY_IN_FLIGHT`), so that one caller's
//!    stalled or never-finished calls (a slow-loris client that sends headers and no message)
//!    cannot take the whole replica; past the replica's bound calls are shed at once with
//!    `UNAVAILABLE` (reason `OVERLOADED`), both with `RetryInfo`, before the message is decoded:
//!    memory stops growing where the queue would have started, and another replica may have
//!    room.
//! 4. **Open streams per caller** (`WatchChanges`): a stream holds its slot until it ends.
//!
//! Health and reflection carry no caller and pass untouched: a probe must see a busy replica
//! as alive. Every refusal is counted in `consentgate_requests_rejected_total` by method,
//! caller and reason (callers and methods come from the policy: bounded labels, no personal
//! data). HTTP/2 itself is bounded by [`Http2Limits`], which the server applies to every
//! connection. All limits are per replica: see docs/operations.md, "Limits", for sizing them
//! for N replicas.

use crate::auth::{CallerIdentity, call_ready, ready};
use crate::delegation::DelegationScope;
use crate::errors::ERROR_DOMAIN;
use crate::metrics::{CounterFamily, Kind, Metrics};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

/// A token bucket: `per_second` tokens flow in each second, up to `burst` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_second` sustained, with a burst of a fifth of a second's worth (at least 1).
    pub fn per_second(per_second: NonZeroU32) -> Rate {
        Rate {
            per_second,
            burst: NonZeroU32::new(per_second.get() / 5).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N` (requests per second, burst N/5) or `N/B` (burst B), both at least 1.
    fn from_str(text: &str) -> Result<Rate, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<NonZeroU32>()
                .map_err(|_| format!("{part:?} is not a whole number from 1 to {}", u32::MAX))
        };
        match text.split_once('/') {
            None => Ok(Rate::per_second(number(text)?)),
            Some((rate, burst)) => Ok(Rate {
                per_second: number(rate)?,
                burst: number(burst)?,
            }),
        }
    }
}

/// HTTP/2 bounds for every connection: what a client can make the server hold per connection,
/// and how dead peers are found (hyper and h2 apply them; see the defaults for why each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); more
    /// are refused by HTTP/2 itself. Default 512.
    pub max_concurrent_streams: u32,
    /// The largest header list (metadata) a request may carry, in bytes. Default 16 KiB: a
    /// token, a trace context and a deadline need well under 1 KiB.
    pub max_header_list_bytes: u32,
    /// How often an idle connection is pinged. Default 30 s.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (a peer that vanished
    /// without a FIN). Default 10 s.
    pub keepalive_timeout: Duration,
    /// Streams a client may reset before the server has accepted them, per connection, before
    /// the connection is closed with GOAWAY: the HTTP/2 rapid-reset mitigation
    /// (CVE-2023-44487). Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of a client's protocol errors, per connection,
    /// before it closes the connection. Default 1,024.
    pub max_local_error_reset_streams: usize,
    /// Connections are closed gracefully after this age, so that clients reconnect and load
    /// spreads over replicas added since; `None` (the default) keeps them, since a consent
    /// watcher's stream would be cut with its connection.
    pub max_connection_age: Option<Duration>,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 512,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_connection_age: None,
        }
    }
}

impl Http2Limits {
    /// `server` with these bounds.
    pub(crate) fn apply<L>(
        &self,
        server: tonic::transport::Server<L>,
    ) -> tonic::transport::Server<L> {
        let server = server
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_header_list_size(self.max_header_list_bytes)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        match self.max_connection_age {
            Some(age) => server
                .max_connection_age(age)
                .max_connection_age_grace(Duration::from_secs(30)),
            None => server,
        }
    }
}

/// What one replica takes on. The defaults are sized for one replica of a service on two
/// cores; each is documented in docs/operations.md ("Limits").
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Every caller's rate at this replica; `None`: unlimited. Default 10,000 requests/s with a
    /// burst of 2,000 (a Check costs ~0.04 ms of CPU: one caller can take one core, not both).
    pub caller_rate: Option<Rate>,
    /// Rates for named callers, replacing [`Limits::caller_rate`] for them (`None`:
    /// unlimited).
    pub caller_rates: HashMap<String, Option<Rate>>,
    /// Calls in flight at once at this replica (a stream counts until its response starts);
    /// `None`: unlimited. Default 256: a healthy replica answers in well under a millisecond,
    /// so 256 waiting means the store is stalling, and queueing more would only grow memory.
    pub max_in_flight: Option<usize>,
    /// Calls in flight at once per caller at this replica; `None`: unlimited. Default 128, half
    /// the replica's bound, so no single caller can hold all of it.
    pub max_in_flight_per_caller: Option<usize>,
    /// Open long-lived streams (`WatchChanges`) per caller at this replica. Default 1,000: each
    /// gate keeps one, so this is a thousand replicas of a service.
    pub max_streams_per_caller: usize,
    /// Per-connection HTTP/2 bounds.
    pub http2: Http2Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            caller_rate: Some(Rate {
                per_second: NonZeroU32::new(10_000).expect("nonzero"),
                burst: NonZeroU32::new(2_000).expect("nonzero"),
            }),
            caller_rates: HashMap::new(),
            max_in_flight: Some(256),
            max_in_flight_per_caller: Some(128),
            max_streams_per_caller: 1_000,
            http2: Http2Limits::default(),
        }
    }
}

impl Limits {
    /// No rate or in-flight limit (deadlines, stream bounds and HTTP/2 bounds still hold): for
    /// benchmarks that measure the service, not its limiter.
    pub fn unlimited() -> Limits {
        Limits {
            caller_rate: None,
            max_in_flight: None,
            max_in_flight_per_caller: None,
            ..Limits::default()
        }
    }

    /// The rate `caller` is held to.
    fn rate_of(&self, caller: &str) -> Option<Rate> {
        match self.caller_rates.get(caller) {
            Some(rate) => *rate,
            None => self.caller_rate,
        }
    }
}

/// The counter of refused calls.
pub const REJECTED: &str = "consentgate_requests_rejected_total";

/// The tower layer enforcing [`Limits`]; it sits inside the auth layer, whose caller it keys on.
#[derive(Clone)]
pub struct LimitLayer {
    shared: Arc<Shared>,
}

/// What every connection's copy of the layer shares.
struct Shared {
    limits: Limits,
    /// Each caller's bucket, made on its first call (callers come from the policy: bounded).
    buckets: RwLock<HashMap<String, Option<Arc<DefaultDirectRateLimiter>>>>,
    clock: DefaultClock,
    in_flight: Option<Arc<Semaphore>>,
    /// Each caller's share of the calls in flight, made on its first call.
    caller_in_flight: RwLock<HashMap<String, Arc<Semaphore>>>,
    /// Open streams per caller.
    streams: Arc<Mutex<HashMap<String, usize>>>,
    /// The full paths of the streaming RPCs (read from the API's descriptors).
    long_lived: HashSet<String>,
    rejected: CounterFamily<3>,
}

impl LimitLayer {
    /// A layer enforcing `limits`, counting refusals into `metrics`.
    pub fn new(limits: Limits, metrics: &Metrics) -> Self {
        metrics.describe(
            REJECTED,
            Kind::Counter,
            None,
            "Calls refused before reaching a handler by a limit: reason is rate_limited, \
             overloaded, too_many_streams or deadline_exceeded.",
        );
        LimitLayer {
            shared: Arc::new(Shared {
                in_flight: limits.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
                limits,
                buckets: RwLock::new(HashMap::new()),
                caller_in_flight: RwLock::new(HashMap::new()),
                clock: DefaultClock::default(),
                streams: Arc::new(Mutex::new(HashMap::new())),
                long_lived: streaming_methods(),
                rejected: CounterFamily::new(metrics, REJECTED, ["rpc_method", "caller", "reason"]),
            }),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`LimitLayer`] wraps around the router.
#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    RateLimited(Duration),
    CallerInFlight,
    Overloaded,
    TooManyStreams,
    DeadlineExceeded,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::CallerInFlight => "too_many_in_flight",
            Refusal::Overloaded => "overloaded",
            Refusal::TooManyStreams => "too_many_streams",
            Refusal::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The answer: a `google.rpc.Status` with an `ErrorInfo` reason and, where waiting helps,
    /// a `RetryInfo`.
    fn status(self, caller: &str) -> tonic::Status {
        let metadata = [("caller".to_owned(), caller.to_owned())];
        let (code, reason, message, retry) = match self {
            Refusal::RateLimited(wait) => (
                Code::ResourceExhausted,
                "RATE_LIMITED",
                format!(
                    "caller {caller:?} is over its request rate at this replica; retry after {} ms",
                    wait.as_millis().max(1)
                ),
                Some(wait.max(Duration::from_millis(1))),
            ),
            Refusal::CallerInFlight => (
                Code::ResourceExhausted,
                "TOO_MANY_IN_FLIGHT",
                format!(
                    "caller {caller:?} has as many calls in flight at this replica as it may; retry when one is answered"
                ),
                Some(OVERLOADED_RETRY),
            ),
            Refusal::Overloaded => (
                Code::Unavailable,
                "OVERLOADED",
                "this replica has as many calls in flight as it takes; retry shortly, or another replica".to_owned(),
                Some(OVERLOADED_RETRY),
            ),
            Refusal::TooManyStreams => (
                Code::ResourceExhausted,
                "TOO_MANY_STREAMS",
                format!(
                    "caller {caller:?} has as many streams open at this replica as it may; close one first"
                ),
                Some(STREAMS_RETRY),
            ),
            Refusal::DeadlineExceeded => (
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
                "the call's deadline passed before it was answered".to_owned(),
                None,
            ),
        };
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        if let Some(retry) = retry {
            details.set_retry_info(Some(retry));
        }
        let quota = match self {
            Refusal::RateLimited(_) => Some("requests per second at this replica"),
            Refusal::CallerInFlight => Some("calls in flight at this replica"),
            Refusal::TooManyStreams => Some("open streams at this replica"),
            Refusal::Overloaded | Refusal::DeadlineExceeded => None,
        };
        if let Some(quota) = quota {
            details.add_quota_failure_violation(format!("caller:{caller}"), quota);
        }
        tonic::Status::with_error_details(code, message, details)
    }
}

/// When a shed caller should try again: soon, since in-flight calls finish in milliseconds.
const OVERLOADED_RETRY: Duration = Duration::from_millis(50);
/// When a caller at its stream bound should try again.
const STREAMS_RETRY: Duration = Duration::from_secs(1);
/// How much earlier than tonic's own `grpc-timeout` timer the layer's fires, so that the
/// caller hears `DEADLINE_EXCEEDED` from us rather than tonic's `CANCELLED` (both timers round
/// to the same millisecond tick, and the inner future is polled first).
const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

impl Shared {
    /// The bucket of `caller`, made on first use.
    fn bucket(&self, caller: &str) -> Option<Arc<DefaultDirectRateLimiter>> {
        if let Some(bucket) = self
            .buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(caller)
        {
            return bucket.clone();
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(caller.to_owned())
            .or_insert_with(|| {
                self.limits
                    .rate_of(caller)
                    .map(|rate| Arc::new(RateLimiter::direct(rate.quota())))
            })
            .clone()
    }

    /// Takes a token from `caller`'s bucket, or says how long until one is back.
    fn take_token(&self, caller: &str) -> Result<(), Refusal> {
        match self.bucket(caller) {
            None => Ok(()),
            Some(bucket) => bucket.check().map_err(|not_until| {
                Refusal::RateLimited(not_until.wait_time_from(self.clock.now()))
            }),
        }
    }

    /// A place in flight for a call of `caller`: its own share first, then the replica's.
    fn enter(&self, caller: &str) -> Result<InFlight, Refusal> {
        let own = match self.limits.max_in_flight_per_caller {
            None => None,
            Some(share) => {
                let semaphore = self.caller_semaphore(caller, share);
                Some(
                    semaphore
                        .try_acquire_owned()
                        .map_err(|_| Refusal::CallerInFlight)?,
                )
            }
        };
        let replica = match &self.in_flight {
            None => None,
            Some(semaphore) => Some(
                semaphore
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Overloaded)?,
            ),
        };
        Ok(InFlight {
            _own: own,
            _replica: replica,
        })
    }

    /// The semaphore of `caller`'s share of the calls in flight, made on first use.
    fn caller_semaphore(&self, caller: &str, share: usize) -> Arc<Semaphore> {
        if let Some(semaphore) = self
            .caller_in_flight
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(caller)
        {
            return semaphore.clone();
        }
        self.caller_in_flight
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(share)))
            .clone()
    }

    /// Opens a stream slot for `caller`, held until the guard is dropped.
    fn open_stream(&self, caller: &str) -> Result<StreamSlot, Refusal> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(caller.to_owned()).or_insert(0);
        if *open >= self.limits.max_streams_per_caller {
            return Err(Refusal::TooManyStreams);
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            caller: caller.to_owned(),
        })
    }
}

/// A call's places in flight (its caller's and the replica's), given back when it is answered.
struct InFlight {
    _own: Option<OwnedSemaphorePermit>,
    _replica: Option<OwnedSemaphorePermit>,
}

/// One open stream of a caller; dropping it (the stream's body ends or is dropped) frees it.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.caller) {
            *open = open.saturating_sub(1);
        }
    }
}

/// The authenticated caller of a request, as the auth layer left it.
fn caller_of<B>(request: &http::Request<B>) -> Option<Arc<CallerIdentity>> {
    let extensions = request.extensions();
    extensions
        .get::<Arc<CallerIdentity>>()
        .cloned()
        .or_else(|| {
            extensions
                .get::<DelegationScope>()
                .map(|s| s.caller().clone())
        })
}

impl<S, B> Service<http::Request<B>> for LimitService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(caller) = caller_of(&request) else {
            // Health and reflection: open, and never throttled.
            return Box::pin(call_ready(&mut self.inner, request));
        };
        let name = caller.name.clone();
        let shared = self.shared.clone();
        let method = request.uri().path().to_owned();
        let refuse = move |refusal: Refusal| {
            shared
                .rejected
                .get([&method, &caller.name, refusal.label()])
                .increment(1);
            refusal.status(&caller.name).into_http()
        };
        let deadline = match grpc_timeout(request.headers()) {
            None => None,
            Some(timeout) if timeout.is_zero() => {
                return ready(refuse(Refusal::DeadlineExceeded));
            }
            Some(timeout) => Some(Instant::now() + timeout.saturating_sub(DEADLINE_MARGIN)),
        };
        if let Err(refusal) = self.shared.take_token(&name) {
            return ready(refuse(refusal));
        }
        let permit = match self.shared.enter(&name) {
            Ok(permit) => permit,
            Err(refusal) => return ready(refuse(refusal)),
        };
        let slot = if self.shared.long_lived.contains(request.uri().path()) {
            match self.shared.open_stream(&name) {
                Ok(slot) => Some(slot),
                Err(refusal) => return ready(refuse(refusal)),
            }
        } else {
            None
        };
        let answer = consentgate_deadline::within(deadline, call_ready(&mut self.inner, request));
        Box::pin(async move {
            let response = match deadline {
                None => answer.await?,
                Some(deadline) => match tokio::time::timeout_at(deadline, answer).await {
                    Ok(response) => response?,
                    Err(_) => return Ok(refuse(Refusal::DeadlineExceeded)),
                },
            };
            drop(permit);
            Ok(match slot {
                None => response,
                Some(slot) => {
                    response.map(|body| tonic::body::Body::new(Holding { body, _slot: slot }))
                }
            })
        })
    }
}

/// A streaming response's body, holding its caller's stream slot until it ends.
struct Holding {
    body: tonic::body::Body,
    _slot: StreamSlot,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The deadline a request states in `grpc-timeout` (an ASCII integer of at most 8 digits and a
/// unit: `H`, `M`, `S`, `m`, `u`, `n`); `None` when absent or malformed (as tonic treats it).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The full paths (`/pkg.Service/Method`) of every streaming RPC of the API.
fn streaming_methods() -> HashSet<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
    else {
        return HashSet::new();
    };
    let mut methods = HashSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                if method.server_streaming() || method.client_streaming() {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_spells_them() {
        let header = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().expect("value"));
            grpc_timeout(&headers)
        };
        assert_eq!(header("250m"), Some(Duration::from_millis(250)));
        assert_eq!(header("2S"), Some(Duration::from_secs(2)));
        assert_eq!(header("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(header("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(header("0m"), Some(Duration::ZERO));
        assert_eq!(header("123456789S"), None, "more than 8 digits");
        assert_eq!(header("-1S"), None);
        assert_eq!(header("10x"), None);
        assert_eq!(header("S"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn rates_parse_with_or_without_a_burst() {
        let rate: Rate = "500".parse().expect("rate");
        assert_eq!((rate.per_second.get(), rate.burst.get()), (500, 100));
        let rate: Rate = "3/10".parse().expect("rate");
        assert_eq!((rate.per_second.get(), rate.burst.get()), (3, 10));
        assert_eq!(Rate::per_second(NonZeroU32::MIN).burst.get(), 1);
        assert!("0".parse::<Rate>().is_err());
        assert!("ten".parse::<Rate>().is_err());
        assert!("5/0".parse::<Rate>().is_err());
    }

    #[test]
    fn the_streaming_rpcs_are_read_from_the_api() {
        let methods = streaming_methods();
        assert!(methods.contains("/consentgate.consent.v1.ConsentService/WatchChanges"));
        assert!(!methods.contains("/consentgate.consent.v1.ConsentService/Check"));
    }

    #[test]
    fn a_named_caller_rate_replaces_the_default() {
        let mut limits = Limits::default();
        limits.caller_rates.insert("bulk".into(), None);
        assert_eq!(limits.rate_of("bulk"), None);
        assert_eq!(limits.rate_of("mailer"), limits.caller_rate);
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_when_to_retry() {
        let limits = Limits {
            caller_rate: Some(Rate {
                per_second: NonZeroU32::new(1).expect("nonzero"),
                burst: NonZeroU32::new(2).expect("nonzero"),
            }),
            ..Limits::default()
        };
        let layer = LimitLayer::new(limits, &Metrics::disabled());
        assert!(layer.shared.take_token("mailer").is_ok());
        assert!(layer.shared.take_token("mailer").is_ok());
        match layer.shared.take_token("mailer") {
            Err(Refusal::RateLimited(wait)) => {
                assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            layer.shared.take_token("auditor").is_ok(),
            "each caller has its own bucket"
        );
    }

    #[test]
    fn a_caller_holds_at_most_its_share_of_the_calls_in_flight() {
        let limits = Limits {
            max_in_flight: Some(3),
            max_in_flight_per_caller: Some(2),
            ..Limits::default()
        };
        let layer = LimitLayer::new(limits, &Metrics::disabled());
        let first = layer.shared.enter("slow").expect("first");
        let _second = layer.shared.enter("slow").expect("second");
        assert!(matches!(
            layer.shared.enter("slow"),
            Err(Refusal::CallerInFlight)
        ));
        let _other = layer.shared.enter("other").expect("another caller's share");
        assert!(
            matches!(layer.shared.enter("third"), Err(Refusal::Overloaded)),
            "the replica's bound holds across callers"
        );
        drop(first);
        let _again = layer
            .shared
            .enter("slow")
            .expect("given back when answered");
    }

    #[test]
    fn refusals_are_counted_by_method_caller_and_reason() {
        let metrics = Metrics::enabled();
        let layer = LimitLayer::new(Limits::default(), &metrics);
        layer
            .shared
            .rejected
            .get([
                "/consentgate.consent.v1.ConsentService/Check",
                "mailer",
                "rate_limited",
            ])
            .increment(1);
        let scraped = metrics.render();
        assert!(
            scraped.contains(
                "consentgate_requests_rejected_total{rpc_method=\"/consentgate.consent.v1.ConsentService/Check\",caller=\"mailer\",reason=\"rate_limited\"} 1"
            ),
            "{scraped}"
        );
        let status = Refusal::RateLimited(Duration::from_millis(40)).status("mailer");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            crate::errors::reason_of(&status).as_deref(),
            Some("RATE_LIMITED")
        );
    }

    /// A request from `caller` with `grpc-timeout: timeout`.
    fn request(caller: &str, timeout: &str) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri("/consentgate.consent.v1.ConsentService/Grant")
            .header("grpc-timeout", timeout)
            .body(())
            .expect("request");
        request.extensions_mut().insert(Arc::new(CallerIdentity {
            name: caller.to_owned(),
            roles: vec!["preference_center".into()],
        }));
        request
    }

    /// The gRPC status of a response the layer built.
    fn code_of(response: &http::Response<tonic::body::Body>) -> Option<Code> {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[tokio::test]
    async fn a_handler_runs_within_the_callers_deadline_and_is_answered_deadline_exceeded_past_it()
    {
        let seen = Arc::new(Mutex::new(None));
        let seen_by_handler = seen.clone();
        let handler = tower::service_fn(move |_: http::Request<()>| {
            let seen = seen_by_handler.clone();
            async move {
                *seen.lock().expect("lock") = Some(consentgate_deadline::remaining());
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut service = LimitLayer::new(Limits::default(), &Metrics::disabled()).layer(handler);
        let started = std::time::Instant::now();
        let response = service
            .call(request("kiosk", "100m"))
            .await
            .expect("answered");
        assert_eq!(code_of(&response), Some(Code::DeadlineExceeded));
        assert!(started.elapsed() < Duration::from_secs(2));
        let remaining = seen.lock().expect("lock").expect("the handler ran");
        assert!(
            remaining.is_some_and(|r| r <= Duration::from_millis(100)),
            "the handler saw its deadline: {remaining:?}"
        );

        // No time left: refused without running the handler.
        *seen.lock().expect("lock") = None;
        let response = service
            .call(request("kiosk", "0m"))
            .await
            .expect("answered");
        assert_eq!(code_of(&response), Some(Code::DeadlineExceeded));
        assert!(seen.lock().expect("lock").is_none(), "not started");
    }

    #[test]
    fn stream_slots_are_per_caller_and_freed_when_dropped() {
        let limits = Limits {
            max_streams_per_caller: 2,
            ..Limits::default()
        };
        let layer = LimitLayer::new(limits, &Metrics::disabled());
        let first = layer.shared.open_stream("gate").expect("first");
        let _second = layer.shared.open_stream("gate").expect("second");
        assert!(matches!(
            layer.shared.open_stream("gate"),
            Err(Refusal::TooManyStreams)
        ));
        let _other = layer.shared.open_stream("other").expect("another caller");
        drop(first);
        let _third = layer.shared.open_stream("gate").expect("freed");
    }
}
