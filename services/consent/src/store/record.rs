//! How a consent record is stored: the personal parts its ledger entry leaves out (the source
//! address, the user agent, the guardian reference in clear) in the record's body, the rest read
//! back from the entry, which holds them anyway (issue 16, a compact store: the body used to be
//! a second copy of the entry). Bodies written before hold the whole record and are read as they
//! are.

use super::StoreError;
use super::sql::{collection_method, parse_time, subject_of};
use crate::ledger::entry;
use crate::model::{ImportOrigin, NewConsent, StoredRecord};
use consentgate_policy::{ConsentType, LegalBasis, RecordState};
use consentgate_store::to_u64;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

/// The columns [`decode`] reads, in its order, from `consent_records r` joined with
/// `ledger l ON l.seq = r.revision` (a record's revision is its ledger entry's sequence).
pub(super) const COLUMNS: &str = "r.revision, r.body, r.subject, l.event";

/// The body's format version written today (whole records, written first, have none; version 2
/// bodies are objects with key names).
const PERSONAL: u8 = 3;

/// What a record's body holds: only what its ledger entry does not. Read from either form
/// ([`BodyV3`], [`BodyV2`]).
struct Personal {
    source_ip: String,
    user_agent: String,
    guardian_ref: Option<String>,
    /// The source and the source's record id of an imported record (absent otherwise).
    imported: Option<ImportOrigin>,
}

/// A version-3 body: `[3, source_ip, user_agent, guardian_ref, [source, source_record_id]]`,
/// positions instead of the version-2 key names (issue 16, a compact store: the names were
/// about 45 bytes of every record), absent values `null`.
#[derive(Serialize, Deserialize)]
struct BodyV3(u8, String, String, Option<String>, Option<(String, String)>);

/// A version-2 body, an object with key names, as written before version 3.
#[derive(Deserialize)]
struct BodyV2 {
    v: u8,
    source_ip: String,
    user_agent: String,
    guardian_ref: Option<String>,
    #[serde(default)]
    imported: Option<ImportOrigin>,
}

impl Personal {
    /// The personal parts of a body of version 3 or 2; `None` for a whole record (written
    /// before bodies kept only these) or a body that reads as neither.
    fn read(body: &str) -> Option<Personal> {
        if body.starts_with('[') {
            let BodyV3(v, source_ip, user_agent, guardian_ref, imported) =
                serde_json::from_str(body).ok()?;
            (v == PERSONAL).then(|| Personal {
                source_ip,
                user_agent,
                guardian_ref,
                imported: imported.map(|(source, source_record_id)| ImportOrigin {
                    source,
                    source_record_id,
                }),
            })
        } else {
            let b: BodyV2 = serde_json::from_str(body).ok()?;
            (b.v == 2).then_some(Personal {
                source_ip: b.source_ip,
                user_agent: b.user_agent,
                guardian_ref: b.guardian_ref,
                imported: b.imported,
            })
        }
    }
}

/// The body to store for `consent`.
pub(super) fn encode(consent: &NewConsent) -> Result<String, StoreError> {
    serde_json::to_string(&BodyV3(
        PERSONAL,
        consent.source_ip.clone(),
        consent.user_agent.clone(),
        consent.guardian_ref.clone(),
        consent
            .imported
            .as_ref()
            .map(|i| (i.source.clone(), i.source_record_id.clone())),
    ))
    .map_err(|e| StoreError::corrupt(e.to_string()))
}

/// The record of a row of [`COLUMNS`].
pub(super) fn decode(row: &AnyRow) -> Result<StoredRecord, StoreError> {
    decode_parts(
        row.get(0),
        &row.get::<String, _>(1),
        &row.get::<String, _>(2),
        &row.get::<String, _>(3),
    )
}

/// The source and source record id a record's body keeps, for an imported record (`None` for
/// one recorded live, or a body from before bodies kept only the personal parts).
pub(super) fn origin_of(body: &str) -> Option<ImportOrigin> {
    Personal::read(body)?.imported
}

