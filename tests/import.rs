//! Bulk import end to end (issue 16; docs/import.md): `consentgate import`'s code over real
//! gRPC into a real consent service, on every backend. A file with good, duplicate, out-of-order,
//! malformed, invalid, conflicting and future records: the good ones land once, in time order,
//! an older one lands in history only and never overrides a newer choice, the rest are reported
//! by line; an import interrupted halfway and run again ends in the same state as one run
//! straight through, with nothing written twice; the ledger verifies; a grant's receipt says it
//! was imported.

mod common;

use common::{TestServer, check, grant, token};
use consentgate::import::{ImportArgs, ImportSummary, run};
use consentgate_consent::testing::backends;
use consentgate_proto::consent::v1 as pb;
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// An RFC 3339 time `ago` before now.
fn ago(ago: Duration) -> String {
    (OffsetDateTime::now_utc() - ago)
        .format(&Rfc3339)
        .expect("a time")
}

/// The export: line numbers in comments are the file's (from 1).
fn export() -> Vec<String> {
    let days = |n: i64| ago(Duration::days(n));
    vec![
        // 1: good; ivy's marketing e-mail, 20 days ago.
        format!(
            r#"{{"id":"m-1","subject_id":"ivy","purpose":"marketing.communications.email","channel":"email","state":"given","consent_type":"explicit","collection_method":"banner","notice_version":"1.2","collected_at":"{}","ip_address":"203.0.113.9","language":"de"}}"#,
            days(20)
        ),
        // 2: good; jon's analytics grant, 10 days ago.
        format!(
            r#"{{"id":"m-2","subject_id":"jon","purpose":"analytics.reporting","state":"given","consent_type":"explicit","notice_version":"3.0","collected_at":"{}"}}"#,
            days(10)
        ),
        // 3: out of order; jon withdrew 15 days ago, before the grant above (the chunk is
        // landed in time order, so both are current in turn and the grant decides).
        format!(
            r#"{{"id":"m-3","subject_id":"jon","purpose":"analytics.reporting","state":"withdrawn","collected_at":"{}"}}"#,
            days(15)
        ),
        // 4: older than ivy's live grant of today: history only.
        format!(
            r#"{{"id":"m-4","subject_id":"ivy","purpose":"analytics.reporting","state":"withdrawn","collected_at":"{}"}}"#,
            days(5)
        ),
        // 5: line 1 again (an export with a repeated row): a duplicate.
        String::new(),
        // 6: malformed: cut off.
        r#"{"id":"m-6","subject_id":"kim","purpose":"#.to_owned(),
        // 7: invalid: a purpose the policy does not define.
        format!(
            r#"{{"id":"m-7","subject_id":"kim","purpose":"marketing.carrier_pigeon","state":"given","consent_type":"explicit","notice_version":"1","collected_at":"{}"}}"#,
            days(3)
        ),
        // 8: conflicting: m-1's id with other content.
        format!(
            r#"{{"id":"m-1","subject_id":"ivy","purpose":"marketing.communications.email","channel":"email","state":"refused","collected_at":"{}"}}"#,
            days(20)
        ),
        // 9: from the future.
        format!(
            r#"{{"id":"m-9","subject_id":"kim","purpose":"analytics.reporting","state":"refused","collected_at":"{}"}}"#,
            (OffsetDateTime::now_utc() + Duration::days(2))
                .format(&Rfc3339)
                .expect("a time")
        ),
        // 10: good; kim refused analytics 2 days ago.
        format!(
            r#"{{"id":"m-10","subject_id":"kim","purpose":"analytics.reporting","state":"refused","collected_at":"{}"}}"#,
            days(2)
        ),
    ]
}

fn write_file(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the export");
    path
}

async fn import(server: &TestServer, file: &Path, rejects: &Path) -> anyhow::Result<ImportSummary> {
    run(&ImportArgs {
        file,
        source: "legacy-crm",
        consent: &format!("http://{}", server.addr),
        token: &token("privacy-ops"),
        chunk: 3,
        rejects: Some(rejects),
    })
    .await
}

