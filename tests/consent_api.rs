//! The consent service end to end over real gRPC, on SQLite and PostgreSQL: bad input, the
//! withdrawal guarantee, the change stream, idempotency, receipts, erasure and the cache.

mod common;

use common::*;
use consentgate_consent::testing::{Backend, backends};
use consentgate_proto::consent::v1 as pb;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_stores_nothing() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("profile-service").await;
        let mut auditor = server.as_caller("auditor").await;
        let before = server.ledger_len().await;

        let mut empty_subject = grant("", "personalize.content.profiled", "k1");
        empty_subject.target.as_mut().unwrap().subject = subject("");
        let mut no_subject = grant("x", "personalize.content.profiled", "k2");
        no_subject.target.as_mut().unwrap().subject = None;
        let mut bad_category = grant("x", "personalize.content.profiled", "k3");
        bad_category.target.as_mut().unwrap().data_category = "user.nope".into();
        let mut unneeded_category = grant("x", "personalize.content.limited", "k4");
        unneeded_category.target.as_mut().unwrap().data_category = "user.health".into();
        let mut no_channel = grant("x", "marketing.communications.email", "k5");
        no_channel.target.as_mut().unwrap().channel = String::new();
        let mut wrong_channel = grant("x", "marketing.communications.email", "k6");
        wrong_channel.target.as_mut().unwrap().channel = "sms".into();
        let mut bad_ip = grant("x", "personalize.content.profiled", "k7");
        bad_ip.source = Some(pb::ConsentSource {
            ip_address: "not-an-ip".into(),
            user_agent: String::new(),
        });
        let mut no_type = grant("x", "personalize.content.profiled", "k8");
        no_type.consent_type = 0;
        let mut past_expiry = grant("x", "personalize.content.profiled", "k9");
        past_expiry.expires_at = Some(prost_types::Timestamp {
            seconds: 1_000,
            nanos: 0,
        });
        let grants: Vec<(pb::GrantRequest, &str)> = vec![
            (empty_subject, "target.subject.subject_id"),
            (no_subject, "target.subject"),
            (grant("x", "no.such.purpose", "k10"), "target.purpose"),
            (grant("x", "", "k11"), "target.purpose"),
            (bad_category, "target.data_category"),
            (unneeded_category, "target.data_category"),
            (no_channel, "target.channel"),
            (wrong_channel, "target.channel"),
            (bad_ip, "source.ip_address"),
            (no_type, "consent_type"),
            (past_expiry, "expires_at"),
            (
                grant("x", "personalize.content.profiled", ""),
                "idempotency_key",
            ),
            (
                grant("x", "personalize.content.profiled", &"k".repeat(129)),
                "idempotency_key",
            ),
            (
                grant(&"x".repeat(300), "personalize.content.profiled", "k12"),
                "target.subject.subject_id",
            ),
        ];
        for (request, field) in grants {
            let err = pc.grant(request).await.expect_err("bad grant must fail");
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{backend:?} {field}: {err:?}"
            );
            assert!(
                bad_fields(&err).iter().any(|f| f == field),
                "{backend:?}: expected field {field}, got {:?}",
                bad_fields(&err)
            );
            assert_eq!(reason(&err), "INVALID_ARGUMENT");
        }

        let checks: Vec<(pb::CheckRequest, &str)> = vec![
            (
                check("", "personalize.content.profiled", &[]),
                "subject.subject_id",
            ),
            (check("x", "no.such.purpose", &[]), "purpose"),
            (check("x", "", &[]), "purpose"),
            (
                check("x", "personalize.content.profiled", &["user.nope"]),
                "data_categories[0]",
            ),
            (
                check(
                    "x",
                    "personalize.content.profiled",
                    &["user.health", "user.bogus"],
                ),
                "data_categories[1]",
            ),
            (
                pb::CheckRequest {
                    at_least_as_fresh: "not-a-token".into(),
                    ..check("x", "personalize.content.profiled", &[])
                },
                "at_least_as_fresh",
            ),
            (
                pb::CheckRequest {
                    at_least_as_fresh: "-5".into(),
                    ..check("x", "personalize.content.profiled", &[])
                },
                "at_least_as_fresh",
            ),
            (
                pb::CheckRequest {
                    channel: "fax".into(),
                    ..check("x", "marketing.communications.email", &[])
                },
                "channel",
            ),
            (
                pb::CheckRequest {
                    channel: String::new(),
                    ..check("x", "marketing.communications", &[])
                },
                "channel",
            ),
            (
                pb::CheckRequest {
                    context: Some(consentgate_proto::common::v1::RequestContext {
                        jurisdiction: "XX".into(),
                        gpc: false,
                    }),
                    ..check("x", "personalize.content.profiled", &[])
                },
                "context.jurisdiction",
            ),
            (
                pb::CheckRequest {
                    on_behalf_of: "nobody".into(),
                    ..check("x", "personalize.content.profiled", &[])
                },
                "on_behalf_of",
            ),
        ];
        for (request, field) in checks {
            let err = enforcer
                .check(request)
                .await
                .expect_err("bad check must fail");
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{backend:?} {field}: {err:?}"
            );
            assert!(
                bad_fields(&err).iter().any(|f| f == field),
                "{backend:?}: expected {field}, got {:?}",
                bad_fields(&err)
            );
        }

        // Oversized and empty batches, and a bad item deep inside a batch.
        let oversized = pb::BatchCheckRequest {
            checks: vec![check("x", "personalize.content.profiled", &[]); 1001],
        };
        let err = enforcer
            .batch_check(oversized)
            .await
            .expect_err("oversized batch");
        assert_eq!(
            (err.code(), bad_fields(&err)),
            (Code::InvalidArgument, vec!["checks".to_owned()]),
            "{backend:?}"
        );
        let err = enforcer
            .batch_check(pb::BatchCheckRequest { checks: vec![] })
            .await
            .expect_err("empty batch");
        assert_eq!(bad_fields(&err), vec!["checks".to_owned()]);
        let mut batch = vec![check("x", "personalize.content.profiled", &[]); 10];
        batch[7].purpose = "bogus".into();
        let err = enforcer
            .batch_check(pb::BatchCheckRequest { checks: batch })
            .await
            .expect_err("bad item");
        assert_eq!(
            bad_fields(&err),
            vec!["checks[7].purpose".to_owned()],
            "{backend:?}"
        );

        // Bad page tokens, including one issued for another subject.
        let history = |who: &str, token: &str| pb::ListConsentHistoryRequest {
            on_behalf_of: String::new(),
            subject: subject(who),
            page_size: 1,
            page_token: token.to_owned(),
        };
        let err = auditor
            .list_consent_history(history("x", "garbage!"))
            .await
            .expect_err("bad token");
        assert_eq!(
            bad_fields(&err),
            vec!["page_token".to_owned()],
            "{backend:?}"
        );
        let err = auditor
            .list_consent_history(pb::ListConsentHistoryRequest {
                page_size: 501,
                ..history("x", "")
            })
            .await
            .expect_err("big page");
        assert_eq!(bad_fields(&err), vec!["page_size".to_owned()]);

        // Bad signals and links.
        let err = pc
            .record_signal(pb::RecordSignalRequest {
                subject: subject("x"),
                kind: pb::SignalKind::AgeBand as i32,
                value: "twelve".into(),
                idempotency_key: "s1".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad age band");
        assert_eq!(bad_fields(&err), vec!["value".to_owned()]);
        let err = pc
            .record_signal(pb::RecordSignalRequest {
                subject: subject("x"),
                kind: 0,
                value: "1".into(),
                idempotency_key: "s2".into(),
                ..Default::default()
            })
            .await
            .expect_err("no kind");
        assert_eq!(bad_fields(&err), vec!["kind".to_owned()]);
        let err = pc
            .link_identity(pb::LinkIdentityRequest {
                device_id: String::new(),
                subject_id: "x".into(),
                idempotency_key: "l1".into(),
            })
            .await
            .expect_err("no device");
        assert_eq!(bad_fields(&err), vec!["device_id".to_owned()]);

        assert_eq!(
            server.ledger_len().await,
            before,
            "{backend:?}: bad input must store nothing"
        );
        server.stop().await;
    }
}

