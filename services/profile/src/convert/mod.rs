//! Protobuf ⇄ domain for the profile service, and request validation that names each bad field
//! (every violation of a request at once, through [`Violations`]). Validation that needs the
//! policy (unknown purposes and categories) takes it as an argument; what a valid request
//! *means* lives in [`crate::service`].
//!
//! Split like the service: [`collect`] (SetAttributes, SubmitAnswers, RecordEvents), [`read`]
//! (GetProfile, ListEvents, GetAnswers, ReadSubject), [`rights`] (data-subject requests and the
//! access log); this module holds the pieces they share.

mod collect;
mod read;
mod rights;

pub use collect::{
    CollectResponse, MAX_EVENTS, MAX_ITEMS, collect_response, record_events, set_attributes,
    submit_answers,
};
pub use read::{
    get_answers, get_answers_response, get_profile, get_profile_response, list_events,
    list_events_response, read_subject, read_subject_response,
};
pub use rights::{
    access_report_response, erase, erasure_response, erasure_status_request, export_response,
    reapply_response, rectify, rectify_response, request_status_request, request_status_response,
    subject, verify_response,
};

use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::limits;
use consentgate_runtime::errors::{Violations, echo};

const MAX_ID_LEN: usize = limits::MAX_ID_BYTES;
const MAX_NAME_LEN: usize = limits::MAX_NAME_BYTES;
const MAX_VALUE_LEN: usize = limits::MAX_VALUE_BYTES;

/// Validates a subject reference into the field `field`.
fn check_subject(v: &mut Violations, field: &str, subject: Option<&SubjectRef>) {
    let id = match subject.and_then(|s| s.id.as_ref()) {
        Some(subject_ref::Id::SubjectId(id)) => (format!("{field}.subject_id"), id),
        Some(subject_ref::Id::DeviceId(id)) => (format!("{field}.device_id"), id),
        None => {
            v.add(field, "a subject_id or device_id is required");
            return;
        }
    };
    if id.1.is_empty() {
        v.add(id.0, "must not be empty");
    } else if id.1.len() > MAX_ID_LEN || id.1.chars().any(char::is_control) {
        v.add(
            id.0,
            "must be at most 256 characters without control characters",
        );
    }
}

fn check_purpose(policy: &Policy, v: &mut Violations, field: &str, purpose: &str) {
    if purpose.is_empty() {
        v.add(field, "a purpose key from the policy is required");
    } else if v.check_len(field, purpose, limits::MAX_POLICY_KEY_BYTES)
        && !policy.purposes.contains_key(purpose)
    {
        v.add(field, format!("unknown purpose {}", echo(purpose)));
    }
}

fn check_category(policy: &Policy, v: &mut Violations, field: &str, category: &str) {
    if category.is_empty() {
        v.add(field, "a data category key from the policy is required");
    } else if v.check_len(field, category, limits::MAX_POLICY_KEY_BYTES)
        && !policy.categories.contains_key(category)
    {
        v.add(field, format!("unknown data category {}", echo(category)));
    }
}

fn check_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
    if required && text.trim().is_empty() {
        v.add(field, "must not be empty");
    } else if text.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    } else if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        v.add(field, "must not contain control characters");
    }
}

/// Microseconds to a protobuf timestamp.
fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

fn micros_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos) / 1000)
}
