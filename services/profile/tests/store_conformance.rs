//! The profile store conformance suite: every test runs on SQLite and on PostgreSQL (when
//! `CONSENTGATE_TEST_POSTGRES_URL` names a server). Decisions come from a real gate in front of a
//! real consent service, because nothing else can make one.

use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::server as consent_server;
use consentgate_consent::testing::{Backend, TestDb, backends};
use consentgate_gate::{Clearance, Gate, GateConfig};
use consentgate_policy::Policy;
use consentgate_profile::access_log;
use consentgate_profile::model::{
    AccessDraft, Answer, AnswerKind, Attribute, Collection, Event, EventField, EventFields,
    EventKind, Requester, Source, Table, now_micros,
};
use consentgate_profile::store::{EventQuery, ProfileStore, SqlStore, StoreError};
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use std::sync::Arc;

/// A consent service, a gate on it, and a fresh profile store.
struct Fixture {
    store: Arc<dyn ProfileStore>,
    raw: Raw,
    gate: Gate,
    consent: String,
    _consent_db: TestDb,
    _profile_db: TestDb,
}

/// The store as its concrete type, for tampering with tables.
enum Raw {
    Sqlite(Arc<SqlStore<consentgate_profile::store::SqliteDialect>>),
    Postgres(Arc<SqlStore<consentgate_profile::store::PostgresDialect>>),
}

impl Raw {
    fn pool(&self) -> &sqlx::AnyPool {
        match self {
            Raw::Sqlite(s) => s.pool(),
            Raw::Postgres(s) => s.pool(),
        }
    }
}

fn who(id: &str) -> SubjectRef {
    SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    }
}

impl Fixture {
    /// Another store on the fixture's profile database (a replica, or the process after a
    /// restart).
    async fn another_store(&self) -> Arc<dyn ProfileStore> {
        let url = &self._profile_db.url;
        match self._profile_db.backend() {
            Backend::Sqlite => Arc::new(
                consentgate_profile::store::SqliteStore::connect(url)
                    .await
                    .expect("another store"),
            ),
            Backend::Postgres => Arc::new(
                consentgate_profile::store::PostgresStore::connect(url)
                    .await
                    .expect("another store"),
            ),
        }
    }

    async fn new(backend: Backend) -> Fixture {
        let consent_db = TestDb::new(backend).await;
        let policy = Arc::new(Policy::default_policy().expect("policy"));
        let tokens: Vec<(String, String)> = policy
            .callers
            .keys()
            .map(|c| (c.clone(), format!("t-{c}")))
            .collect();
        let auth = consentgate_runtime::Authenticator::from_policy(&policy, &tokens).expect("auth");
        let engine = consent_server::open_engine(
            policy,
            &consent_db.url,
            Arc::new(LedgerKeys::generate()),
            1000,
            consentgate_consent::store::DEFAULT_IDEMPOTENCY_WINDOW,
        )
        .await
        .expect("engine");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let consent = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(consent_server::serve(
            engine,
            consent_server::FEED_POLL,
            auth,
            Default::default(),
            listener,
            std::future::pending(),
        ));
        let gate = Gate::start(
            GateConfig::new(consent.clone(), "t-profile-service"),
            "profile-service",
        )
        .expect("gate");
        let profile_db = TestDb::new(backend).await;
        let (store, raw): (Arc<dyn ProfileStore>, Raw) = match backend {
            Backend::Sqlite => {
                let s = Arc::new(
                    consentgate_profile::store::SqliteStore::connect(&profile_db.url)
                        .await
                        .expect("sqlite store"),
                );
                (s.clone(), Raw::Sqlite(s))
            }
            Backend::Postgres => {
                let s = Arc::new(
                    consentgate_profile::store::PostgresStore::connect(&profile_db.url)
                        .await
                        .expect("postgres store"),
                );
                (s.clone(), Raw::Postgres(s))
            }
        };
        Fixture {
            store,
            raw,
            gate,
            consent,
            _consent_db: consent_db,
            _profile_db: profile_db,
        }
    }

