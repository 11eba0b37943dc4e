//! `loadgen --mtls`: what mutual TLS costs a caller of the consent service. The same engine is
//! served on a plaintext port and on a mutual-TLS port ([`crate::harness::MtlsDoor`]); both are
//! dialled the way a gate dials consent (`consentgate_runtime::tls::Dialer`), and Health (the
//! floor) and Check are measured over each in interleaved rounds, on warm connections at 1 and
//! at 64 in flight; then new connections, each opened for one Check: plaintext, a full mTLS
//! handshake, and a resumed one (TLS 1.3 session ticket).

use crate::cpu::Snapshot;
use crate::driver::{PhaseResult, Rpc, Window, Workload, closed_loop, histogram, micros};
use crate::harness::{Harness, MtlsDoor};
use crate::report::{Setup, thousands, us};
use crate::workload::{Clients, Tokens};
use consentgate_consent::engine::Engine;
use consentgate_runtime::tls::{ClientAuth, Dialer, Target, TlsMaterial};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The target: mTLS Check at 1 in flight within this factor of plaintext Check (p50 and p99).
pub const TARGET_FACTOR: f64 = 1.2;

/// Connections opened, unrecorded, at the start of each round of the new-connection rows
/// (first allocations, the server's session cache, the kernel's socket paths).
const CONNECTION_WARMUP: usize = 10;

/// How the benchmark reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Plaintext HTTP/2, the caller known by its bearer token.
    Plaintext,
    /// Mutual TLS, the caller known by its certificate (no token).
    Mtls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext + token",
            Transport::Mtls => "mTLS",
        }
    }
}

/// How a new connection's TLS session starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// No TLS at all.
    None,
    /// A full TLS 1.3 handshake: certificates exchanged, signed and verified both ways.
    Full,
    /// A resumed one: a session ticket from an earlier connection (PSK with fresh ECDHE, no
    /// certificates), as a gate reconnecting to a replica that is still up does.
    Resumed,
}

/// What `--mtls` measured.
pub struct Measured {
    /// Warm rows (m1*, m2*) and new-connection rows (m3*), in order.
    pub phases: Vec<PhaseResult>,
    /// Per interleaved round of rows m1: mTLS Check p50 ÷ plaintext Check p50.
    pub round_ratios: Vec<f64>,
    /// Per interleaved round of rows m1: the same for p99 (a p99 of one round is one stall
    /// away from doubling: read it beside the others).
    pub round_p99_ratios: Vec<f64>,
    /// Per interleaved round of rows m2: mTLS Check req/s ÷ plaintext Check req/s.
    pub saturated_round_ratios: Vec<f64>,
}

/// Both ports, dialled as the gate dials: [`Dialer`] targets with TCP_NODELAY.
struct Dial {
    plaintext: Target,
    mtls: Target,
    door: MtlsDoor,
    tokens: Tokens,
    engine: Arc<Engine>,
}

impl Dial {
    fn new(harness: &Harness) -> anyhow::Result<Dial> {
        let door = harness
            .mtls
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the harness has no mTLS port"))?;
        Ok(Dial {
            plaintext: Dialer::plaintext()
                .target(&format!("http://{}", harness.addr))?
                .configure(|e| e.tcp_nodelay(true)),
            mtls: mtls_target(&door)?,
            door,
            tokens: harness.tokens.clone(),
            engine: harness.engine.clone(),
        })
    }

    /// Clients over a new (not yet connected) channel. A full handshake needs a client whose
    /// session cache is empty: fresh TLS material, loaded here, before any timing.
    fn clients(&self, transport: Transport, handshake: Handshake) -> anyhow::Result<Clients> {
        match (transport, handshake) {
            (Transport::Plaintext, _) => {
                Clients::over(self.plaintext.connect_lazy(), Some(&self.tokens))
            }
            (Transport::Mtls, Handshake::Full) => {
                Clients::over(mtls_target(&self.door)?.connect_lazy(), None)
            }
            // One material, one session cache: after the first, these connections resume.
            (Transport::Mtls, _) => Clients::over(self.mtls.connect_lazy(), None),
        }
    }

