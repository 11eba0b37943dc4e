//! The Markdown report: results table, targets with PASS/FAIL, the cache proof, the in-process
//! breakdown, and how the numbers were produced (command, date, machine).

use crate::breakdown::{Breakdown, format_ns};
use crate::driver::{PhaseResult, Rpc};
use std::fmt::Write as _;

/// Check p50 at 1 in flight, µs.
pub const TARGET_P50_US: u64 = 150;
/// Check p99 at 1 in flight, µs.
pub const TARGET_P99_US: u64 = 500;
/// Saturated Check throughput as a fraction of saturated health throughput.
pub const TARGET_RATIO: f64 = 0.70;
/// BatchCheck category decisions per second.
pub const TARGET_BATCH_DECISIONS: f64 = 200_000.0;

/// Above this share of the machine used by other processes, the report warns that it is noisy.
const NOISE_THRESHOLD: f64 = 0.10;

/// Store loads around one step of the cache proof.
pub struct LoadStep {
    /// What was done.
    pub what: String,
    /// Engine::store_loads before.
    pub before: u64,
    /// Engine::store_loads after.
    pub after: u64,
    /// What the new loads should be.
    pub expected: String,
}

impl LoadStep {
    /// New loads during the step.
    pub fn new_loads(&self) -> u64 {
        self.after - self.before
    }
}

/// How the run was set up.
pub struct Setup {
    /// The command that reproduces the run.
    pub command: String,
    /// UTC date and time.
    pub date: String,
    /// `nproc`.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// `/proc/loadavg` at the start and the end.
    pub loadavg: (String, String),
    /// Git commit, if known.
    pub commit: String,
    /// The database.
    pub database: String,
    /// Seeded subjects.
    pub subjects: usize,
    /// Seeding: grants per second through the API.
    pub grants_per_sec: f64,
    /// Measured window per phase, and warm-up, seconds.
    pub duration: (f64, f64),
    /// Server and generator worker threads.
    pub threads: (usize, usize),
    /// Whether `--quick` shortened the phases.
    pub quick: bool,
    /// Interleaved rounds of rows 1 and 2.
    pub rounds: usize,
}

/// Everything the run measured.
pub struct Results {
    /// Setup.
    pub setup: Setup,
    /// Phases in order.
    pub phases: Vec<PhaseResult>,
    /// Saturated Check/health throughput ratio of each interleaved round.
    pub round_ratios: Vec<f64>,
    /// The cache proof.
    pub loads: Vec<LoadStep>,
    /// The in-process breakdown.
    pub breakdown: Option<Breakdown>,
}

/// A target's outcome.
pub struct Verdict {
    /// The target in words.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met? None when the run did not measure it (`--only`).
    pub pass: Option<bool>,
}

fn find<'a>(phases: &'a [PhaseResult], rpc: Rpc, label_prefix: &str) -> Option<&'a PhaseResult> {
    phases
        .iter()
        .find(|p| p.rpc == rpc && p.label.starts_with(label_prefix))
}

fn clean(p: &PhaseResult) -> bool {
    p.errors == 0 && p.dropped == 0 && p.ok > 0
}

/// A latency for a table: µs, or ms with one decimal from 10 ms up.
pub fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

