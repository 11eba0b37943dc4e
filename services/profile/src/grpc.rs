//! The gRPC adapter of `consentgate.profile.v1.ProfileService`: validates requests, asks the gate,
//! calls the store with the decision, applies obligations, records reads in the access log, and
//! converts between protobuf and domain types. Data-subject rights live in [`crate::rights`].

use crate::access_log::AccessLog;
use crate::model::{
    AccessDraft, Answer, AnswerKind, Attribute, Collection, Event, EventField, EventFields,
    EventKind, Source, now_micros,
};
use crate::reads;
use crate::store::{EventQuery, ProfileStore, StoreError};
use consentgate_gate::{Decision, Gate, subject_key};
use consentgate_policy::{Policy, Reason};
use consentgate_proto::common::v1::{DataSource, RequestContext, SubjectRef, subject_ref};
use consentgate_proto::consent::v1::CheckRequest;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::{Violations, invalid_argument, status};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// The most items in one SetAttributes or SubmitAnswers call.
pub const MAX_ITEMS: usize = 500;
/// The most events in one RecordEvents call.
pub const MAX_EVENTS: usize = 1000;
const MAX_ID_LEN: usize = 256;
const MAX_NAME_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 4096;
const MAX_PAGE: u32 = 1000;

/// The purpose data-subject requests read under: essential, covers every category.
pub const DSAR_PURPOSE: &str = "essential.legal_obligation";

/// Shared by the adapter and the rights handlers.
pub struct Shared {
    /// The policy (taxonomy for validation and plain-language descriptions).
    pub policy: Arc<Policy>,
    /// The profile store.
    pub store: Arc<dyn ProfileStore>,
    /// The consent gate.
    pub gate: Gate,
    /// The access log writer.
    pub log: AccessLog,
    /// This service's caller name (recorded as the enforcer of reads).
    pub name: String,
    /// Every category of the policy: what a read without named categories asks about (computed
    /// once, not on every read).
    pub all_categories: Vec<String>,
    /// The recommendation service, for the erasure cascade.
    pub recommendation: Option<
        consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient<
            tonic::transport::Channel,
        >,
    >,
}

/// The ProfileService implementation.
pub struct ProfileApi {
    shared: Arc<Shared>,
}

impl ProfileApi {
    /// Wraps the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        ProfileApi { shared }
    }

    /// The attribute categories a read asks about: `named` (validated, with their
    /// subcategories), or every category when none are named.
    fn wanted_attributes(&self, v: &mut Violations, field: &str, named: &[String]) -> Vec<String> {
        for (i, c) in named.iter().enumerate() {
            check_category(&self.shared.policy, v, &format!("{field}[{i}]"), c);
        }
        if named.is_empty() {
            self.shared.all_categories.clone()
        } else {
            expand(&self.shared.policy, named)
        }
    }
}

/// Event kinds from the wire; an unknown one is a violation at `field[i]`.
fn event_kinds(v: &mut Violations, field: &str, kinds: &[i32]) -> Vec<EventKind> {
    let mut out = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        match pb::EventKind::try_from(*k).ok().and_then(event_kind_of) {
            Some(kind) => out.push(kind),
            None => v.add(format!("{field}[{i}]"), "unknown event kind"),
        }
    }
    out
}

/// Answer kinds from the wire; an unknown one is a violation at `field[i]`.
fn answer_kinds(v: &mut Violations, field: &str, kinds: &[i32]) -> Vec<AnswerKind> {
    let mut out = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        match pb::AnswerKind::try_from(*k).ok().and_then(answer_kind_of) {
            Some(kind) => out.push(kind),
            None => v.add(format!("{field}[{i}]"), "unknown answer kind"),
        }
    }
    out
}

/// The event fields a read mask names (empty mask: every field); an unknown path is a violation
/// at `field.paths[i]`.
fn event_fields(
    v: &mut Violations,
    field: &str,
    mask: Option<&prost_types::FieldMask>,
) -> EventFields {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return EventFields::ALL;
    };
    let mut named = Vec::new();
    for (i, path) in mask.paths.iter().enumerate() {
        match EventField::parse(path) {
            Some(f) => named.push(f),
            None => v.add(
                format!("{field}.paths[{i}]"),
                format!("not a field of Event: {path:?}"),
            ),
        }
    }
    EventFields::only(named)
}

/// A page size from the wire: 1..=MAX_PAGE, 0 meaning 100.
fn page_size(v: &mut Violations, field: &str, size: u32) -> u32 {
    if size > MAX_PAGE {
        v.add(field, format!("at most {MAX_PAGE}"));
    }
    if size == 0 { 100 } else { size.min(MAX_PAGE) }
}

