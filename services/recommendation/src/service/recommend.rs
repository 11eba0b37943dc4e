//! Recommend: the tier comes from the consent decision (fail closed to context when there is
//! none), the profile is read only for the tiers that need it and only under their purpose, the
//! model learns a subject only under a training decision that still holds, and ranking picks.
//! The hot path: one batched consent check, at most one profile read, no copy of the catalog
//! or the model.

use super::training::training_check;
use super::{LIMITED, PROFILED, Recommender, SEGMENT, ServiceError};
use crate::catalog::Catalog;
use crate::model::Lease;
use crate::profile_reader::ProfileRead;
use crate::ranking::{self, Moment, Pick};
use crate::store::now_micros;
use crate::tier::{Ladder, Tier, tier_for};
use consentgate_gate::{Clearance, GateError, subject_key};
use consentgate_proto::common::v1::{PersonalizationLevel, RequestContext, SubjectRef};
use consentgate_proto::consent::v1::{CheckRequest, Verdict};
use consentgate_proto::profile::v1::EventKind;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::traces;
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::time::SystemTime;

/// History read to learn a subject (or to find its segment): the whole recent history.
const HISTORY: u32 = 500;
/// History read to rank when the model already holds the subject at this revision: ranking
/// anchors on the most recent events only.
const RECENT: u32 = 40;

/// A validated Recommend request.
#[derive(Debug)]
pub struct RecommendAsk {
    /// How many items to return (1 to 100).
    pub n: usize,
    /// The subject, with its non-empty id; `None` for an anonymous session.
    pub subject: Option<SubjectRef>,
    /// The request's context (time, device, region, items, weather).
    pub moment: Moment,
    /// The consent context the gate and the profile service decide under.
    pub consent: Option<RequestContext>,
    /// A consent revision the decisions must be at least as fresh as (empty: any).
    pub at_least_as_fresh: String,
}

/// What Recommend answers: the picks, and the catalog they were picked from (the one in force
/// when ranking began, so a concurrent LoadCatalog cannot make a pick name a missing item).
#[derive(Debug)]
pub struct Recommendation {
    /// The id outcomes are recorded under.
    pub id: String,
    /// The tier the picks come from.
    pub tier: Tier,
    /// The consent revision the tier was decided at (0 when no decision was had).
    pub revision: u64,
    /// Why this tier, for a person.
    pub tier_reason: String,
    /// The ranked items, best first.
    pub picks: Vec<Pick>,
    /// The catalog the picks name.
    pub catalog: Arc<Catalog>,
}

/// What the consent decisions allow one request.
struct Allowed {
    /// The rung the profiled decision allows (`None`: an anonymous session).
    ladder: Option<Ladder>,
    /// The profiled decision's revision.
    revision: u64,
    /// The training decision when it allows learning, with the lease it grants.
    trains: Option<(SystemTime, Clearance)>,
    /// Why, for a person.
    reason: String,
}

fn ladder_of(level: PersonalizationLevel) -> Ladder {
    match level {
        PersonalizationLevel::Profiled => Ladder::Profiled,
        PersonalizationLevel::Limited => Ladder::Limited,
        PersonalizationLevel::Segment => Ladder::Segment,
        PersonalizationLevel::Contextual => Ladder::Contextual,
        PersonalizationLevel::Anonymous | PersonalizationLevel::Unspecified => Ladder::Anonymous,
    }
}

impl Recommender {
    /// Recommends for `ask`. When `caller` is not this service itself, the consent service
    /// decides on its behalf (delegation), so the caller-purpose rule applies to it.
    pub async fn recommend(
        &self,
        caller: &CallerIdentity,
        ask: RecommendAsk,
    ) -> Result<Recommendation, ServiceError> {
        let allowed = self.allowed(caller, &ask).await;
        let tier = tier_for(allowed.ladder, ask.moment.has_context());
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut tier_reason = allowed.reason;
        traces::annotate(|| {
            [
                KeyValue::new("consentgate.tier", tier.as_str()),
                KeyValue::new(
                    "consentgate.revision",
                    i64::try_from(allowed.revision).unwrap_or(i64::MAX),
                ),
            ]
        });
        let span = || [KeyValue::new("consentgate.tier", tier.as_str())];
        let picks = traces::in_span("consentgate.recommendation.rank", span, async {
            Ok::<_, ServiceError>(match (tier, &ask.subject) {
                (Tier::Profiled, Some(s)) => {
                    self.profiled(&catalog, s, &ask, allowed.revision, allowed.trains)
                        .await?
                }
                (Tier::Limited, Some(s)) => {
                    let read = self.read(s, LIMITED, None, true, &ask).await?;
                    if read.preferences.is_empty() {
                        tier_reason.push_str("; nothing shared yet, so popular picks");
                    }
                    ranking::limited(&catalog, &read.preferences, &ask.moment, ask.n)
                }
                (Tier::Segment, Some(s)) => {
                    let history = Some((&[EventKind::Purchase][..], HISTORY));
                    let read = self.read(s, SEGMENT, history, false, &ask).await?;
                    let segment = ranking::segment_of(&read.history, now_micros());
                    tier_reason.push_str(&format!("; segment: {}", segment.as_str()));
                    ranking::segment(&catalog, segment, &ask.moment, ask.n)
                }
                (Tier::Contextual, _) => {
                    let moment = &ask.moment;
                    let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
                    model.prepare(
                        &catalog,
                        std::iter::once(moment.current_item.as_str())
                            .chain(moment.session_items.iter().map(String::as_str)),
                    );
                    ranking::contextual(&catalog, &model, moment, ask.n)
                }
                _ => ranking::popular(&catalog, ask.n),
            })
        })
        .await?;
        let id = uuid::Uuid::now_v7().to_string();
        self.issued.insert(id.clone(), tier);
        self.store.record(id.clone(), tier);
        self.metrics.answered(tier);
        Ok(Recommendation {
            id,
            tier,
            revision: allowed.revision,
            tier_reason,
            picks,
            catalog,
        })
    }

