//! `writegen`: durable consent writes over real gRPC on loopback (issue 16: group commit).
//! Starts the consent service in-process on a fresh SQLite file, or with `--postgres` on a fresh
//! PostgreSQL database, and measures in one run:
//! - **the floor**: one durable commit of one small row on the same database, one at a time (a
//!   write at 1 in flight cannot beat it: it is what "durable" costs here);
//! - **the RPC's floor**: `grpc.health.v1.Health/Check`, one at a time, which a write over gRPC
//!   pays as well: what is left of a write's latency beyond both floors is its own work;
//! - **1 in flight**: `Grant` and `Withdraw`, alternating, one at a time, each with its own
//!   idempotency key, interleaved with the floor in rounds so that other tenants' load drifts
//!   over both alike;
//! - **64 in flight**: the same from 64 workers over 4 connections (closed loop, saturated):
//!   durable writes per second, latency, and how many writes shared each commit;
//! - **bulk import**: `consentgate import`'s code streaming a generated JSONL export (three
//!   records per subject, in time order) to ImportConsents: records per second, end to end.
//!
//! Prints a Markdown section and, with `--write FILE`, puts it into FILE between
//! `<!-- writegen:start -->` and `<!-- writegen:end -->` (`writegen-postgres` with `--postgres`).

mod allocator;
mod cores;
mod databases;
mod marked;

use clap::Parser;
use consentgate::suite::{self, ConsentService, ConsentSettings};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::{Authenticator, Edge};
use cores::half_the_cores;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "writegen", version)]
struct Args {
    /// Measured seconds per row (the 1-in-flight row and the floor split theirs over the rounds).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Workers of the saturated row.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// HTTP/2 connections the saturated row's workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The floor and the 1-in-flight row alternate in this many rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Run on a fresh PostgreSQL database (the server `CONSENTGATE_TEST_POSTGRES_URL` names)
    /// instead of a SQLite file; reported under its own marker.
    #[arg(long)]
    postgres: bool,
    /// Put the report into this Markdown file (between writegen markers).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Records in the bulk-import row's generated export.
    #[arg(long, default_value_t = 100_000)]
    import_records: usize,
    /// Smoke run: 1 s rows, 2 rounds, 3,000 imported records (numbers not meaningful).
    #[arg(long)]
    quick: bool,
}

/// Issue 16's targets for durable writes with 64 in flight.
const TARGET_SQLITE: f64 = 5_000.0;
const TARGET_POSTGRES: f64 = 3_000.0;
/// At 1 in flight a write may take this many times one commit.
const TARGET_RATIO: f64 = 1.5;
/// Issue 16's targets for bulk import, records per second.
const TARGET_IMPORT_SQLITE: f64 = 50_000.0;
const TARGET_IMPORT_POSTGRES: f64 = 20_000.0;

/// A generated export of `records` records, three per subject (a grant of analytics, a grant of
/// marketing e-mail, then a withdrawal of analytics), in time order, the latest a day ago.
fn export(path: &std::path::Path, run: &str, records: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let format = &time::format_description::well_known::Rfc3339;
    for i in 0..records {
        let subject = i / 3;
        let at = (start - time::Duration::milliseconds((records - i) as i64)).format(format)?;
        let line = match i % 3 {
            0 => format!(
                r#"{{"id":"{run}-{i}","subject_id":"import-{run}-{subject}","purpose":"analytics.reporting","state":"given","consent_type":"explicit","notice_version":"3.0","collection_method":"banner","collected_at":"{at}","ip_address":"203.0.113.7"}}"#
            ),
            1 => format!(
                r#"{{"id":"{run}-{i}","subject_id":"import-{run}-{subject}","purpose":"marketing.communications.email","channel":"email","state":"given","consent_type":"explicit","notice_version":"1.2","collection_method":"preference_center","collected_at":"{at}"}}"#
            ),
            _ => format!(
                r#"{{"id":"{run}-{i}","subject_id":"import-{run}-{subject}","purpose":"analytics.reporting","state":"withdrawn","collected_at":"{at}"}}"#
            ),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client = ConsentServiceClient<InterceptedService<Channel, Bearer>>;

/// One row's numbers.
#[derive(Default)]
struct Row {
    histogram: Option<Histogram<u64>>,
    count: u64,
    elapsed: Duration,
    errors: u64,
}

impl Row {
    fn record(&mut self, took: Duration) {
        // 1 µs to 60 s, 3 significant digits: the same bounds for every row, so rows merge.
        self.histogram
            .get_or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
        self.count += 1;
    }
    fn absorb(&mut self, other: Row) {
        if let Some(h) = other.histogram {
            match &mut self.histogram {
                Some(mine) => mine.add(h).expect("same bounds"),
                None => self.histogram = Some(h),
            }
        }
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.errors += other.errors;
    }
    fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn quantile_us(&self, q: f64) -> u64 {
        self.histogram
            .as_ref()
            .map_or(0, |h| h.value_at_quantile(q))
    }
}

fn subject(id: String) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id)),
    })
}

