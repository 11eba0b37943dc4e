//! The whole suite end to end: three services on ephemeral ports, the demo story as assertions,
//! on SQLite and on PostgreSQL.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::recommendation::v1::Tier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_story_holds_on_every_backend() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let urls = consentgate::demo::Endpoints {
            consent: format!("http://{}", suite.consent.addr),
            profile: format!("http://{}", suite.profile.addr),
            recommendation: format!("http://{}", suite.recommendation.addr),
            token,
        };
        let mut lines = Vec::new();
        let seen = consentgate::demo::run(&urls, "t", |l| lines.push(l.to_owned()))
            .await
            .expect("the story runs");
        // Anonymous → limited → profiled → (withdrawal) contextual at once.
        assert_eq!(
            seen.tiers,
            [
                Tier::Contextual,
                Tier::Limited,
                Tier::Profiled,
                Tier::Contextual
            ],
            "{backend:?}: {lines:#?}"
        );
        assert!(
            seen.reasons[1]
                .iter()
                .all(|r| r == "because you told us you like trail running")
        );
        assert!(
            seen.reasons[2]
                .iter()
                .any(|r| r.starts_with("because you viewed ")),
            "{backend:?}: profiled picks come from co-occurrence: {:?}",
            seen.reasons[2]
        );
        assert!(
            seen.reasons[3]
                .iter()
                .all(|r| !r.starts_with("because you")),
            "{:?}",
            seen.reasons[3]
        );
        // She sees what was held and who read it.
        assert_eq!(seen.export["answers"].as_array().map(Vec::len), Some(1));
        assert_eq!(seen.export["events"].as_array().map(Vec::len), Some(2));
        assert!(
            seen.access_report
                .iter()
                .any(|s| s.contains("recommendation-service read"))
        );
        // Erased: nothing remains, anywhere.
        for part in ["answers", "events", "consent_history", "access_log"] {
            assert_eq!(
                seen.export_after_erasure[part].as_array().map(Vec::len),
                Some(0),
                "{part}"
            );
        }
        assert!(
            seen.erasure_steps
                .iter()
                .any(|s| s.starts_with("recommendation service:"))
        );
        assert!(!suite.profile.all_text().await.contains("zoe-t"));
        assert_eq!(
            suite
                .recommendation
                .recommender
                .model
                .lock()
                .expect("model")
                .learned_revision("s:zoe-t"),
            None
        );
        let v = suite
            .consent
            .as_caller("auditor")
            .await
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .expect("verify")
            .into_inner();
        assert!(v.ok);
        let v = suite
            .profile
            .as_caller("auditor")
            .await
            .verify_access_log(ppb::VerifyAccessLogRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(v.ok);
        suite.stop().await;
    }
}

/// Under `up`, each port's reflection lists its own service (and health and reflection), never
/// the other two: grpcurl against one port must not suggest RPCs it cannot serve.
#[tokio::test]
async fn each_port_reflects_only_its_own_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let suite = Suite::start(consentgate_consent::testing::Backend::Sqlite).await;
    let ports = [
        ("consentgate.consent.v1.ConsentService", suite.consent.addr),
        ("consentgate.profile.v1.ProfileService", suite.profile.addr),
        (
            "consentgate.recommendation.v1.RecommendationService",
            suite.recommendation.addr,
        ),
    ];
    for (own, address) in ports {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("answer")
            .expect("one answer");
        let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == own),
            "{own} on its port: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
        for (other, _) in ports.iter().filter(|(name, _)| *name != own) {
            assert!(
                !names.iter().any(|n| n == other),
                "{other} listed on {own}'s port: {names:?}"
            );
        }
    }
    suite.stop().await;
}
