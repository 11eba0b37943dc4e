//! The profile service's auth matrix: every RPC × no token, bad credentials and every policy
//! caller. Identity comes from the transport; roles decide; refused calls store nothing.

mod common;

use common::*;
use consentgate_consent::testing::Backend;
use consentgate_proto::profile::v1 as ppb;
use prost::Message;
use tonic::Code;

const RPCS: [&str; 15] = [
    "SetAttributes",
    "SubmitAnswers",
    "RecordEvents",
    "GetProfile",
    "ListEvents",
    "GetAnswers",
    "ReadSubject",
    "GetAccessReport",
    "ExportSubjectData",
    "RectifyAttribute",
    "EraseSubject",
    "GetErasureStatus",
    "GetRequestStatus",
    "VerifyAccessLog",
    "ReapplyErasures",
];

/// Who may call what, written out independently of `authz.rs` (docs/architecture.md §3 roles).
fn allowed(rpc: &str, caller: &str) -> bool {
    let roles: &[&str] = match caller {
        "preference-center" => &["preference_center"],
        "profile-service" | "recommendation-service" => &["enforcer"],
        "mailer" | "analytics-job" | "storefront" => &["reader"],
        "collector" => &["collector"],
        "privacy-ops" => &["privacy_ops"],
        "auditor" => &["auditor"],
        other => panic!("unexpected caller {other}"),
    };
    let needs: &[&str] = match rpc {
        "SetAttributes" | "SubmitAnswers" => &["collector", "preference_center"],
        "RecordEvents" => &["collector"],
        "GetProfile" | "ListEvents" | "ReadSubject" => &["reader", "enforcer"],
        "GetAnswers" => &["reader", "enforcer", "preference_center"],
        "GetAccessReport" | "ExportSubjectData" | "RectifyAttribute" | "EraseSubject" => {
            &["privacy_ops"]
        }
        "GetErasureStatus" | "GetRequestStatus" => &["privacy_ops", "auditor"],
        "VerifyAccessLog" => &["auditor"],
        "ReapplyErasures" => &["privacy_ops"],
        other => panic!("unexpected rpc {other}"),
    };
    roles.iter().any(|r| needs.contains(r))
}