/// The `n`-th write of `worker`: a grant, then the withdrawal of that grant, and so on, each
/// for a subject of the worker's own and under a key never used before.
async fn write(client: &mut Client, run: &str, worker: usize, n: u64) -> Result<(), tonic::Status> {
    let who = format!("wg-{run}-{worker}-{}", (n / 2) % 500);
    let target = Some(pb::ConsentTarget {
        subject: subject(who),
        purpose: "personalize.content.profiled".into(),
        ..Default::default()
    });
    let key = format!("wg-{run}-{worker}-{n}");
    if n.is_multiple_of(2) {
        client
            .grant(pb::GrantRequest {
                target,
                consent_type: pb::ConsentType::Explicit as i32,
                notice_version: "2.0".into(),
                collection_method: pb::CollectionMethod::PreferenceCenter as i32,
                idempotency_key: key,
                ..Default::default()
            })
            .await
            .map(drop)
    } else {
        client
            .withdraw(pb::WithdrawRequest {
                target,
                collection_method: pb::CollectionMethod::PreferenceCenter as i32,
                idempotency_key: key,
                ..Default::default()
            })
            .await
            .map(drop)
    }
}

/// One worker writing until `stop`, timing each write.
async fn worker(mut client: Client, run: Arc<str>, id: usize, stop: Arc<AtomicBool>) -> Row {
    let mut row = Row::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        match write(&mut client, &run, id, n).await {
            Ok(()) => row.record(began.elapsed()),
            Err(_) => row.errors += 1,
        }
        n += 1;
    }
    row
}

/// Writes from `clients.len()` workers for `duration`; the workers' keys start at `first_id`.
async fn written(clients: Vec<Client>, run: &Arc<str>, first_id: usize, duration: Duration) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(worker(c, run.clone(), first_id + i, stop.clone())))
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut row = Row::default();
    for t in tasks {
        row.absorb(t.await.expect("a worker"));
    }
    row.elapsed = began.elapsed();
    row
}

/// One durable commit of one small row at a time on `url`, for `duration`: the floor.
async fn floor(connection: &mut sqlx::AnyConnection, sqlite: bool, duration: Duration) -> Row {
    let begin = if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
    let mut row = Row::default();
    let began = Instant::now();
    while began.elapsed() < duration {
        let t = Instant::now();
        let ok = async {
            sqlx::query(begin).execute(&mut *connection).await?;
            sqlx::query("INSERT INTO writegen_floor (v) VALUES ($1)")
                .bind(vec![7u8; 100])
                .execute(&mut *connection)
                .await?;
            sqlx::query("COMMIT").execute(&mut *connection).await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        match ok {
            Ok(()) => row.record(t.elapsed()),
            Err(_) => row.errors += 1,
        }
    }
    row.elapsed = began.elapsed();
    row
}

/// One `grpc.health.v1.Health/Check` at a time over its own connection, for `duration`: what
/// one RPC costs on this transport with no service work behind it (a write at 1 in flight pays
/// it as well as its commit).
async fn rpc_floor(addr: std::net::SocketAddr, duration: Duration) -> anyhow::Result<Row> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    );
    let mut row = Row::default();
    let began = Instant::now();
    while began.elapsed() < duration {
        let t = Instant::now();
        match health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(_) => row.record(t.elapsed()),
            Err(_) => row.errors += 1,
        }
    }
    row.elapsed = began.elapsed();
    Ok(row)
}

