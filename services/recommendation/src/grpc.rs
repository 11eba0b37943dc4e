//! The gRPC adapter of `consentgate.recommendation.v1.RecommendationService`: asks the gate which
//! tier the subject's consents allow, reads the profile service only for the tiers that need it,
//! ranks, and keeps per-tier effectiveness statistics without subject ids.
//!
//! Nothing here keeps a consent decision past its `valid_until`: the tier is picked per request
//! from the gate (whose cache honors `valid_until`), and what the model learned from a subject is
//! held under a [`Lease`] that a background sweep re-checks when it lapses
//! ([`Recommender::sweep_training`]).

use crate::catalog::Catalog;
use crate::model::{CoOccurrence, Lapsed, Lease};
use crate::profile_reader::ProfileReader;
use crate::ranking::{self, Moment, Pick};
use crate::store::RecommendationStore;
use crate::tier::{Ladder, Tier, tier_for};
use consentgate_gate::{Gate, subject_key, subject_of_key};
use consentgate_proto::common::v1::{
    PersonalizationLevel, RequestContext, SubjectRef, subject_ref,
};
use consentgate_proto::consent::v1::{CheckRequest, Verdict};
use consentgate_proto::profile::v1::EventKind;
use consentgate_proto::recommendation::v1 as pb;
use consentgate_runtime::errors::{Violations, invalid_argument, status};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
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
/// The longest the training sweep waits between looks unless set otherwise
/// ([`Recommender::set_training_sweep`]): the gate's default heartbeat lease. The sweep also
/// wakes when the earliest lease it knows of ends, so this bounds only leases taken while it
/// waits.
pub const TRAINING_SWEEP: Duration = Duration::from_secs(1);
/// The shortest wait between sweeps, so that a lease that keeps lapsing cannot make it spin.
const SWEEP_MIN_WAIT: Duration = Duration::from_millis(10);
/// The most re-checks in one `BatchCheck` (the consent service's limit).
const SWEEP_BATCH: usize = 1000;
/// The most batches one sweep sends: a backlog larger than this waits for the next sweep rather
/// than keeping one sweep busy for ever.
const SWEEP_BATCHES: usize = 100;
/// The data categories the model learns from, as the training check names them.
const TRAINING_CATEGORIES: [&str; 2] = [
    "user.behavior.browsing_history",
    "user.behavior.purchase_history",
];

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
    sweeps: SweepCounters,
}

/// Counters of the training sweep (no subject ids).
#[derive(Default)]
struct SweepCounters {
    renewed: AtomicU64,
    unlearned: AtomicU64,
}

/// What training sweeps have done, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepTotals {
    /// Lapsed subjects the consent service allowed again: held under a new lease.
    pub renewed: u64,
    /// Lapsed subjects unlearned: denied, or no decision could be had (fail closed).
    pub unlearned: u64,
}

