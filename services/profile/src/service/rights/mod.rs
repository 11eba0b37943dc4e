//! Data-subject rights, the front door for the privacy team: access report, export, rectification,
//! erasure, and the status of any of these requests by its id. Reads pass the gate like any
//! other, under the essential purpose `essential.legal_obligation` on behalf of the privacy
//! team's caller. Calls to the consent and recommendation services go with this service's own
//! credentials and name the privacy team's caller in `on_behalf_of`: the team's token never
//! leaves this service, and those services accept the call only because the policy lets this
//! service act for that caller there (`delegates`), and authorize it by that caller's roles.
//!
//! Split by concern: [`report`] tells the subject what is held and who read it (GetAccessReport,
//! ExportSubjectData); [`requests`] acts on it (RectifyAttribute, EraseSubject) and resolves any
//! request by its id; this module holds what they share (the types, the DSAR decision, dates
//! in words).

mod report;
mod requests;

pub use requests::{ErasureDetail, ReapplyDetail};

use super::{DSAR_PURPOSE, Service, ServiceError};
use crate::model::DsarRequest;
use consentgate_gate::{Clearance, subject_key};
use consentgate_proto::common::v1::SubjectRef;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use serde_json::{Value, json};

/// RectifyAttribute as asked.
#[derive(Debug, Clone)]
pub struct RectifyAsk {
    /// Whose attribute.
    pub subject: SubjectRef,
    /// The attribute's name.
    pub name: String,
    /// The corrected value (never logged, never in the request record).
    pub value: String,
    /// Why, in the requester's words.
    pub reason: String,
}

/// EraseSubject as asked.
#[derive(Debug, Clone)]
pub struct EraseAsk {
    /// Whom to erase.
    pub subject: SubjectRef,
    /// A retry with the same key resumes the request.
    pub idempotency_key: String,
}

/// One read of the subject's data, as the access report tells it.
#[derive(Debug, Clone)]
pub struct AccessEntry {
    /// When (µs since the epoch).
    pub read_at: i64,
    /// Who read.
    pub caller: String,
    /// Who checked consent first.
    pub enforced_by: String,
    /// For which purpose.
    pub purpose: String,
    /// The purpose in plain language.
    pub purpose_description: String,
    /// The categories returned.
    pub data_categories: Vec<String>,
    /// The consent revision the read was decided on.
    pub revision: u64,
    /// The RPC.
    pub operation: String,
    /// How many items were returned.
    pub items: u32,
    /// The whole entry as one sentence.
    pub statement: String,
}

/// A correction made at the subject's request, as the access report lists it.
#[derive(Debug, Clone)]
pub struct Rectification {
    /// The request's id.
    pub request_id: String,
    /// When (µs since the epoch).
    pub rectified_at: i64,
    /// Who corrected it.
    pub rectified_by: String,
    /// The attribute's name (never its value).
    pub attribute: String,
    /// Its data category.
    pub data_category: String,
    /// The reason given.
    pub reason: String,
    /// The correction as one sentence.
    pub statement: String,
}

/// GetAccessReport's answer.
#[derive(Debug, Clone)]
pub struct AccessReport {
    /// Every read of the subject's data.
    pub entries: Vec<AccessEntry>,
    /// The report in a few sentences.
    pub summary: String,
    /// Corrections made at the subject's request.
    pub rectifications: Vec<Rectification>,
    /// The withdrawals and refusals in force, said plainly.
    pub consent_statements: Vec<pb::ConsentStatement>,
}

/// ExportSubjectData's answer.
#[derive(Debug, Clone)]
pub struct Export {
    /// The export request's id.
    pub request_id: String,
    /// Everything held, as one JSON document.
    pub document_json: String,
    /// When it was generated (µs since the epoch).
    pub generated_at: i64,
}

/// An erasure request and what it did so far.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The request record.
    pub request: DsarRequest,
    /// Its stored details.
    pub detail: ErasureDetail,
}

/// A ReapplyErasures run and what it did.
#[derive(Debug, Clone)]
pub struct Reapply {
    /// The run's request record.
    pub request: DsarRequest,
    /// Its counts and steps.
    pub detail: ReapplyDetail,
}

/// Any data-subject request, as GetRequestStatus tells it.
#[derive(Debug, Clone)]
pub struct RequestReport {
    /// The request record.
    pub request: DsarRequest,
    /// The request in one sentence.
    pub summary: String,
    /// What it did, by kind.
    pub outcome: Outcome,
}

/// What a data-subject request did, by kind.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// An erasure's steps and counts.
    Erasure(ErasureDetail),
    /// How many items an export held.
    Export {
        /// Items of profile data exported.
        items_exported: u64,
    },
    /// The corrected attribute.
    Rectification(Rectification),
    /// A ReapplyErasures run's counts and steps.
    Reapply(ReapplyDetail),
    /// A kind this version does not know.
    Unknown,
}

/// The subject key of a validated reference.
fn key_of(subject: &SubjectRef) -> String {
    subject_key(subject).unwrap_or_default()
}

impl Service {
    /// The gate's decision for a data-subject request. An erased subject yields a decision that
    /// allows nothing (so every read comes back empty); any other denial is refused.
    async fn dsar_decision(
        &self,
        caller: &CallerIdentity,
        subject: &SubjectRef,
    ) -> Result<Clearance, ServiceError> {
        let decision = self
            .decide(
                caller,
                subject.clone(),
                DSAR_PURPOSE,
                self.all_categories.clone(),
                None,
                "",
            )
            .await?;
        if decision.allows_anything() || decision.subject_erased() {
            Ok(decision)
        } else {
            Err(ServiceError::DsarNotPermitted(decision.reason().to_owned()))
        }
    }
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => json!(rfc3339(
            t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos) / 1000
        )),
        None => Value::Null,
    }
}

/// A date and time for a sentence: `2026-11-29 at 10:04 UTC`.
fn when(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] at [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}
