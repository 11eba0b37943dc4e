//! `consentgate demo`: plays the product's story against running services, step by step, as a
//! shopper and the brand's systems would, and returns what it observed (the end-to-end tests
//! assert on it). Every call goes over gRPC with the development tokens.
//!
//! An anonymous visitor gets contextual picks; she shares stated preferences with consent and gets
//! limited picks; she consents to profiling and gets profiled picks with reasons; she withdraws and
//! the very next request is contextual again; she exports her data and sees who read it; she
//! erases it and nothing remains.

use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as cpb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use consentgate_proto::recommendation::v1 as rpb;
use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use tonic::transport::Channel;

/// Where the three services listen, and the token of each caller (`caller` → token).
pub struct Endpoints {
    /// `http://host:port` of the consent service.
    pub consent: String,
    /// `http://host:port` of the profile service.
    pub profile: String,
    /// `http://host:port` of the recommendation service.
    pub recommendation: String,
    /// Maps a caller name to its token, e.g. `|c| format!("dev-{c}")`.
    pub token: fn(&str) -> String,
}

/// What the story observed.
#[derive(Debug, Default)]
pub struct Observed {
    /// The tier of each recommendation, in story order.
    pub tiers: Vec<rpb::Tier>,
    /// The reasons given at each step.
    pub reasons: Vec<Vec<String>>,
    /// The export before erasure (JSON).
    pub export: serde_json::Value,
    /// Who read her data, as sentences.
    pub access_report: Vec<String>,
    /// The erasure's steps.
    pub erasure_steps: Vec<String>,
    /// The export after erasure (JSON).
    pub export_after_erasure: serde_json::Value,
}

fn person(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

/// An explicit grant of `purpose` to `subject` under notice `notice`.
fn explicit_grant(subject: &str, purpose: &str, notice: &str, key: String) -> cpb::GrantRequest {
    cpb::GrantRequest {
        target: Some(cpb::ConsentTarget {
            subject: person(subject),
            purpose: purpose.into(),
            ..Default::default()
        }),
        consent_type: cpb::ConsentType::Explicit as i32,
        notice_version: notice.into(),
        idempotency_key: key,
        ..Default::default()
    }
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?.connect().await?)
}

/// The demo's evening on a phone in the EU, looking at a trail shoe.
fn context(session: &[&str]) -> rpb::RecommendContext {
    rpb::RecommendContext {
        time: Some(prost_types::Timestamp {
            seconds: 1_795_374_000,
            nanos: 0,
        }),
        device: "mobile".into(),
        region: "EU".into(),
        weather: "rain".into(),
        current_item_id: "sku-00000".into(),
        session_item_ids: session.iter().map(|s| (*s).to_owned()).collect(),
        consent: None,
    }
}

