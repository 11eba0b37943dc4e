//! What the ledger writes: the canonical, pseudonymized form of a change, the link that chains
//! it, and the checkpoint cadence. The store builds entries with this module; only the verifier
//! (`ledger::verify`) walks the store.

use crate::model::{Change, SubjectKey};
use base64::Engine as _;
use consentgate_chain::{canonical_json, link_digest};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use consentgate_chain::{GENESIS_HASH, checkpoint_message};

/// A checkpoint is signed every this many entries.
pub const CHECKPOINT_EVERY: u64 = 64;

/// The pseudonym of a subject under its per-subject key, as version-3 entries write it: the
/// full HMAC (32 bytes, so two subjects never share one) in unpadded base64url, 43 characters
/// where hex took 64.
pub fn pseudonym(subject_key: &[u8], subject: &SubjectKey) -> String {
    b64(&consentgate_chain::hmac_sha256(
        subject_key,
        subject.storage().as_bytes(),
    ))
}

/// Unpadded base64url: how version 3 writes digests.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The chain link: SHA-256(prev_hash ‖ event), the previous hash fed as its 32 raw bytes
/// ([`consentgate_chain::RawLinks`], the ledger's format since version 1).
pub fn chain_hash(prev_hash: &[u8], event: &str) -> Vec<u8> {
    link_digest(prev_hash, event).to_vec()
}

/// The version of the canonical events written today (see [`canonical_event`]).
pub const EVENT_VERSION: u8 = 3;

/// The kinds of change, by their version-3 code (the position here). The lists are part of the
/// chain format: append only, never reorder.
const KINDS: [&str; 7] = [
    "grant", "refuse", "withdraw", "signal", "link", "restrict", "erase",
];
/// Consent types by code.
const CONSENT_TYPES: [&str; 2] = ["explicit", "expressed"];
/// Legal bases by code.
const LEGAL_BASES: [&str; 4] = ["consent", "opt_out", "contract", "essential"];
/// Collection methods by code.
const METHODS: [&str; 6] = [
    "preference_center",
    "banner",
    "survey",
    "api",
    "gpc_signal",
    "import",
];

/// The code of `name` in `list`; every name the service writes has one (a unit test holds each
/// list to its enum), and one that had none would be written as the code past the list's end,
/// which reads back as no entry at all rather than as another name.
fn code(list: &[&str], name: &str) -> usize {
    list.iter().position(|n| *n == name).unwrap_or(list.len())
}

