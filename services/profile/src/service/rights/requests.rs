//! Acting on a data-subject request: RectifyAttribute, EraseSubject (with its cascade to the
//! consent and recommendation services), ReapplyErasures (erasures done since a backup, after a
//! restore), and the status of any request by its id.

use super::report::rectification;
use super::{EraseAsk, Erasure, Outcome, Reapply, RectifyAsk, RequestReport, key_of, when};
use crate::access_log::{self, Verification};
use crate::model::{Attribute, DsarRequest, Requester, now_micros};
use crate::request_key::RequestKey;
use crate::service::{Service, ServiceError};
use consentgate_gate::subject_of_key;
use consentgate_policy::Policy;
use consentgate_proto::common::v1::SubjectRef;
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_runtime::CallerIdentity;

impl Service {
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

/// The kind under which a ReapplyErasures run is recorded.
pub const REAPPLY_KIND: &str = "reapply_erasures";

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
        ask: EraseAsk,
    ) -> Result<Erasure, ServiceError> {
        let subject = ask.subject;
        let key = key_of(&subject);
        // Only a digest of the key is kept: callers sometimes build keys from subject ids. Keyed
        // by the deployment's secret; a request begun before it existed is found by its legacy
        // digest (crate::request_key).
        let digest = self.request_key.digest(&ask.idempotency_key);
        let legacy = RequestKey::legacy_digest(&ask.idempotency_key);
        let (mut record, _) = self
            .store
            .begin_request(
                "erase",
                &[&digest, &legacy],
                &Requester {
                    caller: caller.name.clone(),
                    note: String::new(),
                },
            )
            .await?;
        if record.state == "completed" {
            self.metrics.erasure("replayed");
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
            .erase_subject(self.gate.authorized(consent_pb::EraseSubjectRequest {
                subject: Some(subject.clone()),
                idempotency_key: format!("profile-erasure-{}", record.request_id),
                on_behalf_of: caller.name.clone(),
            }))
            .await;
        match consent {
            Ok(reply) => {
                let reply = reply.into_inner();
                // The consent service's tombstone of the subject, kept here so that a consent
                // database restored from an older backup can be given it back.
                if !reply.tombstone.is_empty() {
                    self.store
                        .keep_tombstones(&[hex::encode(&reply.tombstone)])
                        .await?;
                }
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
                    .unlearn(self.gate.authorized(
                        consentgate_proto::recommendation::v1::UnlearnRequest {
                            subject: Some(subject.clone()),
                            on_behalf_of: caller.name.clone(),
                        },
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
        self.metrics.erasure(if record.state == "completed" {
            "completed"
        } else {
            "in_progress"
        });
        Ok(Erasure {
            request: record,
            detail,
        })
    }
}

/// The stored details of a ReapplyErasures run: counts and steps, never a subject.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ReapplyDetail {
    /// Tombstones kept here and given to the consent service.
    pub tombstones_sent: u64,
    /// Of those, tombstones the consent database lacked.
    pub consent_tombstones_restored: u64,
    /// Subjects and devices the consent service erased again.
    pub consent_subjects_erased: u64,
    /// Subjects held here that the consent service reports erased, erased again.
    pub profile_subjects_erased: u64,
    /// Rows those erasures deleted here.
    pub profile_rows_deleted: u64,
    /// Subjects held here, all asked about.
    pub subjects_checked: u64,
    /// Of the subjects erased here again, those the recommendation service held something about.
    pub recommendation_unlearned: u64,
    /// What was done, step by step, in words.
    pub steps: Vec<String>,
    /// Tombstones of the consent service this service lacked, kept now.
    #[serde(default)]
    pub tombstones_copied: u64,
}

/// Tombstones or subjects per call to the consent service (its limit).
const REAPPLY_PAGE: u32 = 1000;

impl Service {
    /// `ReapplyErasures`: after a database was restored from a backup, re-applies every erasure
    /// done since, in two directions (docs/operations.md "Backup and restore"), after keeping a
    /// copy of every tombstone the consent service holds (0):
    ///
    /// 1. the tombstones kept here go to the consent service, page by page, then one sweep
    ///    there: a restored consent database gets back the tombstones it lost and erases again
    ///    the subjects it holds that they name;
    /// 2. every subject held here is asked about (FindErased, 1,000 a call): one the consent
    ///    service reports erased was brought back by a restore of this database, and is erased
    ///    here again, its tombstone kept, and unlearned by the recommendation service.
    ///
    /// Both directions only ever delete what an erasure already deleted once, so it is safe to
    /// run at any time, and a second run finds nothing to do. Linear in the subjects held here
    /// and in the consent database (the sweep), so an operator runs it after a restore (and may
    /// schedule it), rather than every start paying for it. Calls go with this service's own
    /// credentials on behalf of the requesting caller, as the erasure cascade's do. The run is a request: its id, counts and
    /// steps resolve through GetRequestStatus, and name nobody.
    pub async fn reapply_erasures(&self, caller: &CallerIdentity) -> Result<Reapply, ServiceError> {
        let (mut record, _) = self
            .store
            .begin_request(
                REAPPLY_KIND,
                &[],
                &Requester {
                    caller: caller.name.clone(),
                    note: String::new(),
                },
            )
            .await?;
        let mut detail = ReapplyDetail::default();
        if let Err(error) = self.reapply_steps(caller, &mut detail).await {
            tracing::warn!(%error, "re-applying erasures stopped; the run stays in progress");
            detail.steps.push(format!("stopped: {error}; run it again"));
        } else {
            record.state = "completed".into();
            record.completed_at = now_micros();
        }
        tracing::info!(
            consent_restored = detail.consent_tombstones_restored,
            consent_erased = detail.consent_subjects_erased,
            profile_erased = detail.profile_subjects_erased,
            checked = detail.subjects_checked,
            "erasures re-applied"
        );
        record.detail = serde_json::to_string(&detail).unwrap_or_else(|_| "{}".into());
        self.store.update_request(&record).await?;
        Ok(Reapply {
            request: record,
            detail,
        })
    }

    /// The two directions of [`Service::reapply_erasures`]; stops at the first failure (what
    /// was done until then stays done and counted, and a new run resumes it).
    async fn reapply_steps(
        &self,
        caller: &CallerIdentity,
        detail: &mut ReapplyDetail,
    ) -> Result<(), ServiceError> {
        let mut consent = self.gate.consent_client();
        let on_behalf_of = || caller.name.clone();
        // 0. A copy of every tombstone the consent service holds (erasures made before copies
        // were kept, or made there directly), so that a later restore of its database can be
        // healed from here.
        let mut after = Vec::new();
        loop {
            let page = consent
                .list_erasures(self.gate.authorized(consent_pb::ListErasuresRequest {
                    after: after.clone(),
                    page_size: REAPPLY_PAGE,
                    on_behalf_of: on_behalf_of(),
                }))
                .await
                .map_err(unanswered)?
                .into_inner();
            let kept: Vec<String> = page.tombstones.iter().map(hex::encode).collect();
            detail.tombstones_copied += self.store.keep_tombstones(&kept).await?;
            if page.next_after.is_empty() {
                break;
            }
            after = page.next_after;
        }
        // 1. The tombstones kept here, to the consent service; then its sweep.
        let mut after = String::new();
        loop {
            let page = self.store.tombstones_after(&after, REAPPLY_PAGE).await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            let tombstones: Vec<Vec<u8>> =
                page.iter().filter_map(|t| hex::decode(t).ok()).collect();
            detail.tombstones_sent += tombstones.len() as u64;
            let reply = consent
                .reapply_erasures(self.gate.authorized(consent_pb::ReapplyErasuresRequest {
                    tombstones,
                    sweep: false,
                    on_behalf_of: on_behalf_of(),
                }))
                .await
                .map_err(unanswered)?
                .into_inner();
            detail.consent_tombstones_restored += reply.restored;
            after = last;
        }
        let swept = consent
            .reapply_erasures(self.gate.authorized(consent_pb::ReapplyErasuresRequest {
                tombstones: Vec::new(),
                sweep: true,
                on_behalf_of: on_behalf_of(),
            }))
            .await
            .map_err(unanswered)?
            .into_inner();
        detail.consent_subjects_erased += swept.subjects_erased;
        detail.steps.push(format!(
            "profile service: kept a copy of {} erasure tombstone(s) of the consent service it lacked",
            detail.tombstones_copied
        ));
        detail.steps.push(format!(
            "consent service: given {} erasure tombstone(s) kept here, {} of which it lacked; {} subject(s) or device(s) it held erased again ({} consent records deleted)",
            detail.tombstones_sent,
            detail.consent_tombstones_restored,
            detail.consent_subjects_erased,
            swept.records_deleted
        ));
        // 2. Every subject held here, asked about; the erased ones erased here again.
        let mut after = String::new();
        loop {
            let page = self.store.subjects_after(&after, REAPPLY_PAGE).await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            let asked: Vec<SubjectRef> = page.iter().filter_map(|k| subject_of_key(k)).collect();
            after = last;
            if asked.is_empty() {
                continue;
            }
            detail.subjects_checked += asked.len() as u64;
            let erased = consent
                .find_erased(self.gate.authorized(consent_pb::FindErasedRequest {
                    subjects: asked,
                    on_behalf_of: on_behalf_of(),
                }))
                .await
                .map_err(unanswered)?
                .into_inner()
                .erased;
            for found in erased {
                let Some(subject) = found.subject else {
                    continue;
                };
                let key = key_of(&subject);
                let deleted = self.store.erase_subject(&key).await?;
                self.store
                    .keep_tombstones(&[hex::encode(&found.tombstone)])
                    .await?;
                detail.profile_subjects_erased += 1;
                detail.profile_rows_deleted += deleted;
                if let Some(client) = &self.recommendation {
                    let unlearned = client
                        .clone()
                        .unlearn(self.gate.authorized(
                            consentgate_proto::recommendation::v1::UnlearnRequest {
                                subject: Some(subject),
                                on_behalf_of: on_behalf_of(),
                            },
                        ))
                        .await
                        .map_err(unanswered)?;
                    if unlearned.into_inner().forgotten {
                        detail.recommendation_unlearned += 1;
                    }
                }
            }
        }
        detail.steps.push(format!(
            "profile service: asked about the {} subject(s) it holds; {} of them erased again ({} rows deleted), {} unlearned by the recommendation service",
            detail.subjects_checked,
            detail.profile_subjects_erased,
            detail.profile_rows_deleted,
            detail.recommendation_unlearned
        ));
        Ok(())
    }
}

/// A failed call to another service during a data-subject request, by its code.
fn unanswered(status: tonic::Status) -> ServiceError {
    ServiceError::ConsentUnanswered(status.code())
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
        REAPPLY_KIND => {
            let detail: ReapplyDetail = serde_json::from_str(&request.detail).unwrap_or_default();
            let summary = format!(
                "Erasures re-applied after a restore{by} on {at}: {}",
                if detail.steps.is_empty() {
                    "started.".to_owned()
                } else {
                    detail.steps.join("; ")
                }
            );
            (Outcome::Reapply(detail), summary)
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
