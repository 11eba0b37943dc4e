//! The auth matrix: every ConsentService RPC × no token, an unknown token, a malformed header and
//! every policy caller. Identity comes from the transport; roles decide; no rule means refused.

mod common;

use common::*;
use consentgate_consent::testing::Backend;
use consentgate_proto::consent::v1 as pb;
use prost::Message;
use tonic::Code;

/// Every RPC of the service.
const RPCS: [&str; 20] = [
    "Grant",
    "Refuse",
    "Withdraw",
    "RecordSignal",
    "LinkIdentity",
    "GetConsents",
    "ListConsentHistory",
    "Check",
    "BatchCheck",
    "Explain",
    "GetReceipt",
    "WatchChanges",
    "VerifyLedger",
    "EraseSubject",
    "RestrictProcessing",
    "ListSigningKeys",
    "FindErased",
    "ReapplyErasures",
    "ListErasures",
    "ImportConsents",
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
        "Grant" | "Refuse" | "Withdraw" | "RecordSignal" | "LinkIdentity" => &["preference_center"],
        "GetConsents" | "ListConsentHistory" | "GetReceipt" | "ListSigningKeys" => {
            &["preference_center", "privacy_ops", "auditor"]
        }
        "Check" | "BatchCheck" | "WatchChanges" => &["enforcer"],
        "Explain" => &["auditor", "privacy_ops"],
        "VerifyLedger" => &["auditor"],
        "EraseSubject" | "RestrictProcessing" | "FindErased" | "ReapplyErasures"
        | "ListErasures" | "ImportConsents" => &["privacy_ops"],
        other => panic!("unexpected rpc {other}"),
    };
    roles.iter().any(|r| needs.contains(r))
}

