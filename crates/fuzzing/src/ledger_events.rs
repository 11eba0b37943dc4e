//! Ledger events: the canonical events (`ledger::entry`) that the verifier, the change feed's
//! checkpoint times and every record read parse back from stored ledger entries. The hash chain
//! names an edited entry, but the readers meet the text first, and a tampered or corrupted
//! database can hold anything there: they must neither panic nor disagree about it.
//!
//! The first byte of the input picks one of two questions:
//! 0. **any text as an entry** (the rest of the input; the seeds are real version-1, -2 and -3
//!    entries): `head` and `consent_of` do not panic, and they agree (a consent read from an
//!    entry has a head; in the array forms, versions 2 and 3, its kind is a consent kind whose
//!    state is the consent's; an entry in array form is version 2 or 3);
//! 1. **an entry the service writes**: fuzzer-chosen fields of any kind go through
//!    `canonical_event`; `head` reads back exactly its version, position, time, kind and actor,
//!    and `consent_of` exactly the consent's fields (nothing for the other kinds); then one
//!    fuzzer-chosen byte of it is replaced or removed, and the readers still agree on the result.

use crate::{Budget, Target};
use arbitrary::{Arbitrary, Unstructured};
use consentgate_consent::ledger::entry::{
    EVENT_VERSION, EventHead, canonical_event, consent_of, consent_state_of, head,
};
use consentgate_consent::model::{Change, ImportOrigin, NewConsent, SubjectKey};
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The ledger events target.
pub const TARGET: Target = Target {
    name: "ledger_events",
    run,
    // A real entry is 200–700 bytes; fields the service bounds at a few hundred bytes each.
    max_len: 8 * 1024,
    budget: Budget {
        fixed: 1 << 20,
        per_input_byte: 64,
    },
};

/// A time the service can write: whole seconds from 1970 to 2106 and any nanoseconds.
#[derive(Debug, Arbitrary)]
struct Time {
    secs: u32,
    nanos: u32,
}