/// Plays the story; `say` prints each step. `run_id` makes subject ids unique per run.
pub async fn run(
    suite: &Endpoints,
    run_id: &str,
    mut say: impl FnMut(&str),
) -> anyhow::Result<Observed> {
    let token = suite.token;
    let mut consent = ConsentServiceClient::new(channel(&suite.consent).await?);
    let mut profile = ProfileServiceClient::new(channel(&suite.profile).await?);
    let mut recommend = RecommendationServiceClient::new(channel(&suite.recommendation).await?);
    let mut seen = Observed::default();
    let zoe = format!("zoe-{run_id}");
    let pc = token("preference-center");
    let collector = token("collector");
    let reader = token("recommendation-service");
    let ops = token("privacy-ops");

    let ask = |subject: Option<SubjectRef>, fresh: u64| rpb::RecommendRequest {
        subject,
        context: Some(context(&["sku-00024"])),
        n: 3,
        at_least_as_fresh: if fresh == 0 {
            String::new()
        } else {
            fresh.to_string()
        },
    };
    let show = |seen: &mut Observed, say: &mut dyn FnMut(&str), r: rpb::RecommendResponse| {
        say(&format!(
            "  tier: {} ({})",
            r.tier().as_str_name(),
            r.tier_reason
        ));
        for item in &r.items {
            say(&format!(
                "    {:<10} {:<40} {}",
                item.item_id, item.title, item.reason
            ));
        }
        seen.tiers.push(r.tier());
        seen.reasons
            .push(r.items.iter().map(|i| i.reason.clone()).collect());
    };

    say("1. An anonymous visitor on her phone, this evening, looking at a trail shoe:");
    let r = recommend
        .recommend(authorized(ask(None, 0), &reader)?)
        .await?
        .into_inner();
    show(&mut seen, &mut say, r);

    // Other shoppers who consented to model training: what they viewed and bought together is
    // what "often bought with" and "because you viewed" come from.
    for (i, items) in [
        ["sku-00000", "sku-00024", "sku-00048"],
        ["sku-00000", "sku-00024", "sku-00072"],
        ["sku-00024", "sku-00048", "sku-00096"],
    ]
    .iter()
    .enumerate()
    {
        let shopper = format!("crowd-{run_id}-{i}");
        for (k, (purpose, notice)) in [
            ("personalize.content.profiled", "2.0"),
            ("train_ai_system", "2.0"),
        ]
        .iter()
        .enumerate()
        {
            consent
                .grant(authorized(
                    explicit_grant(&shopper, purpose, notice, format!("{shopper}-g{k}")),
                    &pc,
                )?)
                .await?;
        }
        profile
            .record_events(authorized(
                ppb::RecordEventsRequest {
                    subject: person(&shopper),
                    purpose: "personalize.content.profiled".into(),
                    events: items
                        .iter()
                        .map(|item| ppb::EventInput {
                            kind: ppb::EventKind::ProductView as i32,
                            item_id: (*item).into(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
                &collector,
            )?)
            .await?;
        recommend
            .recommend(authorized(ask(person(&shopper), 0), &reader)?)
            .await?;
    }

    say(&format!(
        "2. She signs up as {zoe}, consents to recommendations from what she tells us, and says she loves trail running:"
    ));
    consent
        .grant(authorized(
            cpb::GrantRequest {
                collection_method: cpb::CollectionMethod::PreferenceCenter as i32,
                ..explicit_grant(
                    &zoe,
                    "personalize.content.limited",
                    "2.0",
                    format!("{zoe}-limited"),
                )
            },
            &pc,
        )?)
        .await?;
    profile
        .submit_answers(authorized(
            ppb::SubmitAnswersRequest {
                subject: person(&zoe),
                purpose: "personalize.content.limited".into(),
                answers: vec![ppb::AnswerInput {
                    kind: ppb::AnswerKind::Preference as i32,
                    question_id: "favorite-sport".into(),
                    question: "Which sport do you love?".into(),
                    answer: "trail running".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &pc,
        )?)
        .await?;
    let r = recommend
        .recommend(authorized(ask(person(&zoe), 0), &reader)?)
        .await?
        .into_inner();
    show(&mut seen, &mut say, r);

    say("3. She consents to profiled recommendations and to model training, and browses:");
    let mut revision = 0;
    for (k, (purpose, notice)) in [
        ("personalize.content.profiled", "2.0"),
        ("train_ai_system", "2.0"),
    ]
    .iter()
    .enumerate()
    {
        revision = consent
            .grant(authorized(
                explicit_grant(&zoe, purpose, notice, format!("{zoe}-p{k}")),
                &pc,
            )?)
            .await?
            .into_inner()
            .revision;
    }
    profile
        .record_events(authorized(
            ppb::RecordEventsRequest {
                subject: person(&zoe),
                purpose: "personalize.content.profiled".into(),
                events: ["sku-00000", "sku-00024"]
                    .iter()
                    .map(|item| ppb::EventInput {
                        kind: ppb::EventKind::ProductView as i32,
                        item_id: (*item).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            &collector,
        )?)
        .await?;
    let r = recommend
        .recommend(authorized(ask(person(&zoe), revision), &reader)?)
        .await?
        .into_inner();
    show(&mut seen, &mut say, r);

    say("4. She withdraws every personalization consent; the very next request is contextual:");
    for (k, purpose) in [
        "personalize.content.profiled",
        "personalize.content.limited",
        "train_ai_system",
    ]
    .iter()
    .enumerate()
    {
        revision = consent
            .withdraw(authorized(
                cpb::WithdrawRequest {
                    target: Some(cpb::ConsentTarget {
                        subject: person(&zoe),
                        purpose: (*purpose).into(),
                        ..Default::default()
                    }),
                    idempotency_key: format!("{zoe}-w{k}"),
                    ..Default::default()
                },
                &pc,
            )?)
            .await?
            .into_inner()
            .revision;
    }
    let r = recommend
        .recommend(authorized(ask(person(&zoe), revision), &reader)?)
        .await?
        .into_inner();
    show(&mut seen, &mut say, r);

    say("5. She asks what is held about her and who read it:");
    let export = profile
        .export_subject_data(authorized(
            ppb::ExportSubjectDataRequest {
                subject: person(&zoe),
            },
            &ops,
        )?)
        .await?
        .into_inner();
    seen.export = serde_json::from_str(&export.document_json)?;
    say(&format!(
        "  export {}: {} answers, {} events, {} consent events",
        export.request_id,
        seen.export["answers"].as_array().map_or(0, Vec::len),
        seen.export["events"].as_array().map_or(0, Vec::len),
        seen.export["consent_history"]
            .as_array()
            .map_or(0, Vec::len),
    ));
    let report = profile
        .get_access_report(authorized(
            ppb::GetAccessReportRequest {
                subject: person(&zoe),
            },
            &ops,
        )?)
        .await?
        .into_inner();
    say(&format!("  {}", report.summary));
    for e in &report.entries {
        say(&format!("    {}", e.statement));
    }
    seen.access_report = report.entries.into_iter().map(|e| e.statement).collect();

    say("6. She erases her data:");
    let erased = profile
        .erase_subject(authorized(
            ppb::EraseSubjectRequest {
                subject: person(&zoe),
                idempotency_key: format!("{zoe}-erase"),
            },
            &ops,
        )?)
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    say(&format!(
        "  request {} {}",
        erased.request_id,
        erased.state().as_str_name()
    ));
    for step in &erased.steps {
        say(&format!("    {step}"));
    }
    seen.erasure_steps = erased.steps;
    let after = profile
        .export_subject_data(authorized(
            ppb::ExportSubjectDataRequest {
                subject: person(&zoe),
            },
            &ops,
        )?)
        .await?
        .into_inner();
    seen.export_after_erasure = serde_json::from_str(&after.document_json)?;
    say(&format!(
        "  export after erasure: {} attributes, {} answers, {} events, {} consent events, {} reads",
        seen.export_after_erasure["profile"]["attributes"]
            .as_array()
            .map_or(0, Vec::len),
        seen.export_after_erasure["answers"]
            .as_array()
            .map_or(0, Vec::len),
        seen.export_after_erasure["events"]
            .as_array()
            .map_or(0, Vec::len),
        seen.export_after_erasure["consent_history"]
            .as_array()
            .map_or(0, Vec::len),
        seen.export_after_erasure["access_log"]
            .as_array()
            .map_or(0, Vec::len),
    ));
    Ok(seen)
}
