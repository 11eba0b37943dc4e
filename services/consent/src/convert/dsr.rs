//! GetConsents, ListConsentHistory, GetReceipt, ListSigningKeys, VerifyLedger, EraseSubject,
//! RestrictProcessing, FindErased, ReapplyErasures, ListErasures and WatchChanges: their validation
//! and their answers, page tokens included.

use super::{
    collection_method_pb, common, finish, idempotency, idempotency_key, record_pb, subject,
    subject_ref, timestamp, valid_id,
};
use crate::ledger::{KeyStatus, Start, VerifyReport, VerifyingKeys};
use crate::model::{Checkpoint, HeldTombstone, SubjectKey, WriteOutcome};
use crate::service::{
    ConsentsView, HistoryPage, Idempotency, Reapplied, Receipt, ServiceError, WatchEvent,
};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::limits;
use consentgate_runtime::errors::{Violations, invalid_argument};
use sha2::{Digest, Sha256};
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Status;

/// GetConsents' answer: each current record marked with what overrides it, signals in force.
pub fn consents_response(view: ConsentsView) -> pb::GetConsentsResponse {
    let consents = view
        .records
        .iter()
        .map(|current| pb::ConsentRecord {
            overridden_by_record_id: current.overridden_by.clone().unwrap_or_default(),
            ..record_pb(&current.record, view.as_of)
        })
        .collect();
    let signals = view
        .signals
        .into_iter()
        .map(|s| pb::Signal {
            kind: match s.kind.as_str() {
                "gpc" => pb::SignalKind::Gpc,
                "age_band" => pb::SignalKind::AgeBand,
                _ => pb::SignalKind::Guardian,
            } as i32,
            recorded_at: Some(timestamp(s.recorded_at)),
            revision: s.revision,
            collection_method: collection_method_pb(s.collection_method),
            value: s.value,
        })
        .collect();
    pb::GetConsentsResponse {
        consents,
        signals,
        linked_device_ids: view.linked_device_ids,
        processing_restricted: view.restricted,
        revision: view.revision,
        conflicts: view.conflicts,
    }
}

/// Validates a ListConsentHistory: the subject, where to continue, and the page size (100 when
/// unset, at most 500).
pub fn history(r: &pb::ListConsentHistoryRequest) -> Result<(SubjectKey, u64, u32), Status> {
    let mut v = Violations::default();
    let subject = subject(&mut v, "subject", r.subject.as_ref());
    v.check(
        r.page_size > limits::MAX_HISTORY_PAGE,
        "page_size",
        "must be at most 500",
    );
    let after = match (&subject, r.page_token.is_empty()) {
        (_, true) => 0,
        (_, false) if !v.check_len("page_token", &r.page_token, limits::MAX_TOKEN_BYTES) => 0,
        (Some(s), false) => parse_page_token(s, &r.page_token).unwrap_or_else(|| {
            v.add("page_token", "malformed, or issued for another subject");
            0
        }),
        (None, false) => 0,
    };
    let subject = finish(v, subject)?;
    let size = if r.page_size == 0 { 100 } else { r.page_size };
    Ok((subject, after, size))
}

/// ListConsentHistory's answer, with a token for the next page when there is one.
pub fn history_response(
    subject: &SubjectKey,
    page: &HistoryPage,
) -> pb::ListConsentHistoryResponse {
    let now = OffsetDateTime::now_utc();
    pb::ListConsentHistoryResponse {
        records: page.records.iter().map(|r| record_pb(r, now)).collect(),
        next_page_token: page
            .next_after
            .map(|after| page_token(subject, after))
            .unwrap_or_default(),
    }
}

/// Page tokens: the last revision returned, bound to the subject so a token cannot be replayed
/// against another subject.
fn page_token(subject: &SubjectKey, after: u64) -> String {
    use base64::Engine;
    let tag = &hex::encode(Sha256::digest(subject.storage().as_bytes()))[..16];
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{after}:{tag}"))
}

