//! Withdrawal over the purpose tree, request GPC flags and the reason people see, end to end over
//! real gRPC on SQLite and PostgreSQL (issue: "stop all marketing" must stop all marketing).

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::common::v1::RequestContext;
use consentgate_proto::consent::v1 as pb;

const EMAIL: &str = "marketing.communications.email";
const SALE: &str = "third_party_sharing.sale";

fn verdict(r: &pb::CheckResponse) -> pb::Verdict {
    pb::Verdict::try_from(r.verdict).unwrap_or(pb::Verdict::Unspecified)
}

/// The mailer's question, asked by the profile service on its behalf (delegation).
fn mailer_check(who: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        channel: "email".into(),
        on_behalf_of: "mailer".into(),
        ..check(who, EMAIL, &["user.contact.email"])
    }
}

fn email_grant(who: &str, key: &str) -> pb::GrantRequest {
    let mut g = grant(who, EMAIL, key);
    g.target.as_mut().expect("target").channel = "email".into();
    g.notice_version = "1.2".into();
    g
}

/// Sale of personal information asked in California, with or without the GPC header.
fn sale_check(who: &str, gpc: bool) -> pb::CheckRequest {
    pb::CheckRequest {
        context: Some(RequestContext {
            jurisdiction: "US-CA".into(),
            gpc,
        }),
        ..check(who, SALE, &[])
    }
}

/// The story: grant marketing e-mail, withdraw all marketing, and the mailer's check is
/// denied as WITHDRAWN, with and without the withdrawal's token; a later grant of e-mail alone
/// applies again while SMS stays withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_all_marketing_stops_an_earlier_email_grant() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("profile-service").await;

        pc.grant(email_grant("pw2", "g1")).await.expect("grant");
        let before = enforcer
            .check(mailer_check("pw2"))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            verdict(&before),
            pb::Verdict::Allow,
            "{backend:?}: {before:?}"
        );

        let withdrawal = pc
            .withdraw(withdraw("pw2", "marketing", "w1"))
            .await
            .expect("withdraw")
            .into_inner();
        // Without the token (the warm cache must have been invalidated) and with it.
        for token in [String::new(), withdrawal.revision.to_string()] {
            let after = enforcer
                .check(pb::CheckRequest {
                    at_least_as_fresh: token.clone(),
                    ..mailer_check("pw2")
                })
                .await
                .expect("check")
                .into_inner();
            assert_eq!(
                verdict(&after),
                pb::Verdict::Deny,
                "{backend:?} token {token:?}"
            );
            assert_eq!(after.reason, "WITHDRAWN", "{backend:?}: {after:?}");
            assert_eq!(after.categories[0].reason, "WITHDRAWN");
        }

        // Explain cites the parent's withdrawal record as the one that decided.
        let mut auditor = server.as_caller("auditor").await;
        let explained = auditor
            .explain(pb::ExplainRequest {
                check: Some(pb::CheckRequest {
                    on_behalf_of: String::new(),
                    ..mailer_check("pw2")
                }),
                as_caller: "mailer".into(),
            })
            .await
            .expect("explain")
            .into_inner();
        let withdrawal_id = withdrawal.record.expect("record").record_id;
        assert!(
            explained
                .decision
                .as_ref()
                .expect("decision")
                .explanation
                .iter()
                .any(|s| s.outcome == "WITHDRAWN" && s.record_ids == vec![withdrawal_id.clone()]),
            "{backend:?}: {explained:?}"
        );

        // The preference center sees the e-mail grant as overridden by the withdrawal.
        let consents = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("pw2"),
            })
            .await
            .expect("consents")
            .into_inner();
        let email = consents
            .consents
            .iter()
            .find(|c| c.purpose == EMAIL)
            .expect("the e-mail grant is listed");
        assert_eq!(email.overridden_by_record_id, withdrawal_id, "{backend:?}");
        let parent = consents
            .consents
            .iter()
            .find(|c| c.purpose == "marketing")
            .expect("the withdrawal is listed");
        assert!(parent.overridden_by_record_id.is_empty());

        // Opting back in to e-mail alone, after the withdrawal, applies; SMS stays withdrawn.
        pc.grant(email_grant("pw2", "g2"))
            .await
            .expect("grant again");
        let again = enforcer
            .check(mailer_check("pw2"))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            verdict(&again),
            pb::Verdict::Allow,
            "{backend:?}: {again:?}"
        );
        let sms = enforcer
            .check(pb::CheckRequest {
                channel: "sms".into(),
                ..check("pw2", "marketing.communications.sms", &[])
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(sms.reason, "WITHDRAWN", "{backend:?}: {sms:?}");
        let consents = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("pw2"),
            })
            .await
            .expect("consents")
            .into_inner();
        assert!(
            consents
                .consents
                .iter()
                .all(|c| c.overridden_by_record_id.is_empty()),
            "{backend:?}: the newer e-mail grant stands: {consents:?}"
        );
        server.stop().await;
    }
}

