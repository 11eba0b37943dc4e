//! Hostile input from outside, over real gRPC on SQLite and PostgreSQL: huge values echoed only as
//! a short prefix (an answer a default client can read), explicit bounds on repeated fields and
//! strings, undecodable and oversize messages, tokens and change-stream revisions from the future
//! and unknown enum values — each refused with the field named and nothing stored.

mod common;

use common::*;
use consentgate_consent::testing::backends;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::limits;
use consentgate_proto::profile::v1 as profile_pb;
use consentgate_proto::recommendation::v1 as rec_pb;
use tonic::Code;

/// Bytes a status costs in trailers: its message and its details (base64 adds a third).
fn trailer_bytes(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len() * 4 / 3
}

/// The status is INVALID_ARGUMENT naming `field`, and fits in a few KiB of trailers (a default
/// client refuses 16 KiB of headers).
#[track_caller]
fn assert_small_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        bad_fields(status).iter().any(|f| f == field),
        "{field} not named in {:?}",
        bad_fields(status)
    );
    assert!(
        trailer_bytes(status) < 6 * 1024,
        "{} bytes of trailers",
        trailer_bytes(status)
    );
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bad_values_are_echoed_as_a_short_prefix() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut enforcer = server.as_caller("profile-service").await;
        let mut pc = server.as_caller("preference-center").await;
        let before = server.ledger_len().await;
        let huge = "p".repeat(MIB);

        let purpose = enforcer
            .check(check("s1", &huge, &[]))
            .await
            .expect_err("unknown purpose");
        assert_small_invalid(&purpose, "purpose");
        assert!(
            purpose.message().contains(&MIB.to_string()),
            "{}",
            purpose.message()
        );
        // An unknown value within the bounds is quoted by its first 64 characters.
        let long = format!("{}{}", "a".repeat(64), "b".repeat(36));
        let e = enforcer
            .check(check("s1", &long, &[]))
            .await
            .expect_err("unknown purpose");
        assert_small_invalid(&e, "purpose");
        assert!(
            e.message()
                .contains(&format!("\"{}\"… (100 bytes)", "a".repeat(64))),
            "{}",
            e.message()
        );

        let mut category = check("s1", "personalize.content.profiled", &[]);
        category.data_categories = vec![huge.clone()];
        let e = enforcer.check(category).await.expect_err("category");
        assert_small_invalid(&e, "data_categories[0]");

        let mut channel = check("s1", "marketing.communications.email", &[]);
        channel.channel = huge.clone();
        let e = enforcer.check(channel).await.expect_err("channel");
        assert_small_invalid(&e, "channel");

        let mut jurisdiction = check("s1", "personalize.content.profiled", &[]);
        jurisdiction.context = Some(consentgate_proto::common::v1::RequestContext {
            jurisdiction: huge.clone(),
            ..Default::default()
        });
        let e = enforcer
            .check(jurisdiction)
            .await
            .expect_err("jurisdiction");
        assert_small_invalid(&e, "context.jurisdiction");

        let mut delegated = check("s1", "personalize.content.profiled", &[]);
        delegated.on_behalf_of = huge.clone();
        let e = enforcer.check(delegated).await.expect_err("on_behalf_of");
        assert_small_invalid(&e, "on_behalf_of");

        let e = pc
            .grant(grant("s1", &huge, "hostile-1"))
            .await
            .expect_err("grant of an unknown purpose");
        assert_small_invalid(&e, "target.purpose");
        let mut bad_jurisdiction = grant("s1", "personalize.content.profiled", "hostile-2");
        bad_jurisdiction.jurisdiction = huge.clone();
        let e = pc.grant(bad_jurisdiction).await.expect_err("jurisdiction");
        assert_small_invalid(&e, "jurisdiction");

        // Many bad items: a bounded number of violations, the rest counted.
        let batch = pb::BatchCheckRequest {
            checks: (0..1000)
                .map(|i| check("s1", &format!("{i}{}", "q".repeat(2048)), &[]))
                .collect(),
        };
        let e = enforcer.batch_check(batch).await.expect_err("batch");
        assert_small_invalid(&e, "checks[0].purpose");
        assert_eq!(bad_fields(&e).len(), 20, "{:?}", bad_fields(&e));
        assert!(e.message().ends_with("and 980 more"), "{}", e.message());

        assert_eq!(server.ledger_len().await, before, "nothing stored");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_service_echoes_a_short_prefix_too() {
    for backend in backends() {
        let consent = TestServer::start(backend).await;
        let profile = ProfileServer::start(&consent, backend).await;
        let mut reader = profile.as_caller("recommendation-service").await;
        let huge = "p".repeat(MIB);
        let e = reader
            .get_profile(get_profile("s1", &huge))
            .await
            .expect_err("unknown purpose");
        assert_small_invalid(&e, "purpose");
        profile.stop().await;
        consent.stop().await;
    }
}

