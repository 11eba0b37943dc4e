//! Exact unlearning: on random data, the model after a withdrawal (or an update) equals, count for
//! count, the model trained from scratch without that subject (or with its new history).

use consentgate_recommendation::model::CoOccurrence;
use proptest::prelude::*;

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
}
