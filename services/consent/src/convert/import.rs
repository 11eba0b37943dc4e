//! ImportConsents: a chunk's records validated one by one (a bad record is rejected on its own,
//! naming its field, and the rest go on), and the chunk's outcomes in wire form.

use super::consent::{self, jurisdiction, language, notice_version, target};
use super::{collection_method, from_timestamp, unknown_enum, valid_id};
use crate::model::ImportOrigin;
use crate::service::{ConsentAsk, Idempotency, ImportAsk, ImportOutcome};
use consentgate_policy::{CollectionMethod, ConsentType, Policy, RecordState};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::limits;
use consentgate_runtime::errors::Violations;
use prost::Message;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::Status;

/// One record's validation: the ask, or the rejection that answers it.
pub type Validated = Result<ImportAsk, ImportOutcome>;

/// Validates a chunk. The request itself (its source, its number of records) must be valid, or
/// the stream fails with `INVALID_ARGUMENT`; each record is then valid or rejected on its own,
/// with its field named `records[i].…`. `now` bounds `collected_at`: a record from the future
/// is a mapping bug in the export, and would sort after every live change.
pub fn import_chunk(
    policy: &Policy,
    r: &pb::ImportConsentsRequest,
    now: OffsetDateTime,
) -> Result<Vec<Validated>, Status> {
    let mut v = Violations::default();
    if r.source.is_empty() {
        v.add("source", "required: the platform the records come from");
    } else if r.source.len() > limits::MAX_IMPORT_SOURCE_BYTES
        || !r
            .source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        v.add(
            "source",
            format!(
                "must be 1 to {} bytes of a-z, 0-9, '.', '_' and '-'",
                limits::MAX_IMPORT_SOURCE_BYTES
            ),
        );
    }
    if r.records.is_empty() {
        v.add("records", "required: 1 to 1000 records");
    }
    v.check_count("records", r.records.len(), limits::MAX_IMPORT_CHUNK);
    v.finish()?;
    Ok(r.records
        .iter()
        .enumerate()
        .map(|(i, record)| import_record(policy, &r.source, i, record, now))
        .collect())
}

