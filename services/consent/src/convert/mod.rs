//! Protobuf ⇄ domain for the consent service, and request validation that names each bad field
//! (every violation of a request at once, through [`Violations`]). Validation that needs the
//! policy (unknown purposes, channels, callers) takes it as an argument; the rules that decide
//! what a valid request *means* live in [`crate::service`].
//!
//! Split like the service: [`consent`] (Grant, Refuse, Withdraw, signals, links), [`decide`]
//! (Check, BatchCheck, Explain), [`dsr`] (consents, history, receipts, restriction, erasure,
//! ledger, the change stream), [`import`] (ImportConsents); this module holds the pieces they
//! share.

mod consent;
mod decide;
mod dsr;
mod import;

pub use consent::{grant, grant_response, link, record_signal, recorded, refuse, withdraw};
pub use decide::{MAX_BATCH, batch_check, check, decision_pb, explain, explain_response};
pub use dsr::{
    MAX_ERASURE_BATCH, consents_response, erase, erase_response, find_erased, find_erased_response,
    history, history_response, list_erasures, reapply_erasures, reapply_response, receipt,
    receipt_response, restrict, signing_keys_response, verify_response, verify_start, watch,
    watch_message,
};
pub use import::{import_chunk, import_response};

use crate::model::{StoredRecord, SubjectKey};
use crate::service::Idempotency;
use consentgate_policy::{CollectionMethod, ConsentType, RecordState};
use consentgate_proto::common::v1 as common;
use consentgate_proto::consent::v1 as pb;
use consentgate_runtime::errors::Violations;
use prost::Message;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::Status;

use consentgate_proto::limits::{MAX_ID_BYTES as MAX_ID_LEN, MAX_IDEMPOTENCY_KEY_BYTES};

/// Fails with every violation recorded; otherwise the value validation produced.
fn finish<T>(v: Violations, value: Option<T>) -> Result<T, Status> {
    v.finish_with(value)
}

fn valid_id(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Some("must be at most 256 bytes")
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

fn subject(
    v: &mut Violations,
    field: &str,
    subject: Option<&common::SubjectRef>,
) -> Option<SubjectKey> {
    use common::subject_ref::Id;
    match subject.and_then(|s| s.id.as_ref()) {
        None => {
            v.add(field, "required: set subject_id or device_id");
            None
        }
        Some(Id::SubjectId(id)) => match valid_id(id) {
            Some(why) => {
                v.add(format!("{field}.subject_id"), why);
                None
            }
            None => Some(SubjectKey::Subject(id.clone())),
        },
        Some(Id::DeviceId(id)) => match valid_id(id) {
            Some(why) => {
                v.add(format!("{field}.device_id"), why);
                None
            }
            None => Some(SubjectKey::Device(id.clone())),
        },
    }
}

/// The subject a request names in its `subject` field.
pub fn subject_of(subject_ref: Option<&common::SubjectRef>) -> Result<SubjectKey, Status> {
    let mut v = Violations::default();
    let key = subject(&mut v, "subject", subject_ref);
    finish(v, key)
}

fn idempotency_key(v: &mut Violations, key: &str) {
    if key.is_empty() {
        v.add(
            "idempotency_key",
            "required: retries with the same key are answered once",
        );
    } else if key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control) {
        v.add("idempotency_key", "must be at most 128 printable bytes");
    }
}

/// The key and a SHA-256 of the request with its key cleared: a reused key must carry the same
/// request.
fn idempotency<M: Message + Clone>(
    message: &M,
    key: &str,
    clear_key: impl FnOnce(&mut M),
) -> Idempotency {
    let mut m = message.clone();
    clear_key(&mut m);
    Idempotency {
        key: key.to_owned(),
        fingerprint: Sha256::digest(m.encode_to_vec()).into(),
    }
}

