//! `recgen`: benchmarks `Recommend` per tier over real gRPC on loopback. Starts the consent,
//! profile and recommendation services in-process on fresh SQLite files (PostgreSQL databases
//! with `--postgres`) with the 5,000-item demo catalog, seeds subjects for each tier (profiled
//! subjects with 500-event histories), then drives each tier open loop at a fixed rate (latency
//! from each request's intended send time), with the recommendation server's health RPC at the
//! same rate as the floor, in the same run.
//!
//! Prints a Markdown section and, with `--write FILE`, puts it into FILE between
//! `<!-- recgen:start -->` and `<!-- recgen:end -->` (replacing an earlier one).

mod allocator;
mod cores;
mod databases;
mod marked;
mod pacer;

use clap::Parser;
use consentgate::suite::{self, ConsentSettings, Suite, SuiteConfig};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as cpb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use consentgate_proto::recommendation::v1 as rpb;
use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use consentgate_recommendation::catalog::Catalog;
use cores::half_the_cores;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "recgen", version)]
struct Args {
    /// Requests per second in each phase.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Subjects per personal tier.
    #[arg(long, default_value_t = 20)]
    subjects: usize,
    /// Events in each profiled subject's history.
    #[arg(long, default_value_t = 500)]
    history: usize,
    /// Put the report into this Markdown file (between recgen markers).
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Worker threads of the services' runtime; default half the cores (the generator gets the
    /// other half, as if on separate machines).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Worker threads of the generator's runtime; default half the cores.
    #[arg(long)]
    client_threads: Option<usize>,
    /// Smoke run: 1 s phases, few subjects (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Only these tiers (comma-separated, e.g. `profiled,limited`); default all, for profiling
    /// one tier at a time.
    #[arg(long, value_delimiter = ',')]
    tiers: Vec<String>,
    /// Run on fresh PostgreSQL databases (the server `CONSENTGATE_TEST_POSTGRES_URL` names)
    /// instead of SQLite files: the production profile; reported under its own marker.
    #[arg(long)]
    postgres: bool,
}

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().expect("header text")
}

