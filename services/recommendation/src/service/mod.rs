//! The recommendation service's domain room: what each RPC means, with no protocol in sight.
//! Validated domain types come in (from [`crate::convert`]), domain types and a [`ServiceError`]
//! go out; the gRPC adapter ([`crate::grpc`]) only converts around it. Subjects and consent
//! contexts stay in the shape the gate and the profile reader take them (`SubjectRef`,
//! `RequestContext`), so that Recommend hands them on without copying.
//!
//! Nothing here keeps a consent decision past its `valid_until`: the tier is picked per request
//! from the gate (whose cache honors `valid_until`), and what the model learned from a subject is
//! held under a [`Lease`](crate::model::Lease) that a background sweep re-checks when it lapses
//! ([`Recommender::sweep_training`]).
//!
//! Split by concern: [`recommend`] picks the tier and ranks, [`training`] unlearns (on consent
//! changes, at lapsed training leases, on request), [`outcomes`] records outcomes and reports
//! per-tier statistics; this module holds the recommender, the catalog swap and the error enum.

mod outcomes;
mod recommend;
mod training;

pub use outcomes::{Outcome, OutcomeKind};
pub use recommend::{RecommendAsk, Recommendation};
pub use training::{SweepTotals, TRAINING_SWEEP};

use crate::catalog::Catalog;
use crate::model::CoOccurrence;
use crate::observe::RecommendationMetrics;
use crate::profile_reader::ProfileReader;
use crate::store::{RecommendationStore, StoreError};
use crate::tier::Tier;
use consentgate_gate::Gate;
use consentgate_runtime::errors::{ErrorCode, to_status};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::Code;

/// The purpose whose decision names the personalization rung.
pub const PROFILED: &str = "personalize.content.profiled";
/// The purpose of zero-party-only recommendations.
pub const LIMITED: &str = "personalize.content.limited";
/// The purpose of segment recommendations.
pub const SEGMENT: &str = "personalize.content.segment";
/// The purpose the co-occurrence model learns under.
pub const TRAINING: &str = "train_ai_system";

/// Shared state of the service.
pub struct Recommender {
    /// The catalog (replaced whole by LoadCatalog).
    pub catalog: RwLock<Arc<Catalog>>,
    /// The co-occurrence model.
    pub model: Mutex<CoOccurrence>,
    /// The consent gate.
    pub gate: Gate,
    /// Gated profile reads.
    pub profile: ProfileReader,
    /// This service's caller name.
    name: String,
    /// Tiers and outcomes, in the service's own database (no subject ids).
    store: RecommendationStore,
    /// Which tier each recent recommendation id was, for outcomes that arrive before the store's
    /// batch is written.
    issued: moka::sync::Cache<String, Tier>,
    /// The training sweep's period; a watch so that a change applies at once and the sweep ends
    /// when the recommender is dropped (the sender goes with it).
    sweep_every: tokio::sync::watch::Sender<Duration>,
    /// What training sweeps did so far.
    sweeps: training::SweepCounters,
    /// What the service counts.
    metrics: Arc<RecommendationMetrics>,
}

/// Why a service call failed: one variant per answer a caller can branch on, each with its gRPC
/// code and reason code (the [`ErrorCode`] impl), mapped to a `Status` in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A tier that reads the profile could not: the profile service answered with this code.
    /// Recommend fails rather than quietly serving a lower tier than consent allows.
    #[error("the profile service could not answer: {0:?}")]
    ProfileUnavailable(Code),
    /// The service's own store failed (logged, without subject ids, when converted).
    #[error("the recommendation store failed")]
    StoreUnavailable,
    /// An outcome named a recommendation id this service never issued.
    #[error("no recommendation has this id")]
    RecommendationNotFound,
    /// The call's deadline passed before its store work began, so nothing was done.
    #[error("the call's deadline passed before its work began; nothing was done")]
    DeadlineExceeded,
}

impl ErrorCode for ServiceError {
    fn code(&self) -> Code {
        match self {
            ServiceError::ProfileUnavailable(_) | ServiceError::StoreUnavailable => {
                Code::Unavailable
            }
            ServiceError::RecommendationNotFound => Code::NotFound,
            ServiceError::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }

    fn reason(&self) -> &str {
        match self {
            ServiceError::ProfileUnavailable(_) => "PROFILE_UNAVAILABLE",
            ServiceError::StoreUnavailable => "STORE_UNAVAILABLE",
            ServiceError::RecommendationNotFound => "RECOMMENDATION_NOT_FOUND",
            ServiceError::DeadlineExceeded => "DEADLINE_EXCEEDED",
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        to_status(&error)
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        if error.is_deadline_exceeded() {
            return ServiceError::DeadlineExceeded;
        }
        tracing::error!(error = %error.log_safe(), "recommendation store failed");
        ServiceError::StoreUnavailable
    }
}

impl Recommender {
    /// A recommender over `catalog`, asking `gate`, reading through `profile`, counting into
    /// `metrics`.
    pub fn new(
        catalog: Catalog,
        gate: Gate,
        profile: ProfileReader,
        name: String,
        store: RecommendationStore,
        metrics: Arc<RecommendationMetrics>,
    ) -> Arc<Recommender> {
        Arc::new(Recommender {
            metrics,
            name,
            store,
            catalog: RwLock::new(Arc::new(catalog)),
            model: Mutex::new(CoOccurrence::new()),
            gate,
            profile,
            issued: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(std::time::Duration::from_secs(7 * 86_400))
                .build(),
            sweep_every: tokio::sync::watch::Sender::new(TRAINING_SWEEP),
            sweeps: training::SweepCounters::default(),
        })
    }

    /// Replaces the catalog whole (requests already ranking keep the one they started with);
    /// returns how many items and leaf categories the new one has.
    pub fn load_catalog(&self, catalog: Catalog) -> (usize, usize) {
        let counts = (catalog.items().len(), catalog.categories().len());
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_the_code_reason_and_message_callers_branch_on() {
        let cases = [
            (
                ServiceError::ProfileUnavailable(Code::DeadlineExceeded),
                Code::Unavailable,
                "PROFILE_UNAVAILABLE",
                "the profile service could not answer: DeadlineExceeded",
            ),
            (
                ServiceError::StoreUnavailable,
                Code::Unavailable,
                "STORE_UNAVAILABLE",
                "the recommendation store failed",
            ),
            (
                ServiceError::RecommendationNotFound,
                Code::NotFound,
                "RECOMMENDATION_NOT_FOUND",
                "no recommendation has this id",
            ),
        ];
        for (error, code, reason, message) in cases {
            assert_eq!((error.code(), error.reason()), (code, reason));
            let status = tonic::Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
            assert_eq!(
                consentgate_runtime::errors::reason_of(&status).as_deref(),
                Some(reason)
            );
        }
    }
}