/// A rounded number with thousands separators.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Evaluates the targets.
pub fn verdicts(results: &Results) -> Vec<Verdict> {
    let phases = &results.phases;
    let mut out = Vec::new();
    match find(phases, Rpc::Check, "1") {
        Some(p) => {
            let (p50, p99) = (
                p.latency.value_at_quantile(0.50),
                p.latency.value_at_quantile(0.99),
            );
            out.push(Verdict {
                target: format!("Check p50 ≤ {TARGET_P50_US} µs at 1 in flight"),
                measured: us(p50),
                pass: Some(clean(p) && p50 <= TARGET_P50_US),
            });
            out.push(Verdict {
                target: format!("Check p99 ≤ {TARGET_P99_US} µs at 1 in flight"),
                measured: us(p99),
                pass: Some(clean(p) && p99 <= TARGET_P99_US),
            });
        }
        None => out.push(Verdict {
            target: "Check latency at 1 in flight".into(),
            measured: "not measured".into(),
            pass: None,
        }),
    }
    match (
        find(phases, Rpc::Health, "2"),
        find(phases, Rpc::Check, "2"),
    ) {
        (Some(h), Some(c)) => {
            let ratio = c.throughput() / h.throughput();
            out.push(Verdict {
                target: format!(
                    "Saturated Check throughput ≥ {:.0}% of health's",
                    TARGET_RATIO * 100.0
                ),
                measured: format!(
                    "{:.0}% ({} vs {} req/s)",
                    ratio * 100.0,
                    thousands(c.throughput()),
                    thousands(h.throughput())
                ),
                pass: Some(clean(h) && clean(c) && ratio >= TARGET_RATIO),
            });
        }
        _ => out.push(Verdict {
            target: "Saturated Check/health throughput".into(),
            measured: "not measured".into(),
            pass: None,
        }),
    }
    match find(phases, Rpc::BatchCheck, "4") {
        Some(b) => out.push(Verdict {
            target: format!(
                "BatchCheck ≥ {} category decisions/s",
                thousands(TARGET_BATCH_DECISIONS)
            ),
            measured: format!("{}/s", thousands(b.decisions_per_sec())),
            pass: Some(clean(b) && b.decisions_per_sec() >= TARGET_BATCH_DECISIONS),
        }),
        None => out.push(Verdict {
            target: "BatchCheck decisions/s".into(),
            measured: "not measured".into(),
            pass: None,
        }),
    }
    let warm = results.loads.iter().find(|s| s.what.starts_with("Warm"));
    let verify = results.loads.iter().find(|s| s.what.starts_with("Check"));
    out.push(match (warm, verify) {
        (Some(w), Some(v)) => Verdict {
            target: "A warm fresh cache answers Check without touching the database".into(),
            measured: format!(
                "{} new store loads after warming ({} while warming)",
                v.new_loads(),
                w.new_loads()
            ),
            pass: Some(v.new_loads() == 0 && w.new_loads() > 0),
        },
        _ => Verdict {
            target: "A warm fresh cache answers Check without touching the database".into(),
            measured: "not measured".into(),
            pass: None,
        },
    });
    out
}

