//! The profile service's domain room: what each RPC means, with no protocol in sight. Domain
//! types come in (already validated by [`crate::convert`]), domain types and a [`ServiceError`]
//! go out; the gRPC adapter ([`crate::grpc`]) only converts around it.
//!
//! The service is the policy enforcement point (docs/architecture.md §4): it asks the gate for a
//! decision, hands that decision to the store (which will not read or write personal data
//! without one) and records every read that disclosed something in the access log.
//!
//! Split by concern: [`collect`] is gated collection, written once for SetAttributes,
//! SubmitAnswers and RecordEvents; [`read`] is gated reads (GetProfile, ListEvents, GetAnswers,
//! ReadSubject); [`rights`] is data-subject rights (access report, export, rectification,
//! erasure, request status, access-log verification).

mod collect;
mod read;
mod rights;

pub use collect::{CollectAsk, Collectable, ItemVerdict, Refusal};
pub use read::{
    AnswersAsk, Decided, EventsAsk, EventsPage, EventsPart, ProfileAsk, Read, ReadAsk, Redaction,
    SubjectAsk, SubjectRead,
};
pub use rights::{
    AccessEntry, AccessReport, EraseAsk, Erasure, ErasureDetail, Export, Outcome, Reapply,
    ReapplyDetail, Rectification, RectifyAsk, RequestReport,
};

use crate::access_log::AccessLog;
use crate::model::{AccessDraft, now_micros};
use crate::observe::ProfileMetrics;
use crate::request_key::RequestKey;
use crate::store::{ProfileStore, StoreError};
use consentgate_gate::{Clearance, Gate, GateError};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{RequestContext, SubjectRef};
use consentgate_proto::consent::v1::CheckRequest;
use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::{ErrorCode, reason_of, to_status};
use std::sync::Arc;
use tonic::Code;
use tonic_types::StatusExt;

/// The purpose data-subject requests read under: essential, covers every category.
pub const DSAR_PURPOSE: &str = "essential.legal_obligation";

/// The profile service: every RPC's meaning, over the store, the gate and the access log.
pub struct Service {
    /// The policy (taxonomy for validation and plain-language descriptions).
    pub policy: Arc<Policy>,
    /// The profile store.
    pub store: Arc<dyn ProfileStore>,
    /// The consent gate.
    pub gate: Gate,
    /// The access log writer.
    pub log: AccessLog,
    /// This service's caller name (recorded as the enforcer of reads).
    pub name: String,
    /// Every category of the policy: what a read without named categories asks about (computed
    /// once, not on every read).
    pub all_categories: Vec<String>,
    /// The recommendation service, for the erasure cascade.
    pub recommendation: Option<RecommendationServiceClient<tonic::transport::Channel>>,
    /// What the service counts.
    pub metrics: Arc<ProfileMetrics>,
    /// The deployment secret that keys the digests of erasure requests' idempotency keys.
    pub request_key: RequestKey,
}

/// Why a service call failed: one variant per answer a caller can branch on, each with its gRPC
/// code and reason code (the [`ErrorCode`] impl), mapped to a `Status` in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The consent service (or the gate, before asking it) rejected the question as malformed:
    /// passed on as it was answered, with its reason and field violations.
    #[error("{message}")]
    ConsentRejected {
        /// The code it answered with (`INVALID_ARGUMENT`).
        code: Code,
        /// Its reason code.
        reason: String,
        /// Its message.
        message: String,
        /// The fields it named.
        violations: Vec<(String, String)>,
    },
    /// No consent decision could be had, so nothing is read or stored (fail closed).
    #[error("no consent decision could be obtained, so nothing is returned: {0}")]
    ConsentUnavailable(String),
    /// A data-subject request's call to the consent service failed with this code.
    #[error("the consent service could not answer: {0:?}")]
    ConsentUnanswered(Code),
    /// The consent service does not allow data-subject requests for this subject here (its
    /// reason code is the answer's reason).
    #[error("the consent service does not allow data-subject requests here: {0}")]
    DsarNotPermitted(String),
    /// The store failed (logged, without row values, when the error was converted).
    #[error("the profile store failed")]
    StoreUnavailable,
    /// The store refused a write its decision did not cover: a bug, never a caller's fault.
    #[error("a write was not covered by its consent decision; nothing was stored")]
    GateViolation,
    /// A read could not be recorded in the access log, so its data is not returned.
    #[error("the read could not be recorded, so nothing is returned: {0}")]
    AccessLogUnavailable(String),
    /// Rectification named an attribute the subject does not have.
    #[error("the subject has no attribute with this name")]
    AttributeNotFound,
    /// No erasure request has the id asked about.
    #[error("no erasure request has this id")]
    ErasureNotFound,
    /// No data-subject request of any kind has the id asked about.
    #[error("no data-subject request has this id")]
    RequestNotFound,
    /// The call's deadline passed before its store work began, so nothing was done.
    #[error("the call's deadline passed before its work began; nothing was done")]
    DeadlineExceeded,
}

