//! The tier matrix: each consent state gives the expected tier, and a spy (the recommendation
//! service's count of profile reads) proves the contextual and popular tiers read nothing.
//! Also: training consent is learned from, and its withdrawal is unlearned.

mod common;

use common::*;
use consentgate_consent::testing::Backend;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::recommendation::v1 as rpb;
use rpb::Tier;
use std::time::Duration;

fn ask(who: Option<&str>, with_context: bool, fresh: u64) -> rpb::RecommendRequest {
    rpb::RecommendRequest {
        subject: who.and_then(subject),
        context: with_context.then(|| rpb::RecommendContext {
            device: "mobile".into(),
            region: "EU".into(),
            current_item_id: "sku-00000".into(),
            ..Default::default()
        }),
        n: 5,
        at_least_as_fresh: if fresh == 0 {
            String::new()
        } else {
            fresh.to_string()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_consent_state_gets_its_tier_and_only_personal_tiers_read_the_profile() {
    let suite = Suite::start(Backend::Sqlite).await;
    let mut pc = suite.consent.as_caller("preference-center").await;
    let mut ops = suite.consent.as_caller("privacy-ops").await;
    let grant_as = |who: &str, purpose: &str, notice: &str| {
        let mut g = grant(who, purpose, &format!("{who}-{purpose}"));
        g.notice_version = notice.into();
        g
    };
    let mut last = 0;
    for (who, purpose) in [
        ("t-limited", "personalize.content.limited"),
        ("t-segment", "personalize.content.segment"),
        ("t-profiled", "personalize.content.profiled"),
        ("t-withdrawn", "personalize.content.profiled"),
        ("t-restricted", "personalize.content.profiled"),
        ("t-erased", "personalize.content.profiled"),
    ] {
        last = pc
            .grant(grant_as(who, purpose, "2.0"))
            .await
            .expect("grant")
            .into_inner()
            .revision;
    }
    last = last.max(
        pc.withdraw(withdraw(
            "t-withdrawn",
            "personalize.content.profiled",
            "t-w",
        ))
        .await
        .expect("withdraw")
        .into_inner()
        .revision,
    );
    last = last.max(
        ops.restrict_processing(pb::RestrictProcessingRequest {
            subject: subject("t-restricted"),
            restricted: true,
            idempotency_key: "t-r".into(),
        })
        .await
        .expect("restrict")
        .into_inner()
        .revision,
    );
    last = last.max(
        ops.erase_subject(pb::EraseSubjectRequest {
            on_behalf_of: String::new(),
            subject: subject("t-erased"),
            idempotency_key: "t-e".into(),
        })
        .await
        .expect("erase")
        .into_inner()
        .revision,
    );
    let cases: [(Option<&str>, bool, Tier, bool); 12] = [
        (None, true, Tier::Contextual, false),
        (None, false, Tier::Popular, false),
        (Some("t-nobody"), true, Tier::Contextual, false),
        (Some("t-nobody"), false, Tier::Popular, false),
        (Some("t-limited"), true, Tier::Limited, true),
        (Some("t-segment"), true, Tier::Segment, true),
        (Some("t-profiled"), true, Tier::Profiled, true),
        (Some("t-profiled"), false, Tier::Profiled, true),
        (Some("t-withdrawn"), true, Tier::Contextual, false),
        (Some("t-restricted"), true, Tier::Popular, false),
        (Some("t-erased"), true, Tier::Popular, false),
        (Some("t-erased"), false, Tier::Popular, false),
    ];
    let mut client = suite
        .recommendation
        .as_caller("recommendation-service")
        .await;
    for (who, with_context, tier, reads) in cases {
        let before = suite.recommendation.recommender.profile.reads();
        let r = client
            .recommend(ask(who, with_context, if who.is_some() { last } else { 0 }))
            .await
            .expect("recommend")
            .into_inner();
        let read = suite.recommendation.recommender.profile.reads() - before;
        assert_eq!(
            r.tier(),
            tier,
            "{who:?} (context: {with_context}): {}",
            r.tier_reason
        );
        assert_eq!(read > 0, reads, "{who:?} → {tier:?}: {read} profile reads");
        assert_eq!(r.items.len(), 5);
        assert!(r.items.iter().all(|i| !i.reason.is_empty()));
        assert!(!r.recommendation_id.is_empty());
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn training_consent_is_learned_and_its_withdrawal_unlearned() {
    let suite = Suite::start(Backend::Sqlite).await;
    let mut pc = suite.consent.as_caller("preference-center").await;
    pc.grant(grant("learner", "personalize.content.profiled", "l-p"))
        .await
        .expect("grant");
    let revision = pc
        .grant(grant("learner", "train_ai_system", "l-t"))
        .await
        .expect("grant")
        .into_inner()
        .revision;
    suite
        .profile
        .as_caller("collector")
        .await
        .record_events(product_views("learner", &["sku-00001", "sku-00002"]))
        .await
        .expect("events");
    let mut client = suite
        .recommendation
        .as_caller("recommendation-service")
        .await;
    let r = client
        .recommend(ask(Some("learner"), true, revision))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(r.tier(), Tier::Profiled);
    let model = || {
        suite
            .recommendation
            .recommender
            .model
            .lock()
            .expect("model")
            .snapshot()
    };
    assert!(
        model().subjects.contains_key("s:learner"),
        "a consenting subject is learned"
    );
    assert_eq!(model().pairs.len(), 1);
    // Withdrawing training consent: the change stream makes the service unlearn at once.
    pc.withdraw(withdraw("learner", "train_ai_system", "l-w"))
        .await
        .expect("withdraw");
    let started = std::time::Instant::now();
    while model().subjects.contains_key("s:learner") {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "never unlearned"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        model(),
        Default::default(),
        "nothing of the subject remains in the model"
    );
    // Still profiled (personalization consent stands), but no longer learned from.
    let r = client
        .recommend(ask(Some("learner"), true, 0))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(r.tier(), Tier::Profiled);
    assert_eq!(model(), Default::default());
    // Outcomes count per tier, without subject ids.
    let mut collector = suite.recommendation.as_caller("collector").await;
    for kind in [
        rpb::OutcomeKind::Impression,
        rpb::OutcomeKind::Click,
        rpb::OutcomeKind::Conversion,
    ] {
        collector
            .record_outcome(rpb::RecordOutcomeRequest {
                recommendation_id: r.recommendation_id.clone(),
                kind: kind as i32,
                value_minor: 4_200,
            })
            .await
            .expect("outcome");
    }
    let stats = suite
        .recommendation
        .as_caller("auditor")
        .await
        .get_stats(rpb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let profiled = stats
        .tiers
        .iter()
        .find(|t| t.tier() == Tier::Profiled)
        .expect("profiled");
    assert_eq!(
        (
            profiled.recommendations,
            profiled.impressions,
            profiled.clicks,
            profiled.conversions
        ),
        (2, 1, 1, 1)
    );
    assert!((profiled.click_through_rate - 1.0).abs() < 1e-9 && profiled.value_minor == 4_200);
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_has_a_rule_and_callers_are_checked() {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let declared: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "consentgate.recommendation.v1")
        .flat_map(|f| f.service.iter().map(move |s| (f.package().to_owned(), s)))
        .flat_map(|(pkg, s)| {
            s.method
                .iter()
                .map(move |m| format!("/{pkg}.{}/{}", s.name(), m.name()))
        })
        .collect();
    let rules = consentgate_recommendation::authz::rules();
    let ruled: Vec<&str> = rules.methods().collect();
    assert_eq!(declared.len(), 5);
    for method in &declared {
        assert!(ruled.contains(&method.as_str()), "{method} has no rule");
    }
    let suite = Suite::start(Backend::Sqlite).await;
    // Unlearn is for the privacy team only; Recommend needs a reader or an enforcer.
    let err = suite
        .recommendation
        .as_caller("mailer")
        .await
        .unlearn(rpb::UnlearnRequest {
            on_behalf_of: String::new(),
            subject: subject("x"),
        })
        .await
        .expect_err("a reader may not unlearn");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = suite
        .recommendation
        .as_caller("preference-center")
        .await
        .recommend(ask(None, true, 0))
        .await
        .expect_err("the preference center does not recommend");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // A reader asks on its own behalf: the mailer may not use personalization purposes, so even
    // a subject who consented to profiling gets nothing personal through it.
    suite
        .consent
        .as_caller("preference-center")
        .await
        .grant(grant("d-alice", "personalize.content.profiled", "d-g"))
        .await
        .expect("grant");
    let before = suite.recommendation.recommender.profile.reads();
    let r = suite
        .recommendation
        .as_caller("mailer")
        .await
        .recommend(ask(Some("d-alice"), true, 0))
        .await
        .expect("recommend")
        .into_inner();
    assert_ne!(r.tier(), Tier::Profiled, "{}", r.tier_reason);
    assert_eq!(suite.recommendation.recommender.profile.reads(), before);
    // The policy does not let the recommendation service ask on the mailer's behalf: context
    // only, said as such, and no failure of the consent service counted.
    assert!(
        r.tier_reason.contains("may personalize for"),
        "{}",
        r.tier_reason
    );
    // Bad input names the field.
    let mut bad = ask(Some("x"), true, 0);
    bad.n = 1000;
    let err = suite
        .recommendation
        .as_caller("recommendation-service")
        .await
        .recommend(bad)
        .await
        .expect_err("too many items");
    assert_eq!(bad_fields(&err), ["n"]);
    let err = suite
        .recommendation
        .as_caller("collector")
        .await
        .load_catalog(rpb::LoadCatalogRequest {
            jsonl: "{\"id\":\"a\"}\n".into(),
        })
        .await
        .expect_err("a bad catalog");
    assert_eq!(bad_fields(&err), ["jsonl"]);
    assert!(err.message().contains("line 1"), "{}", err.message());
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcome_statistics_survive_a_restart_on_every_backend() {
    for backend in consentgate_consent::testing::backends() {
        let mut suite = Suite::start(backend).await;
        let mut client = suite
            .recommendation
            .as_caller("recommendation-service")
            .await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(
                client
                    .recommend(ask(None, true, 0))
                    .await
                    .expect("recommend")
                    .into_inner()
                    .recommendation_id,
            );
        }
        let mut collector = suite.recommendation.as_caller("collector").await;
        for (id, kind) in [
            (&ids[0], rpb::OutcomeKind::Impression),
            (&ids[1], rpb::OutcomeKind::Impression),
            (&ids[1], rpb::OutcomeKind::Click),
        ] {
            collector
                .record_outcome(rpb::RecordOutcomeRequest {
                    recommendation_id: id.clone(),
                    kind: kind as i32,
                    value_minor: 0,
                })
                .await
                .expect("outcome");
        }
        let err = collector
            .record_outcome(rpb::RecordOutcomeRequest {
                recommendation_id: "01900000-0000-7000-8000-000000000000".into(),
                kind: rpb::OutcomeKind::Click as i32,
                value_minor: 0,
            })
            .await
            .expect_err("unknown recommendation");
        assert_eq!(err.code(), tonic::Code::NotFound);
        suite.restart_recommendation().await;
        // After the restart: the statistics are still there, and outcomes for earlier ids count.
        let mut collector = suite.recommendation.as_caller("collector").await;
        collector
            .record_outcome(rpb::RecordOutcomeRequest {
                recommendation_id: ids[2].clone(),
                kind: rpb::OutcomeKind::Conversion as i32,
                value_minor: 990,
            })
            .await
            .expect("outcome after restart");
        let stats = suite
            .recommendation
            .as_caller("auditor")
            .await
            .get_stats(rpb::GetStatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        let contextual = stats
            .tiers
            .iter()
            .find(|t| t.tier() == Tier::Contextual)
            .expect("contextual");
        assert_eq!(
            (
                contextual.recommendations,
                contextual.impressions,
                contextual.clicks,
                contextual.conversions,
                contextual.value_minor
            ),
            (3, 2, 1, 1, 990),
            "{backend:?}"
        );
        assert!((contextual.click_through_rate - 0.5).abs() < 1e-9);
        suite.stop().await;
    }
}
