//! Prometheus metrics, one registry per service, scraped at `/metrics` on a port of its own.
//!
//! Why a registry per service and not the `metrics` crate's global recorder: under `consentgate
//! up` the three services share one process, and each must still answer for itself on its own
//! metrics port (as three pods would). Components get a [`Metrics`] handle when they are built and
//! register what they count once; the hot paths then touch only atomics.
//!
//! Labels are bounded by construction: RPC methods come from the service's rules (anything else
//! is `_OTHER`), purposes and reasons from the policy and the protocol's enums. No subject,
//! device or item id is ever a label.

use crate::server::Running;
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::net::TcpListener;

/// Histogram bounds, in seconds: 50 µs to 10 s, so that sub-millisecond calls (most of ours) land
/// in distinct buckets, and aggregatable across replicas (a histogram, not a summary).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (bounds the
/// memory held by unscraped samples).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A gauge refreshed just before each scrape, for values that change by the passing of time
/// rather than by events (a lease expiring, a checkpoint ageing, a queue's depth).
type Refresh = Box<dyn Fn() + Send + Sync>;

/// One service's metrics. Cheap to clone; [`Metrics::disabled`] hands out handles that do nothing,
/// so components count unconditionally and pay nothing when metrics are off.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Option<Arc<Registry>>,
}

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    refreshers: Mutex<Vec<Refresh>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.registry.is_some())
            .finish()
    }
}

/// What [`Metrics::describe`] documents.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, with [`LATENCY_BUCKETS`] (or other bounds given at build time).
    Histogram,
}

impl Metrics {
    /// Metrics that are not collected.
    pub fn disabled() -> Self {
        Metrics { registry: None }
    }

    /// A fresh registry. Inside a Tokio runtime it also starts the upkeep task that folds
    /// histogram samples into buckets between scrapes; the task ends with the last handle.
    pub fn enabled() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let registry = Arc::new(Registry {
            handle: recorder.handle(),
            recorder,
            refreshers: Mutex::new(Vec::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(upkeep(Arc::downgrade(&registry)));
        }
        Metrics {
            registry: Some(registry),
        }
    }

    /// Whether anything is collected.
    pub fn is_enabled(&self) -> bool {
        self.registry.is_some()
    }

    /// The counter `name` with `labels` (registered on first use; later calls find the same one).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match &self.registry {
            Some(r) => r.recorder.register_counter(&key(name, labels), &METADATA),
            None => Counter::noop(),
        }
    }

    /// The gauge `name` with `labels`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match &self.registry {
            Some(r) => r.recorder.register_gauge(&key(name, labels), &METADATA),
            None => Gauge::noop(),
        }
    }

    /// The histogram `name` with `labels`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        match &self.registry {
            Some(r) => r.recorder.register_histogram(&key(name, labels), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// The `# HELP` line of `name`.
    pub fn describe(&self, name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) {
        let Some(r) = &self.registry else { return };
        let name = KeyName::from_const_str(name);
        match kind {
            Kind::Counter => r.recorder.describe_counter(name, unit, help.into()),
            Kind::Gauge => r.recorder.describe_gauge(name, unit, help.into()),
            Kind::Histogram => r.recorder.describe_histogram(name, unit, help.into()),
        }
    }

    /// Runs `refresh` before every scrape (it should only set gauges).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        if let Some(r) = &self.registry {
            r.refreshers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Box::new(refresh));
        }
    }

    /// The Prometheus text exposition of everything registered (empty when disabled).
    pub fn render(&self) -> String {
        let Some(r) = &self.registry else {
            return String::new();
        };
        for refresh in r
            .refreshers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            refresh();
        }
        r.handle.render()
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Counters of one name told apart by `N` label values, whose handles are kept after first use,
/// so that a hot path counts with one hash of borrowed strings instead of a registry lookup that
/// builds owned labels on every call. For label values from a bounded set (purposes from the
/// policy, reason codes, tiers); past [`CounterFamily::KEPT`] distinct value sets it stops
/// keeping handles and asks the registry each time, so a mistake cannot grow it without bound.
pub struct CounterFamily<const N: usize> {
    metrics: Metrics,
    name: &'static str,
    label_names: [&'static str; N],
    hasher: RandomState,
    kept: RwLock<Kept<N>>,
}

/// The handles a [`CounterFamily`] keeps, by the hash of their label values (values whose
/// hashes collide share a bucket).
struct Kept<const N: usize> {
    by_hash: HashMap<u64, Vec<KeptCounter<N>>>,
    len: usize,
}

/// One kept handle and the label values it counts.
type KeptCounter<const N: usize> = ([Box<str>; N], Counter);

impl<const N: usize> Default for Kept<N> {
    fn default() -> Self {
        Kept {
            by_hash: HashMap::new(),
            len: 0,
        }
    }
}

impl<const N: usize> Kept<N> {
    fn find(&self, hash: u64, values: &[&str; N]) -> Option<&Counter> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(kept, _)| kept.iter().zip(values).all(|(k, v)| **k == **v))
            .map(|(_, counter)| counter)
    }
}

impl<const N: usize> CounterFamily<N> {
    /// How many distinct label value sets a family keeps handles for.
    pub const KEPT: usize = 4096;

