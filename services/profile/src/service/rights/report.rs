//! What is held and who read it: GetAccessReport (the access log, corrections and the
//! withdrawals in force, in plain language) and ExportSubjectData (everything, as one JSON
//! document).

use super::{AccessEntry, AccessReport, Export, Rectification, rfc3339, ts_json, when};
use crate::model::{AccessRecord, DsarRequest, Requester, now_micros};
use crate::service::read::returned_categories;
use crate::service::{Service, ServiceError};
use crate::store::EventQuery;
use crate::withdrawals::phrase;
use consentgate_gate::Clearance;
use consentgate_policy::Policy;
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::reason_of;
use serde_json::{Value, json};
use tonic::{Code, Status};

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

/// What a rectification request's detail names: the attribute and its category, never a value.
#[derive(Debug, Default, serde::Deserialize)]
struct RectificationDetail {
    #[serde(default)]
    attribute: String,
    #[serde(default)]
    data_category: String,
}

/// A rectification as the access report lists it.
pub(super) fn rectification(policy: &Policy, request: &DsarRequest) -> Rectification {
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
        decision: &Clearance,
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
            .consent_part(caller, &decision, &subject)
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
        caller: &CallerIdentity,
        decision: &Clearance,
        subject: &SubjectRef,
    ) -> Result<Option<Consents>, ServiceError> {
        if decision.subject_erased() {
            return Ok(None);
        }
        let mut client = self.gate.consent_client();
        let current = match client
            .get_consents(self.gate.authorized(consent_pb::GetConsentsRequest {
                subject: Some(subject.clone()),
                on_behalf_of: caller.name.clone(),
            }))
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
                .list_consent_history(self.gate.authorized(consent_pb::ListConsentHistoryRequest {
                    subject: Some(subject.clone()),
                    page_size: 500,
                    page_token: page_token.clone(),
                    on_behalf_of: caller.name.clone(),
                }))
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
            .consent_part(caller, &decision, &subject)
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
        let (request_record, _) = store.begin_request("export", &[], &requester).await?;
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
}