/// Check with the token a Withdraw returned is denied every time, even with an allow cached
/// just before and concurrent Checks racing to refill the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_then_check_with_token_is_denied_1000_of_1000() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("recommendation-service").await;
        let purpose = "personalize.content.profiled";
        let categories = ["user.behavior.purchase_history"];
        // A background reader keeps re-filling the cache for the same subject.
        let racer = {
            let mut c = server.as_caller("recommendation-service").await;
            tokio::spawn(async move {
                loop {
                    let _ = c.check(check("racer-target", purpose, &categories)).await;
                }
            })
        };
        let mut denied = 0;
        for trial in 0..1000 {
            let who = if trial % 2 == 0 {
                "racer-target"
            } else {
                "solo"
            };
            let granted = pc
                .grant(grant(who, purpose, &format!("g{trial}")))
                .await
                .expect("grant")
                .into_inner();
            let allowed = enforcer
                .check(pb::CheckRequest {
                    at_least_as_fresh: granted.revision.to_string(),
                    ..check(who, purpose, &categories)
                })
                .await
                .expect("check")
                .into_inner();
            assert_eq!(
                allowed.verdict(),
                pb::Verdict::Allow,
                "{backend:?} trial {trial}: the grant must be visible with its token"
            );
            let withdrawn = pc
                .withdraw(withdraw(who, purpose, &format!("w{trial}")))
                .await
                .expect("withdraw")
                .into_inner();
            let decision = enforcer
                .check(pb::CheckRequest {
                    at_least_as_fresh: withdrawn.revision.to_string(),
                    ..check(who, purpose, &categories)
                })
                .await
                .expect("check")
                .into_inner();
            assert!(
                decision.revision >= withdrawn.revision,
                "{backend:?}: decision older than the token"
            );
            if decision.verdict() == pb::Verdict::Deny
                && decision.categories[0].reason == "WITHDRAWN"
            {
                denied += 1;
            }
        }
        racer.abort();
        assert_eq!(
            denied, 1000,
            "{backend:?}: withdrawal must be enforced at once for token holders"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_changes_delivers_changes_heartbeats_and_resumes() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut watcher = server.as_caller("profile-service").await;
        let first = pc
            .grant(grant("w1", "personalize.content.profiled", "a"))
            .await
            .expect("grant")
            .into_inner();
        let mut stream = watcher
            .watch_changes(pb::WatchChangesRequest {
                after_revision: 0,
                heartbeat_millis: 100,
            })
            .await
            .expect("watch")
            .into_inner();
        use pb::watch_changes_response::Message;
        // Replay of what happened before the stream opened.
        match next(&mut stream).await.message {
            Some(Message::Change(c)) => {
                assert_eq!(
                    (c.revision, c.kind.as_str(), c.purpose.as_str()),
                    (first.revision, "grant", "personalize.content.profiled"),
                    "{backend:?}"
                );
                assert_eq!(c.subject, subject("w1"));
            }
            other => panic!("{backend:?}: expected the replayed change, got {other:?}"),
        }
        // Idle: heartbeats, carrying the high water.
        let mut beats = 0;
        while beats < 3 {
            match next(&mut stream).await.message {
                Some(Message::Heartbeat(h)) => {
                    assert_eq!(h.high_water_revision, first.revision, "{backend:?}");
                    beats += 1;
                }
                other => panic!("{backend:?}: expected a heartbeat while idle, got {other:?}"),
            }
        }
        // A live change arrives.
        let second = pc
            .withdraw(withdraw("w1", "personalize.content.profiled", "b"))
            .await
            .expect("withdraw")
            .into_inner();
        let change = loop {
            if let Some(Message::Change(c)) = next(&mut stream).await.message {
                break c;
            }
        };
        assert_eq!(
            (change.revision, change.kind.as_str()),
            (second.revision, "withdraw"),
            "{backend:?}"
        );
        // Resuming after the first revision replays only the second.
        let mut resumed = watcher
            .watch_changes(pb::WatchChangesRequest {
                after_revision: first.revision,
                heartbeat_millis: 100,
            })
            .await
            .expect("watch")
            .into_inner();
        match next(&mut resumed).await.message {
            Some(Message::Change(c)) => assert_eq!(c.revision, second.revision, "{backend:?}"),
            other => panic!("{backend:?}: expected the second change, got {other:?}"),
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_return_the_same_answer_and_write_once() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let before = server.ledger_len().await;
        let request = grant("idem", "personalize.content.limited", "retry-me");
        let first = pc.grant(request.clone()).await.expect("grant").into_inner();
        for _ in 0..5 {
            let again = pc.grant(request.clone()).await.expect("retry").into_inner();
            assert_eq!(
                again, first,
                "{backend:?}: a retry must return the first answer"
            );
        }
        assert_eq!(
            server.ledger_len().await,
            before + 1,
            "{backend:?}: written once"
        );
        // Same key, different request: refused, nothing written.
        let err = pc
            .grant(grant("idem", "personalize.content.profiled", "retry-me"))
            .await
            .expect_err("conflict");
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"),
            "{backend:?}"
        );
        // Keys are per caller: the same key from another caller is another write.
        let w = withdraw("idem", "personalize.content.limited", "retry-w");
        let a = pc.withdraw(w.clone()).await.expect("withdraw").into_inner();
        let b = pc.withdraw(w).await.expect("withdraw retry").into_inner();
        assert_eq!(a, b);
        assert_eq!(server.ledger_len().await, before + 2, "{backend:?}");
        let mut ops = server.as_caller("privacy-ops").await;
        let r = pb::RestrictProcessingRequest {
            subject: subject("idem"),
            restricted: true,
            idempotency_key: "retry-me".into(),
        };
        let r1 = ops
            .restrict_processing(r.clone())
            .await
            .expect("restrict")
            .into_inner();
        assert_eq!(
            ops.restrict_processing(r)
                .await
                .expect("again")
                .into_inner(),
            r1
        );
        assert_eq!(server.ledger_len().await, before + 3, "{backend:?}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_fresh_cache_answers_check_without_the_database() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("recommendation-service").await;
        let granted = pc
            .grant(grant("warm", "personalize.content.profiled", "g"))
            .await
            .expect("grant")
            .into_inner();
        let q = pb::CheckRequest {
            at_least_as_fresh: granted.revision.to_string(),
            ..check(
                "warm",
                "personalize.content.profiled",
                &["user.behavior.browsing_history"],
            )
        };
        enforcer.check(q.clone()).await.expect("first check");
        let loads = server.engine.store_loads();
        for _ in 0..200 {
            let d = enforcer.check(q.clone()).await.expect("check").into_inner();
            assert_eq!(d.verdict(), pb::Verdict::Allow);
        }
        assert_eq!(
            server.engine.store_loads(),
            loads,
            "{backend:?}: warm checks must not read the store"
        );
        // A write invalidates: the next check reads through once.
        pc.withdraw(withdraw("warm", "personalize.content.profiled", "w"))
            .await
            .expect("withdraw");
        let d = enforcer
            .check(check("warm", "personalize.content.profiled", &[]))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            d.verdict(),
            pb::Verdict::Deny,
            "{backend:?}: the withdrawal must be visible without a token on this replica"
        );
        assert_eq!(server.engine.store_loads(), loads + 1, "{backend:?}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_verify_and_erasure_leaves_a_verifiable_ledger() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut ops = server.as_caller("privacy-ops").await;
        let mut auditor = server.as_caller("auditor").await;
        let mut enforcer = server.as_caller("profile-service").await;
        let granted = pc
            .grant(grant("erin", "personalize.content.profiled", "g1"))
            .await
            .expect("grant")
            .into_inner();
        let record_id = granted.record.as_ref().expect("record").record_id.clone();
        pc.link_identity(pb::LinkIdentityRequest {
            device_id: "erin-phone".into(),
            subject_id: "erin".into(),
            idempotency_key: "l1".into(),
        })
        .await
        .expect("link");
        let receipt = auditor
            .get_receipt(pb::GetReceiptRequest {
                record_id: record_id.clone(),
            })
            .await
            .expect("receipt")
            .into_inner();
        let json = consentgate_consent::receipt::verify(&receipt.receipt_jws, &receipt.public_key)
            .expect("the receipt's signature verifies");
        assert_eq!(json, receipt.receipt_json);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(parsed["version"], "KI-CR-v1.1.0");
        assert_eq!(parsed["piiPrincipalId"], "erin");
        assert_eq!(parsed["consentReceiptID"], record_id.as_str());
        let mut tampered = receipt.receipt_jws.clone();
        tampered.insert(tampered.find('.').expect("jws") + 3, 'x');
        assert!(
            consentgate_consent::receipt::verify(&tampered, &receipt.public_key).is_none(),
            "a tampered receipt must not verify"
        );

        // The linked device is decided by erin's consent.
        let by_device = enforcer
            .check(pb::CheckRequest {
                subject: device("erin-phone"),
                ..check("", "personalize.content.profiled", &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(by_device.verdict(), pb::Verdict::Allow, "{backend:?}");

        let erased = ops
            .erase_subject(pb::EraseSubjectRequest {
                on_behalf_of: String::new(),
                subject: subject("erin"),
                idempotency_key: "e1".into(),
            })
            .await
            .expect("erase")
            .into_inner();
        assert_eq!(erased.records_deleted, 1, "{backend:?}");
        for who in [subject("erin"), device("erin-phone")] {
            let d = enforcer
                .check(pb::CheckRequest {
                    subject: who,
                    at_least_as_fresh: erased.revision.to_string(),
                    ..check("", "personalize.content.profiled", &[])
                })
                .await
                .expect("check")
                .into_inner();
            assert_eq!(
                (d.verdict(), d.reason.as_str()),
                (pb::Verdict::Deny, "SUBJECT_ERASED"),
                "{backend:?}"
            );
        }
        let err = auditor
            .get_receipt(pb::GetReceiptRequest { record_id })
            .await
            .expect_err("receipt gone");
        assert_eq!(err.code(), Code::NotFound);
        let err = pc
            .grant(grant("erin", "personalize.content.profiled", "g2"))
            .await
            .expect_err("erased");
        assert_eq!(reason(&err), "SUBJECT_ERASED", "{backend:?}");
        let again = ops
            .erase_subject(pb::EraseSubjectRequest {
                on_behalf_of: String::new(),
                subject: subject("erin"),
                idempotency_key: "e2".into(),
            })
            .await
            .expect("erase again")
            .into_inner();
        assert_eq!(
            again.revision, erased.revision,
            "{backend:?}: erasure is idempotent"
        );
        let report = auditor
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .expect("verify")
            .into_inner();
        assert!(report.ok, "{backend:?}: {report:?}");
        assert_eq!(report.entries_checked, 3);
        // Nothing in the ledger names erin any more.
        for entry in consentgate_consent::testing::ledger(&server.engine)
            .await
            .expect("ledger")
        {
            assert!(
                !entry.event.contains("erin"),
                "{backend:?}: {}",
                entry.event
            );
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_history_explain_and_delegation() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut auditor = server.as_caller("auditor").await;
        let mut enforcer = server.as_caller("profile-service").await;
        for i in 0..5 {
            pc.grant(grant(
                "hist",
                "personalize.content.profiled",
                &format!("g{i}"),
            ))
            .await
            .expect("grant");
        }
        let mut email = grant("hist", "marketing.communications.email", "mail");
        email.target.as_mut().unwrap().channel = "email".into();
        email.notice_version = "1.2".into();
        pc.grant(email).await.expect("email grant");
        let current = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("hist"),
            })
            .await
            .expect("consents")
            .into_inner();
        assert_eq!(
            current.consents.len(),
            2,
            "{backend:?}: the latest per purpose/channel/scope"
        );
        // Paging through the history returns every event once, in order.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = auditor
                .list_consent_history(pb::ListConsentHistoryRequest {
                    on_behalf_of: String::new(),
                    subject: subject("hist"),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .expect("page")
                .into_inner();
            seen.extend(page.records.iter().map(|r| r.revision));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 6, "{backend:?}");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{backend:?}: {seen:?}"
        );
        // Delegation: the mailer may not ask for analytics, even through the profile service.
        let d = enforcer
            .check(pb::CheckRequest {
                on_behalf_of: "mailer".into(),
                ..check("hist", "personalize.content.profiled", &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(d.reason, "CALLER_NOT_PERMITTED", "{backend:?}");
        let d = enforcer
            .check(pb::CheckRequest {
                on_behalf_of: "mailer".into(),
                channel: "email".into(),
                ..check(
                    "hist",
                    "marketing.communications.email",
                    &["user.contact.email"],
                )
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(d.verdict(), pb::Verdict::Allow, "{backend:?}: {d:?}");
        let explained = auditor
            .explain(pb::ExplainRequest {
                check: Some(check(
                    "hist",
                    "personalize.content.profiled",
                    &["user.health"],
                )),
                as_caller: "recommendation-service".into(),
            })
            .await
            .expect("explain")
            .into_inner();
        assert!(
            explained
                .narrative
                .iter()
                .any(|l| l.contains("SENSITIVE_REQUIRES_EXPLICIT_CONSENT")),
            "{:?}",
            explained.narrative
        );
        server.stop().await;
    }
}

async fn next(s: &mut tonic::Streaming<pb::WatchChangesResponse>) -> pb::WatchChangesResponse {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("stream stalled")
        .expect("stream ended")
        .expect("stream error")
}

/// On PostgreSQL, replicas hear each other's commits (LISTEN/NOTIFY) instead of waiting for a
/// poll: a replica that reads the feed only once an hour unless notified still drops its cached
/// allow after a withdrawal made through another replica, and its change stream carries the
/// withdrawal, with heartbeats that move to the new high water. No poll could have told it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_hear_each_others_commits_without_polling() {
    use pb::watch_changes_response::Message;
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let first = TestServer::start(Backend::Postgres).await;
    let deaf = first.replica_polling_every(Duration::from_secs(3600)).await;
    let mut pc = first.as_caller("preference-center").await;
    let mut enforcer = deaf.as_caller("recommendation-service").await;
    let purpose = "personalize.content.profiled";
    let granted = pc
        .grant(grant("heard", purpose, "g"))
        .await
        .expect("grant")
        .into_inner();
    // Read through for the token, so the replica caches the allow.
    let allowed = enforcer
        .check(pb::CheckRequest {
            at_least_as_fresh: granted.revision.to_string(),
            ..check("heard", purpose, &[])
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(allowed.verdict(), pb::Verdict::Allow);
    let mut stream = enforcer
        .watch_changes(pb::WatchChangesRequest {
            after_revision: granted.revision,
            heartbeat_millis: 100,
        })
        .await
        .expect("watch")
        .into_inner();

    let withdrawn = pc
        .withdraw(withdraw("heard", purpose, "w"))
        .await
        .expect("withdraw")
        .into_inner();
    // The stream on the other replica carries the withdrawal.
    let waiting = std::time::Instant::now();
    let change = loop {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the replica never heard of the withdrawal (only its hourly poll could have told it)"
        );
        match next(&mut stream).await.message {
            Some(Message::Change(c)) => break c,
            Some(Message::Heartbeat(h)) => assert!(
                h.high_water_revision < withdrawn.revision,
                "a heartbeat claimed {} before the change was sent",
                h.high_water_revision
            ),
            None => panic!("an empty message"),
        }
    };
    assert_eq!(
        (change.revision, change.kind.as_str()),
        (withdrawn.revision, "withdraw")
    );
    match next(&mut stream).await.message {
        Some(Message::Heartbeat(h)) => assert_eq!(h.high_water_revision, withdrawn.revision),
        other => panic!("expected a heartbeat at the new high water, got {other:?}"),
    }
    // And its cache no longer holds the allow, without a token: it was told, not polled.
    let denied = enforcer
        .check(check("heard", purpose, &[]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        denied.verdict(),
        pb::Verdict::Deny,
        "the replica still served its cached allow after the withdrawal's change reached its stream"
    );
    deaf.stop().await;
    first.stop().await;
}

/// A replica whose database connection fails stops vouching for what it holds: its change
/// streams fall silent and its Checks read through (failing closed) instead of answering from
/// its cache, at once, not after four feed polls. Otherwise a gate whose lease ran out asks it
/// and gets the allow that a withdrawal through another replica overturned meanwhile (the
/// rehearsal saw reads return data 1.25 s after such a withdrawal). This replica polls hourly:
/// only its lost commit-notice listener can tell it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_database_stops_vouching_for_its_cache_at_once() {
    use pb::watch_changes_response::Message;
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let first = TestServer::start(Backend::Postgres).await;
    let proxy = CutProxy::start(server_of(&first.url)).await;
    let cut_off = first
        .replica_at(&through(&first.url, proxy.addr), Duration::from_secs(3600))
        .await;
    let mut pc = first.as_caller("preference-center").await;
    let mut enforcer = cut_off.as_caller("recommendation-service").await;
    let purpose = "personalize.content.profiled";
    let granted = pc
        .grant(grant("partitioned", purpose, "g"))
        .await
        .expect("grant")
        .into_inner();
    // Read through for the token: the replica caches the allow.
    let allowed = enforcer
        .check(pb::CheckRequest {
            at_least_as_fresh: granted.revision.to_string(),
            ..check("partitioned", purpose, &[])
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(allowed.verdict(), pb::Verdict::Allow);
    let mut stream = enforcer
        .watch_changes(pb::WatchChangesRequest {
            after_revision: granted.revision,
            heartbeat_millis: 100,
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(matches!(
        next(&mut stream).await.message,
        Some(Message::Heartbeat(_))
    ));

    proxy.cut();
    pc.withdraw(withdraw("partitioned", purpose, "w"))
        .await
        .expect("the other replica still takes writes");
    // The stream falls silent: no heartbeat for 300 ms (15 intervals), within seconds, where an
    // hourly poll would have kept it beating for four hours.
    let waiting = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => assert!(
                waiting.elapsed() < Duration::from_secs(5),
                "a replica without its database kept heartbeating"
            ),
        }
    }
    // And it no longer answers from its cache: UNAVAILABLE, never the overturned allow.
    let answer = enforcer.check(check("partitioned", purpose, &[])).await;
    match answer {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(r) => panic!(
            "a replica without its database answered {:?} from its cache",
            r.into_inner().verdict()
        ),
    }
    cut_off.stop().await;
    first.stop().await;
}

/// Two replicas share one database: a withdrawal through one is enforced by the other at once
/// for token holders, and within the change-feed follow interval for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_enforces_a_withdrawal_made_through_the_first() {
    for backend in backends() {
        let first = TestServer::start(backend).await;
        let second = first.replica().await;
        let mut pc = first.as_caller("preference-center").await;
        let mut enforcer = second.as_caller("recommendation-service").await;
        let purpose = "personalize.content.profiled";
        let granted = pc
            .grant(grant("shared", purpose, "g"))
            .await
            .expect("grant")
            .into_inner();
        let allowed = enforcer
            .check(pb::CheckRequest {
                at_least_as_fresh: granted.revision.to_string(),
                ..check("shared", purpose, &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            allowed.verdict(),
            pb::Verdict::Allow,
            "{backend:?}: the other replica reads through for a newer token"
        );
        // The second replica now caches the allow.
        let withdrawn = pc
            .withdraw(withdraw("shared", purpose, "w"))
            .await
            .expect("withdraw")
            .into_inner();
        let with_token = enforcer
            .check(pb::CheckRequest {
                at_least_as_fresh: withdrawn.revision.to_string(),
                ..check("shared", purpose, &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            with_token.verdict(),
            pb::Verdict::Deny,
            "{backend:?}: with the token, at once"
        );
        // Without the token, on a third replica that cached the allow before the withdrawal.
        let third = first.replica().await;
        let mut third_client = third.as_caller("recommendation-service").await;
        let regrant = pc
            .grant(grant("shared", purpose, "g2"))
            .await
            .expect("grant")
            .into_inner();
        let cached = third_client
            .check(pb::CheckRequest {
                at_least_as_fresh: regrant.revision.to_string(),
                ..check("shared", purpose, &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(cached.verdict(), pb::Verdict::Allow);
        pc.withdraw(withdraw("shared", purpose, "w2"))
            .await
            .expect("withdraw");
        let started = std::time::Instant::now();
        loop {
            let d = third_client
                .check(check("shared", purpose, &[]))
                .await
                .expect("check")
                .into_inner();
            if d.verdict() == pb::Verdict::Deny {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{backend:?}: the other replica kept serving the allow for 3 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        third.stop().await;
        second.stop().await;
        first.stop().await;
    }
}

/// VerifyLedger from a point a previous answer gave (its head, or its last signed checkpoint)
/// walks only the entries written since, and a malformed point is INVALID_ARGUMENT naming the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ledger_resumes_from_a_point_a_previous_answer_gave() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let pc = server.as_caller("preference-center").await;
        let mut auditor = server.as_caller("auditor").await;
        let grants = |from: u32, to: u32| {
            let mut pc = pc.clone();
            async move {
                for i in from..to {
                    pc.grant(grant(
                        &format!("auditee-{i}"),
                        "personalize.content.profiled",
                        &format!("v{i}"),
                    ))
                    .await
                    .expect("grant");
                }
            }
        };
        // Past the first signed checkpoint (every 64 entries).
        grants(0, 70).await;
        let first = auditor
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .expect("verify")
            .into_inner();
        assert!(first.ok, "{backend:?}: {first:?}");
        assert_eq!(
            (first.from_seq, first.entries_checked, first.head_seq),
            (0, 70, 70),
            "{backend:?}"
        );
        let checkpoint = first.last_checkpoint.clone().expect("a signed checkpoint");
        assert_eq!(checkpoint.seq, 64, "{backend:?}");
        assert_eq!(checkpoint.signature.len(), 64, "{backend:?}");
        assert!(first.entries_per_second.is_finite() && first.seconds >= 0.0);

        grants(70, 75).await;
        let from_head = auditor
            .verify_ledger(pb::VerifyLedgerRequest {
                from: Some(pb::LedgerPoint {
                    seq: first.head_seq,
                    hash: first.head_hash.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("verify from the head")
            .into_inner();
        assert!(from_head.ok, "{backend:?}: {from_head:?}");
        assert_eq!(
            (
                from_head.from_seq,
                from_head.entries_checked,
                from_head.head_seq
            ),
            (70, 5, 75),
            "{backend:?}"
        );
        let from_checkpoint = auditor
            .verify_ledger(pb::VerifyLedgerRequest {
                from: Some(checkpoint.clone()),
            })
            .await
            .expect("verify from the checkpoint")
            .into_inner();
        assert!(from_checkpoint.ok, "{backend:?}: {from_checkpoint:?}");
        assert_eq!(
            (from_checkpoint.from_seq, from_checkpoint.entries_checked),
            (64, 11),
            "{backend:?}"
        );
        assert_eq!(from_checkpoint.head_hash, from_head.head_hash);

        // A point whose hash is not the stored entry's is a broken ledger there, not an error.
        let mut wrong = checkpoint.clone();
        wrong.signature.clear();
        wrong.hash = "ab".repeat(32);
        let broken = auditor
            .verify_ledger(pb::VerifyLedgerRequest { from: Some(wrong) })
            .await
            .expect("verify from a wrong point")
            .into_inner();
        assert!(!broken.ok, "{backend:?}");
        assert_eq!(broken.first_broken_seq, 64, "{backend:?}");
        // A signature that does not verify: not trusted.
        let mut forged = checkpoint.clone();
        forged.signature[0] ^= 1;
        let broken = auditor
            .verify_ledger(pb::VerifyLedgerRequest { from: Some(forged) })
            .await
            .expect("verify from a forged checkpoint")
            .into_inner();
        assert!(
            !broken.ok && broken.problem.contains("starting checkpoint"),
            "{backend:?}: {broken:?}"
        );

        for (field, point) in [
            (
                "from.seq",
                pb::LedgerPoint {
                    seq: 0,
                    ..checkpoint.clone()
                },
            ),
            (
                "from.hash",
                pb::LedgerPoint {
                    hash: "not hex".into(),
                    ..checkpoint.clone()
                },
            ),
            (
                "from.hash",
                pb::LedgerPoint {
                    hash: first.head_hash.to_uppercase(),
                    ..checkpoint.clone()
                },
            ),
            (
                "from.signature",
                pb::LedgerPoint {
                    signature: vec![1, 2, 3],
                    ..checkpoint.clone()
                },
            ),
            (
                "from.kid",
                pb::LedgerPoint {
                    kid: "a kid".into(),
                    ..checkpoint.clone()
                },
            ),
        ] {
            let err = auditor
                .verify_ledger(pb::VerifyLedgerRequest { from: Some(point) })
                .await
                .expect_err(field);
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {field}");
            assert_eq!(bad_fields(&err), vec![field.to_owned()], "{backend:?}");
        }
        server.stop().await;
    }
}