    async fn grant(&self, subject: &str, purpose: &str, notice: &str) {
        let mut client = ConsentServiceClient::connect(self.consent.clone())
            .await
            .expect("connect");
        let mut request = tonic::Request::new(pb::GrantRequest {
            target: Some(pb::ConsentTarget {
                subject: Some(who(subject)),
                purpose: purpose.into(),
                ..Default::default()
            }),
            consent_type: pb::ConsentType::Explicit as i32,
            notice_version: notice.into(),
            idempotency_key: format!("{subject}-{purpose}"),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            "Bearer t-preference-center".parse().expect("header"),
        );
        client.grant(request).await.expect("grant");
    }

    async fn decide(&self, subject: &str, purpose: &str, categories: &[&str]) -> Clearance {
        self.gate
            .check(
                pb::CheckRequest {
                    subject: Some(who(subject)),
                    purpose: purpose.into(),
                    data_categories: categories.iter().map(|c| (*c).to_owned()).collect(),
                    ..Default::default()
                },
                None,
            )
            .await
            .expect("decision")
    }
}

fn attr(name: &str, value: &str, category: &str, source: Source) -> Attribute {
    Attribute {
        name: name.into(),
        value: value.into(),
        category: category.into(),
        source,
        partner: String::new(),
        collection: Collection {
            purpose: "marketing".into(),
            notice_version: "1.2".into(),
        },
        collected_at: 0,
        updated_at: 0,
    }
}

fn event(kind: EventKind, at: i64, item: &str) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        kind,
        occurred_at: at,
        item_id: item.into(),
        query: String::new(),
        page: String::new(),
        amount_minor: 0,
        currency: String::new(),
        quantity: 0,
        collection: Collection {
            purpose: "marketing".into(),
            notice_version: "1.2".into(),
        },
    }
}

