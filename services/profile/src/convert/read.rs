//! GetProfile, ListEvents, GetAnswers and ReadSubject: each request validated and turned into a
//! read the service performs, and what it returns turned into the wire form (events with only
//! the fields asked for, a page token from the last event).

use super::collect::{answer_kind_of, event_kind_of};
use super::{check_category, check_purpose, check_subject, micros_of, timestamp};
use crate::model::Source;
use crate::model::{Answer, AnswerKind, Attribute, Event, EventField, EventFields, EventKind};
use crate::service::{
    AnswersAsk, Decided, EventsAsk, EventsPage, EventsPart, ProfileAsk, Read, ReadAsk, Redaction,
    SubjectAsk, SubjectRead,
};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{DataSource, RequestContext, SubjectRef};
use consentgate_proto::limits;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::errors::{Violations, echo};
use tonic::Status;

const MAX_PAGE: u32 = limits::MAX_PAGE;

/// Checks what every read names: the subject, the purpose and the freshness token.
fn check_read(
    policy: &Policy,
    v: &mut Violations,
    subject: Option<&SubjectRef>,
    purpose: &str,
    token: &str,
) {
    check_subject(v, "subject", subject);
    check_purpose(policy, v, "purpose", purpose);
    if v.check_len("at_least_as_fresh", token, limits::MAX_TOKEN_BYTES)
        && !token.is_empty()
        && token.parse::<u64>().is_err()
    {
        v.add(
            "at_least_as_fresh",
            "must be a revision returned by a consent write (a decimal number)",
        );
    }
}

/// The read a validated request names.
fn read_ask(
    subject: Option<SubjectRef>,
    purpose: String,
    context: Option<RequestContext>,
    at_least_as_fresh: String,
) -> ReadAsk {
    ReadAsk {
        subject: subject.unwrap_or_default(),
        purpose,
        context,
        at_least_as_fresh,
    }
}

/// The attribute categories a read names (validated), with their subcategories; empty when none
/// are named (the service then reads every category).
fn named_categories(
    policy: &Policy,
    v: &mut Violations,
    field: &str,
    named: &[String],
) -> Vec<String> {
    if !v.check_count(field, named.len(), limits::MAX_CATEGORIES) {
        return Vec::new();
    }
    for (i, c) in named.iter().enumerate() {
        check_category(policy, v, &format!("{field}[{i}]"), c);
    }
    policy
        .categories
        .keys()
        .filter(|c| {
            named
                .iter()
                .any(|r| *c == r || c.starts_with(&format!("{r}.")))
        })
        .cloned()
        .collect()
}

/// Kinds from the wire; an unknown one is a violation at `field[i]` (`what` names the kind).
fn kinds<W: TryFrom<i32>, K>(
    v: &mut Violations,
    field: &str,
    kinds: &[i32],
    of: fn(W) -> Option<K>,
    what: &str,
) -> Vec<K> {
    let mut out = Vec::new();
    if !v.check_count(field, kinds.len(), limits::MAX_KINDS) {
        return out;
    }
    for (i, k) in kinds.iter().enumerate() {
        match W::try_from(*k).ok().and_then(of) {
            Some(kind) => out.push(kind),
            None => v.add(
                format!("{field}[{i}]"),
                format!("unknown {what} kind {k}: not one this API version defines"),
            ),
        }
    }
    out
}

/// Event kinds from the wire; an unknown one is a violation at `field[i]`.
fn event_kinds(v: &mut Violations, field: &str, wire: &[i32]) -> Vec<EventKind> {
    kinds(v, field, wire, event_kind_of, "event")
}

