//! What the ledger writes: the canonical, pseudonymized form of a change, the link that chains
//! it, and the checkpoint cadence. The store builds entries with this module; only the verifier
//! (`ledger::verify`) walks the store.

use crate::model::{Change, SubjectKey};
use consentgate_chain::{canonical_json, link_digest};
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

/// The canonical ledger form of a change: fixed field order, no subject id in clear.
#[derive(Serialize)]
struct CanonicalEvent<'a> {
    v: u8,
    seq: u64,
    at: String,
    kind: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<CanonicalConsent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<(&'a str, String)>,
    /// How a signal was collected (absent from entries written before it was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restricted: Option<bool>,
    /// Who made a delegated change: `"profile-service on behalf of privacy-ops"`. Present only
    /// on changes a service made for another caller (absent from every entry written before
    /// delegation was recorded, and from direct calls), so earlier entries keep their hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
}

#[derive(Serialize)]
struct CanonicalConsent<'a> {
    record_id: &'a str,
    purpose: &'a str,
    scope: Option<&'a str>,
    channel: Option<&'a str>,
    state: &'a str,
    consent_type: &'a str,
    legal_basis: &'a str,
    jurisdiction: &'a str,
    notice_id: &'a str,
    notice_version: &'a str,
    collection_method: &'a str,
    collected_at: String,
    expires_at: Option<String>,
    guardian: Option<String>,
    /// The platform an imported record came from (absent from records recorded here, and from
    /// every entry written before imports): the chain itself says which records keep their own
    /// time in the subject's order, so an auditor can recompute the order from the chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    imported_from: Option<&'a str>,
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

/// The consent event of a canonical ledger event, `None` when it holds none or is not one.
pub fn consent_of(event: &str) -> Option<EntryConsent> {
    #[derive(Deserialize)]
    struct Event {
        consent: Option<EntryConsent>,
    }
    serde_json::from_str::<Event>(event).ok()?.consent
}

/// Builds the canonical event. `subject_pseudonym` (and `device_pseudonym` for links) come from
/// the per-subject keys; values that could identify a person (guardian references) are hashed.
/// `actor` names a delegated change's maker (see [`consentgate_runtime::delegation`]).
pub fn canonical_event(
    seq: u64,
    at: time::OffsetDateTime,
    change: &Change,
    subject_pseudonym: &str,
    device_pseudonym: Option<&str>,
    actor: Option<String>,
) -> String {
    let digest = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let event = CanonicalEvent {
        v: 1,
        seq,
        at: rfc3339(at),
        kind: change.kind(),
        subject: subject_pseudonym,
        device: device_pseudonym,
        consent: match change {
            Change::Consent(c) => Some(CanonicalConsent {
                record_id: &c.record_id,
                purpose: &c.purpose,
                scope: c.scope.as_deref(),
                channel: c.channel.as_deref(),
                state: c.state.as_str(),
                consent_type: c.consent_type.as_str(),
                legal_basis: c.legal_basis.as_str(),
                jurisdiction: &c.jurisdiction,
                notice_id: &c.notice_id,
                notice_version: &c.notice_version,
                collection_method: c.collection_method.as_str(),
                collected_at: rfc3339(c.collected_at),
                expires_at: c.expires_at.map(rfc3339),
                guardian: c.guardian_ref.as_deref().map(digest),
                imported_from: c.imported.as_ref().map(|i| i.source.as_str()),
            }),
            _ => None,
        },
        signal: match change {
            Change::Signal { kind, value, .. } if kind == "guardian" => {
                Some((kind.as_str(), digest(value)))
            }
            Change::Signal { kind, value, .. } => Some((kind.as_str(), value.clone())),
            _ => None,
        },
        signal_method: match change {
            Change::Signal {
                collection_method, ..
            } => Some(collection_method.as_str()),
            _ => None,
        },
        restricted: match change {
            Change::Restrict { restricted, .. } => Some(*restricted),
            _ => None,
        },
        actor,
    };
    canonical_json(&event)
}