/// A record from its parts as [`COLUMNS`] names them (revision, body, subject, ledger event),
/// for a query that reads them under other names (the subject's snapshot, `sql::load_subject`).
pub(super) fn decode_parts(
    revision: i64,
    body: &str,
    subject: &str,
    event: &str,
) -> Result<StoredRecord, StoreError> {
    let revision = to_u64(revision);
    let consent = match Personal::read(body) {
        Some(personal) => {
            let held = entry::consent_of(event).ok_or_else(|| {
                StoreError::corrupt(format!(
                    "consent record {revision}: its ledger entry holds no consent event"
                ))
            })?;
            joined(held, personal, subject)?
        }
        // A whole record, written before bodies kept only the personal parts.
        _ => serde_json::from_str(body)
            .map_err(|e| StoreError::corrupt(format!("consent record {revision}: {e}")))?,
    };
    Ok(StoredRecord {
        consent,
        revision,
        ordered_at: None,
    })
}

/// The record from its ledger entry's consent event, its personal parts and its subject.
fn joined(
    held: entry::EntryConsent,
    personal: Personal,
    subject: &str,
) -> Result<NewConsent, StoreError> {
    let bad = |field: &str, value: &str| {
        StoreError::corrupt(format!(
            "a ledger entry's {field} {:?} is not known",
            value.chars().take(32).collect::<String>()
        ))
    };
    Ok(NewConsent {
        subject: subject_of(subject)?,
        state: RecordState::parse(&held.state).ok_or_else(|| bad("state", &held.state))?,
        consent_type: ConsentType::parse(&held.consent_type)
            .ok_or_else(|| bad("consent type", &held.consent_type))?,
        legal_basis: LegalBasis::parse(&held.legal_basis)
            .ok_or_else(|| bad("legal basis", &held.legal_basis))?,
        collection_method: collection_method(&held.collection_method)?,
        collected_at: parse_time(&held.collected_at)?,
        expires_at: held.expires_at.as_deref().map(parse_time).transpose()?,
        record_id: held.record_id,
        purpose: held.purpose,
        scope: held.scope,
        channel: held.channel,
        jurisdiction: held.jurisdiction,
        notice_id: held.notice_id,
        notice_version: held.notice_version,
        source_ip: personal.source_ip,
        user_agent: personal.user_agent,
        guardian_ref: personal.guardian_ref,
        receipt: None,
        imported: personal.imported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_3_body_has_these_bytes_and_both_versions_read() {
        let v3 = serde_json::to_string(&BodyV3(
            PERSONAL,
            "203.0.113.0".into(),
            "unit".into(),
            None,
            Some(("onetrust".into(), "ot-1".into())),
        ))
        .expect("JSON");
        assert_eq!(v3, r#"[3,"203.0.113.0","unit",null,["onetrust","ot-1"]]"#);
        let v2 = r#"{"v":2,"source_ip":"203.0.113.0","user_agent":"unit","guardian_ref":null,"imported":{"source":"onetrust","source_record_id":"ot-1"}}"#;
        for body in [v3.as_str(), v2] {
            let p = Personal::read(body).expect("a body");
            assert_eq!(
                (p.source_ip.as_str(), p.user_agent.as_str(), p.guardian_ref),
                ("203.0.113.0", "unit", None)
            );
            assert_eq!(
                p.imported,
                Some(ImportOrigin {
                    source: "onetrust".into(),
                    source_record_id: "ot-1".into()
                })
            );
        }
        for not_a_body in [
            r#"[4,"a","b",null,null]"#,
            r#"{"v":3,"source_ip":"a","user_agent":"b","guardian_ref":null}"#,
            r#"{"record_id":"r-1"}"#,
            "",
        ] {
            assert!(Personal::read(not_a_body).is_none(), "{not_a_body}");
        }
    }
}