/// Validates one record of a chunk.
fn import_record(
    policy: &Policy,
    source: &str,
    index: usize,
    r: &pb::ImportRecord,
    now: OffsetDateTime,
) -> Validated {
    let mut v = Violations::default();
    if r.source_record_id.len() > limits::MAX_SOURCE_RECORD_ID_BYTES {
        v.add(
            "source_record_id",
            format!(
                "must be at most {} bytes",
                limits::MAX_SOURCE_RECORD_ID_BYTES
            ),
        );
    } else if let Some(why) = valid_id(&r.source_record_id) {
        v.add("source_record_id", why);
    }
    let state = match pb::ConsentState::try_from(r.state) {
        Ok(pb::ConsentState::Given) => Some(RecordState::Given),
        Ok(pb::ConsentState::Refused) => Some(RecordState::Refused),
        Ok(pb::ConsentState::Withdrawn) => Some(RecordState::Withdrawn),
        Ok(_) => {
            v.add("state", "required: GIVEN, REFUSED or WITHDRAWN");
            None
        }
        Err(_) => {
            v.add("state", unknown_enum(r.state));
            None
        }
    };
    let granting = state == Some(RecordState::Given);
    let target = target(policy, &mut v, r.target.as_ref(), granting);
    let jurisdiction = jurisdiction(policy, &mut v, &r.jurisdiction);
    let consent_type = match pb::ConsentType::try_from(r.consent_type) {
        Ok(pb::ConsentType::Explicit) => ConsentType::Explicit,
        Ok(pb::ConsentType::Expressed) => ConsentType::Expressed,
        Ok(pb::ConsentType::Unspecified) => {
            if granting {
                v.add(
                    "consent_type",
                    "required for a grant: CONSENT_TYPE_EXPLICIT or CONSENT_TYPE_EXPRESSED",
                );
            }
            ConsentType::Expressed
        }
        Err(_) => {
            v.add("consent_type", unknown_enum(r.consent_type));
            ConsentType::Expressed
        }
    };
    let collection = match pb::CollectionMethod::try_from(r.collection_method) {
        Ok(pb::CollectionMethod::Unspecified) => CollectionMethod::Import,
        Ok(pb::CollectionMethod::GpcSignal) => {
            v.add(
                "collection_method",
                "a GPC signal is not a consent record: record it with RecordSignal",
            );
            CollectionMethod::Import
        }
        _ => collection_method(&mut v, r.collection_method),
    };
    notice_version(
        &mut v,
        &r.notice_version,
        granting.then_some("required for a grant: the version of the notice the person saw"),
    );
    let collected_at = match r.collected_at.as_ref().map(from_timestamp) {
        None => {
            v.add("collected_at", "required: when the source collected it");
            None
        }
        Some(None) => {
            v.add("collected_at", "not a valid timestamp");
            None
        }
        Some(Some(t)) if t > now => {
            v.add("collected_at", "is in the future");
            None
        }
        Some(Some(t)) => Some(t),
    };
    let expires_at = match r.expires_at.as_ref().map(from_timestamp) {
        None => None,
        Some(None) => {
            v.add("expires_at", "not a valid timestamp");
            None
        }
        Some(Some(_)) if !granting => {
            v.add("expires_at", "only a grant lapses");
            None
        }
        Some(Some(e)) if collected_at.is_some_and(|c| e <= c) => {
            v.add("expires_at", "must be after collected_at");
            None
        }
        Some(Some(e)) => Some(e),
    };
    if r.guardian_ref.len() > super::MAX_ID_LEN || r.guardian_ref.chars().any(char::is_control) {
        v.add("guardian_ref", "must be at most 256 printable bytes");
    }
    let language = language(&mut v, &r.language);
    let (source_ip, user_agent) = consent::source(&mut v, r.source.as_ref());

    let rejected = |field: String, reason: String| ImportOutcome::Rejected {
        index,
        code: "INVALID_ARGUMENT",
        field: format!("records[{index}].{field}"),
        reason,
    };
    let (Some(target), Some(state), Some(collected_at)) = (target, state, collected_at) else {
        let (field, reason) = v
            .into_list()
            .into_iter()
            .next()
            .unwrap_or_else(|| ("".into(), "not a valid record".into()));
        return Err(rejected(field, reason));
    };
    if let Some((field, reason)) = v.into_list().into_iter().next() {
        return Err(rejected(field, reason));
    }
    Ok(ImportAsk {
        index,
        origin: ImportOrigin {
            source: source.to_owned(),
            source_record_id: r.source_record_id.clone(),
        },
        consent: ConsentAsk {
            idempotency: Idempotency {
                // Unique per source record: a record repeated in one group commit is answered
                // from its first landing (the key ends a run), never landed twice.
                key: format!("import\u{0}{source}\u{0}{}", r.source_record_id),
                fingerprint: fingerprint(source, r),
            },
            target,
            jurisdiction,
            notice_version: r.notice_version.clone(),
            collection_method: collection,
            source_ip,
            user_agent,
        },
        state,
        consent_type,
        collected_at,
        expires_at,
        guardian_ref: (!r.guardian_ref.is_empty()).then(|| r.guardian_ref.clone()),
        language,
    })
}

/// SHA-256 of the source and the record as sent: the same record re-sent is a duplicate, other
/// content under the same source record id a conflict.
fn fingerprint(source: &str, r: &pb::ImportRecord) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(source.as_bytes());
    hash.update([0]);
    hash.update(r.encode_to_vec());
    hash.finalize().into()
}

/// A chunk's answer: one outcome per record, in order.
pub fn import_response(outcomes: &[ImportOutcome]) -> pb::ImportConsentsResponse {
    pb::ImportConsentsResponse {
        outcomes: outcomes.iter().map(outcome_pb).collect(),
    }
}

