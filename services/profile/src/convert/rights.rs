//! Data-subject requests (access report, export, rectification, erasure, request status, the
//! re-application of erasures after a restore) and
//! access-log verification: requests validated into what the service asks, answers turned into
//! the wire form.

use super::read::attribute_pb;
use super::{check_subject, timestamp};
use crate::access_log::Verification;
use crate::model::{Attribute, DsarRequest};
use crate::service::{
    AccessEntry, AccessReport, EraseAsk, Erasure, ErasureDetail, Export, Outcome, Reapply,
    ReapplyDetail, Rectification, RectifyAsk, RequestReport,
};
use consentgate_proto::common::v1::SubjectRef;
use consentgate_proto::limits;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::errors::Violations;
use tonic::Status;

/// The subject a data-subject request names.
pub fn subject(subject: Option<SubjectRef>) -> Result<SubjectRef, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", subject.as_ref());
    v.finish()?;
    Ok(subject.unwrap_or_default())
}

/// RectifyAttribute as the service performs it.
pub fn rectify(r: pb::RectifyAttributeRequest) -> Result<RectifyAsk, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    v.check(
        r.name.trim().is_empty(),
        "name",
        "the attribute's name is required",
    );
    v.check_len("name", &r.name, limits::MAX_NAME_BYTES);
    v.check_len("value", &r.value, limits::MAX_VALUE_BYTES);
    v.check_len("reason", &r.reason, limits::MAX_REASON_BYTES);
    v.finish()?;
    Ok(RectifyAsk {
        subject: r.subject.unwrap_or_default(),
        name: r.name,
        value: r.value,
        reason: r.reason,
    })
}

/// EraseSubject as the service performs it.
pub fn erase(r: pb::EraseSubjectRequest) -> Result<EraseAsk, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    if r.idempotency_key.is_empty() {
        v.add(
            "idempotency_key",
            "required: a retry with the same key resumes the request",
        );
    } else if r.idempotency_key.len() > limits::MAX_IDEMPOTENCY_KEY_BYTES
        || r.idempotency_key.chars().any(char::is_control)
    {
        v.add(
            "idempotency_key",
            "must be at most 128 characters without control characters",
        );
    }
    v.finish()?;
    Ok(EraseAsk {
        subject: r.subject.unwrap_or_default(),
        idempotency_key: r.idempotency_key,
    })
}

/// A request id (a UUID); `what` says where valid ones come from.
fn request_id(id: String, what: &str) -> Result<String, Status> {
    let mut v = Violations::default();
    v.check(uuid::Uuid::parse_str(&id).is_err(), "request_id", what);
    v.finish()?;
    Ok(id)
}

/// The erasure GetErasureStatus asks about.
pub fn erasure_status_request(r: pb::GetErasureStatusRequest) -> Result<String, Status> {
    request_id(r.request_id, "not a request id from EraseSubject")
}

/// The request GetRequestStatus asks about.
pub fn request_status_request(r: pb::GetRequestStatusRequest) -> Result<String, Status> {
    request_id(
        r.request_id,
        "not a request id from EraseSubject, ExportSubjectData or RectifyAttribute",
    )
}

fn entry_pb(e: AccessEntry) -> pb::AccessEntry {
    pb::AccessEntry {
        read_at: Some(timestamp(e.read_at)),
        caller: e.caller,
        enforced_by: e.enforced_by,
        purpose: e.purpose,
        purpose_description: e.purpose_description,
        data_categories: e.data_categories,
        revision: e.revision,
        operation: e.operation,
        items: e.items,
        statement: e.statement,
    }
}

fn rectification_pb(r: Rectification) -> pb::Rectification {
    pb::Rectification {
        request_id: r.request_id,
        rectified_at: Some(timestamp(r.rectified_at)),
        rectified_by: r.rectified_by,
        attribute: r.attribute,
        data_category: r.data_category,
        reason: r.reason,
        statement: r.statement,
    }
}

/// GetAccessReport's answer.
pub fn access_report_response(report: AccessReport) -> pb::GetAccessReportResponse {
    pb::GetAccessReportResponse {
        entries: report.entries.into_iter().map(entry_pb).collect(),
        summary: report.summary,
        rectifications: report
            .rectifications
            .into_iter()
            .map(rectification_pb)
            .collect(),
        consent_statements: report.consent_statements,
    }
}

/// ExportSubjectData's answer.
pub fn export_response(export: Export) -> pb::ExportSubjectDataResponse {
    pb::ExportSubjectDataResponse {
        request_id: export.request_id,
        document_json: export.document_json,
        generated_at: Some(timestamp(export.generated_at)),
    }
}

