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

/// How many columns [`COLUMNS`] names: a query's further columns start at this index.
pub(super) const COLUMN_COUNT: usize = 4;

/// The body's format version (whole records, written before, have none).
const PERSONAL: u8 = 2;

/// What a record's body holds: only what its ledger entry does not.
#[derive(Serialize, Deserialize)]
struct Personal {
    /// [`PERSONAL`]; absent from the whole records written before.
    v: u8,
    source_ip: String,
    user_agent: String,
    guardian_ref: Option<String>,
    /// The source and the source's record id of an imported record (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imported: Option<ImportOrigin>,
}

/// The body to store for `consent`.
pub(super) fn encode(consent: &NewConsent) -> Result<String, StoreError> {
    serde_json::to_string(&Personal {
        v: PERSONAL,
        source_ip: consent.source_ip.clone(),
        user_agent: consent.user_agent.clone(),
        guardian_ref: consent.guardian_ref.clone(),
        imported: consent.imported.clone(),
    })
    .map_err(|e| StoreError::corrupt(e.to_string()))
}

/// The record of a row of [`COLUMNS`].
pub(super) fn decode(row: &AnyRow) -> Result<StoredRecord, StoreError> {
    let revision = to_u64(row.get(0));
    let body: String = row.get(1);
    let consent = match serde_json::from_str::<Personal>(&body) {
        Ok(personal) if personal.v == PERSONAL => {
            let event: String = row.get(3);
            let held = entry::consent_of(&event).ok_or_else(|| {
                StoreError::corrupt(format!(
                    "consent record {revision}: its ledger entry holds no consent event"
                ))
            })?;
            joined(held, personal, &row.get::<String, _>(2))?
        }
        // A whole record, written before bodies kept only the personal parts.
        _ => serde_json::from_str(&body)
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
