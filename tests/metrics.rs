//! Each service's `/metrics`, scraped over HTTP from its own port and parsed with a Prometheus
//! text-format parser: after a scripted sequence, each named series moved by exactly what the
//! sequence did, on SQLite and PostgreSQL.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use prometheus_parse::{Scrape, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` over a plain HTTP/1.1 connection, parsed.
async fn scrape(address: SocketAddr) -> Scraped {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("text format");
    Scraped {
        text: body.to_owned(),
        scrape,
    }
}

struct Scraped {
    text: String,
    scrape: Scrape,
}

impl Scraped {
    /// The value of the one series `name{labels}` (0 when absent: a counter not yet moved).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                Value::Summary(_) => panic!("{name} is a summary; every duration is a histogram"),
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} matches {} series",
            matching.len()
        );
        matching.first().copied().unwrap_or(0.0)
    }

    /// The number of calls of `method` that ended with `code`.
    fn calls(&self, method: &str, code: &str) -> f64 {
        self.value(
            "rpc_server_call_duration_seconds_count",
            &[("rpc_method", method), ("rpc_response_status_code", code)],
        )
    }

    /// The histogram buckets of `name{labels}` (upper bounds), to check that they are buckets.
    fn bucket_bounds(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match &s.value {
                Value::Histogram(buckets) => Some(buckets.iter().map(|b| b.less_than).collect()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

const GRANT: &str = "consentgate.consent.v1.ConsentService/Grant";
const CHECK: &str = "consentgate.consent.v1.ConsentService/Check";
const HEALTH: &str = "grpc.health.v1.Health/Check";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpc_durations_are_histograms_by_method_and_status_code() {
    for backend in backends() {
        let suite = Suite::start_with_metrics(backend).await;
        let endpoints = suite.metrics.as_ref().expect("metrics on");
        let before = scrape(endpoints.consent).await;

        let mut pc = suite.consent.as_caller("preference-center").await;
        pc.grant(grant("m-ann", "personalize.content.profiled", "m-1"))
            .await
            .expect("grant");
        let mut enforcer = suite.consent.as_caller("recommendation-service").await;
        let bad = enforcer
            .check(check("m-ann", "no.such.purpose", &[]))
            .await
            .expect_err("an unknown purpose is a bad request");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let mut anonymous = suite.consent.client(None).await;
        let refused = anonymous
            .check(check("m-ann", "personalize.content.profiled", &[]))
            .await
            .expect_err("no credentials");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(suite.consent.channel().await);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health");

        let after = scrape(endpoints.consent).await;
        let moved =
            |method: &str, code: &str| after.calls(method, code) - before.calls(method, code);
        assert_eq!(moved(GRANT, "OK"), 1.0, "{}", after.text);
        assert_eq!(moved(CHECK, "INVALID_ARGUMENT"), 1.0);
        assert_eq!(
            moved(CHECK, "UNAUTHENTICATED"),
            1.0,
            "refused by the auth layer, counted all the same"
        );
        assert_eq!(moved(CHECK, "OK"), 0.0);
        assert_eq!(moved(HEALTH, "OK"), 1.0);
        let bounds = after.bucket_bounds(
            "rpc_server_call_duration_seconds",
            &[("rpc_method", GRANT), ("rpc_response_status_code", "OK")],
        );
        assert_eq!(
            bounds.first().copied(),
            Some(0.000_05),
            "buckets start at 50 µs so sub-millisecond calls are visible"
        );
        assert!(bounds.contains(&10.0), "{bounds:?}");
        assert_eq!(
            after.value("rpc_server_active_requests", &[("rpc_method", GRANT)]),
            0.0,
            "nothing in flight once answered"
        );
        assert!(
            after
                .text
                .contains("# HELP rpc_server_call_duration_seconds "),
            "described"
        );
        // The other services answer for themselves on their own ports.
        let profile = scrape(endpoints.profile).await;
        assert!(
            profile.text.contains("ProfileService/GetProfile")
                && !profile.text.contains("ConsentService/"),
            "{}",
            profile.text
        );
        suite.stop().await;
    }
}

const PROFILED: &str = "personalize.content.profiled";

/// Waits until `series` (a histogram's `_count` or a counter) at `address` reaches `at_least`.
async fn eventually(
    address: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Scraped {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let scraped = scrape(address).await;
        if scraped.value(name, labels) >= at_least {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} never reached {at_least}:\n{}",
            scraped.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scripted_story_moves_each_named_counter_by_exactly_what_it_did() {
    use consentgate_proto::profile::v1 as ppb;
    for backend in backends() {
        let suite = Suite::start_with_metrics(backend).await;
        let at = suite.metrics.as_ref().expect("metrics on");
        let (consent_at, profile_at) = (at.consent, at.profile);
        let before = (scrape(consent_at).await, scrape(profile_at).await);

        // Grant; collect three views (accepted) and one under a purpose never consented to
        // (refused); check; read.
        let mut pc = suite.consent.as_caller("preference-center").await;
        pc.grant(grant("m-bob", PROFILED, "m-bob-g"))
            .await
            .expect("grant");
        let mut collector = suite.profile.as_caller("collector").await;
        let kept = collector
            .record_events(product_views(
                "m-bob",
                &["sku-00001", "sku-00002", "sku-00003"],
            ))
            .await
            .expect("collect")
            .into_inner();
        assert!(kept.results.iter().all(|r| r.accepted));
        let mut unconsented = product_views("m-bob", &["sku-00004"]);
        unconsented.purpose = "analytics.reporting".into();
        let refused = collector
            .record_events(unconsented)
            .await
            .expect("collect")
            .into_inner();
        let refusal = refused.results[0].reason.clone();
        assert!(!refused.results[0].accepted && !refusal.is_empty());
        let mut enforcer = suite.consent.as_caller("recommendation-service").await;
        enforcer
            .check(check(
                "m-bob",
                PROFILED,
                &["user.behavior.browsing_history"],
            ))
            .await
            .expect("check");
        let mut reader = suite.profile.as_caller("recommendation-service").await;
        let events = |who: &str| ppb::ListEventsRequest {
            subject: subject(who),
            purpose: PROFILED.into(),
            ..Default::default()
        };
        let read = reader
            .list_events(events("m-bob"))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(read.events.len(), 3);

        // Withdraw; once the profile service's gate has the change, the same read is denied
        // and withholds the three events.
        let withdrawal_seen = before.1.value(
            "consentgate_gate_change_propagation_seconds_count",
            &[("kind", "withdraw")],
        );
        pc.withdraw(withdraw("m-bob", PROFILED, "m-bob-w"))
            .await
            .expect("withdraw");
        eventually(
            profile_at,
            "consentgate_gate_change_propagation_seconds_count",
            &[("kind", "withdraw")],
            withdrawal_seen + 1.0,
        )
        .await;
        let denied = reader
            .list_events(events("m-bob"))
            .await
            .expect("read")
            .into_inner();
        assert!(denied.events.is_empty());

        // Erase through the profile service (cascading to the consent service).
        let mut ops = suite.profile.as_caller("privacy-ops").await;
        ops.erase_subject(ppb::EraseSubjectRequest {
            subject: subject("m-bob"),
            idempotency_key: "m-bob-erase".into(),
        })
        .await
        .expect("erase");

        let after = (scrape(consent_at).await, scrape(profile_at).await);
        let consent_moved = |name: &str, labels: &[(&str, &str)]| {
            after.0.value(name, labels) - before.0.value(name, labels)
        };
        let profile_moved = |name: &str, labels: &[(&str, &str)]| {
            after.1.value(name, labels) - before.1.value(name, labels)
        };
        let writes = "consentgate_consent_writes_total";
        for (kind, n) in [("grant", 1.0), ("withdraw", 1.0), ("erase", 1.0)] {
            assert_eq!(
                consent_moved(writes, &[("kind", kind), ("outcome", "recorded")]),
                n,
                "{kind}:\n{}",
                after.0.text
            );
        }
        assert_eq!(
            consent_moved("consentgate_consent_commit_duration_seconds_count", &[]),
            3.0
        );
        // One after another, each write is a group commit of its own.
        assert_eq!(
            consent_moved("consentgate_consent_group_commits_total", &[]),
            3.0
        );
        assert_eq!(
            consent_moved("consentgate_consent_group_commit_writes_total", &[]),
            3.0
        );
        let decisions = "consentgate_consent_decisions_total";
        assert_eq!(
            consent_moved(
                decisions,
                &[
                    ("purpose", PROFILED),
                    ("verdict", "allow"),
                    ("reason", "NONE")
                ]
            ),
            // The test's own Check, the profile gate's check for the accepted events, and its
            // check for the first read (the read after the withdrawal asked again: a withdrawal
            // makes the cached allow stale).
            3.0,
            "{}",
            after.0.text
        );
        assert_eq!(
            consent_moved(
                decisions,
                &[
                    ("purpose", PROFILED),
                    ("verdict", "deny"),
                    ("reason", "WITHDRAWN")
                ]
            ),
            1.0
        );
        let reads = "consentgate_profile_reads_total";
        assert_eq!(
            profile_moved(reads, &[("purpose", PROFILED), ("outcome", "allowed")]),
            1.0
        );
        assert_eq!(
            profile_moved(reads, &[("purpose", PROFILED), ("outcome", "denied")]),
            1.0
        );
        assert_eq!(
            profile_moved(
                "consentgate_profile_redacted_items_total",
                &[("reason", "WITHDRAWN")]
            ),
            3.0,
            "{}",
            after.1.text
        );
        assert_eq!(
            profile_moved(
                "consentgate_profile_collection_refusals_total",
                &[("reason", refusal.as_str())]
            ),
            1.0
        );
        assert_eq!(
            profile_moved(
                "consentgate_profile_erasure_requests_total",
                &[("state", "completed")]
            ),
            1.0
        );
        assert_eq!(
            profile_moved(
                "consentgate_gate_cache_lookups_total",
                &[("result", "miss")]
            ),
            // Two collection decisions (one per RecordEvents), two reads, and the erasure's
            // final sweep asks nothing: four.
            4.0,
            "{}",
            after.1.text
        );
        assert_eq!(
            profile_moved("consentgate_gate_fail_closed_total", &[]),
            0.0
        );
        assert_eq!(after.1.value("consentgate_gate_lease_live", &[]), 1.0);
        assert!(after.1.value("consentgate_gate_heartbeat_age_seconds", &[]) < 5.0);
        suite.stop().await;
    }
}
