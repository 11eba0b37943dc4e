//! What the recommendation service tells Prometheus: answers by tier (what privacy costs and
//! personalization earns starts here), the model's size, unlearning by cause, and outcomes by
//! tier and kind. No subject, device or item id is ever a label.

use crate::tier::Tier;
use consentgate_runtime::Metrics;
use consentgate_runtime::metrics::{CounterFamily, Kind};

const ANSWERS: &str = "consentgate_recommendation_answers_total";
const MODEL: &str = "consentgate_recommendation_model_subjects";
const UNLEARNED: &str = "consentgate_recommendation_unlearned_subjects_total";
const OUTCOMES: &str = "consentgate_recommendation_outcomes_total";

/// Why the model forgot a subject.
#[derive(Debug, Clone, Copy)]
pub enum Unlearning {
    /// A consent change announced on the change stream.
    ConsentChange,
    /// A training lease lapsed and the consent no longer held (or could not be checked).
    LapsedLease,
    /// An erasure's `Unlearn` request.
    Request,
}

/// The recommendation service's instruments.
pub struct RecommendationMetrics {
    registry: Metrics,
    answers: CounterFamily<1>,
    outcomes: CounterFamily<2>,
}

impl RecommendationMetrics {
    /// Registers the instruments in `metrics`.
    pub fn new(metrics: &Metrics) -> RecommendationMetrics {
        describe(metrics);
        RecommendationMetrics {
            registry: metrics.clone(),
            answers: CounterFamily::new(metrics, ANSWERS, ["tier"]),
            outcomes: CounterFamily::new(metrics, OUTCOMES, ["tier", "kind"]),
        }
    }

    /// Metrics that count nothing.
    pub fn disabled() -> RecommendationMetrics {
        RecommendationMetrics::new(&Metrics::disabled())
    }

    /// A recommendation was answered from `tier`.
    pub fn answered(&self, tier: Tier) {
        self.answers.get([tier.as_str()]).increment(1);
    }

    /// The model forgot `subjects` subjects for `cause`.
    pub fn unlearned(&self, cause: Unlearning, subjects: u64) {
        if subjects == 0 {
            return;
        }
        let cause = match cause {
            Unlearning::ConsentChange => "consent_change",
            Unlearning::LapsedLease => "lapsed_lease",
            Unlearning::Request => "request",
        };
        self.registry
            .counter(UNLEARNED, &[("cause", cause)])
            .increment(subjects);
    }

    /// An outcome of `kind` arrived for a recommendation from `tier`.
    pub fn outcome(&self, tier: Tier, kind: &str) {
        self.outcomes.get([tier.as_str(), kind]).increment(1);
    }

    /// The model's size (subjects learned from), read at each scrape.
    pub fn model_size(&self, subjects: impl Fn() -> usize + Send + Sync + 'static) {
        let gauge = self.registry.gauge(MODEL, &[]);
        self.registry
            .on_scrape(move || gauge.set(subjects() as f64));
    }
}

fn describe(m: &Metrics) {
    m.describe(
        ANSWERS,
        Kind::Counter,
        None,
        "Recommendations answered, by tier (profiled, limited, segment, contextual, popular).",
    );
    m.describe(
        MODEL,
        Kind::Gauge,
        None,
        "Subjects the co-occurrence model has learned from (each with a training consent).",
    );
    m.describe(
        UNLEARNED,
        Kind::Counter,
        None,
        "Subjects the model forgot, by cause (consent_change, lapsed_lease, request).",
    );
    m.describe(
        OUTCOMES,
        Kind::Counter,
        None,
        "Outcomes recorded, by the recommendation's tier and the outcome's kind.",
    );
}