// ------------------------------------------------------------------ undecodable and oversize

/// A codec that sends and receives raw bytes: what a hostile client puts on the wire.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Sends `bytes` as the request message of `method` of the consent service, as a caller allowed
/// to call it.
async fn raw_call(server: &TestServer, method: &str, bytes: Vec<u8>) -> tonic::Status {
    let caller = if method == "Check" {
        "profile-service"
    } else {
        "preference-center"
    };
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(bytes);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(caller)).parse().expect("header"),
    );
    let path = format!("/consentgate.consent.v1.ConsentService/{method}")
        .parse()
        .expect("path");
    grpc.unary(request, path, Raw)
        .await
        .expect_err("a hostile message is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_and_oversize_ones_resource_exhausted() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let before = server.ledger_len().await;
        // A length-delimited field running past the end; a string field (purpose, 2) that is
        // not UTF-8; 200 nested groups, past prost's recursion limit.
        let truncated = vec![0x12, 0x7f, 0x01];
        let not_utf8 = vec![0x12, 0x02, 0xff, 0xfe];
        let deep = [vec![0x7b_u8; 200], vec![0x7c_u8; 200]].concat();
        for (what, bytes) in [
            ("random bytes", vec![0xff; 64]),
            ("truncated", truncated),
            ("invalid UTF-8", not_utf8),
            ("deep nesting", deep),
        ] {
            for method in ["Check", "Grant"] {
                let e = raw_call(&server, method, bytes.clone()).await;
                assert_eq!(e.code(), Code::InvalidArgument, "{what} to {method}: {e:?}");
                assert_eq!(reason(&e), "MALFORMED_REQUEST", "{what}: {e:?}");
                assert!(e.message().len() < 512, "{what}: {}", e.message());
            }
        }
        // Over the 4 MiB limit: refused before it is read, with the code gRPC prescribes.
        let oversize = [vec![0x12], varint(5 * MIB as u64), vec![b'p'; 5 * MIB]].concat();
        let e = raw_call(&server, "Check", oversize).await;
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_eq!(reason(&e), "MESSAGE_TOO_LARGE", "{e:?}");
        assert!(e.message().contains("too large"), "{}", e.message());
        assert_eq!(server.ledger_len().await, before, "nothing stored");
        server.stop().await;
    }
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

