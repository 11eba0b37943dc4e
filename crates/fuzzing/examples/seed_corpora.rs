//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: real inputs
//! (the shipped policy, README requests, issued page tokens, signed receipts, the demo catalog,
//! ledger entries of every kind and both versions),
//! so that fuzzing starts from what the services really see. Run it once when a target or its
//! input format changes, then minimize (`cargo fuzz cmin`, docs/fuzzing.md):
//!
//! ```sh
//! cargo run -p consentgate-fuzzing --example seed_corpora
//! ```

use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::model::{NewConsent, SubjectKey};
use consentgate_fuzzing::{page_tokens, receipts, request_validators};
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, Policy, RecordState};
use consentgate_proto::common::v1::{RequestContext, SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as profile_pb;
use consentgate_proto::recommendation::v1 as recommendation_pb;
use consentgate_recommendation::catalog::Catalog;
use prost::Message;
use std::path::{Path, PathBuf};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    policy_loader(&corpus.join("policy_loader"));
    request_validators(&corpus.join("request_validators"));
    page_tokens(&corpus.join("page_tokens"));
    catalog_jsonl(&corpus.join("catalog_jsonl"));
    receipts(&corpus.join("receipts"));
    decision_differential(&corpus.join("decision_differential"));
    ledger_events(&corpus.join("ledger_events"));
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("the corpus directory");
    let path: PathBuf = dir.join(format!("seed-{name}"));
    std::fs::write(&path, data).expect("a seed file");
}

fn policy_loader(dir: &Path) {
    let shipped = consentgate_policy::DEFAULT_POLICY_TOML;
    write(dir, "default", shipped.as_bytes());
    let bad_basis = shipped.replacen("legal_basis = \"consent\"", "legal_basis = \"maybe\"", 1);
    write(dir, "bad-basis", bad_basis.as_bytes());
    write(dir, "header-only", b"[policy]\nversion = 1\n");
}

fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.into())),
    })
}

