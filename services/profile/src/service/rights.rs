//! Data-subject rights, the front door for the privacy team: access report, export, rectification,
//! erasure, and the status of any of these requests by its id. Reads pass the gate like any
//! other, under the essential purpose `essential.legal_obligation` on behalf of the privacy
//! team's caller; calls to the consent service forward the caller's own credentials, so the
//! profile service holds no standing right to read consent histories or erase subjects there.

use super::read::returned_categories;
use super::{DSAR_PURPOSE, Service, ServiceError};
use crate::access_log::{self, Verification};
use crate::model::{AccessRecord, Attribute, DsarRequest, Requester, now_micros};
use crate::store::EventQuery;
use crate::withdrawals::phrase;
use consentgate_gate::{Decision, subject_key};
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::reason_of;
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Status};

/// The caller's own credentials (its `authorization` header), forwarded on the calls a
/// data-subject request makes to the consent and recommendation services.
#[derive(Debug, Clone)]
pub struct Credentials(pub MetadataValue<Ascii>);

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
    ) -> Result<Decision, ServiceError> {
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

fn forwarded<T>(message: T, auth: &Credentials) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", auth.0.clone());
    request.set_timeout(std::time::Duration::from_secs(10));
    request
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

/// An access-log record as the report tells it.
fn access_entry(policy: &Policy, e: &AccessRecord) -> AccessEntry {
    let categories: Vec<String> = e
        .categories
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let purpose_description = policy
        .purposes
        .get(&e.purpose)
        .map(|p| p.description.clone())
        .unwrap_or_default();
    let what = categories
        .iter()
        .map(|c| {
            policy
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
    AccessEntry {
        read_at: e.read_at,
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
fn rectification(policy: &Policy, request: &DsarRequest) -> Rectification {
    let detail: RectificationDetail = serde_json::from_str(&request.detail).unwrap_or_default();
    let category = policy
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
    Rectification {
        request_id: request.request_id.clone(),
        rectified_at: request.completed_at,
        rectified_by: request.requested_by.clone(),
        attribute: detail.attribute,
        data_category: detail.data_category,
        reason: request.note.clone(),
        statement,
    }
}

impl Service {
    /// The subject's rectifications, oldest first.
    async fn rectifications(
        &self,
        decision: &Decision,
    ) -> Result<Vec<Rectification>, ServiceError> {
        Ok(self
            .store
            .subject_requests(decision)
            .await?
            .iter()
            .filter(|r| r.kind == "rectify")
            .map(|r| rectification(&self.policy, r))
            .collect())
    }

    /// `GetAccessReport`: who read the subject's data, what was corrected at its request, and
    /// the withdrawals and refusals in force, in plain language.
    pub async fn access_report(
        &self,
        caller: &CallerIdentity,
        auth: &Credentials,
        subject: SubjectRef,
    ) -> Result<AccessReport, ServiceError> {
        let decision = self.dsar_decision(caller, &subject).await?;
        let records = self.store.access_entries(&decision).await?;
        let entries: Vec<AccessEntry> = records
            .iter()
            .map(|e| access_entry(&self.policy, e))
            .collect();
        let rectifications = self.rectifications(&decision).await?;
        // None: the consent service erased the subject and holds no consents to report.
        let consent_statements = self
            .consent_part(&decision, &subject, auth)
            .await?
            .map(|consents| crate::withdrawals::statements(&self.policy, &consents.history))
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
        Ok(AccessReport {
            entries,
            summary,
            rectifications,
            consent_statements,
        })
    }
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

impl Service {
    /// The subject's consents and their history from the consent service; `None` when it was
    /// erased there. The decision's `subject_erased()` usually says so first, but a decision the
    /// gate cached just before an erasure can still allow until the erasure's change event
    /// arrives: the consent service's own answer settles it.
    async fn consent_part(
        &self,
        decision: &Decision,
        subject: &SubjectRef,
        auth: &Credentials,
    ) -> Result<Option<Consents>, ServiceError> {
        if decision.subject_erased() {
            return Ok(None);
        }
        let mut client = self.gate.consent_client();
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
            Err(s) => return Err(ServiceError::ConsentUnanswered(s.code())),
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
                Err(s) => return Err(ServiceError::ConsentUnanswered(s.code())),
            };
            history.extend(page.records);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(Some(Consents { current, history }))
    }
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

impl Service {
    /// `ExportSubjectData`: everything held about the subject, as one JSON document.
    pub async fn export(
        &self,
        caller: &CallerIdentity,
        auth: &Credentials,
        subject: SubjectRef,
    ) -> Result<Export, ServiceError> {
        let decision = self.dsar_decision(caller, &subject).await?;
        let store = &self.store;
        let attributes = store.attributes(&decision).await?;
        let answers = store.answers(&decision).await?;
        let mut events = Vec::new();
        let mut query = EventQuery {
            limit: 1000,
            ..EventQuery::default()
        };
        loop {
            let page = store.events(&decision, &query).await?;
            let done = page.len() < 1000;
            query.after = page.last().map(|e| (e.occurred_at, e.event_id.clone()));
            events.extend(page);
            if done {
                break;
            }
        }
        let (consents, consent_history, consent_statements) = match self
            .consent_part(&decision, &subject, auth)
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
                let said = crate::withdrawals::statements(&self.policy, &part.history);
                (
                    current,
                    history,
                    Value::Array(said.iter().map(statement_json).collect()),
                )
            }
        };
        let rectifications: Vec<Value> = self
            .rectifications(&decision)
            .await?
            .iter()
            .map(|r| {
                json!({
                    "request_id": r.request_id,
                    "rectified_at": rfc3339(r.rectified_at),
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
        let (request_record, _) = store.begin_request("export", None, &requester).await?;
        let items = attributes.len() + answers.len() + events.len();
        let returned = returned_categories(
            attributes
                .iter()
                .map(|a| a.category.as_str())
                .chain(answers.iter().map(|a| a.kind.category()))
                .chain(events.iter().map(|e| e.kind.category())),
        );
        self.log_read(&decision, "ExportSubjectData", returned, items)
            .await?;
        let access: Vec<Value> = store
            .access_entries(&decision)
            .await?
            .iter()
            .map(|e| {
                let entry = access_entry(&self.policy, e);
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
            "controller": self.policy.controller,
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
        store.update_request(&done).await?;
        Ok(Export {
            request_id: done.request_id,
            document_json: serde_json::to_string_pretty(&document).unwrap_or_default(),
            generated_at,
        })
    }

    /// `RectifyAttribute`: corrects a value; the corrected attribute and the request's id.
    pub async fn rectify(
        &self,
        caller: &CallerIdentity,
        ask: RectifyAsk,
    ) -> Result<(Attribute, String), ServiceError> {
        let decision = self.dsar_decision(caller, &ask.subject).await?;
        let requester = Requester {
            caller: caller.name.clone(),
            note: ask.reason,
        };
        // The correction and its request are one transaction; the request names the attribute and
        // its category, never a value (nor does anything logged here).
        let (attribute, record) = self
            .store
            .rectify(&decision, &ask.name, &ask.value, &requester)
            .await?
            .ok_or(ServiceError::AttributeNotFound)?;
        Ok((attribute, record.request_id))
    }
}

/// The stored details of an erasure.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ErasureDetail {
    /// Profile rows deleted, over every sweep.
    pub profile_rows_deleted: u64,
    /// Consent records the consent service deleted.
    pub consent_records_deleted: u64,
    /// The consent service's revision after the erasure.
    pub consent_revision: u64,
    /// What was done, step by step, in words.
    pub steps: Vec<String>,
}

impl Erasure {
    /// An erasure request with its stored details.
    fn of(request: DsarRequest) -> Erasure {
        let detail = serde_json::from_str(&request.detail).unwrap_or_default();
        Erasure { request, detail }
    }
}

impl Service {
    /// `EraseSubject`: deletes the subject's profile data, erases it in the consent service, then
    /// sweeps once more (a write that raced the first delete was still allowed then, and is refused
    /// after). Idempotent by key; a retry resumes an unfinished request.
    pub async fn erase(
        &self,
        caller: &CallerIdentity,
        auth: &Credentials,
        ask: EraseAsk,
    ) -> Result<Erasure, ServiceError> {
        let subject = ask.subject;
        let key = key_of(&subject);
        // Only a digest of the key is kept: callers sometimes build keys from subject ids.
        let idempotency = consentgate_runtime::telemetry::pseudonymize(
            b"erasure-idempotency",
            &ask.idempotency_key,
        );
        let (mut record, _) = self
            .store
            .begin_request(
                "erase",
                Some(&idempotency),
                &Requester {
                    caller: caller.name.clone(),
                    note: String::new(),
                },
            )
            .await?;
        if record.state == "completed" {
            return Ok(Erasure::of(record));
        }
        let mut detail: ErasureDetail = serde_json::from_str(&record.detail).unwrap_or_default();
        let deleted = self.store.erase_subject(&key).await?;
        detail.profile_rows_deleted += deleted;
        detail.steps.push(format!(
            "profile service: deleted {deleted} rows (attributes, events, answers, access-log key)"
        ));
        let mut client = self.gate.consent_client();
        let consent = client
            .erase_subject(forwarded(
                consent_pb::EraseSubjectRequest {
                    subject: Some(subject.clone()),
                    idempotency_key: format!("profile-erasure-{}", record.request_id),
                },
                auth,
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
                let swept = self.store.erase_subject(&key).await?;
                detail.profile_rows_deleted += swept;
                detail
                    .steps
                    .push(format!("profile service: final sweep deleted {swept} rows"));
                let unlearned = match &self.recommendation {
                None => Ok("recommendation service: not connected".to_owned()),
                Some(client) => client
                    .clone()
                    .unlearn(forwarded(
                        consentgate_proto::recommendation::v1::UnlearnRequest {
                            subject: Some(subject.clone()),
                        },
                        auth,
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
        self.store.update_request(&record).await?;
        Ok(Erasure {
            request: record,
            detail,
        })
    }
}

/// What an export's detail holds.
#[derive(Debug, Default, serde::Deserialize)]
struct ExportDetail {
    #[serde(default)]
    items_exported: u64,
}

impl Service {
    /// `GetErasureStatus`: an erasure request by its id.
    pub async fn erasure_status(&self, request_id: &str) -> Result<Erasure, ServiceError> {
        self.store
            .request(request_id)
            .await?
            .filter(|q| q.kind == "erase")
            .map(Erasure::of)
            .ok_or(ServiceError::ErasureNotFound)
    }

    /// `GetRequestStatus`: any data-subject request by its id, whatever its kind. The id alone
    /// resolves it, as for erasures: the privacy team and auditors prove a request's completion
    /// from the id the subject was given, without naming the subject.
    pub async fn request_status(&self, request_id: &str) -> Result<RequestReport, ServiceError> {
        let found = self
            .store
            .request(request_id)
            .await?
            .ok_or(ServiceError::RequestNotFound)?;
        Ok(request_report(&self.policy, found))
    }

    /// `VerifyAccessLog`: walks the access log's hash chain.
    pub async fn verify_access_log(&self) -> Result<Verification, ServiceError> {
        Ok(access_log::verify(self.store.as_ref()).await?)
    }
}

/// A request of any kind as `GetRequestStatus` tells it.
fn request_report(policy: &Policy, request: DsarRequest) -> RequestReport {
    let by = if request.requested_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", request.requested_by)
    };
    let at = when(request.requested_at);
    let (outcome, summary) = match request.kind.as_str() {
        "erase" => {
            let detail: ErasureDetail = serde_json::from_str(&request.detail).unwrap_or_default();
            let summary = format!(
                "Erasure requested{by} on {at}: {}",
                if detail.steps.is_empty() {
                    "started.".to_owned()
                } else {
                    detail.steps.join("; ")
                }
            );
            (Outcome::Erasure(detail), summary)
        }
        "export" => {
            let detail: ExportDetail = serde_json::from_str(&request.detail).unwrap_or_default();
            let summary = format!(
                "Export requested{by} on {at}: {} item(s) of profile data exported, with the consents, corrections and access log.",
                detail.items_exported
            );
            (
                Outcome::Export {
                    items_exported: detail.items_exported,
                },
                summary,
            )
        }
        "rectify" => {
            let r = rectification(policy, &request);
            let summary = format!(
                "Correction{by} on {at} of the attribute \"{}\" (data category {}).",
                r.attribute, r.data_category
            );
            (Outcome::Rectification(r), summary)
        }
        _ => (Outcome::Unknown, String::new()),
    };
    let summary = if request.state == "completed" {
        summary
    } else {
        format!("{summary} (in progress)")
    };
    RequestReport {
        request,
        summary,
        outcome,
    }
}
