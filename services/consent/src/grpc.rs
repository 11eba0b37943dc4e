//! The gRPC adapter: validates requests, converts protobuf ⇄ domain types, calls the engine,
//! and maps every error to a `google.rpc.Status` in one place ([`status_of`]).

use crate::engine::{CheckQuery, Engine, EngineError};
use crate::ledger;
use crate::model::{Change, NewConsent, StoredRecord, SubjectKey, Write, WriteOutcome};
use crate::receipt;
use consentgate_policy::{Channel, Decision, LegalBasis, Personalization, Reason, Verdict};
use consentgate_proto::common::v1 as common;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_server::ConsentService;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::{Violations, invalid_arguments, status};
use prost::Message;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// Most checks one BatchCheck may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest subject or device id accepted.
const MAX_ID_LEN: usize = 256;
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 128;

/// The ConsentService implementation.
pub struct ConsentApi {
    engine: Arc<Engine>,
    /// Keys log pseudonyms of subject ids; random per process and never logged.
    log_key: [u8; 32],
}

impl ConsentApi {
    /// The service over an engine.
    pub fn new(engine: Arc<Engine>) -> Self {
        ConsentApi {
            engine,
            log_key: ledger::random_key(),
        }
    }

    fn pseudonym(&self, subject: &SubjectKey) -> String {
        consentgate_chain::log_pseudonym(&self.log_key, &subject.storage())
    }
}