/// The categories of events of `kinds` (empty: every kind), sorted.
fn event_categories(kinds: &[EventKind]) -> Vec<String> {
    let mut categories: Vec<String> = EventKind::ALL
        .iter()
        .filter(|k| kinds.is_empty() || kinds.contains(k))
        .map(|k| k.category().to_owned())
        .collect();
    categories.sort();
    categories.dedup();
    categories
}

/// The categories of answers of `kinds` (empty: every kind), sorted.
fn answer_categories(kinds: &[AnswerKind]) -> Vec<String> {
    let mut categories: Vec<String> = AnswerKind::ALL
        .iter()
        .filter(|k| kinds.is_empty() || kinds.contains(k))
        .map(|k| k.category().to_owned())
        .collect();
    categories.sort();
    categories.dedup();
    categories
}

/// The authenticated caller the auth layer put in the request's extensions.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Result<Arc<CallerIdentity>, Status> {
    CallerIdentity::of(request)
}

/// Maps a store error to a status without leaking row values.
pub(crate) fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e.log_safe(), "profile store failed");
    match e {
        StoreError::NotAllowed(_) => status(
            Code::Internal,
            "GATE_VIOLATION",
            "a write was not covered by its consent decision; nothing was stored",
        ),
        _ => status(
            Code::Unavailable,
            "STORE_UNAVAILABLE",
            "the profile store failed",
        ),
    }
}

/// Validates a subject reference into the field `field`.
pub(crate) fn check_subject(v: &mut Violations, field: &str, subject: Option<&SubjectRef>) {
    let id = match subject.and_then(|s| s.id.as_ref()) {
        Some(subject_ref::Id::SubjectId(id)) => (format!("{field}.subject_id"), id),
        Some(subject_ref::Id::DeviceId(id)) => (format!("{field}.device_id"), id),
        None => {
            v.add(field, "a subject_id or device_id is required");
            return;
        }
    };
    if id.1.is_empty() {
        v.add(id.0, "must not be empty");
    } else if id.1.len() > MAX_ID_LEN || id.1.chars().any(char::is_control) {
        v.add(
            id.0,
            "must be at most 256 characters without control characters",
        );
    }
}

pub(crate) fn check_purpose(policy: &Policy, v: &mut Violations, field: &str, purpose: &str) {
    if purpose.is_empty() {
        v.add(field, "a purpose key from the policy is required");
    } else if !policy.purposes.contains_key(purpose) {
        v.add(field, format!("unknown purpose {purpose:?}"));
    }
}

fn check_category(policy: &Policy, v: &mut Violations, field: &str, category: &str) {
    if category.is_empty() {
        v.add(field, "a data category key from the policy is required");
    } else if !policy.categories.contains_key(category) {
        v.add(field, format!("unknown data category {category:?}"));
    }
}

fn check_token(v: &mut Violations, token: &str) {
    if !token.is_empty() && token.parse::<u64>().is_err() {
        v.add(
            "at_least_as_fresh",
            "must be a revision returned by a consent write (a decimal number)",
        );
    }
}

fn check_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
    if required && text.trim().is_empty() {
        v.add(field, "must not be empty");
    } else if text.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    } else if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        v.add(field, "must not contain control characters");
    }
}

/// Microseconds to a protobuf timestamp.
pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

fn micros_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos) / 1000)
}

/// The distinct categories, in first-seen order (one consent check covers them all).
fn distinct<'a>(categories: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in categories {
        if !out.iter().any(|x| x == c) {
            out.push(c.to_owned());
        }
    }
    out
}

/// Every policy category under (or equal to) one of `roots`, sorted.
pub(crate) fn expand(policy: &Policy, roots: &[String]) -> Vec<String> {
    policy
        .categories
        .keys()
        .filter(|c| {
            roots
                .iter()
                .any(|r| *c == r || c.starts_with(&format!("{r}.")))
        })
        .cloned()
        .collect()
}

impl Shared {
    /// Asks the gate about `subject` for `purpose` and `categories`, for `caller`.
    pub(crate) async fn decide(
        &self,
        caller: &CallerIdentity,
        subject: SubjectRef,
        purpose: &str,
        categories: Vec<String>,
        context: Option<RequestContext>,
        at_least_as_fresh: &str,
    ) -> Result<Decision, Status> {
        let request = CheckRequest {
            subject: Some(subject),
            purpose: purpose.to_owned(),
            data_categories: categories,
            channel: String::new(),
            context,
            at_least_as_fresh: at_least_as_fresh.to_owned(),
            on_behalf_of: String::new(),
            include_explanation: false,
        };
        self.gate
            .check(request, Some(&caller.name))
            .await
            .map_err(consentgate_gate::GateError::into_status)
    }

