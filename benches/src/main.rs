//! `loadgen`: benchmarks the consent service over real gRPC on loopback. Starts the service
//! in-process on a fresh database, seeds subjects through `Grant`, warms the cache, proves warm
//! Checks do not touch the database, then measures Health and Check at 1 in flight, saturated,
//! and open-loop at a fixed rate, and BatchCheck throughput; prints a Markdown report and, with
//! `--write FILE`, writes it to FILE (BENCHMARKS.md). With `--mtls`, measures plaintext against
//! mutual TLS instead (`mtls.rs`) and writes its own section of FILE.

mod allocator;
mod breakdown;
mod cores;
mod cpu;
mod driver;
mod harness;
mod marked;
mod mtls;
mod report;
mod workload;

use anyhow::Context;
use clap::Parser;
use driver::{PhaseResult, Rpc, Window, Workload, closed_loop, open_loop};
use harness::Harness;
use report::{LoadStep, Results, Setup};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use workload::{Clients, Rng, Subjects, all_allowed, check_for, random_batch, random_check};

/// Open-loop load generator and benchmark for the consentgate consent service.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Args {
    /// Measured seconds per phase (each phase also has an unrecorded warm-up of 1 s).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Subjects to seed (each with one grant).
    #[arg(long, default_value_t = 1000)]
    subjects: usize,
    /// Run against this database (e.g. `postgres://user@host/db`) instead of a fresh SQLite file.
    /// Subject ids are unique per run, so a database can be reused.
    #[arg(long, env = "CONSENTGATE_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Write the Markdown report to this file (overwritten), e.g. BENCHMARKS.md.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Smoke run: 1 s phases, 0.25 s warm-ups, short breakdown (numbers not meaningful).
    #[arg(long)]
    quick: bool,
    /// HTTP/2 connections for the 64-in-flight and open-loop phases.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent workers (saturated phases) and the in-flight cap (open-loop phases).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Open-loop target rate in requests/s; default a third of the lower saturated throughput.
    #[arg(long)]
    open_rate: Option<f64>,
    /// Concurrent BatchCheck calls (each on its own connection).
    #[arg(long, default_value_t = 2)]
    batch_in_flight: usize,
    /// Server worker threads; default half the cores (`nproc / 2`, at least 1).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Generator worker threads; default half the cores (`nproc / 2`, at least 1).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Run only these rows (comma-separated labels: 1a,1b,2a,2b,3a,3b,4; with `--mtls`:
    /// m1a–m1d, m2a–m2d, m3a–m3c), e.g. to profile one.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure what mutual TLS costs instead of rows 1–4: the same service also on a port that
    /// requires client certificates, Health and Check over plaintext and over mTLS at 1 and 64 in
    /// flight (rows m1, m2), and new connections with their handshakes (rows m3), interleaved.
    /// `--write` then replaces only the file's `loadgen-mtls` section.
    #[arg(long)]
    mtls: bool,
    /// With `--mtls`: new connections per handshake row (m3a–c), over all rounds.
    #[arg(long, default_value_t = 1000)]
    handshakes: usize,
    /// Skip the in-process breakdown.
    #[arg(long)]
    no_breakdown: bool,
    /// Run the service observed as in production: metrics on, spans exported over OTLP to an
    /// in-process sink, sampled as `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` say (e.g.
    /// `parentbased_traceidratio` and `0.01`). Compare with a run without it, interleaved.
    #[arg(long)]
    telemetry: bool,
    /// Rows 1 and 2 run as this many interleaved rounds (1a, 1b, 1a, 1b, …), each a share of
    /// `--duration-secs`, so that drifting load from other tenants of the machine hits the floor
    /// and the Check row alike; the rows add the rounds up.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seed of the request generator.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
}