/// The name a code stands for; `None` for a code past the list (an edited entry).
fn name(list: &[&'static str], code: u8) -> Option<&'static str> {
    list.get(usize::from(code)).copied()
}

/// The canonical ledger form of a change since version 3 (issue 16, a compact store): a JSON
/// array as in version 2, with what repeats or has a shorter exact form written shorter. Times
/// are integers of nanoseconds since the Unix epoch (an RFC 3339 string, UTC, for one outside
/// what 64 bits of nanoseconds hold: before 1677 or after 2262); kinds, consent types, legal
/// bases and collection methods are codes ([`KINDS`], [`CONSENT_TYPES`], [`LEGAL_BASES`],
/// [`METHODS`]: the position in the list); pseudonyms and digests are unpadded base64url.
///
/// `[3, seq, at, kind, subject, actor, payload]`
///
/// - `at`: when the entry was written;
/// - `subject`: the subject's pseudonym ([`pseudonym`]), never the subject in clear;
/// - `actor`: who made a delegated change (`"profile-service on behalf of privacy-ops"`), `null`
///   for a direct call;
/// - `payload`, by kind: a consent event (below); a signal `[kind, value, method]` (a guardian
///   reference as its SHA-256); a link, the device's pseudonym; a restriction, `true` or `false`;
///   an erasure, `null`.
///
/// A consent event is `[record_id, purpose, scope, channel, consent_type, legal_basis,
/// jurisdiction, notice_id, notice_version, collection_method, collected_at, expires_at,
/// guardian, imported_from]`, absent values `null`; its state is the kind's (`grant` records
/// `given`, `refuse` `refused`, `withdraw` `withdrawn`).
///
/// Entries of versions 1 (objects with key names, [`EventV1`]) and 2 (the same array with
/// strings, [`HeadV2`]) keep their bytes and hashes: the chain hashes what is stored, and every
/// reader here takes all three forms.
#[derive(Serialize)]
struct EventV3<'a>(u8, u64, Time, usize, &'a str, Option<String>, Payload<'a>);

/// The last element of a version-3 event, by kind.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Consent(ConsentV3<'a>),
    Signal(&'a str, String, usize),
    Device(Option<&'a str>),
    Restricted(bool),
    Nothing,
}

/// A consent event in a version-3 entry, in the order [`EventV3`] documents.
#[derive(Serialize)]
struct ConsentV3<'a>(
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    usize,
    usize,
    &'a str,
    &'a str,
    &'a str,
    usize,
    Time,
    Option<Time>,
    Option<String>,
    Option<&'a str>,
);

/// A time in a version-3 entry: nanoseconds since the Unix epoch, or RFC 3339 text for a time
/// 64 bits of nanoseconds cannot hold.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Time {
    Nanos(i64),
    Text(String),
}

impl Time {
    fn of(t: time::OffsetDateTime) -> Time {
        i64::try_from(t.unix_timestamp_nanos())
            .map(Time::Nanos)
            .unwrap_or_else(|_| Time::Text(rfc3339(t.to_offset(time::UtcOffset::UTC))))
    }

    /// The time as RFC 3339 text, UTC, full precision: what every reader of an entry takes.
    /// `None` for nanoseconds no time has (an edited entry).
    fn text(self) -> Option<String> {
        match self {
            Time::Nanos(n) => time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(n))
                .ok()
                .map(rfc3339),
            Time::Text(t) => Some(t),
        }
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A consent event as its ledger entry holds it. A stored record keeps only what the entry
/// leaves out (see `store::record`) and reads the rest back from here instead of a copy.
#[derive(Debug, Deserialize)]
pub struct EntryConsent {
    /// The record id.
    pub record_id: String,
    /// The purpose key.
    pub purpose: String,
    /// Optional data-category scope.
    pub scope: Option<String>,
    /// Optional channel.
    pub channel: Option<String>,
    /// `given`, `refused` or `withdrawn`.
    pub state: String,
    /// `explicit` or `expressed`.
    pub consent_type: String,
    /// The legal basis when it was recorded.
    pub legal_basis: String,
    /// Jurisdiction code.
    pub jurisdiction: String,
    /// The notice the person saw.
    pub notice_id: String,
    /// Its version.
    pub notice_version: String,
    /// How it was collected.
    pub collection_method: String,
    /// When (RFC 3339, full precision).
    pub collected_at: String,
    /// When a given consent lapses (RFC 3339).
    pub expires_at: Option<String>,
}

/// What every reader of an entry needs first, in any version: its version, position, kind
/// and, for a delegated change, its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    /// 1 (an object with key names), 2 (a positional array) or 3 (a positional array with
    /// codes, [`EVENT_VERSION`]).
    pub version: u8,
    /// The entry's position in the chain, as the event names it.
    pub seq: u64,
    /// When the entry was written (RFC 3339).
    pub at: String,
    /// `grant`, `refuse`, `withdraw`, `signal`, `link`, `restrict` or `erase`.
    pub kind: String,
    /// Who made a delegated change; `None` for a direct call.
    pub actor: Option<String>,
}

/// A version-1 event as written before version 2: an object with key names. Readers take the
/// fields they need; the rest are ignored.
#[derive(Deserialize)]
struct EventV1 {
    v: u8,
    seq: u64,
    at: String,
    kind: String,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    consent: Option<EntryConsent>,
}

/// A version-2 event's head, its payload left unread: `[2, seq, at, kind, subject, actor,
/// payload]` with the time as RFC 3339 text and the kind by name.
#[derive(Deserialize)]
struct HeadV2(
    u8,
    u64,
    String,
    String,
    IgnoredAny,
    Option<String>,
    IgnoredAny,
);

/// A version-2 consent entry: the head, typed as [`HeadV2`] reads it (so an entry that reads as
/// a consent always has a head), and a [`ReadConsentV2`] payload (any other payload does not
/// read as one, which is what [`consent_of`] asks).
#[derive(Deserialize)]
#[expect(
    dead_code,
    reason = "seq, at and actor are read only to hold the head to HeadV2's types"
)]
struct ConsentEventV2(
    u8,
    u64,
    String,
    String,
    IgnoredAny,
    Option<String>,
    ReadConsentV2,
);

