//! The gRPC adapter of `consentgate.recommendation.v1.RecommendationService`: asks the gate which
//! tier the subject's consents allow, reads the profile service only for the tiers that need it,
//! ranks, and keeps per-tier effectiveness statistics without subject ids.

use crate::catalog::Catalog;
use crate::model::CoOccurrence;
use crate::profile_reader::ProfileReader;
use crate::ranking::{self, Moment, Pick};
use crate::store::RecommendationStore;
use crate::tier::{Ladder, Tier, tier_for};
use consentgate_gate::{Gate, subject_key};
use consentgate_proto::common::v1::{PersonalizationLevel, SubjectRef, subject_ref};
use consentgate_proto::consent::v1::CheckRequest;
use consentgate_proto::profile::v1::EventKind;
use consentgate_proto::recommendation::v1 as pb;
use consentgate_runtime::errors::{Violations, invalid_argument, status};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use tonic::{Code, Request, Response, Status};

/// The purpose whose decision names the personalization rung.
pub const PROFILED: &str = "personalize.content.profiled";
/// The purpose of zero-party-only recommendations.
pub const LIMITED: &str = "personalize.content.limited";
/// The purpose of segment recommendations.
pub const SEGMENT: &str = "personalize.content.segment";
/// The purpose the co-occurrence model learns under.
pub const TRAINING: &str = "train_ai_system";
/// History read to learn a subject (or to find its segment): the whole recent history.
const HISTORY: u32 = 500;
/// History read to rank when the model already holds the subject at this revision: ranking
/// anchors on the most recent events only.
const RECENT: u32 = 40;

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
}