impl Args {
    fn wants(&self, label: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|l| l == label)
    }

    fn window(&self) -> Window {
        if self.quick {
            Window {
                warmup: Duration::from_millis(250),
                duration: Duration::from_secs(1),
            }
        } else {
            Window {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs_f64(self.duration_secs),
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.subjects > 0, "--subjects must be at least 1");
    anyhow::ensure!(args.duration_secs > 0.0, "--duration-secs must be positive");
    anyhow::ensure!(
        args.connections > 0 && args.in_flight > 0 && args.batch_in_flight > 0,
        "--connections, --in-flight and --batch-in-flight must be at least 1"
    );
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The bracketed column of the results shows the run-queue wait the split avoids.
    let threads = (
        args.server_threads.unwrap_or_else(cores::half_the_cores),
        args.client_threads.unwrap_or_else(cores::half_the_cores),
    );
    let loadavg_start = loadavg();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cache_capacity = (args.subjects as u64 * 2).max(100_000);
    eprintln!("loadgen: starting the consent service in-process…");
    let harness = Harness::start(
        args.database_url.as_deref(),
        threads.0,
        cache_capacity,
        args.telemetry,
        args.mtls,
    )?;
    eprintln!(
        "loadgen: listening on {} ({})",
        harness.addr, harness.database
    );
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.1)
        .thread_name("loadgen")
        .enable_all()
        .build()?;
    let outcome = client_rt.block_on(async {
        let prepared = prepare(&args, &harness).await?;
        if args.mtls {
            let measured = run_mtls(&args, &harness, &prepared).await?;
            Ok(Outcome::Mtls(prepared.grants_per_sec, measured))
        } else {
            run(&args, &harness, prepared).await.map(Outcome::Standard)
        }
    });
    client_rt.shutdown_timeout(Duration::from_secs(2));
    let database = harness.database.clone();
    harness.stop()?;
    let (phases, loads, breakdown, grants_per_sec, round_ratios) = match outcome? {
        Outcome::Standard(output) => output,
        Outcome::Mtls(grants_per_sec, measured) => {
            let setup = Setup {
                command: command_line(),
                date,
                nproc,
                kernel: kernel(),
                cpu: cpu_model(),
                loadavg: (loadavg_start, loadavg()),
                commit: commit(),
                database,
                subjects: args.subjects,
                grants_per_sec,
                duration: (
                    args.window().duration.as_secs_f64(),
                    args.window().warmup.as_secs_f64(),
                ),
                threads,
                quick: args.quick,
                rounds: args.rounds.max(1),
            };
            return write_mtls(&args, &setup, &measured);
        }
    };

    let results = Results {
        setup: Setup {
            command: command_line(),
            date,
            nproc,
            kernel: kernel(),
            cpu: cpu_model(),
            loadavg: (loadavg_start, loadavg()),
            commit: commit(),
            database,
            subjects: args.subjects,
            grants_per_sec,
            duration: (
                args.window().duration.as_secs_f64(),
                args.window().warmup.as_secs_f64(),
            ),
            threads,
            quick: args.quick,
            rounds: args.rounds.max(1),
        },
        phases,
        round_ratios,
        loads,
        breakdown,
    };
    let markdown = report::render(&results);
    println!("{markdown}");
    if let Some(path) = &args.write {
        // The file also holds profilegen's section: keep it.
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| {
                old.find("<!-- profilegen:start -->")
                    .map(|at| old[at..].to_owned())
            })
            .map(|section| format!("\n{section}"))
            .unwrap_or_default();
        std::fs::write(path, format!("{markdown}{kept}"))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    let failed = report::verdicts(&results)
        .iter()
        .filter(|v| v.pass == Some(false))
        .count();
    if failed > 0 {
        eprintln!("loadgen: {failed} target(s) FAILED (see the Targets table)");
    }
    Ok(())
}

type RunOutput = (
    Vec<PhaseResult>,
    Vec<LoadStep>,
    Option<breakdown::Breakdown>,
    f64,
    Vec<f64>,
);