/// A version-2 consent payload read back, names where version 3 has codes; the guardian digest
/// and the import source are not part of a record read from its entry (the record's body holds
/// them).
#[derive(Deserialize)]
struct ReadConsentV2(
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    IgnoredAny,
    IgnoredAny,
);

/// A version-3 event's head, its payload left unread.
#[derive(Deserialize)]
struct HeadV3(u8, u64, Time, u8, IgnoredAny, Option<String>, IgnoredAny);

/// A version-3 consent entry, the head typed as [`HeadV3`] reads it.
#[derive(Deserialize)]
#[expect(
    dead_code,
    reason = "seq, at and actor are read only to hold the head to HeadV3's types"
)]
struct ConsentEventV3(u8, u64, Time, u8, IgnoredAny, Option<String>, ReadConsentV3);

/// A version-3 consent payload read back (codes where version 2 has names).
#[derive(Deserialize)]
struct ReadConsentV3(
    String,
    String,
    Option<String>,
    Option<String>,
    u8,
    u8,
    String,
    String,
    String,
    u8,
    Time,
    Option<Time>,
    IgnoredAny,
    IgnoredAny,
);

/// The head of a canonical event of any version; `None` when it is none of them (an edited
/// entry, which the chain then names anyway). The array forms are told apart by their first
/// element, as canonical JSON writes it (no space).
pub fn head(event: &str) -> Option<EventHead> {
    if event.starts_with("[3,") {
        let HeadV3(version, seq, at, kind, _, actor, _) = serde_json::from_str(event).ok()?;
        if version != 3 {
            return None;
        }
        Some(EventHead {
            version,
            seq,
            at: at.text()?,
            kind: name(&KINDS, kind)?.to_owned(),
            actor,
        })
    } else if event.starts_with('[') {
        let HeadV2(version, seq, at, kind, _, actor, _) = serde_json::from_str(event).ok()?;
        (version == 2).then_some(EventHead {
            version,
            seq,
            at,
            kind,
            actor,
        })
    } else {
        let e: EventV1 = serde_json::from_str(event).ok()?;
        (e.v == 1).then_some(EventHead {
            version: e.v,
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            actor: e.actor,
        })
    }
}

/// What the change stream says of an entry (`changes_after`): its kind, time and, for a consent
/// event, its purpose. Read from the entry itself since migration 0013, which dropped the
/// separate `changes` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryChange {
    /// `grant`, `refuse`, `withdraw`, `signal`, `link`, `restrict` or `erase`.
    pub kind: String,
    /// When the entry was written (RFC 3339): in the transaction that committed the change.
    pub at: String,
    /// The purpose of a consent event; `None` for the other kinds.
    pub purpose: Option<String>,
}

/// The change an entry of either version records; `None` when it reads as neither (an edited
/// entry). A consent event is read twice (its head, then its payload), the others once.
pub fn change_of(event: &str) -> Option<EntryChange> {
    let EventHead { kind, at, .. } = head(event)?;
    let purpose = match kind.as_str() {
        "grant" | "refuse" | "withdraw" => Some(consent_of(event)?.purpose),
        _ => None,
    };
    Some(EntryChange { kind, at, purpose })
}

/// The state a version-2 consent event of this kind records (version 2 keeps it only in the
/// kind); `None` for the kinds that are not consents.
pub fn consent_state_of(kind: &str) -> Option<&'static str> {
    match kind {
        "grant" => Some("given"),
        "refuse" => Some("refused"),
        "withdraw" => Some("withdrawn"),
        _ => None,
    }
}

