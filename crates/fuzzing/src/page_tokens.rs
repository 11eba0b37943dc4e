//! Page tokens: the consent service's ListConsentHistory tokens (a revision bound to the subject)
//! and the profile service's ListEvents tokens (an event's time and id), decoded and verified by
//! the request validators and issued by the answers that carry them.
//!
//! The first byte of the input picks one of four questions; the rest is plain text (subjects as
//! `s<id>` or `d<id>`, one per line, then a token) or fixed-width numbers, so that the committed
//! seeds are real tokens one can read:
//! 0. **consent, any token**: a token the validator accepts for a subject is exactly the token
//!    the service issues for that subject and revision (no other spelling, no other subject's
//!    token); one it refuses is refused as `INVALID_ARGUMENT` naming `page_token`;
//! 1. **consent, round trip**: the token issued for (subject, revision) is accepted for that
//!    subject with that revision, and refused for any other subject;
//! 2. **profile, any token**: the same for ListEvents: an accepted token is the one the service
//!    issues for the cursor it decodes to;
//! 3. **profile, round trip**: the token issued after an event decodes to that event's cursor.

use crate::{Budget, Target};
use consentgate_consent::convert as consent;
use consentgate_consent::model::SubjectKey;
use consentgate_consent::service::HistoryPage;
use consentgate_policy::Policy;
use consentgate_profile::convert as profile;
use consentgate_profile::model::{Collection, Event, EventFields, EventKind};
use consentgate_profile::service::{Decided, EventsPage, Read};
use consentgate_proto::common::v1::{PersonalizationLevel, SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as profile_pb;
use std::sync::OnceLock;
use tonic::Code;

/// The page tokens target.
pub const TARGET: Target = Target {
    name: "page_tokens",
    run,
    // Tokens over 128 bytes are refused by length before they are decoded.
    max_len: 1024,
    budget: Budget {
        fixed: 1 << 20,
        per_input_byte: 64,
    },
};

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Policy::default_policy().expect("the shipped policy loads"))
}

fn subject_ref(key: &SubjectKey) -> SubjectRef {
    SubjectRef {
        id: Some(match key {
            SubjectKey::Subject(id) => subject_ref::Id::SubjectId(id.clone()),
            SubjectKey::Device(id) => subject_ref::Id::DeviceId(id.clone()),
        }),
    }
}

/// The token the consent service issues for `subject` after `revision`.
pub fn consent_token(subject: &SubjectKey, revision: u64) -> String {
    let page = HistoryPage {
        records: Vec::new(),
        next_after: Some(revision),
    };
    consent::history_response(subject, &page).next_page_token
}

/// The consent validator on `token` for `subject`: the revision it decodes to, or None when it
/// refuses the token (and only the token: the subject is valid).
fn consent_accepts(subject: &SubjectKey, token: &str) -> Option<u64> {
    let request = consent_pb::ListConsentHistoryRequest {
        subject: Some(subject_ref(subject)),
        page_token: token.to_owned(),
        ..Default::default()
    };
    match consent::history(&request) {
        Ok((decoded, after, _)) => {
            assert_eq!(&decoded, subject, "the subject comes back as asked");
            Some(after)
        }
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("page_token"),
                "a refused token is named: {status:?}"
            );
            None
        }
    }
}

/// A valid subject id for the validators (non-empty, short, no control characters).
fn valid_subject(key: &SubjectKey) -> bool {
    let id = match key {
        SubjectKey::Subject(id) | SubjectKey::Device(id) => id,
    };
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
}