/// What a run measured: rows 1–4 (and the breakdown), or the mTLS comparison.
enum Outcome {
    /// Rows 1–4.
    Standard(RunOutput),
    /// Seeding's grants/s, and the comparison.
    Mtls(f64, mtls::Measured),
}

/// The service seeded and its cache warm, and the request pools, before any row runs.
struct Prepared {
    subjects: Subjects,
    one: Clients,
    loads: Vec<LoadStep>,
    grants_per_sec: f64,
    checks: Arc<Vec<consentgate_proto::consent::v1::CheckRequest>>,
    batches: Arc<Vec<consentgate_proto::consent::v1::BatchCheckRequest>>,
}

impl Prepared {
    fn workload(&self, rpc: Rpc) -> Workload {
        Workload {
            rpc,
            checks: self.checks.clone(),
            batches: self.batches.clone(),
        }
    }
}

/// Prints the mTLS section and, with `--write`, puts it in its place in the file.
fn write_mtls(args: &Args, setup: &Setup, measured: &mtls::Measured) -> anyhow::Result<()> {
    let markdown = mtls::render(setup, measured);
    println!("{markdown}");
    if let Some(path) = &args.write {
        marked::write_block(path, "loadgen-mtls", &markdown)?;
        eprintln!(
            "loadgen: wrote the loadgen-mtls section of {}",
            path.display()
        );
    }
    if let Some((pass, p50, p99)) = mtls::verdict(measured) {
        eprintln!(
            "loadgen: mTLS ÷ plaintext Check at 1 in flight: p50 {p50:.2}×, p99 {p99:.2}× (target ≤ {}×): {}",
            mtls::TARGET_FACTOR,
            if pass { "PASS" } else { "FAIL" }
        );
    }
    Ok(())
}

/// The mTLS comparison (`--mtls`), on the prepared service.
async fn run_mtls(
    args: &Args,
    harness: &Harness,
    prepared: &Prepared,
) -> anyhow::Result<mtls::Measured> {
    let settings = mtls::Settings {
        window: args.window(),
        rounds: args.rounds,
        in_flight: args.in_flight,
        connections: args.connections,
        handshakes: if args.quick {
            args.handshakes.min(60)
        } else {
            args.handshakes
        },
    };
    let measured = mtls::run(
        harness,
        &settings,
        &prepared.workload(Rpc::Check),
        &prepared.workload(Rpc::Health),
        |label| args.wants(label),
    )
    .await?;
    for p in &measured.phases {
        eprintln!(
            "loadgen: {:>3} {:<20} {:<48} {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
            p.label,
            p.rpc.name(),
            p.mode,
            p.throughput(),
            p.latency.value_at_quantile(0.5),
            p.latency.value_at_quantile(0.99),
            p.errors
        );
    }
    Ok(measured)
}