    /// Asks the gate, in one batch, for the profiled decision (its personalization rung) and the
    /// training decision. No answer: context only (fail closed).
    async fn allowed(&self, caller: &CallerIdentity, ask: &RecommendAsk) -> Allowed {
        let Some(s) = &ask.subject else {
            return Allowed {
                ladder: None,
                revision: 0,
                trains: None,
                reason: "anonymous session: context only".to_owned(),
            };
        };
        let checks = vec![
            CheckRequest {
                subject: Some(s.clone()),
                purpose: PROFILED.into(),
                context: ask.consent.clone(),
                at_least_as_fresh: ask.at_least_as_fresh.clone(),
                ..Default::default()
            },
            training_check(
                s.clone(),
                ask.consent.clone(),
                ask.at_least_as_fresh.clone(),
            ),
        ];
        let on_behalf_of = (caller.name != self.name).then_some(caller.name.as_str());
        match self.gate.check_many(checks, on_behalf_of).await {
            Ok(mut d) => {
                let ladder = ladder_of(d[0].personalization_level());
                let revision = d[0].revision();
                // Learning rests on the training decision until its `valid_until` (which
                // covers the training record's expiry): that becomes the lease.
                let trains = d
                    .pop()
                    .filter(|t| t.verdict() == Verdict::Allow && t.holds_at(SystemTime::now()))
                    .map(|t| (t.valid_until(), t));
                Allowed {
                    ladder: Some(ladder),
                    revision,
                    trains,
                    reason: format!("consent allows {ladder:?} personalization").to_lowercase(),
                }
            }
            // The policy does not let this service ask on this caller's behalf (the gate passes
            // DELEGATION_NOT_PERMITTED on): it is not one the service personalizes for, and it
            // never gets the service's own purposes instead.
            Err(GateError::Rejected(status))
                if status.code() == tonic::Code::PermissionDenied =>
            {
                Allowed {
                    ladder: Some(Ladder::Contextual),
                    revision: 0,
                    trains: None,
                    reason: "this caller is not one the recommendation service may personalize for: context only".to_owned(),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no consent decision; recommending from context only");
                Allowed {
                    ladder: Some(Ladder::Contextual),
                    revision: 0,
                    trains: None,
                    reason: "consent service unavailable: context only".to_owned(),
                }
            }
        }
    }

    /// The profiled tier: reads the history (all of it when the model must (re)learn the
    /// subject, else the recent part), learns under the training lease when it still holds,
    /// and ranks by co-occurrence and stated preferences.
    async fn profiled(
        &self,
        catalog: &Catalog,
        s: &SubjectRef,
        ask: &RecommendAsk,
        revision: u64,
        trains: Option<(SystemTime, Clearance)>,
    ) -> Result<Vec<Pick>, ServiceError> {
        let key = subject_key(s).unwrap_or_default();
        // Learned under the older of the two decisions' revisions: a change after either one
        // (announced on the stream) then unlearns it (`forget_older_than`), even when one came
        // from the cache and the other was just asked.
        let learned_at = trains.as_ref().map(|(_, t)| revision.min(t.revision()));
        // Read the whole history only when the model must (re)learn the subject.
        let learn = learned_at.is_some()
            && self
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .learned_revision(&key)
                != learned_at;
        let kinds = &[EventKind::ProductView, EventKind::Purchase][..];
        let history = Some((kinds, if learn { HISTORY } else { RECENT }));
        let read = self.read(s, PROFILED, history, true, ask).await?;
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        // The profile read took time: the training decision must still hold now, and no change
        // may have overtaken it (a withdrawal announced meanwhile has already been applied to
        // the model; checked under its lock, see `Gate::superseded`).
        if let Some((until, training)) = &trains
            && let Some(learned_at) = learned_at
            && learn
            && model.learned_revision(&key) != Some(learned_at)
            && SystemTime::now() < *until
            && !self.gate.superseded(training)
        {
            model.learn_leased(
                &key,
                read.history.iter().map(|h| h.item_id.as_str()),
                learned_at,
                Lease {
                    until: *until,
                    context: ask.consent.clone(),
                },
            );
        }
        model.prepare(
            catalog,
            read.history
                .iter()
                .take(ranking::ANCHORS)
                .map(|h| h.item_id.as_str()),
        );
        Ok(ranking::profiled(
            catalog,
            &model,
            &read.history,
            &read.preferences,
            &ask.moment,
            ask.n,
        ))
    }

    /// One gated profile read under `purpose`; a failure fails the request (never a quietly
    /// lower tier than consent allows).
    async fn read(
        &self,
        s: &SubjectRef,
        purpose: &str,
        history: Option<(&[EventKind], u32)>,
        preferences: bool,
        ask: &RecommendAsk,
    ) -> Result<ProfileRead, ServiceError> {
        self.profile
            .read(
                s,
                purpose,
                history,
                preferences,
                ask.consent.clone(),
                &ask.at_least_as_fresh,
            )
            .await
            .map_err(|status| ServiceError::ProfileUnavailable(status.code()))
    }
}