    /// The family `name`, labelled `label_names` (values are given in the same order).
    pub fn new(metrics: &Metrics, name: &'static str, label_names: [&'static str; N]) -> Self {
        CounterFamily {
            metrics: metrics.clone(),
            name,
            label_names,
            hasher: RandomState::new(),
            kept: RwLock::new(Kept::default()),
        }
    }

    /// The counter for `values` (a no-op when metrics are off).
    pub fn get(&self, values: [&str; N]) -> Counter {
        if self.metrics.registry.is_none() {
            return Counter::noop();
        }
        let hash = self.hasher.hash_one(values);
        let kept = self.kept.read().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = kept.find(hash, &values) {
            return counter.clone();
        }
        let full = kept.len >= Self::KEPT;
        drop(kept);
        let labels: [(&'static str, &str); N] =
            std::array::from_fn(|i| (self.label_names[i], values[i]));
        let counter = self.metrics.counter(self.name, &labels);
        if !full {
            let mut kept = self.kept.write().unwrap_or_else(|p| p.into_inner());
            if kept.find(hash, &values).is_none() {
                kept.by_hash
                    .entry(hash)
                    .or_default()
                    .push((values.map(Box::from), counter.clone()));
                kept.len += 1;
            }
        }
        counter
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

async fn upkeep(registry: Weak<Registry>) {
    let mut ticker = tokio::time::interval(UPKEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match registry.upgrade() {
            Some(r) => r.handle.run_upkeep(),
            None => return,
        }
    }
}

/// A service's metrics: collected and served at `/metrics` on `listener` when there is one,
/// disabled (free) when there is none. The endpoint stops when its [`Running`] handle says so.
pub fn served(
    listener: Option<TcpListener>,
) -> std::io::Result<(Metrics, Option<Running<std::io::Error>>)> {
    served_or_pushed(listener, false)
}

/// As [`served`]; with `pushed`, metrics are collected even without a listener (they are
/// pushed over OTLP, see [`crate::metrics_otlp`]).
pub fn served_or_pushed(
    listener: Option<TcpListener>,
    pushed: bool,
) -> std::io::Result<(Metrics, Option<Running<std::io::Error>>)> {
    let Some(listener) = listener else {
        let metrics = if pushed {
            Metrics::enabled()
        } else {
            Metrics::disabled()
        };
        return Ok((metrics, None));
    };
    let metrics = Metrics::enabled();
    let scraped = metrics.clone();
    let endpoint = Running::spawn(listener, move |listener, shutdown| {
        serve_metrics(scraped, listener, shutdown)
    })?;
    Ok((metrics, Some(endpoint)))
}

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` from `metrics` on `listener` until `shutdown` resolves. It runs apart
/// from the gRPC port so that a NetworkPolicy can open it to the monitoring namespace only.
pub async fn serve_metrics(
    metrics: Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, TEXT_FORMAT)],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_and_histograms_render_in_the_text_format() {
        let metrics = Metrics::enabled();
        metrics.describe("jobs_total", Kind::Counter, None, "Jobs done.");
        metrics.counter("jobs_total", &[("kind", "a")]).increment(2);
        metrics.counter("jobs_total", &[("kind", "a")]).increment(1);
        metrics
            .histogram("job_duration_seconds", &[])
            .record(0.000_07);
        let live = metrics.gauge("live", &[]);
        metrics.on_scrape(move || live.set(1.0));
        let text = metrics.render();
        assert!(text.contains("# HELP jobs_total Jobs done."), "{text}");
        assert!(text.contains("jobs_total{kind=\"a\"} 3"), "{text}");
        assert!(
            text.contains("job_duration_seconds_bucket{le=\"0.00005\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("job_duration_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(text.contains("live 1"), "{text}");
    }

    #[test]
    fn disabled_metrics_render_nothing() {
        let metrics = Metrics::disabled();
        metrics.counter("jobs_total", &[]).increment(1);
        assert_eq!(metrics.render(), "");
    }

    #[test]
    fn a_counter_family_counts_each_value_set_apart_and_keeps_a_bounded_number() {
        let metrics = Metrics::enabled();
        let family = CounterFamily::new(&metrics, "answers_total", ["tier", "kind"]);
        family.get(["limited", "click"]).increment(1);
        family.get(["limited", "click"]).increment(2);
        family.get(["limited", "view"]).increment(1);
        family.get(["profiled", "click"]).increment(5);
        let text = metrics.render();
        assert!(
            text.contains(r#"answers_total{tier="limited",kind="click"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"answers_total{tier="limited",kind="view"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"answers_total{tier="profiled",kind="click"} 5"#),
            "{text}"
        );

        for i in 0..CounterFamily::<2>::KEPT + 10 {
            family.get(["many", &i.to_string()]).increment(1);
        }
        let kept = family.kept.read().unwrap();
        assert_eq!(kept.len, CounterFamily::<2>::KEPT);
        drop(kept);
        // Past the bound it still counts, through the registry.
        let last = (CounterFamily::<2>::KEPT + 9).to_string();
        family.get(["many", &last]).increment(1);
        let text = metrics.render();
        assert!(
            text.contains(&format!("answers_total{{tier=\"many\",kind=\"{last}\"}} 2")),
            "{text}"
        );
    }

    #[test]
    fn a_disabled_family_keeps_nothing() {
        let family = CounterFamily::new(&Metrics::disabled(), "answers_total", ["tier"]);
        family.get(["limited"]).increment(1);
        assert_eq!(family.kept.read().unwrap().len, 0);
    }
}