/// Seeds the subjects through `Grant`, warms the cache with one Check each, proves a second
/// round of Checks reads nothing from the database, and builds the request pools.
async fn prepare(args: &Args, harness: &Harness) -> anyhow::Result<Prepared> {
    let engine = &harness.engine;
    let subjects = Subjects::new(&harness.run_id, args.subjects);
    let one = Clients::connect(harness.addr, &harness.tokens)
        .await
        .context("connecting to the in-process server")?;
    let mut loads = Vec::new();

    // Seed: one explicit grant per subject through the API, as the preference center.
    let before = engine.store_loads();
    let started = Instant::now();
    for_each_subject(&one, subjects.count(), 16, {
        let subjects = subjects.clone();
        move |mut client, i| {
            let request = workload::grant_request(&subjects, i);
            async move {
                client
                    .grant(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| anyhow::anyhow!("Grant failed: {s}"))
            }
        }
    })
    .await?;
    let grants_per_sec = subjects.count() as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: seeded {} subjects ({grants_per_sec:.0} grants/s)",
        subjects.count()
    );
    loads.push(LoadStep {
        what: format!("Seed: {} Grants", subjects.count()),
        before,
        after: engine.store_loads(),
        expected: "writes only invalidate".into(),
    });

    // Warm: one Check per subject; every one is a miss that reads the database.
    let checks_of = |seed: u64| {
        let subjects = subjects.clone();
        move |mut client: Clients, i: usize| {
            let mut rng = Rng::new(seed ^ i as u64);
            let request = check_for(&subjects, i, 3, &mut rng);
            async move {
                let response = client
                    .check(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("Check failed: {s}"))?;
                anyhow::ensure!(
                    all_allowed(&response, 3),
                    "unexpected decision {response:?}"
                );
                Ok(())
            }
        }
    };
    let before = engine.store_loads();
    let warm_started = Instant::now();
    for_each_subject(&one, subjects.count(), 16, checks_of(args.seed)).await?;
    loads.push(LoadStep {
        what: format!("Warm: 1 Check per subject ({})", subjects.count()),
        before,
        after: engine.store_loads(),
        expected: format!("{} (one miss per subject)", subjects.count()),
    });
    // Then every subject again, straight away: a warm fresh cache must not touch the database.
    let before = engine.store_loads();
    for_each_subject(&one, subjects.count(), 16, checks_of(args.seed ^ 0xABCD)).await?;
    let after = engine.store_loads();
    loads.push(LoadStep {
        what: format!(
            "Check every subject again ({}), done {:.2} s after warming began",
            subjects.count(),
            warm_started.elapsed().as_secs_f64()
        ),
        before,
        after,
        expected: "**0**".into(),
    });
    eprintln!(
        "loadgen: warm-cache proof: {} new store loads",
        after - before
    );

    // Request pools, built before any timing.
    let mut rng = Rng::new(args.seed);
    let checks = Arc::new(
        (0..8192)
            .map(|_| random_check(&subjects, &mut rng))
            .collect::<Vec<_>>(),
    );
    let batches = Arc::new(
        (0..8)
            .map(|_| random_batch(&subjects, &mut rng))
            .collect::<Vec<_>>(),
    );
    Ok(Prepared {
        subjects,
        one,
        loads,
        grants_per_sec,
        checks,
        batches,
    })
}