impl ErrorCode for ServiceError {
    fn code(&self) -> Code {
        match self {
            ServiceError::ConsentRejected { code, .. } => *code,
            ServiceError::ConsentUnavailable(_)
            | ServiceError::ConsentUnanswered(_)
            | ServiceError::StoreUnavailable
            | ServiceError::AccessLogUnavailable(_) => Code::Unavailable,
            ServiceError::DsarNotPermitted(_) => Code::PermissionDenied,
            ServiceError::GateViolation => Code::Internal,
            ServiceError::DeadlineExceeded => Code::DeadlineExceeded,
            ServiceError::AttributeNotFound
            | ServiceError::ErasureNotFound
            | ServiceError::RequestNotFound => Code::NotFound,
        }
    }

    fn reason(&self) -> &str {
        match self {
            ServiceError::ConsentRejected { reason, .. } => reason,
            ServiceError::ConsentUnavailable(_) | ServiceError::ConsentUnanswered(_) => {
                "CONSENT_UNAVAILABLE"
            }
            ServiceError::DsarNotPermitted(reason) => reason,
            ServiceError::StoreUnavailable => "STORE_UNAVAILABLE",
            ServiceError::GateViolation => "GATE_VIOLATION",
            ServiceError::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ServiceError::AccessLogUnavailable(_) => "ACCESS_LOG_UNAVAILABLE",
            ServiceError::AttributeNotFound => "ATTRIBUTE_NOT_FOUND",
            ServiceError::ErasureNotFound | ServiceError::RequestNotFound => "REQUEST_NOT_FOUND",
        }
    }

    fn field_violations(&self) -> Vec<(String, String)> {
        match self {
            ServiceError::ConsentRejected { violations, .. } => violations.clone(),
            _ => Vec::new(),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        to_status(&error)
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        if error.is_deadline_exceeded() {
            return ServiceError::DeadlineExceeded;
        }
        // Store failures do not leak row values to callers; the log keeps the class only.
        tracing::error!(error = %error.log_safe(), "profile store failed");
        match error {
            StoreError::NotAllowed(_) => ServiceError::GateViolation,
            _ => ServiceError::StoreUnavailable,
        }
    }
}

impl From<GateError> for ServiceError {
    fn from(error: GateError) -> Self {
        match error {
            GateError::Rejected(status) => ServiceError::ConsentRejected {
                code: status.code(),
                reason: reason_of(&status).unwrap_or_default(),
                violations: status
                    .get_details_bad_request()
                    .map(|bad| {
                        bad.field_violations
                            .into_iter()
                            .map(|v| (v.field, v.description))
                            .collect()
                    })
                    .unwrap_or_default(),
                message: status.message().to_owned(),
            },
            GateError::Unavailable(why) | GateError::Config(why) => {
                ServiceError::ConsentUnavailable(why)
            }
        }
    }
}

impl Service {
    /// Asks the gate about `subject` for `purpose` and `categories`, for `caller`.
    async fn decide(
        &self,
        caller: &CallerIdentity,
        subject: SubjectRef,
        purpose: &str,
        categories: Vec<String>,
        context: Option<RequestContext>,
        at_least_as_fresh: &str,
    ) -> Result<Clearance, ServiceError> {
        let request = CheckRequest {
            subject: Some(subject),
            purpose: purpose.to_owned(),
            data_categories: categories,
            channel: String::new(),
            context,
            at_least_as_fresh: at_least_as_fresh.to_owned(),
            on_behalf_of: String::new(),
            include_explanation: false,
        };
        Ok(self.gate.check(request, Some(&caller.name)).await?)
    }

    /// Records a read that returned data; the read fails if the log cannot be written.
    async fn log_read(
        &self,
        decision: &Clearance,
        operation: &str,
        categories: Vec<String>,
        items: usize,
    ) -> Result<(), ServiceError> {
        if items == 0 {
            // Nothing of the person was disclosed, so there is nothing to report (and no
            // pseudonym key is created for a subject we hold nothing about).
            return Ok(());
        }
        let entry = self.log.record(AccessDraft {
            subject_key: decision.subject_key().to_owned(),
            read_at: now_micros(),
            caller: decision.caller().to_owned(),
            enforced_by: self.name.clone(),
            purpose: decision.purpose().to_owned(),
            categories,
            revision: decision.revision(),
            operation: operation.to_owned(),
            items: u64::try_from(items).unwrap_or(u64::MAX),
        });
        // The read's entry made durable by the group commit (the read answers only after it).
        consentgate_runtime::traces::in_span("consentgate.profile.access_log.append", || [], entry)
            .await
            .map_err(|why| ServiceError::AccessLogUnavailable(why.to_string()))
    }
}
