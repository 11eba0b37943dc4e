//! Limits over real gRPC (issue 15, item 3): a caller over its rate is refused with
//! `RESOURCE_EXHAUSTED` and `RetryInfo` while another caller's latency stays within 2× of its
//! unloaded value in the same run; a call whose deadline passes while the store is busy stores
//! nothing; calls past a caller's share of the replica are refused while health still answers;
//! and, against the real binary as a child process, rapid reset, a stream flood, oversize
//! headers and 10,000 open streams from one client leave it up, its memory bounded, and other
//! callers served.

// The crash harness's child process (its `channel` goes unused here).
#[allow(dead_code)]
#[path = "crash/child.rs"]
mod child;
mod common;
#[path = "limits/raw_h2.rs"]
mod raw_h2;

use common::*;
use consentgate::suite::{self, ConsentSettings};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::testing::{self, Backend, TestDb, WriteLock, backends};
use consentgate_policy::Policy;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::{Authenticator, Edge, Limits, Rate};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Client = ConsentServiceClient<InterceptedService<Channel, Bearer>>;

/// The tests here that measure latency or memory run one at a time (cargo runs a binary's tests
/// in parallel, and they would disturb each other's measurements).
static MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn measured() -> tokio::sync::MutexGuard<'static, ()> {
    MEASURED.lock().await
}

/// The default policy and a second preference-center backend, `kiosk`: a caller with the
/// same role as the victim, so that its flood competes for the same write path.
fn policy_with_kiosk() -> Arc<Policy> {
    let text = format!(
        "{}\n[callers.\"kiosk\"]\ndescription = \"In-store kiosks.\"\nroles = [\"preference_center\"]\npurposes = [\"essential.*\", \"personalize.*\", \"marketing.*\", \"research\"]\n",
        consentgate_policy::DEFAULT_POLICY_TOML
    );
    Arc::new(Policy::from_toml(&text, "test policy").expect("policy with kiosk"))
}

/// A consent service over a fresh database with `limits`, every caller of `policy` known by
/// its test token.
async fn consent_with(
    policy: Arc<Policy>,
    limits: Limits,
    backend: Backend,
) -> (suite::ConsentService, TestDb) {
    let db = TestDb::new(backend).await;
    let tokens: Vec<(String, String)> = policy
        .callers
        .keys()
        .map(|c| (c.clone(), token(c)))
        .collect();
    let authenticator = Authenticator::from_policy(&policy, &tokens).expect("tokens");
    let settings = ConsentSettings {
        database_url: db.url.clone(),
        keys: Arc::new(LedgerKeys::generate()),
        cache_capacity: 10_000,
        feed_poll: consentgate_consent::server::FEED_POLL,
    };
    let edge = Edge {
        authenticator,
        limits,
        ..Edge::default()
    };
    let started = suite::start_consent(
        policy,
        edge,
        settings,
        ephemeral().await.into(),
        &Default::default(),
    )
    .await
    .expect("consent service");
    (started, db)
}

async fn client(addr: SocketAddr, caller: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    ConsentServiceClient::with_interceptor(channel, Bearer::caller(caller))
}

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate {
        per_second: NonZeroU32::new(per_second).expect("nonzero"),
        burst: NonZeroU32::new(burst).expect("nonzero"),
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `n` grants one after another, each for a new subject: their latencies.
async fn timed_grants(client: &mut Client, tag: &str, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        client
            .grant(grant(
                &format!("victim-{tag}-{i}"),
                "personalize.content.profiled",
                &format!("victim-{tag}-{i}"),
            ))
            .await
            .expect("the victim's grant");
        latencies.push(started.elapsed());
    }
    latencies
}

/// What a flood got back.
#[derive(Debug, Default)]
struct Flooded {
    sent: u64,
    admitted: u64,
    rate_limited: u64,
    /// Every `RetryInfo` delay of a refusal.
    retry_delays: Vec<Duration>,
    other: Vec<String>,
    elapsed: Duration,
}