/// The token the profile service issues after an event at `at` (µs) with id `id`.
pub fn profile_token(at: i64, id: &str) -> String {
    let event = Event {
        event_id: id.to_owned(),
        kind: EventKind::PageView,
        occurred_at: at,
        item_id: String::new(),
        query: String::new(),
        page: String::new(),
        amount_minor: 0,
        currency: String::new(),
        quantity: 0,
        collection: Collection {
            purpose: String::new(),
            notice_version: String::new(),
        },
    };
    let page = EventsPage {
        read: Read {
            items: vec![event],
            redactions: Vec::new(),
            decided: Decided {
                revision: 0,
                personalization_level: PersonalizationLevel::Contextual,
                applied: Vec::new(),
                reason: String::new(),
            },
        },
        more: true,
        fields: EventFields::ALL,
    };
    profile::list_events_response(page).next_page_token
}

/// The profile validator on `token` (in an otherwise valid ListEvents): the cursor it decodes to,
/// or None when it refuses the token.
fn profile_accepts(token: &str) -> Option<(i64, String)> {
    let request = profile_pb::ListEventsRequest {
        subject: Some(subject_ref(&SubjectKey::Subject("subject-0".into()))),
        purpose: "personalize.content.profiled".into(),
        page_token: token.to_owned(),
        ..Default::default()
    };
    match profile::list_events(policy(), request) {
        Ok(ask) => {
            assert_eq!(ask.after.is_some(), !token.is_empty(), "token {token:?}");
            ask.after
        }
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("page_token"),
                "a refused token is named: {status:?}"
            );
            None
        }
    }
}

fn run(data: &[u8]) {
    let Some((&question, rest)) = data.split_first() else {
        return;
    };
    match question % 4 {
        0 => any_consent_token(rest),
        1 => consent_round_trip(rest),
        2 => any_profile_token(rest),
        _ => profile_round_trip(rest),
    }
}

/// A subject as a line of the input spells it: `d` then a device id, else `s` then a subject id.
fn subject_of(line: &str) -> Option<SubjectKey> {
    let key = if let Some(id) = line.strip_prefix('d') {
        SubjectKey::Device(id.to_owned())
    } else {
        SubjectKey::Subject(line.strip_prefix('s')?.to_owned())
    };
    valid_subject(&key).then_some(key)
}

/// Question 0: `<subject>\n<token>`.
fn any_consent_token(rest: &[u8]) {
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Some((subject, token)) = text.split_once('\n') else {
        return;
    };
    let Some(subject) = subject_of(subject) else {
        return;
    };
    if token.is_empty() {
        return;
    }
    if let Some(after) = consent_accepts(&subject, token) {
        assert_eq!(
            token,
            consent_token(&subject, after),
            "accepted a token the service never issued"
        );
    }
}

/// Question 1: eight bytes of revision (little-endian), then `<subject>\n<other subject>`.
fn consent_round_trip(rest: &[u8]) {
    let Some((revision, text)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let revision = u64::from_le_bytes(*revision);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let (subject, other) = text.split_once('\n').unwrap_or((text, ""));
    let Some(subject) = subject_of(subject) else {
        return;
    };
    let token = consent_token(&subject, revision);
    assert_eq!(consent_accepts(&subject, &token), Some(revision));
    if let Some(other) = subject_of(other)
        && other != subject
    {
        assert_eq!(
            consent_accepts(&other, &token),
            None,
            "another subject's token was accepted"
        );
    }
}

/// Question 2: the token.
fn any_profile_token(rest: &[u8]) {
    let Ok(token) = std::str::from_utf8(rest) else {
        return;
    };
    if let Some((at, id)) = profile_accepts(token) {
        assert_eq!(
            token,
            profile_token(at, &id),
            "accepted a token the service never issued"
        );
    }
}

/// Question 3: eight bytes of time (µs, little-endian), sixteen of event id.
fn profile_round_trip(rest: &[u8]) {
    let Some((at, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let Some((id, _)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let at = i64::from_le_bytes(*at);
    let id = uuid_text(*id);
    let token = profile_token(at, &id);
    assert_eq!(profile_accepts(&token), Some((at, id)));
}

/// An event id as the profile service writes them: a UUID, hyphenated, lowercase.
fn uuid_text(bytes: [u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