fn outcome_pb(outcome: &ImportOutcome) -> pb::ImportOutcome {
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    match outcome {
        ImportOutcome::Stored {
            index: i,
            revision,
            record_id,
            current,
        } => pb::ImportOutcome {
            index: index(*i),
            status: if *current {
                pb::ImportStatus::Imported
            } else {
                pb::ImportStatus::HistoryOnly
            } as i32,
            revision: *revision,
            record_id: record_id.clone(),
            ..Default::default()
        },
        ImportOutcome::Duplicate {
            index: i,
            revision,
            record_id,
        } => pb::ImportOutcome {
            index: index(*i),
            status: pb::ImportStatus::Duplicate as i32,
            revision: *revision,
            record_id: record_id.clone(),
            ..Default::default()
        },
        ImportOutcome::Rejected {
            index: i,
            code,
            field,
            reason,
        } => pb::ImportOutcome {
            index: index(*i),
            status: pb::ImportStatus::Rejected as i32,
            code: (*code).to_owned(),
            field: field.clone(),
            reason: reason.clone(),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_toml(consentgate_policy::DEFAULT_POLICY_TOML, "default.toml")
            .expect("the default policy")
    }

    fn record(id: &str) -> pb::ImportRecord {
        pb::ImportRecord {
            source_record_id: id.to_owned(),
            target: Some(pb::ConsentTarget {
                subject: Some(consentgate_proto::common::v1::SubjectRef {
                    id: Some(consentgate_proto::common::v1::subject_ref::Id::SubjectId(
                        "alice".into(),
                    )),
                }),
                purpose: "analytics.reporting".into(),
                ..Default::default()
            }),
            state: pb::ConsentState::Given as i32,
            consent_type: pb::ConsentType::Explicit as i32,
            notice_version: "1".into(),
            collected_at: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn chunk(records: Vec<pb::ImportRecord>) -> pb::ImportConsentsRequest {
        pb::ImportConsentsRequest {
            source: "legacy-crm".into(),
            records,
        }
    }

    #[test]
    fn each_bad_record_is_rejected_on_its_own_naming_its_field() {
        let mut future = record("r2");
        future.collected_at = Some(prost_types::Timestamp {
            seconds: 4_000_000_000,
            nanos: 0,
        });
        let mut unknown = record("r3");
        if let Some(t) = unknown.target.as_mut() {
            t.purpose = "no.such.purpose".into();
        }
        let mut gpc = record("r4");
        gpc.collection_method = pb::CollectionMethod::GpcSignal as i32;
        let out = import_chunk(
            &policy(),
            &chunk(vec![record("r1"), future, unknown, gpc, record("")]),
            OffsetDateTime::now_utc(),
        )
        .expect("a valid chunk");
        assert!(out[0].is_ok());
        let fields: Vec<String> = out[1..]
            .iter()
            .map(|o| match o {
                Err(ImportOutcome::Rejected { field, .. }) => field.clone(),
                other => panic!("expected a rejection, got {other:?}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "records[1].collected_at",
                "records[2].target.purpose",
                "records[3].collection_method",
                "records[4].source_record_id"
            ]
        );
    }

    #[test]
    fn a_bad_source_or_an_oversized_chunk_fails_the_stream() {
        let now = OffsetDateTime::now_utc();
        let mut bad = chunk(vec![record("r1")]);
        bad.source = "Legacy CRM".into();
        let status = import_chunk(&policy(), &bad, now).expect_err("a bad source");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let big = chunk((0..1001).map(|i| record(&format!("r{i}"))).collect());
        assert!(import_chunk(&policy(), &big, now).is_err());
        assert!(import_chunk(&policy(), &chunk(Vec::new()), now).is_err());
    }

    #[test]
    fn the_same_record_has_the_same_fingerprint_and_other_content_another() {
        let a = fingerprint("s", &record("r1"));
        assert_eq!(a, fingerprint("s", &record("r1")));
        let mut other = record("r1");
        other.state = pb::ConsentState::Withdrawn as i32;
        assert_ne!(a, fingerprint("s", &other));
        assert_ne!(a, fingerprint("t", &record("r1")));
    }
}