    /// `n` clients, each over its own connection, opened (by one Health call) before returning.
    async fn warm(&self, transport: Transport, n: usize) -> anyhow::Result<Vec<Clients>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            let mut clients = self.clients(transport, Handshake::Resumed)?;
            clients
                .health()
                .await
                .map_err(|s| anyhow::anyhow!("Health over {}: {s}", transport.name()))?;
            all.push(clients);
        }
        Ok(all)
    }
}

/// The mTLS port as the caller's own certificate dials it, with TLS material loaded now (so
/// with an empty session cache).
fn mtls_target(door: &MtlsDoor) -> anyhow::Result<Target> {
    let material = TlsMaterial::load(door.caller.clone(), ClientAuth::Required)?;
    Ok(Dialer::tls(material)
        .target(&format!("https://{}", door.addr))?
        .configure(|e| e.tcp_nodelay(true)))
}

/// Settings of the run, from the command line.
pub struct Settings {
    /// The whole window of rows m1 (and of m2), shared by the rounds.
    pub window: Window,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Workers (and the in-flight bound) of rows m2.
    pub in_flight: usize,
    /// Connections of rows m2.
    pub connections: usize,
    /// New connections per m3 row, over all rounds.
    pub handshakes: usize,
}

/// Runs rows m1 (1 in flight), m2 (saturated) and m3 (new connections), each as interleaved
/// rounds; `wants` says which rows to run (`--only`).
pub async fn run(
    harness: &Harness,
    settings: &Settings,
    check: &Workload,
    health: &Workload,
    wants: impl Fn(&str) -> bool,
) -> anyhow::Result<Measured> {
    let engine = &harness.engine;
    let dial = Dial::new(harness)?;
    let rounds = settings.rounds.max(1);
    let round_window = Window {
        warmup: settings
            .window
            .warmup
            .div_f64(rounds as f64)
            .max(Duration::from_millis(200)),
        duration: settings.window.duration.div_f64(rounds as f64),
    };
    let mut phases: Vec<PhaseResult> = Vec::new();
    let mut ratios = (Vec::new(), Vec::new(), Vec::new());

    // Warm connections: m1 on one connection per transport, m2 on `connections` of each.
    for (row, workers, n) in [
        ("m1", 1, 1),
        ("m2", settings.in_flight, settings.connections),
    ] {
        let labels = ["a", "b", "c", "d"].map(|s| format!("{row}{s}"));
        if !labels.iter().any(|l| wants(l)) {
            continue;
        }
        let plaintext = dial.warm(Transport::Plaintext, n).await?;
        let mtls = dial.warm(Transport::Mtls, n).await?;
        let sides = [
            (&labels[0], &labels[1], &plaintext[..], Transport::Plaintext),
            (&labels[2], &labels[3], &mtls[..], Transport::Mtls),
        ];
        let mut rows: Vec<PhaseResult> = Vec::new();
        for round in 0..rounds {
            // The order alternates, so that neither side always follows the other.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut checks = [None, None];
            for side in order {
                let (floor, label, clients, transport) = sides[side];
                for (label, workload) in [(floor, health), (label, check)] {
                    if !wants(label) {
                        continue;
                    }
                    let mut p =
                        closed_loop(label, workload, clients, workers, round_window, engine).await;
                    p.mode = format!("{}, {}", transport.name(), p.mode);
                    if workload.rpc == Rpc::Check {
                        checks[side] = Some((
                            p.latency.value_at_quantile(0.5),
                            p.throughput(),
                            p.latency.value_at_quantile(0.99),
                        ));
                    }
                    match rows.iter_mut().find(|r| &r.label == label) {
                        Some(row) => row.absorb(p),
                        None => rows.push(p),
                    }
                }
            }
            if let [Some(plain), Some(tls)] = checks {
                eprintln!(
                    "loadgen: round {}/{rounds} ({row}): Check p50 plaintext {} µs, mTLS {} µs; \
                     req/s plaintext {:.0}, mTLS {:.0}",
                    round + 1,
                    plain.0,
                    tls.0,
                    plain.1,
                    tls.1
                );
                if workers == 1 {
                    ratios.0.push(tls.0 as f64 / plain.0.max(1) as f64);
                    ratios.2.push(tls.2 as f64 / plain.2.max(1) as f64);
                } else {
                    ratios.1.push(tls.1 / plain.1);
                }
            }
        }
        rows.sort_by(|a, b| a.label.cmp(&b.label));
        phases.extend(rows);
    }

    // New connections, one Check each: the handshake's price.
    let kinds = [
        ("m3a", Transport::Plaintext, Handshake::None),
        ("m3b", Transport::Mtls, Handshake::Full),
        ("m3c", Transport::Mtls, Handshake::Resumed),
    ];
    if kinds.iter().any(|(label, ..)| wants(label)) {
        // The resumed row needs a ticket from an earlier connection of the shared material.
        drop(dial.warm(Transport::Mtls, 1).await?);
        let per_round = settings.handshakes.div_ceil(rounds).max(1);
        let mut rows: Vec<PhaseResult> = Vec::new();
        for round in 0..rounds {
            let mut order = kinds.to_vec();
            order.rotate_left(round % kinds.len());
            for (label, transport, handshake) in order {
                if !wants(label) {
                    continue;
                }
                let p =
                    new_connections(label, &dial, transport, handshake, check, per_round).await?;
                match rows.iter_mut().find(|r| r.label == label) {
                    Some(row) => row.absorb(p),
                    None => rows.push(p),
                }
            }
        }
        for row in &mut rows {
            // One connection per call, over all rounds.
            row.connections = usize::try_from(row.ok + row.errors).unwrap_or(usize::MAX);
        }
        rows.sort_by(|a, b| a.label.cmp(&b.label));
        phases.extend(rows);
    }
    Ok(Measured {
        phases,
        round_ratios: ratios.0,
        round_p99_ratios: ratios.2,
        saturated_round_ratios: ratios.1,
    })
}

