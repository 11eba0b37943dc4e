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
use consentgate_runtime::Authenticator;
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
                    auth.clone(),
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
    Ok(Measured {
        propagation,
        checks_per_trial: checks as f64 / trials.max(1) as f64,
        floor,
        token_trials,
        token_allows,
    })
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
         | floor: gRPC health round trip to B, 1 in flight | p50 {f50} µs, p99 {f99} µs over {fc} calls | |\n",
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
