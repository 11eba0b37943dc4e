//! What the consent service tells Prometheus: decisions by purpose, verdict and reason; the
//! personalization level served; consent writes by kind with their durable-commit latency; the
//! ledger's length, how many entries await a signed checkpoint, and ledger verifications.
//!
//! Label values come from the policy (purposes) and the decision rules (verdicts, reasons,
//! levels), never from a request's subject.

use crate::engine::Engine;
use crate::store::LedgerExtent;
use consentgate_policy::{Decision, Personalization, Verdict};
use consentgate_runtime::Metrics;
use consentgate_runtime::metrics::{CounterFamily, Kind};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DECISIONS: &str = "consentgate_consent_decisions_total";
const LEVELS: &str = "consentgate_consent_personalization_levels_total";
const WRITES: &str = "consentgate_consent_writes_total";
const COMMIT: &str = "consentgate_consent_commit_duration_seconds";
const LEDGER_ENTRIES: &str = "consentgate_consent_ledger_entries";
const UNSIGNED: &str = "consentgate_consent_ledger_unsigned_entries";
const CHECKPOINT_AGE: &str = "consentgate_consent_ledger_last_checkpoint_age_seconds";
const VERIFICATIONS: &str = "consentgate_consent_ledger_verifications_total";
const GROUP_COMMITS: &str = "consentgate_consent_group_commits_total";
const GROUP_COMMIT_WRITES: &str = "consentgate_consent_group_commit_writes_total";

/// How often the ledger's extent is read for the gauges.
pub const LEDGER_EVERY: Duration = Duration::from_secs(10);

/// The consent service's instruments.
pub struct ConsentMetrics {
    decisions: CounterFamily<3>,
    /// By [`Personalization`] rung, in ladder order (see [`LADDER`]).
    levels: [Counter; 5],
    writes: CounterFamily<2>,
    commit: Histogram,
    ledger_entries: Gauge,
    unsigned: Gauge,
    verified_ok: Counter,
    verified_broken: Counter,
    /// When the last checkpoint's entry was written, in Unix µs (0: none yet); the age gauge is
    /// computed from it at each scrape, so it grows between the ledger reads.
    last_checkpoint_micros: Arc<AtomicU64>,
}

impl ConsentMetrics {
    /// Registers the instruments in `metrics`.
    pub fn new(metrics: &Metrics) -> ConsentMetrics {
        describe(metrics);
        let last_checkpoint_micros = Arc::new(AtomicU64::new(0));
        let age = metrics.gauge(CHECKPOINT_AGE, &[]);
        let at = last_checkpoint_micros.clone();
        metrics.on_scrape(move || {
            let at = at.load(Ordering::Relaxed);
            if at > 0 {
                let now =
                    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000)
                        .unwrap_or(0);
                age.set(now.saturating_sub(at) as f64 / 1e6);
            }
        });
        ConsentMetrics {
            last_checkpoint_micros,
            decisions: CounterFamily::new(metrics, DECISIONS, ["purpose", "verdict", "reason"]),
            levels: LADDER.map(|rung| metrics.counter(LEVELS, &[("level", level(rung))])),
            writes: CounterFamily::new(metrics, WRITES, ["kind", "outcome"]),
            commit: metrics.histogram(COMMIT, &[]),
            ledger_entries: metrics.gauge(LEDGER_ENTRIES, &[]),
            unsigned: metrics.gauge(UNSIGNED, &[]),
            verified_ok: metrics.counter(VERIFICATIONS, &[("result", "ok")]),
            verified_broken: metrics.counter(VERIFICATIONS, &[("result", "broken")]),
        }
    }

    /// A decision was answered (Check or one item of BatchCheck).
    pub fn decided(&self, purpose: &str, decision: &Decision) {
        let verdict = match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Partial => "partial",
            Verdict::Deny => "deny",
        };
        let reason = decision.reason.map_or("NONE", |r| r.code());
        self.decisions.get([purpose, verdict, reason]).increment(1);
        let rung = LADDER
            .iter()
            .position(|r| *r == decision.personalization)
            .unwrap_or(0);
        self.levels[rung].increment(1);
    }

    /// A consent write was answered: recorded (after its durable commit, which took `took`) or
    /// replayed from its idempotency record.
    pub fn wrote(&self, kind: &str, replayed: bool, took: Duration) {
        let outcome = if replayed { "replayed" } else { "recorded" };
        self.writes.get([kind, outcome]).increment(1);
        if !replayed {
            self.commit.record(took.as_secs_f64());
        }
    }

    /// `VerifyLedger` walked the chain.
    pub fn verified(&self, ok: bool) {
        if ok {
            self.verified_ok.increment(1);
        } else {
            self.verified_broken.increment(1);
        }
    }

    fn ledger(&self, extent: LedgerExtent) {
        self.ledger_entries.set(extent.last_entry as f64);
        self.unsigned
            .set(extent.last_entry.saturating_sub(extent.last_checkpoint) as f64);
        if let Some(at) = extent.last_checkpoint_at {
            let micros = u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0);
            self.last_checkpoint_micros.store(micros, Ordering::Relaxed);
        }
    }
}