/// Opens `count` connections one after another (after [`CONNECTION_WARMUP`] unrecorded ones),
/// each for one Check, and closes it. Latency: from the call (TCP connect, TLS handshake,
/// HTTP/2 preface and settings, the Check) to its answer; CPU: the server's and the generator's
/// over the measured connections, teardown included. Channels (and, for full handshakes, their
/// TLS material) are made before the clock starts.
async fn new_connections(
    label: &str,
    dial: &Dial,
    transport: Transport,
    handshake: Handshake,
    workload: &Workload,
    count: usize,
) -> anyhow::Result<PhaseResult> {
    let make = |n: usize| {
        (0..n)
            .map(|_| dial.clients(transport, handshake))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    for (i, mut clients) in make(CONNECTION_WARMUP)?.into_iter().enumerate() {
        let _ = workload.call(&mut clients, i).await;
    }
    let fresh = make(count)?;
    let mut latency = histogram();
    let (mut ok, mut errors, mut first_error, mut decisions) = (0, 0, None, 0);
    let loads_before = dial.engine.store_loads();
    let cpu_before = Snapshot::now();
    let started = Instant::now();
    for (i, mut clients) in fresh.into_iter().enumerate() {
        let sent = Instant::now();
        let result = workload.call(&mut clients, i).await;
        let done = Instant::now();
        drop(clients);
        match result {
            Ok(d) => {
                ok += 1;
                decisions += d;
                latency.saturating_record(micros(done - sent));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    // Let the last connection's teardown reach the server before reading its CPU.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cpu = cpu_before.until(&Snapshot::now());
    Ok(PhaseResult {
        label: label.to_owned(),
        rpc: workload.rpc,
        mode: match handshake {
            Handshake::None => "new plaintext connection per Check".to_owned(),
            Handshake::Full => "new mTLS connection per Check, full handshake".to_owned(),
            Handshake::Resumed => "new mTLS connection per Check, resumed session".to_owned(),
        },
        in_flight: 1,
        connections: count,
        elapsed,
        ok,
        errors,
        first_error,
        decisions,
        latency,
        send_lag: None,
        dropped: 0,
        store_loads: dial.engine.store_loads() - loads_before,
        peak_loads: 0,
        cpu,
    })
}

fn find<'a>(m: &'a Measured, label: &str) -> Option<&'a PhaseResult> {
    m.phases.iter().find(|p| p.label == label)
}

fn clean(p: &PhaseResult) -> bool {
    p.errors == 0 && p.ok > 0
}

/// Server CPU per request (or per connection), µs.
fn server_cpu_us(p: &PhaseResult) -> Option<f64> {
    p.server_cpu_per_request_us().map(|(c, _)| c)
}

/// Generator CPU per request (or per connection), µs.
fn generator_cpu_us(p: &PhaseResult) -> Option<f64> {
    (p.cpu.valid && p.ok > 0).then(|| p.cpu.generator.as_secs_f64() * 1e6 / p.ok as f64)
}

/// The target's verdict: mTLS Check p50 and p99 at 1 in flight within [`TARGET_FACTOR`] of
/// plaintext's, and the ratios measured. `None` when rows m1b and m1d did not both run.
pub fn verdict(m: &Measured) -> Option<(bool, f64, f64)> {
    let (plain, tls) = (find(m, "m1b")?, find(m, "m1d")?);
    let ratio = |q: f64| {
        tls.latency.value_at_quantile(q) as f64 / plain.latency.value_at_quantile(q).max(1) as f64
    };
    let (p50, p99) = (ratio(0.5), ratio(0.99));
    Some((
        clean(plain) && clean(tls) && p50 <= TARGET_FACTOR && p99 <= TARGET_FACTOR,
        p50,
        p99,
    ))
}

/// The `--mtls` section of BENCHMARKS.md.
pub fn render(setup: &Setup, m: &Measured) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "## Mutual TLS: what it costs a Check (issue 15)\n");
    let _ = writeln!(
        w,
        "Run {} on {} CPUs (`{}`, kernel `{}`), load average {} at the start and {} at the end, \
         commit {}{}. Regenerate this section (the rest of the file is kept) with:\n",
        setup.date,
        setup.nproc,
        setup.cpu,
        setup.kernel,
        setup.loadavg.0,
        setup.loadavg.1,
        setup.commit,
        if setup.quick {
            " (`--quick`: smoke run, numbers not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(w, "```sh\n{}\n```\n", setup.command);
    let _ = writeln!(
        w,
        "One consent service (one engine, one warm cache; {}; {} subjects) on its own {}-thread \
         runtime, served on two ports: plaintext, the caller known by its bearer token; and mutual \
         TLS as `consentgate up --mtls` serves it (rustls 0.23 with ring, TLS 1.3, ECDSA P-256 \
         certificates from `consentgate::dev_certs`, client certificates required, \
         `recommendation-service` known by its certificate's SPIFFE ID and sending no token). The \
         generator (its own {}-thread runtime) dials both as a gate dials consent (`Dialer`, TCP_NODELAY, \
         loopback). Rows m1 and m2 run as {} interleaved rounds (plaintext then mTLS, then the \
         other way round, …), {:.1} s measured per row in all, each round after a warm-up of its \
         own; the connections are opened before the first round (warm). Rows m3 open {} \
         connections per row, interleaved the same way.\n",
        setup.database,
        thousands(setup.subjects as f64),
        setup.threads.0,
        setup.threads.1,
        setup.rounds,
        setup.duration.0,
        m.phases
            .iter()
            .find(|p| p.label.starts_with("m3"))
            .map_or("no".to_owned(), |p| thousands(
                p.ok as f64 + p.errors as f64
            )),
    );
    let worst = m
        .phases
        .iter()
        .filter(|p| p.cpu.valid)
        .map(|p| p.cpu.others)
        .fold(0.0_f64, f64::max);
    if worst > 0.10 {
        let _ = writeln!(
            w,
            "> **Noisy run:** other processes used up to {:.0}% of the machine's CPU during the \
             measured rows; both sides of every ratio ran interleaved under the same noise, but \
             absolute numbers are disturbed.\n",
            worst * 100.0
        );
    }
    let _ = writeln!(w, "| Target | Measured | Result |\n|---|---|---|");
    match verdict(m) {
        Some((pass, p50, p99)) => {
            let _ = writeln!(
                w,
                "| mTLS `Check` at 1 in flight within {TARGET_FACTOR}× of plaintext `Check`, warm \
                 connections (p50 and p99) | p50 {p50:.2}×, p99 {p99:.2}× | {} |",
                if pass { "**PASS**" } else { "**FAIL**" }
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| mTLS `Check` at 1 in flight within {TARGET_FACTOR}× of plaintext | not measured | — |"
            );
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(
        w,
        "| Row | RPC | Load | Conns | Requests | Req/s | p50 | p99 | p99.9 | max | Server CPU/req (run-queue wait) | Generator CPU/req | Store loads | Other procs' CPU | Errors |"
    );
    let _ = writeln!(
        w,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for p in &m.phases {
        let h = &p.latency;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            p.rpc.name(),
            p.mode,
            thousands(p.connections as f64),
            thousands(p.ok as f64),
            thousands(p.throughput()),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            p.server_cpu_per_request_us()
                .map_or_else(|| "—".to_owned(), |(c, w)| format!("{c:.1} µs ({w:.1})")),
            generator_cpu_us(p).map_or_else(|| "—".to_owned(), |c| format!("{c:.1} µs")),
            p.store_loads,
            if p.cpu.valid {
                format!("{:.0}%", p.cpu.others * 100.0)
            } else {
                "—".to_owned()
            },
            p.errors
        );
    }
    let _ = writeln!(w);
    for p in &m.phases {
        if let Some(e) = &p.first_error {
            let _ = writeln!(w, "First error in row {}: `{e}`\n", p.label);
        }
    }

    // mTLS ÷ plaintext, side by side.
    let mut lines: Vec<(String, String, String, f64)> = Vec::new();
    let mut compare = |what: &str,
                       plain: &str,
                       tls: &str,
                       value: &dyn Fn(&PhaseResult) -> Option<f64>,
                       show: &dyn Fn(f64) -> String| {
        if let (Some(a), Some(b)) = (find(m, plain), find(m, tls))
            && let (Some(x), Some(y)) = (value(a), value(b))
        {
            lines.push((what.to_owned(), show(x), show(y), y / x));
        }
    };
    let q = |q: f64| move |p: &PhaseResult| Some(p.latency.value_at_quantile(q) as f64);
    let latency = |v: f64| us(v as u64);
    let rate = |v: f64| format!("{} req/s", thousands(v));
    let cpu = |v: f64| format!("{v:.1} µs");
    let throughput = |p: &PhaseResult| Some(p.throughput());
    compare(
        "Check p50, 1 in flight (m1b, m1d)",
        "m1b",
        "m1d",
        &q(0.5),
        &latency,
    );
    compare("Check p99, 1 in flight", "m1b", "m1d", &q(0.99), &latency);
    compare("Check req/s, 1 in flight", "m1b", "m1d", &throughput, &rate);
    compare(
        "Check server CPU/req, 1 in flight",
        "m1b",
        "m1d",
        &server_cpu_us,
        &cpu,
    );
    compare(
        "Health p50, 1 in flight (m1a, m1c): the floor",
        "m1a",
        "m1c",
        &q(0.5),
        &latency,
    );
    compare("Health p99, 1 in flight", "m1a", "m1c", &q(0.99), &latency);
    compare(
        "Check req/s, 64 in flight (m2b, m2d)",
        "m2b",
        "m2d",
        &throughput,
        &rate,
    );
    compare(
        "Check server CPU/req, 64 in flight",
        "m2b",
        "m2d",
        &server_cpu_us,
        &cpu,
    );
    compare(
        "Health req/s, 64 in flight (m2a, m2c)",
        "m2a",
        "m2c",
        &throughput,
        &rate,
    );
    compare(
        "New connection + first Check p50 (m3a, m3b: full handshake)",
        "m3a",
        "m3b",
        &q(0.5),
        &latency,
    );
    compare(
        "New connection + first Check p99, full handshake",
        "m3a",
        "m3b",
        &q(0.99),
        &latency,
    );
    compare(
        "New connection + first Check p50 (m3a, m3c: resumed)",
        "m3a",
        "m3c",
        &q(0.5),
        &latency,
    );
    compare(
        "New connection + first Check p99, resumed",
        "m3a",
        "m3c",
        &q(0.99),
        &latency,
    );
    if !lines.is_empty() {
        let _ = writeln!(
            w,
            "| Measure | Plaintext | mTLS | mTLS ÷ plaintext |\n|---|--:|--:|--:|"
        );
        for (what, a, b, r) in &lines {
            let _ = writeln!(w, "| {what} | {a} | {b} | {r:.2}× |");
        }
        let _ = writeln!(w);
    }
    let rounds = |r: &[f64], what: &str| {
        (!r.is_empty()).then(|| {
            format!(
                "{what} per interleaved round: {}.",
                r.iter()
                    .map(|x| format!("{x:.2}×"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    };
    let per_round: Vec<String> = [
        rounds(&m.round_ratios, "mTLS ÷ plaintext Check p50 at 1 in flight"),
        rounds(&m.round_p99_ratios, "Its p99"),
        rounds(
            &m.saturated_round_ratios,
            "mTLS ÷ plaintext Check req/s at 64 in flight",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !per_round.is_empty() {
        let _ = writeln!(w, "{}\n", per_round.join(" "));
    }
    let spread = m
        .round_p99_ratios
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
    if spread.1 > 2.0 * spread.0 {
        let _ = writeln!(
            w,
            "The per-round p99 ratios range from {:.2}× to {:.2}×: in this run the tails at 1 in \
             flight are stalls from other processes (see *Other procs' CPU*), which hit one side \
             or the other by chance, so the p99 comparison says little about the transport; the \
             p50 does.\n",
            spread.0, spread.1
        );
    }

    // The handshake, in words.
    let extra = |row: &str| -> Option<(u64, u64, f64, f64)> {
        let (plain, tls) = (find(m, "m3a")?, find(m, row)?);
        let q = |p: &PhaseResult, q: f64| p.latency.value_at_quantile(q);
        Some((
            q(tls, 0.5).saturating_sub(q(plain, 0.5)),
            q(tls, 0.99).saturating_sub(q(plain, 0.99)),
            server_cpu_us(tls)? - server_cpu_us(plain)?,
            generator_cpu_us(tls)? - generator_cpu_us(plain)?,
        ))
    };
    if let Some((p50, p99, server, client)) = extra("m3b") {
        let _ = write!(
            w,
            "**Handshake cost.** A new mTLS connection (full handshake) takes {} more than a \
             plaintext one to answer its first Check at p50 ({} more at p99), and costs the server \
             {server:.0} µs and the caller {client:.0} µs more CPU (connection setup and teardown \
             included on both sides of the difference).",
            us(p50),
            us(p99)
        );
        if let Some((p50, p99, server, client)) = extra("m3c") {
            let _ = write!(
                w,
                " A resumed session (TLS 1.3 ticket: no certificates signed or verified) costs {} \
                 more at p50 ({} at p99), {server:.0} µs more server CPU and {client:.0} µs more \
                 caller CPU.",
                us(p50),
                us(p99)
            );
        }
        let _ = writeln!(
            w,
            " Connections are long-lived (a gate keeps one per consent replica), so this is paid \
             on start, on reconnects and after a replica restarts (its session cache is gone: \
             full handshakes), not per call.\n"
        );
    }
    let _ = writeln!(
        w,
        "Rows: **m1a–d** one connection per transport, one request at a time (closed loop; \
         latency from the actual send); **m2a–d** 64 workers over {} connections per transport \
         (saturated; latencies are queueing); **m3a–c** a new connection per Check, one after \
         another, closed after its answer (latency: TCP connect, TLS handshake, HTTP/2 preface \
         and settings, the Check). *Server CPU/req* is the on-CPU time of the server's threads \
         per request (per connection in m3), *Generator CPU/req* the caller's; the same engine \
         answers both ports.\n",
        m.phases
            .iter()
            .find(|p| p.label.starts_with("m2"))
            .map_or(0, |p| p.connections)
    );
    md
}