impl Time {
    fn get(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(i64::from(self.secs))
            .and_then(|t| t.replace_nanosecond(self.nanos % 1_000_000_000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The change an entry records, with every field the fuzzer's.
#[derive(Debug, Arbitrary)]
enum Kind {
    Consent {
        record_id: String,
        purpose: String,
        scope: Option<String>,
        channel: Option<String>,
        state: u8,
        consent_type: bool,
        legal_basis: u8,
        jurisdiction: String,
        notice_id: String,
        notice_version: String,
        method: u8,
        collected_at: Time,
        expires_at: Option<Time>,
        guardian: Option<String>,
        imported_from: Option<String>,
    },
    Signal {
        kind: String,
        value: String,
        method: u8,
    },
    Link {
        device: String,
    },
    Restrict(bool),
    Erase,
}

/// An entry as the service writes it, and the one-byte edit made to it afterwards.
#[derive(Debug, Arbitrary)]
struct Written {
    seq: u64,
    at: Time,
    subject_pseudonym: String,
    actor: Option<String>,
    kind: Kind,
    edit_at: usize,
    edit_to: u8,
    edit_removes: bool,
}

const METHODS: [CollectionMethod; 6] = [
    CollectionMethod::PreferenceCenter,
    CollectionMethod::Banner,
    CollectionMethod::Survey,
    CollectionMethod::Api,
    CollectionMethod::GpcSignal,
    CollectionMethod::Import,
];

fn pick<T: Copy>(all: &[T], i: u8) -> T {
    all[usize::from(i) % all.len()]
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("a time from 1970 to 2106 formats")
}

fn run(data: &[u8]) {
    let Some((&question, rest)) = data.split_first() else {
        return;
    };
    match question {
        0 => readers_agree(&String::from_utf8_lossy(rest)),
        _ => {
            if let Ok(written) = Written::arbitrary_take_rest(Unstructured::new(rest)) {
                reads_back(&written);
            }
        }
    }
}

/// Question 0's properties, for any text.
fn readers_agree(text: &str) {
    let h = head(text);
    if let Some(h) = &h {
        assert!(
            (1..=3).contains(&h.version),
            "a head of version {}: {text}",
            h.version
        );
        assert_eq!(
            h.version >= 2,
            text.starts_with('['),
            "the form names the version: {text}"
        );
    }
    if let Some(c) = consent_of(text) {
        let h = h.unwrap_or_else(|| panic!("a consent without a head: {text}"));
        if h.version >= 2 {
            let state = consent_state_of(&h.kind)
                .unwrap_or_else(|| panic!("a consent of kind {}: {text}", h.kind));
            assert_eq!(c.state, state, "{text}");
        }
    }
}

/// Question 1's properties.
fn reads_back(w: &Written) {
    let subject = SubjectKey::Subject("fuzz".into());
    let change = match &w.kind {
        Kind::Consent {
            record_id,
            purpose,
            scope,
            channel,
            state,
            consent_type,
            legal_basis,
            jurisdiction,
            notice_id,
            notice_version,
            method,
            collected_at,
            expires_at,
            guardian,
            imported_from,
        } => Change::Consent(NewConsent {
            record_id: record_id.clone(),
            subject: subject.clone(),
            purpose: purpose.clone(),
            scope: scope.clone(),
            channel: channel.clone(),
            state: pick(
                &[
                    RecordState::Given,
                    RecordState::Refused,
                    RecordState::Withdrawn,
                ],
                *state,
            ),
            consent_type: if *consent_type {
                ConsentType::Explicit
            } else {
                ConsentType::Expressed
            },
            legal_basis: pick(
                &[
                    LegalBasis::Consent,
                    LegalBasis::OptOut,
                    LegalBasis::Contract,
                    LegalBasis::Essential,
                ],
                *legal_basis,
            ),
            jurisdiction: jurisdiction.clone(),
            notice_id: notice_id.clone(),
            notice_version: notice_version.clone(),
            collection_method: pick(&METHODS, *method),
            collected_at: collected_at.get(),
            expires_at: expires_at.as_ref().map(Time::get),
            source_ip: String::new(),
            user_agent: String::new(),
            guardian_ref: guardian.clone(),
            receipt: None,
            imported: imported_from.as_ref().map(|source| ImportOrigin {
                source: source.clone(),
                source_record_id: String::new(),
            }),
        }),
        Kind::Signal {
            kind,
            value,
            method,
        } => Change::Signal {
            subject: subject.clone(),
            kind: kind.clone(),
            value: value.clone(),
            collection_method: pick(&METHODS, *method),
        },
        Kind::Link { .. } => Change::Link {
            device: SubjectKey::Device("fuzz-device".into()),
            subject: subject.clone(),
        },
        Kind::Restrict(restricted) => Change::Restrict {
            subject: subject.clone(),
            restricted: *restricted,
        },
        Kind::Erase => Change::Erase { subject },
    };
    let device = match &w.kind {
        Kind::Link { device } => Some(device.as_str()),
        _ => None,
    };
    let at = w.at.get();
    let event = canonical_event(
        w.seq,
        at,
        &change,
        &w.subject_pseudonym,
        device,
        w.actor.clone(),
    );

    assert_eq!(
        head(&event),
        Some(EventHead {
            version: EVENT_VERSION,
            seq: w.seq,
            at: rfc3339(at),
            kind: change.kind().to_owned(),
            actor: w.actor.clone(),
        }),
        "the head of {event}"
    );
    match &change {
        Change::Consent(c) => {
            let read = consent_of(&event).unwrap_or_else(|| panic!("a consent: {event}"));
            assert_eq!(read.record_id, c.record_id, "{event}");
            assert_eq!(read.purpose, c.purpose, "{event}");
            assert_eq!(read.scope, c.scope, "{event}");
            assert_eq!(read.channel, c.channel, "{event}");
            assert_eq!(read.state, c.state.as_str(), "{event}");
            assert_eq!(read.consent_type, c.consent_type.as_str(), "{event}");
            assert_eq!(read.legal_basis, c.legal_basis.as_str(), "{event}");
            assert_eq!(read.jurisdiction, c.jurisdiction, "{event}");
            assert_eq!(read.notice_id, c.notice_id, "{event}");
            assert_eq!(read.notice_version, c.notice_version, "{event}");
            assert_eq!(
                read.collection_method,
                c.collection_method.as_str(),
                "{event}"
            );
            assert_eq!(read.collected_at, rfc3339(c.collected_at), "{event}");
            assert_eq!(read.expires_at, c.expires_at.map(rfc3339), "{event}");
        }
        _ => assert!(consent_of(&event).is_none(), "not a consent: {event}"),
    }
    readers_agree(&event);

    let mut edited = event.into_bytes();
    if edited.is_empty() {
        return;
    }
    let i = w.edit_at % edited.len();
    if w.edit_removes {
        edited.remove(i);
    } else {
        edited[i] = w.edit_to;
    }
    if let Ok(text) = String::from_utf8(edited) {
        readers_agree(&text);
    }
}