/// The rejected lines a run reported: (line, code, field).
fn rejected(path: &Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(path)
        .expect("the rejects file")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["line"].as_u64().expect("a line number"),
                v["code"].as_str().expect("a code").to_owned(),
                v["field"].as_str().expect("a field").to_owned(),
            )
        })
        .collect()
}

async fn verdict(server: &TestServer, who: &str, purpose: &str) -> pb::Verdict {
    let mut enforcer = server.as_caller("profile-service").await;
    let mut request = check(who, purpose, &[]);
    if purpose.starts_with("marketing.communications") {
        request.channel = "email".into();
    }
    let answer = enforcer.check(request).await.expect("check").into_inner();
    pb::Verdict::try_from(answer.verdict).unwrap_or(pb::Verdict::Unspecified)
}

async fn history(server: &TestServer, who: &str) -> Vec<pb::ConsentRecord> {
    let mut pc = server.as_caller("preference-center").await;
    pc.list_consent_history(pb::ListConsentHistoryRequest {
        subject: common::subject(who),
        ..Default::default()
    })
    .await
    .expect("history")
    .into_inner()
    .records
}

/// ivy's grant of analytics, today, under the current notice.
fn live_grant() -> pb::GrantRequest {
    pb::GrantRequest {
        notice_version: "3.0".into(),
        ..grant("ivy", "analytics.reporting", "live-1")
    }
}

/// What every run must end with, however it got there.
async fn assert_final_state(server: &TestServer, b: &str) {
    // One live grant and five imported records, each once.
    assert_eq!(server.ledger_len().await, 6, "{b}: ledger entries");
    // ivy's live grant of today beats the withdrawal imported from 5 days ago.
    assert_eq!(
        verdict(server, "ivy", "analytics.reporting").await,
        pb::Verdict::Allow,
        "{b}: an older import never overrides a newer choice"
    );
    assert_eq!(
        verdict(server, "ivy", "marketing.communications.email").await,
        pb::Verdict::Allow,
        "{b}: an imported grant is a grant"
    );
    // jon's grant of 10 days ago beats the withdrawal of 15 days ago, sent after it.
    assert_eq!(
        verdict(server, "jon", "analytics.reporting").await,
        pb::Verdict::Allow,
        "{b}: the latest by time decides, not the latest sent"
    );
    assert_eq!(
        verdict(server, "kim", "analytics.reporting").await,
        pb::Verdict::Deny,
        "{b}: an imported refusal is a refusal"
    );
    // jon's records are chained in the order they were collected, both marked as imported.
    let jon = history(server, "jon").await;
    let states: Vec<i32> = jon.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            pb::ConsentState::Withdrawn as i32,
            pb::ConsentState::Given as i32
        ],
        "{b}: a chunk lands in time order"
    );
    assert!(
        jon.iter().all(|r| r
            .imported
            .as_ref()
            .is_some_and(|o| o.source == "legacy-crm" && o.source_record_id.starts_with("m-"))),
        "{b}: history says where each record came from: {jon:?}"
    );
    let mut auditor = server.as_caller("auditor").await;
    let report = auditor
        .verify_ledger(pb::VerifyLedgerRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(report.ok, "{b}: the ledger verifies: {report:?}");
}

