//! Data-subject rights, the front door for the privacy team: access report, export, rectification,
//! erasure, and the status of any of these requests by its id. Reads pass the gate like any other, under the essential purpose
//! `essential.legal_obligation` on behalf of the privacy team's caller; calls to the consent
//! service forward the caller's own credentials, so the profile service holds no standing right
//! to read consent histories or erase subjects there.

use crate::grpc::{
    DSAR_PURPOSE, Shared, attribute_pb, caller_of, check_subject, key_of, store_status, timestamp,
};
use crate::model::{AccessRecord, DsarRequest, Requester, now_micros};
use crate::store::EventQuery;
use crate::withdrawals::phrase;
use consentgate_gate::Decision;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::{Violations, invalid_argument, reason_of, status};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Response, Status};

/// Every category: a data-subject request reads everything held.
fn all_categories(shared: &Shared) -> Vec<String> {
    shared.all_categories.clone()
}

/// The gate's decision for a data-subject request. An erased subject yields a decision that
/// allows nothing (so every read comes back empty); any other denial is refused.
async fn dsar_decision(
    shared: &Shared,
    caller: &CallerIdentity,
    subject: &SubjectRef,
) -> Result<Decision, Status> {
    let decision = shared
        .decide(
            caller,
            subject.clone(),
            DSAR_PURPOSE,
            all_categories(shared),
            None,
            "",
        )
        .await?;
    if decision.allows_anything() || decision.subject_erased() {
        Ok(decision)
    } else {
        Err(status(
            Code::PermissionDenied,
            decision.reason(),
            format!(
                "the consent service does not allow data-subject requests here: {}",
                decision.reason()
            ),
        ))
    }
}

fn validated_subject(subject: Option<SubjectRef>) -> Result<SubjectRef, Status> {
    let mut v = Violations::default();
    check_subject(&mut v, "subject", subject.as_ref());
    v.finish()?;
    Ok(subject.unwrap_or_default())
}

/// The caller's `authorization` header, forwarded to the consent service.
fn credentials<T>(request: &Request<T>) -> Result<MetadataValue<Ascii>, Status> {
    request
        .metadata()
        .get("authorization")
        .cloned()
        .ok_or_else(|| status(Code::Unauthenticated, "UNAUTHENTICATED", "no credentials"))
}

fn forwarded<T>(message: T, auth: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request.set_timeout(std::time::Duration::from_secs(10));
    request
}

