//! `replicagen`: how fast a withdrawal made through one consent replica is enforced through
//! another, on PostgreSQL (the production shape: replicas share one database).
//!
//! Two consent replicas, A and B, share a fresh database; a gate (as the profile and
//! recommendation services run it, with its decision cache and change stream) follows B. Each
//! trial grants through A, caches the allow in the gate (a Check with the grant's token), then
//! withdraws through A and checks through the gate **without a token** until it denies. The time
//! from `Withdraw`'s reply to that first denial is the cross-replica propagation: A's commit
//! notice, B's follower reading the feed and dropping its cached state, B's change stream, the
//! gate dropping its cached allow, and the Check that asks B again. Then, with the withdrawal's
//! token, every Check must deny (counted over `--token-trials` withdrawals). The floor is the
//! gRPC health round trip to B in the same run.
//!
//! Then the profile service's memory across replicas: two profile stores on one fresh database,
//! A and B; each trial warms B's copy of a subject's attributes, corrects the attribute through
//! A, and reads through B until the correction shows. The time from `rectify`'s return on A to
//! that read is how far a replica's memory lags another's acknowledged write (A's `NOTIFY`, B's
//! listener forgetting the subject, B's read from the database); its stated bound is 1 s
//! whatever happens to the listener.
//!
//! ```sh
//! CONSENTGATE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p consentgate-bench --bin replicagen -- --write BENCHMARKS.md
//! ```

mod allocator;
mod cores;
mod marked;

use anyhow::Context;
use clap::Parser;
use consentgate::suite::{self, ConsentService, ConsentSettings};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::testing::{self, Backend, TestDb};
use consentgate_gate::{Gate, GateConfig};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as cpb;
use consentgate_proto::consent::v1::Verdict;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::{Authenticator, Edge};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PURPOSE: &str = "personalize.content.profiled";