/// RectifyAttribute's answer.
pub fn rectify_response(
    (attribute, request_id): (Attribute, String),
) -> pb::RectifyAttributeResponse {
    pb::RectifyAttributeResponse {
        attribute: Some(attribute_pb(&attribute)),
        request_id,
    }
}

/// An erasure's status as EraseSubject and GetErasureStatus show it.
pub fn erasure_response(erasure: Erasure) -> pb::ErasureStatus {
    erasure_pb(&erasure.request, erasure.detail)
}

/// Whether a request is done, and when it was asked and done, as both status messages say it.
struct Times {
    completed: bool,
    requested_at: Option<prost_types::Timestamp>,
    completed_at: Option<prost_types::Timestamp>,
}

fn times(request: &DsarRequest) -> Times {
    Times {
        completed: request.state == "completed",
        requested_at: Some(timestamp(request.requested_at)),
        completed_at: (request.completed_at > 0).then(|| timestamp(request.completed_at)),
    }
}

/// ReapplyErasures' answer.
pub fn reapply_response(run: Reapply) -> pb::ReapplyErasuresResponse {
    pb::ReapplyErasuresResponse {
        state: if times(&run.request).completed {
            pb::RequestState::Completed
        } else {
            pb::RequestState::InProgress
        } as i32,
        request_id: run.request.request_id,
        outcome: Some(reapply_pb(run.detail)),
    }
}

fn reapply_pb(detail: ReapplyDetail) -> pb::ReapplyOutcome {
    pb::ReapplyOutcome {
        tombstones_sent: detail.tombstones_sent,
        consent_tombstones_restored: detail.consent_tombstones_restored,
        consent_subjects_erased: detail.consent_subjects_erased,
        profile_subjects_erased: detail.profile_subjects_erased,
        profile_rows_deleted: detail.profile_rows_deleted,
        subjects_checked: detail.subjects_checked,
        recommendation_unlearned: detail.recommendation_unlearned,
        steps: detail.steps,
        tombstones_copied: detail.tombstones_copied,
    }
}

fn erasure_pb(request: &DsarRequest, detail: ErasureDetail) -> pb::ErasureStatus {
    let t = times(request);
    pb::ErasureStatus {
        request_id: request.request_id.clone(),
        state: if t.completed {
            pb::ErasureState::Completed
        } else {
            pb::ErasureState::InProgress
        } as i32,
        requested_at: t.requested_at,
        completed_at: t.completed_at,
        profile_rows_deleted: detail.profile_rows_deleted,
        consent_records_deleted: detail.consent_records_deleted,
        consent_revision: detail.consent_revision,
        steps: detail.steps,
    }
}

/// A request of any kind as GetRequestStatus shows it.
pub fn request_status_response(report: RequestReport) -> pb::RequestStatus {
    use pb::request_status::Outcome as Wire;
    let request = report.request;
    let (kind, outcome) = match report.outcome {
        Outcome::Erasure(detail) => (
            pb::RequestKind::Erasure,
            Some(Wire::Erasure(erasure_pb(&request, detail))),
        ),
        Outcome::Export { items_exported } => (
            pb::RequestKind::Export,
            Some(Wire::Export(pb::ExportOutcome { items_exported })),
        ),
        Outcome::Rectification(r) => (
            pb::RequestKind::Rectification,
            Some(Wire::Rectification(pb::RectificationOutcome {
                attribute: r.attribute,
                data_category: r.data_category,
                reason: r.reason,
            })),
        ),
        Outcome::Reapply(detail) => (
            pb::RequestKind::ErasureReapply,
            Some(Wire::Reapply(reapply_pb(detail))),
        ),
        Outcome::Unknown => (pb::RequestKind::Unspecified, None),
    };
    let t = times(&request);
    pb::RequestStatus {
        kind: kind as i32,
        state: if t.completed {
            pb::RequestState::Completed
        } else {
            pb::RequestState::InProgress
        } as i32,
        requested_at: t.requested_at,
        completed_at: t.completed_at,
        request_id: request.request_id,
        requested_by: request.requested_by,
        summary: report.summary,
        outcome,
    }
}

/// VerifyAccessLog's answer.
pub fn verify_response(report: Verification) -> pb::VerifyAccessLogResponse {
    let (first_broken_seq, problem) = report.broken.unwrap_or((0, String::new()));
    pb::VerifyAccessLogResponse {
        ok: first_broken_seq == 0,
        entries_checked: report.entries_checked,
        first_broken_seq,
        problem,
        head_hash: report.head_hash,
    }
}