/// Rows 1–4 and the in-process breakdown.
async fn run(args: &Args, harness: &Harness, prepared: Prepared) -> anyhow::Result<RunOutput> {
    let engine = &harness.engine;
    let window = args.window();
    let many = Clients::connect_many(harness.addr, &harness.tokens, args.connections).await?;
    let Prepared {
        subjects,
        one,
        loads,
        grants_per_sec,
        checks,
        batches,
    } = prepared;
    let workload = |rpc| Workload {
        rpc,
        checks: checks.clone(),
        batches: batches.clone(),
    };
    let (health, check) = (workload(Rpc::Health), workload(Rpc::Check));
    let mut phases = Vec::new();
    let mut round_ratios: Vec<f64> = Vec::new();
    let single = std::slice::from_ref(&one);
    let report = |p: &PhaseResult| {
        eprintln!(
            "loadgen: {:>3} {:<26} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  errors {}  loads {}",
            p.label,
            p.rpc.name(),
            p.throughput(),
            p.latency.value_at_quantile(0.5),
            p.latency.value_at_quantile(0.99),
            p.latency.value_at_quantile(0.999),
            p.errors + p.dropped,
            p.store_loads
        );
    };

    // 1. One in flight (closed loop, sequential); 2. saturated: 64 workers over 4 connections.
    // Each pair runs as interleaved rounds so that outside load drifts over both rows alike.
    let rounds = args.rounds.max(1);
    let round_window = Window {
        warmup: window
            .warmup
            .div_f64(rounds as f64)
            .max(Duration::from_millis(200)),
        duration: window.duration.div_f64(rounds as f64),
    };
    for (pair, workers, clients) in [
        ([("1a", &health), ("1b", &check)], 1, single),
        ([("2a", &health), ("2b", &check)], args.in_flight, &many[..]),
    ] {
        let mut rows: Vec<PhaseResult> = Vec::new();
        for round in 0..rounds {
            let mut per_round = Vec::new();
            for (label, w) in pair {
                if !args.wants(label) {
                    continue;
                }
                let p = closed_loop(label, w, clients, workers, round_window, engine).await;
                per_round.push((label, p.throughput(), p.latency.value_at_quantile(0.5)));
                match rows.iter_mut().find(|r| r.label == label) {
                    Some(row) => row.absorb(p),
                    None => rows.push(p),
                }
            }
            eprintln!(
                "loadgen: round {}/{rounds}: {}",
                round + 1,
                per_round
                    .iter()
                    .map(|(l, t, p50)| format!("{l} {t:.0} req/s p50 {p50} µs"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            round_ratios.extend(
                (per_round.len() == 2 && workers > 1).then(|| per_round[1].1 / per_round[0].1),
            );
        }
        for p in rows {
            report(&p);
            phases.push(p);
        }
    }
    // 3. Open loop at a fixed rate, the same for both RPCs.
    let saturated = |label: &str| {
        phases
            .iter()
            .find(|p: &&PhaseResult| p.label == label)
            .map(PhaseResult::throughput)
    };
    let rate = match (args.open_rate, saturated("2a"), saturated("2b")) {
        (Some(rate), _, _) => Some(rate),
        // A third, not more: at a fixed rate a request costs far more CPU than at saturation (no
        // batching of wake-ups and writes), on the server and on the generator's one core alike.
        (None, Some(h), Some(c)) => Some((h.min(c) / 3.0).max(100.0)),
        (None, _, _) => None,
    };
    for (label, w) in [("3a", &health), ("3b", &check)] {
        if !args.wants(label) {
            continue;
        }
        let rate = rate.context("the open-loop rows need rows 2a and 2b, or --open-rate")?;
        let backlog = (rate as usize).max(1000);
        let p = open_loop(
            label,
            w,
            &many,
            rate,
            args.in_flight,
            backlog,
            window,
            engine,
        )
        .await;
        report(&p);
        phases.push(p);
    }
    // 4. BatchCheck throughput.
    if args.wants("4") {
        let batch_clients =
            Clients::connect_many(harness.addr, &harness.tokens, args.batch_in_flight).await?;
        let p = closed_loop(
            "4",
            &workload(Rpc::BatchCheck),
            &batch_clients,
            args.batch_in_flight,
            window,
            engine,
        )
        .await;
        report(&p);
        eprintln!(
            "loadgen:     BatchCheck: {:.0} category decisions/s",
            p.decisions_per_sec()
        );
        phases.push(p);
    }

    // Where a Check's time goes, without the transport.
    let breakdown = if args.no_breakdown {
        None
    } else {
        eprintln!("loadgen: in-process breakdown…");
        let iterations = if args.quick { 5_000 } else { 100_000 };
        Some(breakdown::measure(engine, &subjects, args.seed, iterations).await?)
    };
    Ok((phases, loads, breakdown, grants_per_sec, round_ratios))
}

/// Runs `op(client, i)` for every subject `i`, `concurrency` at a time over one connection.
async fn for_each_subject<F, Fut>(
    client: &Clients,
    count: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(Clients, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, op, client) = (next.clone(), op.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                op(client.clone(), i).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let mut command = "cargo run --release -p consentgate-bench --bin loadgen".to_owned();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn kernel() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
        .or_else(|| run_command("uname", &["-r"]))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn loadavg() -> String {
    read_trimmed("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn commit() -> String {
    match run_command("git", &["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = run_command("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("`{hash}` with uncommitted changes")
            } else {
                format!("`{hash}`")
            }
        }
        None => "unknown".into(),
    }
}

fn run_command(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
