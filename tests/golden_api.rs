//! The golden API test: freezes what callers see, so that a redesign of the services' insides
//! (issue 12) can prove it changed nothing on the wire.
//!
//! A scripted sequence of calls over all three services, on SQLite and PostgreSQL, records for
//! every call its gRPC status code, its `ErrorInfo` reason and `BadRequest` field names, and the
//! *shape* of each answer: the response decoded by its descriptor into proto-JSON, with field
//! names, enum names, booleans, list lengths and the semantic strings (reason codes, purposes,
//! categories, rules) kept, and volatile values (ids, times, numbers, free text) replaced by their
//! kind. Both backends must produce the same text as `tests/golden/api.golden`.
//!
//! After an intended change of the API, regenerate the file and review its diff:
//! `CONSENTGATE_BLESS_GOLDEN=1 cargo test --test golden_api`.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::recommendation::v1 as rpb;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;
use std::fmt::Write as _;

const GOLDEN: &str = "tests/golden/api.golden";

/// String fields whose values are part of the contract, not data: kept verbatim.
const SEMANTIC: &[&str] = &[
    "reason",
    "purpose",
    "dataCategory",
    "data_category",
    "channel",
    "kind",
    "rule",
    "outcome",
    "values",
    "categories",
    "obligationsApplied",
    "obligations_applied",
    "field",
    "state",
    "legalBasis",
    "legal_basis",
    "jurisdiction",
    "noticeVersion",
    "notice_version",
    "linkedDeviceIds",
    "problem",
];

/// What the script records, one line per call.
struct Recorder {
    pool: DescriptorPool,
    text: String,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            pool: DescriptorPool::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
                .expect("the descriptor set decodes"),
            text: String::new(),
        }
    }

    /// Records one call: `OK <shape>` or `<code> <reason> [fields]`.
    fn call<M: prost::Message>(
        &mut self,
        step: &str,
        message: &str,
        result: Result<tonic::Response<M>, tonic::Status>,
    ) -> Option<M> {
        match result {
            Ok(response) => {
                let response = response.into_inner();
                let shape = self.shape(message, &response);
                let _ = writeln!(self.text, "{step}: OK {shape}");
                Some(response)
            }
            Err(status) => {
                let mut fields = bad_fields(&status);
                fields.sort();
                let _ = writeln!(
                    self.text,
                    "{step}: {:?} {} {fields:?}",
                    status.code(),
                    reason(&status)
                );
                None
            }
        }
    }

    fn shape<M: prost::Message>(&self, message: &str, response: &M) -> String {
        let descriptor = self
            .pool
            .get_message_by_name(message)
            .unwrap_or_else(|| panic!("test bug: no message {message}"));
        let dynamic = DynamicMessage::decode(descriptor, response.encode_to_vec().as_slice())
            .expect("the response decodes by its descriptor");
        let json = dynamic
            .serialize_with_options(
                serde_json::value::Serializer,
                &SerializeOptions::new().stringify_64_bit_integers(false),
            )
            .expect("proto-JSON");
        normalize(&json, false).to_string()
    }
}

/// Lists whose elements are data chosen at run time (recommended items depend on the time of
/// day): one shape, the union of their fields.
const MERGED: &[&str] = &["items"];

/// Keeps the shape, replaces volatile values by their kind.
fn normalize(value: &Value, semantic: bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shape = match (k.as_str(), v) {
                        // The export document is a contract of its own: its shape, too.
                        ("documentJson", Value::String(doc)) => serde_json::from_str(doc)
                            .map_or_else(
                                |_| Value::String("<not json>".into()),
                                |d| normalize(&d, false),
                            ),
                        (key, Value::Array(items)) if MERGED.contains(&key) => merged(items),
                        (key, v) => normalize(v, SEMANTIC.contains(&key)),
                    };
                    (k.clone(), shape)
                })
                .collect(),
        ),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = items.iter().map(|v| normalize(v, semantic)).collect();
            if !semantic {
                // Order and repetition of data rows are data; their shapes are the contract.
                shapes.sort_by_key(Value::to_string);
                shapes.dedup();
            }
            Value::Array(shapes)
        }
        // A semantic field keeps a code or a key, not prose ("because you viewed …").
        Value::String(s) if (semantic && !s.contains(' ')) || is_enum_name(s) => value.clone(),
        Value::String(s) if s.len() >= 20 && s.as_bytes()[4] == b'-' && s.ends_with('Z') => {
            Value::String("<time>".into())
        }
        Value::String(_) => Value::String("<string>".into()),
        Value::Number(_) => Value::String("<number>".into()),
        Value::Bool(_) | Value::Null => value.clone(),
    }
}