fn authorized<T>(message: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

fn person(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

struct Addrs {
    consent: SocketAddr,
    profile: SocketAddr,
    recommendation: SocketAddr,
}

impl Addrs {
    fn of(suite: &Suite) -> Addrs {
        Addrs {
            consent: suite.consent.address(),
            profile: suite.profile.address(),
            recommendation: suite.recommendation.address(),
        }
    }
}

fn start(
    databases: &mut databases::Databases,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Suite> {
    let policy = Arc::new(Policy::default_policy().map_err(|e| anyhow::anyhow!("{e}"))?);
    let tokens: Vec<(String, String)> = policy
        .callers
        .keys()
        .map(|c| (c.clone(), format!("bench-{c}")))
        .collect();
    runtime.block_on(async {
        let listener = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let suite = suite::start(SuiteConfig {
            policy,
            tokens,
            consent: ConsentSettings {
                database_url: databases.url("consent").await,
                keys: Arc::new(LedgerKeys::generate()),
                cache_capacity: 100_000,
                feed_poll: consentgate_consent::server::FEED_POLL,
            },
            consent_listeners: listener().await?.into(),
            profile_database_url: databases.url("profile").await,
            profile_listeners: listener().await?.into(),
            profile_decision_cache: consentgate_gate::DEFAULT_DECISION_CACHE,
            profile_request_key: consentgate_profile::request_key::RequestKey::generate(),
            retention_every: Duration::from_secs(3600),
            recommendation_database_url: databases.url("recommendation").await,
            recommendation_listeners: listener().await?.into(),
            catalog: Catalog::demo(5000),
            traces: Default::default(),
            tls: None,
        })
        .await?;
        anyhow::Ok(suite)
    })
}

/// One phase's request.
#[derive(Clone)]
enum Phase {
    Health,
    Recommend(Vec<rpb::RecommendRequest>, rpb::Tier),
}

async fn open_loop(
    addr: SocketAddr,
    phase: Phase,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let health = tonic_health::pb::health_client::HealthClient::new(channel(addr).await?);
    let rec = RecommendationServiceClient::new(channel(addr).await?);
    let auth = bearer("bench-recommendation-service");
    // The first second runs at the same rate unrecorded (connections open, caches and the
    // allocator settle), as in the other generators; then `duration` is measured.
    let warmup = rate as usize;
    let total = warmup + (duration.as_secs_f64() * rate) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(total);
    let mut due_times = pacer::due_times(rate, total, start);
    while let Some((i, due)) = due_times.recv().await {
        let permit = limit.clone().acquire_owned().await?;
        let (mut health, mut rec, auth, phase) =
            (health.clone(), rec.clone(), auth.clone(), phase.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match &phase {
                Phase::Health => health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok(),
                Phase::Recommend(requests, tier) => match rec
                    .recommend(authorized(requests[i % requests.len()].clone(), &auth))
                    .await
                {
                    Ok(r) => r.get_ref().tier() == *tier && !r.get_ref().items.is_empty(),
                    Err(_) => false,
                },
            };
            drop(permit);
            (i >= warmup, due.elapsed().as_micros() as u64, ok)
        }));
    }
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (measured, us, ok) = t.await?;
        if measured {
            h.record(us)?;
            errors += u64::from(!ok);
        }
    }
    Ok((h, errors))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (duration, subjects) = if args.quick {
        (Duration::from_secs(1), 4)
    } else {
        (
            Duration::from_secs_f64(args.duration_secs),
            args.subjects.max(1),
        )
    };
    let dir = std::env::temp_dir().join(format!("consentgate-recgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server_threads = args.server_threads.unwrap_or_else(half_the_cores);
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("servers")
        .enable_all()
        .build()?;
    let mut databases = databases::Databases::new(&dir, args.postgres)?;
    let suite = start(&mut databases, &servers)?;
    let addrs = Addrs::of(&suite);
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.unwrap_or_else(half_the_cores))
        .thread_name("loadgen")
        .enable_all()
        .build()?;
    let report = client.block_on(run(&args, &addrs, duration, subjects));
    let databases_marker = databases.marker("recgen");
    drop(suite);
    drop(servers);
    drop(databases);
    let _ = std::fs::remove_dir_all(&dir);
    let markdown = report?;
    println!("{markdown}");
    if let Some(path) = &args.write {
        marked::write_block(path, &databases_marker, &markdown)?;
    }
    Ok(())
}

async fn run(
    args: &Args,
    addrs: &Addrs,
    duration: Duration,
    subjects: usize,
) -> anyhow::Result<String> {
    let pc = bearer("bench-preference-center");
    let collector = bearer("bench-collector");
    let mut consent = ConsentServiceClient::new(channel(addrs.consent).await?);
    let mut profile = ProfileServiceClient::new(channel(addrs.profile).await?);
    let catalog = Catalog::demo(5000);
    let grant = |who: &str, purpose: &str, key: String| cpb::GrantRequest {
        target: Some(cpb::ConsentTarget {
            subject: person(who),
            purpose: purpose.into(),
            ..Default::default()
        }),
        consent_type: cpb::ConsentType::Explicit as i32,
        notice_version: "2.0".into(),
        idempotency_key: key,
        ..Default::default()
    };
    eprintln!(
        "recgen: seeding {subjects} subjects per tier ({} events per profiled history)…",
        args.history
    );
    let mut rng = 0x5EEDu64;
    let mut next = move |n: usize| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((rng >> 33) as usize) % n
    };
    for s in 0..subjects {
        let p = format!("profiled-{s}");
        consent
            .grant(authorized(
                grant(&p, "personalize.content.profiled", format!("{p}-p")),
                &pc,
            ))
            .await?;
        consent
            .grant(authorized(
                grant(&p, "train_ai_system", format!("{p}-t")),
                &pc,
            ))
            .await?;
        for chunk in 0..args.history.div_ceil(500) {
            let count = (args.history - chunk * 500).min(500);
            let events = (0..count)
                .map(|e| {
                    let item = &catalog.items()[next(catalog.items().len())];
                    ppb::EventInput {
                        kind: if e % 10 == 0 {
                            ppb::EventKind::Purchase
                        } else {
                            ppb::EventKind::ProductView
                        } as i32,
                        item_id: item.id.clone(),
                        amount_minor: item.price_minor,
                        currency: "EUR".into(),
                        quantity: 1,
                        ..Default::default()
                    }
                })
                .collect();
            profile
                .record_events(authorized(
                    ppb::RecordEventsRequest {
                        subject: person(&p),
                        purpose: "personalize.content.profiled".into(),
                        events,
                        ..Default::default()
                    },
                    &collector,
                ))
                .await?;
        }
        let l = format!("limited-{s}");
        consent
            .grant(authorized(
                grant(&l, "personalize.content.limited", format!("{l}-l")),
                &pc,
            ))
            .await?;
        profile
            .submit_answers(authorized(
                ppb::SubmitAnswersRequest {
                    subject: person(&l),
                    purpose: "personalize.content.limited".into(),
                    answers: vec![ppb::AnswerInput {
                        kind: ppb::AnswerKind::Preference as i32,
                        question_id: "sport".into(),
                        answer: ["trail running", "climbing", "coffee", "headphones"][s % 4].into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &pc,
            ))
            .await?;
        let g = format!("segment-{s}");
        consent
            .grant(authorized(
                grant(&g, "personalize.content.segment", format!("{g}-s")),
                &pc,
            ))
            .await?;
    }
    let context = || rpb::RecommendContext {
        device: "mobile".into(),
        region: "EU".into(),
        current_item_id: "sku-00042".into(),
        session_item_ids: vec!["sku-00018".into()],
        ..Default::default()
    };
    let ask = |who: Option<String>, with_context: bool| rpb::RecommendRequest {
        subject: who.as_deref().and_then(person),
        context: with_context.then(context),
        n: 10,
        at_least_as_fresh: String::new(),
    };
    let tiers: Vec<(&str, rpb::Tier, Vec<rpb::RecommendRequest>)> = vec![
        (
            "profiled",
            rpb::Tier::Profiled,
            (0..subjects)
                .map(|s| ask(Some(format!("profiled-{s}")), true))
                .collect(),
        ),
        (
            "limited",
            rpb::Tier::Limited,
            (0..subjects)
                .map(|s| ask(Some(format!("limited-{s}")), true))
                .collect(),
        ),
        (
            "segment",
            rpb::Tier::Segment,
            (0..subjects)
                .map(|s| ask(Some(format!("segment-{s}")), true))
                .collect(),
        ),
        (
            "contextual",
            rpb::Tier::Contextual,
            (0..subjects)
                .map(|s| ask(Some(format!("visitor-{s}")), true))
                .collect(),
        ),
        ("popular", rpb::Tier::Popular, vec![ask(None, false)]),
    ];
    // Warm every subject once (the gate caches, the model learns the profiled histories).
    let mut rec = RecommendationServiceClient::new(channel(addrs.recommendation).await?);
    let auth = bearer("bench-recommendation-service");
    for (_, tier, requests) in &tiers {
        for r in requests {
            let got = rec
                .recommend(authorized(r.clone(), &auth))
                .await?
                .into_inner();
            anyhow::ensure!(
                got.tier() == *tier,
                "warm-up got {:?} instead of {tier:?}",
                got.tier()
            );
        }
    }
    let mut rows = Vec::new();
    eprintln!("recgen: health floor at {} req/s…", args.rate);
    let (h, errors) = open_loop(addrs.recommendation, Phase::Health, args.rate, duration).await?;
    rows.push(("Health/Check (floor)".to_owned(), h, errors));
    let profiled = tiers[0].2.clone();
    for (name, tier, requests) in tiers {
        if !args.tiers.is_empty() && !args.tiers.iter().any(|t| t == name) {
            continue;
        }
        eprintln!("recgen: {name} at {} req/s…", args.rate);
        let (h, errors) = open_loop(
            addrs.recommendation,
            Phase::Recommend(requests, tier),
            args.rate,
            duration,
        )
        .await?;
        rows.push((format!("Recommend, {name}"), h, errors));
    }
    // Where the profiled tier stands below the target rate: each call makes three gated,
    // access-logged profile reads.
    let below = if args.tiers.is_empty() || args.tiers.iter().any(|t| t == "profiled") {
        vec![args.rate / 4.0, args.rate / 10.0]
    } else {
        Vec::new()
    };
    for rate in below {
        eprintln!("recgen: profiled at {rate} req/s…");
        let phase = Phase::Recommend(profiled.clone(), rpb::Tier::Profiled);
        let (h, errors) = open_loop(addrs.recommendation, phase, rate, duration).await?;
        rows.push((format!("Recommend, profiled at {rate} req/s"), h, errors));
    }
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut md = String::from(if args.postgres {
        "## Recommendation service on PostgreSQL (issue 14: the production profile)\n\n"
    } else {
        "## Recommendation service (issue 4)\n\n"
    });
    md.push_str(&format!(
        "Run {date}; command: `cargo run --release -p consentgate-bench --bin recgen -- --write BENCHMARKS.md{}`{}. \
         The three services in-process on one {}-thread runtime ({}), the generator on its own {}-thread runtime; \
         5,000-item demo catalog; {subjects} subjects per personal tier, profiled ones with {}-event histories; \
         open loop at {} req/s per phase after 1 s unrecorded at the same rate, latency from each request's intended send time; 10 items per call.\n\n",
        if args.postgres { " --postgres" } else { "" },
        if args.quick { " (--quick: smoke numbers)" } else { "" },
        args.server_threads.unwrap_or_else(half_the_cores),
        if args.postgres { "fresh PostgreSQL 15 databases on this host" } else { "SQLite" },
        args.client_threads.unwrap_or_else(half_the_cores),
        args.history,
        args.rate
    ));
    md.push_str("| phase | requests | errors | p50 µs | p99 µs | p99.9 µs | max µs | p99 ≤ 5 ms |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (name, h, errors) in &rows {
        let verdict = if name.starts_with("Health") {
            "floor".to_owned()
        } else if h.value_at_quantile(0.99) <= 5_000 && *errors == 0 {
            "pass".to_owned()
        } else {
            "FAIL".to_owned()
        };
        md.push_str(&format!(
            "| {name} | {} | {errors} | {} | {} | {} | {} | {verdict} |\n",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ));
    }
    Ok(md)
}