// ------------------------------------------------------------------ unknown enum values

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enum_values_are_refused_naming_the_field_and_nothing_is_stored() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let mut pc = suite.consent.as_caller("preference-center").await;
        let before = suite.consent.ledger_len().await;

        let mut g = grant("s1", "personalize.content.profiled", "enum-1");
        g.collection_method = 99;
        let e = pc.grant(g).await.expect_err("collection_method 99");
        assert_small_invalid(&e, "collection_method");
        let mut g = grant("s1", "personalize.content.profiled", "enum-2");
        g.consent_type = 99;
        let e = pc.grant(g).await.expect_err("consent_type 99");
        assert_small_invalid(&e, "consent_type");
        let mut r = pb::RefuseRequest {
            target: target("s1", "personalize.content.profiled"),
            idempotency_key: "enum-3".into(),
            ..Default::default()
        };
        r.collection_method = -1;
        let e = pc.refuse(r).await.expect_err("collection_method -1");
        assert_small_invalid(&e, "collection_method");
        let mut w = withdraw("s1", "personalize.content.profiled", "enum-4");
        w.collection_method = 7;
        let e = pc.withdraw(w).await.expect_err("collection_method 7");
        assert_small_invalid(&e, "collection_method");
        let signal = |kind: i32, method: i32| pb::RecordSignalRequest {
            subject: subject("s1"),
            kind,
            value: "1".into(),
            idempotency_key: format!("enum-signal-{kind}-{method}"),
            collection_method: method,
        };
        let e = pc.record_signal(signal(99, 0)).await.expect_err("kind 99");
        assert_small_invalid(&e, "kind");
        let e = pc
            .record_signal(signal(pb::SignalKind::Gpc as i32, 99))
            .await
            .expect_err("collection_method 99");
        assert_small_invalid(&e, "collection_method");
        assert_eq!(suite.consent.ledger_len().await, before, "nothing stored");

        let mut collector = suite.profile.as_caller("collector").await;
        let mut a = attribute(
            "shoe_size",
            "42",
            "user.preferences.stated",
            "personalize.content.limited",
        );
        a.source = 99;
        let e = collector
            .set_attributes(profile_pb::SetAttributesRequest {
                subject: subject("s1"),
                attributes: vec![a],
                ..Default::default()
            })
            .await
            .expect_err("source 99");
        assert_small_invalid(&e, "attributes[0].source");
        let mut events = product_views("s1", &["i1"]);
        events.events[0].kind = 99;
        let e = collector.record_events(events).await.expect_err("kind 99");
        assert_small_invalid(&e, "events[0].kind");
        let e = collector
            .submit_answers(profile_pb::SubmitAnswersRequest {
                subject: subject("s1"),
                purpose: "personalize.content.limited".into(),
                answers: vec![profile_pb::AnswerInput {
                    kind: 99,
                    question_id: "q".into(),
                    answer: "a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .expect_err("answer kind 99");
        assert_small_invalid(&e, "answers[0].kind");
        let mut reader = suite.profile.as_caller("recommendation-service").await;
        let e = reader
            .list_events(profile_pb::ListEventsRequest {
                subject: subject("s1"),
                purpose: "personalize.content.profiled".into(),
                kinds: vec![99],
                ..Default::default()
            })
            .await
            .expect_err("event kind 99");
        assert_small_invalid(&e, "kinds[0]");

        let mut rec = suite.recommendation.as_caller("collector").await;
        let e = rec
            .record_outcome(rec_pb::RecordOutcomeRequest {
                recommendation_id: "00000000-0000-0000-0000-000000000000".into(),
                kind: 99,
                value_minor: 0,
            })
            .await
            .expect_err("outcome kind 99");
        assert_small_invalid(&e, "kind");
        suite.stop().await;
    }
}

// ------------------------------------------------------------------ explicit bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_just_over_a_bound_are_refused_and_at_the_bound_accepted() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let mut enforcer = server.as_caller("profile-service").await;
        let mut pc = server.as_caller("preference-center").await;
        let purpose = "personalize.content.profiled";

        // Categories in one Check: 64 answered, 65 refused on the count.
        let at = vec!["user.behavior.browsing_history"; limits::MAX_CATEGORIES];
        let answer = enforcer
            .check(check("s1", purpose, &at))
            .await
            .expect("64 categories")
            .into_inner();
        assert_eq!(answer.categories.len(), limits::MAX_CATEGORIES);
        let mut over = check("s1", purpose, &at);
        over.data_categories
            .push("user.behavior.browsing_history".into());
        over.include_explanation = true;
        let e = enforcer.check(over).await.expect_err("65 categories");
        assert_small_invalid(&e, "data_categories");

        // A policy key: 128 bytes is looked up (and unknown), 129 refused on its length.
        let e = enforcer
            .check(check("s1", &"k".repeat(128), &[]))
            .await
            .expect_err("unknown");
        assert!(e.message().contains("unknown purpose"), "{}", e.message());
        let e = enforcer
            .check(check("s1", &"k".repeat(129), &[]))
            .await
            .expect_err("too long");
        assert_small_invalid(&e, "purpose");
        assert!(e.message().contains("at most 128 bytes"), "{}", e.message());

        // Categories across one BatchCheck: 4,000 answered, 4,096 + 4 refused.
        let batch = |per_check: usize| pb::BatchCheckRequest {
            checks: (0..1000)
                .map(|i| {
                    check(
                        &format!("b{i}"),
                        purpose,
                        &vec!["user.behavior.browsing_history"; per_check],
                    )
                })
                .collect(),
        };
        let answered = enforcer
            .batch_check(batch(4))
            .await
            .expect("4,000 categories")
            .into_inner();
        assert_eq!(answered.results.len(), 1000);
        let mut over = batch(4);
        over.checks[0].data_categories.extend(std::iter::repeat_n(
            "user.behavior.browsing_history".to_owned(),
            100,
        ));
        let e = enforcer
            .batch_check(over)
            .await
            .expect_err("4,100 categories");
        assert_small_invalid(&e, "checks");

        // A source's user agent: 512 bytes recorded, 513 refused.
        let mut g = grant("s1", purpose, "bound-1");
        g.source = Some(pb::ConsentSource {
            ip_address: String::new(),
            user_agent: "u".repeat(limits::MAX_USER_AGENT_BYTES),
        });
        pc.grant(g.clone()).await.expect("512-byte user agent");
        let before = server.ledger_len().await;
        g.idempotency_key = "bound-2".into();
        g.source.as_mut().unwrap().user_agent.push('u');
        let e = pc.grant(g).await.expect_err("513-byte user agent");
        assert_small_invalid(&e, "source.user_agent");
        let mut g = grant("s1", purpose, "bound-3");
        g.notice_version = "2.".repeat(20) + "0";
        let e = pc.grant(g).await.expect_err("41-byte notice version");
        assert_small_invalid(&e, "notice_version");
        assert_eq!(server.ledger_len().await, before, "nothing stored");

        // Heartbeats: 99 ms refused, 100 ms served.
        let e = enforcer
            .watch_changes(pb::WatchChangesRequest {
                after_revision: 0,
                heartbeat_millis: limits::MIN_HEARTBEAT_MILLIS - 1,
            })
            .await
            .expect_err("99 ms");
        assert_small_invalid(&e, "heartbeat_millis");
        let mut stream = enforcer
            .watch_changes(pb::WatchChangesRequest {
                after_revision: 0,
                heartbeat_millis: limits::MIN_HEARTBEAT_MILLIS,
            })
            .await
            .expect("100 ms")
            .into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .expect("a message in time")
            .expect("stream");
        assert!(first.is_some());

        // Page tokens and cursors that do not decode.
        let e = pc
            .list_consent_history(pb::ListConsentHistoryRequest {
                subject: subject("s1"),
                page_token: "x".repeat(limits::MAX_TOKEN_BYTES + 1),
                ..Default::default()
            })
            .await
            .expect_err("long page token");
        assert_small_invalid(&e, "page_token");
        let mut ops = server.as_caller("privacy-ops").await;
        let e = ops
            .list_erasures(pb::ListErasuresRequest {
                after: vec![1, 2, 3],
                page_size: 0,
                ..Default::default()
            })
            .await
            .expect_err("a cursor that is no tombstone");
        assert_small_invalid(&e, "after");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_and_recommendation_bounds() {
    for backend in backends() {
        let suite = Suite::start(backend).await;
        let mut reader = suite.profile.as_caller("recommendation-service").await;
        let mut p = get_profile("s1", "personalize.content.profiled");
        p.data_categories = vec!["user.behavior".into(); limits::MAX_CATEGORIES];
        reader.get_profile(p.clone()).await.expect("64 categories");
        p.data_categories.push("user.behavior".into());
        let e = reader.get_profile(p).await.expect_err("65 categories");
        assert_small_invalid(&e, "data_categories");
        let e = reader
            .list_events(profile_pb::ListEventsRequest {
                subject: subject("s1"),
                purpose: "personalize.content.profiled".into(),
                kinds: vec![profile_pb::EventKind::ProductView as i32; limits::MAX_KINDS + 1],
                ..Default::default()
            })
            .await
            .expect_err("17 kinds");
        assert_small_invalid(&e, "kinds");
        let e = reader
            .list_events(profile_pb::ListEventsRequest {
                subject: subject("s1"),
                purpose: "personalize.content.profiled".into(),
                page_token: "not-a-token".into(),
                ..Default::default()
            })
            .await
            .expect_err("a page token that does not decode");
        assert_small_invalid(&e, "page_token");

        let mut collector = suite.profile.as_caller("collector").await;
        let mut events = product_views("s1", &["i1"]);
        events.events = vec![events.events[0].clone(); limits::MAX_EVENTS + 1];
        let e = collector
            .record_events(events)
            .await
            .expect_err("1,001 events");
        assert_small_invalid(&e, "events");
        let mut events = product_views("s1", &["i1"]);
        events.notice_version = "1".repeat(limits::MAX_NOTICE_VERSION_BYTES + 1);
        let e = collector
            .record_events(events)
            .await
            .expect_err("notice version");
        assert_small_invalid(&e, "notice_version");

        let mut rec = suite
            .recommendation
            .as_caller("recommendation-service")
            .await;
        let e = rec
            .recommend(rec_pb::RecommendRequest {
                context: Some(rec_pb::RecommendContext {
                    session_item_ids: vec!["i".repeat(limits::MAX_CONTEXT_TEXT_BYTES + 1)],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect_err("a 257-byte session item");
        assert_small_invalid(&e, "context.session_item_ids[0]");
        suite.stop().await;
    }
}

// ------------------------------------------------------------------ tokens from the future

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_beyond_the_committed_revision_is_refused_but_another_replicas_is_not() {
    for backend in backends() {
        let first = TestServer::start(backend).await;
        // A replica that hears of the first one's writes only by polling, once an hour.
        let replica = first
            .replica_polling_every(std::time::Duration::from_secs(3600))
            .await;
        let mut pc = first.as_caller("preference-center").await;
        let granted = pc
            .grant(grant("s1", "personalize.content.profiled", "future-1"))
            .await
            .expect("grant")
            .into_inner();
        let mut on_replica = replica.as_caller("profile-service").await;
        let mut fresh = check("s1", "personalize.content.profiled", &[]);
        fresh.at_least_as_fresh = granted.revision.to_string();
        let answer = on_replica
            .check(fresh)
            .await
            .expect("another replica's token is honoured")
            .into_inner();
        assert_eq!(answer.verdict, pb::Verdict::Allow as i32);
        assert!(answer.revision >= granted.revision);

        for enforcer in [
            &mut on_replica,
            &mut first.as_caller("profile-service").await,
        ] {
            let mut future = check("s1", "personalize.content.profiled", &[]);
            future.at_least_as_fresh = (granted.revision + 1_000_000).to_string();
            let e = enforcer
                .check(future)
                .await
                .expect_err("a token from the future");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert_eq!(reason(&e), "TOKEN_AHEAD_OF_DATABASE", "{e:?}");
        }
        let mut explain_caller = first.as_caller("auditor").await;
        let mut future = check("s1", "personalize.content.profiled", &[]);
        future.at_least_as_fresh = u64::MAX.to_string();
        let e = explain_caller
            .explain(pb::ExplainRequest {
                check: Some(future),
                as_caller: "profile-service".into(),
            })
            .await
            .expect_err("a token from the future");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        replica.stop().await;
        first.stop().await;
    }
}

/// A change stream resumed after a revision the database never committed would skip, silently,
/// every change up to it; it is refused. A revision another replica committed is served by a
/// replica that has not heard of it yet (it reads the head from the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_resumed_beyond_the_committed_revision_is_refused() {
    use pb::watch_changes_response::Message;
    for backend in backends() {
        let first = TestServer::start(backend).await;
        let replica = first
            .replica_polling_every(std::time::Duration::from_secs(3600))
            .await;
        let mut pc = first.as_caller("preference-center").await;
        let granted = pc
            .grant(grant("s1", "personalize.content.profiled", "watch-ahead-1"))
            .await
            .expect("grant")
            .into_inner();
        let head = granted.revision;
        for server in [&first, &replica] {
            let mut watcher = server.as_caller("profile-service").await;
            let e = watcher
                .watch_changes(pb::WatchChangesRequest {
                    after_revision: head + 1000,
                    heartbeat_millis: 0,
                })
                .await
                .expect_err("a revision from the future");
            assert_eq!(e.code(), Code::FailedPrecondition, "{backend:?}: {e:?}");
            assert_eq!(reason(&e), "REVISION_AHEAD_OF_DATABASE", "{backend:?}");
            // After the head: served. Before it (the replica has not heard of the grant): the
            // grant is replayed.
            for (after, replayed) in [(head, None), (head - 1, Some(head))] {
                let mut stream = watcher
                    .watch_changes(pb::WatchChangesRequest {
                        after_revision: after,
                        heartbeat_millis: 0,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{backend:?}: after {after}: {e:?}"))
                    .into_inner();
                if let Some(revision) = replayed {
                    let message =
                        tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
                            .await
                            .expect("a message in time")
                            .expect("stream")
                            .and_then(|m| m.message);
                    match message {
                        Some(Message::Change(c)) => assert_eq!(c.revision, revision),
                        other => panic!("{backend:?}: expected the grant, got {other:?}"),
                    }
                }
            }
        }
        replica.stop().await;
        first.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_service_passes_a_token_from_the_future_back() {
    for backend in backends() {
        let consent = TestServer::start(backend).await;
        let profile = ProfileServer::start(&consent, backend).await;
        let mut reader = profile.as_caller("recommendation-service").await;
        let mut p = get_profile("s1", "personalize.content.profiled");
        p.at_least_as_fresh = "99999999".into();
        let e = reader
            .get_profile(p)
            .await
            .expect_err("a token from the future");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(reason(&e), "TOKEN_AHEAD_OF_DATABASE", "{e:?}");
        profile.stop().await;
        consent.stop().await;
    }
}