/// The union of the elements' shapes, as one element.
fn merged(items: &[Value]) -> Value {
    let mut union = serde_json::Map::new();
    for item in items {
        if let Value::Object(shape) = normalize(item, false) {
            union.extend(shape);
        }
    }
    Value::Array(if items.is_empty() {
        Vec::new()
    } else {
        vec![Value::Object(union)]
    })
}

/// `VERDICT_ALLOW`, `TIER_PROFILED`: an enum value's name, part of the contract.
fn is_enum_name(s: &str) -> bool {
    s.len() > 3
        && s.contains('_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn with_context(mut c: pb::CheckRequest, jurisdiction: &str, gpc: bool) -> pb::CheckRequest {
    c.context = Some(consentgate_proto::common::v1::RequestContext {
        jurisdiction: jurisdiction.into(),
        gpc,
    });
    c
}

/// The script. Every call's answer is recorded; the few values later calls need are taken from
/// earlier answers.
async fn script(suite: &Suite) -> String {
    let mut g = Recorder::new();
    let consent = &suite.consent;
    let mut pc = consent.as_caller("preference-center").await;
    let mut enforcer = consent.as_caller("profile-service").await;
    let mut auditor = consent.as_caller("auditor").await;
    let mut ops = consent.as_caller("privacy-ops").await;
    let mut stranger = consent.client(None).await;

    // ---- consent: writes, bad input, auth
    let mut email = grant("ana", "marketing.communications.email", "g-email");
    email.target.as_mut().expect("target").channel = "email".into();
    email.notice_version = "1.2".into();
    let granted = g.call(
        "consent.Grant email",
        "consentgate.consent.v1.GrantResponse",
        pc.grant(email).await,
    );
    for (step, key, purpose) in [
        (
            "consent.Grant profiled",
            "g-prof",
            "personalize.content.profiled",
        ),
        (
            "consent.Grant limited",
            "g-lim",
            "personalize.content.limited",
        ),
        ("consent.Grant training", "g-train", "train_ai_system"),
    ] {
        g.call(
            step,
            "consentgate.consent.v1.GrantResponse",
            pc.grant(grant("ana", purpose, key)).await,
        );
    }
    g.call(
        "consent.Grant bad",
        "consentgate.consent.v1.GrantResponse",
        pc.grant(grant("", "no.such.purpose", "")).await,
    );
    g.call(
        "consent.Grant unauthenticated",
        "consentgate.consent.v1.GrantResponse",
        stranger
            .grant(grant("ana", "personalize.content.profiled", "x"))
            .await,
    );
    g.call(
        "consent.Grant wrong role",
        "consentgate.consent.v1.GrantResponse",
        enforcer
            .grant(grant("ana", "personalize.content.profiled", "x"))
            .await,
    );
    g.call(
        "consent.RecordSignal age",
        "consentgate.consent.v1.RecordSignalResponse",
        pc.record_signal(pb::RecordSignalRequest {
            subject: subject("ana"),
            kind: pb::SignalKind::AgeBand as i32,
            value: "adult".into(),
            idempotency_key: "s-age".into(),
            ..Default::default()
        })
        .await,
    );
    g.call(
        "consent.RecordSignal bad",
        "consentgate.consent.v1.RecordSignalResponse",
        pc.record_signal(pb::RecordSignalRequest {
            subject: subject("ana"),
            kind: 0,
            value: "1".into(),
            idempotency_key: "s-bad".into(),
            ..Default::default()
        })
        .await,
    );
    g.call(
        "consent.LinkIdentity",
        "consentgate.consent.v1.LinkIdentityResponse",
        pc.link_identity(pb::LinkIdentityRequest {
            device_id: "dev-1".into(),
            subject_id: "ana".into(),
            idempotency_key: "l-1".into(),
        })
        .await,
    );

    // ---- consent: decisions
    let mut mailer = check(
        "ana",
        "marketing.communications.email",
        &["user.contact.email"],
    );
    mailer.channel = "email".into();
    mailer.on_behalf_of = "mailer".into();
    g.call(
        "consent.Check mailer",
        "consentgate.consent.v1.CheckResponse",
        enforcer.check(mailer.clone()).await,
    );
    g.call(
        "consent.Check profiled explained",
        "consentgate.consent.v1.CheckResponse",
        enforcer
            .check(pb::CheckRequest {
                include_explanation: true,
                ..check(
                    "ana",
                    "personalize.content.profiled",
                    &["user.behavior.browsing_history", "user.health"],
                )
            })
            .await,
    );
    g.call(
        "consent.Check sale with GPC",
        "consentgate.consent.v1.CheckResponse",
        enforcer
            .check(with_context(
                check("ana", "third_party_sharing.sale", &[]),
                "US-CA",
                true,
            ))
            .await,
    );
    g.call(
        "consent.Check unknown category",
        "consentgate.consent.v1.CheckResponse",
        enforcer
            .check(check("ana", "personalize.content.profiled", &["user.nope"]))
            .await,
    );
    g.call(
        "consent.Check not an enforcer",
        "consentgate.consent.v1.CheckResponse",
        pc.check(check("ana", "personalize.content.profiled", &[]))
            .await,
    );
    g.call(
        "consent.BatchCheck",
        "consentgate.consent.v1.BatchCheckResponse",
        enforcer
            .batch_check(pb::BatchCheckRequest {
                checks: vec![
                    check("ana", "personalize.content.limited", &[]),
                    check("nobody", "analytics.reporting", &[]),
                ],
            })
            .await,
    );
    g.call(
        "consent.BatchCheck empty",
        "consentgate.consent.v1.BatchCheckResponse",
        enforcer
            .batch_check(pb::BatchCheckRequest { checks: vec![] })
            .await,
    );
    g.call(
        "consent.Explain",
        "consentgate.consent.v1.ExplainResponse",
        auditor
            .explain(pb::ExplainRequest {
                check: Some(pb::CheckRequest {
                    on_behalf_of: String::new(),
                    ..mailer.clone()
                }),
                as_caller: "mailer".into(),
            })
            .await,
    );
    if let Some(record) = granted.and_then(|r| r.record) {
        g.call(
            "consent.GetReceipt",
            "consentgate.consent.v1.GetReceiptResponse",
            auditor
                .get_receipt(pb::GetReceiptRequest {
                    record_id: record.record_id,
                })
                .await,
        );
    }
    g.call(
        "consent.ListSigningKeys",
        "consentgate.consent.v1.ListSigningKeysResponse",
        auditor
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await,
    );
    g.call(
        "consent.GetReceipt unknown",
        "consentgate.consent.v1.GetReceiptResponse",
        auditor
            .get_receipt(pb::GetReceiptRequest {
                record_id: "01900000-0000-7000-8000-000000000000".into(),
            })
            .await,
    );
    g.call(
        "consent.Withdraw marketing",
        "consentgate.consent.v1.WithdrawResponse",
        pc.withdraw(withdraw("ana", "marketing", "w-m")).await,
    );
    g.call(
        "consent.Check mailer after withdrawal",
        "consentgate.consent.v1.CheckResponse",
        enforcer.check(mailer).await,
    );
    g.call(
        "consent.GetConsents",
        "consentgate.consent.v1.GetConsentsResponse",
        pc.get_consents(pb::GetConsentsRequest {
            on_behalf_of: String::new(),
            subject: subject("ana"),
        })
        .await,
    );
    g.call(
        "consent.ListConsentHistory",
        "consentgate.consent.v1.ListConsentHistoryResponse",
        ops.list_consent_history(pb::ListConsentHistoryRequest {
            on_behalf_of: String::new(),
            subject: subject("ana"),
            page_size: 2,
            page_token: String::new(),
        })
        .await,
    );
    g.call(
        "consent.ListConsentHistory bad token",
        "consentgate.consent.v1.ListConsentHistoryResponse",
        ops.list_consent_history(pb::ListConsentHistoryRequest {
            on_behalf_of: String::new(),
            subject: subject("ana"),
            page_size: 2,
            page_token: "nope".into(),
        })
        .await,
    );
    g.call(
        "consent.VerifyLedger",
        "consentgate.consent.v1.VerifyLedgerResponse",
        auditor
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await,
    );
    g.call(
        "consent.RestrictProcessing",
        "consentgate.consent.v1.RestrictProcessingResponse",
        ops.restrict_processing(pb::RestrictProcessingRequest {
            subject: subject("rita"),
            restricted: true,
            idempotency_key: "r-1".into(),
        })
        .await,
    );
    g.call(
        "consent.Check restricted",
        "consentgate.consent.v1.CheckResponse",
        enforcer
            .check(check("rita", "analytics.reporting", &[]))
            .await,
    );

    // ---- profile: collection, gated reads, rights
    let profile = &suite.profile;
    let mut collector = profile.as_caller("collector").await;
    let mut center = profile.as_caller("preference-center").await;
    let mut reader = profile.as_caller("mailer").await;
    let mut enforcing = profile.as_caller("recommendation-service").await;
    let mut privacy = profile.as_caller("privacy-ops").await;
    let mut paudit = profile.as_caller("auditor").await;
    g.call(
        "profile.SetAttributes",
        "consentgate.profile.v1.SetAttributesResponse",
        collector
            .set_attributes(ppb::SetAttributesRequest {
                subject: subject("ana"),
                context: None,
                attributes: vec![
                    attribute(
                        "email",
                        "ana@example.com",
                        "user.contact.email",
                        "essential.service",
                    ),
                    attribute(
                        "favorite_sport",
                        "trail running",
                        "user.preferences.stated",
                        "personalize.content.limited",
                    ),
                    attribute("injury", "knee", "user.health", "research"),
                ],
            })
            .await,
    );
    g.call(
        "profile.SetAttributes bad",
        "consentgate.profile.v1.SetAttributesResponse",
        collector
            .set_attributes(ppb::SetAttributesRequest {
                subject: subject(""),
                context: None,
                attributes: vec![attribute("", "x", "user.nope", "no.such")],
            })
            .await,
    );
    g.call(
        "profile.RecordEvents",
        "consentgate.profile.v1.RecordEventsResponse",
        collector
            .record_events(product_views(
                "ana",
                &["sku-00001", "sku-00002", "sku-00003"],
            ))
            .await,
    );
    g.call(
        "profile.SubmitAnswers",
        "consentgate.profile.v1.SubmitAnswersResponse",
        center
            .submit_answers(ppb::SubmitAnswersRequest {
                subject: subject("ana"),
                purpose: "personalize.content.limited".into(),
                answers: vec![ppb::AnswerInput {
                    kind: ppb::AnswerKind::Quiz as i32,
                    question_id: "q1".into(),
                    question: "Which sport?".into(),
                    answer: "trail running".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await,
    );
    g.call(
        "profile.GetProfile",
        "consentgate.profile.v1.GetProfileResponse",
        enforcing
            .get_profile(get_profile("ana", "personalize.content.limited"))
            .await,
    );
    g.call(
        "profile.GetProfile mailer after withdrawal",
        "consentgate.profile.v1.GetProfileResponse",
        reader
            .get_profile(get_profile("ana", "marketing.communications.email"))
            .await,
    );
    g.call(
        "profile.GetProfile bad",
        "consentgate.profile.v1.GetProfileResponse",
        reader.get_profile(get_profile("", "")).await,
    );
    g.call(
        "profile.ListEvents",
        "consentgate.profile.v1.ListEventsResponse",
        enforcing
            .list_events(ppb::ListEventsRequest {
                subject: subject("ana"),
                purpose: "personalize.content.profiled".into(),
                page_size: 2,
                ..Default::default()
            })
            .await,
    );
    g.call(
        "profile.GetAnswers",
        "consentgate.profile.v1.GetAnswersResponse",
        enforcing
            .get_answers(ppb::GetAnswersRequest {
                subject: subject("ana"),
                purpose: "personalize.content.limited".into(),
                ..Default::default()
            })
            .await,
    );
    g.call(
        "profile.GetAccessReport",
        "consentgate.profile.v1.GetAccessReportResponse",
        privacy
            .get_access_report(ppb::GetAccessReportRequest {
                subject: subject("ana"),
            })
            .await,
    );
    let rectified = g.call(
        "profile.RectifyAttribute",
        "consentgate.profile.v1.RectifyAttributeResponse",
        privacy
            .rectify_attribute(ppb::RectifyAttributeRequest {
                subject: subject("ana"),
                name: "favorite_sport".into(),
                value: "road running".into(),
                reason: "typo".into(),
            })
            .await,
    );
    if let Some(r) = rectified {
        g.call(
            "profile.GetRequestStatus",
            "consentgate.profile.v1.GetRequestStatusResponse",
            paudit
                .get_request_status(ppb::GetRequestStatusRequest {
                    request_id: r.request_id,
                })
                .await,
        );
    }
    g.call(
        "profile.ExportSubjectData",
        "consentgate.profile.v1.ExportSubjectDataResponse",
        privacy
            .export_subject_data(ppb::ExportSubjectDataRequest {
                subject: subject("ana"),
            })
            .await,
    );
    g.call(
        "profile.VerifyAccessLog",
        "consentgate.profile.v1.VerifyAccessLogResponse",
        paudit
            .verify_access_log(ppb::VerifyAccessLogRequest {})
            .await,
    );

    // ---- recommendation
    let mut shop = suite
        .recommendation
        .as_caller("recommendation-service")
        .await;
    let ask = |who: Option<&str>, n: u32| rpb::RecommendRequest {
        subject: who.and_then(subject),
        context: Some(rpb::RecommendContext {
            device: "mobile".into(),
            region: "EU".into(),
            current_item_id: "sku-00001".into(),
            ..Default::default()
        }),
        n,
        at_least_as_fresh: String::new(),
    };
    let recommended = g.call(
        "recommendation.Recommend profiled",
        "consentgate.recommendation.v1.RecommendResponse",
        shop.recommend(ask(Some("ana"), 5)).await,
    );
    g.call(
        "recommendation.Recommend anonymous",
        "consentgate.recommendation.v1.RecommendResponse",
        shop.recommend(ask(None, 5)).await,
    );
    g.call(
        "recommendation.Recommend bad",
        "consentgate.recommendation.v1.RecommendResponse",
        shop.recommend(ask(Some("ana"), 1000)).await,
    );
    if let Some(r) = recommended {
        g.call(
            "recommendation.RecordOutcome",
            "consentgate.recommendation.v1.RecordOutcomeResponse",
            shop.record_outcome(rpb::RecordOutcomeRequest {
                recommendation_id: r.recommendation_id,
                kind: rpb::OutcomeKind::Click as i32,
                ..Default::default()
            })
            .await,
        );
    }
    g.call(
        "recommendation.GetStats",
        "consentgate.recommendation.v1.GetStatsResponse",
        suite
            .recommendation
            .as_caller("auditor")
            .await
            .get_stats(rpb::GetStatsRequest::default())
            .await,
    );

    // ---- erasure across the suite
    let erased = g.call(
        "profile.EraseSubject",
        "consentgate.profile.v1.EraseSubjectResponse",
        privacy
            .erase_subject(ppb::EraseSubjectRequest {
                subject: subject("ana"),
                idempotency_key: "e-1".into(),
            })
            .await,
    );
    if let Some(status) = erased.and_then(|e| e.status) {
        g.call(
            "profile.GetErasureStatus",
            "consentgate.profile.v1.GetErasureStatusResponse",
            privacy
                .get_erasure_status(ppb::GetErasureStatusRequest {
                    request_id: status.request_id,
                })
                .await,
        );
    }
    g.call(
        "consent.Check erased",
        "consentgate.consent.v1.CheckResponse",
        enforcer
            .check(pb::CheckRequest {
                at_least_as_fresh: String::new(),
                ..check("ana", "personalize.content.limited", &[])
            })
            .await,
    );
    g.call(
        "consent.Grant erased",
        "consentgate.consent.v1.GrantResponse",
        pc.grant(grant("ana", "personalize.content.limited", "g-after"))
            .await,
    );
    g.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_callers_see_matches_the_golden_file() {
    let bless = std::env::var("CONSENTGATE_BLESS_GOLDEN").is_ok_and(|v| v == "1");
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let seen = script(&suite).await;
        suite.stop().await;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        if bless {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &seen).expect("write the golden file");
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        if seen != golden {
            let diff: Vec<String> = golden
                .lines()
                .zip(seen.lines())
                .filter(|(a, b)| a != b)
                .take(5)
                .map(|(a, b)| format!("  golden: {a}\n  seen:   {b}"))
                .collect();
            panic!(
                "{backend:?}: what callers see differs from {GOLDEN} ({} vs {} lines); first \
                 differences:\n{}\n(an intended API change? regenerate with \
                 CONSENTGATE_BLESS_GOLDEN=1 and review the diff)",
                golden.lines().count(),
                seen.lines().count(),
                diff.join("\n")
            );
        }
    }
}
