//! Consent that expires stops working at its expiry on the recommendation path (issue 11, item 4),
//! with no change event to announce it:
//! - a personalization level rests on records that expire: `Recommend` serves the tier before the
//!   expiry and a non-personal tier from the first request after it, although both the gate's and
//!   the consent service's caches were warm and nothing was written in between;
//! - the model stops learning from a subject at the expiry of its training consent: the training
//!   sweep unlearns it, and the model then equals one trained without it; a lapsed lease whose
//!   consent still stands is renewed; with the consent service unreachable, the sweep unlearns
//!   (fail closed).

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::recommendation::v1 as rpb;
use consentgate_recommendation::model::{CoOccurrence, Lease};
use rpb::Tier;
use std::time::{Duration, SystemTime};

/// How far ahead the expiring consents expire: long enough to warm the caches before.
const AHEAD: Duration = Duration::from_secs(2);
/// A generous bound for "eventually" (the sweep runs every 100 ms in these tests).
const EVENTUALLY: Duration = Duration::from_secs(15);

fn ask(who: &str, fresh: u64) -> rpb::RecommendRequest {
    rpb::RecommendRequest {
        subject: subject(who),
        context: Some(rpb::RecommendContext {
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

/// A grant that expires at `expires`.
fn expiring(
    who: &str,
    purpose: &str,
    key: &str,
    expires: SystemTime,
) -> consentgate_proto::consent::v1::GrantRequest {
    let mut g = grant(who, purpose, key);
    g.expires_at = Some(expires.into());
    g
}

/// Sleeps until just past `instant` (wall clock): the consent service compares expiries with its
/// own clock, which is this machine's.
async fn sleep_past(instant: SystemTime) {
    let left = instant
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left + Duration::from_millis(20)).await;
}

fn non_personal(tier: Tier) -> bool {
    matches!(tier, Tier::Contextual | Tier::Popular)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_personalization_consent_ends_its_tier_at_the_expiry_through_warm_caches() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let mut pc = suite.consent.as_caller("preference-center").await;
        let expires = SystemTime::now() + AHEAD;
        let mut last = 0;
        for (who, purpose) in [
            ("x-limited", "personalize.content.limited"),
            ("x-profiled", "personalize.content.profiled"),
        ] {
            last = last.max(
                pc.grant(expiring(who, purpose, &format!("{who}-g"), expires))
                    .await
                    .expect("grant")
                    .into_inner()
                    .revision,
            );
        }
        let mut client = suite
            .recommendation
            .as_caller("recommendation-service")
            .await;
        let recommender = &suite.recommendation.recommender;
        // Before the expiry: the personal tiers, the second time from the warm caches.
        for (who, tier) in [("x-limited", Tier::Limited), ("x-profiled", Tier::Profiled)] {
            let r = client
                .recommend(ask(who, last))
                .await
                .expect("recommend")
                .into_inner();
            assert_eq!(r.tier(), tier, "{backend:?} {who}: {}", r.tier_reason);
            let hits = recommender.gate.counters().cache_hits;
            let r = client
                .recommend(ask(who, 0))
                .await
                .expect("recommend")
                .into_inner();
            assert_eq!(r.tier(), tier, "{backend:?} {who}: {}", r.tier_reason);
            assert!(
                recommender.gate.counters().cache_hits >= hits + 2,
                "{backend:?} {who}: the second request was answered from the gate's cache"
            );
        }
        assert!(
            SystemTime::now() < expires,
            "{backend:?}: the set-up took longer than {AHEAD:?}; the test proves nothing"
        );
        // No consent write from here on: nothing but the expiry changes.
        sleep_past(expires).await;
        for who in ["x-limited", "x-profiled"] {
            let reads = recommender.profile.reads();
            let r = client
                .recommend(ask(who, 0))
                .await
                .expect("recommend")
                .into_inner();
            assert!(
                non_personal(r.tier()),
                "{backend:?} {who}: the first request after the expiry got {:?} ({})",
                r.tier(),
                r.tier_reason
            );
            assert_eq!(
                recommender.profile.reads(),
                reads,
                "{backend:?} {who}: a non-personal tier reads nothing"
            );
        }
        suite.stop().await;
    }
}

/// Records product views of `items` for `who`.
async fn views(suite: &Suite, who: &str, items: &[&str]) {
    suite
        .profile
        .as_caller("collector")
        .await
        .record_events(product_views(who, items))
        .await
        .expect("events");
}

/// Grants profiling (no expiry) and training (expiring at `training_expires`, if given) to
/// `who`, records its views, and has a profiled Recommend learn it. The last revision.
async fn learned(
    suite: &Suite,
    who: &str,
    items: &[&str],
    training_expires: Option<SystemTime>,
) -> u64 {
    let mut pc = suite.consent.as_caller("preference-center").await;
    pc.grant(grant(
        who,
        "personalize.content.profiled",
        &format!("{who}-p"),
    ))
    .await
    .expect("grant");
    let training = match training_expires {
        Some(at) => expiring(who, "train_ai_system", &format!("{who}-t"), at),
        None => grant(who, "train_ai_system", &format!("{who}-t")),
    };
    let revision = pc
        .grant(training)
        .await
        .expect("grant")
        .into_inner()
        .revision;
    views(suite, who, items).await;
    let r = suite
        .recommendation
        .as_caller("recommendation-service")
        .await
        .recommend(ask(who, revision))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(r.tier(), Tier::Profiled, "{who}: {}", r.tier_reason);
    revision
}

/// The model as one trained from `kept` only (each with its learned revision in `model`).
fn trained_without(model: &CoOccurrence, kept: &[(&str, &[&str])]) -> CoOccurrence {
    let mut scratch = CoOccurrence::new();
    for (who, items) in kept {
        let key = format!("s:{who}");
        let revision = model
            .learned_revision(&key)
            .expect("kept subject is learned");
        scratch.learn(&key, items.iter().copied(), revision);
    }
    scratch
}

const STAYER: [&str; 3] = ["sku-00002", "sku-00003", "sku-00004"];
const LEAVER: [&str; 3] = ["sku-00001", "sku-00002", "sku-00003"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_training_consent_is_unlearned_by_the_sweep() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let recommender = suite.recommendation.recommender.clone();
        recommender.set_training_sweep(Duration::from_millis(100));
        learned(&suite, "t-stayer", &STAYER, None).await;
        let expires = SystemTime::now() + AHEAD;
        learned(&suite, "t-leaver", &LEAVER, Some(expires)).await;
        let model = || recommender.model.lock().expect("model").clone();
        let before = model();
        assert!(
            before.learned_revision("s:t-leaver").is_some()
                && before.learned_revision("s:t-stayer").is_some(),
            "{backend:?}: both consenting subjects are learned"
        );
        // The lease rests on the training decision, which lapses with the training record.
        let lease = before.lease("s:t-leaver").expect("leased").until;
        assert!(
            lease <= expires,
            "{backend:?}: the leaver is held until {lease:?}, past its consent's expiry {expires:?}"
        );
        assert!(before.lease("s:t-stayer").expect("leased").until > expires);
        assert_ne!(
            before.snapshot(),
            trained_without(&before, &[("t-stayer", &STAYER)]).snapshot(),
            "{backend:?}: the leaver's contribution is in the model"
        );
        // No consent write from here on: the expiry alone must make the model forget.
        sleep_past(expires).await;
        let started = std::time::Instant::now();
        while model().learned_revision("s:t-leaver").is_some() {
            assert!(
                started.elapsed() < EVENTUALLY,
                "{backend:?}: the expired training consent was never unlearned"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = model();
        assert_eq!(
            after.snapshot(),
            trained_without(&after, &[("t-stayer", &STAYER)]).snapshot(),
            "{backend:?}: the model equals one trained without the leaver"
        );
        assert!(recommender.sweep_totals().unlearned >= 1);
        // A lapsed lease whose consent still stands is renewed, and the model is left as it is.
        {
            let mut m = recommender.model.lock().expect("model");
            let revision = m.learned_revision("s:t-stayer").expect("learned");
            let context = m.lease("s:t-stayer").expect("leased").context.clone();
            m.learn_leased(
                "s:t-stayer",
                STAYER.iter().copied(),
                revision,
                Lease {
                    until: SystemTime::now(),
                    context,
                },
            );
        }
        let started = std::time::Instant::now();
        while model()
            .lease("s:t-stayer")
            .is_none_or(|l| l.until <= SystemTime::now())
        {
            assert!(
                started.elapsed() < EVENTUALLY,
                "{backend:?}: a lapsed lease of a consenting subject was never renewed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            model().snapshot(),
            after.snapshot(),
            "{backend:?}: renewed as it was"
        );
        assert!(recommender.sweep_totals().renewed >= 1);
        // Profiling still stands, so the tier stays profiled, but nothing is learned again.
        let r = suite
            .recommendation
            .as_caller("recommendation-service")
            .await
            .recommend(ask("t-leaver", 0))
            .await
            .expect("recommend")
            .into_inner();
        assert_eq!(r.tier(), Tier::Profiled, "{backend:?}: {}", r.tier_reason);
        assert_eq!(
            model().snapshot(),
            after.snapshot(),
            "{backend:?}: an expired training consent teaches the model nothing"
        );
        suite.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lapsed_training_lease_is_unlearned_when_the_consent_service_is_unreachable() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let recommender = suite.recommendation.recommender.clone();
        recommender.set_training_sweep(Duration::from_millis(100));
        let expires = SystemTime::now() + AHEAD;
        learned(&suite, "u-leaver", &LEAVER, Some(expires)).await;
        assert!(
            recommender
                .model
                .lock()
                .expect("model")
                .learned_revision("s:u-leaver")
                .is_some()
        );
        // The consent service goes away before the lease lapses: the re-check cannot be made.
        let Suite {
            consent,
            profile,
            recommendation,
            recommendation_db,
            ..
        } = suite;
        consent.stop().await;
        sleep_past(expires).await;
        let started = std::time::Instant::now();
        while recommender.model.lock().expect("model").subjects() > 0 {
            assert!(
                started.elapsed() < EVENTUALLY,
                "{backend:?}: a lease that could not be renewed was kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            recommender.model.lock().expect("model").snapshot(),
            Default::default(),
            "{backend:?}: nothing of the subject remains"
        );
        drop(recommender);
        recommendation.stop().await;
        profile.stop().await;
        drop(recommendation_db);
    }
}
