//! Grant, Refuse, Withdraw, RecordSignal and LinkIdentity: their validation and their answers.

use super::{
    collection_method, finish, from_timestamp, idempotency, idempotency_key, record_pb, subject,
    unknown_enum, valid_id,
};
use crate::model::WriteOutcome;
use crate::service::{ConsentAsk, GrantAsk, Granted, Idempotency, SignalAsk, Target};
use consentgate_policy::{Channel, ConsentType, NoticeVersion, Policy};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::limits;
use consentgate_runtime::errors::{Violations, echo};
use std::net::IpAddr;
use time::OffsetDateTime;
use tonic::Status;

/// The fields Grant, Refuse and Withdraw share.
struct ConsentFields<'a> {
    idempotency: Idempotency,
    target: Option<&'a pb::ConsentTarget>,
    jurisdiction: &'a str,
    notice_version: &'a str,
    collection_method: i32,
    source: Option<&'a pb::ConsentSource>,
}

/// The [`ConsentFields`] of a Grant, Refuse or Withdraw request (three message types, one shape).
macro_rules! consent_fields {
    ($r:expr, jurisdiction: $jurisdiction:expr, notice_version: $notice_version:expr) => {
        ConsentFields {
            idempotency: idempotency($r, &$r.idempotency_key, |m| m.idempotency_key.clear()),
            target: $r.target.as_ref(),
            jurisdiction: $jurisdiction,
            notice_version: $notice_version,
            collection_method: $r.collection_method,
            source: $r.source.as_ref(),
        }
    };
}

/// Validates a Grant.
pub fn grant(policy: &Policy, r: &pb::GrantRequest) -> Result<GrantAsk, Status> {
    let mut v = Violations::default();
    idempotency_key(&mut v, &r.idempotency_key);
    let target = target(policy, &mut v, r.target.as_ref(), true);
    let jurisdiction = jurisdiction(policy, &mut v, &r.jurisdiction);
    let consent_type = match pb::ConsentType::try_from(r.consent_type) {
        Ok(pb::ConsentType::Explicit) => ConsentType::Explicit,
        Ok(pb::ConsentType::Expressed) => ConsentType::Expressed,
        Ok(pb::ConsentType::Unspecified) => {
            v.add(
                "consent_type",
                "required: CONSENT_TYPE_EXPLICIT or CONSENT_TYPE_EXPRESSED",
            );
            ConsentType::Expressed
        }
        Err(_) => {
            v.add("consent_type", unknown_enum(r.consent_type));
            // Never recorded: the violation fails the request before anything is built.
            ConsentType::Expressed
        }
    };
    notice_version(
        &mut v,
        &r.notice_version,
        Some("required: the version of the notice the person saw"),
    );
    let language = language(&mut v, &r.language);
    let expires_at = expires_at(&mut v, r.expires_at.as_ref());
    if r.guardian_ref.len() > super::MAX_ID_LEN {
        v.add("guardian_ref", "must be at most 256 bytes");
    }
    let fields = consent_fields!(r, jurisdiction: &jurisdiction, notice_version: &r.notice_version);
    let consent = consent_ask(v, target, fields)?;
    Ok(GrantAsk {
        consent,
        consent_type,
        language,
        expires_at,
        guardian_ref: (!r.guardian_ref.is_empty()).then(|| r.guardian_ref.clone()),
    })
}

/// Validates a Refuse.
pub fn refuse(policy: &Policy, r: &pb::RefuseRequest) -> Result<ConsentAsk, Status> {
    let fields =
        consent_fields!(r, jurisdiction: &r.jurisdiction, notice_version: &r.notice_version);
    refusal_or_withdrawal(policy, fields)
}

/// Validates a Withdraw.
pub fn withdraw(policy: &Policy, r: &pb::WithdrawRequest) -> Result<ConsentAsk, Status> {
    let fields = consent_fields!(r, jurisdiction: &r.jurisdiction, notice_version: "");
    refusal_or_withdrawal(policy, fields)
}