fn parse_page_token(subject: &SubjectKey, token: &str) -> Option<u64> {
    use base64::Engine;
    let text = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?,
    )
    .ok()?;
    let mut parts = text.split(':');
    let (Some("v1"), Some(after), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let after: u64 = after.parse().ok()?;
    (page_token(subject, after) == token).then_some(after)
}

/// Validates a GetReceipt: the record id.
pub fn receipt(r: &pb::GetReceiptRequest) -> Result<&str, Status> {
    match valid_id(&r.record_id) {
        Some(why) => Err(invalid_argument("record_id", why)),
        None => Ok(&r.record_id),
    }
}

/// GetReceipt's answer.
pub fn receipt_response(receipt: Receipt) -> pb::GetReceiptResponse {
    pb::GetReceiptResponse {
        receipt_json: receipt.json,
        receipt_jws: receipt.jws,
        public_key: receipt.public_key,
        kid: receipt.kid,
    }
}

/// ListSigningKeys' answer.
pub fn signing_keys_response(keys: &VerifyingKeys) -> pb::ListSigningKeysResponse {
    pb::ListSigningKeysResponse {
        keys: keys
            .keys()
            .iter()
            .map(|k| pb::SigningKey {
                kid: k.kid.clone(),
                public_key: k.public_key_b64(),
                algorithm: "EdDSA".to_owned(),
                status: match k.status {
                    KeyStatus::Current => pb::SigningKeyStatus::Current,
                    KeyStatus::Next => pb::SigningKeyStatus::Next,
                    KeyStatus::Retired => pb::SigningKeyStatus::Retired,
                    KeyStatus::Published => pb::SigningKeyStatus::Unspecified,
                } as i32,
                since: k.since.map(timestamp),
            })
            .collect(),
        jwks: keys.jwks(),
        unlabelled_kid: keys.unlabelled_kid().unwrap_or_default().to_owned(),
    }
}

/// Validates a VerifyLedger: where the walk starts (the genesis when `from` is unset).
pub fn verify_start(r: &pb::VerifyLedgerRequest) -> Result<Start, Status> {
    let Some(from) = &r.from else {
        return Ok(Start::Genesis);
    };
    if from.seq == 0 {
        return Err(invalid_argument(
            "from.seq",
            "must be at least 1 (leave `from` unset to verify from the genesis)",
        ));
    }
    let hash = match hex::decode(&from.hash) {
        Ok(bytes) if bytes.len() == 32 && from.hash.bytes().all(|b| !b.is_ascii_uppercase()) => {
            bytes
        }
        _ => {
            return Err(invalid_argument(
                "from.hash",
                "must be 64 lowercase hex digits (a SHA-256, as head_hash gives it)",
            ));
        }
    };
    if from.signature.is_empty() {
        return Ok(Start::Verified {
            seq: from.seq,
            hash,
        });
    }
    if from.signature.len() != 64 {
        return Err(invalid_argument(
            "from.signature",
            "must be empty or 64 bytes (an Ed25519 signature)",
        ));
    }
    if from.kid.len() > limits::MAX_ID_BYTES || !from.kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_argument(
            "from.kid",
            format!(
                "must be at most {} printable ASCII bytes (a key id from ListSigningKeys)",
                limits::MAX_ID_BYTES
            ),
        ));
    }
    Ok(Start::Checkpoint(Checkpoint {
        seq: from.seq,
        hash,
        signature: from.signature.clone(),
        kid: (!from.kid.is_empty()).then(|| from.kid.clone()),
    }))
}

