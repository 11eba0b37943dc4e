//! Exact unlearning: on random data, the model after a withdrawal (or an update) equals, count for
//! count, the model trained from scratch without that subject (or with its new history); and the
//! same when subjects leave because their training lease lapsed and the re-check denied them.

use consentgate_recommendation::model::{CoOccurrence, Lease};
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

fn histories() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    prop::collection::vec((0..12u8, prop::collection::vec(0..40u8, 0..25)), 1..30).prop_map(|raw| {
        raw.into_iter()
            .map(|(s, items)| {
                (
                    format!("subject-{s}"),
                    items.into_iter().map(|i| format!("sku-{i}")).collect(),
                )
            })
            .collect()
    })
}

/// Trains in order; a subject seen again replaces its earlier history.
fn train(events: &[(String, Vec<String>)]) -> CoOccurrence {
    let mut m = CoOccurrence::new();
    for (revision, (s, items)) in events.iter().enumerate() {
        m.learn(s, items.iter().map(String::as_str), revision as u64);
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn unlearning_equals_training_without_the_subject(events in histories(), pick in 0..12u8) {
        let forgotten = format!("subject-{pick}");
        let mut model = train(&events);
        model.unlearn(&forgotten);
        // From scratch: the same events, keeping each other subject's final history and revision.
        let mut scratch = CoOccurrence::new();
        for (revision, (s, items)) in events.iter().enumerate() {
            if *s != forgotten {
                scratch.learn(s, items.iter().map(String::as_str), revision as u64);
            }
        }
        prop_assert_eq!(model.snapshot(), scratch.snapshot());
    }

    #[test]
    fn unlearning_everyone_leaves_nothing(events in histories()) {
        let mut model = train(&events);
        for (s, _) in &events {
            model.unlearn(s);
        }
        prop_assert_eq!(model.snapshot(), Default::default());
        prop_assert_eq!(model.subjects(), 0);
    }

    #[test]
    fn order_of_subjects_does_not_matter(events in histories()) {
        // Keep only each subject's last history, then train in two different orders.
        let mut last = std::collections::BTreeMap::new();
        for (revision, (s, items)) in events.iter().enumerate() {
            last.insert(s.clone(), (items.clone(), revision as u64));
        }
        let mut forward = CoOccurrence::new();
        for (s, (items, r)) in &last {
            forward.learn(s, items.iter().map(String::as_str), *r);
        }
        let mut backward = CoOccurrence::new();
        for (s, (items, r)) in last.iter().rev() {
            backward.learn(s, items.iter().map(String::as_str), *r);
        }
        prop_assert_eq!(forward.snapshot(), backward.snapshot());
        prop_assert_eq!(train(&events).snapshot(), forward.snapshot());
    }

    #[test]
    fn unlearning_lapsed_leases_equals_training_without_them(
        events in histories(),
        ends in prop::collection::vec(0..20u64, 30),
        renewed in prop::collection::vec(any::<bool>(), 30),
        sweep_at in 0..20u64,
    ) {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // Each learn holds under its own lease; a subject seen again replaces its lease too.
        let mut model = CoOccurrence::new();
        let mut last = std::collections::BTreeMap::new();
        for (n, (s, items)) in events.iter().enumerate() {
            let lease = Lease { until: t(ends[n]), context: None };
            model.learn_leased(s, items.iter().map(String::as_str), n as u64, lease);
            last.insert(s.clone(), (items.clone(), n as u64, ends[n]));
        }
        // The sweep: some lapsed subjects are allowed again (renewed past the sweep), the rest
        // denied and unlearned.
        let lapsed = model.lapsed(t(sweep_at), usize::MAX);
        let mut kept_by_renewal = std::collections::BTreeSet::new();
        for (n, l) in lapsed.iter().enumerate() {
            prop_assert!(l.lease.until <= t(sweep_at));
            if renewed[n % renewed.len()] {
                prop_assert!(model.renew(l, t(sweep_at + 1)));
                kept_by_renewal.insert(l.subject.clone());
            } else {
                prop_assert!(model.unlearn_lapsed(l));
            }
        }
        prop_assert!(model.lapsed(t(sweep_at), usize::MAX).is_empty());
        let mut scratch = CoOccurrence::new();
        for (s, (items, revision, end)) in &last {
            if t(*end) > t(sweep_at) || kept_by_renewal.contains(s) {
                scratch.learn(s, items.iter().map(String::as_str), *revision);
            }
        }
        prop_assert_eq!(model.snapshot(), scratch.snapshot());
    }
}
