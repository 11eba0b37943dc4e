//! What the profile service tells Prometheus: gated reads by purpose and outcome, what reads
//! withheld (redactions by reason), collection items refused by reason, the access log's queue,
//! append and flush, erasure requests by state, and rows the retention sweep deleted.
//!
//! Label values come from the policy (purposes) and the decision rules (reasons), never from a
//! subject, an attribute or an event.

use consentgate_gate::Clearance;
use consentgate_proto::consent::v1::Verdict;
use consentgate_runtime::Metrics;
use consentgate_runtime::metrics::{CounterFamily, Kind};
use metrics::{Counter, Histogram, Unit};
use std::time::Duration;

const READS: &str = "consentgate_profile_reads_total";
const REDACTIONS: &str = "consentgate_profile_redacted_items_total";
const REFUSALS: &str = "consentgate_profile_collection_refusals_total";
const QUEUE: &str = "consentgate_profile_access_log_queue_depth";
const APPEND: &str = "consentgate_profile_access_log_append_duration_seconds";
const FLUSH: &str = "consentgate_profile_access_log_flush_duration_seconds";
const LOG_FAILURES: &str = "consentgate_profile_access_log_failures_total";
const ERASURES: &str = "consentgate_profile_erasure_requests_total";
const RETENTION: &str = "consentgate_profile_retention_deleted_rows_total";

/// The profile service's instruments.
pub struct ProfileMetrics {
    registry: Metrics,
    reads: CounterFamily<2>,
    redactions: CounterFamily<1>,
    append: Histogram,
    flush: Histogram,
    append_failures: Counter,
    flush_failures: Counter,
    retention: Counter,
}

/// How a gated read ended, as a label.
#[derive(Debug, Clone, Copy)]
pub enum ReadOutcome {
    /// Everything asked about was allowed.
    Allowed,
    /// Some categories were allowed.
    Partial,
    /// Nothing was allowed.
    Denied,
    /// No decision could be had: the read failed closed.
    Unavailable,
}

impl ProfileMetrics {
    /// Registers the instruments in `metrics`.
    pub fn new(metrics: &Metrics) -> ProfileMetrics {
        describe(metrics);
        ProfileMetrics {
            registry: metrics.clone(),
            reads: CounterFamily::new(metrics, READS, ["purpose", "outcome"]),
            redactions: CounterFamily::new(metrics, REDACTIONS, ["reason"]),
            append: metrics.histogram(APPEND, &[]),
            flush: metrics.histogram(FLUSH, &[]),
            append_failures: metrics.counter(LOG_FAILURES, &[("stage", "append")]),
            flush_failures: metrics.counter(LOG_FAILURES, &[("stage", "flush")]),
            retention: metrics.counter(RETENTION, &[]),
        }
    }

    /// Metrics that count nothing (tests and tools that build a service without a registry).
    pub fn disabled() -> ProfileMetrics {
        ProfileMetrics::new(&Metrics::disabled())
    }

    /// A gated read for `purpose` was decided (or failed closed).
    pub fn read(&self, purpose: &str, outcome: ReadOutcome) {
        let outcome = match outcome {
            ReadOutcome::Allowed => "allowed",
            ReadOutcome::Partial => "partial",
            ReadOutcome::Denied => "denied",
            ReadOutcome::Unavailable => "unavailable",
        };
        self.reads.get([purpose, outcome]).increment(1);
    }

    /// A read withheld `items` items for `reason`.
    pub fn redacted(&self, reason: &str, items: u32) {
        self.redactions.get([reason]).increment(u64::from(items));
    }

    /// A collection item was refused for `reason`.
    pub fn refused(&self, reason: &str) {
        self.registry
            .counter(REFUSALS, &[("reason", reason)])
            .increment(1);
    }

    /// An access-log group commit took `took`, or failed.
    pub fn appended(&self, took: Duration, ok: bool) {
        self.append.record(took.as_secs_f64());
        if !ok {
            self.append_failures.increment(1);
        }
    }

    /// Chaining the access journal took `took`, or failed.
    pub fn flushed(&self, took: Duration, ok: bool) {
        self.flush.record(took.as_secs_f64());
        if !ok {
            self.flush_failures.increment(1);
        }
    }

    /// The access log's queue depth, read at each scrape.
    pub fn queue_depth(&self, depth: impl Fn() -> usize + Send + Sync + 'static) {
        let gauge = self.registry.gauge(QUEUE, &[]);
        self.registry.on_scrape(move || gauge.set(depth() as f64));
    }

    /// An erasure request was answered in `state` (`completed`, `in_progress`, or `replayed`
    /// for a retry of a completed one).
    pub fn erasure(&self, state: &str) {
        self.registry
            .counter(ERASURES, &[("state", state)])
            .increment(1);
    }

    /// The retention sweep deleted `rows`.
    pub fn retained(&self, rows: u64) {
        self.retention.increment(rows);
    }
}

impl ReadOutcome {
    /// The outcome a decision gives a read.
    pub fn of(decision: &Clearance) -> ReadOutcome {
        match decision.verdict() {
            Verdict::Allow => ReadOutcome::Allowed,
            Verdict::Partial => ReadOutcome::Partial,
            _ => ReadOutcome::Denied,
        }
    }
}

fn describe(m: &Metrics) {
    m.describe(
        READS,
        Kind::Counter,
        None,
        "Gated reads by purpose and outcome (allowed, partial, denied, unavailable: failed closed).",
    );
    m.describe(
        REDACTIONS,
        Kind::Counter,
        None,
        "Items held but withheld from reads, by reason code.",
    );
    m.describe(
        REFUSALS,
        Kind::Counter,
        None,
        "Collected items refused (nothing stored), by reason code.",
    );
    m.describe(
        QUEUE,
        Kind::Gauge,
        None,
        "Access-log entries waiting for their group commit (reads wait with them).",
    );
    m.describe(
        APPEND,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time to make one group of access-log entries durable.",
    );
    m.describe(
        FLUSH,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time to chain journaled access-log entries into the log.",
    );
    m.describe(
        LOG_FAILURES,
        Kind::Counter,
        None,
        "Access-log failures by stage (append: the reads failed; flush: chaining is retried).",
    );
    m.describe(
        ERASURES,
        Kind::Counter,
        None,
        "Erasure requests answered, by state (completed, in_progress, replayed).",
    );
    m.describe(
        RETENTION,
        Kind::Counter,
        None,
        "Rows the retention sweep deleted.",
    );
}