fn request_validators(dir: &Path) {
    let rpc = |name: &str| request_validators::rpc_index(name).expect("an RPC of the target");
    let seed = |name: &str, label: &str, message: &dyn Fn() -> Vec<u8>| {
        let mut data = vec![rpc(name)];
        data.extend(message());
        write(dir, &format!("{name}-{label}"), &data);
    };
    // Every RPC with an empty message: the validator's "required" paths.
    for i in 0..=u8::MAX {
        let Some(name) = request_validators::rpc_name(i) else {
            break;
        };
        seed(name, "empty", &Vec::new);
    }
    let check = consent_pb::CheckRequest {
        subject: subject("demo-alice"),
        purpose: "personalize.content.profiled".into(),
        data_categories: vec!["user.behavior.purchase_history".into()],
        context: Some(RequestContext {
            jurisdiction: "US-CA".into(),
            gpc: true,
        }),
        at_least_as_fresh: "12".into(),
        ..Default::default()
    };
    seed("consent.Check", "readme", &|| check.encode_to_vec());
    seed("consent.BatchCheck", "two", &|| {
        consent_pb::BatchCheckRequest {
            checks: vec![
                check.clone(),
                consent_pb::CheckRequest {
                    purpose: "marketing.communications.email".into(),
                    channel: "email".into(),
                    on_behalf_of: "mailer".into(),
                    ..check.clone()
                },
            ],
        }
        .encode_to_vec()
    });
    seed("consent.Explain", "auditor", &|| {
        consent_pb::ExplainRequest {
            check: Some(check.clone()),
            as_caller: "storefront".into(),
        }
        .encode_to_vec()
    });
    seed("consent.Grant", "readme", &|| {
        consent_pb::GrantRequest {
            target: Some(consent_pb::ConsentTarget {
                subject: subject("jane"),
                purpose: "personalize.content.limited".into(),
                ..Default::default()
            }),
            consent_type: consent_pb::ConsentType::Explicit as i32,
            notice_version: "2.0".into(),
            collection_method: consent_pb::CollectionMethod::PreferenceCenter as i32,
            idempotency_key: "jane-grant-1".into(),
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("consent.ListConsentHistory", "token", &|| {
        consent_pb::ListConsentHistoryRequest {
            subject: subject("jane"),
            page_size: 50,
            page_token: page_tokens::consent_token(&SubjectKey::Subject("jane".into()), 7),
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("consent.WatchChanges", "heartbeat", &|| {
        consent_pb::WatchChangesRequest {
            after_revision: 3,
            heartbeat_millis: 250,
        }
        .encode_to_vec()
    });
    seed("profile.ListEvents", "token", &|| {
        profile_pb::ListEventsRequest {
            subject: subject("demo-alice"),
            purpose: "personalize.content.profiled".into(),
            kinds: vec![profile_pb::EventKind::Purchase as i32],
            page_size: 5,
            page_token: page_tokens::profile_token(
                1_790_000_000_000_000,
                "01930f3c-5b1e-7c3a-9d2e-4f5a6b7c8d9e",
            ),
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("profile.SubmitAnswers", "readme", &|| {
        profile_pb::SubmitAnswersRequest {
            subject: subject("sam"),
            purpose: "personalize.content.limited".into(),
            answers: vec![profile_pb::AnswerInput {
                kind: profile_pb::AnswerKind::Preference as i32,
                question_id: "fav-sport".into(),
                question: "Your favorite sport?".into(),
                answer: "bouldering".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("profile.RecordEvents", "readme", &|| {
        profile_pb::RecordEventsRequest {
            subject: subject("sam"),
            purpose: "personalize.content.profiled".into(),
            events: vec![profile_pb::EventInput {
                kind: profile_pb::EventKind::ProductView as i32,
                item_id: "sku-1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("recommendation.LoadCatalog", "three", &|| {
        recommendation_pb::LoadCatalogRequest {
            jsonl: demo_jsonl(3),
        }
        .encode_to_vec()
    });
    seed("recommendation.Recommend", "subject", &|| {
        recommendation_pb::RecommendRequest {
            subject: subject("demo-alice"),
            n: 10,
            ..Default::default()
        }
        .encode_to_vec()
    });
}

fn page_tokens(dir: &Path) {
    let jane = SubjectKey::Subject("jane".into());
    let token = page_tokens::consent_token(&jane, 42);
    write(
        dir,
        "consent-issued",
        format!("\0sjane\n{token}").as_bytes(),
    );
    write(
        dir,
        "consent-other-subject",
        format!("\0dphone-1\n{token}").as_bytes(),
    );
    let mut round = vec![1u8];
    round.extend(42u64.to_le_bytes());
    round.extend(b"sjane\nsjim");
    write(dir, "consent-round-trip", &round);
    let event = page_tokens::profile_token(
        1_790_000_000_000_000,
        "01930f3c-5b1e-7c3a-9d2e-4f5a6b7c8d9e",
    );
    write(dir, "profile-issued", format!("\x02{event}").as_bytes());
    let mut round = vec![3u8];
    round.extend(1_790_000_000_000_000i64.to_le_bytes());
    round.extend(*b"0123456789abcdef");
    write(dir, "profile-round-trip", &round);
}

fn demo_jsonl(items: usize) -> String {
    Catalog::demo(items)
        .items()
        .iter()
        .map(|item| serde_json::to_string(item).expect("an item serializes") + "\n")
        .collect()
}

fn catalog_jsonl(dir: &Path) {
    write(dir, "demo-12", demo_jsonl(12).as_bytes());
    let one = demo_jsonl(1);
    write(dir, "duplicate", format!("{one}\n{one}").as_bytes());
    write(
        dir,
        "minimal",
        br#"{"id":"a","title":"","category":["x"],"price_minor":0,"popularity":1}"#,
    );
}

fn receipts(dir: &Path) {
    let policy = Policy::default_policy().expect("the shipped policy loads");
    let keys: &LedgerKeys = receipts::keys();
    let consent = NewConsent {
        record_id: "0193a1b2-0000-7000-8000-000000000001".into(),
        subject: SubjectKey::Subject("jane".into()),
        purpose: "marketing.communications.email".into(),
        scope: None,
        channel: Some("email".into()),
        state: RecordState::Given,
        consent_type: ConsentType::Explicit,
        legal_basis: LegalBasis::Consent,
        jurisdiction: "EU".into(),
        notice_id: "marketing".into(),
        notice_version: "2.0".into(),
        collection_method: CollectionMethod::PreferenceCenter,
        collected_at: time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time"),
        expires_at: None,
        source_ip: "203.0.113.0".into(),
        user_agent: "fuzz".into(),
        guardian_ref: None,
        receipt: None,
        imported: None,
    };
    let jws = consentgate_consent::receipt::issue(&policy, keys, &consent, "en")
        .jws(&consent)
        .expect("an issued receipt is signed");
    write(dir, "issued", format!("\0{jws}").as_bytes());
    let legacy = receipts::sign(
        &serde_json::json!({ "alg": "EdDSA", "kid": keys.public_key_b64() }).to_string(),
        br#"{"version":"KI-CR-v1.1.0"}"#,
    );
    write(dir, "legacy-kid", format!("\0{legacy}").as_bytes());
    write(dir, "signed", b"\x01\0\0\0\0EdDSA{\"a\":1}\x07\x01");
    write(
        dir,
        "jwks",
        format!("\x02{}", keys.verifiers().jwks()).as_bytes(),
    );
}

fn decision_differential(dir: &Path) {
    // Any bytes make a world; a few pseudo-random ones of different lengths start the search.
    let mut state: u64 = 0x5eed;
    for n in 0..8 {
        let len = 64 + 48 * n;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        write(dir, &format!("random-{n}"), &data);
    }
}

fn ledger_events(dir: &Path) {
    use consentgate_consent::ledger::entry::{EVENT_VERSION, canonical_event};
    use consentgate_consent::model::Change;
    let at = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time");
    let jane = SubjectKey::Subject("jane".into());
    let grant = NewConsent {
        record_id: "0193a1b2-0000-7000-8000-000000000001".into(),
        subject: jane.clone(),
        purpose: "marketing.communications.email".into(),
        scope: Some("user.contact".into()),
        channel: Some("email".into()),
        state: RecordState::Given,
        consent_type: ConsentType::Explicit,
        legal_basis: LegalBasis::Consent,
        jurisdiction: "EU".into(),
        notice_id: "marketing".into(),
        notice_version: "2.0".into(),
        collection_method: CollectionMethod::PreferenceCenter,
        collected_at: at,
        expires_at: Some(at + time::Duration::days(365)),
        source_ip: "203.0.113.0".into(),
        user_agent: "fuzz".into(),
        guardian_ref: Some("parent".into()),
        receipt: None,
        imported: None,
    };
    let withdrawal = NewConsent {
        state: RecordState::Withdrawn,
        expires_at: None,
        guardian_ref: None,
        ..grant.clone()
    };
    let pseudonym = "Xw_dCqSx0uP0pbbH2OnwobLD1OX2p7jJ0OHyo7TF1uc";
    let changes = [
        ("grant", Change::Consent(grant)),
        ("withdraw", Change::Consent(withdrawal)),
        (
            "signal",
            Change::Signal {
                subject: jane.clone(),
                kind: "gpc".into(),
                value: "1".into(),
                collection_method: CollectionMethod::GpcSignal,
            },
        ),
        (
            "link",
            Change::Link {
                device: SubjectKey::Device("phone".into()),
                subject: jane.clone(),
            },
        ),
        (
            "restrict",
            Change::Restrict {
                subject: jane.clone(),
                restricted: true,
            },
        ),
        ("erase", Change::Erase { subject: jane }),
    ];
    for (name, change) in &changes {
        let device = matches!(change, Change::Link { .. }).then_some(pseudonym);
        let actor =
            (*name == "grant").then(|| "profile-service on behalf of privacy-ops".to_owned());
        let event = canonical_event(64, at, change, pseudonym, device, actor);
        write(
            dir,
            &format!("v{EVENT_VERSION}-{name}"),
            format!("\0{event}").as_bytes(),
        );
    }
    // As the code before version 3 wrote a grant (names and RFC 3339 times; the unit tests').
    let v2 = r#"[2,42,"2026-12-01T10:00:00.123456789Z","grant","5f0c5d0aa4b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7",null,["0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10","marketing.communications.email","user.contact",null,"explicit","consent","EU","marketing","2.0","preference_center","2026-11-30T09:00:00Z","2027-11-30T09:00:00Z",null,"onetrust"]]"#;
    write(dir, "v2-grant", format!("\0{v2}").as_bytes());
    // As the code before version 2 wrote it (an object with key names; the unit tests' literal).
    let v1 = format!(
        r#"{{"v":1,"seq":7,"at":"2026-11-01T10:00:00Z","kind":"withdraw","subject":"{pseudonym}","consent":{{"record_id":"r-1","purpose":"analytics","scope":null,"channel":"web","state":"withdrawn","consent_type":"explicit","legal_basis":"consent","jurisdiction":"EU","notice_id":"n","notice_version":"1.0","collection_method":"banner","collected_at":"2026-11-01T10:00:00Z","expires_at":null,"guardian":null}},"actor":"a"}}"#
    );
    write(dir, "v1-withdraw", format!("\0{v1}").as_bytes());
    write(
        dir,
        "written",
        b"\x01\x40\0\0\0\0\0\0\0\x10\x20\x30\x40\0\0\0\0\x04jane\0\x02",
    );
}
