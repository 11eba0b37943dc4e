//! `profilegen`: benchmarks the profile service behind the consent gate over real gRPC on
//! loopback. Starts the consent service and two profile services in-process (gate cache on, gate
//! cache off) on fresh SQLite files (or PostgreSQL databases with `--postgres`), seeds subjects, then measures in one run:
//! - the floor: `grpc.health.v1` Check on the profile server, at 1 in flight and open loop;
//! - gated `GetProfile` with a warm gate cache and with the cache off, the same two ways;
//! - withdrawal propagation: from `Withdraw`'s reply to the first denying `GetProfile` (no token);
//! - `RecordEvents` ingest in events per second.
//!
//! Prints a Markdown section and, with `--write FILE`, puts it into FILE between
//! `<!-- profilegen:start -->` and `<!-- profilegen:end -->` (replacing an earlier one).

mod allocator;
mod cores;
mod databases;
mod marked;
mod pacer;

use clap::Parser;
use consentgate::suite::{self, ConsentService, ConsentSettings, ProfileService};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_gate::GateConfig;
use consentgate_policy::Policy;
use consentgate_profile::server::ProfileConfig;
use consentgate_proto::common::v1::{DataSource, SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as cpb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use consentgate_runtime::{Authenticator, Edge};
use cores::half_the_cores;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "profilegen", version)]
struct Args {
    /// Measured seconds per latency phase.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Subjects to seed.
    #[arg(long, default_value_t = 200)]
    subjects: usize,
    /// Open-loop rate for the latency phases, requests/s.
    #[arg(long, default_value_t = 500.0)]
    open_rate: f64,
    /// Withdrawal-propagation trials.
    #[arg(long, default_value_t = 300)]
    propagation_trials: usize,
    /// Events per RecordEvents call in the ingest phase.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent RecordEvents callers.
    #[arg(long, default_value_t = 4)]
    ingest_in_flight: usize,
    /// Put the report into this Markdown file (between profilegen markers).
    #[arg(long)]
    write: Option<PathBuf>,
    /// The health floor and gated GetProfile (1 in flight) alternate in this many rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Worker threads of the services' runtime; default half the cores (the generator gets the
    /// other half, as if on separate machines).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Worker threads of the generator's runtime; default half the cores.
    #[arg(long)]
    client_threads: Option<usize>,
    /// Smoke run: 1 s phases, few trials (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Run on fresh PostgreSQL databases (the server `CONSENTGATE_TEST_POSTGRES_URL` names)
    /// instead of SQLite files: the production profile; reported under its own marker.
    #[arg(long)]
    postgres: bool,
}

const PURPOSE: &str = "personalize.content.profiled";

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}")
        .parse()
        .expect("token is header text")
}

