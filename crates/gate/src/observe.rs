//! What the gate tells Prometheus: how decisions were obtained (cache or consent service), the
//! state of the change stream (lease, lapses, heartbeat age, lag, reconnects), how long consent
//! changes took to reach this gate, and fail-closed answers. Read together they say how fast a
//! withdrawal is enforced here, from the metrics alone.

use ::metrics::{Counter, Gauge, Histogram, Unit};
use consentgate_runtime::Metrics;
use consentgate_runtime::metrics::Kind;
use std::time::{Duration, SystemTime};

const LOOKUPS: &str = "consentgate_gate_cache_lookups_total";
const WITHHELD: &str = "consentgate_gate_lease_withheld_allows_total";
const LEASE_LIVE: &str = "consentgate_gate_lease_live";
const LEASE_LAPSES: &str = "consentgate_gate_lease_lapses_total";
const HEARTBEAT_AGE: &str = "consentgate_gate_heartbeat_age_seconds";
const LAG: &str = "consentgate_gate_stream_lag_revisions";
const HIGH_WATER: &str = "consentgate_gate_high_water_revision";
const PROPAGATION: &str = "consentgate_gate_change_propagation_seconds";
const RECONNECTS: &str = "consentgate_gate_stream_reconnects_total";
const DIVERGED: &str = "consentgate_gate_stream_diverged_total";
const FAIL_CLOSED: &str = "consentgate_gate_fail_closed_total";
const FAST_FAILURES: &str = "consentgate_gate_breaker_fast_failures_total";
const BREAKER_OPENED: &str = "consentgate_gate_breaker_opened_total";

/// The change kinds the stream reports (a label; anything else is `other`).
const KINDS: [&str; 7] = [
    "grant", "refuse", "withdraw", "signal", "link", "erase", "restrict",
];

/// The gate's instruments, registered once when the gate starts.
pub(crate) struct GateMetrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) withheld: Counter,
    pub(crate) lapses: Counter,
    pub(crate) lag: Gauge,
    pub(crate) high_water: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) diverged: Counter,
    pub(crate) fail_closed: Counter,
    pub(crate) fast_failures: Counter,
    pub(crate) breaker_opened: Counter,
    propagation: [Histogram; KINDS.len() + 1],
    registry: Metrics,
}

impl GateMetrics {
    pub(crate) fn new(metrics: &Metrics) -> GateMetrics {
        describe(metrics);
        let lookups = |result: &str| metrics.counter(LOOKUPS, &[("result", result)]);
        let propagation = |kind: &str| metrics.histogram(PROPAGATION, &[("kind", kind)]);
        GateMetrics {
            hits: lookups("hit"),
            misses: lookups("miss"),
            withheld: metrics.counter(WITHHELD, &[]),
            lapses: metrics.counter(LEASE_LAPSES, &[]),
            lag: metrics.gauge(LAG, &[]),
            high_water: metrics.gauge(HIGH_WATER, &[]),
            reconnects: metrics.counter(RECONNECTS, &[]),
            diverged: metrics.counter(DIVERGED, &[]),
            fail_closed: metrics.counter(FAIL_CLOSED, &[]),
            fast_failures: metrics.counter(FAST_FAILURES, &[]),
            breaker_opened: metrics.counter(BREAKER_OPENED, &[]),
            propagation: std::array::from_fn(|i| propagation(KINDS.get(i).unwrap_or(&"other"))),
            registry: metrics.clone(),
        }
    }

    /// A change arrived: how long after its commit (clocks of two machines: a skew shows here,
    /// and a negative difference counts as zero).
    pub(crate) fn propagated(&self, kind: &str, committed_at: Option<SystemTime>) {
        let Some(committed_at) = committed_at else {
            return;
        };
        let took = SystemTime::now()
            .duration_since(committed_at)
            .unwrap_or(Duration::ZERO);
        let slot = KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len());
        self.propagation[slot].record(took.as_secs_f64());
    }

    /// Gauges that change by the passing of time, refreshed at each scrape.
    pub(crate) fn on_scrape(
        &self,
        live: impl Fn() -> bool + Send + Sync + 'static,
        heartbeat_age: impl Fn() -> Option<Duration> + Send + Sync + 'static,
    ) {
        let lease = self.registry.gauge(LEASE_LIVE, &[]);
        let age = self.registry.gauge(HEARTBEAT_AGE, &[]);
        self.registry.on_scrape(move || {
            lease.set(if live() { 1.0 } else { 0.0 });
            // Never a heartbeat yet: as old as can be said (the stream never came up).
            age.set(heartbeat_age().map_or(f64::INFINITY, |d| d.as_secs_f64()));
        });
    }
}

fn describe(m: &Metrics) {
    m.describe(
        FAST_FAILURES,
        Kind::Counter,
        None,
        "Reads failed closed at once because the consent service was found unreachable moments before (the breaker is open), instead of waiting out a deadline each.",
    );
    m.describe(
        BREAKER_OPENED,
        Kind::Counter,
        None,
        "Times the gate found the consent service unreachable and began failing fast (probing it every probe interval).",
    );
    m.describe(
        LOOKUPS,
        Kind::Counter,
        None,
        "Decision lookups by result: hit (served from cache) or miss (asked the consent service).",
    );
    m.describe(
        WITHHELD,
        Kind::Counter,
        None,
        "Cached allows not served because the change stream's lease had lapsed (the consent service was asked instead; also counted as misses).",
    );
    m.describe(
        LEASE_LIVE,
        Kind::Gauge,
        None,
        "1 while the change stream's heartbeat lease runs (cached allows are served), 0 otherwise.",
    );
    m.describe(
        LEASE_LAPSES,
        Kind::Counter,
        None,
        "Times the lease lapsed (each lapse counted once, however short).",
    );
    m.describe(
        HEARTBEAT_AGE,
        Kind::Gauge,
        Some(Unit::Seconds),
        "Seconds since the change stream's last heartbeat (+Inf before the first).",
    );
    m.describe(
        LAG,
        Kind::Gauge,
        None,
        "Revisions the gate had not yet applied when the consent service's last heartbeat announced its high water.",
    );
    m.describe(
        HIGH_WATER,
        Kind::Gauge,
        None,
        "The highest consent revision the gate has applied.",
    );
    m.describe(
        PROPAGATION,
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a consent change's commit to its invalidation at this gate, by change kind (kind=\"withdraw\": withdrawal propagation).",
    );
    m.describe(
        RECONNECTS,
        Kind::Counter,
        None,
        "Times the change stream was reopened after it broke.",
    );
    m.describe(
        DIVERGED,
        Kind::Counter,
        None,
        "Times the consent service refused to resume the change stream because its database is behind revisions this gate applied (restored to an earlier point): the gate stops following, serves no cached allow until restarted, and logs an error. Alert on any.",
    );
    m.describe(
        FAIL_CLOSED,
        Kind::Counter,
        None,
        "Decisions that could not be obtained, so the read was denied (consent service down, deadline, refused).",
    );
}
