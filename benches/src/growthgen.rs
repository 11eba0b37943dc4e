//! `growthgen`: the consent service as its store grows (issue 16, item 5). Seeds subjects through
//! the bulk-import path (`consentgate import`'s code, three events each: a grant, a withdrawal, a
//! grant again, so every seeded subject ends allowed), in steps up to each size (10k, 100k, 1M
//! subjects by default), and at each size measures in one run:
//! - **the floor**: `Health/Check`, 1 in flight (the transport, HTTP/2, tonic and the auth layer);
//! - **Check** at 1 in flight and saturated (32 workers over 4 connections), with subjects drawn
//!   from a Zipf distribution (s = 1, the shape of real traffic: a few subjects are most of it)
//!   and, beside it, uniformly, each with the decision cache's hit rate;
//! - **durable writes**: Grant at 1 and 64 in flight;
//! - **bytes on disk** per consent event and per subject, the process's RSS with the decision
//!   cache's capacity, and **ledger verification** from the genesis (entries per second).
//!
//! Prints a Markdown section and, with `--write FILE`, puts it into FILE between
//! `<!-- growthgen:start -->` and `<!-- growthgen:end -->` (`growthgen-postgres` with
//! `--postgres`). Checks free disk space before it seeds.

mod allocator;
mod cores;
// loadgen's phases and clients, of which this generator uses the Check and write parts.
#[allow(dead_code)]
mod cpu;
mod databases;
#[allow(dead_code)]
mod driver;
mod marked;
#[allow(dead_code)]
mod workload;

use clap::Parser;
use consentgate::suite::{self, ConsentService, ConsentSettings};
use consentgate_consent::engine::Engine;
use consentgate_consent::ledger::LedgerKeys;
use consentgate_policy::Policy;
use consentgate_proto::consent::v1 as pb;
use consentgate_runtime::{Authenticator, Edge};
use cores::half_the_cores;
use driver::{PhaseResult, Rpc, Window, Workload, closed_loop, histogram, micros};
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{Clients, NOTICE_VERSION, PURPOSE, Rng, Subjects, Tokens};

#[derive(Parser, Debug)]
#[command(name = "growthgen", version)]
struct Args {
    /// Subject counts to grow through, ascending (about three consent events each).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// The decision cache's capacity (subjects), as `CONSENTGATE_CACHE_CAPACITY` sets it.
    #[arg(long, default_value_t = 100_000)]
    cache_capacity: u64,
    /// The Zipf exponent of the skewed subject choice.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Run on a fresh PostgreSQL database (the server `CONSENTGATE_TEST_POSTGRES_URL` names).
    #[arg(long)]
    postgres: bool,
    /// Put the report into this Markdown file (between growthgen markers).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Smoke run: sizes 2,000 and 6,000, 1 s phases (numbers not meaningful).
    #[arg(long)]
    quick: bool,
}

/// Issue 16's target: Check p99 at the largest size within this many times its value at the
/// smallest, under the Zipf workload, each against its own floor.
const TARGET_GROWTH: f64 = 1.2;

/// Issue 16's target for bytes on disk per consent event, on both backends.
const TARGET_BYTES_PER_EVENT: f64 = 1024.0;
/// Events seeded per subject.
const EVENTS_PER_SUBJECT: usize = 3;
/// Disk a consent event may take while seeding (its rows, indexes and the WAL), generously.
const SEED_BYTES_PER_EVENT: u64 = 8 * 1024;