    /// Records a read that returned data; the read fails if the log cannot be written.
    pub(crate) async fn log_read(
        &self,
        decision: &Decision,
        operation: &str,
        categories: Vec<String>,
        items: usize,
    ) -> Result<(), Status> {
        if items == 0 {
            // Nothing of the person was disclosed, so there is nothing to report (and no
            // pseudonym key is created for a subject we hold nothing about).
            return Ok(());
        }
        self.log
            .record(AccessDraft {
                subject_key: decision.subject_key().to_owned(),
                read_at: now_micros(),
                caller: decision.caller().to_owned(),
                enforced_by: self.name.clone(),
                purpose: decision.purpose().to_owned(),
                categories,
                revision: decision.revision(),
                operation: operation.to_owned(),
                items: u64::try_from(items).unwrap_or(u64::MAX),
            })
            .await
            .map_err(|why| {
                status(
                    Code::Unavailable,
                    "ACCESS_LOG_UNAVAILABLE",
                    format!("the read could not be recorded, so nothing is returned: {why}"),
                )
            })
    }
}

/// A reason code's rank in rule order (lower: more significant), as the decision function ranks
/// a DENY's top-level reason ([`Reason::significance`]): minimization last, so a read of several
/// categories whose purpose does not need some and whose person withdrew the others says
/// `WITHDRAWN`. A code this version does not know ranks just before minimization: it is still a
/// denial about the person, which says more than "not needed".
fn significance(reason: &str) -> u16 {
    let last = u16::from(Reason::NotNeededForPurpose.significance());
    Reason::from_code(reason).map_or(2 * last - 1, |r| 2 * u16::from(r.significance()))
}

/// The reason a gated read names at the top: empty when the decision allowed everything asked
/// about; otherwise the most significant denial among the `asked` categories it denied (the
/// consent service's own top-level reason when it denied none of them by category). Computed
/// here rather than taken from the decision: a PARTIAL carries no top-level reason, and a
/// consent service that named its first denied category's would hide the one that decided.
pub(crate) fn summary_reason(decision: &Decision, asked: &[String]) -> String {
    if decision.verdict() == consentgate_proto::consent::v1::Verdict::Allow {
        return String::new();
    }
    asked
        .iter()
        .filter_map(|c| decision.category(c))
        .filter(|c| !c.allowed && !c.reason.is_empty())
        .map(|c| c.reason.as_str())
        .min_by_key(|reason| significance(reason))
        .map_or_else(|| decision.reason().to_owned(), str::to_owned)
}

/// What a read was decided on; `asked` are the categories the read asked the gate about.
fn read_decision(decision: &Decision, asked: &[String], applied: Vec<String>) -> pb::ReadDecision {
    pb::ReadDecision {
        revision: decision.revision(),
        personalization_level: decision.personalization_level() as i32,
        obligations_applied: applied,
        reason: summary_reason(decision, asked),
    }
}

fn source_pb(s: Source) -> DataSource {
    match s {
        Source::ZeroParty => DataSource::ZeroParty,
        Source::FirstParty => DataSource::FirstParty,
        Source::SecondParty => DataSource::SecondParty,
        Source::ThirdParty => DataSource::ThirdParty,
    }
}

pub(crate) fn attribute_pb(a: &Attribute) -> pb::Attribute {
    pb::Attribute {
        name: a.name.clone(),
        value: a.value.clone(),
        data_category: a.category.clone(),
        source: source_pb(a.source) as i32,
        partner: a.partner.clone(),
        purpose: a.collection.purpose.clone(),
        notice_version: a.collection.notice_version.clone(),
        collected_at: Some(timestamp(a.collected_at)),
        updated_at: Some(timestamp(a.updated_at)),
    }
}

fn event_kind_pb(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::PageView => pb::EventKind::PageView,
        EventKind::ProductView => pb::EventKind::ProductView,
        EventKind::Search => pb::EventKind::Search,
        EventKind::AddToCart => pb::EventKind::AddToCart,
        EventKind::Purchase => pb::EventKind::Purchase,
        EventKind::Return => pb::EventKind::Return,
    }
}

fn event_kind_of(k: pb::EventKind) -> Option<EventKind> {
    Some(match k {
        pb::EventKind::Unspecified => return None,
        pb::EventKind::PageView => EventKind::PageView,
        pb::EventKind::ProductView => EventKind::ProductView,
        pb::EventKind::Search => EventKind::Search,
        pb::EventKind::AddToCart => EventKind::AddToCart,
        pb::EventKind::Purchase => EventKind::Purchase,
        pb::EventKind::Return => EventKind::Return,
    })
}