/// Calls one RPC with a valid-looking request; returns the status code (Ok for success).
async fn call(server: &TestServer, header: Option<&str>, rpc: &str) -> Code {
    let mut c = server.client(header).await;
    let s = || subject("matrix-subject");
    let key = || format!("k-{rpc}");
    let result = match rpc {
        "Grant" => c
            .grant(grant(
                "matrix-subject",
                "personalize.content.limited",
                &key(),
            ))
            .await
            .map(|_| ()),
        "Refuse" => c
            .refuse(pb::RefuseRequest {
                target: target("matrix-subject", "analytics.reporting"),
                idempotency_key: key(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "Withdraw" => c
            .withdraw(withdraw("matrix-subject", "analytics.reporting", &key()))
            .await
            .map(|_| ()),
        "RecordSignal" => c
            .record_signal(pb::RecordSignalRequest {
                subject: s(),
                kind: pb::SignalKind::Gpc as i32,
                value: "1".into(),
                idempotency_key: key(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "LinkIdentity" => c
            .link_identity(pb::LinkIdentityRequest {
                device_id: "matrix-device".into(),
                subject_id: "matrix-subject".into(),
                idempotency_key: key(),
            })
            .await
            .map(|_| ()),
        "GetConsents" => c
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("matrix-other"),
            })
            .await
            .map(|_| ()),
        "ListConsentHistory" => c
            .list_consent_history(pb::ListConsentHistoryRequest {
                subject: s(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "Check" => c
            .check(check("matrix-subject", "personalize.content.limited", &[]))
            .await
            .map(|_| ()),
        "BatchCheck" => c
            .batch_check(pb::BatchCheckRequest {
                checks: vec![check("matrix-subject", "personalize.content.limited", &[])],
            })
            .await
            .map(|_| ()),
        "Explain" => c
            .explain(pb::ExplainRequest {
                check: Some(check("matrix-subject", "personalize.content.limited", &[])),
                as_caller: "mailer".into(),
            })
            .await
            .map(|_| ()),
        "GetReceipt" => match c
            .get_receipt(pb::GetReceiptRequest {
                record_id: "no-such-record".into(),
            })
            .await
        {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        },
        "WatchChanges" => c
            .watch_changes(pb::WatchChangesRequest {
                after_revision: 0,
                heartbeat_millis: 100,
            })
            .await
            .map(|_| ()),
        "VerifyLedger" => c
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .map(|_| ()),
        "EraseSubject" => c
            .erase_subject(pb::EraseSubjectRequest {
                on_behalf_of: String::new(),
                subject: subject("matrix-erased"),
                idempotency_key: key(),
            })
            .await
            .map(|_| ()),
        "RestrictProcessing" => c
            .restrict_processing(pb::RestrictProcessingRequest {
                subject: subject("matrix-restricted"),
                restricted: true,
                idempotency_key: key(),
            })
            .await
            .map(|_| ()),
        "ListSigningKeys" => c
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await
            .map(|_| ()),
        "FindErased" => c
            .find_erased(pb::FindErasedRequest {
                on_behalf_of: String::new(),
                subjects: vec![s().expect("subject")],
            })
            .await
            .map(|_| ()),
        "ReapplyErasures" => c
            .reapply_erasures(pb::ReapplyErasuresRequest {
                on_behalf_of: String::new(),
                tombstones: vec![vec![7u8; 32]],
                sweep: true,
            })
            .await
            .map(|_| ()),
        "ListErasures" => c
            .list_erasures(pb::ListErasuresRequest::default())
            .await
            .map(|_| ()),
        // A stream: refused on its headers, or answered chunk by chunk.
        "ImportConsents" => {
            let collected = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            let chunk = pb::ImportConsentsRequest {
                source: "matrix".into(),
                records: vec![pb::ImportRecord {
                    source_record_id: "matrix-1".into(),
                    target: common::target("matrix-imported", "analytics.reporting"),
                    state: pb::ConsentState::Refused as i32,
                    collected_at: Some(prost_types::Timestamp {
                        seconds: collected.unix_timestamp(),
                        nanos: 0,
                    }),
                    ..Default::default()
                }],
            };
            match c.import_consents(tokio_stream::iter(vec![chunk])).await {
                Ok(answers) => answers.into_inner().message().await.map(|_| ()),
                Err(status) => Err(status),
            }
        }
        other => panic!("unknown rpc {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_caller_follows_the_role_table() {
    let server = TestServer::start(Backend::Sqlite).await;
    let callers: Vec<String> = server.engine.policy().callers.keys().cloned().collect();
    assert_eq!(
        callers.len(),
        9,
        "the matrix below covers the shipped policy's callers"
    );
    for rpc in RPCS {
        for header in [
            None,
            Some("Bearer not-a-known-token"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer "),
            Some("test-token-auditor"),
        ] {
            let before = server.ledger_len().await;
            let code = call(&server, header, rpc).await;
            assert_eq!(
                code,
                Code::Unauthenticated,
                "{rpc} with authorization {header:?}"
            );
            assert_eq!(
                server.ledger_len().await,
                before,
                "{rpc}: a refused call must write nothing"
            );
        }
        for caller in &callers {
            let before = server.ledger_len().await;
            let code = call(&server, Some(&format!("Bearer {}", token(caller))), rpc).await;
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
                    server.ledger_len().await,
                    before,
                    "{rpc} by {caller}: a refused call must write nothing"
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_stay_open_and_every_rpc_has_a_rule() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "consentgate.consent.v1.ConsentService".into(),
        })
        .await
        .expect("health without a token");
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Every method the API declares has an authorization rule (an RPC without one would be refused).
    let fds = prost_types::FileDescriptorSet::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let declared: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "consentgate.consent.v1")
        .flat_map(|f| f.service.iter().map(move |s| (f.package().to_owned(), s)))
        .flat_map(|(pkg, s)| {
            s.method
                .iter()
                .map(move |m| format!("/{pkg}.{}/{}", s.name(), m.name()))
        })
        .collect();
    let rules = consentgate_consent::authz::rules();
    let ruled: Vec<&str> = rules.methods().collect();
    assert_eq!(declared.len(), RPCS.len());
    for method in &declared {
        assert!(
            ruled.contains(&method.as_str()),
            "{method} has no authorization rule"
        );
    }
    server.stop().await;
}