/// Subject indexes drawn from a Zipf distribution over `n` ranks, each rank mapped to a subject
/// by a fixed permutation (so the popular subjects are spread over the id space, not the first
/// ones seeded).
struct Zipf {
    cumulative: Vec<f64>,
    stride: usize,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        // A stride coprime with n walks every index once.
        let stride = [2_654_435_761usize, 40_503, 7_919, 1]
            .into_iter()
            .find(|&p| gcd(p % n.max(1), n) == 1)
            .unwrap_or(1);
        Zipf { cumulative, stride }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let rank = self.cumulative.partition_point(|&c| c < u);
        let n = self.cumulative.len();
        (rank.min(n - 1)).wrapping_mul(self.stride) % n
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Check requests for subjects drawn by `pick`, 2 or 3 categories each.
fn checks(
    subjects: &Subjects,
    count: usize,
    mut pick: impl FnMut(&mut Rng) -> usize,
) -> Vec<pb::CheckRequest> {
    let mut rng = Rng::new(0x5eed_0fc0_ffee);
    (0..count)
        .map(|_| {
            let i = pick(&mut rng);
            let n = 2 + rng.below(2);
            workload::check_for(subjects, i, n, &mut rng)
        })
        .collect()
}

/// Writes subjects `from..to` as an export: a grant, a withdrawal and a grant again each, a
/// second apart, in time order, the last a day ago.
fn export(path: &Path, subjects: &Subjects, from: usize, to: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let format = &time::format_description::well_known::Rfc3339;
    let latest = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    for i in from..to {
        let subject = subjects.id(i);
        for (e, state) in ["given", "withdrawn", "given"].into_iter().enumerate() {
            let at = (latest - time::Duration::seconds((EVENTS_PER_SUBJECT - e) as i64))
                .format(format)?;
            let kind = if state == "given" {
                format!(r#","consent_type":"explicit","notice_version":"{NOTICE_VERSION}""#)
            } else {
                String::new()
            };
            writeln!(
                out,
                r#"{{"id":"{subject}-{e}","subject_id":"{subject}","purpose":"{PURPOSE}","state":"{state}"{kind},"collection_method":"preference_center","collected_at":"{at}"}}"#
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Free bytes on the file system holding `dir` (`df`), if it can tell.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The process's resident set (the service and this generator share it), bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes the consent store takes on disk: the SQLite file and its WAL, or the PostgreSQL
/// database.
async fn store_bytes(url: &str, dir: &Path, sqlite: bool) -> anyhow::Result<u64> {
    if sqlite {
        let mut total = 0;
        for name in ["consent.db", "consent.db-wal"] {
            total += std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        }
        Ok(total)
    } else {
        use sqlx::Connection;
        let mut c = sqlx::AnyConnection::connect(url).await?;
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut c)
            .await?;
        Ok(u64::try_from(size).unwrap_or(0))
    }
}

/// Settles the store after a seeding import, as an operator settles a database after a bulk
/// migration: PostgreSQL's `VACUUM (ANALYZE)` (statistics for the planner, the visibility map
/// for index-only reads) and a `CHECKPOINT`; SQLite's WAL checkpointed into the database file.
/// Why: without it the first phase after a large import measured autovacuum's and the
/// checkpointer's catch-up rather than the store at its size: at 1M subjects the Zipf row,
/// which runs first, came out slower than the uniform row after it although it hits the cache
/// four times as often (BENCHMARKS.md, fifteenth look).
async fn settle(url: &str, sqlite: bool) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::AnyConnection::connect(url).await?;
    let statements: &[&'static str] = if sqlite {
        &["PRAGMA wal_checkpoint(TRUNCATE)"]
    } else {
        &["VACUUM (ANALYZE)", "CHECKPOINT"]
    };
    for statement in statements {
        sqlx::raw_sql(*statement).execute(&mut c).await?;
    }
    c.close().await?;
    Ok(())
}

/// Bytes each table of the consent store takes with its indexes (SQLite's `dbstat` pages,
/// PostgreSQL's `pg_total_relation_size`), largest first.
async fn table_bytes(url: &str, sqlite: bool) -> anyhow::Result<Vec<(String, u64)>> {
    use sqlx::{Connection, Row};
    let sql = if sqlite {
        "SELECT m.tbl_name, CAST(SUM(s.pgsize) AS INTEGER) FROM dbstat s \
         JOIN sqlite_master m ON m.name = s.name \
         WHERE m.tbl_name NOT LIKE 'sqlite_%' AND m.tbl_name NOT LIKE '_sqlx%' \
         GROUP BY m.tbl_name"
    } else {
        "SELECT CAST(c.relname AS TEXT), CAST(pg_total_relation_size(c.oid) AS BIGINT) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname NOT LIKE '_sqlx%'"
    };
    let mut c = sqlx::AnyConnection::connect(url).await?;
    let mut tables: Vec<(String, u64)> = sqlx::query(sql)
        .fetch_all(&mut c)
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            )
        })
        .collect();
    tables.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(tables)
}

/// Grants at `workers` in flight (closed loop) for `duration`: each a new consent event of a
/// seeded subject with its own idempotency key, acknowledged after its durable commit.
async fn writes(
    clients: &[Clients],
    subjects: &Subjects,
    workers: usize,
    duration: Duration,
    tag: &str,
) -> (u64, Histogram<u64>, u64) {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = clients[w % clients.len()].clone();
        let subjects = subjects.clone();
        let tag = format!("{tag}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut rng = Rng::new(w as u64 + 17);
            let mut n = 0u64;
            while Instant::now() < end {
                let i = rng.below(subjects.count());
                let mut request = workload::grant_request(&subjects, i);
                request.idempotency_key = format!("{tag}-{n}");
                n += 1;
                let sent = Instant::now();
                match client.grant(request).await {
                    Ok(_) => {
                        ok += 1;
                        latency.saturating_record(micros(sent.elapsed()));
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, latency, errors)
        }));
    }
    let mut latency = histogram();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, h, e) = t.await.expect("a writer panicked");
        ok += o;
        errors += e;
        latency.add(&h).expect("same bounds");
    }
    (ok, latency, errors)
}