fn tier_pb(t: Tier) -> pb::Tier {
    match t {
        Tier::Profiled => pb::Tier::Profiled,
        Tier::Limited => pb::Tier::Limited,
        Tier::Segment => pb::Tier::Segment,
        Tier::Contextual => pb::Tier::Contextual,
        Tier::Popular => pb::Tier::Popular,
    }
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
    /// A recommender over `catalog`, asking `gate`, reading through `profile`.
    pub fn new(
        catalog: Catalog,
        gate: Gate,
        profile: ProfileReader,
        name: String,
        store: RecommendationStore,
    ) -> Arc<Recommender> {
        Arc::new(Recommender {
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
        })
    }

    /// Drops what was derived from a subject whenever its consent changes (a later profiled
    /// request re-learns if the subject still consents). Runs for as long as the gate lives.
    pub fn follow_changes(self: &Arc<Self>) {
        let mut changes = self.gate.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let notice = changes.recv().await;
                let Some(me) = me.upgrade() else {
                    return;
                };
                match notice {
                    Ok(n) => {
                        if let Some(key) = n.subject_key {
                            me.forget_older_than(&key, n.revision);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Changes were missed: nothing derived can be trusted any more.
                        tracing::warn!(
                            "missed consent changes; the model is dropped and re-learned"
                        );
                        *me.model.lock().unwrap_or_else(|e| e.into_inner()) = CoOccurrence::new();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Forgets what was derived from the subject under a consent revision older than `revision`
    /// (a change event). What was learned at or after it already reflects the change.
    pub fn forget_older_than(&self, key: &str, revision: u64) -> bool {
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        match model.learned_revision(key) {
            Some(learned) if learned < revision => model.unlearn(key),
            _ => false,
        }
    }

    /// Forgets everything derived from the subject key; whether there was anything.
    pub fn forget(&self, key: &str) -> bool {
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unlearn(key)
    }

    /// How many subjects the model has learned from.
    pub fn learned_subjects(&self) -> usize {
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subjects()
    }

    /// `caller` is the authenticated caller; when it is not this service itself, the consent
    /// service decides on its behalf (delegation), so the caller-purpose rule applies to it.
    async fn recommend(
        &self,
        caller: &str,
        r: pb::RecommendRequest,
    ) -> Result<pb::RecommendResponse, Status> {
        let n = match r.n {
            0 => 10,
            n if n <= 100 => n as usize,
            _ => return Err(invalid_argument("n", "at most 100 items")),
        };
        let context = r.context.unwrap_or_default();
        let mut v = Violations::default();
        let subject = match r.subject.as_ref().and_then(|s| s.id.as_ref()) {
            None => None,
            Some(_) => {
                let s = r.subject.clone().unwrap_or_default();
                match subject_key(&s) {
                    Some(_) => Some(s),
                    None => {
                        v.add("subject", "subject_id or device_id must not be empty");
                        None
                    }
                }
            }
        };
        for (field, text) in [
            ("context.device", &context.device),
            ("context.region", &context.region),
            ("context.current_item_id", &context.current_item_id),
            ("context.weather", &context.weather),
        ] {
            v.check(text.len() > 256, field, "must be at most 256 bytes");
        }
        v.check(
            !r.at_least_as_fresh.is_empty() && r.at_least_as_fresh.parse::<u64>().is_err(),
            "at_least_as_fresh",
            "must be a revision returned by a consent write (a decimal number)",
        );
        v.check(
            context.session_item_ids.len() > 100,
            "context.session_item_ids",
            "at most 100 items",
        );
        v.finish()?;
        let seconds = context.time.as_ref().map_or_else(
            || time::OffsetDateTime::now_utc().unix_timestamp(),
            |t| t.seconds,
        );
        let mut moment = Moment::at(
            seconds,
            &context.device,
            &context.region,
            &context.current_item_id,
            &context.session_item_ids,
        );
        moment.weather = context.weather.trim().to_lowercase();
        let consent_context = context.consent.clone();

        // The tier comes from the consent decision. No answer: context only (fail closed).
        let (allowed, revision, trains, mut tier_reason) = match &subject {
            None => (None, 0, false, "anonymous session: context only".to_owned()),
            Some(s) => {
                let checks = vec![
                    CheckRequest {
                        subject: Some(s.clone()),
                        purpose: PROFILED.into(),
                        context: consent_context.clone(),
                        at_least_as_fresh: r.at_least_as_fresh.clone(),
                        ..Default::default()
                    },
                    CheckRequest {
                        subject: Some(s.clone()),
                        purpose: TRAINING.into(),
                        data_categories: vec![
                            "user.behavior.browsing_history".into(),
                            "user.behavior.purchase_history".into(),
                        ],
                        context: consent_context.clone(),
                        at_least_as_fresh: r.at_least_as_fresh.clone(),
                        ..Default::default()
                    },
                ];
                let on_behalf_of = (caller != self.name).then_some(caller);
                match self.gate.check_many(checks, on_behalf_of).await {
                    Ok(d) => {
                        let ladder = ladder_of(d[0].personalization_level());
                        let trains =
                            d[1].verdict() == consentgate_proto::consent::v1::Verdict::Allow;
                        (
                            Some(ladder),
                            d[0].revision(),
                            trains,
                            format!("consent allows {ladder:?} personalization").to_lowercase(),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no consent decision; recommending from context only");
                        (
                            Some(Ladder::Contextual),
                            0,
                            false,
                            "consent service unavailable: context only".to_owned(),
                        )
                    }
                }
            }
        };
        let tier = tier_for(allowed, moment.has_context());
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let picks: Vec<Pick> = match (tier, &subject) {
            (Tier::Profiled, Some(s)) => {
                let key = subject_key(s).unwrap_or_default();
                // Read the whole history only when the model must (re)learn the subject.
                let learn = trains
                    && self
                        .model
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .learned_revision(&key)
                        != Some(revision);
                let read = self
                    .profile
                    .read(
                        s,
                        PROFILED,
                        Some((
                            &[EventKind::ProductView, EventKind::Purchase],
                            if learn { HISTORY } else { RECENT },
                        )),
                        true,
                        consent_context.clone(),
                        &r.at_least_as_fresh,
                    )
                    .await
                    .map_err(profile_unavailable)?;
                let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
                if learn && model.learned_revision(&key) != Some(revision) {
                    model.learn(
                        &key,
                        read.history.iter().map(|h| h.item_id.as_str()),
                        revision,
                    );
                }
                model.prepare(
                    &catalog,
                    read.history
                        .iter()
                        .take(ranking::ANCHORS)
                        .map(|h| h.item_id.as_str()),
                );
                ranking::profiled(
                    &catalog,
                    &model,
                    &read.history,
                    &read.preferences,
                    &moment,
                    n,
                )
            }
            (Tier::Limited, Some(s)) => {
                let read = self
                    .profile
                    .read(
                        s,
                        LIMITED,
                        None,
                        true,
                        consent_context.clone(),
                        &r.at_least_as_fresh,
                    )
                    .await
                    .map_err(profile_unavailable)?;
                if read.preferences.is_empty() {
                    tier_reason.push_str("; nothing shared yet, so popular picks");
                }
                ranking::limited(&catalog, &read.preferences, &moment, n)
            }
            (Tier::Segment, Some(s)) => {
                let read = self
                    .profile
                    .read(
                        s,
                        SEGMENT,
                        Some((&[EventKind::Purchase], HISTORY)),
                        false,
                        consent_context.clone(),
                        &r.at_least_as_fresh,
                    )
                    .await
                    .map_err(profile_unavailable)?;
                let segment = ranking::segment_of(&read.history, crate_now_micros());
                tier_reason.push_str(&format!("; segment: {}", segment.as_str()));
                ranking::segment(&catalog, segment, &moment, n)
            }
            (Tier::Contextual, _) => {
                let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
                model.prepare(
                    &catalog,
                    std::iter::once(moment.current_item.as_str())
                        .chain(moment.session_items.iter().map(String::as_str)),
                );
                ranking::contextual(&catalog, &model, &moment, n)
            }
            _ => ranking::popular(&catalog, n),
        };
        let recommendation_id = uuid::Uuid::now_v7().to_string();
        self.issued.insert(recommendation_id.clone(), tier);
        self.store.record(recommendation_id.clone(), tier);
        let items = picks
            .into_iter()
            .filter_map(|p| {
                let item = catalog.get(&p.item_id)?;
                Some(pb::RecommendedItem {
                    item_id: p.item_id,
                    title: item.title.clone(),
                    category: item.category.clone(),
                    price_minor: item.price_minor,
                    score: p.score,
                    reason: p.reason,
                })
            })
            .collect();
        Ok(pb::RecommendResponse {
            recommendation_id,
            tier: tier_pb(tier) as i32,
            revision,
            items,
            tier_reason,
        })
    }
}

fn crate_now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn store_status(e: crate::store::StoreError) -> Status {
    tracing::error!(error = %e, "recommendation store failed");
    status(
        Code::Unavailable,
        "STORE_UNAVAILABLE",
        "the recommendation store failed",
    )
}

fn profile_unavailable(s: Status) -> Status {
    status(
        Code::Unavailable,
        "PROFILE_UNAVAILABLE",
        format!("the profile service could not answer: {:?}", s.code()),
    )
}

/// The RecommendationService implementation.
pub struct RecommendationApi {
    recommender: Arc<Recommender>,
}

impl RecommendationApi {
    /// Wraps the recommender.
    pub fn new(recommender: Arc<Recommender>) -> Self {
        RecommendationApi { recommender }
    }
}

#[tonic::async_trait]
impl pb::recommendation_service_server::RecommendationService for RecommendationApi {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let caller = request
            .extensions()
            .get::<Arc<consentgate_runtime::CallerIdentity>>()
            .map(|c| c.name.clone())
            .ok_or_else(|| {
                status(
                    Code::Unauthenticated,
                    "UNAUTHENTICATED",
                    "no caller identity",
                )
            })?;
        Ok(Response::new(
            self.recommender
                .recommend(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::RecordOutcomeRequest>,
    ) -> Result<Response<pb::RecordOutcomeResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        v.check(
            uuid::Uuid::parse_str(&r.recommendation_id).is_err(),
            "recommendation_id",
            "not a recommendation id from Recommend",
        );
        v.check(
            r.kind() == pb::OutcomeKind::Unspecified,
            "kind",
            "an outcome kind is required",
        );
        v.check(r.value_minor < 0, "value_minor", "must not be negative");
        v.finish()?;
        let tier = match self.recommender.issued.get(&r.recommendation_id) {
            Some(t) => Some(t),
            None => self
                .recommender
                .store
                .tier(&r.recommendation_id)
                .await
                .map_err(store_status)?,
        };
        if tier.is_none() {
            return Err(status(
                Code::NotFound,
                "RECOMMENDATION_NOT_FOUND",
                "no recommendation has this id",
            ));
        }
        let kind = match r.kind() {
            pb::OutcomeKind::Impression => "impression",
            pb::OutcomeKind::Click => "click",
            _ => "conversion",
        };
        self.recommender
            .store
            .record_outcome(&r.recommendation_id, kind, r.value_minor)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RecordOutcomeResponse {}))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let totals = self
            .recommender
            .store
            .totals()
            .await
            .map_err(store_status)?;
        let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let tiers = totals
            .into_iter()
            .map(|(t, c)| pb::TierStats {
                tier: tier_pb(t) as i32,
                recommendations: c.recommendations,
                impressions: c.impressions,
                clicks: c.clicks,
                conversions: c.conversions,
                value_minor: c.value_minor,
                click_through_rate: rate(c.clicks, c.impressions),
                conversion_rate: rate(c.conversions, c.clicks),
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse { tiers }))
    }

    async fn load_catalog(
        &self,
        request: Request<pb::LoadCatalogRequest>,
    ) -> Result<Response<pb::LoadCatalogResponse>, Status> {
        let catalog = Catalog::from_jsonl(&request.into_inner().jsonl)
            .map_err(|e| invalid_argument("jsonl", e.to_string()))?;
        let response = pb::LoadCatalogResponse {
            items: u32::try_from(catalog.items().len()).unwrap_or(u32::MAX),
            categories: u32::try_from(catalog.categories().len()).unwrap_or(u32::MAX),
        };
        *self
            .recommender
            .catalog
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
        Ok(Response::new(response))
    }

    async fn unlearn(
        &self,
        request: Request<pb::UnlearnRequest>,
    ) -> Result<Response<pb::UnlearnResponse>, Status> {
        let r = request.into_inner();
        let key =
            r.subject.as_ref().and_then(subject_key).ok_or_else(|| {
                invalid_argument("subject", "a subject_id or device_id is required")
            })?;
        Ok(Response::new(pb::UnlearnResponse {
            forgotten: self.recommender.forget(&key),
        }))
    }
}

/// Per-tier statistics as a map, for the demo's printout.
pub fn stats_by_tier(stats: &pb::GetStatsResponse) -> BTreeMap<String, (u64, f64, f64)> {
    stats
        .tiers
        .iter()
        .map(|t| {
            (
                t.tier().as_str_name().to_owned(),
                (t.recommendations, t.click_through_rate, t.conversion_rate),
            )
        })
        .collect()
}

/// A subject reference for a person's id.
pub fn person(id: &str) -> SubjectRef {
    SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    }
}
