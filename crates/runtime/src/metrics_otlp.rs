//! Metrics pushed over OTLP as well, for platforms that collect everything through an
//! OpenTelemetry Collector: on when `OTEL_METRICS_EXPORTER=otlp`, every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 60,000), to
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! What is pushed is exactly what `/metrics` shows (the same registry, read the same way), as
//! cumulative sums, gauges and explicit-bucket histograms. Names are chosen so that a collector
//! translating back to Prometheus lands on the scrape endpoint's names: a `_seconds` suffix
//! becomes the unit `s`, a counter's `_total` is implied by a monotonic sum.

use crate::metrics::Metrics;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Where and how often metrics are pushed, when they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpPush {
    /// The collector, e.g. `http://collector:4317`.
    pub endpoint: String,
    /// How often.
    pub every: Duration,
}

impl OtlpPush {
    /// From the standard variables; `None` unless `OTEL_METRICS_EXPORTER=otlp` and an endpoint is
    /// set.
    pub fn from_env() -> Option<OtlpPush> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if var("OTEL_METRICS_EXPORTER").as_deref() != Some("otlp") {
            return None;
        }
        let endpoint = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let every = var("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(Duration::from_secs(60), Duration::from_millis);
        Some(OtlpPush { endpoint, every })
    }
}

/// Pushes `metrics` as `service` to `push.endpoint` every `push.every`, for as long as the
/// returned task runs (abort it at shutdown). A failed push is logged and retried next time:
/// sums are cumulative, so nothing is lost but resolution.
pub fn spawn_push(
    metrics: Metrics,
    service: String,
    push: OtlpPush,
) -> Result<tokio::task::JoinHandle<()>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(push.endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let started = unix_nanos(SystemTime::now());
    Ok(tokio::spawn(async move {
        let mut client = MetricsServiceClient::new(channel);
        let mut ticker = tokio::time::interval(push.every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let request = export_request(&metrics.render(), &service, started);
            if let Err(status) = client.export(request).await {
                tracing::warn!(code = ?status.code(), "pushing metrics over OTLP failed; retrying at the next interval");
            }
        }
    }))
}