/// An event on the wire with only `fields` set.
fn event_pb(e: &Event, fields: EventFields) -> pb::Event {
    let has = |f| fields.has(f);
    let text = |f, value: &String| if has(f) { value.clone() } else { String::new() };
    pb::Event {
        event_id: text(EventField::EventId, &e.event_id),
        kind: if has(EventField::Kind) {
            event_kind_pb(e.kind) as i32
        } else {
            0
        },
        occurred_at: has(EventField::OccurredAt).then(|| timestamp(e.occurred_at)),
        item_id: text(EventField::ItemId, &e.item_id),
        query: text(EventField::Query, &e.query),
        page: text(EventField::Page, &e.page),
        amount_minor: if has(EventField::AmountMinor) {
            e.amount_minor
        } else {
            0
        },
        currency: text(EventField::Currency, &e.currency),
        quantity: if has(EventField::Quantity) {
            e.quantity
        } else {
            0
        },
        data_category: if has(EventField::DataCategory) {
            e.kind.category().to_owned()
        } else {
            String::new()
        },
        purpose: text(EventField::Purpose, &e.collection.purpose),
    }
}

fn answer_kind_of(k: pb::AnswerKind) -> Option<AnswerKind> {
    Some(match k {
        pb::AnswerKind::Unspecified => return None,
        pb::AnswerKind::Survey => AnswerKind::Survey,
        pb::AnswerKind::Quiz => AnswerKind::Quiz,
        pb::AnswerKind::Preference => AnswerKind::Preference,
        pb::AnswerKind::ReturnReason => AnswerKind::ReturnReason,
    })
}

pub(crate) fn answer_pb(a: &Answer) -> pb::Answer {
    let kind = match a.kind {
        AnswerKind::Survey => pb::AnswerKind::Survey,
        AnswerKind::Quiz => pb::AnswerKind::Quiz,
        AnswerKind::Preference => pb::AnswerKind::Preference,
        AnswerKind::ReturnReason => pb::AnswerKind::ReturnReason,
    };
    pb::Answer {
        answer_id: a.answer_id.clone(),
        kind: kind as i32,
        question_id: a.question_id.clone(),
        question: a.question.clone(),
        answer: a.answer.clone(),
        item_id: a.item_id.clone(),
        data_category: a.kind.category().to_owned(),
        purpose: a.collection.purpose.clone(),
        notice_version: a.collection.notice_version.clone(),
        collected_at: Some(timestamp(a.collected_at)),
    }
}

/// The notice version to record: the one shown, or the purpose's current one.
fn notice_of(policy: &Policy, purpose: &str, shown: &str) -> String {
    if shown.is_empty() {
        policy
            .purposes
            .get(purpose)
            .map(|p| p.notice_version.text.clone())
            .unwrap_or_default()
    } else {
        shown.to_owned()
    }
}

/// Per-item results of a gated write.
fn item_results(verdicts: &[Result<(), (String, String)>]) -> (Vec<pb::ItemResult>, u32, u32) {
    let mut accepted = 0;
    let mut results = Vec::with_capacity(verdicts.len());
    for (i, v) in verdicts.iter().enumerate() {
        let (ok, reason, detail) = match v {
            Ok(()) => (true, String::new(), String::new()),
            Err((r, d)) => (false, r.clone(), d.clone()),
        };
        accepted += u32::from(ok);
        results.push(pb::ItemResult {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            accepted: ok,
            reason,
            detail,
        });
    }
    let total = u32::try_from(verdicts.len()).unwrap_or(u32::MAX);
    (results, accepted, total - accepted)
}

/// Whether the decision lets `category` be collected; the reason when not.
fn collection_verdict(decision: &Decision, category: &str) -> Result<(), (String, String)> {
    match decision.category(category) {
        Some(c) if c.allowed => Ok(()),
        Some(c) => Err((c.reason.clone(), c.detail.clone())),
        None => Err((
            decision.reason().to_owned(),
            "the consent service did not decide this category".to_owned(),
        )),
    }
}

fn page_token(e: &Event) -> String {
    format!("{}.{}", e.occurred_at, e.event_id)
}

fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (at, id) = token.split_once('.')?;
    let at = at.parse().ok()?;
    uuid::Uuid::parse_str(id).ok()?;
    Some((at, id.to_owned()))
}