/// The consent event of a canonical ledger event of any version, `None` when it holds none or
/// is not one.
pub fn consent_of(event: &str) -> Option<EntryConsent> {
    if event.starts_with("[3,") {
        let ConsentEventV3(version, _, _, kind, _, _, c) = serde_json::from_str(event).ok()?;
        let state = consent_state_of(name(&KINDS, kind)?)?;
        if version != 3 {
            return None;
        }
        return Some(EntryConsent {
            record_id: c.0,
            purpose: c.1,
            scope: c.2,
            channel: c.3,
            state: state.to_owned(),
            consent_type: name(&CONSENT_TYPES, c.4)?.to_owned(),
            legal_basis: name(&LEGAL_BASES, c.5)?.to_owned(),
            jurisdiction: c.6,
            notice_id: c.7,
            notice_version: c.8,
            collection_method: name(&METHODS, c.9)?.to_owned(),
            collected_at: c.10.text()?,
            expires_at: match c.11 {
                Some(t) => Some(t.text()?),
                None => None,
            },
        });
    }
    if !event.starts_with('[') {
        let e: EventV1 = serde_json::from_str(event).ok()?;
        return if e.v == 1 { e.consent } else { None };
    }
    let ConsentEventV2(version, _, _, kind, _, _, c) = serde_json::from_str(event).ok()?;
    let state = consent_state_of(&kind)?;
    (version == 2).then(|| EntryConsent {
        record_id: c.0,
        purpose: c.1,
        scope: c.2,
        channel: c.3,
        state: state.to_owned(),
        consent_type: c.4,
        legal_basis: c.5,
        jurisdiction: c.6,
        notice_id: c.7,
        notice_version: c.8,
        collection_method: c.9,
        collected_at: c.10,
        expires_at: c.11,
    })
}