const MARKETING_CATEGORIES: [&str; 4] = [
    "user.contact.email",
    "user.preferences.stated",
    "user.behavior.browsing_history",
    "user.behavior.purchase_history",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_only_the_decisions_subject_and_allowed_categories() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        for s in ["ann", "ben"] {
            f.grant(s, "marketing", "1.2").await;
            let d = f.decide(s, "marketing", &MARKETING_CATEGORIES).await;
            f.store
                .put_attributes(&[
                    (
                        &d,
                        attr(
                            "email",
                            &format!("{s}@x.example"),
                            "user.contact.email",
                            Source::ZeroParty,
                        ),
                    ),
                    (
                        &d,
                        attr(
                            "sport",
                            "tennis",
                            "user.preferences.stated",
                            Source::ZeroParty,
                        ),
                    ),
                ])
                .await
                .expect("put");
        }
        // A decision for ann allowing only e-mail returns ann's e-mail and nothing of ben's.
        let d = f.decide("ann", "marketing", &["user.contact.email"]).await;
        let got = f.store.attributes(&d).await.expect("read");
        assert_eq!(got.len(), 1, "{backend:?}");
        assert_eq!(got[0].value, "ann@x.example");
        // A denying decision returns nothing.
        let denied = f
            .decide(
                "ann",
                "analytics.reporting",
                &["user.behavior.browsing_history"],
            )
            .await;
        assert!(!denied.allows_anything());
        assert!(f.store.attributes(&denied).await.expect("read").is_empty());
        // Upsert replaces by name.
        let d = f.decide("ann", "marketing", &MARKETING_CATEGORIES).await;
        f.store
            .put_attributes(&[(
                &d,
                attr(
                    "sport",
                    "squash",
                    "user.preferences.stated",
                    Source::ThirdParty,
                ),
            )])
            .await
            .expect("upsert");
        let got = f.store.attributes(&d).await.expect("read");
        let sport = got.iter().find(|a| a.name == "sport").expect("sport");
        assert_eq!(
            (sport.value.as_str(), sport.source),
            ("squash", Source::ThirdParty)
        );
        let holdings = f
            .store
            .holdings(&d, Table::Attributes)
            .await
            .expect("holdings");
        let total: u64 = holdings.iter().map(|h| h.items).sum();
        assert_eq!(total, 2, "{backend:?}: {holdings:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_decision_are_refused_whole() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        f.grant("cat", "marketing", "1.2").await;
        let d = f.decide("cat", "marketing", &["user.contact.email"]).await;
        let err = f
            .store
            .put_attributes(&[
                (
                    &d,
                    attr(
                        "email",
                        "c@x.example",
                        "user.contact.email",
                        Source::ZeroParty,
                    ),
                ),
                (
                    &d,
                    attr(
                        "sport",
                        "golf",
                        "user.preferences.stated",
                        Source::ZeroParty,
                    ),
                ),
            ])
            .await
            .expect_err("the second item is not covered");
        assert!(matches!(err, StoreError::NotAllowed(_)));
        let err = f
            .store
            .put_events(&d, &[event(EventKind::Purchase, 1, "sku")])
            .await
            .expect_err("not covered");
        assert!(matches!(err, StoreError::NotAllowed(_)));
        let all = f.decide("cat", "marketing", &MARKETING_CATEGORIES).await;
        assert!(
            f.store.attributes(&all).await.expect("read").is_empty(),
            "{backend:?}: partial write"
        );
        assert!(
            f.store
                .events(
                    &all,
                    &EventQuery {
                        limit: 10,
                        ..EventQuery::default()
                    }
                )
                .await
                .expect("read")
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_come_newest_first_filtered_and_paged() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        f.grant("eve", "marketing", "1.2").await;
        let d = f.decide("eve", "marketing", &MARKETING_CATEGORIES).await;
        let events: Vec<Event> = (0..120)
            .map(|i| {
                event(
                    if i % 3 == 0 {
                        EventKind::Purchase
                    } else {
                        EventKind::ProductView
                    },
                    1_000 + i,
                    &format!("i{i}"),
                )
            })
            .collect();
        f.store.put_events(&d, &events).await.expect("put");
        let mut seen = Vec::new();
        let mut query = EventQuery {
            kinds: vec![EventKind::Purchase],
            since: Some(1_030),
            until: Some(1_100),
            limit: 7,
            ..EventQuery::default()
        };
        loop {
            let page = f.store.events(&d, &query).await.expect("page");
            seen.extend(page.iter().map(|e| e.occurred_at));
            if page.len() < 7 {
                break;
            }
            query.after = page.last().map(|e| (e.occurred_at, e.event_id.clone()));
        }
        let expected: Vec<i64> = (1_030..1_100)
            .rev()
            .filter(|t| (t - 1_000) % 3 == 0)
            .collect();
        assert_eq!(seen, expected, "{backend:?}");
        // Only allowed categories: a decision without purchase history sees only views.
        let views = f
            .decide("eve", "marketing", &["user.behavior.browsing_history"])
            .await;
        let got = f
            .store
            .events(
                &views,
                &EventQuery {
                    limit: 1000,
                    ..EventQuery::default()
                },
            )
            .await
            .expect("read");
        assert_eq!(got.len(), 80);
        assert!(got.iter().all(|e| e.kind == EventKind::ProductView));

        // A read of some fields returns the same events with only those fields (and the kind
        // and time, which every read needs) set.
        let newest = |fields| EventQuery {
            limit: 5,
            fields,
            ..EventQuery::default()
        };
        let full = f
            .store
            .events(&d, &newest(EventFields::ALL))
            .await
            .expect("read");
        assert!(
            full.iter()
                .all(|e| !e.event_id.is_empty() && e.collection.purpose == "marketing")
        );
        let slim = f
            .store
            .events(&d, &newest(EventFields::only([EventField::ItemId])))
            .await
            .expect("read");
        let expected: Vec<Event> = full
            .iter()
            .map(|e| Event {
                event_id: String::new(),
                collection: Collection {
                    purpose: String::new(),
                    notice_version: String::new(),
                },
                ..e.clone()
            })
            .collect();
        assert_eq!(slim, expected, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_events_stay_current_through_writes_erasure_and_deep_histories() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        f.grant("ivy", "marketing", "1.2").await;
        let d = f.decide("ivy", "marketing", &MARKETING_CATEGORIES).await;
        // 40 old purchases under 1,100 newer views: deeper than a store keeps in memory.
        let events: Vec<Event> = (0..1_140)
            .map(|i| {
                let kind = if i < 40 {
                    EventKind::Purchase
                } else {
                    EventKind::ProductView
                };
                event(kind, 10_000 + i, &format!("i{i}"))
            })
            .collect();
        f.store.put_events(&d, &events).await.expect("put");
        let newest = |kinds: Vec<EventKind>, limit| EventQuery {
            kinds,
            limit,
            ..EventQuery::default()
        };
        let views = f
            .store
            .events(&d, &newest(vec![EventKind::ProductView], 3))
            .await
            .expect("views");
        let at: Vec<i64> = views.iter().map(|e| e.occurred_at).collect();
        assert_eq!(at, [11_139, 11_138, 11_137], "{backend:?}");
        let purchases = f
            .store
            .events(&d, &newest(vec![EventKind::Purchase], 100))
            .await
            .expect("purchases");
        assert_eq!(
            purchases.len(),
            40,
            "{backend:?}: purchases older than the newest thousand events are still found"
        );
        assert_eq!(purchases[0].occurred_at, 10_039, "{backend:?}");

        // A write is seen by the next read.
        f.store
            .put_events(&d, &[event(EventKind::Purchase, 20_000, "fresh")])
            .await
            .expect("put");
        let latest = f
            .store
            .events(&d, &newest(Vec::new(), 1))
            .await
            .expect("latest");
        assert_eq!(latest[0].item_id, "fresh", "{backend:?}");
        // A decision that denies purchase history sees none of it, held in memory or not.
        let browsing = f
            .decide("ivy", "marketing", &["user.behavior.browsing_history"])
            .await;
        let seen = f
            .store
            .events(&browsing, &newest(Vec::new(), 1000))
            .await
            .expect("browsing");
        assert_eq!(seen.len(), 1000, "{backend:?}");
        assert!(seen.iter().all(|e| e.kind == EventKind::ProductView));

        // Erasure leaves nothing to read.
        f.store.erase_subject(d.subject_key()).await.expect("erase");
        assert!(
            f.store
                .events(&d, &newest(Vec::new(), 10))
                .await
                .expect("after erasure")
                .is_empty(),
            "{backend:?}: erased events were still served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_rectify_erase_and_retention() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        let policy = Policy::default_policy().expect("policy");
        for s in ["dan", "dee"] {
            f.grant(s, "marketing", "1.2").await;
            f.grant(s, "research", "1.0").await;
            let d = f.decide(s, "marketing", &MARKETING_CATEGORIES).await;
            f.store
                .put_attributes(&[(
                    &d,
                    attr(
                        "sport",
                        "padel",
                        "user.preferences.stated",
                        Source::ZeroParty,
                    ),
                )])
                .await
                .expect("put");
            f.store
                .put_events(
                    &d,
                    &[
                        event(EventKind::ProductView, 5, "old"),
                        event(EventKind::ProductView, now_micros(), "new"),
                    ],
                )
                .await
                .expect("events");
            let r = f.decide(s, "research", &["user.survey.answers"]).await;
            // Read first, so that a store keeping answers in memory has the empty list there.
            assert!(f.store.answers(&r).await.expect("answers").is_empty());
            f.store
                .put_answers(
                    &r,
                    &[Answer {
                        answer_id: uuid::Uuid::now_v7().to_string(),
                        kind: AnswerKind::Survey,
                        question_id: "q".into(),
                        question: "?".into(),
                        answer: "yes".into(),
                        item_id: String::new(),
                        collection: Collection {
                            purpose: "research".into(),
                            notice_version: "1.0".into(),
                        },
                        collected_at: now_micros(),
                    }],
                )
                .await
                .expect("answers");
            assert_eq!(f.store.answers(&r).await.expect("answers").len(), 1);
        }
        let d = f.decide("dan", "marketing", &MARKETING_CATEGORIES).await;
        let values = |attributes: Vec<Attribute>| {
            attributes.into_iter().map(|a| a.value).collect::<Vec<_>>()
        };
        // Read first, so that a store keeping attributes in memory has them there.
        assert_eq!(
            values(f.store.attributes(&d).await.expect("read")),
            ["padel"]
        );
        let ops = Requester {
            caller: "privacy-ops".into(),
            note: "customer reported a typo".into(),
        };
        let (fixed, request) = f
            .store
            .rectify(&d, "sport", "tennis", &ops)
            .await
            .expect("rectify")
            .expect("exists");
        assert_eq!(fixed.value, "tennis");
        // The correction's request: completed, by whom, what, linked to the subject alone, and
        // never the value (old or new).
        assert_eq!(
            (request.kind.as_str(), request.state.as_str()),
            ("rectify", "completed")
        );
        assert_eq!(request.requested_by, "privacy-ops");
        assert_eq!(request.note, "customer reported a typo");
        assert!(
            request.detail.contains("\"sport\"")
                && request.detail.contains("user.preferences.stated")
                && !request.detail.contains("tennis")
                && !request.detail.contains("padel"),
            "{}",
            request.detail
        );
        assert_eq!(
            f.store.request(&request.request_id).await.expect("get"),
            Some(request.clone())
        );
        assert_eq!(
            f.store.subject_requests(&d).await.expect("requests"),
            std::slice::from_ref(&request)
        );
        let dee = f.decide("dee", "marketing", &MARKETING_CATEGORIES).await;
        assert!(
            f.store
                .subject_requests(&dee)
                .await
                .expect("requests")
                .is_empty()
        );
        // Every read after the correction sees it.
        assert_eq!(
            values(f.store.attributes(&d).await.expect("read")),
            ["tennis"]
        );
        assert_eq!(
            values(f.store.profile_view(&d).await.expect("read").0),
            ["tennis"]
        );
        assert!(
            f.store
                .rectify(&d, "nope", "x", &ops)
                .await
                .expect("rectify")
                .is_none()
        );
        assert_eq!(
            f.store.subject_requests(&d).await.expect("requests").len(),
            1,
            "{backend:?}: a correction of nothing records no request"
        );
        // Retention: browsing history is kept 180 days; the event at t=5µs is long gone.
        let purged = consentgate_profile::retention::sweep(f.store.as_ref(), &policy, now_micros())
            .await
            .expect("sweep");
        assert_eq!(purged, 2, "{backend:?}: one old event per subject");
        let views = f
            .store
            .events(
                &d,
                &EventQuery {
                    limit: 10,
                    ..EventQuery::default()
                },
            )
            .await
            .expect("read");
        assert_eq!(
            views.iter().map(|e| e.item_id.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        // Erasure takes one subject's rows, all of them, and nobody else's (answers read first,
        // so a store keeping them in memory must forget them).
        let survey = f.decide("dan", "research", &["user.survey.answers"]).await;
        assert_eq!(f.store.answers(&survey).await.expect("answers").len(), 1);
        let deleted = f.store.erase_subject("s:dan").await.expect("erase");
        assert_eq!(
            deleted, 4,
            "{backend:?}: attribute, event, answer, and the pseudonym key the correction made"
        );
        assert!(f.store.attributes(&d).await.expect("read").is_empty());
        // The correction stays provable by its id, no longer linked to the subject, without
        // the reason given (it may describe the person).
        let kept = f
            .store
            .request(&request.request_id)
            .await
            .expect("get")
            .expect("kept");
        assert_eq!((kept.detail, kept.note), (request.detail, String::new()));
        assert!(
            f.store
                .subject_requests(&d)
                .await
                .expect("requests")
                .is_empty()
        );
        assert!(f.store.answers(&survey).await.expect("answers").is_empty());
        let dee = f.decide("dee", "marketing", &MARKETING_CATEGORIES).await;
        assert_eq!(f.store.attributes(&dee).await.expect("read").len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_chains_detects_tampering_and_shreds_pseudonyms() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        f.grant("lou", "marketing", "1.2").await;
        f.grant("max", "marketing", "1.2").await;
        let draft = |s: &str, i: u64| AccessDraft {
            subject_key: format!("s:{s}"),
            read_at: now_micros(),
            caller: "mailer".into(),
            enforced_by: "profile-service".into(),
            purpose: "marketing".into(),
            categories: vec!["user.contact.email".into()],
            revision: i,
            operation: "GetProfile".into(),
            items: 1,
        };
        let batch: Vec<AccessDraft> = (0..10)
            .map(|i| draft(if i % 2 == 0 { "lou" } else { "max" }, i))
            .collect();
        f.store.append_access(&batch[..4]).await.expect("append");
        f.store.append_access(&batch[4..]).await.expect("append");
        let v = access_log::verify(f.store.as_ref()).await.expect("verify");
        assert_eq!(
            (v.entries_checked, v.broken.clone()),
            (10, None),
            "{backend:?}"
        );
        let lou = f.decide("lou", "marketing", &["user.contact.email"]).await;
        assert_eq!(
            f.store.access_entries(&lou).await.expect("entries").len(),
            5
        );
        // Erasing lou shreds the key: entries stay (the chain verifies), but are no longer lou's.
        f.store.erase_subject("s:lou").await.expect("erase");
        assert!(
            f.store
                .access_entries(&lou)
                .await
                .expect("entries")
                .is_empty()
        );
        assert_eq!(
            access_log::verify(f.store.as_ref())
                .await
                .expect("verify")
                .broken,
            None
        );
        // Tampering: edit, then delete, each detected at the right entry.
        let pool = f.raw.pool();
        sqlx::query("UPDATE access_log SET caller = 'nobody' WHERE seq = 6")
            .execute(pool)
            .await
            .expect("edit");
        let v = access_log::verify(f.store.as_ref()).await.expect("verify");
        assert_eq!(v.broken.map(|b| b.0), Some(6), "{backend:?}: edit");
        sqlx::query("UPDATE access_log SET caller = 'mailer' WHERE seq = 6")
            .execute(pool)
            .await
            .expect("restore");
        sqlx::query("DELETE FROM access_log WHERE seq = 3")
            .execute(pool)
            .await
            .expect("delete");
        let v = access_log::verify(f.store.as_ref()).await.expect("verify");
        assert_eq!(v.broken.map(|b| b.0), Some(3), "{backend:?}: delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_subject_requests_are_idempotent_by_key() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        let ops = Requester {
            caller: "privacy-ops".into(),
            note: String::new(),
        };
        let (first, created) = f
            .store
            .begin_request("erase", &["k1"], &ops)
            .await
            .expect("begin");
        assert!(created);
        assert_eq!(first.requested_by, "privacy-ops");
        let (again, created) = f
            .store
            .begin_request("erase", &["k0", "k1"], &Requester::default())
            .await
            .expect("begin");
        assert!(!created);
        assert_eq!(again.request_id, first.request_id, "{backend:?}");
        let mut done = first.clone();
        done.state = "completed".into();
        done.completed_at = now_micros();
        done.detail = "{\"steps\":[]}".into();
        f.store.update_request(&done).await.expect("update");
        assert_eq!(
            f.store.request(&first.request_id).await.expect("get"),
            Some(done)
        );
        assert_eq!(
            f.store
                .request("01900000-0000-7000-8000-000000000000")
                .await
                .expect("get"),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_appending_to_one_access_log_keep_one_chain() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        let other = f.another_store().await;
        let draft = |i: u64| AccessDraft {
            subject_key: format!("s:r{}", i % 3),
            read_at: now_micros(),
            caller: "mailer".into(),
            enforced_by: "profile-service".into(),
            purpose: "marketing".into(),
            categories: vec!["user.contact.email".into()],
            revision: i,
            operation: "GetProfile".into(),
            items: 1,
        };
        let (a, b) = (f.store.clone(), other.clone());
        // Each replica also chains what it journaled now and then, as its log writer does.
        let one = tokio::spawn(async move {
            for i in 0..40 {
                a.append_access(&[draft(i), draft(i + 100)])
                    .await
                    .expect("append a");
                if i % 10 == 9 {
                    a.flush_access().await.expect("flush a");
                }
            }
        });
        let two = tokio::spawn(async move {
            for i in 0..40 {
                b.append_access(&[draft(i + 200)]).await.expect("append b");
                if i % 10 == 4 {
                    b.flush_access().await.expect("flush b");
                }
            }
        });
        one.await.expect("a");
        two.await.expect("b");
        other.flush_access().await.expect("flush the other replica");
        let v = access_log::verify(f.store.as_ref()).await.expect("verify");
        assert_eq!((v.entries_checked, v.broken), (120, None), "{backend:?}");
    }
}

/// A recorded read survives its store going away before the entry was chained (what a crash
/// leaves): the next store to open the database chains it, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_reads_survive_a_store_that_stopped_before_chaining_them() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        let draft = |i: u64| AccessDraft {
            subject_key: "s:cy".into(),
            read_at: now_micros(),
            caller: "mailer".into(),
            enforced_by: "profile-service".into(),
            purpose: "marketing".into(),
            categories: vec!["user.contact.email".into()],
            revision: i,
            operation: "GetProfile".into(),
            items: 1,
        };
        let first = f.another_store().await;
        first
            .append_access(&[draft(1), draft(2)])
            .await
            .expect("append");
        first.append_access(&[draft(3)]).await.expect("append");
        drop(first);
        let second = f.another_store().await;
        let v = access_log::verify(second.as_ref()).await.expect("verify");
        assert_eq!((v.entries_checked, v.broken), (3, None), "{backend:?}");
        let revisions: Vec<u64> = second
            .access_log_page(0, 10)
            .await
            .expect("page")
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(revisions, [1, 2, 3], "{backend:?}: in the order recorded");
    }
}

/// A read racing a correction must never leave the old value behind: once `rectify` returns,
/// every later read sees the new value, however many readers were mid-read (a store that keeps
/// attributes in memory must not cache what a racing read fetched before the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_win_over_racing_reads() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        f.grant("rae", "marketing", "1.2").await;
        let d = Arc::new(f.decide("rae", "marketing", &MARKETING_CATEGORIES).await);
        f.store
            .put_attributes(&[(
                &d,
                attr("sport", "v0", "user.preferences.stated", Source::ZeroParty),
            )])
            .await
            .expect("put");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (store, d, stop) = (f.store.clone(), d.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        store.profile_view(&d).await.expect("racing read");
                        // A read served from memory never waits: let the writer run too.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for i in 1..=40 {
            let value = format!("v{i}");
            f.store
                .rectify(&d, "sport", &value, &Requester::default())
                .await
                .expect("rectify")
                .expect("exists");
            let (seen, _) = f.store.profile_view(&d).await.expect("read");
            assert_eq!(
                seen.iter().map(|a| a.value.as_str()).collect::<Vec<_>>(),
                [value.as_str()],
                "{backend:?}: read after correction {i}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.await.expect("reader");
        }
    }
}

/// Reads the attribute values `store` returns for `d`.
async fn values_of(store: &dyn ProfileStore, d: &Clearance) -> Vec<String> {
    let (seen, _) = store.profile_view(d).await.expect("read");
    seen.into_iter().map(|a| a.value).collect()
}

/// Waits (up to 10 s) until `done` holds; what it last saw otherwise.
async fn eventually<T: std::fmt::Debug>(
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<T, T> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = probe().await;
        if done(&seen) {
            return Ok(seen);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(seen);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Profile replicas on PostgreSQL serve warm reads from memory, and each hears the others'
/// writes, corrections and erasures through the announcements (without them, the replica below
/// would serve the first value until its memory evicted it); a gap in the listener's connection
/// drops everything held, since what was announced meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_keep_their_memory_true_through_announcements() {
    for backend in backends() {
        if backend != Backend::Postgres {
            continue;
        }
        let f = Fixture::new(backend).await;
        let other = Arc::new(
            consentgate_profile::store::PostgresStore::connect(&f._profile_db.url)
                .await
                .expect("replica"),
        );
        assert!(
            eventually(async || other.memory_current(), |c| *c)
                .await
                .is_ok(),
            "the replica's first beat never came back"
        );
        f.grant("pia", "marketing", "1.2").await;
        let d = f.decide("pia", "marketing", &MARKETING_CATEGORIES).await;
        let sport = |v: &str| attr("sport", v, "user.preferences.stated", Source::ZeroParty);
        f.store
            .put_attributes(&[(&d, sport("run"))])
            .await
            .expect("put");
        // Once the put's announcement has reached the replica, what it reads stays held.
        assert!(
            other
                .memory_settled(std::time::Duration::from_secs(10))
                .await
        );
        assert_eq!(values_of(other.as_ref(), &d).await, ["run"]);

        // Memory serves: a change behind the stores' backs (no announcement) is not seen.
        let tamper = |value: &'static str| {
            sqlx::query("UPDATE attributes SET value = $1 WHERE name = 'sport'")
                .bind(value)
                .execute(f.raw.pool())
        };
        tamper("behind-their-backs").await.expect("tamper");
        assert_eq!(
            values_of(other.as_ref(), &d).await,
            ["run"],
            "the replica did not serve from memory"
        );

        // A correction on one replica reaches the other's memory.
        f.store
            .rectify(&d, "sport", "swim", &Requester::default())
            .await
            .expect("rectify")
            .expect("exists");
        let seen = eventually(
            async || values_of(other.as_ref(), &d).await,
            |v| v == &["swim"],
        )
        .await;
        assert!(
            seen.is_ok(),
            "a correction never reached the replica: {seen:?}"
        );

        // New events too: the replica's newest events are forgotten.
        let query = EventQuery {
            limit: 40,
            fields: EventFields::ALL,
            ..Default::default()
        };
        assert!(other.events(&d, &query).await.expect("events").is_empty());
        f.store
            .put_events(&d, &[event(EventKind::ProductView, now_micros(), "sku-1")])
            .await
            .expect("events");
        let seen = eventually(
            async || other.events(&d, &query).await.expect("events").len(),
            |n| *n == 1,
        )
        .await;
        assert!(
            seen.is_ok(),
            "new events never reached the replica: {seen:?}"
        );

        // A gap in the listener: what is written meanwhile is never announced to it (here,
        // nothing is announced at all), so everything held goes once it listens again.
        assert_eq!(values_of(other.as_ref(), &d).await, ["swim"]);
        let listeners = |pool: &sqlx::AnyPool| {
            let pool = pool.clone();
            async move {
                use sqlx::Row;
                sqlx::query("SELECT pid::BIGINT FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")
                    .fetch_all(&pool)
                    .await
                    .expect("listeners")
                    .iter()
                    .map(|r| r.get::<i64, _>(0))
                    .collect::<Vec<i64>>()
            }
        };
        let before = listeners(f.raw.pool()).await;
        assert_eq!(before.len(), 2, "one listener per replica: {before:?}");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")
            .execute(f.raw.pool())
            .await
            .expect("cut the listeners");
        tamper("lost-in-the-gap").await.expect("tamper");
        let gap = eventually(async || other.memory_gaps(), |n| *n == 1).await;
        assert!(gap.is_ok(), "the replica never noticed the gap: {gap:?}");
        assert_eq!(
            values_of(other.as_ref(), &d).await,
            ["lost-in-the-gap"],
            "memory from before the gap was served after it"
        );
        // Once it listens again and a beat proves it, memory serves again: what it reloaded.
        let relistened = eventually(
            async || listeners(f.raw.pool()).await,
            |now| now.len() == 2 && now.iter().all(|p| !before.contains(p)),
        )
        .await;
        assert!(
            relistened.is_ok(),
            "the listeners never came back: {relistened:?}"
        );
        assert!(
            eventually(async || other.memory_current(), |c| *c)
                .await
                .is_ok(),
            "the replica's memory never became current again"
        );
        assert_eq!(
            values_of(other.as_ref(), &d).await,
            ["lost-in-the-gap"],
            "memory from before the gap was served after it"
        );

        // An erasure on one replica empties the other's memory of the subject.
        f.store.erase_subject(d.subject_key()).await.expect("erase");
        let seen = eventually(
            async || values_of(other.as_ref(), &d).await,
            |v| v.is_empty(),
        )
        .await;
        assert!(
            seen.is_ok(),
            "an erasure never reached the replica: {seen:?}"
        );
    }
}

/// What re-applying erasures after a restore reads: the tombstones kept (each once, in order,
/// paged) and every subject held in any table (each once, in order, paged), an erased one no
/// longer.
#[tokio::test]
async fn kept_tombstones_and_held_subjects_page_in_order() {
    for backend in backends() {
        let f = Fixture::new(backend).await;
        let (low, high) = ("00".repeat(32), "ff".repeat(32));
        assert_eq!(
            f.store
                .keep_tombstones(&[high.clone(), low.clone(), high.clone()])
                .await
                .expect("keep"),
            2,
            "{backend:?}"
        );
        assert_eq!(
            f.store
                .keep_tombstones(std::slice::from_ref(&low))
                .await
                .expect("keep"),
            0
        );
        assert_eq!(
            f.store.tombstones_after("", 1).await.expect("page"),
            vec![low.clone()]
        );
        assert_eq!(
            f.store.tombstones_after(&low, 10).await.expect("page"),
            vec![high.clone()]
        );
        assert!(
            f.store
                .tombstones_after(&high, 10)
                .await
                .expect("page")
                .is_empty()
        );

        // Attributes for two subjects, events for a third: every table counts.
        for s in ["hold-a", "hold-b", "hold-c"] {
            f.grant(s, "marketing", "1.2").await;
            let d = f.decide(s, "marketing", &MARKETING_CATEGORIES).await;
            if s == "hold-c" {
                f.store
                    .put_events(&d, &[event(EventKind::ProductView, now_micros(), "i")])
                    .await
                    .expect("events");
            } else {
                f.store
                    .put_attributes(&[(
                        &d,
                        attr(
                            "sport",
                            "padel",
                            "user.preferences.stated",
                            Source::ZeroParty,
                        ),
                    )])
                    .await
                    .expect("put");
            }
        }
        assert_eq!(
            f.store.subjects_after("", 2).await.expect("page"),
            vec!["s:hold-a".to_owned(), "s:hold-b".to_owned()],
            "{backend:?}"
        );
        assert_eq!(
            f.store.subjects_after("s:hold-b", 2).await.expect("page"),
            vec!["s:hold-c".to_owned()]
        );
        f.store.erase_subject("s:hold-a").await.expect("erase");
        assert_eq!(
            f.store.subjects_after("", 10).await.expect("page"),
            vec!["s:hold-b".to_owned(), "s:hold-c".to_owned()]
        );
    }
}