/// What one size measured.
struct Step {
    subjects: usize,
    events: u64,
    import_rate: f64,
    bytes: u64,
    /// Each table's bytes with its indexes.
    tables: Vec<(String, u64)>,
    rss: u64,
    verify_rate: f64,
    floor: PhaseResult,
    zipf_one: PhaseResult,
    zipf_many: PhaseResult,
    uniform_one: PhaseResult,
    uniform_many: PhaseResult,
    write_one: (u64, Histogram<u64>, u64),
    write_many: (u64, Histogram<u64>, u64),
}

fn p(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

/// The share of Checks answered from the cache in a phase.
fn hit_rate(r: &PhaseResult) -> f64 {
    if r.ok == 0 {
        return 0.0;
    }
    1.0 - (r.store_loads as f64 / r.ok as f64).min(1.0)
}

#[allow(clippy::too_many_lines)]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (sizes, phase) = if args.quick {
        (vec![2_000, 6_000], Duration::from_secs(1))
    } else {
        (
            args.sizes.clone(),
            Duration::from_secs_f64(args.duration_secs),
        )
    };
    anyhow::ensure!(
        !sizes.is_empty() && sizes.windows(2).all(|w| w[0] < w[1]),
        "--sizes must be ascending"
    );
    let largest = *sizes.last().unwrap_or(&0);
    let dir = std::env::temp_dir().join(format!("consentgate-growthgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let need = (largest * EVENTS_PER_SUBJECT) as u64 * SEED_BYTES_PER_EVENT;
    if let Some(free) = free_bytes(&dir) {
        anyhow::ensure!(
            free > need,
            "growthgen needs about {} MB free for {largest} subjects and {} MB are free under {}",
            need >> 20,
            free >> 20,
            dir.display()
        );
    }
    let mut databases = databases::Databases::new(&dir, args.postgres)?;
    let marker = databases.marker("growthgen");
    let sqlite = !args.postgres;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(half_the_cores())
        .thread_name("consent-server")
        .enable_all()
        .build()?;
    let generator = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(half_the_cores())
        .thread_name("generator")
        .enable_all()
        .build()?;
    let policy = Arc::new(Policy::default_policy().map_err(|e| anyhow::anyhow!("{e}"))?);
    let pid = std::process::id();
    let token = |caller: &str| format!("growthgen-{caller}-{pid}");
    let auth = Authenticator::from_policy(
        &policy,
        &[
            ("preference-center".into(), token("pc")),
            ("recommendation-service".into(), token("enforcer")),
            ("privacy-ops".into(), token("ops")),
            ("auditor".into(), token("auditor")),
        ],
    )?;
    let url = servers.block_on(databases.url("consent"));
    let consent: ConsentService = servers.block_on(async {
        suite::start_consent(
            policy.clone(),
            Edge::unlimited(auth),
            ConsentSettings {
                database_url: url.clone(),
                keys: Arc::new(LedgerKeys::generate()),
                cache_capacity: args.cache_capacity,
                feed_poll: consentgate_consent::server::FEED_POLL,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await?.into(),
            &Default::default(),
        )
        .await
        .map_err(anyhow::Error::from)
    })?;
    let addr = consent.address();
    // What the freshly migrated store takes (PostgreSQL's catalogs are ~7.5 MB of it): not
    // bytes of any event, so not counted per event.
    let empty_bytes = servers.block_on(store_bytes(&url, &dir, sqlite))?;
    let engine: Arc<Engine> = consent.service.clone();
    let tokens = Tokens {
        preference_center: token("pc"),
        enforcer: token("enforcer"),
    };
    let run = format!("{pid:x}");
    let subjects_all = Subjects::new(&run, largest);
    let started = time::OffsetDateTime::now_utc();

    let mut steps = Vec::new();
    let mut seeded = 0;
    for &size in &sizes {
        // Seed up to this size through the import path.
        let file = dir.join("export.jsonl");
        export(&file, &subjects_all, seeded, size)?;
        eprintln!("growthgen: importing subjects {seeded}..{size}…");
        let began = Instant::now();
        let summary =
            generator.block_on(consentgate::import::run(&consentgate::import::ImportArgs {
                file: &file,
                source: "growthgen",
                consent: &format!("http://{addr}"),
                token: &token("ops"),
                chunk: 1000,
                rejects: None,
            }))?;
        let import_rate =
            ((size - seeded) * EVENTS_PER_SUBJECT) as f64 / began.elapsed().as_secs_f64();
        anyhow::ensure!(
            summary.rejected + summary.malformed == 0 && summary.duplicate == 0,
            "seeding rejected records: {summary:?}"
        );
        std::fs::remove_file(&file).ok();
        eprintln!("growthgen: {size} subjects: settling the store…");
        let settled = Instant::now();
        servers.block_on(settle(&url, sqlite))?;
        eprintln!(
            "growthgen: {size} subjects: settled in {:.1} s",
            settled.elapsed().as_secs_f64()
        );
        seeded = size;
        let subjects = Subjects::new(&run, size);
        let zipf = Zipf::new(size, args.zipf_s);
        let pool = 200_000;
        let zipf_checks = Arc::new(checks(&subjects, pool, |rng| zipf.sample(rng)));
        let uniform_checks = Arc::new(checks(&subjects, pool, |rng| rng.below(size)));

        let step = generator.block_on(async {
            let one = Clients::connect_many(addr, &tokens, 1).await?;
            let many = Clients::connect_many(addr, &tokens, 4).await?;
            let window = Window {
                warmup: phase.div_f64(4.0),
                duration: phase,
            };
            let workload = |rpc, checks: &Arc<Vec<pb::CheckRequest>>| Workload {
                rpc,
                checks: checks.clone(),
                batches: Arc::new(Vec::new()),
            };
            eprintln!("growthgen: {size} subjects: the floor and Check…");
            let floor = closed_loop(
                "floor",
                &workload(Rpc::Health, &zipf_checks),
                &one,
                1,
                window,
                &engine,
            )
            .await;
            let zipf_one = closed_loop(
                "zipf-1",
                &workload(Rpc::Check, &zipf_checks),
                &one,
                1,
                window,
                &engine,
            )
            .await;
            let zipf_many = closed_loop(
                "zipf-32",
                &workload(Rpc::Check, &zipf_checks),
                &many,
                32,
                window,
                &engine,
            )
            .await;
            let uniform_one = closed_loop(
                "uniform-1",
                &workload(Rpc::Check, &uniform_checks),
                &one,
                1,
                window,
                &engine,
            )
            .await;
            let uniform_many = closed_loop(
                "uniform-32",
                &workload(Rpc::Check, &uniform_checks),
                &many,
                32,
                window,
                &engine,
            )
            .await;
            eprintln!("growthgen: {size} subjects: writes…");
            let write_one = writes(&one, &subjects, 1, phase, &format!("w1-{size}")).await;
            let writers = Clients::connect_many(addr, &tokens, 4).await?;
            let write_many = writes(&writers, &subjects, 64, phase, &format!("w64-{size}")).await;
            eprintln!("growthgen: {size} subjects: the ledger…");
            let mut auditor =
                consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(
                    tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                        .connect()
                        .await?,
                );
            let mut request = tonic::Request::new(pb::VerifyLedgerRequest::default());
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", token("auditor")).parse()?,
            );
            let began = Instant::now();
            let report = auditor.verify_ledger(request).await?.into_inner();
            let took = began.elapsed();
            anyhow::ensure!(report.ok, "the ledger did not verify: {report:?}");
            let events = report.entries_checked;
            let bytes = store_bytes(&url, &dir, sqlite).await?;
            let tables = table_bytes(&url, sqlite).await?;
            anyhow::Ok(Step {
                subjects: size,
                events,
                import_rate,
                bytes,
                tables,
                rss: rss_bytes(),
                verify_rate: events as f64 / took.as_secs_f64(),
                floor,
                zipf_one,
                zipf_many,
                uniform_one,
                uniform_many,
                write_one,
                write_many,
            })
        })?;
        for r in [
            &step.zipf_one,
            &step.zipf_many,
            &step.uniform_one,
            &step.uniform_many,
        ] {
            anyhow::ensure!(r.errors == 0, "{} had errors: {:?}", r.label, r.first_error);
        }
        steps.push(step);
    }

    let md = report(&args, &steps, started, sqlite, phase, empty_bytes);
    println!("{md}");
    if let Some(path) = &args.write {
        marked::write_block(path, &marker, &md)?;
        eprintln!(
            "growthgen: wrote the {marker} section of {}",
            path.display()
        );
    }
    servers.block_on(async { consent.stop().await.map_err(anyhow::Error::from) })?;
    drop(databases);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The Markdown section.
fn report(
    args: &Args,
    steps: &[Step],
    started: time::OffsetDateTime,
    sqlite: bool,
    phase: Duration,
    empty_bytes: u64,
) -> String {
    let verdict = |ok: bool| if ok { "PASS" } else { "**FAIL**" };
    let normalized =
        |s: &Step| p(&s.zipf_one.latency, 0.99) as f64 / p(&s.floor.latency, 0.99).max(1) as f64;
    let (first, last) = (&steps[0], &steps[steps.len() - 1]);
    let growth = normalized(last) / normalized(first).max(f64::MIN_POSITIVE);
    // Bytes the events took: what the store holds beyond the freshly migrated one.
    let per_event = |s: &Step| s.bytes.saturating_sub(empty_bytes) as f64 / s.events.max(1) as f64;
    let mut md = String::new();
    md.push_str(&format!(
        "## The consent service as its store grows ({})\n\n",
        if sqlite { "SQLite" } else { "PostgreSQL" }
    ));
    md.push_str(&format!(
        "Run {started} on {} CPUs, commit `{}`. {}; the consent service in-process on half the cores \
         (decision cache capacity {} subjects), the generator on the other half, over gRPC on loopback. \
         Subjects seeded through ImportConsents, {EVENTS_PER_SUBJECT} events each (grant, withdrawal, grant), then the store settled ({}) before each size's phases. \
         Phases of {:.0} s after a quarter as much warm-up; Check rows closed loop (1 in flight, or 32 workers over 4 connections). \
         Zipf rows draw subjects with s = {} over a fixed permutation of the ids; uniform rows uniformly. Regenerate with:\n\n```sh\n\
         cargo run --release -p consentgate-bench --bin growthgen -- {}--write BENCHMARKS.md\n```\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        git_head(),
        if sqlite { "SQLite (a fresh file: WAL, synchronous=FULL)" } else { "PostgreSQL (a fresh database on the local server)" },
        args.cache_capacity,
        if sqlite { "its WAL checkpointed" } else { "`VACUUM (ANALYZE)`, `CHECKPOINT`" },
        phase.as_secs_f64(),
        args.zipf_s,
        if sqlite { "" } else { "--postgres " },
    ));
    md.push_str("| Target | Measured | Result |\n|---|---|---|\n");
    md.push_str(&format!(
        "| Check p99 (Zipf, 1 in flight, over the floor's p99) at {} subjects within {TARGET_GROWTH}× of {} subjects | {growth:.2}× | {} |\n\n",
        last.subjects,
        first.subjects,
        verdict(growth <= TARGET_GROWTH)
    ));
    md.insert_str(
        md.len() - 1,
        &format!(
            "| Bytes on disk per consent event at {} subjects at most {TARGET_BYTES_PER_EVENT} | {:.0} | {} |\n",
            last.subjects,
            per_event(last),
            verdict(per_event(last) <= TARGET_BYTES_PER_EVENT)
        ),
    );
    md.push_str("| Subjects | Events | Floor p50/p99 | Zipf 1: p50/p99 (hit rate) | Zipf 32: /s, p50/p99 | Uniform 1: p50/p99 (hit rate) | Uniform 32: /s, p50/p99 | Grant 1: /s, p50 | Grant 64: /s, p99 |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for s in steps {
        let w1 = &s.write_one;
        let w64 = &s.write_many;
        md.push_str(&format!(
            "| {} | {} | {}/{} µs | {}/{} µs ({:.0}%) | {:.0}, {}/{} µs | {}/{} µs ({:.0}%) | {:.0}, {}/{} µs | {:.0}, {} µs | {:.0}, {} µs |\n",
            s.subjects,
            s.events,
            p(&s.floor.latency, 0.5),
            p(&s.floor.latency, 0.99),
            p(&s.zipf_one.latency, 0.5),
            p(&s.zipf_one.latency, 0.99),
            hit_rate(&s.zipf_one) * 100.0,
            s.zipf_many.throughput(),
            p(&s.zipf_many.latency, 0.5),
            p(&s.zipf_many.latency, 0.99),
            p(&s.uniform_one.latency, 0.5),
            p(&s.uniform_one.latency, 0.99),
            hit_rate(&s.uniform_one) * 100.0,
            s.uniform_many.throughput(),
            p(&s.uniform_many.latency, 0.5),
            p(&s.uniform_many.latency, 0.99),
            w1.0 as f64 / phase.as_secs_f64(),
            p(&w1.1, 0.5),
            w64.0 as f64 / phase.as_secs_f64(),
            p(&w64.1, 0.99),
        ));
    }
    md.push_str("\n| Subjects | Seeded by import, records/s | Bytes on disk | per event | per subject | RSS (service and generator) | Ledger verification, entries/s |\n|--:|--:|--:|--:|--:|--:|--:|\n");
    for s in steps {
        md.push_str(&format!(
            "| {} | {:.0} | {} MB | {:.0} | {:.0} | {} MB | {:.0} |\n",
            s.subjects,
            s.import_rate,
            s.bytes >> 20,
            per_event(s),
            s.bytes.saturating_sub(empty_bytes) as f64 / s.subjects.max(1) as f64,
            s.rss >> 20,
            s.verify_rate
        ));
    }
    md.push_str("\n| Subjects | Bytes per event by table, indexes included |\n|--:|---|\n");
    for s in steps {
        md.push_str(&format!(
            "| {} | {} |\n",
            s.subjects,
            s.tables
                .iter()
                .filter(|(_, bytes)| *bytes as f64 / s.events.max(1) as f64 >= 0.5)
                .map(|(t, bytes)| format!("{t} {:.0}", *bytes as f64 / s.events.max(1) as f64))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    md.push_str(&format!(
        "\nEvents are the ledger's entries at that size (seeded, plus the Grants the write rows made at the \
         sizes before). Bytes on disk include indexes and, for SQLite, the WAL as it stood; per event and per \
         subject they are what the store holds beyond the freshly migrated one ({} KB, PostgreSQL's catalogs \
         most of it there). The hit rate is the share of Checks answered without reading the store \
         (`Engine::store_loads`).\n",
        empty_bytes >> 10
    ));
    md
}

/// The commit the numbers belong to.
fn git_head() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_draws_favour_few_subjects_and_reach_every_one() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Rank 1 takes ~1/H(1000) ≈ 13% of draws; the top ten about 39%.
        assert!(sorted[0] > 10_000 && sorted[0] < 16_000, "{}", sorted[0]);
        let top10: u32 = sorted[..10].iter().sum();
        assert!(top10 > 35_000 && top10 < 44_000, "{top10}");
        assert!(counts.iter().filter(|&&c| c > 0).count() > 900);
    }
}
