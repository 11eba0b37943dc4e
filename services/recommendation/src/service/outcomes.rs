//! Effectiveness: outcomes are recorded against the recommendation id they follow (never a
//! subject id), and statistics are totals per tier.

use super::{Recommender, ServiceError};
use crate::store::TierTotals;
use crate::tier::Tier;

/// What happened after a recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The items were shown.
    Impression,
    /// An item was clicked.
    Click,
    /// An item was bought.
    Conversion,
}

impl OutcomeKind {
    /// The name the store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Impression => "impression",
            OutcomeKind::Click => "click",
            OutcomeKind::Conversion => "conversion",
        }
    }
}

/// A validated RecordOutcome request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The id Recommend returned.
    pub recommendation_id: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// The value of a conversion in minor units (not negative).
    pub value_minor: i64,
}

impl Recommender {
    /// Records an outcome against a recommendation this service issued (recently, from memory,
    /// so that an outcome may arrive before the store's batch is written; else from the store).
    pub async fn record_outcome(&self, outcome: &Outcome) -> Result<(), ServiceError> {
        let id = &outcome.recommendation_id;
        let issued = match self.issued.get(id) {
            Some(t) => Some(t),
            None => self.store.tier(id).await?,
        };
        let Some(tier) = issued else {
            return Err(ServiceError::RecommendationNotFound);
        };
        self.store
            .record_outcome(id, outcome.kind.as_str(), outcome.value_minor)
            .await?;
        self.metrics.outcome(tier, outcome.kind.as_str());
        Ok(())
    }

    /// Recommendations and outcomes per tier, every tier listed (no subject ids).
    pub async fn stats(&self) -> Result<Vec<(Tier, TierTotals)>, ServiceError> {
        Ok(self.store.totals().await?)
    }
}