/// Cross-replica withdrawal benchmark (PostgreSQL).
#[derive(Parser, Debug)]
#[command(name = "replicagen", version)]
struct Args {
    /// Propagation trials (each a grant and a withdrawal through replica A).
    #[arg(long, default_value_t = 1000)]
    trials: usize,
    /// Withdrawals checked with their token through replica B's gate (every answer must deny).
    #[arg(long, default_value_t = 10_000)]
    token_trials: usize,
    /// How often (ms) each replica reads the change feed when no commit notice woke it. The
    /// default is production's; a long one shows that notices, not the poll, carry changes.
    #[arg(long, default_value_t = 250)]
    feed_poll_ms: u64,
    /// Health round trips for the floor.
    #[arg(long, default_value_t = 2000)]
    floor_calls: usize,
    /// Smoke run: 30 trials, 100 token trials (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// Write the Markdown report into this file, between `replicagen` markers.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

fn authorized<T>(message: T, token: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// The two replicas, on their own runtime so that their threads are not the generator's.
struct Replicas {
    a: ConsentService,
    b: ConsentService,
    runtime: tokio::runtime::Runtime,
    _db: TestDb,
}

fn start(args: &Args) -> anyhow::Result<(Replicas, Vec<(String, String)>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores::half_the_cores())
        .thread_name("replicas")
        .enable_all()
        .build()?;
    let policy = Arc::new(Policy::default_policy().map_err(|e| anyhow::anyhow!("{e}"))?);
    let tokens: Vec<(String, String)> = policy
        .callers
        .keys()
        .map(|c| (c.clone(), format!("bench-{c}")))
        .collect();
    let auth = Authenticator::from_policy(&policy, &tokens)?;
    let feed_poll = Duration::from_millis(args.feed_poll_ms);
    let (a, b, db) = runtime.block_on(async {
        anyhow::ensure!(
            testing::backends().contains(&Backend::Postgres),
            "replicagen measures replicas on PostgreSQL: set CONSENTGATE_TEST_POSTGRES_URL"
        );
        let db = TestDb::new(Backend::Postgres).await;
        let keys = Arc::new(LedgerKeys::generate());
        let mut replicas = Vec::new();
        for _ in 0..2 {
            replicas.push(
                suite::start_consent(
                    policy.clone(),
                    Edge::unlimited(auth.clone()),
                    ConsentSettings {
                        database_url: db.url.clone(),
                        keys: keys.clone(),
                        cache_capacity: 100_000,
                        feed_poll,
                    },
                    tokio::net::TcpListener::bind("127.0.0.1:0").await?.into(),
                    &Default::default(),
                )
                .await?,
            );
        }
        let b = replicas.pop().context("replica B")?;
        let a = replicas.pop().context("replica A")?;
        anyhow::Ok((a, b, db))
    })?;
    Ok((
        Replicas {
            a,
            b,
            runtime,
            _db: db,
        },
        tokens,
    ))
}

fn token_of(tokens: &[(String, String)], caller: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    let token = tokens
        .iter()
        .find(|(c, _)| c == caller)
        .with_context(|| format!("no caller {caller} in the default policy"))?;
    Ok(format!("Bearer {}", token.1).parse()?)
}

/// What one run measured.
struct Measured {
    /// Profile memory: `rectify` on A → first read through B that shows it (µs).
    profile_lag: Histogram<u64>,
    /// Trials in which B's memory was proven current when the correction was made (the others
    /// read from the database and prove nothing about the memory).
    profile_current: usize,
    propagation: Histogram<u64>,
    checks_per_trial: f64,
    floor: Histogram<u64>,
    token_trials: usize,
    token_allows: usize,
}

async fn measure(
    args: &Args,
    replicas: &Replicas,
    tokens: &[(String, String)],
) -> anyhow::Result<Measured> {
    let (trials, token_trials) = if args.quick {
        (30, 100)
    } else {
        (args.trials, args.token_trials)
    };
    let pc = token_of(tokens, "preference-center")?;
    let mut a = ConsentServiceClient::new(
        Channel::from_shared(replicas.a.url())?
            .tcp_nodelay(true)
            .connect()
            .await?,
    );
    let b_channel = Channel::from_shared(replicas.b.url())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let gate = Gate::start(
        GateConfig::new(replicas.b.url(), "bench-profile-service"),
        suite::PROFILE_CALLER,
    )?;
    anyhow::ensure!(
        gate.wait_live(Duration::from_secs(5)).await,
        "the gate's change stream from replica B never went live"
    );

    let mut floor = histogram()?;
    let mut health = HealthClient::new(b_channel);
    for _ in 0..args.floor_calls {
        let started = Instant::now();
        health.check(HealthCheckRequest::default()).await?;
        floor.record(started.elapsed().as_micros() as u64)?;
    }

    let run = &consentgate_consent::ledger::random_key()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let check = |who: &str, token: u64| cpb::CheckRequest {
        subject: subject(who),
        purpose: PURPOSE.into(),
        at_least_as_fresh: if token == 0 {
            String::new()
        } else {
            token.to_string()
        },
        ..Default::default()
    };
    // One trial's set-up: grant through A, cache the allow in B's gate; the withdrawal's reply.
    let mut withdraw_after_allow = async |label: &str, t: usize| -> anyhow::Result<(String, u64)> {
        let who = format!("{label}-{run}-{t}");
        let target = || {
            Some(cpb::ConsentTarget {
                subject: subject(&who),
                purpose: PURPOSE.into(),
                ..Default::default()
            })
        };
        let granted = a
            .grant(authorized(
                cpb::GrantRequest {
                    target: target(),
                    consent_type: cpb::ConsentType::Explicit as i32,
                    notice_version: "2.0".into(),
                    idempotency_key: format!("{who}-g"),
                    ..Default::default()
                },
                &pc,
            ))
            .await?
            .into_inner();
        let allowed = gate.check(check(&who, granted.revision), None).await?;
        anyhow::ensure!(
            allowed.verdict() == Verdict::Allow,
            "the grant was not seen"
        );
        let cached = gate.check(check(&who, 0), None).await?;
        anyhow::ensure!(
            cached.verdict() == Verdict::Allow,
            "the cached allow was not served"
        );
        let withdrawn = a
            .withdraw(authorized(
                cpb::WithdrawRequest {
                    target: target(),
                    idempotency_key: format!("{who}-w"),
                    ..Default::default()
                },
                &pc,
            ))
            .await?
            .into_inner();
        Ok((who, withdrawn.revision))
    };

    eprintln!("replicagen: cross-replica propagation, {trials} trials (no token)…");
    let mut propagation = histogram()?;
    let mut checks = 0u64;
    for t in 0..trials {
        let (who, _) = withdraw_after_allow("prop", t).await?;
        let replied = Instant::now();
        loop {
            checks += 1;
            let d = gate.check(check(&who, 0), None).await?;
            if d.verdict() != Verdict::Allow {
                propagation.record(replied.elapsed().as_micros() as u64)?;
                break;
            }
            anyhow::ensure!(
                replied.elapsed() < Duration::from_secs(10),
                "replica B's gate never denied"
            );
            // A reader polling flat out would take a core from the replicas it waits for (a
            // cached allow answers in µs): poll every 100 µs, the resolution of this measure.
            std::thread::sleep(Duration::from_micros(100));
            // And let this runtime's other tasks run (the gate's change stream is one).
            tokio::task::yield_now().await;
        }
    }

    eprintln!("replicagen: {token_trials} withdrawals checked with their token…");
    let mut token_allows = 0;
    for t in 0..token_trials {
        let (who, revision) = withdraw_after_allow("tok", t).await?;
        if gate.check(check(&who, revision), None).await?.verdict() == Verdict::Allow {
            token_allows += 1;
        }
    }
    eprintln!("replicagen: profile memory across replicas, {trials} corrections…");
    let (profile_lag, profile_current) = profile_memory(&gate, &pc, &mut a, run, trials).await?;
    Ok(Measured {
        profile_lag,
        profile_current,
        propagation,
        checks_per_trial: checks as f64 / trials.max(1) as f64,
        floor,
        token_trials,
        token_allows,
    })
}

/// Two profile stores on one fresh PostgreSQL database: `rectify` through A, then read through B
/// (whose copy was warm) until the correction shows. The lag and how many trials found B's
/// memory current.
async fn profile_memory(
    gate: &Gate,
    pc: &MetadataValue<Ascii>,
    consent: &mut ConsentServiceClient<Channel>,
    run: &str,
    trials: usize,
) -> anyhow::Result<(Histogram<u64>, usize)> {
    use consentgate_profile::model::{Attribute, Collection, Requester, Source};
    use consentgate_profile::store::{PostgresStore, ProfileStore};
    let db = TestDb::new(Backend::Postgres).await;
    let a = PostgresStore::connect(&db.url).await?;
    let b = PostgresStore::connect(&db.url).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.memory_current() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replica B's memory never became current"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let who = format!("mem-{run}");
    let granted = consent
        .grant(authorized(
            cpb::GrantRequest {
                target: Some(cpb::ConsentTarget {
                    subject: subject(&who),
                    purpose: PURPOSE.into(),
                    ..Default::default()
                }),
                consent_type: cpb::ConsentType::Explicit as i32,
                notice_version: "2.0".into(),
                idempotency_key: format!("{who}-g"),
                ..Default::default()
            },
            pc,
        ))
        .await?
        .into_inner();
    let d = gate
        .check(
            cpb::CheckRequest {
                subject: subject(&who),
                purpose: PURPOSE.into(),
                data_categories: vec!["user.preferences.stated".into()],
                at_least_as_fresh: granted.revision.to_string(),
                ..Default::default()
            },
            None,
        )
        .await?;
    anyhow::ensure!(
        d.verdict() == Verdict::Allow,
        "no clearance for the profile trials"
    );
    a.put_attributes(&[(
        &d,
        Attribute {
            name: "sport".into(),
            value: "v0".into(),
            category: "user.preferences.stated".into(),
            source: Source::ZeroParty,
            partner: String::new(),
            collection: Collection {
                purpose: PURPOSE.into(),
                notice_version: "2.0".into(),
            },
            collected_at: 0,
            updated_at: 0,
        },
    )])
    .await?;
    let value_on_b = async || -> anyhow::Result<String> {
        let (seen, _) = b.profile_view(&d).await?;
        Ok(seen.into_iter().next().map(|a| a.value).unwrap_or_default())
    };
    let mut lag = histogram()?;
    let mut current = 0;
    for t in 1..=trials {
        let value = format!("v{t}");
        // B holds the previous value (read until it does: the previous trial's lag).
        while value_on_b().await? != format!("v{}", t - 1) {
            tokio::task::yield_now().await;
        }
        current += usize::from(b.memory_current());
        a.rectify(&d, "sport", &value, &Requester::default())
            .await?
            .context("the attribute vanished")?;
        let replied = Instant::now();
        while value_on_b().await? != value {
            anyhow::ensure!(
                replied.elapsed() < Duration::from_secs(10),
                "replica B never showed a correction made through A"
            );
            std::thread::sleep(Duration::from_micros(100));
            tokio::task::yield_now().await;
        }
        lag.record(replied.elapsed().as_micros() as u64)?;
    }
    Ok((lag, current))
}

fn report(args: &Args, m: &Measured) -> String {
    let p = &m.propagation;
    let ok = |pass: bool| if pass { "ok" } else { "**MISSED**" };
    format!(
        "### Cross-replica withdrawal (replicagen, PostgreSQL)\n\n\
         Two consent replicas on one fresh PostgreSQL database; a gate follows replica B; grants \
         and withdrawals go through replica A. Feed poll (safety net) every {poll} ms.\n\n\
         | target | measured | |\n|---|---|---|\n\
         | Withdraw reply on A → first denial through B's gate, no token: p99 ≤ 10 ms | p50 {p50} µs, p99 {p99} µs, max {max} µs over {n} trials ({per:.1} checks per trial) | {ok99} |\n\
         | the same, max ≤ 50 ms | max {max} µs | {okmax} |\n\
         | with the withdrawal's token: 0 allows | {allows} allows in {tt} | {oktok} |\n\
         | floor: gRPC health round trip to B, 1 in flight | p50 {f50} µs, p99 {f99} µs over {fc} calls | |\n\n\
         ### Profile memory across replicas (replicagen, PostgreSQL)\n\n\
         Two profile stores on one fresh database; B holds a subject's attributes in memory; a \
         correction is made through A and read through B until it shows. Stated bound: 1 s \
         whatever happens to B's listener; B's memory was proven current in {cur} of {ln} \
         trials.\n\n\
         | measure | measured | |\n|---|---|---|\n\
         | `rectify` return on A → first read through B that shows it: within 1 s | p50 {l50} µs, p99 {l99} µs, max {lmax} µs over {ln} trials | {oklag} |\n",
        cur = m.profile_current,
        l50 = m.profile_lag.value_at_quantile(0.5),
        l99 = m.profile_lag.value_at_quantile(0.99),
        lmax = m.profile_lag.max(),
        ln = m.profile_lag.len(),
        oklag =
            ok(m.profile_lag.max() <= 1_000_000
                && m.profile_current == m.profile_lag.len() as usize),
        poll = args.feed_poll_ms,
        p50 = p.value_at_quantile(0.5),
        p99 = p.value_at_quantile(0.99),
        max = p.max(),
        n = p.len(),
        per = m.checks_per_trial,
        ok99 = ok(p.value_at_quantile(0.99) <= 10_000),
        okmax = ok(p.max() <= 50_000),
        allows = m.token_allows,
        tt = m.token_trials,
        oktok = ok(m.token_allows == 0),
        f50 = m.floor.value_at_quantile(0.5),
        f99 = m.floor.value_at_quantile(0.99),
        fc = m.floor.len(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (replicas, tokens) = start(&args)?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores::half_the_cores())
        .thread_name("replicagen")
        .enable_all()
        .build()?;
    let measured = client.block_on(measure(&args, &replicas, &tokens));
    drop(client);
    let Replicas {
        a, b, runtime, _db, ..
    } = replicas;
    runtime.block_on(async {
        let _ = b.stop().await;
        let _ = a.stop().await;
    });
    drop(runtime);
    drop(_db);
    let markdown = report(&args, &measured?);
    println!("{markdown}");
    if let Some(path) = &args.write {
        marked::write_block(path, "replicagen", &markdown)?;
    }
    Ok(())
}
