//! Delegation without forwarded credentials (issue 15, items 2 and 6), end to end over real gRPC
//! on SQLite and PostgreSQL: a service may act on behalf of another caller only where the
//! policy's `delegates` says so; the profile service carries out the privacy team's requests with
//! its own identity, so the team's token never leaves it; the consent ledger names such a change
//! "profile-service on behalf of privacy-ops"; and erasure requests' idempotency digests are
//! keyed by each deployment's own secret.

mod common;

use common::*;
use consentgate_consent::testing::{self, backends};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::recommendation::v1 as rpb;
use tonic::Code;

const EMAIL: &str = "marketing.communications.email";

/// The probe: the mailer's question about marketing e-mail.
fn mailer_question(who: &str, on_behalf_of: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        channel: "email".into(),
        on_behalf_of: on_behalf_of.into(),
        ..check(who, EMAIL, &["user.contact.email"])
    }
}

fn refused(result: Result<tonic::Response<pb::CheckResponse>, tonic::Status>) -> tonic::Status {
    match result {
        Ok(r) => panic!("answered instead of refused: {:?}", r.into_inner()),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_is_accepted_only_where_the_policy_allows_it() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut g = grant("dl-ana", EMAIL, "dl-g1");
        g.target.as_mut().expect("target").channel = "email".into();
        g.notice_version = "1.2".into();
        pc.grant(g).await.expect("grant");
        let mut recommendation = server.as_caller("recommendation-service").await;
        let mut profile = server.as_caller("profile-service").await;

        // The spoofing probe: the recommendation service may not ask for the mailer, nor for the
        // profile service.
        for spoofed in ["mailer", "profile-service"] {
            let status = refused(
                recommendation
                    .check(mailer_question("dl-ana", spoofed))
                    .await,
            );
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{backend:?}: {status:?}"
            );
            assert_eq!(reason(&status), "DELEGATION_NOT_PERMITTED", "{status:?}");
            assert!(
                status.message().contains("recommendation-service"),
                "{status:?}"
            );
        }
        // In a batch too, and nothing of the batch is answered.
        let status = recommendation
            .batch_check(pb::BatchCheckRequest {
                checks: vec![
                    check("dl-ana", "personalize.content.profiled", &[]),
                    mailer_question("dl-ana", "mailer"),
                ],
            })
            .await
            .expect_err("a spoofed check in a batch");
        assert_eq!(reason(&status), "DELEGATION_NOT_PERMITTED", "{status:?}");
        // Without delegation, and naming itself (the same thing), its own purposes apply.
        for own in ["", "recommendation-service"] {
            let d = recommendation
                .check(mailer_question("dl-ana", own))
                .await
                .expect("own check")
                .into_inner();
            assert_eq!(d.reason, "CALLER_NOT_PERMITTED", "{backend:?}: {d:?}");
        }
        // An allowed delegation still works: the profile service for the mailer.
        let d = profile
            .check(mailer_question("dl-ana", "mailer"))
            .await
            .expect("delegated check")
            .into_inner();
        assert_eq!(d.verdict(), pb::Verdict::Allow, "{backend:?}: {d:?}");
        // The recommendation service may ask for the storefront it serves.
        let d = recommendation
            .check(pb::CheckRequest {
                on_behalf_of: "storefront".into(),
                ..check("dl-ana", "personalize.content.profiled", &[])
            })
            .await
            .expect("delegated for the storefront")
            .into_inner();
        assert_eq!(d.reason, "NO_CONSENT", "{backend:?}: {d:?}");

        // Data-subject RPCs: the profile service may erase for the privacy team only…
        let status = profile
            .erase_subject(pb::EraseSubjectRequest {
                subject: subject("dl-ana"),
                idempotency_key: "dl-e1".into(),
                on_behalf_of: "mailer".into(),
            })
            .await
            .expect_err("erasure for the mailer");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "DELEGATION_NOT_PERMITTED", "{status:?}");
        // …and never on its own account.
        let status = profile
            .erase_subject(pb::EraseSubjectRequest {
                subject: subject("dl-ana"),
                idempotency_key: "dl-e2".into(),
                ..Default::default()
            })
            .await
            .expect_err("erasure on its own account");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "ROLE_NOT_PERMITTED", "{status:?}");
        // An RPC a caller may not delegate at all is refused before its handler, whoever it
        // names: the recommendation service has no rule for EraseSubject.
        let status = recommendation
            .erase_subject(pb::EraseSubjectRequest {
                subject: subject("dl-ana"),
                idempotency_key: "dl-e3".into(),
                on_behalf_of: "privacy-ops".into(),
            })
            .await
            .expect_err("erasure by the recommendation service");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "ROLE_NOT_PERMITTED", "{status:?}");
        // A caller no policy entry names is a bad argument, and nothing was erased.
        let status = profile
            .erase_subject(pb::EraseSubjectRequest {
                subject: subject("dl-ana"),
                idempotency_key: "dl-e4".into(),
                on_behalf_of: "nobody".into(),
            })
            .await
            .expect_err("erasure for nobody");
        assert_eq!(bad_fields(&status), ["on_behalf_of"], "{status:?}");
        let d = profile
            .check(mailer_question("dl-ana", "mailer"))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(d.verdict(), pb::Verdict::Allow, "nothing was erased: {d:?}");
        // The privacy team itself may not have another caller act through it.
        let status = server
            .as_caller("privacy-ops")
            .await
            .erase_subject(pb::EraseSubjectRequest {
                subject: subject("dl-ana"),
                idempotency_key: "dl-e5".into(),
                on_behalf_of: "auditor".into(),
            })
            .await
            .expect_err("privacy-ops delegating");
        assert_eq!(reason(&status), "DELEGATION_NOT_PERMITTED", "{status:?}");
        server.stop().await;
    }
}