/// A check over several categories, where the purpose does not need some and the person
/// withdrew the rest, names WITHDRAWN at the top, not the first category's NOT_NEEDED_FOR_PURPOSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_names_the_withdrawal_not_the_unneeded_category() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("profile-service").await;
        pc.grant(email_grant("mc", "g1")).await.expect("grant");
        pc.withdraw(withdraw("mc", "marketing", "w1"))
            .await
            .expect("withdraw");
        let d = enforcer
            .check(pb::CheckRequest {
                channel: "email".into(),
                ..check(
                    "mc",
                    EMAIL,
                    &["user.health", "user.contact.email", "user.name"],
                )
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(verdict(&d), pb::Verdict::Deny);
        let reasons: Vec<&str> = d.categories.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["NOT_NEEDED_FOR_PURPOSE", "WITHDRAWN", "WITHDRAWN"],
            "{backend:?}"
        );
        assert_eq!(d.reason, "WITHDRAWN", "{backend:?}: {d:?}");
        server.stop().await;
    }
}

/// A GPC flag on a request is recorded once as a signal (in the ledger, collection method
/// GPC_SIGNAL); an explicit opt-in recorded after it overrides it, and the decision, Explain and
/// GetConsents name the conflict; repeated flags write nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gpc_flag_is_recorded_once_and_a_later_opt_in_overrides_it() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("profile-service").await;
        let mut auditor = server.as_caller("auditor").await;

        // Sale is opt-out in California: allowed without GPC, and no signal is written.
        let start = server.ledger_len().await;
        // Explain never writes: an auditor's question with the flag is answered as if the
        // signal were recorded now, and records nothing.
        let hypothetical = auditor
            .explain(pb::ExplainRequest {
                check: Some(sale_check("gp", true)),
                as_caller: "profile-service".into(),
            })
            .await
            .expect("explain")
            .into_inner();
        assert_eq!(
            hypothetical.decision.expect("decision").reason,
            "GPC_OPT_OUT",
            "{backend:?}"
        );
        assert_eq!(
            server.ledger_len().await,
            start,
            "{backend:?}: Explain wrote"
        );
        let plain = enforcer
            .check(sale_check("gp", false))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            verdict(&plain),
            pb::Verdict::Allow,
            "{backend:?}: {plain:?}"
        );
        assert_eq!(server.ledger_len().await, start);

        let flagged = enforcer
            .check(sale_check("gp", true))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(flagged.reason, "GPC_OPT_OUT", "{backend:?}: {flagged:?}");
        assert!(flagged.conflicts.is_empty());
        assert_eq!(
            server.ledger_len().await,
            start + 1,
            "{backend:?}: one signal"
        );
        assert!(flagged.revision > plain.revision);

        // Repeated flags (Check, BatchCheck) find the signal on and write nothing.
        for _ in 0..3 {
            let again = enforcer
                .check(sale_check("gp", true))
                .await
                .expect("check")
                .into_inner();
            assert_eq!(again.reason, "GPC_OPT_OUT");
        }
        enforcer
            .batch_check(pb::BatchCheckRequest {
                checks: vec![sale_check("gp", true), sale_check("gp", true)],
            })
            .await
            .expect("batch");
        assert_eq!(
            server.ledger_len().await,
            start + 1,
            "{backend:?}: still one"
        );

        let consents = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("gp"),
            })
            .await
            .expect("consents")
            .into_inner();
        let gpc: Vec<&pb::Signal> = consents
            .signals
            .iter()
            .filter(|s| s.kind == pb::SignalKind::Gpc as i32)
            .collect();
        assert_eq!(gpc.len(), 1, "{backend:?}: {consents:?}");
        assert_eq!(gpc[0].value, "1");
        assert_eq!(
            gpc[0].collection_method,
            pb::CollectionMethod::GpcSignal as i32
        );
        assert!(consents.conflicts.is_empty());

        // The person, told of the conflict, explicitly opts in to sale: the browser still sends GPC.
        let mut opt_in = grant("gp", SALE, "sale-1");
        opt_in.jurisdiction = "US-CA".into();
        opt_in.notice_version = "3.0".into();
        pc.grant(opt_in).await.expect("opt in");
        let allowed = enforcer
            .check(sale_check("gp", true))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            verdict(&allowed),
            pb::Verdict::Allow,
            "{backend:?}: {allowed:?}"
        );
        assert_eq!(allowed.conflicts.len(), 1, "{backend:?}: {allowed:?}");
        let conflict = &allowed.conflicts[0];
        assert!(
            conflict.starts_with("opted in to third_party_sharing.sale on ")
                && conflict.contains(" after a GPC signal on "),
            "{conflict}"
        );

        let explained = auditor
            .explain(pb::ExplainRequest {
                check: Some(sale_check("gp", true)),
                as_caller: "profile-service".into(),
            })
            .await
            .expect("explain")
            .into_inner();
        assert!(
            explained.narrative.iter().any(|l| l.contains(conflict)),
            "{backend:?}: {:?}",
            explained.narrative
        );
        assert!(
            explained
                .decision
                .as_ref()
                .expect("decision")
                .explanation
                .iter()
                .any(|s| s.rule == "gpc" && s.outcome == "overridden"),
            "{explained:?}"
        );
        let consents = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: subject("gp"),
            })
            .await
            .expect("consents")
            .into_inner();
        assert_eq!(consents.conflicts, vec![conflict.clone()], "{backend:?}");

        // Clearing GPC and sending the flag again records a new signal: the flag is a fact
        // about the browser, and an opt-in older than it no longer overrides it.
        pc.record_signal(pb::RecordSignalRequest {
            subject: subject("gp"),
            kind: pb::SignalKind::Gpc as i32,
            value: "0".into(),
            idempotency_key: "gpc-off".into(),
            collection_method: pb::CollectionMethod::PreferenceCenter as i32,
        })
        .await
        .expect("clear gpc");
        let before = server.ledger_len().await;
        let denied = enforcer
            .check(sale_check("gp", true))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(denied.reason, "GPC_OPT_OUT", "{backend:?}: {denied:?}");
        assert_eq!(server.ledger_len().await, before + 1);
        server.stop().await;
    }
}

/// A device's GPC flag is recorded for the device, and a bad collection method is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flags_are_recorded_and_bad_signal_methods_refused() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut enforcer = server.as_caller("profile-service").await;
        let d = enforcer
            .check(pb::CheckRequest {
                subject: device("browser-1"),
                ..sale_check("", true)
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(d.reason, "GPC_OPT_OUT", "{backend:?}");
        let consents = pc
            .get_consents(pb::GetConsentsRequest {
                on_behalf_of: String::new(),
                subject: device("browser-1"),
            })
            .await
            .expect("consents")
            .into_inner();
        assert_eq!(consents.signals.len(), 1, "{backend:?}: {consents:?}");

        let before = server.ledger_len().await;
        let err = pc
            .record_signal(pb::RecordSignalRequest {
                subject: subject("x"),
                kind: pb::SignalKind::Gpc as i32,
                value: "1".into(),
                idempotency_key: "k".into(),
                collection_method: 99,
            })
            .await
            .expect_err("unknown method");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(bad_fields(&err), vec!["collection_method".to_owned()]);
        assert_eq!(server.ledger_len().await, before);
        server.stop().await;
    }
}