/// The OTLP form of a Prometheus text exposition of our registry.
pub fn export_request(
    text: &str,
    service: &str,
    start_unix_nanos: u64,
) -> ExportMetricsServiceRequest {
    let now = unix_nanos(SystemTime::now());
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap_or(Scrape {
        docs: Default::default(),
        samples: Vec::new(),
    });
    let point = |labels: &prometheus_parse::Labels, value: f64| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_unix_nanos,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    // Histogram `_sum` and `_count` lines come apart from their buckets: find them by series.
    let mut sums = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &scrape.samples {
        if let Value::Untyped(v) = s.value {
            let key = (s.metric.clone(), series(&s.labels));
            if let Some(base) = s.metric.strip_suffix("_sum") {
                sums.insert((base.to_owned(), key.1), v);
            } else if let Some(base) = s.metric.strip_suffix("_count") {
                counts.insert((base.to_owned(), key.1), v);
            }
        }
    }
    let mut by_name: BTreeMap<String, Metric> = BTreeMap::new();
    for s in &scrape.samples {
        let (name, unit) = otlp_name(&s.metric);
        let entry = by_name.entry(s.metric.clone()).or_insert_with(|| Metric {
            name,
            unit,
            description: scrape.docs.get(&s.metric).cloned().unwrap_or_default(),
            ..Default::default()
        });
        match &s.value {
            Value::Counter(v) => {
                let sum = entry.data.get_or_insert_with(|| {
                    metric::Data::Sum(Sum {
                        data_points: Vec::new(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                });
                if let metric::Data::Sum(sum) = sum {
                    sum.data_points.push(point(&s.labels, *v));
                }
            }
            Value::Gauge(v) => {
                let gauge = entry.data.get_or_insert_with(|| {
                    metric::Data::Gauge(Gauge {
                        data_points: Vec::new(),
                    })
                });
                if let metric::Data::Gauge(gauge) = gauge {
                    gauge.data_points.push(point(&s.labels, *v));
                }
            }
            Value::Histogram(buckets) => {
                let key = (s.metric.clone(), series(&s.labels));
                let mut cumulative: Vec<(f64, f64)> =
                    buckets.iter().map(|b| (b.less_than, b.count)).collect();
                cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut bucket_counts = Vec::with_capacity(cumulative.len());
                let mut below = 0.0;
                for (_, c) in &cumulative {
                    bucket_counts.push(float_count(c - below));
                    below = *c;
                }
                let explicit_bounds = cumulative
                    .iter()
                    .map(|(le, _)| *le)
                    .filter(|le| le.is_finite())
                    .collect::<Vec<_>>();
                if bucket_counts.len() == explicit_bounds.len() {
                    // No +Inf bucket rendered: the overflow bucket holds what the count adds.
                    let total = counts.get(&key).copied().unwrap_or(below);
                    bucket_counts.push(float_count(total - below));
                }
                let data_point = HistogramDataPoint {
                    attributes: attributes(&s.labels),
                    start_time_unix_nano: start_unix_nanos,
                    time_unix_nano: now,
                    count: float_count(counts.get(&key).copied().unwrap_or(below)),
                    sum: sums.get(&key).copied(),
                    bucket_counts,
                    explicit_bounds,
                    ..Default::default()
                };
                let histogram = entry.data.get_or_insert_with(|| {
                    metric::Data::Histogram(Histogram {
                        data_points: Vec::new(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })
                });
                if let metric::Data::Histogram(h) = histogram {
                    h.data_points.push(data_point);
                }
            }
            Value::Summary(_) | Value::Untyped(_) => {}
        }
    }
    let metrics = by_name.into_values().filter(|m| m.data.is_some()).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `rpc_server_call_duration_seconds` → (`rpc_server_call_duration`, `s`); a counter's `_total`
/// dropped (a monotonic sum implies it).
fn otlp_name(prometheus: &str) -> (String, String) {
    if let Some(base) = prometheus.strip_suffix("_seconds") {
        return (base.to_owned(), "s".to_owned());
    }
    let base = prometheus.strip_suffix("_total").unwrap_or(prometheus);
    (base.to_owned(), String::new())
}

fn series(labels: &prometheus_parse::Labels) -> String {
    let mut pairs: Vec<(&String, &String)> = labels.iter().collect();
    pairs.sort();
    format!("{pairs:?}")
}

fn attributes(labels: &prometheus_parse::Labels) -> Vec<KeyValue> {
    let mut pairs: Vec<(&String, &String)> = labels.iter().collect();
    pairs.sort();
    pairs.into_iter().map(|(k, v)| string_kv(k, v)).collect()
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn float_count(count: f64) -> u64 {
    if count.is_finite() && count > 0.0 {
        count.round() as u64
    } else {
        0
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Kind;

    #[tokio::test]
    async fn the_registry_becomes_cumulative_sums_gauges_and_histograms() {
        let metrics = Metrics::enabled();
        metrics.describe("jobs_total", Kind::Counter, None, "Jobs done.");
        metrics.counter("jobs_total", &[("kind", "a")]).increment(3);
        metrics.gauge("queue_depth", &[]).set(7.0);
        let h = metrics.histogram("job_duration_seconds", &[("kind", "a")]);
        h.record(0.000_07);
        h.record(0.3);
        h.record(20.0);
        let request = export_request(&metrics.render(), "consentgate-test", 1);
        let rm = &request.resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().map(|r| r.attributes[0].key.as_str()),
            Some("service.name")
        );
        let by_name: BTreeMap<&str, &Metric> = rm.scope_metrics[0]
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m))
            .collect();
        match &by_name["jobs"].data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.data_points[0].value,
                    Some(number_data_point::Value::AsDouble(3.0))
                );
                assert_eq!(s.data_points[0].attributes[0].key, "kind");
            }
            other => panic!("jobs: {other:?}"),
        }
        assert_eq!(by_name["jobs"].description, "Jobs done.");
        assert!(matches!(
            by_name["queue_depth"].data,
            Some(metric::Data::Gauge(_))
        ));
        let duration = by_name["job_duration"];
        assert_eq!(duration.unit, "s");
        match &duration.data {
            Some(metric::Data::Histogram(h)) => {
                let p = &h.data_points[0];
                assert_eq!(p.count, 3);
                assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3, "{p:?}");
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                assert_eq!(p.explicit_bounds[0], 0.000_05);
                assert_eq!(p.bucket_counts[1], 1, "70 µs in (50 µs, 100 µs]");
                assert_eq!(
                    *p.bucket_counts.last().expect("overflow"),
                    1,
                    "20 s overflows"
                );
                assert!((p.sum.expect("sum") - 20.300_07).abs() < 1e-9);
            }
            other => panic!("job_duration: {other:?}"),
        }
    }
}