/// The three services wired as in production, except that the consent and recommendation
/// services do not know the privacy team's token at all: a forwarded token would be refused
/// there as unknown, so every data-subject request that completes proves it never left the
/// profile service.
struct WithoutOpsToken {
    consent: TestServer,
    profile: ProfileServer,
    recommendation: RecommendationServer,
    _recommendation_db: consentgate_consent::testing::TestDb,
}

impl WithoutOpsToken {
    async fn start(backend: consentgate_consent::testing::Backend) -> WithoutOpsToken {
        let consent =
            TestServer::start_authenticating(backend, authenticator_without("privacy-ops")).await;
        let listener = ephemeral().await;
        let cascade = Cascade(Some(format!(
            "http://{}",
            listener.local_addr().expect("address")
        )));
        let profile =
            ProfileServer::start_full(&consent, backend, ProfileOptions::default(), cascade).await;
        let recommendation_db = consentgate_consent::testing::TestDb::new(backend).await;
        let recommendation = RecommendationServer::start_authenticating(
            listener,
            &consent,
            &profile,
            &recommendation_db.url,
            authenticator_without("privacy-ops"),
        )
        .await;
        WithoutOpsToken {
            consent,
            profile,
            recommendation,
            _recommendation_db: recommendation_db,
        }
    }

