//! Demo data for `consentgate up`, recorded through the public gRPC API as the preference
//! center would (idempotency keys make restarts harmless).

use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use tonic::Request;

fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// Seeds demo-alice (opted in to profiled and limited personalization and e-mail marketing),
/// demo-bob (California, Global Privacy Control on) and demo-carol (aged 13–15).
pub async fn demo_consents(address: &str, token: &str) -> anyhow::Result<()> {
    let mut client = ConsentServiceClient::connect(format!("http://{address}")).await?;
    let grants = [
        ("demo-alice", "personalize.content.profiled", "", "2.0"),
        ("demo-alice", "personalize.content.limited", "", "2.0"),
        (
            "demo-alice",
            "marketing.communications.email",
            "email",
            "1.2",
        ),
    ];
    for (i, (who, purpose, channel, notice)) in grants.into_iter().enumerate() {
        let grant = pb::GrantRequest {
            target: Some(pb::ConsentTarget {
                subject: subject(who),
                purpose: purpose.into(),
                channel: channel.into(),
                ..Default::default()
            }),
            consent_type: pb::ConsentType::Explicit as i32,
            collection_method: pb::CollectionMethod::PreferenceCenter as i32,
            notice_version: notice.into(),
            idempotency_key: format!("demo-seed-grant-{i}"),
            ..Default::default()
        };
        client.grant(authorized(grant, token)?).await?;
    }
    let signals = [
        ("demo-bob", pb::SignalKind::Gpc, "1"),
        ("demo-carol", pb::SignalKind::AgeBand, "13_15"),
    ];
    for (i, (who, kind, value)) in signals.into_iter().enumerate() {
        let signal = pb::RecordSignalRequest {
            subject: subject(who),
            kind: kind as i32,
            value: value.into(),
            idempotency_key: format!("demo-seed-signal-{i}"),
        };
        client.record_signal(authorized(signal, token)?).await?;
    }
    Ok(())
}
