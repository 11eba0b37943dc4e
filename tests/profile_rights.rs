//! Data-subject requests end to end over real gRPC, on SQLite and PostgreSQL (issue 11, item 5):
//! a rectification is listed in the subject's access report and export (when, by whom, which
//! attribute and category, request id) and its request id resolves like an erasure's, without
//! the value ever being stored with the request; a withdrawal of a parent purpose reads as
//! covering the purposes beneath it, except those the person agreed to again afterwards.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::profile::v1 as ppb;
use ppb::request_status::Outcome;
use tonic::Code;

const OLD_EMAIL: &str = "rex@exmaple.com";
const NEW_EMAIL: &str = "rex@example.com";

/// Every text of every data-subject request row, straight from the profile database.
async fn stored_requests(profile: &ProfileServer) -> String {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&profile.db.url)
        .await
        .expect("pool");
    let rows = sqlx::query(
        "SELECT request_id || ' ' || kind || ' ' || detail || ' ' || requested_by || ' ' || note FROM dsar_requests",
    )
    .fetch_all(&pool)
    .await
    .expect("scan");
    pool.close().await;
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn status_of(client: &mut ProfileClient, request_id: &str) -> ppb::RequestStatus {
    client
        .get_request_status(ppb::GetRequestStatusRequest {
            request_id: request_id.to_owned(),
        })
        .await
        .expect("GetRequestStatus")
        .into_inner()
        .status
        .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rectification_is_listed_and_its_request_id_resolves() {
    for backend in backends() {
        let consent = TestServer::start(backend).await;
        let profile = ProfileServer::start(&consent, backend).await;
        let r = profile
            .as_caller("collector")
            .await
            .set_attributes(ppb::SetAttributesRequest {
                subject: subject("rex"),
                context: None,
                attributes: vec![attribute(
                    "email",
                    OLD_EMAIL,
                    "user.contact.email",
                    "essential.service",
                )],
            })
            .await
            .expect("collect")
            .into_inner();
        assert_eq!(r.accepted, 1, "{r:?}");
        let mut ops = profile.as_caller("privacy-ops").await;
        let before = std::time::SystemTime::now();
        let fixed = ops
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: subject("rex"),
                name: "email".into(),
                value: NEW_EMAIL.into(),
                reason: "typo in the domain".into(),
            })
            .await
            .expect("rectify")
            .into_inner();
        let after = std::time::SystemTime::now();
        assert_eq!(fixed.attribute.expect("attribute").value, NEW_EMAIL);
        let id = fixed.request_id;

        // The access report lists it: when, by whom, what, request id.
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("rex"),
            })
            .await
            .expect("report")
            .into_inner();
        assert_eq!(report.rectifications.len(), 1, "{backend:?}: {report:?}");
        let listed = &report.rectifications[0];
        assert_eq!(listed.request_id, id);
        assert_eq!(listed.rectified_by, "privacy-ops");
        assert_eq!(
            (listed.attribute.as_str(), listed.data_category.as_str()),
            ("email", "user.contact.email")
        );
        assert_eq!(listed.reason, "typo in the domain");
        let at = listed.rectified_at.expect("when");
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(at.seconds).expect("after 1970"),
                u32::try_from(at.nanos).expect("nanos"),
            );
        assert!(
            before - std::time::Duration::from_secs(1) <= at && at <= after,
            "{backend:?}: rectified at {at:?}"
        );
        assert!(
            listed.statement.contains(&id)
                && listed
                    .statement
                    .contains("privacy-ops corrected your \"email\"")
                && !listed.statement.contains(NEW_EMAIL)
                && !listed.statement.contains(OLD_EMAIL),
            "{}",
            listed.statement
        );
        assert!(report.summary.contains("corrected"), "{}", report.summary);

        // The export lists it the same way.
        let export = ops
            .export_subject_data(ppb::ExportSubjectDataRequest {
                subject: subject("rex"),
            })
            .await
            .expect("export")
            .into_inner();
        let doc: serde_json::Value = serde_json::from_str(&export.document_json).expect("json");
        let listed = &doc["rectifications"];
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{doc}");
        assert_eq!(listed[0]["request_id"], id.as_str());
        assert_eq!(listed[0]["rectified_by"], "privacy-ops");
        assert_eq!(listed[0]["attribute"], "email");
        assert_eq!(listed[0]["data_category"], "user.contact.email");
        assert!(
            listed[0]["rectified_at"]
                .as_str()
                .is_some_and(|t| t.len() >= 20)
        );
        assert_eq!(doc["profile"]["attributes"][0]["value"], NEW_EMAIL);

        // Its request id resolves, for the privacy team and for auditors, without the value.
        let resolved = status_of(&mut ops, &id).await;
        assert_eq!(resolved.kind(), ppb::RequestKind::Rectification);
        assert_eq!(resolved.state(), ppb::RequestState::Completed);
        assert_eq!(resolved.requested_by, "privacy-ops");
        assert!(resolved.requested_at.is_some() && resolved.completed_at.is_some());
        assert_eq!(
            resolved.outcome,
            Some(Outcome::Rectification(ppb::RectificationOutcome {
                attribute: "email".into(),
                data_category: "user.contact.email".into(),
                reason: "typo in the domain".into(),
            }))
        );
        let mut auditor = profile.as_caller("auditor").await;
        assert_eq!(status_of(&mut auditor, &id).await, resolved);
        // So does the export's.
        let exported = status_of(&mut ops, &export.request_id).await;
        assert_eq!(exported.kind(), ppb::RequestKind::Export);
        assert_eq!(
            exported.outcome,
            Some(Outcome::Export(ppb::ExportOutcome { items_exported: 1 }))
        );

        // Neither value is stored with any request.
        let stored = stored_requests(&profile).await;
        assert!(stored.contains(&id) && stored.contains("user.contact.email"));
        assert!(
            !stored.contains(NEW_EMAIL) && !stored.contains(OLD_EMAIL),
            "{backend:?}: {stored}"
        );

        // Bad input and a missing attribute answer as before, and record nothing.
        let err = ops
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: subject("rex"),
                name: " ".into(),
                value: "x".into(),
                reason: String::new(),
            })
            .await
            .expect_err("no name");
        assert_eq!(
            (err.code(), bad_fields(&err)),
            (Code::InvalidArgument, vec!["name".to_owned()])
        );
        let err = ops
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: subject("rex"),
                name: "shoe_size".into(),
                value: "44".into(),
                reason: String::new(),
            })
            .await
            .expect_err("no such attribute");
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::NotFound, "ATTRIBUTE_NOT_FOUND")
        );
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("rex"),
            })
            .await
            .expect("report")
            .into_inner();
        assert_eq!(report.rectifications.len(), 1, "{backend:?}");

        // Request ids that are not ids, or nobody's, and callers without the role.
        let err = ops
            .get_request_status(ppb::GetRequestStatusRequest {
                request_id: "not-an-id".into(),
            })
            .await
            .expect_err("bad id");
        assert_eq!(
            (err.code(), bad_fields(&err)),
            (Code::InvalidArgument, vec!["request_id".to_owned()])
        );
        let err = ops
            .get_request_status(ppb::GetRequestStatusRequest {
                request_id: "01900000-0000-7000-8000-000000000000".into(),
            })
            .await
            .expect_err("unknown id");
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::NotFound, "REQUEST_NOT_FOUND")
        );
        let err = profile
            .as_caller("mailer")
            .await
            .get_request_status(ppb::GetRequestStatusRequest {
                request_id: id.clone(),
            })
            .await
            .expect_err("a reader may not look requests up");
        assert_eq!(err.code(), Code::PermissionDenied);

        // After erasure: the correction stays provable by its id, no longer linked to the
        // subject and without the reason given; rectifying the erased subject answers as before.
        let erased = ops
            .erase_subject(ppb::EraseSubjectRequest {
                subject: subject("rex"),
                idempotency_key: "erase-rex".into(),
            })
            .await
            .expect("erase")
            .into_inner()
            .status
            .expect("status");
        let kept = status_of(&mut ops, &id).await;
        assert_eq!(
            (kept.kind(), kept.state()),
            (
                ppb::RequestKind::Rectification,
                ppb::RequestState::Completed
            )
        );
        assert_eq!(
            kept.outcome,
            Some(Outcome::Rectification(ppb::RectificationOutcome {
                attribute: "email".into(),
                data_category: "user.contact.email".into(),
                reason: String::new(),
            }))
        );
        let erasure = status_of(&mut ops, &erased.request_id).await;
        assert_eq!(erasure.kind(), ppb::RequestKind::Erasure);
        assert_eq!(erasure.outcome, Some(Outcome::Erasure(erased)));
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("rex"),
            })
            .await
            .expect("report after erasure")
            .into_inner();
        assert!(
            report.rectifications.is_empty() && report.consent_statements.is_empty(),
            "{backend:?}: {report:?}"
        );
        let err = ops
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: subject("rex"),
                name: "email".into(),
                value: NEW_EMAIL.into(),
                reason: String::new(),
            })
            .await
            .expect_err("nothing left to correct");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        assert!(!stored_requests(&profile).await.contains("typo"));
        profile.stop().await;
        consent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_withdrawal_reads_as_covering_its_children() {
    for backend in backends() {
        let consent = TestServer::start(backend).await;
        let profile = ProfileServer::start(&consent, backend).await;
        let mut pc = consent.as_caller("preference-center").await;
        let channel_grant = |purpose: &str, channel: &str| {
            let mut g = grant("wen", purpose, &format!("wen-{channel}"));
            g.notice_version = "1.2".into();
            if let Some(t) = g.target.as_mut() {
                t.channel = channel.into();
            }
            g
        };
        for (purpose, channel) in [
            ("marketing.communications.email", "email"),
            ("marketing.communications.sms", "sms"),
        ] {
            pc.grant(channel_grant(purpose, channel))
                .await
                .expect("grant");
        }
        let withdrawal = pc
            .withdraw(withdraw("wen", "marketing", "wen-all"))
            .await
            .expect("withdraw all marketing")
            .into_inner()
            .record
            .expect("record");
        // Opted back in to push only, after the withdrawal.
        pc.grant(channel_grant("marketing.communications.push", "push"))
            .await
            .expect("grant push");
        let mut ops = profile.as_caller("privacy-ops").await;
        let export = ops
            .export_subject_data(ppb::ExportSubjectDataRequest {
                subject: subject("wen"),
            })
            .await
            .expect("export")
            .into_inner();
        let doc: serde_json::Value = serde_json::from_str(&export.document_json).expect("json");
        assert_eq!(doc["consent_history"].as_array().map(Vec::len), Some(4));
        // The withdrawal's date as the export's history gives it (RFC 3339, UTC).
        let date: String = doc["consent_history"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["record_id"] == withdrawal.record_id.as_str())
            .and_then(|r| r["collected_at"].as_str())
            .expect("the withdrawal in the history")
            .chars()
            .take(10)
            .collect();
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("wen"),
            })
            .await
            .expect("report")
            .into_inner();
        assert_eq!(
            report.consent_statements.len(),
            1,
            "{backend:?}: {report:?}"
        );
        let said = &report.consent_statements[0];
        assert_eq!(said.record_id, withdrawal.record_id);
        assert_eq!(
            (said.purpose.as_str(), said.state.as_str()),
            ("marketing", "CONSENT_STATE_WITHDRAWN")
        );
        assert_eq!(said.revision, withdrawal.revision);
        for child in [
            "marketing.communications.email",
            "marketing.communications.sms",
            "marketing.advertising.first_party.targeted",
        ] {
            assert!(said.covers.iter().any(|c| c == child), "{child}: {said:?}");
        }
        assert!(
            !said.covers.iter().any(|c| c.ends_with(".push")),
            "given again after the withdrawal: {said:?}"
        );
        assert_eq!(said.given_again, ["marketing.communications.push"]);
        assert!(
            said.statement.starts_with(&format!(
                "You withdrew all marketing (telling you about offers and products) on {date}: "
            )) && said.statement.contains("marketing e-mails")
                && said.statement.contains("marketing text messages")
                && said
                    .statement
                    .contains("Since then you agreed again to marketing push notifications"),
            "{}",
            said.statement
        );
        // The export says the same.
        let statements = &doc["consent_statements"];
        assert_eq!(statements.as_array().map(Vec::len), Some(1), "{doc}");
        assert_eq!(statements[0]["statement"], said.statement.as_str());
        assert_eq!(statements[0]["purpose"], "marketing");
        assert_eq!(
            statements[0]["covers"].as_array().map(Vec::len),
            Some(said.covers.len())
        );
        // Withdrawn again, the push channel is covered too.
        pc.withdraw(withdraw("wen", "marketing", "wen-all-2"))
            .await
            .expect("withdraw again");
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("wen"),
            })
            .await
            .expect("report")
            .into_inner();
        assert_eq!(report.consent_statements.len(), 1, "{report:?}");
        let said = &report.consent_statements[0];
        assert!(
            said.given_again.is_empty()
                && said
                    .covers
                    .iter()
                    .any(|c| c == "marketing.communications.push"),
            "{backend:?}: {said:?}"
        );
        profile.stop().await;
        consent.stop().await;
    }
}