/// Renders the whole report.
pub fn render(results: &Results) -> String {
    let s = &results.setup;
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# consentgate benchmarks\n");
    let _ = writeln!(
        w,
        "Consent service (`services/consent`) under the open-loop load generator in `benches/` \
         (`loadgen`). Regenerate this file with:\n"
    );
    let _ = writeln!(w, "```sh\n{}\n```\n", s.command);
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| Date | {} |", s.date);
    let _ = writeln!(
        w,
        "| Machine | {} CPUs (`nproc`), kernel `{}` (`uname -r`), {} |",
        s.nproc, s.kernel, s.cpu
    );
    let _ = writeln!(
        w,
        "| Load average (1/5/15 min) | start `{}`, end `{}` |",
        s.loadavg.0, s.loadavg.1
    );
    let _ = writeln!(w, "| Commit | {} |", s.commit);
    let _ = writeln!(w, "| Database | {} |", s.database);
    let _ = writeln!(
        w,
        "| Data | {} subjects, each with an explicit grant of `personalize.content.profiled`, seeded through `Grant` ({} grants/s) |",
        thousands(s.subjects as f64),
        thousands(s.grants_per_sec)
    );
    let _ = writeln!(
        w,
        "| Process | server and generator in one process on separate Tokio runtimes (server {} worker threads, generator {}: the cores split between them, as if on separate machines); gRPC over loopback TCP with TCP_NODELAY, HTTP/2 (tonic), bearer-token auth on every call |",
        s.threads.0, s.threads.1
    );
    let _ = writeln!(
        w,
        "| Phases | {:.1} s measured after {:.1} s unrecorded warm-up each; rows 1a/1b and 2a/2b as {} interleaved rounds (a, b, a, b, …; each round a share of the window with a warm-up of its own), added up per row{} |",
        s.duration.0,
        s.duration.1,
        s.rounds,
        if s.quick {
            " (`--quick`: smoke run, numbers not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(w);
    let worst = results
        .phases
        .iter()
        .filter(|p| p.cpu.valid)
        .map(|p| p.cpu.others)
        .fold(0.0_f64, f64::max);
    if worst > NOISE_THRESHOLD {
        let _ = writeln!(
            w,
            "> **Noisy run:** other processes used up to {:.0}% of the machine's CPU during the \
             measured phases (see *Other procs' CPU*), so latencies and throughputs here are \
             disturbed. Re-run on a quiet machine before judging the targets.\n",
            worst * 100.0
        );
    }

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| Target | Measured | Result |\n|---|---|---|");
    for v in verdicts(results) {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            match v.pass {
                Some(true) => "**PASS**",
                Some(false) => "**FAIL**",
                None => "—",
            }
        );
    }
    let _ = writeln!(w);
    if let Some(p) = find(&results.phases, Rpc::Check, "1")
        && p.ok > 0
    {
        let share = p.store_loads as f64 / p.ok as f64;
        if p.store_loads > 0 {
            let _ = writeln!(
                w,
                "In row 1b, {} of {} Checks ({:.1}%) were cache misses that read the database \
                 (the cache's time-to-live expired){}.\n",
                thousands(p.store_loads as f64),
                thousands(p.ok as f64),
                share * 100.0,
                if share > 0.01 {
                    ": more than 1%, so the p99 is a store load"
                } else if share > 0.001 {
                    ": more than 0.1%, so the p99.9 is a store load"
                } else {
                    ""
                }
            );
        }
    }

    let _ = writeln!(w, "## Results\n");
    let _ = writeln!(
        w,
        "Latencies in microseconds from HDR histograms (3 significant digits). Open-loop rows \
         measure from each request's intended send time.\n"
    );
    let _ = writeln!(
        w,
        "| Row | RPC | Load | In flight | Conns | Requests | Req/s | Category decisions/s | p50 | p99 | p99.9 | max | Store loads (peak/100 ms) | Server CPU/req (run-queue wait) | Other procs' CPU | Errors |"
    );
    let _ = writeln!(
        w,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for p in &results.phases {
        let h = &p.latency;
        let errors = if p.dropped > 0 {
            format!("{} (+{} dropped)", p.errors, p.dropped)
        } else {
            p.errors.to_string()
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            p.rpc.name(),
            p.mode,
            p.in_flight,
            p.connections,
            thousands(p.ok as f64),
            thousands(p.throughput()),
            if p.rpc == Rpc::Health {
                "—".to_owned()
            } else {
                thousands(p.decisions_per_sec())
            },
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            if p.store_loads > 0 {
                format!("{} ({})", p.store_loads, p.peak_loads)
            } else {
                "0".to_owned()
            },
            p.server_cpu_per_request_us()
                .map_or_else(|| "—".to_owned(), |(c, w)| format!("{c:.1} µs ({w:.1})")),
            if p.cpu.valid {
                format!("{:.0}%", p.cpu.others * 100.0)
            } else {
                "—".to_owned()
            },
            errors
        );
    }
    let _ = writeln!(w);
    if let (Some(h), Some(c)) = (
        find(&results.phases, Rpc::Health, "2"),
        find(&results.phases, Rpc::Check, "2"),
    ) {
        let _ = writeln!(
            w,
            "Saturated Check/health throughput ratio: **{:.0}%** over the whole window; per \
             interleaved round: {}.\n",
            100.0 * c.throughput() / h.throughput(),
            results
                .round_ratios
                .iter()
                .map(|r| format!("{:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for p in &results.phases {
        if let Some(e) = &p.first_error {
            let _ = writeln!(
                w,
                "First error in row {}: `{}`\n",
                p.label,
                truncate(e, 300)
            );
        }
    }
    let lags: Vec<_> = results
        .phases
        .iter()
        .filter_map(|p| p.send_lag.as_ref().map(|l| (p, l)))
        .collect();
    if !lags.is_empty() {
        let _ = writeln!(
            w,
            "Open-loop generator lag (actual send − intended send, includes waiting for an \
             in-flight slot; already part of the latencies above):\n"
        );
        let _ = writeln!(
            w,
            "| Row | p50 | p99 | p99.9 | max |\n|---|--:|--:|--:|--:|"
        );
        for (p, l) in lags {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                p.label,
                us(l.value_at_quantile(0.5)),
                us(l.value_at_quantile(0.99)),
                us(l.value_at_quantile(0.999)),
                us(l.max())
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Cache proof (`Engine::store_loads`)\n");
    let _ = writeln!(
        w,
        "`Engine::store_loads` counts subject states read from the database (cache misses).\n"
    );
    let _ = writeln!(
        w,
        "| Step | Loads before | Loads after | New loads | Expected |\n|---|--:|--:|--:|---|"
    );
    for l in &results.loads {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            l.what,
            l.before,
            l.after,
            l.new_loads(),
            l.expected
        );
    }
    let _ = writeln!(w);

    if let Some(b) = &results.breakdown {
        let _ = writeln!(w, "## In-process breakdown of a Check (no sockets)\n");
        let _ = writeln!(
            w,
            "The same engine called directly on one generator thread over random seeded subjects \
             (2–3 categories): mean per call in the fastest of 5 rounds. Every subject is re-read \
             before each step so the rows other than the miss row are cache hits ({} store loads \
             in them). Compare with the Check rows above: the rest is transport, HTTP/2, tonic and \
             the auth layer, which the health rows measure.\n",
            b.store_loads
        );
        let _ = writeln!(w, "| Step | Mean per call |\n|---|--:|");
        for step in &b.steps {
            let _ = writeln!(w, "| {} | {} |", step.what, format_ns(step.ns_per_op));
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Encoded Check answer with `include_explanation`: {:.0} bytes on average, of which the \
             `explanation` trace is {:.0} bytes ({:.0}%); the default answer leaves out the trace and \
             the detail of allowed categories. One BatchCheck answer (1,000 × 3, default): {} bytes.\n",
            b.check_response_bytes,
            b.explanation_bytes,
            100.0 * b.explanation_bytes / b.check_response_bytes.max(1.0),
            thousands(b.batch_response_bytes as f64)
        );
        let _ = writeln!(
            w,
            "Future sizes (every poll works on, and every move copies, the whole state machine, \
             cold store-load path included): `ConsentApi::check` {} bytes, `Engine::check` {} \
             bytes, `Engine::state` {} bytes.\n",
            thousands(b.future_bytes.0 as f64),
            thousands(b.future_bytes.1 as f64),
            thousands(b.future_bytes.2 as f64)
        );
    }

    let _ = writeln!(w, "## What each row means\n");
    let _ = writeln!(
        w,
        "- **1a / 1b — 1 in flight.** One connection, one request at a time (closed loop, \
         sequential: the next request is sent when the previous answer arrives; latency from the \
         actual send). 1a is `grpc.health.v1.Health/Check` — the floor: loopback TCP, HTTP/2, \
         tonic and the auth layer with no service work. 1b is `ConsentService/Check` as \
         `recommendation-service` (role enforcer) for a random seeded subject, purpose \
         `personalize.content.profiled`, 2–3 data categories. The Check targets apply to 1b."
    );
    let _ = writeln!(
        w,
        "- **2a / 2b — saturated.** Closed loop with 64 concurrent workers over 4 HTTP/2 \
         connections: each worker sends as soon as its previous answer arrives, so the server \
         runs flat out. Req/s is the maximum throughput; latencies here are queueing-dominated. \
         The Check/health ratio (2b ÷ 2a) is the share of the transport's capacity the consent \
         service keeps when it does real work."
    );
    let _ = writeln!(
        w,
        "- **3a / 3b — open loop.** A dispatcher releases requests on a fixed schedule at the \
         target rate (a third of the lower of the two saturated throughputs unless `--open-rate` is \
         given: at a fixed rate a request costs the server far more CPU than at saturation — \
         compare *Server CPU/req* of rows 3 and 2 — and the generator shares the cores), whatever the answers do, over 4 connections with at most 64 in flight. Latency \
         is measured from each request's intended send time, so stalls and queueing appear in the \
         tail (no coordinated omission). Requests beyond a backlog bound would be dropped and \
         reported as errors."
    );
    let _ = writeln!(
        w,
        "- **4 — BatchCheck.** Closed loop; each call carries 1,000 checks × 3 categories of \
         random seeded subjects. Category decisions/s = calls/s × 3,000; the latency columns are \
         per call."
    );
    let _ = writeln!(
        w,
        "- **Server CPU/req** is the on-CPU time of the server's threads (its Tokio workers and the \
         SQLite worker threads, from `/proc/self/task/*/schedstat`) divided by the requests \
         answered; the generator's own CPU is excluded. In brackets: how long those threads \
         waited for a CPU, per request. **Other procs' CPU** is the share of \
         the machine's total CPU capacity used by other processes during the window (from \
         `/proc/stat`): above a few percent, the numbers are disturbed by outside load."
    );
    let _ = writeln!(
        w,
        "- **Store loads** in the results table are cache misses during the measured window, with \
         the most seen in any 100 ms in brackets. Once the cache is warm they should be 0: a miss \
         reads the database on the request path (see the miss row of the breakdown below), so \
         misses land in the latency tails. Entries expire after the cache's time-to-live, so a \
         run that outlasts it shows loads again; a high peak means many entries expired together \
         (a miss burst)."
    );
    let _ = writeln!(
        w,
        "- **Cache proof.** After seeding, one Check per subject warms the cache (each one a miss: \
         one load per subject); a second Check of every subject, straight after and well within \
         the cache's time-to-live, must cause zero new loads."
    );
    md
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}