/// Reports the write path's group commits at each scrape: transactions committed and the writes
/// they carried, so that `rate(writes) / rate(commits)` is the mean batch. A mean near 1 under
/// concurrent writes means writes are not sharing commits, and durable writes per second are
/// bounded by commits per second.
pub fn follow_group_commits(metrics: &Metrics, engine: Arc<Engine>) {
    let commits = metrics.counter(GROUP_COMMITS, &[]);
    let writes = metrics.counter(GROUP_COMMIT_WRITES, &[]);
    // Weak: the metrics registry must not keep a stopped engine (and its pool) alive.
    let engine = Arc::downgrade(&engine);
    metrics.on_scrape(move || {
        if let Some(engine) = engine.upgrade() {
            let (c, w) = engine.group_commits();
            commits.absolute(c);
            writes.absolute(w);
        }
    });
}

/// Reads the ledger's extent every [`LEDGER_EVERY`] into the gauges, until the engine closes.
pub async fn follow_ledger(engine: Arc<Engine>, metrics: Arc<ConsentMetrics>) {
    let mut ticker = tokio::time::interval(LEDGER_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = engine.closed() => return,
        }
        match engine.store().ledger_extent().await {
            Ok(extent) => metrics.ledger(extent),
            Err(e) => {
                tracing::warn!(error = %e.log_safe(), "cannot read the ledger's extent for metrics")
            }
        }
    }
}

/// The personalization ladder, lowest rung first.
const LADDER: [Personalization; 5] = [
    Personalization::Anonymous,
    Personalization::Contextual,
    Personalization::Segment,
    Personalization::Limited,
    Personalization::Profiled,
];

/// The ladder rung's name, as the policy spells it.
fn level(personalization: Personalization) -> &'static str {
    match personalization {
        Personalization::Anonymous => "anonymous",
        Personalization::Contextual => "contextual",
        Personalization::Segment => "segment",
        Personalization::Limited => "limited",
        Personalization::Profiled => "profiled",
    }
}

fn describe(m: &Metrics) {
    m.describe(
        DECISIONS,
        Kind::Counter,
        None,
        "Decisions answered (Check and BatchCheck items) by purpose, verdict and top-level reason code (NONE for an allow).",
    );
    m.describe(
        LEVELS,
        Kind::Counter,
        None,
        "Decisions answered by the personalization level they allowed.",
    );
    m.describe(
        WRITES,
        Kind::Counter,
        None,
        "Consent writes answered, by kind (grant, refuse, withdraw, signal, link, restrict, erase) and outcome (recorded, or replayed from an idempotency key).",
    );
    m.describe(
        COMMIT,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time to record a consent write, durable commit included (replays excluded).",
    );
    m.describe(
        GROUP_COMMITS,
        Kind::Counter,
        None,
        "Transactions the consent write path committed, each carrying one or more writes (group commit).",
    );
    m.describe(
        GROUP_COMMIT_WRITES,
        Kind::Counter,
        None,
        "Consent writes those transactions carried: divided by the commits, the mean batch.",
    );
    m.describe(
        LEDGER_ENTRIES,
        Kind::Gauge,
        None,
        "Entries in the consent ledger (hash chain).",
    );
    m.describe(
        UNSIGNED,
        Kind::Gauge,
        None,
        "Ledger entries after the last signed checkpoint (stays below the checkpoint interval unless signing fails).",
    );
    m.describe(
        CHECKPOINT_AGE,
        Kind::Gauge,
        None,
        "Seconds since the entry covered by the last signed checkpoint was written (absent before the first checkpoint). Checkpoints come every 64 entries, so this grows while writes are quiet: alert on unsigned entries, read this for how old the signed anchor is.",
    );
    m.describe(
        VERIFICATIONS,
        Kind::Counter,
        None,
        "VerifyLedger walks by result (ok, broken).",
    );
}
