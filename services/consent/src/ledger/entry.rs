//! What the ledger writes: the canonical, pseudonymized form of a change, the link that chains
//! it, and the checkpoint cadence. The store builds entries with this module; only the verifier
//! (`ledger::verify`) walks the store.

use crate::model::{Change, SubjectKey};
use consentgate_chain::{canonical_json, link_digest};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use consentgate_chain::{GENESIS_HASH, checkpoint_message};

/// A checkpoint is signed every this many entries.
pub const CHECKPOINT_EVERY: u64 = 64;

/// The pseudonym of a subject under its per-subject key (the full HMAC of its storage form).
pub fn pseudonym(subject_key: &[u8], subject: &SubjectKey) -> String {
    consentgate_chain::pseudonym(subject_key, &subject.storage())
}

/// The chain link: SHA-256(prev_hash ‖ event), the previous hash fed as its 32 raw bytes
/// ([`consentgate_chain::RawLinks`], the ledger's format since version 1).
pub fn chain_hash(prev_hash: &[u8], event: &str) -> Vec<u8> {
    link_digest(prev_hash, event).to_vec()
}

/// The version of the canonical events written today (see [`canonical_event`]).
pub const EVENT_VERSION: u8 = 2;

/// The canonical ledger form of a change since version 2: a JSON array, positions instead of key
/// names (issue 16, a compact store: the names were ~40% of an entry's bytes):
///
/// `[2, seq, at, kind, subject, actor, payload]`
///
/// - `at`: when the entry was written, RFC 3339 (UTC, full precision);
/// - `kind`: `grant`, `refuse`, `withdraw`, `signal`, `link`, `restrict` or `erase`;
/// - `subject`: the subject's pseudonym (64 hex digits), never the subject in clear;
/// - `actor`: who made a delegated change (`"profile-service on behalf of privacy-ops"`), `null`
///   for a direct call;
/// - `payload`, by kind: a consent event (below); a signal `[kind, value, method]` (a guardian
///   reference as its SHA-256); a link, the device's pseudonym; a restriction, `true` or `false`;
///   an erasure, `null`.
///
/// A consent event is `[record_id, purpose, scope, channel, consent_type, legal_basis,
/// jurisdiction, notice_id, notice_version, collection_method, collected_at, expires_at,
/// guardian, imported_from]`, absent values `null`; its state is the kind's (`grant` records
/// `given`, `refuse` `refused`, `withdraw` `withdrawn`). Version-1 entries (objects with key
/// names, see [`EventV1`]) keep their bytes and hashes: the chain hashes what is stored, and
/// every reader here takes both forms.
#[derive(Serialize)]
struct EventV2<'a>(
    u8,
    u64,
    String,
    &'a str,
    &'a str,
    Option<String>,
    Payload<'a>,
);

/// The last element of a version-2 event, by kind.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Consent(ConsentV2<'a>),
    Signal(&'a str, String, &'a str),
    Device(Option<&'a str>),
    Restricted(bool),
    Nothing,
}

/// A consent event in a version-2 entry, in the order [`EventV2`] documents.
#[derive(Serialize)]
struct ConsentV2<'a>(
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    String,
    Option<String>,
    Option<String>,
    Option<&'a str>,
);

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

/// What every reader of an entry needs first, in either version: its version, position, kind
/// and, for a delegated change, its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    /// 1 (an object with key names) or 2 (a positional array, [`EVENT_VERSION`]).
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

/// A version-2 event's head, its payload left unread.
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
/// a consent always has a head), and a [`ConsentV2`] payload (any other payload does not read as
/// one, which is what [`consent_of`] asks).
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

/// [`ConsentV2`] read back; the guardian digest and the import source are not part of a record
/// read from its entry (the record's body holds them).
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

/// The head of a canonical event of either version; `None` when it is neither (an edited
/// entry, which the chain then names anyway).
pub fn head(event: &str) -> Option<EventHead> {
    if event.starts_with('[') {
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

/// The consent event of a canonical ledger event of either version, `None` when it holds none
/// or is not one.
pub fn consent_of(event: &str) -> Option<EntryConsent> {
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

/// Builds the canonical event ([`EventV2`]). `subject_pseudonym` (and `device_pseudonym` for
/// links) come from the per-subject keys; values that could identify a person (guardian
/// references) are hashed. `actor` names a delegated change's maker (see
/// [`consentgate_runtime::delegation`]).
pub fn canonical_event(
    seq: u64,
    at: time::OffsetDateTime,
    change: &Change,
    subject_pseudonym: &str,
    device_pseudonym: Option<&str>,
    actor: Option<String>,
) -> String {
    let digest = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let payload = match change {
        Change::Consent(c) => Payload::Consent(ConsentV2(
            &c.record_id,
            &c.purpose,
            c.scope.as_deref(),
            c.channel.as_deref(),
            c.consent_type.as_str(),
            c.legal_basis.as_str(),
            &c.jurisdiction,
            &c.notice_id,
            &c.notice_version,
            c.collection_method.as_str(),
            rfc3339(c.collected_at),
            c.expires_at.map(rfc3339),
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
            collection_method.as_str(),
        ),
        Change::Link { .. } => Payload::Device(device_pseudonym),
        Change::Restrict { restricted, .. } => Payload::Restricted(*restricted),
        Change::Erase { .. } => Payload::Nothing,
    };
    canonical_json(&EventV2(
        EVENT_VERSION,
        seq,
        rfc3339(at),
        change.kind(),
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

    const SUBJECT: &str = "5f0c5d0aa4b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7";
    const DEVICE: &str = "0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
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

    /// The exact bytes of a version-2 grant: a change to them is a change to the chain format.
    #[test]
    fn a_version_2_grant_has_these_bytes() {
        let grant = event(&Change::Consent(consent(RecordState::Given)), None);
        assert_eq!(
            grant,
            format!(
                r#"[2,42,"2026-12-01T10:00:00.123456789Z","grant","{SUBJECT}",null,["0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10","marketing.communications.email","user.contact",null,"explicit","consent","EU","marketing","2.0","preference_center","2026-11-30T09:00:00Z","2027-11-30T09:00:00Z","{}","onetrust"]]"#,
                hex::encode(Sha256::digest(b"parent-of-jane"))
            )
        );
        assert!(!grant.contains("jane\""), "no subject or guardian in clear");
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
                        version: 2,
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
        assert!(
            signal.ends_with(r#",null,["gpc","1","gpc_signal"]]"#),
            "{signal}"
        );
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
            "[3,1,\"t\",\"erase\",\"s\",null,null]",
            "{\"v\":2,\"seq\":1,\"at\":\"t\",\"kind\":\"erase\"}",
            "[2,1,\"t\",\"grant\",\"s\",null,[\"too\",\"short\"]]",
        ] {
            assert!(head(bad).is_none() || consent_of(bad).is_none(), "{bad:?}");
        }
        assert!(head("[3,1,\"t\",\"erase\",\"s\",null,null]").is_none());
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