/// Maps engine errors to statuses with reason codes. Store failures do not leak details.
pub fn status_of(error: EngineError) -> Status {
    match error {
        EngineError::Invalid(violations) => invalid_arguments(violations),
        EngineError::Erased => status(
            Code::FailedPrecondition,
            "SUBJECT_ERASED",
            "the subject was erased; nothing more is recorded about it",
        ),
        EngineError::IdempotencyConflict => status(
            Code::FailedPrecondition,
            "IDEMPOTENCY_KEY_REUSED",
            "idempotency_key was already used for a different request",
        ),
        EngineError::Store(e) => {
            tracing::error!(error = %e.log_safe(), "consent store failed");
            status(
                Code::Unavailable,
                "STORE_UNAVAILABLE",
                "the consent store is unavailable; retry later",
            )
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<Arc<CallerIdentity>, Status> {
    CallerIdentity::of(request)
}

fn valid_id(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Some("must be at most 256 bytes")
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

fn subject(
    v: &mut Violations,
    field: &str,
    subject: Option<&common::SubjectRef>,
) -> Option<SubjectKey> {
    use common::subject_ref::Id;
    match subject.and_then(|s| s.id.as_ref()) {
        None => {
            v.add(field, "required: set subject_id or device_id");
            None
        }
        Some(Id::SubjectId(id)) => match valid_id(id) {
            Some(why) => {
                v.add(format!("{field}.subject_id"), why);
                None
            }
            None => Some(SubjectKey::Subject(id.clone())),
        },
        Some(Id::DeviceId(id)) => match valid_id(id) {
            Some(why) => {
                v.add(format!("{field}.device_id"), why);
                None
            }
            None => Some(SubjectKey::Device(id.clone())),
        },
    }
}

fn idempotency_key(v: &mut Violations, key: &str) {
    if key.is_empty() {
        v.add(
            "idempotency_key",
            "required: retries with the same key are answered once",
        );
    } else if key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        v.add("idempotency_key", "must be at most 128 printable bytes");
    }
}

fn subject_ref(key: &SubjectKey) -> common::SubjectRef {
    use common::subject_ref::Id;
    common::SubjectRef {
        id: Some(match key {
            SubjectKey::Subject(s) => Id::SubjectId(s.clone()),
            SubjectKey::Device(d) => Id::DeviceId(d.clone()),
        }),
    }
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

fn from_timestamp(t: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()?
        .replace_nanosecond(u32::try_from(t.nanos).ok()?)
        .ok()
}

/// SHA-256 of the request with its idempotency key cleared: a reused key must carry the same request.
fn fingerprint<M: Message + Clone>(message: &M, clear_key: impl FnOnce(&mut M)) -> [u8; 32] {
    let mut m = message.clone();
    clear_key(&mut m);
    Sha256::digest(m.encode_to_vec()).into()
}

/// IPv4 truncated to /24 and IPv6 to /48 before anything is stored.
fn anonymize_ip(v: &mut Violations, text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(ip)) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        Err(_) => {
            v.add("source.ip_address", "not an IP address");
            String::new()
        }
    }
}

fn collection_method(m: i32) -> &'static str {
    match pb::CollectionMethod::try_from(m).unwrap_or(pb::CollectionMethod::Unspecified) {
        pb::CollectionMethod::PreferenceCenter => "preference_center",
        pb::CollectionMethod::Banner => "banner",
        pb::CollectionMethod::Survey => "survey",
        pb::CollectionMethod::GpcSignal => "gpc_signal",
        pb::CollectionMethod::Import => "import",
        pb::CollectionMethod::Api | pb::CollectionMethod::Unspecified => "api",
    }
}

fn collection_method_pb(m: &str) -> i32 {
    (match m {
        "preference_center" => pb::CollectionMethod::PreferenceCenter,
        "banner" => pb::CollectionMethod::Banner,
        "survey" => pb::CollectionMethod::Survey,
        "gpc_signal" => pb::CollectionMethod::GpcSignal,
        "import" => pb::CollectionMethod::Import,
        _ => pb::CollectionMethod::Api,
    }) as i32
}

/// Validates the shared part of Grant/Refuse/Withdraw against the policy.
struct Target {
    subject: SubjectKey,
    purpose: String,
    scope: Option<String>,
    channel: Option<String>,
}

impl ConsentApi {
    fn target(
        &self,
        v: &mut Violations,
        target: Option<&pb::ConsentTarget>,
        granting: bool,
    ) -> Option<Target> {
        let Some(t) = target else {
            v.add("target", "required");
            return None;
        };
        let policy = self.engine.policy();
        let subject = subject(v, "target.subject", t.subject.as_ref());
        let purpose = policy.purposes.get(&t.purpose);
        if t.purpose.is_empty() {
            v.add("target.purpose", "required");
        } else if purpose.is_none() {
            v.add("target.purpose", format!("unknown purpose {:?}", t.purpose));
        }
        let scope = (!t.data_category.is_empty()).then(|| t.data_category.clone());
        if let (Some(scope), Some(p)) = (&scope, purpose) {
            if !policy.categories.contains_key(scope) {
                v.add(
                    "target.data_category",
                    format!("unknown data category {scope:?}"),
                );
            } else if !p.needs(scope) {
                v.add(
                    "target.data_category",
                    format!("purpose {:?} does not use {scope:?}", p.key),
                );
            }
        }
        let channel = (!t.channel.is_empty()).then(|| t.channel.clone());
        if let Some(p) = purpose {
            match &channel {
                Some(c) => match Channel::parse(c) {
                    None => v.add(
                        "target.channel",
                        format!("unknown channel {c:?} (expected email, sms, push or in_app)"),
                    ),
                    Some(ch) if !p.channels.contains(&ch) => v.add(
                        "target.channel",
                        format!("purpose {:?} has no channel {c:?}", p.key),
                    ),
                    Some(_) => {}
                },
                None if granting && !p.channels.is_empty() => v.add(
                    "target.channel",
                    format!(
                        "purpose {:?} is channel-scoped: consent is given per channel",
                        p.key
                    ),
                ),
                None => {}
            }
        }
        Some(Target {
            subject: subject?,
            purpose: t.purpose.clone(),
            scope,
            channel,
        })
    }

    fn jurisdiction(&self, v: &mut Violations, code: &str) -> String {
        match self.engine.policy().jurisdiction(code) {
            Some(j) => j.code.clone(),
            None => {
                v.add("jurisdiction", format!("unknown jurisdiction {code:?}"));
                String::new()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn consent(
        &self,
        v: &mut Violations,
        target: Target,
        state: &str,
        consent_type: &str,
        jurisdiction: &str,
        notice_version: &str,
        method: i32,
        source: Option<&pb::ConsentSource>,
    ) -> NewConsent {
        let policy = self.engine.policy();
        let purpose = &policy.purposes[&target.purpose];
        let basis = policy
            .jurisdiction(jurisdiction)
            .map_or(LegalBasis::Consent, |j| policy.legal_basis(purpose, j));
        let source_ip = anonymize_ip(v, source.map_or("", |s| s.ip_address.as_str()));
        let user_agent: String = source
            .map_or("", |s| s.user_agent.as_str())
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        NewConsent {
            record_id: uuid::Uuid::now_v7().to_string(),
            subject: target.subject,
            purpose: target.purpose,
            scope: target.scope,
            channel: target.channel,
            state: state.to_owned(),
            consent_type: consent_type.to_owned(),
            legal_basis: basis.as_str().to_owned(),
            jurisdiction: jurisdiction.to_owned(),
            notice_id: purpose.notice_id.clone(),
            notice_version: if notice_version.is_empty() {
                purpose.notice_version.text.clone()
            } else {
                notice_version.to_owned()
            },
            collection_method: collection_method(method).to_owned(),
            collected_at: OffsetDateTime::now_utc(),
            expires_at: None,
            source_ip,
            user_agent,
            guardian_ref: None,
            receipt: None,
        }
    }

    async fn record(
        &self,
        caller: &CallerIdentity,
        key: &str,
        fingerprint: [u8; 32],
        change: Change,
    ) -> Result<WriteOutcome, Status> {
        let kind = change.kind();
        let who = self.pseudonym(change.subject());
        let outcome = self
            .engine
            .record(Write {
                caller: caller.name.clone(),
                idempotency_key: key.to_owned(),
                fingerprint,
                change,
            })
            .await
            .map_err(status_of)?;
        tracing::info!(caller = %caller.name, kind, subject = %who, revision = outcome.revision, replayed = outcome.replayed, "consent change recorded");
        Ok(outcome)
    }
}

fn record_pb(r: &StoredRecord, now: OffsetDateTime) -> pb::ConsentRecord {
    let c = &r.consent;
    let state = match c.state.as_str() {
        "given" if c.expires_at.is_some_and(|e| e <= now) => pb::ConsentState::Expired,
        "given" => pb::ConsentState::Given,
        "refused" => pb::ConsentState::Refused,
        _ => pb::ConsentState::Withdrawn,
    };
    pb::ConsentRecord {
        record_id: c.record_id.clone(),
        subject: Some(subject_ref(&c.subject)),
        purpose: c.purpose.clone(),
        data_category: c.scope.clone().unwrap_or_default(),
        channel: c.channel.clone().unwrap_or_default(),
        state: state as i32,
        consent_type: (if c.consent_type == "explicit" {
            pb::ConsentType::Explicit
        } else {
            pb::ConsentType::Expressed
        }) as i32,
        legal_basis: c.legal_basis.clone(),
        jurisdiction: c.jurisdiction.clone(),
        notice_id: c.notice_id.clone(),
        notice_version: c.notice_version.clone(),
        collection_method: collection_method_pb(&c.collection_method),
        collected_at: Some(timestamp(c.collected_at)),
        expires_at: c.expires_at.map(timestamp),
        source: Some(pb::ConsentSource {
            ip_address: c.source_ip.clone(),
            user_agent: c.user_agent.clone(),
        }),
        guardian_ref: c.guardian_ref.clone().unwrap_or_default(),
        revision: r.revision,
        overridden_by_record_id: String::new(),
    }
}

/// Converts a decision to its wire form; the trace only when asked for.
pub fn decision_pb(d: &Decision, include_explanation: bool) -> pb::CheckResponse {
    pb::CheckResponse {
        verdict: match d.verdict {
            Verdict::Allow => pb::Verdict::Allow,
            Verdict::Partial => pb::Verdict::Partial,
            Verdict::Deny => pb::Verdict::Deny,
        } as i32,
        reason: d.reason.map(Reason::code).unwrap_or_default().to_owned(),
        categories: d
            .categories
            .iter()
            .map(|c| pb::CategoryDecision {
                data_category: c.category.clone().unwrap_or_default(),
                allowed: c.denied.is_none(),
                reason: c.denied.map(Reason::code).unwrap_or_default().to_owned(),
                detail: c.detail.clone(),
            })
            .collect(),
        personalization_level: match d.personalization {
            Personalization::Anonymous => common::PersonalizationLevel::Anonymous,
            Personalization::Contextual => common::PersonalizationLevel::Contextual,
            Personalization::Segment => common::PersonalizationLevel::Segment,
            Personalization::Limited => common::PersonalizationLevel::Limited,
            Personalization::Profiled => common::PersonalizationLevel::Profiled,
        } as i32,
        obligations: d
            .obligations
            .iter()
            .map(|o| pb::Obligation {
                kind: o.kind.to_owned(),
                values: o.values.clone(),
            })
            .collect(),
        revision: d.revision,
        valid_until: Some(timestamp(d.valid_until)),
        conflicts: d.conflicts.clone(),
        explanation: d
            .explanation
            .iter()
            .filter(|_| include_explanation)
            .map(|s| pb::ExplanationStep {
                rule: s.rule.to_owned(),
                outcome: s.outcome.clone(),
                detail: s.detail.clone(),
                record_ids: s.record_ids.clone(),
            })
            .collect(),
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

impl ConsentApi {
    /// Validates one Check (fields prefixed with `prefix`) and returns the query and the caller the
    /// caller-purpose rule applies to.
    fn check_query(
        &self,
        v: &mut Violations,
        prefix: &str,
        caller: &CallerIdentity,
        c: &pb::CheckRequest,
    ) -> Option<(CheckQuery, String)> {
        let mut local = Violations::default();
        let subject = subject(&mut local, "subject", c.subject.as_ref());
        let at_least_as_fresh = if c.at_least_as_fresh.is_empty() {
            0
        } else {
            c.at_least_as_fresh.parse::<u64>().unwrap_or_else(|_| {
                local.add(
                    "at_least_as_fresh",
                    "malformed consistency token: pass the `revision` a write returned",
                );
                0
            })
        };
        let effective = if c.on_behalf_of.is_empty() {
            caller.name.clone()
        } else if !self.engine.policy().callers.contains_key(&c.on_behalf_of) {
            local.add(
                "on_behalf_of",
                format!("unknown caller {:?}", c.on_behalf_of),
            );
            String::new()
        } else {
            c.on_behalf_of.clone()
        };
        let context = c.context.clone().unwrap_or_default();
        let query = CheckQuery {
            // Validated above; a placeholder lets the policy checks below still name their fields.
            subject: subject
                .clone()
                .unwrap_or(SubjectKey::Subject(String::new())),
            purpose: c.purpose.clone(),
            categories: c.data_categories.clone(),
            channel: c.channel.clone(),
            jurisdiction: context.jurisdiction,
            gpc: context.gpc,
            at_least_as_fresh,
            explain: c.include_explanation,
        };
        if c.purpose.is_empty() {
            local.add("purpose", "required");
        } else if let Err(e) = self.engine.validate_check(&query) {
            local.add(e.field(), e.to_string());
        }
        let ok = local.is_empty() && subject.is_some();
        v.extend_prefixed(prefix, local);
        ok.then_some((query, effective))
    }
}

/// The fields Refuse and Withdraw share.
struct ConsentChange<'a> {
    state: &'static str,
    target: Option<&'a pb::ConsentTarget>,
    jurisdiction: &'a str,
    notice_version: &'a str,
    collection_method: i32,
    source: Option<&'a pb::ConsentSource>,
    idempotency_key: &'a str,
}

impl ConsentApi {
    /// Validates and records a refusal or withdrawal (no channel needed: it covers every channel).
    async fn record_refusal_or_withdrawal(
        &self,
        caller: &CallerIdentity,
        c: ConsentChange<'_>,
        fp: [u8; 32],
    ) -> Result<(Option<pb::ConsentRecord>, u64), Status> {
        let mut v = Violations::default();
        idempotency_key(&mut v, c.idempotency_key);
        let target = self.target(&mut v, c.target, false);
        let jurisdiction = self.jurisdiction(&mut v, c.jurisdiction);
        if !c.notice_version.is_empty()
            && consentgate_policy::NoticeVersion::parse(c.notice_version).is_none()
        {
            v.add("notice_version", "must look like 2 or 2.1");
        }
        let Some(target) = target.filter(|_| v.is_empty()) else {
            return Err(v
                .finish()
                .err()
                .unwrap_or_else(|| Status::internal("validation")));
        };
        let consent = self.consent(
            &mut v,
            target,
            c.state,
            "expressed",
            &jurisdiction,
            c.notice_version,
            c.collection_method,
            c.source,
        );
        v.finish()?;
        let outcome = self
            .record(caller, c.idempotency_key, fp, Change::Consent(consent))
            .await?;
        let record = outcome
            .record
            .as_ref()
            .map(|rec| record_pb(rec, OffsetDateTime::now_utc()));
        Ok((record, outcome.revision))
    }
}

fn delegation_allowed(caller: &CallerIdentity, c: &pb::CheckRequest) -> Result<(), Status> {
    if !c.on_behalf_of.is_empty() && !caller.has_role("enforcer") {
        return Err(status(
            Code::PermissionDenied,
            "DELEGATION_NOT_PERMITTED",
            "only enforcers may decide on behalf of another caller",
        ));
    }
    Ok(())
}

type WatchStream = ReceiverStream<Result<pb::WatchChangesResponse, Status>>;

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        idempotency_key(&mut v, &r.idempotency_key);
        let target = self.target(&mut v, r.target.as_ref(), true);
        let jurisdiction = self.jurisdiction(&mut v, &r.jurisdiction);
        let consent_type = match pb::ConsentType::try_from(r.consent_type) {
            Ok(pb::ConsentType::Explicit) => "explicit",
            Ok(pb::ConsentType::Expressed) => "expressed",
            _ => {
                v.add(
                    "consent_type",
                    "required: CONSENT_TYPE_EXPLICIT or CONSENT_TYPE_EXPRESSED",
                );
                ""
            }
        };
        if r.notice_version.is_empty() {
            v.add(
                "notice_version",
                "required: the version of the notice the person saw",
            );
        } else if consentgate_policy::NoticeVersion::parse(&r.notice_version).is_none() {
            v.add("notice_version", "must look like 2 or 2.1");
        }
        let language = if r.language.is_empty() {
            "en".to_owned()
        } else {
            r.language.clone()
        };
        if language.len() > 35
            || !language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            v.add("language", "must be a BCP 47 language tag");
        }
        let now = OffsetDateTime::now_utc();
        let expires_at = match &r.expires_at {
            None => None,
            Some(t) => match from_timestamp(t) {
                Some(e) if e > now => Some(e),
                Some(_) => {
                    v.add("expires_at", "must be in the future");
                    None
                }
                None => {
                    v.add("expires_at", "not a valid timestamp");
                    None
                }
            },
        };
        if r.guardian_ref.len() > MAX_ID_LEN {
            v.add("guardian_ref", "must be at most 256 bytes");
        }
        let Some(target) = target.filter(|_| v.is_empty()) else {
            return Err(v
                .finish()
                .err()
                .unwrap_or_else(|| Status::internal("validation")));
        };
        let retention = self.engine.policy().purposes[&target.purpose].retention_days;
        let mut consent = self.consent(
            &mut v,
            target,
            "given",
            consent_type,
            &jurisdiction,
            &r.notice_version,
            r.collection_method,
            r.source.as_ref(),
        );
        v.finish()?;
        // The policy's retention caps how long a consent lasts.
        let cap = (retention > 0).then(|| now + time::Duration::days(i64::from(retention)));
        consent.expires_at = match (expires_at, cap) {
            (Some(e), Some(c)) => Some(e.min(c)),
            (e, c) => e.or(c),
        };
        consent.guardian_ref = (!r.guardian_ref.is_empty()).then(|| r.guardian_ref.clone());
        consent.receipt = Some(receipt::issue(
            self.engine.policy(),
            self.engine.keys(),
            &consent,
            &language,
        ));
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let outcome = self
            .record(&caller, &r.idempotency_key, fp, Change::Consent(consent))
            .await?;
        let record = outcome
            .record
            .as_ref()
            .ok_or_else(|| Status::internal("grant recorded no record"))?;
        Ok(Response::new(pb::GrantResponse {
            record: Some(record_pb(record, OffsetDateTime::now_utc())),
            revision: outcome.revision,
            receipt_jws: record
                .consent
                .receipt
                .as_ref()
                .map(|(_, jws)| jws.clone())
                .unwrap_or_default(),
        }))
    }

    async fn refuse(
        &self,
        request: Request<pb::RefuseRequest>,
    ) -> Result<Response<pb::RefuseResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let change = ConsentChange {
            state: "refused",
            target: r.target.as_ref(),
            jurisdiction: &r.jurisdiction,
            notice_version: &r.notice_version,
            collection_method: r.collection_method,
            source: r.source.as_ref(),
            idempotency_key: &r.idempotency_key,
        };
        let (record, revision) = self
            .record_refusal_or_withdrawal(&caller, change, fp)
            .await?;
        Ok(Response::new(pb::RefuseResponse { record, revision }))
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let change = ConsentChange {
            state: "withdrawn",
            target: r.target.as_ref(),
            jurisdiction: &r.jurisdiction,
            notice_version: "",
            collection_method: r.collection_method,
            source: r.source.as_ref(),
            idempotency_key: &r.idempotency_key,
        };
        let (record, revision) = self
            .record_refusal_or_withdrawal(&caller, change, fp)
            .await?;
        Ok(Response::new(pb::WithdrawResponse { record, revision }))
    }

    async fn record_signal(
        &self,
        request: Request<pb::RecordSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        idempotency_key(&mut v, &r.idempotency_key);
        let subject = subject(&mut v, "subject", r.subject.as_ref());
        let kind = match pb::SignalKind::try_from(r.kind) {
            Ok(pb::SignalKind::Gpc) => {
                v.check(
                    r.value != "0" && r.value != "1",
                    "value",
                    "a GPC signal's value is \"1\" (present) or \"0\" (cleared)",
                );
                "gpc"
            }
            Ok(pb::SignalKind::AgeBand) => {
                v.check(
                    consentgate_policy::AgeBand::parse(&r.value).is_none(),
                    "value",
                    "an age band is one of under_13, 13_15, 16_17, adult",
                );
                "age_band"
            }
            Ok(pb::SignalKind::Guardian) => {
                v.check(
                    valid_id(&r.value).is_some(),
                    "value",
                    "a guardian reference must be 1 to 256 printable bytes",
                );
                "guardian"
            }
            _ => {
                v.add(
                    "kind",
                    "required: SIGNAL_KIND_GPC, SIGNAL_KIND_AGE_BAND or SIGNAL_KIND_GUARDIAN",
                );
                ""
            }
        };
        v.check(
            pb::CollectionMethod::try_from(r.collection_method).is_err(),
            "collection_method",
            "unknown collection method",
        );
        v.finish()?;
        let subject = subject.ok_or_else(|| Status::internal("validated subject"))?;
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let outcome = self
            .record(
                &caller,
                &r.idempotency_key,
                fp,
                Change::Signal {
                    subject,
                    kind: kind.to_owned(),
                    value: r.value.clone(),
                    collection_method: collection_method(r.collection_method).to_owned(),
                },
            )
            .await?;
        Ok(Response::new(pb::RecordSignalResponse {
            revision: outcome.revision,
        }))
    }

    async fn link_identity(
        &self,
        request: Request<pb::LinkIdentityRequest>,
    ) -> Result<Response<pb::LinkIdentityResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        idempotency_key(&mut v, &r.idempotency_key);
        if let Some(why) = valid_id(&r.device_id) {
            v.add("device_id", why);
        }
        if let Some(why) = valid_id(&r.subject_id) {
            v.add("subject_id", why);
        }
        v.finish()?;
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let change = Change::Link {
            device: SubjectKey::Device(r.device_id.clone()),
            subject: SubjectKey::Subject(r.subject_id.clone()),
        };
        let outcome = self.record(&caller, &r.idempotency_key, fp, change).await?;
        Ok(Response::new(pb::LinkIdentityResponse {
            revision: outcome.revision,
        }))
    }

    async fn get_consents(
        &self,
        request: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        let subject = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let subject = subject.ok_or_else(|| Status::internal("validated subject"))?;
        let rows = self.engine.rows(&subject).await.map_err(status_of)?;
        if rows.erased {
            return Err(status_of(EngineError::Erased));
        }
        let now = OffsetDateTime::now_utc();
        let current = crate::engine::to_state(&rows);
        let current_ids: std::collections::HashSet<&str> =
            current.records.iter().map(|r| r.id.as_str()).collect();
        let consents = rows
            .records
            .iter()
            .filter(|r| current_ids.contains(r.consent.record_id.as_str()))
            .map(|r| pb::ConsentRecord {
                overridden_by_record_id: consentgate_policy::overriding_record(
                    &current,
                    &r.to_policy_record(),
                )
                .map(|n| n.id.clone())
                .unwrap_or_default(),
                ..record_pb(r, now)
            })
            .collect();
        let mut signals: Vec<pb::Signal> = Vec::new();
        for s in &rows.signals {
            let kind = match s.kind.as_str() {
                "gpc" => pb::SignalKind::Gpc,
                "age_band" => pb::SignalKind::AgeBand,
                _ => pb::SignalKind::Guardian,
            } as i32;
            // GPC and age band: the latest value counts. Guardians accumulate.
            if kind != pb::SignalKind::Guardian as i32 {
                signals.retain(|x| x.kind != kind);
            }
            signals.push(pb::Signal {
                kind,
                value: s.value.clone(),
                recorded_at: Some(timestamp(s.recorded_at)),
                revision: s.revision,
                collection_method: collection_method_pb(&s.collection_method),
            });
        }
        let linked_device_ids = rows
            .links
            .iter()
            .filter_map(|k| match k {
                SubjectKey::Device(d) => Some(d.clone()),
                SubjectKey::Subject(_) => None,
            })
            .collect();
        Ok(Response::new(pb::GetConsentsResponse {
            consents,
            signals,
            linked_device_ids,
            processing_restricted: rows.restricted,
            revision: rows.revision,
            conflicts: consentgate_policy::gpc_conflicts(self.engine.policy(), &current, now),
        }))
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        let subject = subject(&mut v, "subject", r.subject.as_ref());
        v.check(r.page_size > 500, "page_size", "must be at most 500");
        let after = match (&subject, r.page_token.is_empty()) {
            (_, true) => 0,
            (Some(s), false) => parse_page_token(s, &r.page_token).unwrap_or_else(|| {
                v.add("page_token", "malformed, or issued for another subject");
                0
            }),
            (None, false) => 0,
        };
        v.finish()?;
        let subject = subject.ok_or_else(|| Status::internal("validated subject"))?;
        let size = if r.page_size == 0 { 100 } else { r.page_size };
        let mut page = self
            .engine
            .history(&subject, after, size + 1)
            .await
            .map_err(status_of)?;
        let more = page.len() > size as usize;
        page.truncate(size as usize);
        let next_page_token = match page.last() {
            Some(last) if more => page_token(&subject, last.revision),
            _ => String::new(),
        };
        let now = OffsetDateTime::now_utc();
        Ok(Response::new(pb::ListConsentHistoryResponse {
            records: page.iter().map(|r| record_pb(r, now)).collect(),
            next_page_token,
        }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&request)?;
        let c = request.into_inner();
        delegation_allowed(&caller, &c)?;
        let mut v = Violations::default();
        let parsed = self.check_query(&mut v, "", &caller, &c);
        v.finish()?;
        let (query, effective) = parsed.ok_or_else(|| Status::internal("validated check"))?;
        let decision = self
            .engine
            .check(&effective, &query)
            .await
            .map_err(status_of)?;
        if !c.on_behalf_of.is_empty() {
            tracing::debug!(caller = %caller.name, on_behalf_of = %effective, purpose = %query.purpose, "delegated check");
        }
        Ok(Response::new(decision_pb(&decision, c.include_explanation)))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        if r.checks.is_empty() {
            v.add("checks", "required: at least one check");
        } else if r.checks.len() > MAX_BATCH {
            v.add(
                "checks",
                format!(
                    "at most {MAX_BATCH} checks per call (got {})",
                    r.checks.len()
                ),
            );
            return Err(v
                .finish()
                .err()
                .unwrap_or_else(|| Status::internal("validation")));
        }
        let mut queries = Vec::with_capacity(r.checks.len());
        for (i, c) in r.checks.iter().enumerate() {
            delegation_allowed(&caller, c)?;
            if let Some(q) = self.check_query(&mut v, &format!("checks[{i}]."), &caller, c) {
                queries.push(q);
            }
        }
        v.finish()?;
        let mut results = Vec::with_capacity(queries.len());
        for ((query, effective), asked) in queries.iter().zip(&r.checks) {
            let decision = self
                .engine
                .check(effective, query)
                .await
                .map_err(status_of)?;
            results.push(decision_pb(&decision, asked.include_explanation));
        }
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        if r.as_caller.is_empty() {
            v.add(
                "as_caller",
                "required: the caller whose decision to explain",
            );
        } else if !self.engine.policy().callers.contains_key(&r.as_caller) {
            v.add("as_caller", format!("unknown caller {:?}", r.as_caller));
        }
        let parsed = match &r.check {
            None => {
                v.add("check", "required");
                None
            }
            Some(c) => self.check_query(&mut v, "check.", &caller, c),
        };
        v.finish()?;
        let (mut query, _) = parsed.ok_or_else(|| Status::internal("validated check"))?;
        query.explain = true;
        let decision = self
            .engine
            .explain(&r.as_caller, &query)
            .await
            .map_err(status_of)?;
        let mut narrative = vec![format!(
            "Policy {} evaluated {:?} for caller {:?} at revision {}.",
            self.engine.policy().version,
            query.purpose,
            r.as_caller,
            decision.revision
        )];
        for step in &decision.explanation {
            let records = if step.record_ids.is_empty() {
                String::new()
            } else {
                format!(" (records: {})", step.record_ids.join(", "))
            };
            narrative.push(format!(
                "{}: {} — {}{}",
                step.rule, step.outcome, step.detail, records
            ));
        }
        for conflict in &decision.conflicts {
            narrative.push(format!("Conflict resolved: the person {conflict}."));
        }
        narrative.push(format!(
            "Verdict: {:?}; personalization level: {:?}.",
            decision.verdict, decision.personalization
        ));
        Ok(Response::new(pb::ExplainResponse {
            decision: Some(decision_pb(&decision, true)),
            narrative,
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let r = request.into_inner();
        if let Some(why) = valid_id(&r.record_id) {
            return Err(consentgate_runtime::errors::invalid_argument(
                "record_id",
                why,
            ));
        }
        let receipt = self
            .engine
            .store()
            .receipt(&r.record_id)
            .await
            .map_err(|e| status_of(e.into()))?;
        let receipt = receipt.ok_or_else(|| {
            status(
                Code::NotFound,
                "RECEIPT_NOT_FOUND",
                "no receipt for this record (only grants have receipts; erased subjects have none)",
            )
        })?;
        Ok(Response::new(pb::GetReceiptResponse {
            receipt_json: receipt.json,
            receipt_jws: receipt.jws,
            public_key: self.engine.keys().public_key_b64(),
        }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let r = request.into_inner();
        if r.heartbeat_millis > 10_000 {
            return Err(consentgate_runtime::errors::invalid_argument(
                "heartbeat_millis",
                "must be at most 10000",
            ));
        }
        let interval = Duration::from_millis(if r.heartbeat_millis == 0 {
            250
        } else {
            u64::from(r.heartbeat_millis.max(10))
        });
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let engine = self.engine.clone();
        tokio::spawn(watch(engine, r.after_revision, interval, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify_ledger(
        &self,
        _request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let report = ledger::verify(
            self.engine.store().as_ref(),
            &self.engine.keys().verifying_key(),
        )
        .await
        .map_err(|e| status_of(e.into()))?;
        let (first_broken_seq, problem) = report.broken.clone().unwrap_or_default();
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok: report.broken.is_none(),
            entries_checked: report.entries_checked,
            checkpoints_checked: report.checkpoints_checked,
            first_broken_seq,
            problem,
            head_hash: hex::encode(&report.head_hash),
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        idempotency_key(&mut v, &r.idempotency_key);
        let subject = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let subject = subject.ok_or_else(|| Status::internal("validated subject"))?;
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let outcome = self
            .record(&caller, &r.idempotency_key, fp, Change::Erase { subject })
            .await?;
        Ok(Response::new(pb::EraseSubjectResponse {
            revision: outcome.revision,
            records_deleted: outcome.records_deleted,
            erased_at: Some(timestamp(outcome.committed_at)),
        }))
    }

    async fn restrict_processing(
        &self,
        request: Request<pb::RestrictProcessingRequest>,
    ) -> Result<Response<pb::RestrictProcessingResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        idempotency_key(&mut v, &r.idempotency_key);
        let subject = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let subject = subject.ok_or_else(|| Status::internal("validated subject"))?;
        let fp = fingerprint(&r, |m| m.idempotency_key.clear());
        let outcome = self
            .record(
                &caller,
                &r.idempotency_key,
                fp,
                Change::Restrict {
                    subject,
                    restricted: r.restricted,
                },
            )
            .await?;
        Ok(Response::new(pb::RestrictProcessingResponse {
            revision: outcome.revision,
        }))
    }
}

/// Serves one WatchChanges stream: replays from the store, then follows new commits (woken by
/// the engine, and polling on every heartbeat so writes by other replicas are seen too).
async fn watch(
    engine: Arc<Engine>,
    mut last: u64,
    interval: Duration,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchChangesResponse, Status>>,
) {
    use pb::watch_changes_response::Message as Msg;
    let mut woken = engine.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut high = last;
        loop {
            let (events, page_high) = match engine.store().changes_after(last, 500).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(status_of(e.into()))).await;
                    return;
                }
            };
            let full = events.len() == 500;
            for e in events {
                last = e.revision;
                let change = pb::ChangeEvent {
                    revision: e.revision,
                    subject: e.subject.as_ref().map(subject_ref),
                    kind: e.kind,
                    purpose: e.purpose.unwrap_or_default(),
                };
                if tx
                    .send(Ok(pb::WatchChangesResponse {
                        message: Some(Msg::Change(change)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            high = high.max(page_high).max(last);
            if !full {
                break;
            }
        }
        tokio::select! {
            _ = ticker.tick() => {
                let beat = pb::Heartbeat { high_water_revision: high, sent_at: Some(timestamp(OffsetDateTime::now_utc())) };
                if tx.send(Ok(pb::WatchChangesResponse { message: Some(Msg::Heartbeat(beat)) })).await.is_err() {
                    return;
                }
            }
            changed = woken.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = engine.closed() => {
                let _ = tx.send(Err(status(Code::Unavailable, "SHUTTING_DOWN", "the consent service is shutting down; reconnect and resume from your last revision"))).await;
                return;
            }
        }
    }
}