#[tokio::test]
async fn an_export_lands_once_in_time_order_and_resumes_after_an_interruption() {
    let dir = std::env::temp_dir().join(format!("cg-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let mut lines = export();
    lines[4] = lines[0].clone();
    let whole = write_file(&dir, "export.jsonl", &lines);
    let half = write_file(&dir, "half.jsonl", &lines[..4]);
    let rejects = dir.join("rejects.jsonl");

    for backend in backends() {
        let b = format!("{backend:?}");

        // Straight through.
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        pc.grant(live_grant()).await.expect("a live grant");
        let summary = import(&server, &whole, &rejects).await.expect("an import");
        assert_eq!(
            summary,
            ImportSummary {
                lines: 10,
                imported: 4,
                history_only: 1,
                duplicate: 1,
                rejected: 3,
                malformed: 1,
            },
            "{b}"
        );
        let reported = rejected(&rejects);
        assert_eq!(
            reported,
            [
                (6, "MALFORMED".to_owned(), String::new()),
                (
                    7,
                    "INVALID_ARGUMENT".to_owned(),
                    "records[2].target.purpose".to_owned()
                ),
                (
                    8,
                    "SOURCE_RECORD_CONFLICT".to_owned(),
                    "records[0].source_record_id".to_owned()
                ),
                (
                    9,
                    "INVALID_ARGUMENT".to_owned(),
                    "records[1].collected_at".to_owned()
                ),
            ],
            "{b}: every line not stored, by line"
        );
        assert_final_state(&server, &b).await;

        // The imported grant's receipt says it was imported, and when it was collected.
        let ivy = history(&server, "ivy").await;
        let email = ivy
            .iter()
            .find(|r| r.purpose == "marketing.communications.email")
            .expect("ivy's imported grant");
        let mut pc = server.as_caller("preference-center").await;
        let receipt = pc
            .get_receipt(pb::GetReceiptRequest {
                record_id: email.record_id.clone(),
            })
            .await
            .expect("a receipt")
            .into_inner();
        let json: serde_json::Value =
            serde_json::from_str(&receipt.receipt_json).expect("receipt JSON");
        assert_eq!(json["importedFrom"], "legacy-crm", "{b}: {json}");
        // Signed when first asked for (an import hands out no receipt) by the service's key,
        // over exactly this receipt; asked again, the same bytes.
        assert_eq!(
            consentgate_consent::receipt::verify(&receipt.receipt_jws, &receipt.public_key)
                .as_deref(),
            Some(receipt.receipt_json.as_str()),
            "{b}: the imported grant's receipt verifies to its JSON"
        );
        let again = pc
            .get_receipt(pb::GetReceiptRequest {
                record_id: email.record_id.clone(),
            })
            .await
            .expect("the receipt again")
            .into_inner();
        assert_eq!(
            (again.receipt_jws, again.receipt_json),
            (receipt.receipt_jws.clone(), receipt.receipt_json.clone()),
            "{b}: the same receipt, byte for byte, each time it is asked for"
        );
        assert_eq!(
            json["consentTimestamp"].as_i64(),
            email.collected_at.as_ref().map(|t| t.seconds),
            "{b}: the original time"
        );

        // The same file again: nothing new.
        let again = import(&server, &whole, &rejects).await.expect("again");
        assert_eq!(
            (again.imported, again.history_only, again.duplicate),
            (0, 0, 6),
            "{b}: a second run writes nothing"
        );
        assert_final_state(&server, &b).await;

        // Only privacy_ops imports.
        let refused = run(&ImportArgs {
            file: &whole,
            source: "legacy-crm",
            consent: &format!("http://{}", server.addr),
            token: &token("preference-center"),
            chunk: 3,
            rejects: Some(&rejects),
        })
        .await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("PermissionDenied")),
            "{b}: a preference center may not import"
        );
        server.stop().await;

        // Interrupted after four lines, then run again whole: the same state.
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        pc.grant(live_grant()).await.expect("a live grant");
        let first = import(&server, &half, &rejects).await.expect("half");
        assert_eq!(
            (first.imported, first.history_only),
            (3, 1),
            "{b}: the first half"
        );
        let resumed = import(&server, &whole, &rejects).await.expect("resumed");
        assert_eq!(
            (resumed.imported, resumed.history_only, resumed.duplicate),
            (1, 0, 5),
            "{b}: the rest lands, what landed is a duplicate"
        );
        assert_final_state(&server, &b).await;
        server.stop().await;
    }
    std::fs::remove_dir_all(&dir).ok();
}