async fn connect(
    addr: std::net::SocketAddr,
    bearer: &Bearer,
    connections: usize,
    clients: usize,
) -> anyhow::Result<Vec<Client>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok((0..clients)
        .map(|i| {
            ConsentServiceClient::with_interceptor(
                channels[i % channels.len()].clone(),
                bearer.clone(),
            )
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (duration, rounds) = if args.quick {
        (Duration::from_secs(1), 2)
    } else {
        (
            Duration::from_secs_f64(args.duration_secs),
            args.rounds.max(1),
        )
    };
    let dir = std::env::temp_dir().join(format!("consentgate-writegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut databases = databases::Databases::new(&dir, args.postgres)?;
    let marker = databases.marker("writegen");
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
    let token = format!("writegen-{}", std::process::id());
    let ops_token = format!("writegen-ops-{}", std::process::id());
    let auth = Authenticator::from_policy(
        &policy,
        &[
            ("preference-center".into(), token.clone()),
            ("privacy-ops".into(), ops_token.clone()),
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
                cache_capacity: 100_000,
                feed_poll: consentgate_consent::server::FEED_POLL,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await?.into(),
            &Default::default(),
        )
        .await
        .map_err(anyhow::Error::from)
    })?;
    let addr = consent.address();
    let engine = consent.service.clone();
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    let sqlite = !args.postgres;
    let run: Arc<str> = Arc::from(format!("{:x}", std::process::id()));
    let started = time::OffsetDateTime::now_utc();

    let (floor_row, rpc_row, single, saturated, batching) = generator.block_on(async {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&url).await?;
        if sqlite {
            // As the store runs: WAL, every commit synced.
            for pragma in [
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = FULL",
                "PRAGMA busy_timeout = 10000",
            ] {
                sqlx::query(pragma).execute(&mut connection).await?;
            }
        }
        let create = if sqlite {
            "CREATE TABLE writegen_floor (id INTEGER PRIMARY KEY, v BLOB NOT NULL)"
        } else {
            "CREATE TABLE writegen_floor (id BIGSERIAL PRIMARY KEY, v BYTEA NOT NULL)"
        };
        sqlx::query(create).execute(&mut connection).await?;

        // Warm-up: connections, the cache, the first pages.
        let warm = connect(addr, &bearer, 1, 1).await?;
        written(warm, &run, 10_000, Duration::from_millis(500)).await;
        floor(&mut connection, sqlite, Duration::from_millis(300)).await;

        let mut floor_row = Row::default();
        let mut rpc_row = Row::default();
        let mut single = Row::default();
        let share = duration.div_f64(rounds as f64);
        for round in 0..rounds {
            eprintln!(
                "writegen: round {}/{rounds}: the floors, then 1 in flight…",
                round + 1
            );
            floor_row.absorb(floor(&mut connection, sqlite, share).await);
            rpc_row.absorb(rpc_floor(addr, share.div_f64(2.0)).await?);
            let one = connect(addr, &bearer, 1, 1).await?;
            single.absorb(written(one, &run, 20_000 + round, share).await);
        }
        eprintln!("writegen: {} in flight for {duration:?}…", args.in_flight);
        let (commits_before, writes_before) = engine.group_commits();
        let many = connect(addr, &bearer, args.connections, args.in_flight).await?;
        let saturated = written(many, &run, 0, duration).await;
        let (commits_after, writes_after) = engine.group_commits();
        let batching = (commits_after - commits_before, writes_after - writes_before);
        anyhow::Ok((floor_row, rpc_row, single, saturated, batching))
    })?;

    let import_records = if args.quick {
        3_000
    } else {
        args.import_records
    };
    let file = dir.join("export.jsonl");
    export(&file, &run, import_records)?;
    eprintln!("writegen: importing {import_records} records…");
    let (imported, import_took) = generator.block_on(async {
        let began = Instant::now();
        let summary = consentgate::import::run(&consentgate::import::ImportArgs {
            file: &file,
            source: "writegen",
            consent: &format!("http://{addr}"),
            token: &ops_token,
            chunk: 1000,
            rejects: None,
        })
        .await?;
        anyhow::Ok((summary, began.elapsed()))
    })?;
    anyhow::ensure!(
        imported.imported + imported.history_only == import_records as u64,
        "the import stored {} of {import_records} records: {imported:?}",
        imported.imported + imported.history_only
    );
    let import_rate = import_records as f64 / import_took.as_secs_f64();

    let target = if sqlite {
        TARGET_SQLITE
    } else {
        TARGET_POSTGRES
    };
    let ratio = single.quantile_us(0.5) as f64 / floor_row.quantile_us(0.5).max(1) as f64;
    let mean_batch = batching.1 as f64 / batching.0.max(1) as f64;
    let backend = if sqlite {
        "SQLite (a fresh file: WAL, synchronous=FULL)"
    } else {
        "PostgreSQL (a fresh database on the local server, synchronous_commit on)"
    };
    let verdict = |ok: bool| if ok { "PASS" } else { "**FAIL**" };
    let mut md = String::new();
    md.push_str(&format!(
        "## Durable consent writes: group commit ({})\n\n",
        if sqlite { "SQLite" } else { "PostgreSQL" }
    ));
    md.push_str(&format!(
        "Run {started} on {} CPUs, commit `{}`. {backend}; the consent service in-process on half the cores, \
         the generator on the other half, over gRPC on loopback. Regenerate with:\n\n```sh\n\
         cargo run --release -p consentgate-bench --bin writegen -- {}--write BENCHMARKS.md\n```\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        git_head(),
        if sqlite { "" } else { "--postgres " },
    ));
    md.push_str("| Target | Measured | Result |\n|---|---|---|\n");
    md.push_str(&format!(
        "| Durable writes with {} in flight ≥ {target:.0}/s | {:.0}/s | {} |\n",
        args.in_flight,
        saturated.per_sec(),
        verdict(saturated.per_sec() >= target)
    ));
    md.push_str(&format!(
        "| A write at 1 in flight within {TARGET_RATIO}× of one commit (p50) | {ratio:.2}× ({} µs against {} µs) | {} |\n",
        single.quantile_us(0.5),
        floor_row.quantile_us(0.5),
        verdict(ratio <= TARGET_RATIO)
    ));
    let import_target = if sqlite {
        TARGET_IMPORT_SQLITE
    } else {
        TARGET_IMPORT_POSTGRES
    };
    md.push_str(&format!(
        "| Bulk import ≥ {import_target:.0} records/s | {import_rate:.0}/s ({import_records} records in {:.1} s) | {} |\n\n",
        import_took.as_secs_f64(),
        verdict(import_rate >= import_target)
    ));
    md.push_str("| Row | What | Count | Per second | p50 | p99 | p99.9 | max | Errors |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for (label, what, row) in [
        (
            "w0",
            "the floor: one durable commit of one 100-byte row, 1 at a time",
            &floor_row,
        ),
        (
            "w0r",
            "the RPC's own floor: `grpc.health.v1.Health/Check`, 1 at a time",
            &rpc_row,
        ),
        ("w1", "Grant/Withdraw, 1 in flight", &single),
        ("w2", "Grant/Withdraw, saturated", &saturated),
    ] {
        let what = if label == "w2" {
            format!(
                "Grant/Withdraw, {} in flight over {} connections",
                args.in_flight, args.connections
            )
        } else {
            what.to_owned()
        };
        md.push_str(&format!(
            "| {label} | {what} | {} | {:.0} | {} µs | {} µs | {} µs | {} µs | {} |\n",
            row.count,
            row.per_sec(),
            row.quantile_us(0.5),
            row.quantile_us(0.99),
            row.quantile_us(0.999),
            row.quantile_us(1.0),
            row.errors
        ));
    }
    md.push_str(&format!(
        "\nIn row w2, {} writes shared {} commits: {mean_batch:.1} writes per durable commit on average \
         (`Engine::group_commits`). Rows w0, w0r and w1 ran as {rounds} interleaved rounds. Each write is a \
         `Grant` or a `Withdraw` (alternating per worker) with its own idempotency key, its ledger \
         entry, change event and receipt (grants), acknowledged only after its commit.\n",
        batching.1, batching.0
    ));
    md.push_str(&format!(
        "\nA write at 1 in flight pays one RPC as well as one commit: against the two floors' sum \
         (w0 + w0r, {} µs at p50) it takes {:.2}×, its own work beyond both {} µs.\n",
        floor_row.quantile_us(0.5) + rpc_row.quantile_us(0.5),
        single.quantile_us(0.5) as f64
            / (floor_row.quantile_us(0.5) + rpc_row.quantile_us(0.5)).max(1) as f64,
        single
            .quantile_us(0.5)
            .saturating_sub(floor_row.quantile_us(0.5) + rpc_row.quantile_us(0.5)),
    ));
    md.push_str(&format!(
        "\nThe bulk import streamed a generated export (three records per subject: a grant of analytics, a \
         grant of marketing e-mail, a withdrawal of analytics, in time order) through `consentgate import`'s \
         code in chunks of 1,000, each record its own revision, ledger entry and change event, a grant its \
         receipt's context (signed when the receipt is first asked for): {} imported, {} in history only; timed from the first line read to the last answer.\n",
        imported.imported, imported.history_only
    ));
    eprintln!(
        "writegen: bulk import {import_rate:.0} records/s (target {import_target:.0}): {}",
        verdict(import_rate >= import_target)
    );
    println!("{md}");
    if let Some(path) = &args.write {
        marked::write_block(path, &marker, &md)?;
        eprintln!("writegen: wrote the {marker} section of {}", path.display());
    }
    eprintln!(
        "writegen: {:.0} durable writes/s with {} in flight (target {target:.0}): {}; 1 in flight {ratio:.2}× one commit (target {TARGET_RATIO}×): {}",
        saturated.per_sec(),
        args.in_flight,
        verdict(saturated.per_sec() >= target),
        verdict(ratio <= TARGET_RATIO)
    );
    servers.block_on(async { consent.stop().await.map_err(anyhow::Error::from) })?;
    drop(databases);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
