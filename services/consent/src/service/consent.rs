//! Recording consent: Grant, Refuse and Withdraw (the event with its legal basis and notice, and
//! for a grant the retention cap and the signed receipt), signals and identity links.

use super::{Idempotency, Service, ServiceError};
use crate::model::{Change, NewConsent, StoredRecord, SubjectKey, WriteOutcome};
use crate::receipt;
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
use consentgate_runtime::CallerIdentity;
use std::net::IpAddr;
use time::OffsetDateTime;

/// What a consent event is about, already checked against the policy.
#[derive(Debug, Clone)]
pub struct Target {
    /// Whom it is about.
    pub subject: SubjectKey,
    /// The purpose key (one the policy defines).
    pub purpose: String,
    /// Optional data-category scope.
    pub scope: Option<String>,
    /// Optional channel.
    pub channel: Option<String>,
}

/// A Grant, Refuse or Withdraw as asked: the parts every consent event shares.
#[derive(Debug, Clone)]
pub struct ConsentAsk {
    /// Retries with the same key are answered once.
    pub idempotency: Idempotency,
    /// What it is about.
    pub target: Target,
    /// The canonical jurisdiction code.
    pub jurisdiction: String,
    /// The notice version the person saw; empty means the purpose's current one.
    pub notice_version: String,
    /// How it was collected (`Api` when unspecified).
    pub collection_method: CollectionMethod,
    /// The source address, truncated here before anything is stored.
    pub source_ip: Option<IpAddr>,
    /// The user agent as sent; control characters are dropped before it is stored.
    pub user_agent: String,
}

/// A Grant as asked: a consent event plus what only a grant carries.
#[derive(Debug, Clone)]
pub struct GrantAsk {
    /// The shared parts.
    pub consent: ConsentAsk,
    /// Explicit or expressed.
    pub consent_type: ConsentType,
    /// The receipt's language (a BCP 47 tag).
    pub language: String,
    /// When the person asked the grant to lapse (the policy's retention may cap it sooner).
    pub expires_at: Option<OffsetDateTime>,
    /// Guardian backing a minor's consent.
    pub guardian_ref: Option<String>,
}

/// A recorded grant: the stored record (with its receipt) and its revision.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The record as stored.
    pub record: StoredRecord,
    /// The revision to pass as a consistency token.
    pub revision: u64,
}

/// A RecordSignal as asked.
#[derive(Debug, Clone)]
pub struct SignalAsk {
    /// Retries with the same key are answered once.
    pub idempotency: Idempotency,
    /// Whom it is about.
    pub subject: SubjectKey,
    /// gpc / age_band / guardian.
    pub kind: &'static str,
    /// The value, already checked for its kind.
    pub value: String,
    /// How it was collected.
    pub collection_method: CollectionMethod,
}

impl Service {
    /// Records a grant. The policy's retention caps how long a consent lasts, and every grant
    /// carries a signed receipt the person can verify.
    pub async fn grant(
        &self,
        caller: &CallerIdentity,
        ask: GrantAsk,
    ) -> Result<Granted, ServiceError> {
        let now = OffsetDateTime::now_utc();
        let (idempotency, mut consent, retention) =
            self.new_consent(ask.consent, RecordState::Given, ask.consent_type)?;
        let cap = (retention > 0).then(|| now + time::Duration::days(i64::from(retention)));
        consent.expires_at = match (ask.expires_at, cap) {
            (Some(e), Some(c)) => Some(e.min(c)),
            (e, c) => e.or(c),
        };
        consent.guardian_ref = ask.guardian_ref;
        consent.receipt = Some(receipt::issue(
            self.policy(),
            self.engine.keys(),
            &consent,
            &ask.language,
        ));
        let outcome = self
            .record(caller, idempotency, Change::Consent(consent))
            .await?;
        let record = outcome
            .record
            .ok_or(ServiceError::Internal("grant recorded no record"))?;
        Ok(Granted {
            record,
            revision: outcome.revision,
        })
    }

    /// Records a refusal (no channel needed: without one it covers every channel).
    pub async fn refuse(
        &self,
        caller: &CallerIdentity,
        ask: ConsentAsk,
    ) -> Result<WriteOutcome, ServiceError> {
        self.record_expressed(caller, ask, RecordState::Refused)
            .await
    }