fn consent_unavailable(s: &Status) -> Status {
    status(
        Code::Unavailable,
        "CONSENT_UNAVAILABLE",
        format!("the consent service could not answer: {:?}", s.code()),
    )
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

fn entry_pb(shared: &Shared, e: &AccessRecord) -> pb::AccessEntry {
    let categories: Vec<String> = e
        .categories
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let purpose_description = shared
        .policy
        .purposes
        .get(&e.purpose)
        .map(|p| p.description.clone())
        .unwrap_or_default();
    let what = categories
        .iter()
        .map(|c| {
            shared
                .policy
                .categories
                .get(c)
                .map_or_else(|| c.clone(), |k| phrase(&k.description))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let when = when(e.read_at);
    let statement = format!(
        "On {when}, {} read {} item(s) of your data ({what}) for this purpose: {}. {} checked your consent first (consent revision {}).",
        e.caller,
        e.items,
        phrase(&purpose_description),
        e.enforced_by,
        e.revision
    );
    pb::AccessEntry {
        read_at: Some(timestamp(e.read_at)),
        caller: e.caller.clone(),
        enforced_by: e.enforced_by.clone(),
        purpose: e.purpose.clone(),
        purpose_description,
        data_categories: categories,
        revision: e.revision,
        operation: e.operation.clone(),
        items: u32::try_from(e.items).unwrap_or(u32::MAX),
        statement,
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

/// What a rectification request's detail names: the attribute and its category, never a value.
#[derive(Debug, Default, serde::Deserialize)]
struct RectificationDetail {
    #[serde(default)]
    attribute: String,
    #[serde(default)]
    data_category: String,
}

/// A rectification as the access report lists it.
fn rectification_pb(shared: &Shared, request: &DsarRequest) -> pb::Rectification {
    let detail: RectificationDetail = serde_json::from_str(&request.detail).unwrap_or_default();
    let category = shared
        .policy
        .categories
        .get(&detail.data_category)
        .map_or_else(|| detail.data_category.clone(), |c| phrase(&c.description));
    let by = if request.requested_by.is_empty() {
        "the privacy team".to_owned()
    } else {
        request.requested_by.clone()
    };
    let mut statement = format!(
        "On {}, {by} corrected your \"{}\" ({category}) at your request (request {}).",
        when(request.completed_at),
        detail.attribute,
        request.request_id
    );
    if !request.note.is_empty() {
        statement.push_str(&format!(" Reason given: {}", request.note));
    }
    pb::Rectification {
        request_id: request.request_id.clone(),
        rectified_at: Some(timestamp(request.completed_at)),
        rectified_by: request.requested_by.clone(),
        attribute: detail.attribute,
        data_category: detail.data_category,
        reason: request.note.clone(),
        statement,
    }
}

/// The subject's rectifications, oldest first.
async fn rectifications(
    shared: &Shared,
    decision: &Decision,
) -> Result<Vec<pb::Rectification>, Status> {
    Ok(shared
        .store
        .subject_requests(decision)
        .await
        .map_err(store_status)?
        .iter()
        .filter(|r| r.kind == "rectify")
        .map(|r| rectification_pb(shared, r))
        .collect())
}

/// `GetAccessReport`: who read the subject's data, what was corrected at its request, and the
/// withdrawals and refusals in force, in plain language.
pub async fn access_report(
    shared: &Shared,
    request: Request<pb::GetAccessReportRequest>,
) -> Result<Response<pb::GetAccessReportResponse>, Status> {
    let caller = caller_of(&request)?;
    let auth = credentials(&request)?;
    let subject = validated_subject(request.into_inner().subject)?;
    let decision = dsar_decision(shared, &caller, &subject).await?;
    let records = shared
        .store
        .access_entries(&decision)
        .await
        .map_err(store_status)?;
    let entries: Vec<pb::AccessEntry> = records.iter().map(|e| entry_pb(shared, e)).collect();
    let rectifications = rectifications(shared, &decision).await?;
    // None: the consent service erased the subject and holds no consents to report.
    let consent_statements = consent_part(shared, &decision, &subject, &auth)
        .await?
        .map(|consents| crate::withdrawals::statements(&shared.policy, &consents.history))
        .unwrap_or_default();
    let mut callers: Vec<&str> = entries.iter().map(|e| e.caller.as_str()).collect();
    callers.sort_unstable();
    callers.dedup();
    let mut summary = if entries.is_empty() {
        "Nobody has read your data through the profile service.".to_owned()
    } else {
        format!(
            "Your data was read {} time(s), by: {}. Every read was checked against your consent first; each line below says who, when, what and why.",
            entries.len(),
            callers.join(", ")
        )
    };
    if !rectifications.is_empty() {
        summary.push_str(&format!(
            " Your data was corrected at your request {} time(s); each correction is listed with its request id.",
            rectifications.len()
        ));
    }
    Ok(Response::new(pb::GetAccessReportResponse {
        entries,
        summary,
        rectifications,
        consent_statements,
    }))
}

fn record_json(r: &consent_pb::ConsentRecord) -> Value {
    let name = |v: i32, f: fn(i32) -> Option<&'static str>| f(v).unwrap_or("UNSPECIFIED");
    json!({
        "record_id": r.record_id,
        "purpose": r.purpose,
        "data_category": r.data_category,
        "channel": r.channel,
        "state": name(r.state, |v| consent_pb::ConsentState::try_from(v).ok().map(|s| s.as_str_name())),
        "consent_type": name(r.consent_type, |v| consent_pb::ConsentType::try_from(v).ok().map(|s| s.as_str_name())),
        "legal_basis": r.legal_basis,
        "jurisdiction": r.jurisdiction,
        "notice_id": r.notice_id,
        "notice_version": r.notice_version,
        "collection_method": name(r.collection_method, |v| consent_pb::CollectionMethod::try_from(v).ok().map(|s| s.as_str_name())),
        "collected_at": ts_json(r.collected_at.as_ref()),
        "expires_at": ts_json(r.expires_at.as_ref()),
        "source": r.source.as_ref().map(|s| json!({"ip_address": s.ip_address, "user_agent": s.user_agent})),
        "revision": r.revision,
    })
}

/// The subject's consents as the consent service holds them.
struct Consents {
    /// The records in force, signals, links.
    current: consent_pb::GetConsentsResponse,
    /// Every record, oldest first.
    history: Vec<consent_pb::ConsentRecord>,
}

impl Consents {
    /// The export's `consents` and `consent_history` parts.
    fn json(&self) -> (Value, Value) {
        let current = &self.current;
        let signals: Vec<Value> = current
            .signals
            .iter()
            .map(|s| {
                json!({
                    "kind": consent_pb::SignalKind::try_from(s.kind).map_or("UNSPECIFIED", |k| k.as_str_name()),
                    "value": s.value,
                    "recorded_at": ts_json(s.recorded_at.as_ref()),
                })
            })
            .collect();
        (
            json!({
                "current": current.consents.iter().map(record_json).collect::<Vec<_>>(),
                "signals": signals,
                "linked_device_ids": current.linked_device_ids,
                "processing_restricted": current.processing_restricted,
                "revision": current.revision,
            }),
            Value::Array(self.history.iter().map(record_json).collect()),
        )
    }
}

/// Whether the consent service answered that the subject was erased.
fn says_erased(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && reason_of(status).is_some_and(|reason| reason == "SUBJECT_ERASED")
}

/// The subject's consents and their history from the consent service; `None` when it was erased
/// there. The decision's `subject_erased()` usually says so first, but a decision the gate cached
/// just before an erasure can still allow until the erasure's change event arrives: the consent
/// service's own answer settles it.
async fn consent_part(
    shared: &Shared,
    decision: &Decision,
    subject: &SubjectRef,
    auth: &MetadataValue<Ascii>,
) -> Result<Option<Consents>, Status> {
    if decision.subject_erased() {
        return Ok(None);
    }
    let mut client = shared.gate.consent_client();
    let current = match client
        .get_consents(forwarded(
            consent_pb::GetConsentsRequest {
                subject: Some(subject.clone()),
            },
            auth,
        ))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(s) if says_erased(&s) => return Ok(None),
        Err(s) => return Err(consent_unavailable(&s)),
    };
    let mut history = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_consent_history(forwarded(
                consent_pb::ListConsentHistoryRequest {
                    subject: Some(subject.clone()),
                    page_size: 500,
                    page_token: page_token.clone(),
                },
                auth,
            ))
            .await;
        let page = match page {
            Ok(response) => response.into_inner(),
            Err(s) if says_erased(&s) => return Ok(None),
            Err(s) => return Err(consent_unavailable(&s)),
        };
        history.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(Some(Consents { current, history }))
}

/// A consent statement in the export.
fn statement_json(s: &pb::ConsentStatement) -> Value {
    json!({
        "record_id": s.record_id,
        "purpose": s.purpose,
        "channel": s.channel,
        "data_category": s.data_category,
        "state": s.state,
        "recorded_at": ts_json(s.recorded_at.as_ref()),
        "consent_revision": s.revision,
        "covers": s.covers,
        "given_again": s.given_again,
        "statement": s.statement,
    })
}

/// `ExportSubjectData`: everything held about the subject, as one JSON document.
pub async fn export(
    shared: &Shared,
    request: Request<pb::ExportSubjectDataRequest>,
) -> Result<Response<pb::ExportSubjectDataResponse>, Status> {
    let caller = caller_of(&request)?;
    let auth = credentials(&request)?;
    let subject = validated_subject(request.into_inner().subject)?;
    let decision = dsar_decision(shared, &caller, &subject).await?;
    let store = &shared.store;
    let attributes = store.attributes(&decision).await.map_err(store_status)?;
    let answers = store.answers(&decision).await.map_err(store_status)?;
    let mut events = Vec::new();
    let mut query = EventQuery {
        limit: 1000,
        ..EventQuery::default()
    };
    loop {
        let page = store
            .events(&decision, &query)
            .await
            .map_err(store_status)?;
        let done = page.len() < 1000;
        query.after = page.last().map(|e| (e.occurred_at, e.event_id.clone()));
        events.extend(page);
        if done {
            break;
        }
    }
    let (consents, consent_history, consent_statements) = match consent_part(
        shared, &decision, &subject, &auth,
    )
    .await?
    {
        // The consent service erased the subject: it holds no consents to report.
        None => (
            json!({ "current": [], "signals": [], "linked_device_ids": [], "processing_restricted": false, "subject_erased": true }),
            json!([]),
            json!([]),
        ),
        Some(part) => {
            let (current, history) = part.json();
            let said = crate::withdrawals::statements(&shared.policy, &part.history);
            (
                current,
                history,
                Value::Array(said.iter().map(statement_json).collect()),
            )
        }
    };
    let rectifications: Vec<Value> = rectifications(shared, &decision)
        .await?
        .iter()
        .map(|r| {
            json!({
                "request_id": r.request_id,
                "rectified_at": ts_json(r.rectified_at.as_ref()),
                "rectified_by": r.rectified_by,
                "attribute": r.attribute,
                "data_category": r.data_category,
                "reason": r.reason,
                "statement": r.statement,
            })
        })
        .collect();
    let requester = Requester {
        caller: caller.name.clone(),
        note: String::new(),
    };
    let (request_record, _) = store
        .begin_request("export", None, &requester)
        .await
        .map_err(store_status)?;
    let items = attributes.len() + answers.len() + events.len();
    let mut returned: Vec<String> = attributes
        .iter()
        .map(|a| a.category.clone())
        .chain(answers.iter().map(|a| a.kind.category().to_owned()))
        .chain(events.iter().map(|e| e.kind.category().to_owned()))
        .collect();
    returned.sort();
    returned.dedup();
    shared
        .log_read(&decision, "ExportSubjectData", returned, items)
        .await?;
    let access: Vec<Value> = store
        .access_entries(&decision)
        .await
        .map_err(store_status)?
        .iter()
        .map(|e| {
            let entry = entry_pb(shared, e);
            json!({
                "read_at": rfc3339(e.read_at),
                "caller": e.caller,
                "enforced_by": e.enforced_by,
                "purpose": e.purpose,
                "data_categories": entry.data_categories,
                "items": e.items,
                "consent_revision": e.revision,
                "operation": e.operation,
                "statement": entry.statement,
            })
        })
        .collect();
    let subject_json = match &subject.id {
        Some(subject_ref::Id::SubjectId(id)) => json!({ "subject_id": id }),
        Some(subject_ref::Id::DeviceId(id)) => json!({ "device_id": id }),
        None => Value::Null,
    };
    let generated_at = now_micros();
    let document = json!({
        "format": "consentgate.subject-export.v1",
        "request_id": request_record.request_id,
        "generated_at": rfc3339(generated_at),
        "controller": shared.policy.controller,
        "subject": subject_json,
        "profile": {
            "attributes": attributes.iter().map(|a| json!({
                "name": a.name, "value": a.value, "data_category": a.category,
                "source": a.source.as_str(), "partner": a.partner,
                "purpose": a.collection.purpose, "notice_version": a.collection.notice_version,
                "collected_at": rfc3339(a.collected_at), "updated_at": rfc3339(a.updated_at),
            })).collect::<Vec<_>>(),
        },
        "answers": answers.iter().map(|a| json!({
            "kind": a.kind.as_str(), "question_id": a.question_id, "question": a.question,
            "answer": a.answer, "item_id": a.item_id, "data_category": a.kind.category(),
            "purpose": a.collection.purpose, "collected_at": rfc3339(a.collected_at),
        })).collect::<Vec<_>>(),
        "events": events.iter().map(|e| json!({
            "kind": e.kind.as_str(), "occurred_at": rfc3339(e.occurred_at), "item_id": e.item_id,
            "query": e.query, "page": e.page, "amount_minor": e.amount_minor, "currency": e.currency,
            "quantity": e.quantity, "data_category": e.kind.category(), "purpose": e.collection.purpose,
        })).collect::<Vec<_>>(),
        "consents": consents,
        "consent_history": consent_history,
        "consent_statements": consent_statements,
        "rectifications": rectifications,
        "access_log": access,
        "recommendations": {
            "derived_data": [],
            "note": "The recommendation service keeps no profile data. Its co-occurrence model counts which items were viewed or bought together by people who consented to model training; withdrawing that consent or erasing removes your contribution exactly. Recommendations are computed per request and not stored.",
        },
    });
    let mut done = request_record;
    done.state = "completed".into();
    done.completed_at = now_micros();
    done.detail = json!({ "items_exported": items }).to_string();
    store.update_request(&done).await.map_err(store_status)?;
    Ok(Response::new(pb::ExportSubjectDataResponse {
        request_id: done.request_id,
        document_json: serde_json::to_string_pretty(&document).unwrap_or_default(),
        generated_at: Some(timestamp(generated_at)),
    }))
}

/// `RectifyAttribute`: corrects a value.
pub async fn rectify(
    shared: &Shared,
    request: Request<pb::RectifyAttributeRequest>,
) -> Result<Response<pb::RectifyAttributeResponse>, Status> {
    let caller = caller_of(&request)?;
    let r = request.into_inner();
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    v.check(
        r.name.trim().is_empty(),
        "name",
        "the attribute's name is required",
    );
    v.check(r.value.len() > 4096, "value", "must be at most 4096 bytes");
    v.check(
        r.reason.len() > 1024,
        "reason",
        "must be at most 1024 bytes",
    );
    v.finish()?;
    let subject = r.subject.unwrap_or_default();
    let decision = dsar_decision(shared, &caller, &subject).await?;
    let requester = Requester {
        caller: caller.name.clone(),
        note: r.reason,
    };
    // The correction and its request are one transaction; the request names the attribute and
    // its category, never a value (nor does anything logged here).
    let (attribute, record) = shared
        .store
        .rectify(&decision, &r.name, &r.value, &requester)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            status(
                Code::NotFound,
                "ATTRIBUTE_NOT_FOUND",
                "the subject has no attribute with this name",
            )
        })?;
    Ok(Response::new(pb::RectifyAttributeResponse {
        attribute: Some(attribute_pb(&attribute)),
        request_id: record.request_id,
    }))
}

/// The stored details of an erasure.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ErasureDetail {
    profile_rows_deleted: u64,
    consent_records_deleted: u64,
    consent_revision: u64,
    steps: Vec<String>,
}

/// A request's status as the API shows it.
pub fn erasure_status(request: &DsarRequest) -> pb::ErasureStatus {
    let detail: ErasureDetail = serde_json::from_str(&request.detail).unwrap_or_default();
    pb::ErasureStatus {
        request_id: request.request_id.clone(),
        state: if request.state == "completed" {
            pb::ErasureState::Completed
        } else {
            pb::ErasureState::InProgress
        } as i32,
        requested_at: Some(timestamp(request.requested_at)),
        completed_at: (request.completed_at > 0).then(|| timestamp(request.completed_at)),
        profile_rows_deleted: detail.profile_rows_deleted,
        consent_records_deleted: detail.consent_records_deleted,
        consent_revision: detail.consent_revision,
        steps: detail.steps,
    }
}

/// `EraseSubject`: deletes the subject's profile data, erases it in the consent service, then
/// sweeps once more (a write that raced the first delete was still allowed then, and is refused
/// after). Idempotent by key; a retry resumes an unfinished request.
pub async fn erase(
    shared: &Shared,
    request: Request<pb::EraseSubjectRequest>,
) -> Result<Response<pb::EraseSubjectResponse>, Status> {
    let caller = caller_of(&request)?;
    let auth = credentials(&request)?;
    let r = request.into_inner();
    let mut v = Violations::default();
    check_subject(&mut v, "subject", r.subject.as_ref());
    if r.idempotency_key.is_empty() {
        v.add(
            "idempotency_key",
            "required: a retry with the same key resumes the request",
        );
    } else if r.idempotency_key.len() > 128 || r.idempotency_key.chars().any(char::is_control) {
        v.add(
            "idempotency_key",
            "must be at most 128 characters without control characters",
        );
    }
    v.finish()?;
    let subject = r.subject.unwrap_or_default();
    let key = key_of(&subject);
    // Only a digest of the key is kept: callers sometimes build keys from subject ids.
    let idempotency =
        consentgate_runtime::telemetry::pseudonymize(b"erasure-idempotency", &r.idempotency_key);
    let (mut record, _) = shared
        .store
        .begin_request(
            "erase",
            Some(&idempotency),
            &Requester {
                caller: caller.name.clone(),
                note: String::new(),
            },
        )
        .await
        .map_err(store_status)?;
    if record.state == "completed" {
        return Ok(Response::new(pb::EraseSubjectResponse {
            status: Some(erasure_status(&record)),
        }));
    }
    let mut detail: ErasureDetail = serde_json::from_str(&record.detail).unwrap_or_default();
    let deleted = shared
        .store
        .erase_subject(&key)
        .await
        .map_err(store_status)?;
    detail.profile_rows_deleted += deleted;
    detail.steps.push(format!(
        "profile service: deleted {deleted} rows (attributes, events, answers, access-log key)"
    ));
    let mut client = shared.gate.consent_client();
    let consent = client
        .erase_subject(forwarded(
            consent_pb::EraseSubjectRequest {
                subject: Some(subject.clone()),
                idempotency_key: format!("profile-erasure-{}", record.request_id),
            },
            &auth,
        ))
        .await;
    match consent {
        Ok(reply) => {
            let reply = reply.into_inner();
            detail.consent_records_deleted = reply.records_deleted;
            detail.consent_revision = reply.revision;
            detail.steps.push(format!(
                "consent service: erased {} consent records, ledger pseudonym key destroyed (revision {})",
                reply.records_deleted, reply.revision
            ));
            let swept = shared
                .store
                .erase_subject(&key)
                .await
                .map_err(store_status)?;
            detail.profile_rows_deleted += swept;
            detail
                .steps
                .push(format!("profile service: final sweep deleted {swept} rows"));
            let unlearned = match &shared.recommendation {
                None => Ok("recommendation service: not connected".to_owned()),
                Some(client) => client
                    .clone()
                    .unlearn(forwarded(
                        consentgate_proto::recommendation::v1::UnlearnRequest {
                            subject: Some(subject.clone()),
                        },
                        &auth,
                    ))
                    .await
                    .map(|r| {
                        if r.into_inner().forgotten {
                            "recommendation service: the subject's model contribution was unlearned"
                                .to_owned()
                        } else {
                            "recommendation service: held nothing derived from the subject"
                                .to_owned()
                        }
                    }),
            };
            match unlearned {
                Ok(step) => {
                    detail.steps.push(step);
                    record.state = "completed".into();
                    record.completed_at = now_micros();
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), "erasure could not reach the recommendation service; the request stays in progress");
                    detail.steps.push(format!(
                        "recommendation service: not reached ({:?}); retry with the same idempotency key",
                        s.code()
                    ));
                }
            }
        }
        Err(s) => {
            tracing::warn!(code = ?s.code(), "erasure could not reach the consent service; the request stays in progress");
            detail.steps.push(format!(
                "consent service: not reached ({:?}); retry with the same idempotency key",
                s.code()
            ));
        }
    }
    record.detail = serde_json::to_string(&detail).unwrap_or_else(|_| "{}".into());
    shared
        .store
        .update_request(&record)
        .await
        .map_err(store_status)?;
    Ok(Response::new(pb::EraseSubjectResponse {
        status: Some(erasure_status(&record)),
    }))
}