    async fn stop(self) {
        self.recommendation.stop().await;
        self.profile.stop().await;
        self.consent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_subject_requests_work_with_no_privacy_team_credential_leaving_the_profile_service() {
    for backend in backends() {
        let wired = WithoutOpsToken::start(backend).await;
        // The consent service indeed refuses the privacy team's token.
        let status = wired
            .consent
            .as_caller("privacy-ops")
            .await
            .list_erasures(pb::ListErasuresRequest::default())
            .await
            .expect_err("the privacy team's token is unknown here");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        // Someone with consents, profile data and a learned model contribution.
        let who = "dl-zoe";
        let mut pc = wired.consent.as_caller("preference-center").await;
        let mut revision = 0;
        for purpose in ["personalize.content.profiled", "train_ai_system"] {
            revision = pc
                .grant(grant(who, purpose, &format!("{who}-{purpose}")))
                .await
                .expect("grant")
                .into_inner()
                .revision;
        }
        let r = wired
            .profile
            .as_caller("collector")
            .await
            .record_events(product_views(who, &["sku-00001", "sku-00002"]))
            .await
            .expect("events")
            .into_inner();
        assert_eq!(r.accepted, 2, "{r:?}");
        let r = wired
            .recommendation
            .as_caller("recommendation-service")
            .await
            .recommend(rpb::RecommendRequest {
                subject: subject(who),
                n: 3,
                at_least_as_fresh: revision.to_string(),
                ..Default::default()
            })
            .await
            .expect("recommend")
            .into_inner();
        assert_eq!(r.tier(), rpb::Tier::Profiled, "{}", r.tier_reason);

        let mut ops = wired.profile.as_caller("privacy-ops").await;
        // Export: the consents come from the consent service, asked on the team's behalf.
        let export = ops
            .export_subject_data(ppb::ExportSubjectDataRequest {
                subject: subject(who),
            })
            .await
            .expect("export")
            .into_inner();
        let document: serde_json::Value =
            serde_json::from_str(&export.document_json).expect("json");
        assert_eq!(
            document["consent_history"].as_array().map(Vec::len),
            Some(2),
            "{backend:?}: {document}"
        );
        // The access report (consents from the consent service too) lists the export's read as
        // the privacy team's, enforced by the profile service.
        let report = ops
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject(who),
            })
            .await
            .expect("report")
            .into_inner();
        let read = report
            .entries
            .iter()
            .find(|e| e.caller == "privacy-ops")
            .unwrap_or_else(|| panic!("{backend:?}: no read by the privacy team: {report:?}"));
        assert_eq!(read.enforced_by, "profile-service", "{read:?}");

        // Erasure: the cascade completes, unlearning included.
        let status = ops
            .erase_subject(ppb::EraseSubjectRequest {
                subject: subject(who),
                idempotency_key: format!("erase-{who}"),
            })
            .await
            .expect("erase")
            .into_inner()
            .status
            .expect("status");
        assert_eq!(
            status.state(),
            ppb::ErasureState::Completed,
            "{backend:?}: {status:?}"
        );
        assert!(
            status
                .steps
                .iter()
                .any(|s| s.contains("model contribution was unlearned")),
            "{status:?}"
        );
        // ReapplyErasures: every call to the consent and recommendation services succeeds.
        let run = ops
            .reapply_erasures(ppb::ReapplyErasuresRequest {})
            .await
            .expect("reapply")
            .into_inner();
        assert_eq!(
            run.state(),
            ppb::RequestState::Completed,
            "{backend:?}: {run:?}"
        );

        // The ledger names the erasure's actor, and still verifies.
        let ledger = testing::ledger(&wired.consent.engine)
            .await
            .expect("ledger");
        let heads: Vec<_> = ledger
            .iter()
            .map(|e| consentgate_consent::ledger::entry::head(&e.event).expect("a canonical event"))
            .collect();
        let erase = heads
            .iter()
            .find(|h| h.kind == "erase")
            .expect("an erase entry");
        assert_eq!(
            erase.actor.as_deref(),
            Some("profile-service on behalf of privacy-ops"),
            "{backend:?}: {erase:?}"
        );
        assert!(
            heads
                .iter()
                .filter(|h| h.kind != "erase")
                .all(|h| h.actor.is_none()),
            "direct writes carry no actor"
        );
        let verified = wired
            .consent
            .as_caller("auditor")
            .await
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .expect("verify")
            .into_inner();
        assert!(verified.ok, "{backend:?}: {verified:?}");
        wired.stop().await;
    }
}

/// The digest an erasure request's idempotency key is kept under, straight from the database.
async fn stored_digest(profile: &ProfileServer) -> String {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&profile.db.url)
        .await
        .expect("pool");
    let row = sqlx::query("SELECT idempotency FROM dsar_requests WHERE kind = 'erase'")
        .fetch_one(&pool)
        .await
        .expect("one erasure");
    pool.close().await;
    row.get::<String, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_digests_are_keyed_by_each_deployments_secret() {
    for backend in backends() {
        let consent = TestServer::start(backend).await;
        // Two deployments, each with its own secret (the harness generates one per service).
        let first = ProfileServer::start(&consent, backend).await;
        let second = ProfileServer::start(&consent, backend).await;
        let mut digests = Vec::new();
        for profile in [&first, &second] {
            let erase = || ppb::EraseSubjectRequest {
                subject: subject("dl-max"),
                idempotency_key: "erase-dl-max".into(),
            };
            let mut ops = profile.as_caller("privacy-ops").await;
            let once = ops
                .erase_subject(erase())
                .await
                .expect("erase")
                .into_inner();
            let again = ops
                .erase_subject(erase())
                .await
                .expect("retry")
                .into_inner();
            assert_eq!(
                once.status.expect("status").request_id,
                again.status.expect("status").request_id,
                "{backend:?}: a retry resumes the same request"
            );
            digests.push(stored_digest(profile).await);
        }
        assert_ne!(digests[0], digests[1], "{backend:?}: {digests:?}");
        let public = consentgate_profile::request_key::RequestKey::legacy_digest("erase-dl-max");
        assert!(
            digests.iter().all(|d| *d != public && d.len() == 64),
            "{backend:?}: {digests:?}"
        );
        first.stop().await;
        second.stop().await;
        consent.stop().await;
    }
}
