//! Gated reads: GetProfile, ListEvents and GetAnswers read one part each (attributes, events,
//! answers); ReadSubject reads several under one decision and records them as one access-log
//! entry. Each part returns what the decision allows, with obligations applied and a redaction
//! for what it withholds; the read's top-level reason is the most significant denial among the
//! categories it asked about (docs/architecture.md §4).
//!
//! These are hot paths (a gated read costs about 0.1 ms): one decision, one store round trip per
//! part, no copies of what the store returned.

use super::{Service, ServiceError};
use crate::model::{Answer, AnswerKind, Attribute, Event, EventField, EventFields, EventKind};
use crate::model::{Holding, Table};
use crate::observe::ReadOutcome;
use crate::store::{EventQuery, ProfileStore};
use consentgate_gate::Clearance;
use consentgate_policy::Reason;
use consentgate_proto::common::v1::{PersonalizationLevel, RequestContext, SubjectRef};
use consentgate_proto::consent::v1::Verdict;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::traces::in_span;
use opentelemetry::KeyValue;
use std::collections::BTreeMap;

/// What every gated read names: whose data, for which purpose, in which context, and how fresh
/// the decision must be.
#[derive(Debug, Clone)]
pub struct ReadAsk {
    /// Whom the read is about.
    pub subject: SubjectRef,
    /// The purpose the data is read for.
    pub purpose: String,
    /// The request's context, passed to the consent check.
    pub context: Option<RequestContext>,
    /// A revision the decision must reflect (empty: any), so a read right after a consent
    /// write sees it.
    pub at_least_as_fresh: String,
}

/// GetProfile as asked.
#[derive(Debug, Clone)]
pub struct ProfileAsk {
    /// The read.
    pub read: ReadAsk,
    /// The attribute categories asked about, subcategories included (empty: every category).
    pub categories: Vec<String>,
}

/// The events part of a read: which kinds, how many, which fields.
#[derive(Debug, Clone)]
pub struct EventsPart {
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// At most this many events.
    pub limit: u32,
    /// The fields to return.
    pub fields: EventFields,
}

/// ListEvents as asked.
#[derive(Debug, Clone)]
pub struct EventsAsk {
    /// The read.
    pub read: ReadAsk,
    /// Kinds, page size and fields.
    pub part: EventsPart,
    /// At or after (µs).
    pub since: Option<i64>,
    /// Before (µs).
    pub until: Option<i64>,
    /// Continue after this `(occurred_at, event_id)`, from a previous page.
    pub after: Option<(i64, String)>,
}

/// GetAnswers as asked (every kind).
pub type AnswersAsk = ReadAsk;

/// ReadSubject as asked: at least one part.
#[derive(Debug, Clone)]
pub struct SubjectAsk {
    /// The read.
    pub read: ReadAsk,
    /// Attribute categories, subcategories included (empty: every category), if asked.
    pub attributes: Option<Vec<String>>,
    /// Events, if asked.
    pub events: Option<EventsPart>,
    /// Answer kinds (empty: all), if asked.
    pub answers: Option<Vec<AnswerKind>>,
}

/// Data the subject holds in a category that the decision withheld, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// The category withheld.
    pub data_category: String,
    /// The reason code (the decision's for the category, or an obligation's).
    pub reason: String,
    /// What it means, in words.
    pub detail: String,
    /// How many items were withheld.
    pub items: u32,
}

/// What a read was decided on.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The subject's consent revision the decision reflects.
    pub revision: u64,
    /// The personalization level the consents allow.
    pub personalization_level: PersonalizationLevel,
    /// Obligations applied, e.g. `exclude_sources=third_party`.
    pub applied: Vec<String>,
    /// Empty when everything asked about was allowed; else the most significant denial.
    pub reason: String,
}

/// What one gated read returns.
#[derive(Debug, Clone)]
pub struct Read<T> {
    /// The items the decision allows.
    pub items: Vec<T>,
    /// What the subject holds in the asked categories but the decision withheld.
    pub redactions: Vec<Redaction>,
    /// What the read was decided on.
    pub decided: Decided,
}

/// A page of ListEvents.
#[derive(Debug, Clone)]
pub struct EventsPage {
    /// The events, newest first.
    pub read: Read<Event>,
    /// Whether more events follow the last one.
    pub more: bool,
    /// The fields asked for (the others are to be left empty).
    pub fields: EventFields,
}

/// What ReadSubject returns: every part asked for (the others empty), under one decision.
#[derive(Debug, Clone)]
pub struct SubjectRead {
    /// Attributes the decision allows.
    pub attributes: Vec<Attribute>,
    /// Events the decision allows, newest first.
    pub events: Vec<Event>,
    /// Whether more events exist than the limit allowed.
    pub more_events: bool,
    /// The event fields asked for.
    pub fields: EventFields,
    /// Answers the decision allows.
    pub answers: Vec<Answer>,
    /// Withheld data of every part, one per category and reason.
    pub redactions: Vec<Redaction>,
    /// What the read was decided on.
    pub decided: Decided,
}

