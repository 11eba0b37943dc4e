//! The gate against a real consent service: batched checks share the cache with single ones,
//! change events make cached decisions stale, and an unreachable consent service fails closed.

use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server as consent_server;
use consentgate_consent::testing::{Backend, TestDb};
use consentgate_gate::{Gate, GateConfig, GateError};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use std::sync::Arc;
use std::time::Duration;

const PURPOSE: &str = "personalize.content.limited";

fn check(who: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: Some(SubjectRef {
            id: Some(subject_ref::Id::SubjectId(who.to_owned())),
        }),
        purpose: PURPOSE.into(),
        data_categories: vec!["user.preferences.stated".into()],
        ..Default::default()
    }
}

async fn consent_service() -> (String, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await;
    let policy = Arc::new(Policy::default_policy().expect("policy"));
    let tokens: Vec<(String, String)> = policy
        .callers
        .keys()
        .map(|c| (c.clone(), format!("t-{c}")))
        .collect();
    let auth = consentgate_runtime::Authenticator::from_policy(&policy, &tokens).expect("auth");
    let engine = consent_server::open_engine(
        policy,
        &db.url,
        Arc::new(LedgerKeys::generate()),
        100,
        consentgate_consent::store::DEFAULT_IDEMPOTENCY_WINDOW,
    )
    .await
    .expect("engine");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(consent_server::serve(
        engine,
        consent_server::FEED_POLL,
        auth,
        Default::default(),
        listener,
        std::future::pending(),
    ));
    (url, db)
}