fn authorized<T>(message: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Latency percentiles of one phase, in microseconds.
struct Latency {
    label: String,
    count: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Latency {
    fn of(label: impl Into<String>, h: &Histogram<u64>) -> Latency {
        Latency {
            label: label.into(),
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What one request of a phase does.
#[derive(Clone, Copy)]
enum Call {
    Health,
    GetProfile,
}

struct Target {
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    profile: ProfileServiceClient<Channel>,
    auth: MetadataValue<Ascii>,
    subjects: Arc<Vec<String>>,
}

impl Target {
    async fn call(&mut self, call: Call, i: usize) -> anyhow::Result<()> {
        match call {
            Call::Health => {
                self.health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Call::GetProfile => {
                let who = &self.subjects[i % self.subjects.len()];
                let r = self
                    .profile
                    .get_profile(authorized(
                        ppb::GetProfileRequest {
                            subject: subject(who),
                            purpose: PURPOSE.into(),
                            data_categories: vec!["user.preferences.stated".into()],
                            ..Default::default()
                        },
                        &self.auth,
                    ))
                    .await?
                    .into_inner();
                anyhow::ensure!(r.attributes.len() == 3, "unexpected read: {r:?}");
            }
        }
        Ok(())
    }
}

/// One request at a time for `duration`.
async fn closed_loop(
    target: &mut Target,
    call: Call,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = histogram();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < warmup + duration {
        let sent = Instant::now();
        target.call(call, i).await?;
        if start.elapsed() > warmup {
            h.record(sent.elapsed().as_micros() as u64)?;
        }
        i += 1;
    }
    Ok(h)
}

/// Requests due at `rate` per second, latency from the intended send time (no coordinated
/// omission), at most 64 in flight.
async fn open_loop(
    target: &Target,
    call: Call,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let total = (duration.as_secs_f64() * rate) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(total);
    let mut due_times = pacer::due_times(rate, total, start);
    while let Some((i, due)) = due_times.recv().await {
        let permit = limit.clone().acquire_owned().await?;
        let mut t = Target {
            health: target.health.clone(),
            profile: target.profile.clone(),
            auth: target.auth.clone(),
            subjects: target.subjects.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let r = t.call(call, i).await;
            drop(permit);
            r.map(|()| due.elapsed().as_micros() as u64)
        }));
    }
    let mut h = histogram();
    for t in tasks {
        h.record(t.await??)?;
    }
    Ok(h)
}

struct Services {
    consent: SocketAddr,
    cached: SocketAddr,
    uncached: SocketAddr,
    /// Kept so the servers run until the benchmark ends (dropped before the runtime).
    _servers: (ConsentService, ProfileService, ProfileService),
    _runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    /// Which backend the data is on (its PostgreSQL databases live as long as this).
    databases: databases::Databases,
}

fn start_services(
    dir: &std::path::Path,
    server_threads: usize,
    postgres: bool,
) -> anyhow::Result<Services> {
    let mut databases = databases::Databases::new(dir, postgres)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("servers")
        .enable_all()
        .build()?;
    let policy = Arc::new(Policy::default_policy().map_err(|e| anyhow::anyhow!("{e}"))?);
    let tokens: Vec<(String, String)> = policy
        .callers
        .keys()
        .map(|c| (c.clone(), format!("bench-{c}")))
        .collect();
    let auth = Authenticator::from_policy(&policy, &tokens)?;
    let (consent, cached, uncached) = runtime.block_on(async {
        let consent_url = databases.url("consent").await;
        let consent = suite::start_consent(
            policy.clone(),
            Edge::unlimited(auth.clone()),
            ConsentSettings {
                database_url: consent_url,
                keys: Arc::new(LedgerKeys::generate()),
                cache_capacity: 100_000,
                feed_poll: consentgate_consent::server::FEED_POLL,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await?.into(),
            &Default::default(),
        )
        .await?;
        let mut profiles = Vec::new();
        for (name, capacity) in [("cached", 100_000), ("uncached", 0)] {
            let mut gate = GateConfig::new(consent.url(), "bench-profile-service");
            gate.cache_capacity = capacity;
            let config = ProfileConfig {
                policy: policy.clone(),
                database_url: databases.url(&format!("profile-{name}")).await,
                gate,
                name: suite::PROFILE_CALLER.into(),
                retention_every: Duration::from_secs(3600),
                recommendation_url: None,
                metrics: Default::default(),
                request_key: consentgate_profile::request_key::RequestKey::generate(),
                tracing: Default::default(),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            profiles.push(
                suite::start_profile(
                    config,
                    Edge::unlimited(auth.clone()),
                    listener.into(),
                    &Default::default(),
                )
                .await?,
            );
        }
        anyhow::Ok((consent, profiles.remove(0), profiles.remove(0)))
    })?;
    Ok(Services {
        consent: consent.address(),
        cached: cached.address(),
        uncached: uncached.address(),
        _servers: (consent, cached, uncached),
        _runtime: runtime,
        dir: dir.to_owned(),
        databases,
    })
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (duration, warmup, trials) = if args.quick {
        (Duration::from_secs(1), Duration::from_millis(200), 30)
    } else {
        (
            Duration::from_secs_f64(args.duration_secs),
            Duration::from_secs(1),
            args.propagation_trials,
        )
    };
    let dir = std::env::temp_dir().join(format!("consentgate-profilegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let services = start_services(
        &dir,
        args.server_threads.unwrap_or_else(half_the_cores),
        args.postgres,
    )?;
    let marker = services.databases.marker("profilegen");
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.unwrap_or_else(half_the_cores))
        .thread_name("loadgen")
        .enable_all()
        .build()?;
    let report = client.block_on(run(&args, &services, duration, warmup, trials));
    let Services {
        _runtime,
        _servers,
        dir,
        databases,
        ..
    } = services;
    drop(_servers);
    drop(_runtime);
    drop(databases);
    let _ = std::fs::remove_dir_all(&dir);
    let markdown = report?;
    println!("{markdown}");
    if let Some(path) = &args.write {
        marked::write_block(path, &marker, &markdown)?;
    }
    Ok(())
}

async fn run(
    args: &Args,
    s: &Services,
    duration: Duration,
    warmup: Duration,
    trials: usize,
) -> anyhow::Result<String> {
    let pc = bearer("bench-preference-center");
    let collector = bearer("bench-collector");
    let reader = bearer("bench-recommendation-service");
    let mut consent = ConsentServiceClient::new(channel(s.consent).await?);
    let subjects: Vec<String> = (0..args.subjects.max(1))
        .map(|i| format!("bench-{i}"))
        .collect();
    eprintln!("profilegen: seeding {} subjects…", subjects.len());
    for addr in [s.cached, s.uncached] {
        let mut profile = ProfileServiceClient::new(channel(addr).await?);
        for (i, who) in subjects.iter().enumerate() {
            consent
                .grant(authorized(
                    cpb::GrantRequest {
                        target: Some(cpb::ConsentTarget {
                            subject: subject(who),
                            purpose: PURPOSE.into(),
                            ..Default::default()
                        }),
                        consent_type: cpb::ConsentType::Explicit as i32,
                        notice_version: "2.0".into(),
                        idempotency_key: format!("seed-{i}"),
                        ..Default::default()
                    },
                    &pc,
                ))
                .await?;
            let attrs = ["favorite_sport", "shoe_size", "favorite_color"]
                .iter()
                .map(|name| ppb::AttributeInput {
                    name: (*name).into(),
                    value: format!("{name} of {who}"),
                    data_category: "user.preferences.stated".into(),
                    source: DataSource::ZeroParty as i32,
                    purpose: PURPOSE.into(),
                    ..Default::default()
                })
                .collect();
            let r = profile
                .set_attributes(authorized(
                    ppb::SetAttributesRequest {
                        subject: subject(who),
                        context: None,
                        attributes: attrs,
                    },
                    &collector,
                ))
                .await?
                .into_inner();
            anyhow::ensure!(r.accepted == 3, "seeding was rejected: {r:?}");
        }
    }
    let subjects = Arc::new(subjects);
    let mut latencies = Vec::new();
    for (server, addr) in [("cache on", s.cached), ("cache off", s.uncached)] {
        let mut target = Target {
            health: tonic_health::pb::health_client::HealthClient::new(channel(addr).await?),
            profile: ProfileServiceClient::new(channel(addr).await?),
            auth: reader.clone(),
            subjects: subjects.clone(),
        };
        // Warm the gate cache (and the store's pages) with every subject.
        for i in 0..subjects.len() {
            target.call(Call::GetProfile, i).await?;
        }
        if server == "cache on" {
            // The floor and the target row alternate in rounds, so that load from other tenants
            // of the machine drifts over both alike; each row adds its rounds up.
            eprintln!(
                "profilegen: health floor and GetProfile, 1 in flight, {} interleaved rounds…",
                args.rounds
            );
            let rounds = args.rounds.max(1);
            let (round_warmup, round) = (
                warmup
                    .div_f64(rounds as f64)
                    .max(Duration::from_millis(200)),
                duration.div_f64(rounds as f64),
            );
            let (mut floor, mut reads) = (histogram(), histogram());
            for _ in 0..rounds {
                floor.add(closed_loop(&mut target, Call::Health, round_warmup, round).await?)?;
                reads
                    .add(closed_loop(&mut target, Call::GetProfile, round_warmup, round).await?)?;
            }
            latencies.push(Latency::of("Health/Check, 1 in flight", &floor));
            latencies.push(Latency::of(
                format!("GetProfile ({server}), 1 in flight"),
                &reads,
            ));
        } else {
            let h = closed_loop(&mut target, Call::GetProfile, warmup, duration).await?;
            latencies.push(Latency::of(
                format!("GetProfile ({server}), 1 in flight"),
                &h,
            ));
        }
        if server == "cache on" {
            let h = open_loop(&target, Call::Health, args.open_rate, duration).await?;
            latencies.push(Latency::of(
                format!("Health/Check, open loop {} req/s", args.open_rate),
                &h,
            ));
        }
        let h = open_loop(&target, Call::GetProfile, args.open_rate, duration).await?;
        latencies.push(Latency::of(
            format!("GetProfile ({server}), open loop {} req/s", args.open_rate),
            &h,
        ));
    }

    eprintln!("profilegen: withdrawal propagation, {trials} trials…");
    let mut profile = ProfileServiceClient::new(channel(s.cached).await?);
    let mut propagation = histogram();
    let mut polls = 0u64;
    for t in 0..trials {
        let who = format!("prop-{t}");
        let grant = consent
            .grant(authorized(
                cpb::GrantRequest {
                    target: Some(cpb::ConsentTarget {
                        subject: subject(&who),
                        purpose: PURPOSE.into(),
                        ..Default::default()
                    }),
                    consent_type: cpb::ConsentType::Explicit as i32,
                    notice_version: "2.0".into(),
                    idempotency_key: format!("prop-g-{t}"),
                    ..Default::default()
                },
                &pc,
            ))
            .await?
            .into_inner();
        profile
            .set_attributes(authorized(
                ppb::SetAttributesRequest {
                    subject: subject(&who),
                    context: None,
                    attributes: vec![ppb::AttributeInput {
                        name: "favorite_sport".into(),
                        value: "rowing".into(),
                        data_category: "user.preferences.stated".into(),
                        source: DataSource::ZeroParty as i32,
                        purpose: PURPOSE.into(),
                        ..Default::default()
                    }],
                },
                &collector,
            ))
            .await?;
        let read = |token: String| ppb::GetProfileRequest {
            subject: subject(&who),
            purpose: PURPOSE.into(),
            at_least_as_fresh: token,
            ..Default::default()
        };
        // Cache an allow (the read without a token is then a cache hit).
        let r = profile
            .get_profile(authorized(read(grant.revision.to_string()), &reader))
            .await?
            .into_inner();
        anyhow::ensure!(!r.attributes.is_empty(), "the grant was not seen");
        let r = profile
            .get_profile(authorized(read(String::new()), &reader))
            .await?
            .into_inner();
        anyhow::ensure!(!r.attributes.is_empty(), "the cached allow was not served");
        consent
            .withdraw(authorized(
                cpb::WithdrawRequest {
                    target: Some(cpb::ConsentTarget {
                        subject: subject(&who),
                        purpose: PURPOSE.into(),
                        ..Default::default()
                    }),
                    idempotency_key: format!("prop-w-{t}"),
                    ..Default::default()
                },
                &pc,
            ))
            .await?;
        let replied = Instant::now();
        loop {
            polls += 1;
            let r = profile
                .get_profile(authorized(read(String::new()), &reader))
                .await?
                .into_inner();
            if r.attributes.is_empty() {
                propagation.record(replied.elapsed().as_micros() as u64)?;
                break;
            }
            anyhow::ensure!(replied.elapsed() < Duration::from_secs(5), "never denied");
        }
    }

    eprintln!("profilegen: RecordEvents ingest…");
    let ingest_duration = duration.max(Duration::from_secs(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.ingest_in_flight.max(1) {
        let mut client = ProfileServiceClient::new(channel(s.cached).await?);
        let collector = collector.clone();
        let subjects = subjects.clone();
        let batch = args.batch.clamp(1, 1000);
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            let mut i = w;
            while started.elapsed() < ingest_duration {
                let events = (0..batch)
                    .map(|e| ppb::EventInput {
                        kind: if e % 10 == 0 {
                            ppb::EventKind::Purchase
                        } else {
                            ppb::EventKind::ProductView
                        } as i32,
                        item_id: format!("sku-{e}"),
                        amount_minor: 1999,
                        currency: "EUR".into(),
                        quantity: 1,
                        ..Default::default()
                    })
                    .collect();
                let r = client
                    .record_events(authorized(
                        ppb::RecordEventsRequest {
                            subject: subject(&subjects[i % subjects.len()]),
                            purpose: PURPOSE.into(),
                            events,
                            ..Default::default()
                        },
                        &collector,
                    ))
                    .await?
                    .into_inner();
                anyhow::ensure!(r.rejected == 0, "events rejected");
                accepted += u64::from(r.accepted);
                i += 7;
            }
            anyhow::Ok(accepted)
        }));
    }
    let mut events = 0;
    for t in tasks {
        events += t.await??;
    }
    let ingest_rate = events as f64 / started.elapsed().as_secs_f64();

    let floor_p99 = latencies[0].p99.max(1);
    let cached_p99 = latencies[1].p99;
    let mut md = String::new();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let on_postgres = args.postgres;
    md.push_str(if on_postgres {
        "## Profile service on PostgreSQL (issue 14: the production profile)\n\n"
    } else {
        "## Profile service (issue 3)\n\n"
    });
    md.push_str(&format!(
        "Run {date} on {} cores; command: `cargo run --release -p consentgate-bench --bin profilegen -- --write BENCHMARKS.md{}`{}.\n\
         Consent service and two profile services (gate cache on / off) in-process on one {}-thread runtime, \
         {}; the generator on its own {}-thread runtime. {} subjects, each with 3 \
         stated-preference attributes; GetProfile asks for `user.preferences.stated` under `{PURPOSE}`.\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if on_postgres { " --postgres" } else { "" },
        if args.quick { " (--quick: smoke numbers)" } else { "" },
        args.server_threads.unwrap_or_else(half_the_cores),
        if on_postgres {
            "fresh PostgreSQL 15 databases on this host (the profile replica's memory follows its own beats)"
        } else {
            "SQLite (profile: WAL, synchronous=NORMAL; consent: synchronous=FULL)"
        },
        args.client_threads.unwrap_or_else(half_the_cores),
        subjects.len()
    ));
    md.push_str("| phase | requests | p50 µs | p99 µs | p99.9 µs | max µs |\n|---|---:|---:|---:|---:|---:|\n");
    for l in &latencies {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            l.label, l.count, l.p50, l.p99, l.p999, l.max
        ));
    }
    md.push_str(&format!(
        "\n| target | measured | |\n|---|---|---|\n\
         | gated GetProfile, warm gate cache: p99 ≤ 2× health p99 (1 in flight) | {cached_p99} µs vs health {floor_p99} µs = {:.2}× | {} |\n\
         | withdrawal propagation p99 ≤ 10 ms (Withdraw reply → first denying GetProfile, no token) | p50 {} µs, p99 {} µs, max {} µs over {} trials ({:.1} reads per trial) | {} |\n\
         | RecordEvents ingest ≥ 20,000 events/s on {} | {:.0} events/s ({} in flight, {} events per call) | {} |\n",
        cached_p99 as f64 / floor_p99 as f64,
        if cached_p99 <= 2 * floor_p99 { "pass" } else { "FAIL" },
        propagation.value_at_quantile(0.5),
        propagation.value_at_quantile(0.99),
        propagation.max(),
        propagation.len(),
        polls as f64 / propagation.len().max(1) as f64,
        if propagation.value_at_quantile(0.99) <= 10_000 { "pass" } else { "FAIL" },
        if on_postgres { "PostgreSQL" } else { "SQLite" },
        ingest_rate,
        args.ingest_in_flight,
        args.batch,
        if ingest_rate >= 20_000.0 { "pass" } else { "FAIL" },
    ));
    Ok(md)
}