/// Grants from `client` at `per_second`, open loop (sent on schedule whatever the answers, at
/// most 64 outstanding), until `stop`.
async fn flood(client: Client, per_second: u32, tag: String, stop: Arc<AtomicBool>) -> Flooded {
    let started = Instant::now();
    let every = Duration::from_secs(1) / per_second;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(64));
    let mut answers = tokio::task::JoinSet::new();
    let mut next = tokio::time::Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next += every;
        let Ok(permit) = outstanding.clone().try_acquire_owned() else {
            continue;
        };
        let mut client = client.clone();
        let key = format!("flood-{tag}-{sent}");
        sent += 1;
        answers.spawn(async move {
            let answer = client
                .grant(grant(&key, "personalize.content.profiled", &key))
                .await;
            drop(permit);
            answer
        });
    }
    let elapsed = started.elapsed();
    let mut flooded = Flooded {
        sent,
        elapsed,
        ..Flooded::default()
    };
    while let Some(answer) = answers.join_next().await {
        match answer.expect("joined") {
            Ok(_) => flooded.admitted += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&status), "RATE_LIMITED", "{status:?}");
                flooded.rate_limited += 1;
                if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
                    flooded.retry_delays.push(delay);
                }
            }
            Err(status) => flooded.other.push(format!("{status:?}")),
        }
    }
    flooded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_refused_with_retry_info_and_another_caller_is_not_slowed() {
    let _one_at_a_time = measured().await;
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 15;
    // The kiosk may make 20 grants a second (burst 5) and sends 400: without its limit, its
    // writes would queue in front of every grant of the preference center.
    let mut limits = Limits::default();
    limits
        .caller_rates
        .insert("kiosk".into(), Some(rate(20, 5)));
    let (consent, _db) = consent_with(policy_with_kiosk(), limits, Backend::Sqlite).await;
    let mut victim = client(consent.address(), "preference-center").await;
    let kiosk = client(consent.address(), "kiosk").await;
    timed_grants(&mut victim, "warm", 10).await;

    let mut unloaded = Vec::new();
    let mut loaded = Vec::new();
    let mut flooded = Flooded::default();
    for round in 0..ROUNDS {
        unloaded.extend(timed_grants(&mut victim, &format!("u{round}"), PER_ROUND).await);
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = tokio::spawn(flood(kiosk.clone(), 400, format!("r{round}"), stop.clone()));
        // The flood's burst passes first; the victim is measured once the kiosk is limited.
        tokio::time::sleep(Duration::from_millis(100)).await;
        loaded.extend(timed_grants(&mut victim, &format!("l{round}"), PER_ROUND).await);
        stop.store(true, Ordering::Relaxed);
        let round = flooding.await.expect("flood");
        flooded.sent += round.sent;
        flooded.admitted += round.admitted;
        flooded.rate_limited += round.rate_limited;
        flooded.retry_delays.extend(round.retry_delays);
        flooded.other.extend(round.other);
        flooded.elapsed += round.elapsed;
    }
    let (unloaded, loaded) = (median(&mut unloaded), median(&mut loaded));
    let ratio = loaded.as_secs_f64() / unloaded.as_secs_f64();
    println!(
        "victim median {unloaded:?} alone, {loaded:?} beside the flood ({ratio:.2}x); kiosk sent {}, \
         {} admitted, {} rate limited over {:?}",
        flooded.sent, flooded.admitted, flooded.rate_limited, flooded.elapsed
    );
    assert!(flooded.other.is_empty(), "{:?}", flooded.other);
    assert!(
        flooded.rate_limited > flooded.sent / 2,
        "most of the flood is refused: {flooded:?}"
    );
    assert_eq!(
        flooded.retry_delays.len() as u64,
        flooded.rate_limited,
        "every refusal says when to retry"
    );
    assert!(
        flooded
            .retry_delays
            .iter()
            .all(|d| *d > Duration::ZERO && *d <= Duration::from_millis(200)),
        "a token is back within 1/20 s: {:?}",
        flooded.retry_delays.iter().max()
    );
    // At most the bursts plus 20 a second, with a second of slack for the rounds' edges.
    let allowed = (ROUNDS as u64) * 5 + (flooded.elapsed.as_secs_f64() * 20.0) as u64 + 20;
    assert!(
        flooded.admitted <= allowed,
        "{} admitted, at most {allowed} allowed",
        flooded.admitted
    );
    assert!(
        ratio <= 2.0,
        "the other caller's median latency went from {unloaded:?} to {loaded:?} ({ratio:.2}x)"
    );
    consent.server.stop().await.expect("consent service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_deadline_passes_while_the_store_is_busy_stores_nothing() {
    for backend in backends() {
        let (consent, _db) = consent_with(policy(), Limits::default(), backend).await;
        let url = _db.url.clone();
        let mut pc = client(consent.address(), "preference-center").await;
        pc.grant(grant("early", "personalize.content.profiled", "early"))
            .await
            .expect("a grant before the lock");
        let before = testing::ledger(&consent.service)
            .await
            .expect("ledger")
            .len();

        let lock = WriteLock::take(&url).await;
        let mut late = tonic::Request::new(grant("late", "personalize.content.profiled", "late"));
        late.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let refused = pc.grant(late).await.expect_err("the deadline passes first");
        // tonic's client gives up at the deadline too (CANCELLED), racing the server's answer
        // (DEADLINE_EXCEEDED, which the layer's unit tests check).
        assert!(
            matches!(refused.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered at the deadline"
        );
        // A call that arrives with no time left is not started at all.
        let mut spent =
            tonic::Request::new(grant("spent", "personalize.content.profiled", "spent"));
        spent.set_timeout(Duration::ZERO);
        let refused = pc.grant(spent).await.expect_err("no time left");
        assert!(
            matches!(refused.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{refused:?}"
        );
        lock.release(&url).await;

        // The abandoned write never happens, even once the store is free again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ledger = testing::ledger(&consent.service).await.expect("ledger");
        assert_eq!(
            ledger.len(),
            before,
            "{backend:?}: nothing stored past the deadline"
        );
        let mut auditor = client(consent.address(), "privacy-ops").await;
        let held = auditor
            .get_consents(pb::GetConsentsRequest {
                subject: subject("late"),
                ..Default::default()
            })
            .await
            .expect("get consents")
            .into_inner();
        assert!(held.consents.is_empty(), "{backend:?}: {held:?}");
        // The caller's retry with the same key applies once.
        pc.grant(grant("late", "personalize.content.profiled", "late"))
            .await
            .expect("the retry");
        pc.grant(grant("late", "personalize.content.profiled", "late"))
            .await
            .expect("the retry, again");
        let ledger = testing::ledger(&consent.service).await.expect("ledger");
        assert_eq!(
            ledger.len(),
            before + 1,
            "{backend:?}: applied exactly once"
        );
        consent.server.stop().await.expect("consent service");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_a_callers_share_in_flight_are_refused_and_health_still_answers() {
    let limits = Limits {
        max_in_flight: Some(4),
        max_in_flight_per_caller: Some(2),
        ..Limits::default()
    };
    let (consent, db) = consent_with(policy(), limits, Backend::Sqlite).await;
    let url = db.url.clone();
    let pc = client(consent.address(), "preference-center").await;
    let lock = WriteLock::take(&url).await;
    // Two grants wait for the write lock: the preference center's whole share.
    let mut waiting = Vec::new();
    for i in 0..2 {
        let mut pc = pc.clone();
        waiting.push(tokio::spawn(async move {
            pc.grant(grant(
                &format!("w{i}"),
                "personalize.content.profiled",
                &format!("w{i}"),
            ))
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = pc
        .clone()
        .grant(grant("third", "personalize.content.profiled", "third"))
        .await
        .expect_err("past its share");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_IN_FLIGHT");
    assert!(refused.get_details_retry_info().is_some());
    // Another caller still has room, and so does a probe.
    let mut enforcer = client(consent.address(), "profile-service").await;
    enforcer
        .check(check("w0", "personalize.content.profiled", &[]))
        .await
        .expect("another caller is served");
    let channel = Channel::from_shared(format!("http://{}", consent.address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is never limited");
    assert_eq!(health.into_inner().status, 1);
    lock.release(&url).await;
    for w in waiting {
        w.await
            .expect("joined")
            .expect("answered once the store is free");
    }
    consent.server.stop().await.expect("consent service");
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: u64 = 1 << 20;
/// What the hostile connections may add to the server's resident memory, all together.
const MEMORY_BOUND: u64 = 256 * MIB;
/// Open streams one client asks for.
const STREAMS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_leave_the_server_up_bounded_and_serving_others() {
    let _one_at_a_time = measured().await;
    let scratch = std::env::temp_dir().join(format!(
        "consentgate-limits-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let tokens: String = tokens()
        .iter()
        .map(|(caller, token)| format!("\"{caller}\" = \"{token}\"\n"))
        .collect();
    std::fs::write(scratch.join("tokens.toml"), tokens).expect("tokens file");
    let db = TestDb::new(Backend::Sqlite).await;
    let mut service = child::Service::new(
        "consent",
        vec![
            "--metrics-listen".into(),
            "off".into(),
            "--database-url".into(),
            db.url.clone(),
            "--tokens-file".into(),
            scratch.join("tokens.toml").display().to_string(),
            "--key-file".into(),
            scratch.join("consent.key").display().to_string(),
            "--create-key-file".into(),
            "--max-streams-per-caller".into(),
            STREAMS.to_string(),
        ],
        scratch.join("consent.log"),
    );
    let process = service.start().await;
    let pid = process.pid().expect("running");
    let addr = process.addr;
    let mut other = client(addr, "recommendation-service").await;
    let served = |mut c: Client| async move {
        c.check(check("someone", "personalize.content.profiled", &[]))
            .await
            .map(|_| ())
    };
    for _ in 0..50 {
        served(other.clone()).await.expect("warm");
    }
    let baseline = rss(pid);

    // Rapid reset: 10,000 streams opened and cancelled at once, on one connection.
    let rapid = raw_h2::rapid_reset(addr, &token("profile-service"), 10_000).await;
    println!("rapid reset: {rapid:?}");
    assert!(
        rapid.goaway.is_some() || rapid.closed,
        "the server ends a connection that resets streams as fast as it opens them: {rapid:?}"
    );
    served(other.clone())
        .await
        .expect("served after the rapid reset");

    // A stream flood: 2,000 streams opened without a message on one connection, four times
    // the connection's stream bound.
    let flood = raw_h2::open_streams(addr, &token("profile-service"), 2_000).await;
    println!("stream flood: {flood:?}");
    assert!(
        flood.refused_streams > 0 || flood.goaway.is_some() || flood.closed,
        "streams past the connection's bound are refused: {flood:?}"
    );
    served(other.clone())
        .await
        .expect("another caller is served beside a stream flood");

    // Oversize headers: 64 KiB of metadata, four times the bound.
    let oversize = raw_h2::oversize_headers(addr, &token("profile-service"), 64 * 1024).await;
    println!("oversize headers: {oversize:?}");
    assert!(
        oversize.answered_without_200(),
        "oversize headers are refused: {oversize:?}"
    );
    served(other.clone())
        .await
        .expect("served after oversize headers");

    // 10,000 open WatchChanges streams from one client (as many as the caller may hold), on
    // 25 connections of 400 streams each (the connection bound is 512), then one more. They are
    // opened 100 at a time: the caller's share of calls in flight (128) bounds how many may
    // be starting at once.
    let mut streams = Vec::with_capacity(STREAMS);
    let mut watchers = Vec::new();
    for _ in 0..STREAMS / 400 {
        watchers.push(client(addr, "profile-service").await);
    }
    let opened = Instant::now();
    for wave in 0..STREAMS / 100 {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let mut watcher = watchers[wave / 4].clone();
            opening.spawn(async move {
                watcher
                    .watch_changes(pb::WatchChangesRequest {
                        after_revision: 0,
                        heartbeat_millis: 10_000,
                    })
                    .await
            });
        }
        while let Some(stream) = opening.join_next().await {
            streams.push(
                stream
                    .expect("joined")
                    .expect("a stream within the bound")
                    .into_inner(),
            );
        }
    }
    println!("{STREAMS} streams open in {:?}", opened.elapsed());
    let refused = watchers[0]
        .watch_changes(pb::WatchChangesRequest {
            after_revision: 0,
            heartbeat_millis: 10_000,
        })
        .await
        .expect_err("one past the bound");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_STREAMS");
    served(other.clone())
        .await
        .expect("another caller is served beside 10,000 streams");
    let with_streams = rss(pid);
    println!(
        "server RSS: {} MiB before, {} MiB with {STREAMS} streams open after the attacks",
        baseline / MIB,
        with_streams / MIB
    );
    assert!(
        with_streams < baseline + MEMORY_BOUND,
        "memory grew by {} MiB (bound {} MiB)",
        (with_streams - baseline) / MIB,
        MEMORY_BOUND / MIB
    );

    // Closed streams give their slots back.
    drop(streams);
    let freed = Instant::now();
    loop {
        match watchers[0]
            .watch_changes(pb::WatchChangesRequest {
                after_revision: 0,
                heartbeat_millis: 10_000,
            })
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    freed.elapsed() < Duration::from_secs(30),
                    "slots not given back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    other
        .check(check("someone", "personalize.content.profiled", &[]))
        .await
        .expect("still serving");
    process.kill().await;
    let _ = std::fs::remove_dir_all(&scratch);
}