async fn write(url: &str, withdraw: bool, who: &str, key: &str) -> u64 {
    let mut client = ConsentServiceClient::connect(url.to_owned())
        .await
        .expect("connect");
    let target = Some(pb::ConsentTarget {
        subject: Some(SubjectRef {
            id: Some(subject_ref::Id::SubjectId(who.to_owned())),
        }),
        purpose: PURPOSE.into(),
        ..Default::default()
    });
    let auth: tonic::metadata::MetadataValue<_> =
        "Bearer t-preference-center".parse().expect("header");
    if withdraw {
        let mut r = tonic::Request::new(pb::WithdrawRequest {
            target,
            idempotency_key: key.into(),
            ..Default::default()
        });
        r.metadata_mut().insert("authorization", auth);
        client
            .withdraw(r)
            .await
            .expect("withdraw")
            .into_inner()
            .revision
    } else {
        let mut r = tonic::Request::new(pb::GrantRequest {
            target,
            consent_type: pb::ConsentType::Explicit as i32,
            notice_version: "2.0".into(),
            idempotency_key: key.into(),
            ..Default::default()
        });
        r.metadata_mut().insert("authorization", auth);
        client.grant(r).await.expect("grant").into_inner().revision
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_checks_share_the_cache_and_follow_changes() {
    let (url, _db) = consent_service().await;
    let gate = Gate::start(
        GateConfig::new(url.clone(), "t-recommendation-service"),
        "recommendation-service",
    )
    .expect("gate");
    assert!(gate.wait_live(Duration::from_secs(10)).await);
    write(&url, false, "ann", "g-ann").await;
    let decisions = gate
        .check_many(vec![check("ann"), check("bob"), check("ann")], None)
        .await
        .expect("batch");
    let allowed: Vec<bool> = decisions
        .iter()
        .map(|d| d.is_allowed("user.preferences.stated"))
        .collect();
    assert_eq!(allowed, [true, false, true]);
    assert_eq!(decisions[1].reason(), "NO_CONSENT");
    let c = gate.counters();
    assert_eq!((c.cache_misses, c.allows, c.denies), (3, 2, 1));
    // The same questions again: all cached, one by one or batched.
    assert!(
        gate.check(check("ann"), None)
            .await
            .expect("check")
            .from_cache()
    );
    let again = gate
        .check_many(vec![check("bob"), check("ann")], None)
        .await
        .expect("batch");
    assert!(again.iter().all(|d| d.from_cache()));
    // A withdrawal: decisions held from before are superseded once the stream reports it, and
    // with its token the next batch is fresh, and denied.
    let held = gate.check(check("ann"), None).await.expect("check");
    assert!(!gate.superseded(&held));
    let revision = write(&url, true, "ann", "w-ann").await;
    let started = std::time::Instant::now();
    while !gate.superseded(&held) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the withdrawal never superseded the decision"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut fresh = check("ann");
    fresh.at_least_as_fresh = revision.to_string();
    let after = gate.check_many(vec![fresh], None).await.expect("batch");
    assert!(!after[0].is_allowed("user.preferences.stated"));
    assert_eq!(after[0].reason(), "WITHDRAWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_consent_service_fails_closed() {
    // Nothing listens here.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut config = GateConfig::new(
        format!("http://127.0.0.1:{port}"),
        "t-recommendation-service",
    );
    config.check_timeout = Duration::from_millis(500);
    let gate = Gate::start(config, "recommendation-service").expect("gate");
    assert!(!gate.stream_live());
    for result in [
        gate.check(check("ann"), None).await.map(|_| ()),
        gate.check_many(vec![check("ann")], None).await.map(|_| ()),
    ] {
        let err = result.expect_err("no decision without the consent service");
        assert!(matches!(err, GateError::Unavailable(_)), "{err:?}");
        assert_eq!(err.into_status().code(), tonic::Code::Unavailable);
    }
    assert_eq!(gate.counters().allows, 0);
    assert_eq!(gate.counters().failures, 2);
}

/// A grant of `purpose` to `who` that expires at `expires`; the new revision.
async fn grant_until(
    url: &str,
    who: &str,
    purpose: &str,
    key: &str,
    expires: std::time::SystemTime,
) -> u64 {
    let mut client = ConsentServiceClient::connect(url.to_owned())
        .await
        .expect("connect");
    let mut r = tonic::Request::new(pb::GrantRequest {
        target: Some(pb::ConsentTarget {
            subject: Some(SubjectRef {
                id: Some(subject_ref::Id::SubjectId(who.to_owned())),
            }),
            purpose: purpose.into(),
            ..Default::default()
        }),
        consent_type: pb::ConsentType::Explicit as i32,
        notice_version: "2.0".into(),
        expires_at: Some(expires.into()),
        idempotency_key: key.into(),
        ..Default::default()
    });
    r.metadata_mut().insert(
        "authorization",
        "Bearer t-preference-center".parse().expect("header"),
    );
    client.grant(r).await.expect("grant").into_inner().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_decision_is_not_served_past_the_expiry_of_any_record_behind_it() {
    use consentgate_proto::common::v1::PersonalizationLevel;
    let (url, _db) = consent_service().await;
    let gate = Gate::start(
        GateConfig::new(url.clone(), "t-recommendation-service"),
        "recommendation-service",
    )
    .expect("gate");
    assert!(gate.wait_live(Duration::from_secs(10)).await);
    let expires = std::time::SystemTime::now() + Duration::from_millis(1500);
    let revision = grant_until(&url, "eve", PURPOSE, "g-eve", expires).await;
    // Two questions: the limited purpose's category (its verdict rests on the record) and the
    // profiled purpose alone (denied, but its personalization level rests on the record).
    let level_check = || pb::CheckRequest {
        purpose: "personalize.content.profiled".into(),
        data_categories: Vec::new(),
        ..check("eve")
    };
    let mut first = vec![check("eve"), level_check()];
    for c in &mut first {
        c.at_least_as_fresh = revision.to_string();
    }
    let before = gate.check_many(first, None).await.expect("batch");
    assert!(before[0].is_allowed("user.preferences.stated"));
    assert_eq!(
        before[1].personalization_level(),
        PersonalizationLevel::Limited
    );
    for d in &before {
        assert!(
            d.valid_until() <= expires,
            "{}: valid until {:?}, past the record's expiry {expires:?}",
            d.purpose(),
            d.valid_until()
        );
        assert!(d.holds_at(std::time::SystemTime::now()));
    }
    let cached = gate
        .check_many(vec![check("eve"), level_check()], None)
        .await
        .expect("batch");
    assert!(
        cached.iter().all(|d| d.from_cache()),
        "warm before the expiry"
    );
    // Past the expiry, with no change event: neither answer comes from the cache.
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    let after = gate
        .check_many(vec![check("eve"), level_check()], None)
        .await
        .expect("batch");
    assert!(after.iter().all(|d| !d.from_cache()));
    assert!(!after[0].is_allowed("user.preferences.stated"));
    assert_eq!(after[0].reason(), "EXPIRED");
    assert!(
        after[1].personalization_level() < PersonalizationLevel::Limited,
        "{:?}",
        after[1].personalization_level()
    );
}

/// A TCP front for the consent service that can hang: in hang mode it accepts connections and
/// never answers (a replica stuck in a GC pause or a dead node behind a live socket); otherwise
/// it forwards new connections to the consent service. Connections it hung stay hung.
struct HangingFront {
    url: String,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl HangingFront {
    async fn start(upstream: &str) -> HangingFront {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hanging = hang.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if hanging.load(std::sync::atomic::Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        HangingFront { url, hang }
    }

    fn recover(&self) {
        self.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A consent service that hangs costs one read its deadline; the reads after it fail closed at
/// once (the breaker), instead of each waiting out the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_consent_service_costs_one_deadline_then_reads_fail_fast() {
    let (url, _db) = consent_service().await;
    let front = HangingFront::start(&url).await;
    let mut config = GateConfig::new(front.url.clone(), "t-recommendation-service");
    config.check_timeout = Duration::from_millis(300);
    config.probe_every = Duration::from_secs(3600);
    let gate = Gate::start(config, "recommendation-service").expect("gate");

    let first = gate.check(check("hung"), None).await;
    assert!(matches!(first, Err(GateError::Unavailable(_))), "{first:?}");
    assert!(gate.breaker_open());
    assert_eq!(
        gate.counters().fast_failures,
        0,
        "the first read made the call"
    );
    for _ in 0..5 {
        let err = gate
            .check(check("hung"), None)
            .await
            .expect_err("fails closed");
        assert_eq!(err.into_status().code(), tonic::Code::Unavailable);
    }
    let batch = gate.check_many(vec![check("hung")], None).await;
    assert!(matches!(batch, Err(GateError::Unavailable(_))), "{batch:?}");
    let counters = gate.counters();
    assert_eq!(
        counters.fast_failures, 6,
        "every read after the first failed at once: {counters:?}"
    );
    assert_eq!(counters.failures, 7);
    assert_eq!(counters.allows, 0);
}

/// After a read hangs, the gate leaves that connection: the next call (the probe) goes over a
/// new one, which behind a Service address may reach a healthy replica; here the front has
/// recovered for new connections only, so only a new connection can be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hang_the_probe_goes_over_a_new_connection_and_closes_the_breaker() {
    let (url, _db) = consent_service().await;
    write(&url, false, "moved", "g").await;
    let front = HangingFront::start(&url).await;
    let mut config = GateConfig::new(front.url.clone(), "t-recommendation-service");
    config.check_timeout = Duration::from_millis(300);
    // Every call after a failure may probe: no waiting in the test.
    config.probe_every = Duration::ZERO;
    let gate = Gate::start(config, "recommendation-service").expect("gate");

    let hung = gate.check(check("moved"), None).await;
    assert!(matches!(hung, Err(GateError::Unavailable(_))), "{hung:?}");
    assert!(gate.breaker_open());
    front.recover();
    let answered = gate
        .check(check("moved"), None)
        .await
        .expect("the probe, over a new connection, is answered");
    assert_eq!(answered.verdict(), pb::Verdict::Allow);
    assert!(
        !gate.breaker_open(),
        "a successful probe closes the breaker"
    );
    assert_eq!(gate.counters().fast_failures, 0);
}

/// A probe whose caller goes away before it ends (a client's own deadline) must not leave the
/// breaker waiting for it forever: the next read probes again instead of failing fast for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_probe_frees_the_next() {
    let (url, _db) = consent_service().await;
    let front = HangingFront::start(&url).await;
    let mut config = GateConfig::new(front.url.clone(), "t-recommendation-service");
    config.check_timeout = Duration::from_millis(300);
    config.probe_every = Duration::ZERO;
    let gate = Gate::start(config, "recommendation-service").expect("gate");

    assert!(gate.check(check("gone"), None).await.is_err());
    assert!(gate.breaker_open());
    // The probe: its caller gives up long before the check's deadline.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(20), gate.check(check("gone"), None)).await;
    assert!(abandoned.is_err(), "the hung probe was abandoned");
    // The next read is a probe again (it waits for the hung service), not a fast failure.
    assert!(gate.check(check("gone"), None).await.is_err());
    assert_eq!(
        gate.counters().fast_failures,
        0,
        "no read failed fast while no probe was under way"
    );
    drop(front);
}

/// The gate asks for heartbeats the consent service accepts (its default is above the floor),
/// and a gate configured under the floor refuses to start instead of watching nothing.
#[tokio::test]
async fn the_heartbeat_asked_for_is_within_what_the_consent_service_accepts() {
    let floor = Duration::from_millis(consentgate_proto::limits::MIN_HEARTBEAT_MILLIS.into());
    let config = GateConfig::new("http://127.0.0.1:9", "t-recommendation-service");
    assert!(config.heartbeat >= floor, "{:?}", config.heartbeat);
    assert!(config.heartbeat < config.lease, "{:?}", config.heartbeat);
    let mut too_fast = config;
    too_fast.heartbeat = Duration::from_millis(10);
    match Gate::start(too_fast, "recommendation-service") {
        Err(GateError::Config(why)) => assert!(why.contains("heartbeat"), "{why}"),
        other => panic!("a 10 ms heartbeat must be refused, got {:?}", other.is_ok()),
    }
}

/// A TCP front that forwards to one consent service, then (`switch`) drops every connection it
/// forwarded and forwards new ones to another: the address a gate follows now reaches a database
/// restored to an earlier point.
struct SwitchingFront {
    url: String,
    upstream: Arc<std::sync::Mutex<String>>,
    forwarded: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl SwitchingFront {
    async fn start(upstream: &str) -> SwitchingFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let front = SwitchingFront {
            url,
            upstream: Arc::new(std::sync::Mutex::new(String::new())),
            forwarded: Arc::default(),
        };
        front.switch(upstream);
        let (upstream, forwarded) = (front.upstream.clone(), front.forwarded.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = upstream.lock().expect("upstream").clone();
                forwarded
                    .lock()
                    .expect("forwarded")
                    .push(tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
            }
        });
        front
    }

    fn switch(&self, upstream: &str) {
        *self.upstream.lock().expect("upstream") = upstream.trim_start_matches("http://").into();
        for connection in self.forwarded.lock().expect("forwarded").drain(..) {
            connection.abort();
        }
    }
}

/// The consent database is restored to an earlier point than the gate has seen: the consent
/// service refuses to resume the stream after the gate's high water, and the gate fails closed
/// for good, instead of resuming once the restored database's new changes pass its high water
/// (which would skip those reusing the revisions in between: here, a withdrawal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_behind_the_gate_stops_the_stream_and_cached_allows() {
    let (before, _db) = consent_service().await;
    let (restored, _restored_db) = consent_service().await;
    let front = SwitchingFront::start(&before).await;
    let gate = Gate::start(
        GateConfig::new(front.url.clone(), "t-recommendation-service"),
        "recommendation-service",
    )
    .expect("gate");
    assert!(gate.wait_live(Duration::from_secs(10)).await);
    let mut notices = gate.subscribe();
    write(&before, false, "ann", "g-ann").await;
    write(&before, false, "bob", "g-bob").await;
    let head = write(&before, false, "cat", "g-cat").await;
    while notices.recv().await.expect("notice").revision < head {}
    assert!(
        gate.check(check("ann"), None)
            .await
            .expect("check")
            .is_allowed("user.preferences.stated")
    );
    assert!(
        gate.check(check("ann"), None)
            .await
            .expect("check")
            .from_cache()
    );

    front.switch(&restored);
    // The restored database: ann granted, then withdrawn, at revisions the gate has seen.
    write(&restored, false, "ann", "r-g-ann").await;
    write(&restored, true, "ann", "r-w-ann").await;
    // The broken stream lapses the lease, and the gate's resume is refused.
    let started = std::time::Instant::now();
    while gate.stream_live() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease ran on"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // New changes past the gate's high water: past the gate's longest reconnect backoff (1 s),
    // the stream has still not resumed (it would have skipped the withdrawal).
    let mut past = 0;
    for who in ["dan", "eve", "fay"] {
        past = write(&restored, false, who, &format!("r-g-{who}")).await;
    }
    assert!(past > head);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert!(!gate.stream_live(), "the stream resumed past a restore");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ann = gate.check(check("ann"), None).await.expect("check");
    assert!(!ann.from_cache());
    assert!(!ann.is_allowed("user.preferences.stated"));
    assert_eq!(ann.reason(), "WITHDRAWN");
}