/// VerifyLedger's answer.
pub fn verify_response(report: VerifyReport) -> pb::VerifyLedgerResponse {
    let ok = report.broken.is_none();
    let entries_per_second = report.entries_per_second();
    let (first_broken_seq, problem) = report.broken.unwrap_or_default();
    pb::VerifyLedgerResponse {
        ok,
        from_seq: report.from_seq,
        head_seq: report.head_seq,
        last_checkpoint: report.last_checkpoint.map(|cp| pb::LedgerPoint {
            seq: cp.seq,
            hash: hex::encode(&cp.hash),
            signature: cp.signature,
            kid: cp.kid.unwrap_or_default(),
        }),
        seconds: report.took.as_secs_f64(),
        entries_per_second,
        entries_checked: report.entries_checked,
        checkpoints_checked: report.checkpoints_checked,
        first_broken_seq,
        problem,
        head_hash: hex::encode(&report.head_hash),
        checkpoint_kids: report
            .signers
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect(),
    }
}

/// Validates an EraseSubject: the key and the subject.
pub fn erase(r: &pb::EraseSubjectRequest) -> Result<(Idempotency, SubjectKey), Status> {
    let subject = keyed_subject(&r.idempotency_key, r.subject.as_ref())?;
    let idempotency = idempotency(r, &r.idempotency_key, |m| m.idempotency_key.clear());
    Ok((idempotency, subject))
}

/// EraseSubject's answer, with the subject's tombstone.
pub fn erase_response(outcome: &WriteOutcome, tombstone: Vec<u8>) -> pb::EraseSubjectResponse {
    pb::EraseSubjectResponse {
        tombstone,
        revision: outcome.revision,
        records_deleted: outcome.records_deleted,
        erased_at: Some(timestamp(outcome.committed_at)),
    }
}

/// The most subjects or tombstones in one FindErased or ReapplyErasures.
pub const MAX_ERASURE_BATCH: usize = limits::MAX_ERASURE_BATCH;

/// Validates a FindErased: 1 to 1,000 subjects, each named by its index when wrong.
pub fn find_erased(r: &pb::FindErasedRequest) -> Result<Vec<SubjectKey>, Status> {
    let mut v = Violations::default();
    if r.subjects.is_empty() {
        v.add("subjects", "required: at least one subject");
    } else if r.subjects.len() > MAX_ERASURE_BATCH {
        v.add(
            "subjects",
            format!(
                "at most {MAX_ERASURE_BATCH} per call (got {})",
                r.subjects.len()
            ),
        );
        return finish(v, None);
    }
    let subjects: Vec<Option<SubjectKey>> = r
        .subjects
        .iter()
        .enumerate()
        .map(|(i, s)| subject(&mut v, &format!("subjects[{i}]"), Some(s)))
        .collect();
    finish(v, subjects.into_iter().collect())
}

/// FindErased's answer: each erased subject as asked, with its tombstone.
pub fn find_erased_response(found: Vec<(SubjectKey, HeldTombstone)>) -> pb::FindErasedResponse {
    pb::FindErasedResponse {
        erased: found
            .into_iter()
            .map(|(s, t)| pb::ErasedSubject {
                subject: Some(subject_ref(&s)),
                tombstone: t.tombstone,
                revision: t.revision,
                erased_at: Some(timestamp(t.erased_at)),
            })
            .collect(),
    }
}

/// Validates a ReapplyErasures: up to 1,000 tombstones of 32 bytes; the tombstones and whether
/// to sweep.
pub fn reapply_erasures(r: &pb::ReapplyErasuresRequest) -> Result<(Vec<Vec<u8>>, bool), Status> {
    let mut v = Violations::default();
    if r.tombstones.len() > MAX_ERASURE_BATCH {
        v.add(
            "tombstones",
            format!(
                "at most {MAX_ERASURE_BATCH} per call (got {})",
                r.tombstones.len()
            ),
        );
    } else if r.tombstones.is_empty() && !r.sweep {
        v.add("tombstones", "required: at least one tombstone, or sweep");
    }
    for (i, t) in r.tombstones.iter().enumerate() {
        if t.len() != limits::TOMBSTONE_BYTES {
            v.add(
                format!("tombstones[{i}]"),
                "must be 32 bytes, as EraseSubject or FindErased returned it",
            );
        }
    }
    finish(v, Some((r.tombstones.clone(), r.sweep)))
}