fn subject_ref(key: &SubjectKey) -> common::SubjectRef {
    use common::subject_ref::Id;
    common::SubjectRef {
        id: Some(match key {
            SubjectKey::Subject(s) => Id::SubjectId(s.clone()),
            SubjectKey::Device(d) => Id::DeviceId(d.clone()),
        }),
    }
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

fn from_timestamp(t: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()?
        .replace_nanosecond(u32::try_from(t.nanos).ok()?)
        .ok()
}

/// The collection method a request names; unspecified means another system over the API. A
/// value this version does not know (a newer client's, or garbage) is a violation of
/// `collection_method`, never recorded as something else.
fn collection_method(v: &mut Violations, m: i32) -> CollectionMethod {
    match pb::CollectionMethod::try_from(m) {
        Ok(pb::CollectionMethod::PreferenceCenter) => CollectionMethod::PreferenceCenter,
        Ok(pb::CollectionMethod::Banner) => CollectionMethod::Banner,
        Ok(pb::CollectionMethod::Survey) => CollectionMethod::Survey,
        Ok(pb::CollectionMethod::GpcSignal) => CollectionMethod::GpcSignal,
        Ok(pb::CollectionMethod::Import) => CollectionMethod::Import,
        Ok(pb::CollectionMethod::Api | pb::CollectionMethod::Unspecified) => CollectionMethod::Api,
        Err(_) => {
            v.add("collection_method", unknown_enum(m));
            CollectionMethod::Api
        }
    }
}

/// What an unknown enum value is told: the number, and that this version does not know it.
fn unknown_enum(value: i32) -> String {
    format!("unknown value {value}: not one this API version defines")
}

fn collection_method_pb(m: CollectionMethod) -> i32 {
    (match m {
        CollectionMethod::PreferenceCenter => pb::CollectionMethod::PreferenceCenter,
        CollectionMethod::Banner => pb::CollectionMethod::Banner,
        CollectionMethod::Survey => pb::CollectionMethod::Survey,
        CollectionMethod::GpcSignal => pb::CollectionMethod::GpcSignal,
        CollectionMethod::Import => pb::CollectionMethod::Import,
        CollectionMethod::Api => pb::CollectionMethod::Api,
    }) as i32
}

/// A stored record in its wire form; a grant past its expiry at `now` shows as expired.
fn record_pb(r: &StoredRecord, now: OffsetDateTime) -> pb::ConsentRecord {
    let c = &r.consent;
    let state = match c.state {
        RecordState::Given if c.expires_at.is_some_and(|e| e <= now) => pb::ConsentState::Expired,
        RecordState::Given => pb::ConsentState::Given,
        RecordState::Refused => pb::ConsentState::Refused,
        RecordState::Withdrawn => pb::ConsentState::Withdrawn,
    };
    pb::ConsentRecord {
        record_id: c.record_id.clone(),
        subject: Some(subject_ref(&c.subject)),
        purpose: c.purpose.clone(),
        data_category: c.scope.clone().unwrap_or_default(),
        channel: c.channel.clone().unwrap_or_default(),
        state: state as i32,
        consent_type: (match c.consent_type {
            ConsentType::Explicit => pb::ConsentType::Explicit,
            ConsentType::Expressed => pb::ConsentType::Expressed,
        }) as i32,
        legal_basis: c.legal_basis.as_str().to_owned(),
        jurisdiction: c.jurisdiction.clone(),
        notice_id: c.notice_id.clone(),
        notice_version: c.notice_version.clone(),
        collection_method: collection_method_pb(c.collection_method),
        collected_at: Some(timestamp(c.collected_at)),
        expires_at: c.expires_at.map(timestamp),
        source: Some(pb::ConsentSource {
            ip_address: c.source_ip.clone(),
            user_agent: c.user_agent.clone(),
        }),
        guardian_ref: c.guardian_ref.clone().unwrap_or_default(),
        revision: r.revision,
        overridden_by_record_id: String::new(),
        imported: c.imported.as_ref().map(|i| pb::ImportOrigin {
            source: i.source.clone(),
            source_record_id: i.source_record_id.clone(),
        }),
    }
}