/// Answer kinds from the wire; an unknown one is a violation at `field[i]`.
fn answer_kinds(v: &mut Violations, field: &str, wire: &[i32]) -> Vec<AnswerKind> {
    kinds(v, field, wire, answer_kind_of, "answer")
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
    if !v.check_count(
        &format!("{field}.paths"),
        mask.paths.len(),
        limits::MAX_KINDS,
    ) {
        return EventFields::ALL;
    }
    for (i, path) in mask.paths.iter().enumerate() {
        match EventField::parse(path) {
            Some(f) => named.push(f),
            None => v.add(
                format!("{field}.paths[{i}]"),
                format!("not a field of Event: {}", echo(path)),
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

fn page_token(e: &Event) -> String {
    cursor_token(e.occurred_at, &e.event_id)
}

/// The token of the cursor after an event: its time (µs) and id.
fn cursor_token(at: i64, event_id: &str) -> String {
    format!("{at}.{event_id}")
}

/// The cursor of a token, only when the token is exactly what [`page_token`] issues for it: the
/// id is compared with stored ids as text, so another spelling of the same numbers (`+5`,
/// leading zeros, an upper-case or braced UUID) would page from the wrong place.
fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (at, id) = token.split_once('.')?;
    let at = at.parse().ok()?;
    let id = uuid::Uuid::parse_str(id).ok()?.hyphenated().to_string();
    (cursor_token(at, &id) == token).then_some((at, id))
}

/// GetProfile as the service reads it.
pub fn get_profile(policy: &Policy, r: pb::GetProfileRequest) -> Result<ProfileAsk, Status> {
    let mut v = Violations::default();
    check_read(
        policy,
        &mut v,
        r.subject.as_ref(),
        &r.purpose,
        &r.at_least_as_fresh,
    );
    let categories = named_categories(policy, &mut v, "data_categories", &r.data_categories);
    v.finish()?;
    Ok(ProfileAsk {
        read: read_ask(r.subject, r.purpose, r.context, r.at_least_as_fresh),
        categories,
    })
}

/// ListEvents as the service reads it.
pub fn list_events(policy: &Policy, r: pb::ListEventsRequest) -> Result<EventsAsk, Status> {
    let mut v = Violations::default();
    check_read(
        policy,
        &mut v,
        r.subject.as_ref(),
        &r.purpose,
        &r.at_least_as_fresh,
    );
    let kinds = event_kinds(&mut v, "kinds", &r.kinds);
    let limit = page_size(&mut v, "page_size", r.page_size);
    let fields = event_fields(&mut v, "read_mask", r.read_mask.as_ref());
    let after = if r.page_token.is_empty()
        || !v.check_len("page_token", &r.page_token, limits::MAX_TOKEN_BYTES)
    {
        None
    } else {
        let parsed = parse_page_token(&r.page_token);
        if parsed.is_none() {
            v.add("page_token", "not a page token from a previous response");
        }
        parsed
    };
    v.finish()?;
    Ok(EventsAsk {
        since: r.since.as_ref().map(micros_of),
        until: r.until.as_ref().map(micros_of),
        read: read_ask(r.subject, r.purpose, r.context, r.at_least_as_fresh),
        part: EventsPart {
            kinds,
            limit,
            fields,
        },
        after,
    })
}

/// GetAnswers as the service reads it.
pub fn get_answers(policy: &Policy, r: pb::GetAnswersRequest) -> Result<AnswersAsk, Status> {
    let mut v = Violations::default();
    check_read(
        policy,
        &mut v,
        r.subject.as_ref(),
        &r.purpose,
        &r.at_least_as_fresh,
    );
    v.finish()?;
    Ok(read_ask(
        r.subject,
        r.purpose,
        r.context,
        r.at_least_as_fresh,
    ))
}

/// ReadSubject as the service reads it: at least one part.
pub fn read_subject(policy: &Policy, r: pb::ReadSubjectRequest) -> Result<SubjectAsk, Status> {
    let mut v = Violations::default();
    check_read(
        policy,
        &mut v,
        r.subject.as_ref(),
        &r.purpose,
        &r.at_least_as_fresh,
    );
    if r.attributes.is_none() && r.events.is_none() && r.answers.is_none() {
        v.add(
            "attributes",
            "select at least one part to read: attributes, events or answers",
        );
    }
    let attributes = r.attributes.as_ref().map(|a| {
        named_categories(
            policy,
            &mut v,
            "attributes.data_categories",
            &a.data_categories,
        )
    });
    let events = r.events.as_ref().map(|e| EventsPart {
        kinds: event_kinds(&mut v, "events.kinds", &e.kinds),
        limit: page_size(&mut v, "events.limit", e.limit),
        fields: event_fields(&mut v, "events.read_mask", e.read_mask.as_ref()),
    });
    let answers = r
        .answers
        .as_ref()
        .map(|a| answer_kinds(&mut v, "answers.kinds", &a.kinds));
    v.finish()?;
    Ok(SubjectAsk {
        read: read_ask(r.subject, r.purpose, r.context, r.at_least_as_fresh),
        attributes,
        events,
        answers,
    })
}

/// GetProfile's answer.
pub fn get_profile_response(read: Read<Attribute>) -> pb::GetProfileResponse {
    pb::GetProfileResponse {
        attributes: read.items.iter().map(attribute_pb).collect(),
        redactions: redactions_pb(read.redactions),
        decision: Some(read_decision(read.decided)),
    }
}

/// ListEvents' answer: the page, and a token to the next when there is more.
pub fn list_events_response(page: EventsPage) -> pb::ListEventsResponse {
    let read = page.read;
    let next_page_token = if page.more {
        read.items.last().map(page_token).unwrap_or_default()
    } else {
        String::new()
    };
    pb::ListEventsResponse {
        events: read
            .items
            .iter()
            .map(|e| event_pb(e, page.fields))
            .collect(),
        redactions: redactions_pb(read.redactions),
        next_page_token,
        decision: Some(read_decision(read.decided)),
    }
}

/// GetAnswers' answer.
pub fn get_answers_response(read: Read<Answer>) -> pb::GetAnswersResponse {
    pb::GetAnswersResponse {
        answers: read.items.iter().map(answer_pb).collect(),
        redactions: redactions_pb(read.redactions),
        decision: Some(read_decision(read.decided)),
    }
}

/// ReadSubject's answer.
pub fn read_subject_response(read: SubjectRead) -> pb::ReadSubjectResponse {
    pb::ReadSubjectResponse {
        attributes: read.attributes.iter().map(attribute_pb).collect(),
        events: read
            .events
            .iter()
            .map(|e| event_pb(e, read.fields))
            .collect(),
        more_events: read.more_events,
        answers: read.answers.iter().map(answer_pb).collect(),
        redactions: redactions_pb(read.redactions),
        decision: Some(read_decision(read.decided)),
    }
}

fn read_decision(decided: Decided) -> pb::ReadDecision {
    pb::ReadDecision {
        revision: decided.revision,
        personalization_level: decided.personalization_level as i32,
        obligations_applied: decided.applied,
        reason: decided.reason,
    }
}

fn redactions_pb(redactions: Vec<Redaction>) -> Vec<pb::Redaction> {
    redactions
        .into_iter()
        .map(|r| pb::Redaction {
            data_category: r.data_category,
            reason: r.reason,
            detail: r.detail,
            items: r.items,
        })
        .collect()
}

fn source_pb(s: Source) -> DataSource {
    match s {
        Source::ZeroParty => DataSource::ZeroParty,
        Source::FirstParty => DataSource::FirstParty,
        Source::SecondParty => DataSource::SecondParty,
        Source::ThirdParty => DataSource::ThirdParty,
    }
}

/// An attribute in its wire form.
pub(super) fn attribute_pb(a: &Attribute) -> pb::Attribute {
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

/// An answer in its wire form.
fn answer_pb(a: &Answer) -> pb::Answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `page_tokens` fuzz target: `0001640411345.<id>` was accepted as the cursor
    /// of `1640411345.<id>`.
    #[test]
    fn only_the_issued_spelling_of_a_page_token_is_accepted() {
        let id = "01930f3c-5b1e-7c3a-9d2e-4f5a6b7c8d9e";
        let issued = cursor_token(1_640_411_345, id);
        assert_eq!(
            parse_page_token(&issued),
            Some((1_640_411_345, id.to_owned()))
        );
        for other in [
            format!("0001640411345.{id}"),
            format!("+1640411345.{id}"),
            format!("1640411345.{}", id.to_uppercase()),
            format!("1640411345.{{{id}}}"),
            format!("1640411345.{}", id.replace('-', "")),
        ] {
            assert_eq!(parse_page_token(&other), None, "{other}");
        }
    }
}