/// Builds the canonical event ([`EventV3`]). `subject_pseudonym` (and `device_pseudonym` for
/// links) come from the per-subject keys ([`pseudonym`]); values that could identify a person
/// (guardian references) are hashed. `actor` names a delegated change's maker (see
/// [`consentgate_runtime::delegation`]).
pub fn canonical_event(
    seq: u64,
    at: time::OffsetDateTime,
    change: &Change,
    subject_pseudonym: &str,
    device_pseudonym: Option<&str>,
    actor: Option<String>,
) -> String {
    let digest = |s: &str| b64(&Sha256::digest(s.as_bytes()));
    let payload = match change {
        Change::Consent(c) => Payload::Consent(ConsentV3(
            &c.record_id,
            &c.purpose,
            c.scope.as_deref(),
            c.channel.as_deref(),
            code(&CONSENT_TYPES, c.consent_type.as_str()),
            code(&LEGAL_BASES, c.legal_basis.as_str()),
            &c.jurisdiction,
            &c.notice_id,
            &c.notice_version,
            code(&METHODS, c.collection_method.as_str()),
            Time::of(c.collected_at),
            c.expires_at.map(Time::of),
            c.guardian_ref.as_deref().map(digest),
            c.imported.as_ref().map(|i| i.source.as_str()),
        )),
        Change::Signal {
            kind,
            value,
            collection_method,
            ..
        } => Payload::Signal(
            kind,
            if kind == "guardian" {
                digest(value)
            } else {
                value.clone()
            },
            code(&METHODS, collection_method.as_str()),
        ),
        Change::Link { .. } => Payload::Device(device_pseudonym),
        Change::Restrict { restricted, .. } => Payload::Restricted(*restricted),
        Change::Erase { .. } => Payload::Nothing,
    };
    canonical_json(&EventV3(
        EVENT_VERSION,
        seq,
        Time::of(at),
        code(&KINDS, change.kind()),
        subject_pseudonym,
        actor,
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ImportOrigin, NewConsent};
    use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
    use time::macros::datetime;

    const SUBJECT: &str = "Xw_dCqSx0uP0pbbH2OnwobLD1OX2p7jJ0OHyo7TF1uc";
    const DEVICE: &str = "Dh8qO0xdbn-AkaKzxNXm9wgZKjtMXW5_gJGis8TV5vc";
    const AT: time::OffsetDateTime = datetime!(2026-12-01 10:00:00.123456789 UTC);

    fn consent(state: RecordState) -> NewConsent {
        NewConsent {
            record_id: "0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10".into(),
            subject: SubjectKey::Subject("jane".into()),
            purpose: "marketing.communications.email".into(),
            scope: Some("user.contact".into()),
            channel: None,
            state,
            consent_type: ConsentType::Explicit,
            legal_basis: LegalBasis::Consent,
            jurisdiction: "EU".into(),
            notice_id: "marketing".into(),
            notice_version: "2.0".into(),
            collection_method: CollectionMethod::PreferenceCenter,
            collected_at: datetime!(2026-11-30 09:00:00 UTC),
            expires_at: Some(datetime!(2027-11-30 09:00:00 UTC)),
            source_ip: "203.0.113.0".into(),
            user_agent: "unit".into(),
            guardian_ref: Some("parent-of-jane".into()),
            receipt: None,
            imported: Some(ImportOrigin {
                source: "onetrust".into(),
                source_record_id: "ot-1".into(),
            }),
        }
    }

    fn event(change: &Change, actor: Option<&str>) -> String {
        canonical_event(
            42,
            AT,
            change,
            SUBJECT,
            matches!(change, Change::Link { .. }).then_some(DEVICE),
            actor.map(str::to_owned),
        )
    }

    /// The exact bytes of a version-3 grant: a change to them is a change to the chain format.
    #[test]
    fn a_version_3_grant_has_these_bytes() {
        let grant = event(&Change::Consent(consent(RecordState::Given)), None);
        assert_eq!(
            grant,
            format!(
                r#"[3,42,1796119200123456789,0,"{SUBJECT}",null,["0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10","marketing.communications.email","user.contact",null,0,0,"EU","marketing","2.0",0,1796029200000000000,1827565200000000000,"{}","onetrust"]]"#,
                b64(&Sha256::digest(b"parent-of-jane"))
            )
        );
        assert!(!grant.contains("jane\""), "no subject or guardian in clear");
    }

    /// A version-2 grant, as the code before version 3 wrote it, still reads, the same as its
    /// version-3 form.
    #[test]
    fn a_version_2_entry_still_reads() {
        let v2 = format!(
            r#"[2,42,"2026-12-01T10:00:00.123456789Z","grant","{SUBJECT}",null,["0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10","marketing.communications.email","user.contact",null,"explicit","consent","EU","marketing","2.0","preference_center","2026-11-30T09:00:00Z","2027-11-30T09:00:00Z","{}","onetrust"]]"#,
            hex::encode(Sha256::digest(b"parent-of-jane"))
        );
        let v3 = event(&Change::Consent(consent(RecordState::Given)), None);
        let (h2, h3) = (head(&v2).expect("a v2 head"), head(&v3).expect("a v3 head"));
        assert_eq!((h2.version, h3.version), (2, 3));
        assert_eq!(
            (h2.seq, h2.at, h2.kind, h2.actor),
            (h3.seq, h3.at, h3.kind, h3.actor)
        );
        let (c2, c3) = (consent_of(&v2).expect("v2"), consent_of(&v3).expect("v3"));
        assert_eq!(format!("{c2:?}"), format!("{c3:?}"));
        assert_eq!(change_of(&v2), change_of(&v3));
    }

    /// Every value of the policy's enums has a version-3 code that reads back as its name (the
    /// match fails to compile when a variant is added, which must then be appended to its list).
    #[test]
    fn every_enum_value_has_a_code() {
        for t in [ConsentType::Explicit, ConsentType::Expressed] {
            match t {
                ConsentType::Explicit | ConsentType::Expressed => {}
            }
            assert_eq!(
                name(&CONSENT_TYPES, code(&CONSENT_TYPES, t.as_str()) as u8),
                Some(t.as_str())
            );
        }
        for b in [
            LegalBasis::Consent,
            LegalBasis::OptOut,
            LegalBasis::Contract,
            LegalBasis::Essential,
        ] {
            match b {
                LegalBasis::Consent
                | LegalBasis::OptOut
                | LegalBasis::Contract
                | LegalBasis::Essential => {}
            }
            assert_eq!(
                name(&LEGAL_BASES, code(&LEGAL_BASES, b.as_str()) as u8),
                Some(b.as_str())
            );
        }
        for m in [
            CollectionMethod::PreferenceCenter,
            CollectionMethod::Banner,
            CollectionMethod::Survey,
            CollectionMethod::Api,
            CollectionMethod::GpcSignal,
            CollectionMethod::Import,
        ] {
            match m {
                CollectionMethod::PreferenceCenter
                | CollectionMethod::Banner
                | CollectionMethod::Survey
                | CollectionMethod::Api
                | CollectionMethod::GpcSignal
                | CollectionMethod::Import => {}
            }
            assert_eq!(
                name(&METHODS, code(&METHODS, m.as_str()) as u8),
                Some(m.as_str())
            );
        }
        assert_eq!(name(&KINDS, 7), None, "a code past the list names nothing");
    }

    /// A time 64 bits of nanoseconds cannot hold is written as text, and reads back the same.
    #[test]
    fn a_time_past_2262_is_written_as_text() {
        let mut c = consent(RecordState::Given);
        c.expires_at = Some(datetime!(2300-01-01 00:00:00 UTC));
        let e = event(&Change::Consent(c), None);
        assert!(e.contains(r#""2300-01-01T00:00:00Z""#), "{e}");
        assert_eq!(
            consent_of(&e).expect("a consent").expires_at.as_deref(),
            Some("2300-01-01T00:00:00Z")
        );
    }

    #[test]
    fn every_kind_reads_back_its_head_and_only_consents_read_as_consents() {
        let subject = SubjectKey::Subject("jane".into());
        let changes = [
            Change::Consent(consent(RecordState::Given)),
            Change::Consent(consent(RecordState::Refused)),
            Change::Consent(consent(RecordState::Withdrawn)),
            Change::Signal {
                subject: subject.clone(),
                kind: "gpc".into(),
                value: "1".into(),
                collection_method: CollectionMethod::GpcSignal,
            },
            Change::Link {
                device: SubjectKey::Device("d-1".into()),
                subject: subject.clone(),
            },
            Change::Restrict {
                subject: subject.clone(),
                restricted: true,
            },
            Change::Erase { subject },
        ];
        for change in &changes {
            for actor in [None, Some("profile-service on behalf of privacy-ops")] {
                let e = event(change, actor);
                assert_eq!(
                    head(&e),
                    Some(EventHead {
                        version: 3,
                        seq: 42,
                        at: "2026-12-01T10:00:00.123456789Z".into(),
                        kind: change.kind().to_owned(),
                        actor: actor.map(str::to_owned),
                    }),
                    "{e}"
                );
                match change {
                    Change::Consent(c) => {
                        let read = consent_of(&e).expect("a consent event");
                        assert_eq!(read.state, c.state.as_str());
                        assert_eq!(read.record_id, c.record_id);
                        assert_eq!(read.purpose, c.purpose);
                        assert_eq!(read.scope, c.scope);
                        assert_eq!(read.channel, c.channel);
                        assert_eq!(read.consent_type, "explicit");
                        assert_eq!(read.legal_basis, "consent");
                        assert_eq!(read.jurisdiction, "EU");
                        assert_eq!(read.notice_id, "marketing");
                        assert_eq!(read.notice_version, "2.0");
                        assert_eq!(read.collection_method, "preference_center");
                        assert_eq!(read.collected_at, "2026-11-30T09:00:00Z");
                        assert_eq!(read.expires_at.as_deref(), Some("2027-11-30T09:00:00Z"));
                    }
                    _ => assert!(consent_of(&e).is_none(), "{e}"),
                }
                assert_eq!(
                    change_of(&e),
                    Some(EntryChange {
                        kind: change.kind().to_owned(),
                        at: "2026-12-01T10:00:00.123456789Z".into(),
                        purpose: change.purpose().map(str::to_owned),
                    }),
                    "the change stream's view of {e}"
                );
            }
        }
        let link = event(&changes[4], None);
        assert!(link.ends_with(&format!(r#",null,"{DEVICE}"]"#)), "{link}");
        let signal = event(&changes[3], None);
        assert!(signal.ends_with(r#",null,["gpc","1",4]]"#), "{signal}");
        assert!(event(&changes[5], None).ends_with(",null,true]"));
        assert!(event(&changes[6], None).ends_with(",null,null]"));
    }

    /// A version-1 entry, as the code before version 2 wrote it, still reads.
    #[test]
    fn a_version_1_entry_still_reads() {
        let v1 = format!(
            r#"{{"v":1,"seq":7,"at":"2026-11-01T10:00:00Z","kind":"withdraw","subject":"{SUBJECT}","consent":{{"record_id":"r-1","purpose":"analytics","scope":null,"channel":"web","state":"withdrawn","consent_type":"explicit","legal_basis":"consent","jurisdiction":"EU","notice_id":"n","notice_version":"1.0","collection_method":"banner","collected_at":"2026-11-01T10:00:00Z","expires_at":null,"guardian":null}},"actor":"a"}}"#
        );
        assert_eq!(
            head(&v1),
            Some(EventHead {
                version: 1,
                seq: 7,
                at: "2026-11-01T10:00:00Z".into(),
                kind: "withdraw".into(),
                actor: Some("a".into()),
            })
        );
        let c = consent_of(&v1).expect("a v1 consent");
        assert_eq!(
            (c.record_id.as_str(), c.state.as_str(), c.channel.as_deref()),
            ("r-1", "withdrawn", Some("web"))
        );
    }

    #[test]
    fn neither_form_and_wrong_versions_read_as_nothing() {
        for bad in [
            "",
            "[]",
            "{}",
            "[4,1,\"t\",\"erase\",\"s\",null,null]",
            "[3,1,1,7,\"s\",null,null]",
            "[3,1,\"t\",\"erase\",\"s\",null,null]",
            "{\"v\":2,\"seq\":1,\"at\":\"t\",\"kind\":\"erase\"}",
            "[2,1,\"t\",\"grant\",\"s\",null,[\"too\",\"short\"]]",
        ] {
            assert!(head(bad).is_none() || consent_of(bad).is_none(), "{bad:?}");
        }
        assert!(head("[4,1,\"t\",\"erase\",\"s\",null,null]").is_none());
        assert!(
            head("[3,1,1,7,\"s\",null,null]").is_none(),
            "a kind past the list"
        );
        assert!(
            head("[3,1,\"t\",\"erase\",\"s\",null,null]").is_none(),
            "a kind by name"
        );
        assert!(head("{\"v\":2,\"seq\":1,\"at\":\"t\",\"kind\":\"erase\"}").is_none());
        assert!(consent_of("[2,1,\"t\",\"grant\",\"s\",null,[\"too\",\"short\"]]").is_none());
    }

    /// The readers take whatever the database holds: every one-byte change (replaced by a
    /// character that matters to JSON, or deleted) of an entry of every kind reads without a
    /// panic, and whatever still reads as a consent has a head whose kind gives its state.
    #[test]
    fn every_one_byte_change_of_an_entry_reads_without_a_panic_and_stays_consistent() {
        let subject = SubjectKey::Subject("jane".into());
        let entries = [
            event(&Change::Consent(consent(RecordState::Given)), Some("a")),
            event(&Change::Consent(consent(RecordState::Withdrawn)), None),
            event(
                &Change::Signal {
                    subject: subject.clone(),
                    kind: "gpc".into(),
                    value: "1".into(),
                    collection_method: CollectionMethod::GpcSignal,
                },
                None,
            ),
            event(&Change::Erase { subject }, None),
        ];
        let mut consents = 0;
        for entry in &entries {
            for i in 0..entry.len() {
                let mut variants: Vec<Vec<u8>> = b"\"[]{},:0x\\"
                    .iter()
                    .map(|&b| {
                        let mut v = entry.as_bytes().to_vec();
                        v[i] = b;
                        v
                    })
                    .collect();
                let mut deleted = entry.as_bytes().to_vec();
                deleted.remove(i);
                variants.push(deleted);
                for v in variants {
                    let Ok(text) = String::from_utf8(v) else {
                        continue;
                    };
                    let h = head(&text);
                    if let Some(c) = consent_of(&text) {
                        consents += 1;
                        let h = h.unwrap_or_else(|| panic!("a consent without a head: {text}"));
                        let state = consent_state_of(&h.kind)
                            .unwrap_or_else(|| panic!("a consent of kind {}: {text}", h.kind));
                        assert_eq!(c.state, state, "{text}");
                    }
                }
            }
        }
        assert!(consents > 0, "some changes leave a consent readable");
    }
}