async fn call(profile: &ProfileServer, header: Option<&str>, rpc: &str) -> Code {
    let mut c = profile.client(header).await;
    let who = || subject("auth-subject");
    let purpose = || "personalize.content.profiled".to_owned();
    let result = match rpc {
        "SetAttributes" => c
            .set_attributes(ppb::SetAttributesRequest {
                subject: who(),
                context: None,
                attributes: vec![attribute(
                    "sport",
                    "golf",
                    "user.preferences.stated",
                    &purpose(),
                )],
            })
            .await
            .map(|_| ()),
        "SubmitAnswers" => c
            .submit_answers(ppb::SubmitAnswersRequest {
                subject: who(),
                purpose: purpose(),
                answers: vec![ppb::AnswerInput {
                    kind: ppb::AnswerKind::Quiz as i32,
                    question_id: "q".into(),
                    answer: "a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "RecordEvents" => c
            .record_events(ppb::RecordEventsRequest {
                subject: who(),
                purpose: purpose(),
                events: vec![ppb::EventInput {
                    kind: ppb::EventKind::PageView as i32,
                    page: "/".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetProfile" => c
            .get_profile(get_profile("auth-subject", &purpose()))
            .await
            .map(|_| ()),
        "ListEvents" => c
            .list_events(ppb::ListEventsRequest {
                subject: who(),
                purpose: purpose(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetAnswers" => c
            .get_answers(ppb::GetAnswersRequest {
                subject: who(),
                purpose: purpose(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "ReadSubject" => c
            .read_subject(ppb::ReadSubjectRequest {
                subject: who(),
                purpose: purpose(),
                attributes: Some(Default::default()),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetAccessReport" => c
            .get_access_report(ppb::GetAccessReportRequest { subject: who() })
            .await
            .map(|_| ()),
        "ExportSubjectData" => c
            .export_subject_data(ppb::ExportSubjectDataRequest { subject: who() })
            .await
            .map(|_| ()),
        "RectifyAttribute" => match c
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: who(),
                name: "no-such-attribute".into(),
                value: "x".into(),
                reason: String::new(),
            })
            .await
        {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        },
        "EraseSubject" => c
            .erase_subject(ppb::EraseSubjectRequest {
                subject: subject("auth-erased"),
                idempotency_key: "auth-erase".into(),
            })
            .await
            .map(|_| ()),
        "GetErasureStatus" => match c
            .get_erasure_status(ppb::GetErasureStatusRequest {
                request_id: "01900000-0000-7000-8000-000000000000".into(),
            })
            .await
        {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        },
        "GetRequestStatus" => match c
            .get_request_status(ppb::GetRequestStatusRequest {
                request_id: "01900000-0000-7000-8000-000000000000".into(),
            })
            .await
        {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        },
        "VerifyAccessLog" => c
            .verify_access_log(ppb::VerifyAccessLogRequest {})
            .await
            .map(|_| ()),
        "ReapplyErasures" => c
            .reapply_erasures(ppb::ReapplyErasuresRequest {})
            .await
            .map(|_| ()),
        other => panic!("unknown rpc {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_by_every_caller_follows_the_role_table() {
    let consent = TestServer::start(Backend::Sqlite).await;
    let profile = ProfileServer::start(&consent, Backend::Sqlite).await;
    // Consent for the matrix subject, so allowed writes really store something.
    consent
        .as_caller("preference-center")
        .await
        .grant(grant(
            "auth-subject",
            "personalize.content.profiled",
            "auth-g",
        ))
        .await
        .expect("grant");
    let callers: Vec<String> = consent.engine.policy().callers.keys().cloned().collect();
    assert_eq!(
        callers.len(),
        9,
        "the matrix covers the shipped policy's callers"
    );
    for rpc in RPCS {
        for header in [
            None,
            Some("Bearer not-a-known-token"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer "),
            Some("test-token-auditor"),
        ] {
            let before = profile.row_counts().await;
            let code = call(&profile, header, rpc).await;
            assert_eq!(
                code,
                Code::Unauthenticated,
                "{rpc} with authorization {header:?}"
            );
            assert_eq!(
                profile.row_counts().await,
                before,
                "{rpc}: refused calls store nothing"
            );
        }
        for caller in &callers {
            let before = profile.row_counts().await;
            let code = call(&profile, Some(&format!("Bearer {}", token(caller))), rpc).await;
            if allowed(rpc, caller) {
                assert_eq!(
                    code,
                    Code::Ok,
                    "{rpc} by {caller} must be allowed and succeed"
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{rpc} by {caller} must be refused"
                );
                assert_eq!(
                    profile.row_counts().await,
                    before,
                    "{rpc} by {caller}: refused calls store nothing"
                );
            }
        }
    }
    profile.stop().await;
    consent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_reflection_stay_open_and_every_rpc_has_a_rule() {
    let consent = TestServer::start(Backend::Sqlite).await;
    let profile = ProfileServer::start(&consent, Backend::Sqlite).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", profile.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "consentgate.profile.v1.ProfileService".into(),
        })
        .await
        .expect("health without a token");
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let fds = prost_types::FileDescriptorSet::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let declared: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "consentgate.profile.v1")
        .flat_map(|f| f.service.iter().map(move |s| (f.package().to_owned(), s)))
        .flat_map(|(pkg, s)| {
            s.method
                .iter()
                .map(move |m| format!("/{pkg}.{}/{}", s.name(), m.name()))
        })
        .collect();
    let rules = consentgate_profile::authz::rules();
    let ruled: Vec<&str> = rules.methods().collect();
    assert_eq!(declared.len(), RPCS.len());
    for method in &declared {
        assert!(
            ruled.contains(&method.as_str()),
            "{method} has no authorization rule"
        );
    }
    profile.stop().await;
    consent.stop().await;
}