/// What one part of a read returns, before the read is summarized.
struct Part<T> {
    items: Vec<T>,
    redactions: Vec<Redaction>,
    applied: Vec<String>,
}

impl Service {
    /// Every category when none are named.
    fn or_all(&self, categories: Vec<String>) -> Vec<String> {
        if categories.is_empty() {
            self.all_categories.clone()
        } else {
            categories
        }
    }

    /// Asks the gate about a read, and counts how it was decided.
    async fn decide_read(
        &self,
        caller: &CallerIdentity,
        read: ReadAsk,
        categories: Vec<String>,
    ) -> Result<Clearance, ServiceError> {
        let decided = self
            .decide(
                caller,
                read.subject,
                &read.purpose,
                categories,
                read.context,
                &read.at_least_as_fresh,
            )
            .await;
        match &decided {
            Ok(decision) => self.metrics.read(&read.purpose, ReadOutcome::of(decision)),
            Err(ServiceError::ConsentUnavailable(_)) => {
                self.metrics.read(&read.purpose, ReadOutcome::Unavailable);
            }
            Err(_) => {}
        }
        decided
    }

    /// Counts what a read withheld, by reason.
    fn count_withheld(&self, redactions: &[Redaction]) {
        for r in redactions {
            self.metrics.redacted(&r.reason, r.items);
        }
    }

    /// GetProfile: the attributes of the asked categories that the decision allows.
    pub async fn get_profile(
        &self,
        caller: &CallerIdentity,
        ask: ProfileAsk,
    ) -> Result<Read<Attribute>, ServiceError> {
        let wanted = self.or_all(ask.categories);
        let decision = self.decide_read(caller, ask.read, wanted.clone()).await?;
        let part = attributes_part(self.store.as_ref(), &decision, &wanted).await?;
        let returned = returned_categories(part.items.iter().map(|a| a.category.as_str()));
        self.log_read(&decision, "GetProfile", returned, part.items.len())
            .await?;
        self.count_withheld(&part.redactions);
        Ok(Read {
            items: part.items,
            redactions: part.redactions,
            decided: decided(&decision, &wanted, part.applied),
        })
    }

    /// ListEvents: a page of the events the decision allows, newest first.
    pub async fn list_events(
        &self,
        caller: &CallerIdentity,
        ask: EventsAsk,
    ) -> Result<EventsPage, ServiceError> {
        let wanted = event_categories(&ask.part.kinds);
        let decision = self.decide_read(caller, ask.read, wanted.clone()).await?;
        let limit = ask.part.limit;
        let query = EventQuery {
            kinds: ask.part.kinds,
            since: ask.since,
            until: ask.until,
            after: ask.after,
            limit: limit + 1,
            // The page token is made from the last event's id.
            fields: ask.part.fields.with(EventField::EventId),
        };
        let mut part = events_part(self.store.as_ref(), &decision, &query, &wanted).await?;
        let more = part.items.len() > limit as usize;
        part.items.truncate(limit as usize);
        let returned = returned_categories(part.items.iter().map(|e| e.kind.category()));
        self.log_read(&decision, "ListEvents", returned, part.items.len())
            .await?;
        self.count_withheld(&part.redactions);
        Ok(EventsPage {
            read: Read {
                items: part.items,
                redactions: part.redactions,
                decided: decided(&decision, &wanted, part.applied),
            },
            more,
            fields: ask.part.fields,
        })
    }

    /// GetAnswers: the answers the decision allows, oldest first.
    pub async fn get_answers(
        &self,
        caller: &CallerIdentity,
        ask: AnswersAsk,
    ) -> Result<Read<Answer>, ServiceError> {
        let wanted = answer_categories(&[]);
        let decision = self.decide_read(caller, ask, wanted.clone()).await?;
        let part = answers_part(self.store.as_ref(), &decision, &[], &wanted).await?;
        let returned = returned_categories(part.items.iter().map(|a| a.kind.category()));
        self.log_read(&decision, "GetAnswers", returned, part.items.len())
            .await?;
        self.count_withheld(&part.redactions);
        Ok(Read {
            items: part.items,
            redactions: part.redactions,
            decided: decided(&decision, &wanted, part.applied),
        })
    }

