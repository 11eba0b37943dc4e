//! SetAttributes, SubmitAnswers and RecordEvents: each request validated (every bad item named
//! by index) and turned into the domain items the service collects, and the per-item verdicts
//! turned into `ItemResult`s.

use super::{MAX_ID_LEN, MAX_NAME_LEN, MAX_VALUE_LEN, micros_of};
use super::{check_category, check_purpose, check_subject, check_text};
use crate::model::now_micros;
use crate::model::{Answer, AnswerKind, Attribute, Collection, Event, EventKind, Source};
use crate::service::{CollectAsk, ItemVerdict};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::DataSource;
use consentgate_proto::limits;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::errors::Violations;
use tonic::Status;

/// The most items in one SetAttributes or SubmitAnswers call.
pub const MAX_ITEMS: usize = limits::MAX_ITEMS;
/// The most events in one RecordEvents call.
pub const MAX_EVENTS: usize = limits::MAX_EVENTS;

/// The notice version to record: the one shown, or the purpose's current one.
fn notice_of(policy: &Policy, purpose: &str, shown: String) -> String {
    if shown.is_empty() {
        policy
            .purposes
            .get(purpose)
            .map(|p| p.notice_version.text.clone())
            .unwrap_or_default()
    } else {
        shown
    }
}

/// SetAttributes: each attribute under its own purpose.
pub fn set_attributes(
    policy: &Policy,
    r: pb::SetAttributesRequest,
) -> Result<CollectAsk<Attribute>, Status> {
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
    if r.attributes.len() > MAX_ITEMS {
        // Too many to look at: refused on the count alone.
        return v.finish_with(None);
    }
    for (i, a) in r.attributes.iter().enumerate() {
        let mut item = Violations::default();
        check_text(&mut item, "name", &a.name, MAX_NAME_LEN, true);
        check_text(&mut item, "value", &a.value, MAX_VALUE_LEN, false);
        check_category(policy, &mut item, "data_category", &a.data_category);
        check_purpose(policy, &mut item, "purpose", &a.purpose);
        match a.source() {
            DataSource::Unspecified => item.add("source", "a data source is required"),
            DataSource::SecondParty | DataSource::ThirdParty if a.partner.trim().is_empty() => item
                .add(
                    "partner",
                    "second- and third-party data must name the partner",
                ),
            _ => {}
        }
        check_text(&mut item, "partner", &a.partner, MAX_NAME_LEN, false);
        item.check_len(
            "notice_version",
            &a.notice_version,
            limits::MAX_NOTICE_VERSION_BYTES,
        );
        v.extend_prefixed(&format!("attributes[{i}]."), item);
    }
    v.finish()?;
    let items = r
        .attributes
        .into_iter()
        .map(|a| {
            let source = match a.source() {
                DataSource::ZeroParty => Source::ZeroParty,
                DataSource::SecondParty => Source::SecondParty,
                DataSource::ThirdParty => Source::ThirdParty,
                _ => Source::FirstParty,
            };
            Attribute {
                name: a.name,
                value: a.value,
                category: a.data_category,
                source,
                partner: a.partner,
                collection: Collection {
                    notice_version: notice_of(policy, &a.purpose, a.notice_version),
                    purpose: a.purpose,
                },
                collected_at: 0,
                updated_at: 0,
            }
        })
        .collect();
    Ok(CollectAsk {
        subject: r.subject.unwrap_or_default(),
        context: r.context,
        items,
    })
}

/// SubmitAnswers: every answer under the call's purpose.
pub fn submit_answers(
    policy: &Policy,
    r: pb::SubmitAnswersRequest,
) -> Result<CollectAsk<Answer>, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    check_purpose(policy, &mut v, "purpose", &r.purpose);
    v.check_len(
        "notice_version",
        &r.notice_version,
        limits::MAX_NOTICE_VERSION_BYTES,
    );
    if r.answers.is_empty() || r.answers.len() > MAX_ITEMS {
        v.add(
            "answers",
            format!("1..{MAX_ITEMS} answers per call (got {})", r.answers.len()),
        );
    }
    if r.answers.len() > MAX_ITEMS {
        // Too many to look at: refused on the count alone.
        return v.finish_with(None);
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
    let collection = Collection {
        notice_version: notice_of(policy, &r.purpose, r.notice_version),
        purpose: r.purpose,
    };
    let items = r
        .answers
        .into_iter()
        .filter_map(|a| {
            Some(Answer {
                answer_id: String::new(),
                kind: answer_kind_of(a.kind())?,
                question_id: a.question_id,
                question: a.question,
                answer: a.answer,
                item_id: a.item_id,
                collection: collection.clone(),
                collected_at: 0,
            })
        })
        .collect();
    Ok(CollectAsk {
        subject: r.subject.unwrap_or_default(),
        context: r.context,
        items,
    })
}

