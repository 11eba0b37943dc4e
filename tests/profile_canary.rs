//! Canary: unique personal values seeded into profiles must never reach logs or traces, even at
//! TRACE level, through every write, read, data-subject request and error path.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::profile::v1 as ppb;
use std::io::Write;
use std::sync::{Arc, Mutex};

const CANARY_SUBJECT: &str = "canary-subject-5d81c7";
const CANARY_EMAIL: &str = "canary-7f3a9c@leak.example";
const CANARY_PHONE: &str = "+1-555-0199-7342";
const CANARY_SEARCH: &str = "canary search 0e6b";

/// Everything the process logs, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_values_never_reach_logs_or_traces() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("the only subscriber in this test binary");

    for backend in backends() {
        let consent = TestServer::start(backend).await;
        let profile = ProfileServer::start(&consent, backend).await;
        let mut pc = consent.as_caller("preference-center").await;
        pc.grant(grant(CANARY_SUBJECT, "personalize.content.profiled", "c-1"))
            .await
            .expect("grant");
        let mut marketing = grant(CANARY_SUBJECT, "marketing", "c-2");
        marketing.notice_version = "1.2".into();
        pc.grant(marketing).await.expect("grant");
        let mut collector = profile.as_caller("collector").await;
        let r = collector
            .set_attributes(ppb::SetAttributesRequest {
                subject: subject(CANARY_SUBJECT),
                context: None,
                attributes: vec![
                    attribute("email", CANARY_EMAIL, "user.contact.email", "marketing"),
                    attribute("phone", CANARY_PHONE, "user.contact.phone", "marketing"),
                    // Rejected (no consent for sale): the rejection path must not log values either.
                    attribute(
                        "phone2",
                        CANARY_PHONE,
                        "user.contact.phone",
                        "third_party_sharing.sale",
                    ),
                ],
            })
            .await
            .expect("collect")
            .into_inner();
        assert_eq!((r.accepted, r.rejected), (2, 1));
        collector
            .record_events(ppb::RecordEventsRequest {
                subject: subject(CANARY_SUBJECT),
                purpose: "personalize.content.profiled".into(),
                events: vec![ppb::EventInput {
                    kind: ppb::EventKind::Search as i32,
                    query: CANARY_SEARCH.into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .expect("events");
        // Bad input carrying the values.
        let err = collector
            .set_attributes(ppb::SetAttributesRequest {
                subject: subject(CANARY_SUBJECT),
                context: None,
                attributes: vec![attribute(
                    CANARY_EMAIL,
                    CANARY_PHONE,
                    "user.not-a-category",
                    "marketing",
                )],
            })
            .await
            .expect_err("bad input");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        // Reads, allowed and denied.
        let mut mailer = profile.as_caller("mailer").await;
        let mut read = get_profile(CANARY_SUBJECT, "marketing.communications.email");
        read.data_categories = vec!["user.contact.email".into()];
        mailer.get_profile(read).await.expect("read");
        profile
            .as_caller("profile-service")
            .await
            .get_profile(get_profile(CANARY_SUBJECT, "marketing"))
            .await
            .expect("read");
        profile
            .as_caller("recommendation-service")
            .await
            .list_events(ppb::ListEventsRequest {
                subject: subject(CANARY_SUBJECT),
                purpose: "personalize.content.profiled".into(),
                ..Default::default()
            })
            .await
            .expect("events");
        // Rights.
        let mut ops = profile.as_caller("privacy-ops").await;
        let export = ops
            .export_subject_data(ppb::ExportSubjectDataRequest {
                subject: subject(CANARY_SUBJECT),
            })
            .await
            .expect("export")
            .into_inner();
        assert!(
            export.document_json.contains(CANARY_EMAIL),
            "the export itself has the data"
        );
        ops.get_access_report(ppb::GetAccessReportRequest {
            subject: subject(CANARY_SUBJECT),
        })
        .await
        .expect("report");
        ops.rectify_attribute(ppb::RectifyAttributeRequest {
            subject: subject(CANARY_SUBJECT),
            name: "phone".into(),
            value: format!("{CANARY_PHONE}0"),
            reason: "new number".into(),
        })
        .await
        .expect("rectify");
        ops.erase_subject(ppb::EraseSubjectRequest {
            subject: subject(CANARY_SUBJECT),
            idempotency_key: "canary-erase".into(),
        })
        .await
        .expect("erase");
        profile.stop().await;
        consent.stop().await;
    }

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert!(
        logs.lines().count() > 100,
        "the capture saw too little to mean anything ({} lines)",
        logs.lines().count()
    );
    for canary in [CANARY_SUBJECT, CANARY_EMAIL, CANARY_PHONE, CANARY_SEARCH] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(canary))
            .take(3)
            .collect();
        assert!(
            leaks.is_empty(),
            "{canary:?} leaked into the logs: {leaks:#?}"
        );
    }
}