    /// ReadSubject: the parts asked for, under one decision over the union of their categories,
    /// read at once and recorded as one access-log entry.
    pub async fn read_subject(
        &self,
        caller: &CallerIdentity,
        ask: SubjectAsk,
    ) -> Result<SubjectRead, ServiceError> {
        let attributes = ask.attributes.map(|named| self.or_all(named));
        let events = ask.events.map(|part| (event_categories(&part.kinds), part));
        let answers = ask.answers.map(|kinds| (answer_categories(&kinds), kinds));
        // One decision for every part: the union of their categories.
        let mut categories: Vec<String> = attributes.iter().flatten().cloned().collect();
        categories.extend(events.iter().flat_map(|(c, _)| c.iter().cloned()));
        categories.extend(answers.iter().flat_map(|(c, _)| c.iter().cloned()));
        categories.sort();
        categories.dedup();
        let decision = self
            .decide_read(caller, ask.read, categories.clone())
            .await?;
        let store = self.store.as_ref();
        let fields = events
            .as_ref()
            .map_or(EventFields::ALL, |(_, part)| part.fields);
        // The parts are independent reads under the same decision: ask for them at once.
        let (attributes, events, answers) = tokio::try_join!(
            async {
                match &attributes {
                    Some(wanted) => attributes_part(store, &decision, wanted).await.map(Some),
                    None => Ok(None),
                }
            },
            async {
                let Some((wanted, part)) = events else {
                    return Ok(None);
                };
                let query = EventQuery {
                    kinds: part.kinds,
                    since: None,
                    until: None,
                    after: None,
                    limit: part.limit + 1,
                    fields: part.fields,
                };
                let read = events_part(store, &decision, &query, &wanted).await?;
                Ok::<_, ServiceError>(Some((read, part.limit as usize)))
            },
            async {
                match answers {
                    Some((wanted, kinds)) => answers_part(store, &decision, &kinds, &wanted)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            },
        )?;
        let mut read = SubjectRead {
            attributes: Vec::new(),
            events: Vec::new(),
            more_events: false,
            fields,
            answers: Vec::new(),
            redactions: Vec::new(),
            decided: decided(&decision, &categories, Vec::new()),
        };
        let mut returned: Vec<&str> = Vec::new();
        let mut redactions = Vec::new();
        if let Some(part) = attributes {
            read.attributes = part.items;
            returned.extend(read.attributes.iter().map(|a| a.category.as_str()));
            redactions.extend(part.redactions);
            read.decided.applied.extend(part.applied);
        }
        if let Some((mut part, limit)) = events {
            read.more_events = part.items.len() > limit;
            part.items.truncate(limit);
            read.events = part.items;
            returned.extend(read.events.iter().map(|e| e.kind.category()));
            redactions.extend(part.redactions);
        }
        if let Some(part) = answers {
            read.answers = part.items;
            returned.extend(read.answers.iter().map(|a| a.kind.category()));
            redactions.extend(part.redactions);
        }
        let items = read.attributes.len() + read.events.len() + read.answers.len();
        let returned = returned_categories(returned.into_iter());
        self.log_read(&decision, "ReadSubject", returned, items)
            .await?;
        read.redactions = merge_redactions(redactions);
        self.count_withheld(&read.redactions);
        Ok(read)
    }
}

/// The categories of events of `kinds` (empty: every kind), sorted.
fn event_categories(kinds: &[EventKind]) -> Vec<String> {
    categories_of(&EventKind::ALL, kinds, EventKind::category)
}

/// The categories of answers of `kinds` (empty: every kind), sorted.
fn answer_categories(kinds: &[AnswerKind]) -> Vec<String> {
    categories_of(&AnswerKind::ALL, kinds, AnswerKind::category)
}

/// The distinct categories of the kinds of `all` in `asked` (empty: every kind), sorted.
fn categories_of<K: Copy + PartialEq>(
    all: &[K],
    asked: &[K],
    category: fn(K) -> &'static str,
) -> Vec<String> {
    let mut categories: Vec<String> = all
        .iter()
        .filter(|k| asked.is_empty() || asked.contains(k))
        .map(|k| category(*k).to_owned())
        .collect();
    categories.sort();
    categories.dedup();
    categories
}

/// What a read was decided on; `asked` are the categories the read asked the gate about.
fn decided(decision: &Clearance, asked: &[String], applied: Vec<String>) -> Decided {
    Decided {
        revision: decision.revision(),
        personalization_level: decision.personalization_level(),
        applied,
        reason: summary_reason(decision, asked),
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
fn summary_reason(decision: &Clearance, asked: &[String]) -> String {
    if decision.verdict() == Verdict::Allow {
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

/// The attributes in `wanted` categories that the decision allows, minus sources its obligations
/// exclude.
async fn attributes_part(
    store: &dyn ProfileStore,
    decision: &Clearance,
    wanted: &[String],
) -> Result<Part<Attribute>, ServiceError> {
    let wants = |category: &str| wanted.iter().any(|w| w == category);
    let (mut items, holdings) = in_span(
        "consentgate.profile.store.read",
        || [KeyValue::new("consentgate.table", "attributes")],
        store.profile_view(decision),
    )
    .await?;
    items.retain(|a| wants(&a.category));
    let holdings: Vec<Holding> = holdings
        .into_iter()
        .filter(|h| wants(&h.category))
        .collect();
    let mut redactions = redactions(decision, &holdings);
    let excluded = decision.excluded_sources();
    let mut applied = Vec::new();
    if !excluded.is_empty() {
        applied.push(format!("exclude_sources={}", excluded.join(",")));
        let mut dropped: BTreeMap<String, u32> = BTreeMap::new();
        items.retain(|a| {
            let keep = !excluded.contains(&a.source.as_str());
            if !keep {
                *dropped.entry(a.category.clone()).or_default() += 1;
            }
            keep
        });
        for (category, items) in dropped {
            redactions.push(Redaction {
                data_category: category,
                reason: "THIRD_PARTY_SOURCE_EXCLUDED".into(),
                detail: format!(
                    "the purpose's obligations exclude data from these sources: {}",
                    excluded.join(", ")
                ),
                items,
            });
        }
    }
    Ok(Part {
        items,
        redactions,
        applied,
    })
}

/// The events `query` selects that the decision allows, newest first; redactions cover the
/// `wanted` categories (those of the kinds asked for).
async fn events_part(
    store: &dyn ProfileStore,
    decision: &Clearance,
    query: &EventQuery,
    wanted: &[String],
) -> Result<Part<Event>, ServiceError> {
    let (holdings, items) = in_span(
        "consentgate.profile.store.read",
        || [KeyValue::new("consentgate.table", "events")],
        async {
            let holdings = held_where_denied(store, decision, Table::Events, wanted).await?;
            Ok::<_, ServiceError>((holdings, store.events(decision, query).await?))
        },
    )
    .await?;
    Ok(Part {
        items,
        redactions: redactions(decision, &holdings),
        applied: Vec::new(),
    })
}

/// The answers of `kinds` (empty: all) that the decision allows, oldest first; redactions cover
/// the `wanted` categories (those of the kinds asked for).
async fn answers_part(
    store: &dyn ProfileStore,
    decision: &Clearance,
    kinds: &[AnswerKind],
    wanted: &[String],
) -> Result<Part<Answer>, ServiceError> {
    let (holdings, mut items) = in_span(
        "consentgate.profile.store.read",
        || [KeyValue::new("consentgate.table", "answers")],
        async {
            let holdings = held_where_denied(store, decision, Table::Answers, wanted).await?;
            Ok::<_, ServiceError>((holdings, store.answers(decision).await?))
        },
    )
    .await?;
    if !kinds.is_empty() {
        items.retain(|a| kinds.contains(&a.kind));
    }
    Ok(Part {
        items,
        redactions: redactions(decision, &holdings),
        applied: Vec::new(),
    })
}

/// The distinct categories of what a read returns, sorted: what its access-log entry names.
pub(super) fn returned_categories<'a>(categories: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = categories.map(str::to_owned).collect();
    out.sort();
    out.dedup();
    out
}

/// Redactions of several parts, one per category and reason (items added up).
fn merge_redactions(parts: Vec<Redaction>) -> Vec<Redaction> {
    let mut by: BTreeMap<(String, String), Redaction> = BTreeMap::new();
    for r in parts {
        match by.entry((r.data_category.clone(), r.reason.clone())) {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let merged = o.get_mut();
                merged.items = merged.items.saturating_add(r.items);
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(r);
            }
        }
    }
    by.into_values().collect()
}

/// What the subject holds of `table` in `wanted` categories, for redactions, which only denied
/// categories produce: a decision that allows everything it was asked about needs no count query.
async fn held_where_denied(
    store: &dyn ProfileStore,
    decision: &Clearance,
    table: Table,
    wanted: &[String],
) -> Result<Vec<Holding>, ServiceError> {
    if decision.verdict() == Verdict::Allow {
        return Ok(Vec::new());
    }
    let mut holdings = store.holdings(decision, table).await?;
    holdings.retain(|h| wanted.contains(&h.category));
    Ok(holdings)
}

/// Redactions from holdings: categories held but denied, with the decision's reasons.
fn redactions(decision: &Clearance, holdings: &[Holding]) -> Vec<Redaction> {
    let mut by: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
    for h in holdings {
        let Some(verdict) = decision.category(&h.category) else {
            continue;
        };
        if verdict.allowed {
            continue;
        }
        let entry = by
            .entry((h.category.clone(), verdict.reason.clone()))
            .or_insert_with(|| (verdict.detail.clone(), 0));
        entry.1 += h.items;
    }
    by.into_iter()
        .map(|((category, reason), (detail, items))| Redaction {
            data_category: category,
            reason,
            detail,
            items: u32::try_from(items).unwrap_or(u32::MAX),
        })
        .collect()
}