    /// Records a withdrawal (no channel needed: without one it covers every channel).
    pub async fn withdraw(
        &self,
        caller: &CallerIdentity,
        ask: ConsentAsk,
    ) -> Result<WriteOutcome, ServiceError> {
        self.record_expressed(caller, ask, RecordState::Withdrawn)
            .await
    }

    async fn record_expressed(
        &self,
        caller: &CallerIdentity,
        ask: ConsentAsk,
        state: RecordState,
    ) -> Result<WriteOutcome, ServiceError> {
        let (idempotency, consent, _) = self.new_consent(ask, state, ConsentType::Expressed)?;
        self.record(caller, idempotency, Change::Consent(consent))
            .await
    }

    /// Builds the event: the legal basis the policy gives the purpose in the jurisdiction, the
    /// purpose's notice (its current version unless the person saw another), a truncated source
    /// address. Also returns the purpose's retention in days (0: none).
    pub(super) fn new_consent(
        &self,
        ask: ConsentAsk,
        state: RecordState,
        consent_type: ConsentType,
    ) -> Result<(Idempotency, NewConsent, u32), ServiceError> {
        let policy = self.policy();
        let target = ask.target;
        let purpose = policy.purposes.get(&target.purpose).ok_or_else(|| {
            ServiceError::Invalid(vec![(
                "target.purpose".to_owned(),
                format!(
                    "unknown purpose {}",
                    consentgate_runtime::errors::echo(&target.purpose)
                ),
            )])
        })?;
        let basis = policy
            .jurisdiction(&ask.jurisdiction)
            .map_or(LegalBasis::Consent, |j| policy.legal_basis(purpose, j));
        let user_agent: String = ask
            .user_agent
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        let consent = NewConsent {
            record_id: uuid::Uuid::now_v7().to_string(),
            subject: target.subject,
            purpose: target.purpose,
            scope: target.scope,
            channel: target.channel,
            state,
            consent_type,
            legal_basis: basis,
            jurisdiction: ask.jurisdiction,
            notice_id: purpose.notice_id.clone(),
            notice_version: if ask.notice_version.is_empty() {
                purpose.notice_version.text.clone()
            } else {
                ask.notice_version
            },
            collection_method: ask.collection_method,
            collected_at: OffsetDateTime::now_utc(),
            expires_at: None,
            source_ip: ask.source_ip.map(truncate_ip).unwrap_or_default(),
            user_agent,
            guardian_ref: None,
            receipt: None,
            imported: None,
        };
        Ok((ask.idempotency, consent, purpose.retention_days))
    }

    /// Records a signal (GPC, age band, guardian) and returns its revision.
    pub async fn record_signal(
        &self,
        caller: &CallerIdentity,
        ask: SignalAsk,
    ) -> Result<u64, ServiceError> {
        let change = Change::Signal {
            subject: ask.subject,
            kind: ask.kind.to_owned(),
            value: ask.value,
            collection_method: ask.collection_method,
        };
        let outcome = self.record(caller, ask.idempotency, change).await?;
        Ok(outcome.revision)
    }

    /// Links a device to a known subject and returns the revision.
    pub async fn link(
        &self,
        caller: &CallerIdentity,
        idempotency: Idempotency,
        device_id: String,
        subject_id: String,
    ) -> Result<u64, ServiceError> {
        let change = Change::Link {
            device: SubjectKey::Device(device_id),
            subject: SubjectKey::Subject(subject_id),
        };
        let outcome = self.record(caller, idempotency, change).await?;
        Ok(outcome.revision)
    }
}

/// IPv4 truncated to /24 and IPv6 to /48 before anything is stored.
fn truncate_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_ip;

    #[test]
    fn addresses_are_truncated_before_they_are_stored() {
        let v4 = "203.0.113.77".parse().expect("an IPv4 address");
        let v6 = "2001:db8:85a3:8d3:1319:8a2e:370:7348"
            .parse()
            .expect("an IPv6 address");
        assert_eq!(truncate_ip(v4), "203.0.113.0/24");
        assert_eq!(truncate_ip(v6), "2001:db8:85a3::/48");
    }
}