/// Validates a ListErasures: where to continue (empty, or a tombstone a previous page ended
/// with), and the page size (1,000 when unset).
pub fn list_erasures(r: &pb::ListErasuresRequest) -> Result<(Vec<u8>, u32), Status> {
    let mut v = Violations::default();
    if r.page_size as usize > MAX_ERASURE_BATCH {
        v.add("page_size", format!("at most {MAX_ERASURE_BATCH}"));
    }
    if !r.after.is_empty() && r.after.len() != limits::TOMBSTONE_BYTES {
        v.add(
            "after",
            "not a tombstone: pass the `next_after` of the previous page, or nothing",
        );
    }
    v.finish()?;
    let size = if r.page_size == 0 {
        MAX_ERASURE_BATCH as u32
    } else {
        r.page_size
    };
    Ok((r.after.clone(), size))
}

/// ReapplyErasures' answer.
pub fn reapply_response(done: Reapplied) -> pb::ReapplyErasuresResponse {
    pb::ReapplyErasuresResponse {
        already_present: done.already_present,
        restored: done.restored,
        subjects_erased: done.subjects_erased,
        records_deleted: done.records_deleted,
        revision: done.revision,
    }
}

/// Validates a RestrictProcessing: the key and the subject.
pub fn restrict(r: &pb::RestrictProcessingRequest) -> Result<(Idempotency, SubjectKey), Status> {
    let subject = keyed_subject(&r.idempotency_key, r.subject.as_ref())?;
    let idempotency = idempotency(r, &r.idempotency_key, |m| m.idempotency_key.clear());
    Ok((idempotency, subject))
}

/// The idempotency key and the subject, both checked before either fails.
fn keyed_subject(
    key: &str,
    subject_ref: Option<&common::SubjectRef>,
) -> Result<SubjectKey, Status> {
    let mut v = Violations::default();
    idempotency_key(&mut v, key);
    let subject = subject(&mut v, "subject", subject_ref);
    finish(v, subject)
}

/// Validates a WatchChanges: where to resume, and the heartbeat interval (250 ms when unset,
/// else 100 ms to 10 s). An interval under the floor is refused, not raised: a caller that asked
/// for 1 ms would otherwise believe its lease is checked every millisecond.
pub fn watch(r: &pb::WatchChangesRequest) -> Result<(u64, Duration), Status> {
    let (min, max) = (limits::MIN_HEARTBEAT_MILLIS, limits::MAX_HEARTBEAT_MILLIS);
    if r.heartbeat_millis != 0 && !(min..=max).contains(&r.heartbeat_millis) {
        return Err(invalid_argument(
            "heartbeat_millis",
            format!("must be 0 (the default, 250) or {min} to {max}"),
        ));
    }
    let interval = Duration::from_millis(if r.heartbeat_millis == 0 {
        250
    } else {
        u64::from(r.heartbeat_millis)
    });
    Ok((r.after_revision, interval))
}

/// One change-stream message in its wire form.
pub fn watch_message(
    event: Result<WatchEvent, ServiceError>,
) -> Result<pb::WatchChangesResponse, Status> {
    use pb::watch_changes_response::Message as Msg;
    let message = match event? {
        WatchEvent::Change(e) => Msg::Change(pb::ChangeEvent {
            revision: e.revision,
            subject: e.subject.as_ref().map(subject_ref),
            kind: e.kind,
            purpose: e.purpose.unwrap_or_default(),
            committed_at: e.committed_at.map(timestamp),
        }),
        WatchEvent::Heartbeat {
            high_water_revision,
            sent_at,
        } => Msg::Heartbeat(pb::Heartbeat {
            high_water_revision,
            sent_at: Some(timestamp(sent_at)),
        }),
    };
    Ok(pb::WatchChangesResponse {
        message: Some(message),
    })
}