/// Validates a refusal or withdrawal (no channel needed: it covers every channel).
fn refusal_or_withdrawal(policy: &Policy, c: ConsentFields<'_>) -> Result<ConsentAsk, Status> {
    let mut v = Violations::default();
    idempotency_key(&mut v, &c.idempotency.key);
    let target = target(policy, &mut v, c.target, false);
    let jurisdiction = jurisdiction(policy, &mut v, c.jurisdiction);
    notice_version(&mut v, c.notice_version, None);
    consent_ask(
        v,
        target,
        ConsentFields {
            jurisdiction: &jurisdiction,
            ..c
        },
    )
}

/// Finishes a consent event: the fields checked so far must all be valid before the source
/// address is looked at (its violation is reported only then).
fn consent_ask(
    mut v: Violations,
    target: Option<Target>,
    c: ConsentFields<'_>,
) -> Result<ConsentAsk, Status> {
    let collection_method = collection_method(&mut v, c.collection_method);
    let target = finish(v, target)?;
    let mut v = Violations::default();
    let (source_ip, user_agent) = source(&mut v, c.source);
    v.finish()?;
    Ok(ConsentAsk {
        idempotency: c.idempotency,
        target,
        jurisdiction: c.jurisdiction.to_owned(),
        notice_version: c.notice_version.to_owned(),
        collection_method,
        source_ip,
        user_agent,
    })
}

fn expires_at(v: &mut Violations, t: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let now = OffsetDateTime::now_utc();
    match from_timestamp(t?) {
        Some(e) if e > now => Some(e),
        Some(_) => {
            v.add("expires_at", "must be in the future");
            None
        }
        None => {
            v.add("expires_at", "not a valid timestamp");
            None
        }
    }
}

/// A notice version as asked: empty is a violation when `required` says why (else the purpose's
/// current version is meant); otherwise it must fit and look like `2` or `2.1`.
pub(super) fn notice_version(v: &mut Violations, text: &str, required: Option<&str>) {
    if text.is_empty() {
        if let Some(why) = required {
            v.add("notice_version", why);
        }
    } else if v.check_len("notice_version", text, limits::MAX_NOTICE_VERSION_BYTES)
        && NoticeVersion::parse(text).is_none()
    {
        v.add("notice_version", "must look like 2 or 2.1");
    }
}

/// A receipt's language (a BCP 47 tag), `en` when none is given.
pub(super) fn language(v: &mut Violations, text: &str) -> String {
    let language = if text.is_empty() { "en" } else { text };
    if language.len() > limits::MAX_LANGUAGE_BYTES
        || !language
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        v.add("language", "must be a BCP 47 language tag");
    }
    language.to_owned()
}

/// Where a consent was collected: the address (truncated later, before anything is stored) and
/// the user agent as sent, each checked.
pub(super) fn source(
    v: &mut Violations,
    source: Option<&pb::ConsentSource>,
) -> (Option<IpAddr>, String) {
    let user_agent = source.map_or("", |s| s.user_agent.as_str());
    v.check_len(
        "source.user_agent",
        user_agent,
        limits::MAX_USER_AGENT_BYTES,
    );
    let ip = source_ip(v, source.map_or("", |s| s.ip_address.as_str()));
    (ip, user_agent.to_owned())
}

fn source_ip(v: &mut Violations, text: &str) -> Option<IpAddr> {
    if text.is_empty() {
        return None;
    }
    if !v.check_len("source.ip_address", text, limits::MAX_IP_ADDRESS_BYTES) {
        return None;
    }
    let ip = text.parse::<IpAddr>().ok();
    if ip.is_none() {
        v.add("source.ip_address", "not an IP address");
    }
    ip
}