/// The training check for `subject`: whether the model may learn from (and keep) its history.
fn training_check(
    subject: SubjectRef,
    context: Option<RequestContext>,
    at_least_as_fresh: String,
) -> CheckRequest {
    CheckRequest {
        subject: Some(subject),
        purpose: TRAINING.into(),
        data_categories: TRAINING_CATEGORIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        context,
        at_least_as_fresh,
        ..Default::default()
    }
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
            sweep_every: tokio::sync::watch::Sender::new(TRAINING_SWEEP),
            sweeps: SweepCounters::default(),
        })
    }

    /// Sets the longest the training sweep waits between looks (default [`TRAINING_SWEEP`]);
    /// applies from now on, also to a sweep that is waiting. An expired training consent leaves
    /// the model at most about this long after its expiry (usually at once: the sweep wakes
    /// when the earliest lease ends).
    pub fn set_training_sweep(&self, every: Duration) {
        self.sweep_every
            .send_replace(every.max(Duration::from_millis(10)));
    }

    /// What training sweeps have done so far.
    pub fn sweep_totals(&self) -> SweepTotals {
        SweepTotals {
            renewed: self.sweeps.renewed.load(Ordering::Relaxed),
            unlearned: self.sweeps.unlearned.load(Ordering::Relaxed),
        }
    }

    /// Starts the training sweep: when the earliest training lease ends (and at least every
    /// period), the subjects whose lease has lapsed are asked about again
    /// ([`Recommender::sweep_lapsed_training`]). Runs until the recommender is dropped.
    ///
    /// Why a sweep: a consent that reaches its `expires_at` produces no change event, so
    /// [`Recommender::follow_changes`] never hears of it, and the model would keep the subject's
    /// contribution for ever. Why not on the request path: a Recommend already holds the
    /// decision it learns under (its `valid_until` becomes the lease at no cost), but checking
    /// every learned subject's consent per request would add a call to the consent service to
    /// the hot path; lapsed leases are few at any moment and go in batches of up to 1,000.
    pub fn sweep_training(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let mut every = self.sweep_every.subscribe();
        tokio::spawn(async move {
            loop {
                let period = *every.borrow_and_update();
                let Some(wait) = me.upgrade().map(|me| me.next_sweep_in(period)) else {
                    return;
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = every.changed() => match changed {
                        // A new period: wait that long from now.
                        Ok(()) => continue,
                        // The recommender is gone.
                        Err(_) => return,
                    },
                }
                let Some(me) = me.upgrade() else {
                    return;
                };
                me.sweep_lapsed_training().await;
            }
        });
    }

    /// How long the sweep may wait: until just past the earliest lease's end, at most `period`.
    fn next_sweep_in(&self, period: Duration) -> Duration {
        let next = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_lapse();
        next.map_or(period, |until| {
            until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .saturating_add(Duration::from_millis(1))
                .min(period)
        })
        .max(SWEEP_MIN_WAIT)
    }

    /// Asks the consent service again about every learned subject whose training lease has
    /// lapsed, in batches through the gate: still allowed → held until the new `valid_until`;
    /// denied, or no decision could be had → unlearned (fail closed), exactly as at a
    /// withdrawal. The re-check is the service's own (no `on_behalf_of`): the model is this
    /// service's, whoever's request first taught it the subject. Returns what it did.
    pub async fn sweep_lapsed_training(&self) -> SweepTotals {
        let mut done = SweepTotals::default();
        for _ in 0..SWEEP_BATCHES {
            let lapsed = self
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lapsed(SystemTime::now(), SWEEP_BATCH);
            if lapsed.is_empty() {
                break;
            }
            let full = lapsed.len() == SWEEP_BATCH;
            // Each lapsed subject with what to do: `Some(until)` renew, `None` unlearn. A key
            // that names no subject cannot be asked about, so it is unlearned (fail closed).
            let mut askable = Vec::with_capacity(lapsed.len());
            let mut outcome: Vec<(Lapsed, Option<SystemTime>)> = Vec::new();
            for l in lapsed {
                match subject_of_key(&l.subject) {
                    Some(s) => askable.push((l, s)),
                    None => outcome.push((l, None)),
                }
            }
            if !askable.is_empty() {
                let checks = askable
                    .iter()
                    .map(|(l, s)| training_check(s.clone(), l.lease.context.clone(), String::new()))
                    .collect();
                match self.gate.check_many(checks, None).await {
                    Ok(decisions) => {
                        let now = SystemTime::now();
                        for ((l, _), d) in askable.into_iter().zip(&decisions) {
                            // Never hold a subject on a decision that no longer holds itself.
                            let allowed = d.verdict() == Verdict::Allow && d.holds_at(now);
                            outcome.push((l, allowed.then(|| d.valid_until())));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            subjects = askable.len(),
                            "no training decision for lapsed subjects; unlearning them (fail closed)"
                        );
                        outcome.extend(askable.into_iter().map(|(l, _)| (l, None)));
                    }
                }
            }
            let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            for (l, renew) in &outcome {
                match renew {
                    Some(until) if model.renew(l, *until) => done.renewed += 1,
                    None if model.unlearn_lapsed(l) => done.unlearned += 1,
                    // Re-learned or unlearned meanwhile: it rests on something newer.
                    _ => {}
                }
            }
            drop(model);
            if !full {
                break;
            }
        }
        self.sweeps
            .renewed
            .fetch_add(done.renewed, Ordering::Relaxed);
        self.sweeps
            .unlearned
            .fetch_add(done.unlearned, Ordering::Relaxed);
        if done.unlearned > 0 {
            tracing::info!(
                renewed = done.renewed,
                unlearned = done.unlearned,
                "training sweep: lapsed training consents unlearned"
            );
        }
        done
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
            None => (None, 0, None, "anonymous session: context only".to_owned()),
            Some(s) => {
                let checks = vec![
                    CheckRequest {
                        subject: Some(s.clone()),
                        purpose: PROFILED.into(),
                        context: consent_context.clone(),
                        at_least_as_fresh: r.at_least_as_fresh.clone(),
                        ..Default::default()
                    },
                    training_check(
                        s.clone(),
                        consent_context.clone(),
                        r.at_least_as_fresh.clone(),
                    ),
                ];
                let on_behalf_of = (caller != self.name).then_some(caller);
                match self.gate.check_many(checks, on_behalf_of).await {
                    Ok(mut d) => {
                        let ladder = ladder_of(d[0].personalization_level());
                        let revision = d[0].revision();
                        // Learning rests on the training decision until its `valid_until`
                        // (which covers the training record's expiry): that becomes the lease.
                        let trains = d
                            .pop()
                            .filter(|t| {
                                t.verdict() == Verdict::Allow && t.holds_at(SystemTime::now())
                            })
                            .map(|t| (t.valid_until(), t));
                        (
                            Some(ladder),
                            revision,
                            trains,
                            format!("consent allows {ladder:?} personalization").to_lowercase(),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no consent decision; recommending from context only");
                        (
                            Some(Ladder::Contextual),
                            0,
                            None,
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
                // Learned under the older of the two decisions' revisions: a change after
                // either one (announced on the stream) then unlearns it (`forget_older_than`),
                // even when one came from the cache and the other was just asked.
                let learned_at = trains.as_ref().map(|(_, t)| revision.min(t.revision()));
                // Read the whole history only when the model must (re)learn the subject.
                let learn = learned_at.is_some()
                    && self
                        .model
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .learned_revision(&key)
                        != learned_at;
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
                // The profile read took time: the training decision must still hold now, and
                // no change may have overtaken it (a withdrawal announced meanwhile has already
                // been applied to the model; checked under its lock, see `Gate::superseded`).
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
                            context: consent_context.clone(),
                        },
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
        let caller = consentgate_runtime::CallerIdentity::of(&request)?
            .name
            .clone();
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
