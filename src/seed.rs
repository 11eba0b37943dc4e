//! Demo data for `consentgate up`, recorded through the public gRPC API as the preference
//! center would (idempotency keys make restarts harmless).

use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_runtime::tls::{ClientAuth, Dialer, TlsFiles, TlsMaterial};
use std::path::PathBuf;
use tonic::Request;
use tonic::transport::Channel;

/// How the seeder calls the suite as one of the policy's callers: with the caller's development
/// token over plaintext, or (under `up --mtls`) with the caller's development certificate.
pub enum Callers {
    /// Plaintext; caller `c` sends `dev-c`.
    DevTokens,
    /// TLS; caller `c` presents `certs/c/tls.crt`.
    DevCertificates(PathBuf),
}

impl Callers {
    /// A channel to `address` as `caller`.
    async fn channel(&self, address: &str, caller: &str) -> anyhow::Result<Channel> {
        match self {
            Callers::DevTokens => Ok(Channel::from_shared(format!("http://{address}"))?
                .connect()
                .await?),
            Callers::DevCertificates(certs) => {
                let material =
                    TlsMaterial::load(TlsFiles::in_dir(&certs.join(caller)), ClientAuth::Required)?;
                let target = Dialer::tls(material).target(&format!("https://{address}"))?;
                Ok(target.connect_lazy())
            }
        }
    }

    /// `message` with `caller`'s token, when callers send tokens.
    fn request<T>(&self, caller: &str, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Callers::DevTokens = self {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer dev-{caller}").parse()?);
        }
        Ok(request)
    }
}

fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

/// Seeds demo-alice (opted in to profiled and limited personalization and e-mail marketing),
/// demo-bob (California, Global Privacy Control on) and demo-carol (aged 13–15).
pub async fn demo_consents(address: &str, callers: &Callers) -> anyhow::Result<()> {
    const CALLER: &str = "preference-center";
    let mut client = ConsentServiceClient::new(callers.channel(address, CALLER).await?);
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
        client.grant(callers.request(CALLER, grant)?).await?;
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
            collection_method: pb::CollectionMethod::PreferenceCenter as i32,
        };
        client
            .record_signal(callers.request(CALLER, signal)?)
            .await?;
    }
    Ok(())
}

/// Seeds demo-alice's profile through the profile service, as the collector and the preference
/// center would: an e-mail address, stated preferences, a quiz answer and a short shopping history.
pub async fn demo_profiles(address: &str, callers: &Callers) -> anyhow::Result<()> {
    use consentgate_proto::common::v1::DataSource;
    use consentgate_proto::profile::v1 as profile;
    use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
    let mut collector = ProfileServiceClient::new(callers.channel(address, "collector").await?);
    let mut preference_center =
        ProfileServiceClient::new(callers.channel(address, "preference-center").await?);
    let attribute =
        |name: &str, value: &str, category: &str, purpose: &str| profile::AttributeInput {
            name: name.into(),
            value: value.into(),
            data_category: category.into(),
            source: DataSource::ZeroParty as i32,
            purpose: purpose.into(),
            ..Default::default()
        };
    collector
        .set_attributes(callers.request(
            "collector",
            profile::SetAttributesRequest {
                subject: subject("demo-alice"),
                context: None,
                attributes: vec![
                    attribute(
                        "email",
                        "alice@example.com",
                        "user.contact.email",
                        "essential.service",
                    ),
                    attribute(
                        "favorite_sport",
                        "trail running",
                        "user.preferences.stated",
                        "personalize.content.limited",
                    ),
                    attribute(
                        "shoe_size",
                        "EU 38",
                        "user.preferences.stated",
                        "personalize.content.limited",
                    ),
                ],
            },
        )?)
        .await?;
    preference_center
        .submit_answers(callers.request(
            "preference-center",
            profile::SubmitAnswersRequest {
                subject: subject("demo-alice"),
                purpose: "personalize.content.limited".into(),
                answers: vec![profile::AnswerInput {
                    kind: profile::AnswerKind::Quiz as i32,
                    question_id: "terrain".into(),
                    question: "Where do you run most?".into(),
                    answer: "mountain trails".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )?)
        .await?;
    let event =
        |kind: profile::EventKind, item: &str, query: &str, amount: i64| profile::EventInput {
            kind: kind as i32,
            item_id: item.into(),
            query: query.into(),
            amount_minor: amount,
            currency: if amount > 0 {
                "EUR".into()
            } else {
                String::new()
            },
            quantity: u32::from(amount > 0),
            ..Default::default()
        };
    collector
        .record_events(callers.request(
            "collector",
            profile::RecordEventsRequest {
                subject: subject("demo-alice"),
                purpose: "personalize.content.profiled".into(),
                events: vec![
                    event(profile::EventKind::Search, "", "trail shoes", 0),
                    event(profile::EventKind::ProductView, "sku-trail-1042", "", 0),
                    event(profile::EventKind::ProductView, "sku-trail-2077", "", 0),
                    event(profile::EventKind::Purchase, "sku-trail-1042", "", 12_900),
                ],
                ..Default::default()
            },
        )?)
        .await?;
    Ok(())
}