/// RecordEvents: every event under the call's purpose; an event without a time happened now.
pub fn record_events(
    policy: &Policy,
    r: pb::RecordEventsRequest,
) -> Result<CollectAsk<Event>, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    check_purpose(policy, &mut v, "purpose", &r.purpose);
    v.check_len(
        "notice_version",
        &r.notice_version,
        limits::MAX_NOTICE_VERSION_BYTES,
    );
    if r.events.is_empty() || r.events.len() > MAX_EVENTS {
        v.add(
            "events",
            format!("1..{MAX_EVENTS} events per call (got {})", r.events.len()),
        );
    }
    if r.events.len() > MAX_EVENTS {
        // Too many to look at: refused on the count alone.
        return v.finish_with(None);
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
        check_text(&mut item, "currency", &e.currency, 3, false);
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
    let collection = Collection {
        notice_version: notice_of(policy, &r.purpose, r.notice_version),
        purpose: r.purpose,
    };
    let now = now_micros();
    let items = r
        .events
        .into_iter()
        .filter_map(|e| {
            Some(Event {
                event_id: String::new(),
                kind: event_kind_of(e.kind())?,
                occurred_at: e.occurred_at.as_ref().map_or(now, micros_of),
                item_id: e.item_id,
                query: e.query,
                page: e.page,
                amount_minor: e.amount_minor,
                currency: e.currency,
                quantity: e.quantity,
                collection: collection.clone(),
            })
        })
        .collect();
    Ok(CollectAsk {
        subject: r.subject.unwrap_or_default(),
        context: r.context,
        items,
    })
}

/// The answer of a collection call: SetAttributes, SubmitAnswers and RecordEvents answer alike,
/// a result per item and the counts.
pub trait CollectResponse {
    /// The answer from its parts.
    fn of(results: Vec<pb::ItemResult>, accepted: u32, rejected: u32) -> Self;
}

macro_rules! collect_response {
    ($($response:ty),*) => {$(
        impl CollectResponse for $response {
            fn of(results: Vec<pb::ItemResult>, accepted: u32, rejected: u32) -> Self {
                Self { results, accepted, rejected }
            }
        }
    )*};
}

collect_response!(
    pb::SetAttributesResponse,
    pb::SubmitAnswersResponse,
    pb::RecordEventsResponse
);

/// A collection call's answer from the per-item verdicts, in the caller's order.
pub fn collect_response<R: CollectResponse>(verdicts: Vec<ItemVerdict>) -> R {
    let total = u32::try_from(verdicts.len()).unwrap_or(u32::MAX);
    let mut accepted = 0;
    let mut results = Vec::with_capacity(verdicts.len());
    for (i, v) in verdicts.into_iter().enumerate() {
        let (ok, reason, detail) = match v {
            Ok(()) => (true, String::new(), String::new()),
            Err(refusal) => (false, refusal.reason, refusal.detail),
        };
        accepted += u32::from(ok);
        results.push(pb::ItemResult {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            accepted: ok,
            reason,
            detail,
        });
    }
    R::of(results, accepted, total - accepted)
}

/// An event kind from the wire (`None` when unspecified).
pub(super) fn event_kind_of(k: pb::EventKind) -> Option<EventKind> {
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

/// An answer kind from the wire (`None` when unspecified).
pub(super) fn answer_kind_of(k: pb::AnswerKind) -> Option<AnswerKind> {
    Some(match k {
        pb::AnswerKind::Unspecified => return None,
        pb::AnswerKind::Survey => AnswerKind::Survey,
        pb::AnswerKind::Quiz => AnswerKind::Quiz,
        pb::AnswerKind::Preference => AnswerKind::Preference,
        pb::AnswerKind::ReturnReason => AnswerKind::ReturnReason,
    })
}