/// What an export's detail holds.
#[derive(Debug, Default, serde::Deserialize)]
struct ExportDetail {
    #[serde(default)]
    items_exported: u64,
}

/// `GetRequestStatus`: any data-subject request by its id, whatever its kind. The id alone
/// resolves it, as for erasures: the privacy team and auditors prove a request's completion
/// from the id the subject was given, without naming the subject.
pub async fn request_status(
    shared: &Shared,
    request: Request<pb::GetRequestStatusRequest>,
) -> Result<Response<pb::GetRequestStatusResponse>, Status> {
    let r = request.into_inner();
    if uuid::Uuid::parse_str(&r.request_id).is_err() {
        return Err(invalid_argument(
            "request_id",
            "not a request id from EraseSubject, ExportSubjectData or RectifyAttribute",
        ));
    }
    let found = shared
        .store
        .request(&r.request_id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            status(
                Code::NotFound,
                "REQUEST_NOT_FOUND",
                "no data-subject request has this id",
            )
        })?;
    Ok(Response::new(pb::GetRequestStatusResponse {
        status: Some(request_status_pb(shared, &found)),
    }))
}

/// A request of any kind as `GetRequestStatus` shows it.
fn request_status_pb(shared: &Shared, request: &DsarRequest) -> pb::RequestStatus {
    use pb::request_status::Outcome;
    let completed = request.state == "completed";
    let by = if request.requested_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", request.requested_by)
    };
    let at = when(request.requested_at);
    let (kind, outcome, summary) = match request.kind.as_str() {
        "erase" => {
            let erasure = erasure_status(request);
            let summary = format!(
                "Erasure requested{by} on {at}: {}",
                if erasure.steps.is_empty() {
                    "started.".to_owned()
                } else {
                    erasure.steps.join("; ")
                }
            );
            (
                pb::RequestKind::Erasure,
                Some(Outcome::Erasure(erasure)),
                summary,
            )
        }
        "export" => {
            let detail: ExportDetail = serde_json::from_str(&request.detail).unwrap_or_default();
            let summary = format!(
                "Export requested{by} on {at}: {} item(s) of profile data exported, with the consents, corrections and access log.",
                detail.items_exported
            );
            (
                pb::RequestKind::Export,
                Some(Outcome::Export(pb::ExportOutcome {
                    items_exported: detail.items_exported,
                })),
                summary,
            )
        }
        "rectify" => {
            let r = rectification_pb(shared, request);
            let summary = format!(
                "Correction{by} on {at} of the attribute \"{}\" (data category {}).",
                r.attribute, r.data_category
            );
            (
                pb::RequestKind::Rectification,
                Some(Outcome::Rectification(pb::RectificationOutcome {
                    attribute: r.attribute,
                    data_category: r.data_category,
                    reason: r.reason,
                })),
                summary,
            )
        }
        _ => (pb::RequestKind::Unspecified, None, String::new()),
    };
    pb::RequestStatus {
        request_id: request.request_id.clone(),
        kind: kind as i32,
        state: if completed {
            pb::RequestState::Completed
        } else {
            pb::RequestState::InProgress
        } as i32,
        requested_at: Some(timestamp(request.requested_at)),
        completed_at: (request.completed_at > 0).then(|| timestamp(request.completed_at)),
        requested_by: request.requested_by.clone(),
        summary: if completed {
            summary
        } else {
            format!("{summary} (in progress)")
        },
        outcome,
    }
}