/// Validates what a consent event is about against the policy.
pub(super) fn target(
    policy: &Policy,
    v: &mut Violations,
    target: Option<&pb::ConsentTarget>,
    granting: bool,
) -> Option<Target> {
    let Some(t) = target else {
        v.add("target", "required");
        return None;
    };
    let key = limits::MAX_POLICY_KEY_BYTES;
    let fits = v.check_len("target.purpose", &t.purpose, key)
        & v.check_len("target.data_category", &t.data_category, key)
        & v.check_len("target.channel", &t.channel, key);
    if !fits {
        return None;
    }
    let subject = subject(v, "target.subject", t.subject.as_ref());
    let purpose = policy.purposes.get(&t.purpose);
    if t.purpose.is_empty() {
        v.add("target.purpose", "required");
    } else if purpose.is_none() {
        v.add(
            "target.purpose",
            format!("unknown purpose {}", echo(&t.purpose)),
        );
    }
    let scope = (!t.data_category.is_empty()).then(|| t.data_category.clone());
    if let (Some(scope), Some(p)) = (&scope, purpose) {
        if !policy.categories.contains_key(scope) {
            v.add(
                "target.data_category",
                format!("unknown data category {}", echo(scope)),
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
                    format!(
                        "unknown channel {} (expected email, sms, push or in_app)",
                        echo(c)
                    ),
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

pub(super) fn jurisdiction(policy: &Policy, v: &mut Violations, code: &str) -> String {
    if !v.check_len("jurisdiction", code, limits::MAX_POLICY_KEY_BYTES) {
        return String::new();
    }
    match policy.jurisdiction(code) {
        Some(j) => j.code.clone(),
        None => {
            v.add(
                "jurisdiction",
                format!("unknown jurisdiction {}", echo(code)),
            );
            String::new()
        }
    }
}

/// A Grant's answer: the record, its revision and its receipt.
pub fn grant_response(granted: &Granted) -> pb::GrantResponse {
    pb::GrantResponse {
        record: Some(record_pb(&granted.record, OffsetDateTime::now_utc())),
        revision: granted.revision,
        receipt_jws: granted
            .record
            .consent
            .receipt
            .as_ref()
            .and_then(|receipt| receipt.jws(&granted.record.consent))
            .unwrap_or_default(),
    }
}

/// A Refuse's or Withdraw's answer: the record (if one was written) and the revision.
pub fn recorded(outcome: &WriteOutcome) -> (Option<pb::ConsentRecord>, u64) {
    let record = outcome
        .record
        .as_ref()
        .map(|rec| record_pb(rec, OffsetDateTime::now_utc()));
    (record, outcome.revision)
}

/// Validates a RecordSignal.
pub fn record_signal(r: &pb::RecordSignalRequest) -> Result<SignalAsk, Status> {
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
        Ok(pb::SignalKind::Unspecified) => {
            v.add(
                "kind",
                "required: SIGNAL_KIND_GPC, SIGNAL_KIND_AGE_BAND or SIGNAL_KIND_GUARDIAN",
            );
            ""
        }
        Err(_) => {
            v.add("kind", unknown_enum(r.kind));
            ""
        }
    };
    let collection_method = collection_method(&mut v, r.collection_method);
    Ok(SignalAsk {
        subject: finish(v, subject)?,
        idempotency: idempotency(r, &r.idempotency_key, |m| m.idempotency_key.clear()),
        kind,
        value: r.value.clone(),
        collection_method,
    })
}

/// Validates a LinkIdentity: the key, the device id and the subject id.
pub fn link(r: &pb::LinkIdentityRequest) -> Result<(Idempotency, String, String), Status> {
    let mut v = Violations::default();
    idempotency_key(&mut v, &r.idempotency_key);
    if let Some(why) = valid_id(&r.device_id) {
        v.add("device_id", why);
    }
    if let Some(why) = valid_id(&r.subject_id) {
        v.add("subject_id", why);
    }
    v.finish()?;
    let idempotency = idempotency(r, &r.idempotency_key, |m| m.idempotency_key.clear());
    Ok((idempotency, r.device_id.clone(), r.subject_id.clone()))
}