#[tonic::async_trait]
impl pb::profile_service_server::ProfileService for ProfileApi {
    async fn set_attributes(
        &self,
        request: Request<pb::SetAttributesRequest>,
    ) -> Result<Response<pb::SetAttributesResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        if r.attributes.is_empty() || r.attributes.len() > MAX_ITEMS {
            v.add(
                "attributes",
                format!(
                    "1..{MAX_ITEMS} attributes per call (got {})",
                    r.attributes.len()
                ),
            );
        }
        for (i, a) in r.attributes.iter().enumerate() {
            let mut item = Violations::default();
            check_text(&mut item, "name", &a.name, MAX_NAME_LEN, true);
            check_text(&mut item, "value", &a.value, MAX_VALUE_LEN, false);
            check_category(policy, &mut item, "data_category", &a.data_category);
            check_purpose(policy, &mut item, "purpose", &a.purpose);
            match a.source() {
                DataSource::Unspecified => item.add("source", "a data source is required"),
                DataSource::SecondParty | DataSource::ThirdParty if a.partner.trim().is_empty() => {
                    item.add(
                        "partner",
                        "second- and third-party data must name the partner",
                    )
                }
                _ => {}
            }
            check_text(&mut item, "partner", &a.partner, MAX_NAME_LEN, false);
            v.extend_prefixed(&format!("attributes[{i}]."), item);
        }
        v.finish()?;
        let subject = r.subject.unwrap_or_default();
        // One decision per purpose, covering the categories collected under it.
        let mut by_purpose: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for a in &r.attributes {
            let cats = by_purpose.entry(&a.purpose).or_default();
            if !cats.contains(&a.data_category) {
                cats.push(a.data_category.clone());
            }
        }
        let mut decisions = BTreeMap::new();
        for (purpose, categories) in by_purpose {
            let d = self
                .shared
                .decide(
                    &caller,
                    subject.clone(),
                    purpose,
                    categories,
                    r.context.clone(),
                    "",
                )
                .await?;
            decisions.insert(purpose, d);
        }
        let verdicts: Vec<_> = r
            .attributes
            .iter()
            .map(|a| collection_verdict(&decisions[a.purpose.as_str()], &a.data_category))
            .collect();
        let items: Vec<(&Decision, Attribute)> = r
            .attributes
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.is_ok())
            .map(|(a, _)| {
                let source = match a.source() {
                    DataSource::ZeroParty => Source::ZeroParty,
                    DataSource::SecondParty => Source::SecondParty,
                    DataSource::ThirdParty => Source::ThirdParty,
                    _ => Source::FirstParty,
                };
                (
                    &decisions[a.purpose.as_str()],
                    Attribute {
                        name: a.name.clone(),
                        value: a.value.clone(),
                        category: a.data_category.clone(),
                        source,
                        partner: a.partner.clone(),
                        collection: Collection {
                            purpose: a.purpose.clone(),
                            notice_version: notice_of(policy, &a.purpose, &a.notice_version),
                        },
                        collected_at: 0,
                        updated_at: 0,
                    },
                )
            })
            .collect();
        if !items.is_empty() {
            self.shared
                .store
                .put_attributes(&items)
                .await
                .map_err(store_status)?;
        }
        let (results, accepted, rejected) = item_results(&verdicts);
        Ok(Response::new(pb::SetAttributesResponse {
            results,
            accepted,
            rejected,
        }))
    }

    async fn submit_answers(
        &self,
        request: Request<pb::SubmitAnswersRequest>,
    ) -> Result<Response<pb::SubmitAnswersResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        if r.answers.is_empty() || r.answers.len() > MAX_ITEMS {
            v.add(
                "answers",
                format!("1..{MAX_ITEMS} answers per call (got {})", r.answers.len()),
            );
        }
        for (i, a) in r.answers.iter().enumerate() {
            let mut item = Violations::default();
            if answer_kind_of(a.kind()).is_none() {
                item.add("kind", "an answer kind is required");
            }
            check_text(&mut item, "question_id", &a.question_id, MAX_NAME_LEN, true);
            check_text(&mut item, "question", &a.question, MAX_VALUE_LEN, false);
            check_text(&mut item, "answer", &a.answer, MAX_VALUE_LEN, true);
            check_text(&mut item, "item_id", &a.item_id, MAX_ID_LEN, false);
            v.extend_prefixed(&format!("answers[{i}]."), item);
        }
        v.finish()?;
        let categories = distinct(
            r.answers
                .iter()
                .filter_map(|a| answer_kind_of(a.kind()).map(AnswerKind::category)),
        );
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                categories,
                r.context,
                "",
            )
            .await?;
        let notice = notice_of(policy, &r.purpose, &r.notice_version);
        let now = now_micros();
        let mut verdicts = Vec::with_capacity(r.answers.len());
        let mut accepted = Vec::new();
        for a in &r.answers {
            let Some(kind) = answer_kind_of(a.kind()) else {
                continue;
            };
            let verdict = collection_verdict(&decision, kind.category());
            if verdict.is_ok() {
                accepted.push(Answer {
                    answer_id: uuid::Uuid::now_v7().to_string(),
                    kind,
                    question_id: a.question_id.clone(),
                    question: a.question.clone(),
                    answer: a.answer.clone(),
                    item_id: a.item_id.clone(),
                    collection: Collection {
                        purpose: r.purpose.clone(),
                        notice_version: notice.clone(),
                    },
                    collected_at: now,
                });
            }
            verdicts.push(verdict);
        }
        if !accepted.is_empty() {
            self.shared
                .store
                .put_answers(&decision, &accepted)
                .await
                .map_err(store_status)?;
        }
        let (results, accepted, rejected) = item_results(&verdicts);
        Ok(Response::new(pb::SubmitAnswersResponse {
            results,
            accepted,
            rejected,
        }))
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        if r.events.is_empty() || r.events.len() > MAX_EVENTS {
            v.add(
                "events",
                format!("1..{MAX_EVENTS} events per call (got {})", r.events.len()),
            );
        }
        for (i, e) in r.events.iter().enumerate() {
            let mut item = Violations::default();
            let kind = event_kind_of(e.kind());
            if kind.is_none() {
                item.add("kind", "an event kind is required");
            }
            check_text(&mut item, "item_id", &e.item_id, MAX_ID_LEN, false);
            check_text(&mut item, "query", &e.query, MAX_VALUE_LEN, false);
            check_text(&mut item, "page", &e.page, MAX_VALUE_LEN, false);
            if matches!(kind, Some(EventKind::Purchase | EventKind::Return)) {
                if e.amount_minor < 0 {
                    item.add("amount_minor", "must not be negative");
                }
                if e.currency.len() != 3 || !e.currency.chars().all(|c| c.is_ascii_uppercase()) {
                    item.add("currency", "an ISO 4217 code such as EUR is required");
                }
            }
            if let Some(t) = &e.occurred_at
                && (t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos))
            {
                item.add("occurred_at", "must be a valid time after 1970");
            }
            v.extend_prefixed(&format!("events[{i}]."), item);
        }
        v.finish()?;
        let categories = distinct(
            r.events
                .iter()
                .filter_map(|e| event_kind_of(e.kind()).map(EventKind::category)),
        );
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                categories,
                r.context,
                "",
            )
            .await?;
        let notice = notice_of(policy, &r.purpose, &r.notice_version);
        let now = now_micros();
        let mut verdicts = Vec::with_capacity(r.events.len());
        let mut accepted = Vec::new();
        for e in &r.events {
            let Some(kind) = event_kind_of(e.kind()) else {
                continue;
            };
            let verdict = collection_verdict(&decision, kind.category());
            if verdict.is_ok() {
                accepted.push(Event {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    kind,
                    occurred_at: e.occurred_at.as_ref().map_or(now, micros_of),
                    item_id: e.item_id.clone(),
                    query: e.query.clone(),
                    page: e.page.clone(),
                    amount_minor: e.amount_minor,
                    currency: e.currency.clone(),
                    quantity: e.quantity,
                    collection: Collection {
                        purpose: r.purpose.clone(),
                        notice_version: notice.clone(),
                    },
                });
            }
            verdicts.push(verdict);
        }
        if !accepted.is_empty() {
            self.shared
                .store
                .put_events(&decision, &accepted)
                .await
                .map_err(store_status)?;
        }
        let (results, accepted, rejected) = item_results(&verdicts);
        Ok(Response::new(pb::RecordEventsResponse {
            results,
            accepted,
            rejected,
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        check_token(&mut v, &r.at_least_as_fresh);
        let wanted = self.wanted_attributes(&mut v, "data_categories", &r.data_categories);
        v.finish()?;
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                wanted.clone(),
                r.context,
                &r.at_least_as_fresh,
            )
            .await?;
        let part = reads::attributes(self.shared.store.as_ref(), &decision, &wanted).await?;
        let returned = reads::returned_categories(part.items.iter().map(|a| a.category.as_str()));
        self.shared
            .log_read(&decision, "GetProfile", returned, part.items.len())
            .await?;
        Ok(Response::new(pb::GetProfileResponse {
            attributes: part.items.iter().map(attribute_pb).collect(),
            redactions: part.redactions,
            decision: Some(read_decision(&decision, &wanted, part.applied)),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        check_token(&mut v, &r.at_least_as_fresh);
        let kinds = event_kinds(&mut v, "kinds", &r.kinds);
        let limit = page_size(&mut v, "page_size", r.page_size);
        let fields = event_fields(&mut v, "read_mask", r.read_mask.as_ref());
        let after = if r.page_token.is_empty() {
            None
        } else {
            let parsed = parse_page_token(&r.page_token);
            if parsed.is_none() {
                v.add("page_token", "not a page token from a previous response");
            }
            parsed
        };
        v.finish()?;
        let wanted = event_categories(&kinds);
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                wanted.clone(),
                r.context,
                &r.at_least_as_fresh,
            )
            .await?;
        let query = EventQuery {
            kinds,
            since: r.since.as_ref().map(micros_of),
            until: r.until.as_ref().map(micros_of),
            after,
            limit: limit + 1,
            // The page token is made from the last event's id.
            fields: fields.with(EventField::EventId),
        };
        let mut part =
            reads::events(self.shared.store.as_ref(), &decision, &query, &wanted).await?;
        let next_page_token = if part.items.len() > limit as usize {
            part.items.truncate(limit as usize);
            part.items.last().map(page_token).unwrap_or_default()
        } else {
            String::new()
        };
        let returned = reads::returned_categories(part.items.iter().map(|e| e.kind.category()));
        self.shared
            .log_read(&decision, "ListEvents", returned, part.items.len())
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: part.items.iter().map(|e| event_pb(e, fields)).collect(),
            redactions: part.redactions,
            next_page_token,
            decision: Some(read_decision(&decision, &wanted, part.applied)),
        }))
    }

    async fn get_answers(
        &self,
        request: Request<pb::GetAnswersRequest>,
    ) -> Result<Response<pb::GetAnswersResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        check_token(&mut v, &r.at_least_as_fresh);
        v.finish()?;
        let wanted = answer_categories(&[]);
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                wanted.clone(),
                r.context,
                &r.at_least_as_fresh,
            )
            .await?;
        let part = reads::answers(self.shared.store.as_ref(), &decision, &[], &wanted).await?;
        let returned = reads::returned_categories(part.items.iter().map(|a| a.kind.category()));
        self.shared
            .log_read(&decision, "GetAnswers", returned, part.items.len())
            .await?;
        Ok(Response::new(pb::GetAnswersResponse {
            answers: part.items.iter().map(answer_pb).collect(),
            redactions: part.redactions,
            decision: Some(read_decision(&decision, &wanted, part.applied)),
        }))
    }

    async fn read_subject(
        &self,
        request: Request<pb::ReadSubjectRequest>,
    ) -> Result<Response<pb::ReadSubjectResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let policy = &self.shared.policy;
        let mut v = Violations::default();
        check_subject(&mut v, "subject", r.subject.as_ref());
        check_purpose(policy, &mut v, "purpose", &r.purpose);
        check_token(&mut v, &r.at_least_as_fresh);
        if r.attributes.is_none() && r.events.is_none() && r.answers.is_none() {
            v.add(
                "attributes",
                "select at least one part to read: attributes, events or answers",
            );
        }
        let attributes = r.attributes.as_ref().map(|a| {
            self.wanted_attributes(&mut v, "attributes.data_categories", &a.data_categories)
        });
        let events = r.events.as_ref().map(|e| {
            let kinds = event_kinds(&mut v, "events.kinds", &e.kinds);
            let limit = page_size(&mut v, "events.limit", e.limit);
            let fields = event_fields(&mut v, "events.read_mask", e.read_mask.as_ref());
            (event_categories(&kinds), kinds, limit, fields)
        });
        let answers = r.answers.as_ref().map(|a| {
            let kinds = answer_kinds(&mut v, "answers.kinds", &a.kinds);
            (answer_categories(&kinds), kinds)
        });
        v.finish()?;
        // One decision for every part: the union of their categories.
        let mut categories: Vec<String> = attributes.iter().flatten().cloned().collect();
        categories.extend(events.iter().flat_map(|(c, ..)| c.iter().cloned()));
        categories.extend(answers.iter().flat_map(|(c, _)| c.iter().cloned()));
        categories.sort();
        categories.dedup();
        let decision = self
            .shared
            .decide(
                &caller,
                r.subject.unwrap_or_default(),
                &r.purpose,
                categories.clone(),
                r.context,
                &r.at_least_as_fresh,
            )
            .await?;
        let store = self.shared.store.as_ref();
        // The parts are independent reads under the same decision: ask for them at once.
        let (attributes, events, answers) = tokio::try_join!(
            async {
                match &attributes {
                    Some(wanted) => reads::attributes(store, &decision, wanted).await.map(Some),
                    None => Ok(None),
                }
            },
            async {
                let Some((wanted, kinds, limit, fields)) = events else {
                    return Ok(None);
                };
                let query = EventQuery {
                    kinds,
                    since: None,
                    until: None,
                    after: None,
                    limit: limit + 1,
                    fields,
                };
                let part = reads::events(store, &decision, &query, &wanted).await?;
                Ok::<_, Status>(Some((part, limit as usize, fields)))
            },
            async {
                match answers {
                    Some((wanted, kinds)) => reads::answers(store, &decision, &kinds, &wanted)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            },
        )?;
        let mut response = pb::ReadSubjectResponse::default();
        let mut returned: Vec<String> = Vec::new();
        let mut redactions = Vec::new();
        let mut applied = Vec::new();
        if let Some(part) = attributes {
            returned.extend(part.items.iter().map(|a| a.category.clone()));
            response.attributes = part.items.iter().map(attribute_pb).collect();
            redactions.extend(part.redactions);
            applied.extend(part.applied);
        }
        if let Some((mut part, limit, fields)) = events {
            response.more_events = part.items.len() > limit;
            part.items.truncate(limit);
            returned.extend(part.items.iter().map(|e| e.kind.category().to_owned()));
            response.events = part.items.iter().map(|e| event_pb(e, fields)).collect();
            redactions.extend(part.redactions);
        }
        if let Some(part) = answers {
            returned.extend(part.items.iter().map(|a| a.kind.category().to_owned()));
            response.answers = part.items.iter().map(answer_pb).collect();
            redactions.extend(part.redactions);
        }
        let items = response.attributes.len() + response.events.len() + response.answers.len();
        let returned = reads::returned_categories(returned.iter().map(String::as_str));
        self.shared
            .log_read(&decision, "ReadSubject", returned, items)
            .await?;
        response.redactions = reads::merge_redactions(redactions);
        response.decision = Some(read_decision(&decision, &categories, applied));
        Ok(Response::new(response))
    }

    async fn get_access_report(
        &self,
        request: Request<pb::GetAccessReportRequest>,
    ) -> Result<Response<pb::GetAccessReportResponse>, Status> {
        crate::rights::access_report(&self.shared, request).await
    }

    async fn export_subject_data(
        &self,
        request: Request<pb::ExportSubjectDataRequest>,
    ) -> Result<Response<pb::ExportSubjectDataResponse>, Status> {
        crate::rights::export(&self.shared, request).await
    }

    async fn rectify_attribute(
        &self,
        request: Request<pb::RectifyAttributeRequest>,
    ) -> Result<Response<pb::RectifyAttributeResponse>, Status> {
        crate::rights::rectify(&self.shared, request).await
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        crate::rights::erase(&self.shared, request).await
    }

    async fn get_erasure_status(
        &self,
        request: Request<pb::GetErasureStatusRequest>,
    ) -> Result<Response<pb::GetErasureStatusResponse>, Status> {
        let r = request.into_inner();
        if uuid::Uuid::parse_str(&r.request_id).is_err() {
            return Err(invalid_argument(
                "request_id",
                "not a request id from EraseSubject",
            ));
        }
        let found = self
            .shared
            .store
            .request(&r.request_id)
            .await
            .map_err(store_status)?
            .filter(|q| q.kind == "erase")
            .ok_or_else(|| {
                status(
                    Code::NotFound,
                    "REQUEST_NOT_FOUND",
                    "no erasure request has this id",
                )
            })?;
        Ok(Response::new(pb::GetErasureStatusResponse {
            status: Some(crate::rights::erasure_status(&found)),
        }))
    }

    async fn get_request_status(
        &self,
        request: Request<pb::GetRequestStatusRequest>,
    ) -> Result<Response<pb::GetRequestStatusResponse>, Status> {
        crate::rights::request_status(&self.shared, request).await
    }

    async fn verify_access_log(
        &self,
        _request: Request<pb::VerifyAccessLogRequest>,
    ) -> Result<Response<pb::VerifyAccessLogResponse>, Status> {
        let report = crate::access_log::verify(self.shared.store.as_ref())
            .await
            .map_err(store_status)?;
        let (first_broken_seq, problem) = report.broken.unwrap_or((0, String::new()));
        Ok(Response::new(pb::VerifyAccessLogResponse {
            ok: first_broken_seq == 0,
            entries_checked: report.entries_checked,
            first_broken_seq,
            problem,
            head_hash: report.head_hash,
        }))
    }
}

/// The subject key of a validated reference.
pub(crate) fn key_of(subject: &SubjectRef) -> String {
    subject_key(subject).unwrap_or_default()
}
