//! How many statements a lone consent write sends its database, on every configured backend: a
//! guard on the write path's shape, not a timing. Each statement is a round trip (over a socket
//! to PostgreSQL, where fewer of them measurably sped writes up; to sqlx's worker thread on
//! SQLite): BENCHMARKS.md, "twelfth look". A lone grant made fifteen statements on SQLite
//! (sixteen on PostgreSQL) before the run's lookups became one statement on SQLite
//! (`store/lookup.rs`) and its INSERTs one query (`Rows::insert_together`). sqlx reports every
//! statement it runs as a `sqlx::query` event; this binary counts them with a subscriber of its
//! own, and holds one test only, so that nothing else runs statements beside it. The same test
//! holds a decision's read of a subject to one statement.

use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::model::{Change, NewConsent, SubjectKey, Write};
use consentgate_consent::receipt::{Receipt, ReceiptContext};
use consentgate_consent::store::{ConsentStore, PostgresStore, SqliteStore};
use consentgate_consent::testing::{Backend, TestDb, backends};
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
use std::sync::Arc;
use std::sync::Mutex;
use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The statements sqlx ran, by their summary (`INSERT INTO …`, `SELECT …`).
static STATEMENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps each `sqlx::query` event's summary.
struct Counter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        struct Summary(String);
        impl Visit for Summary {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "summary" {
                    self.0 = value.to_owned();
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "summary" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut summary = Summary(String::new());
        event.record(&mut summary);
        STATEMENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(summary.0);
    }
}

/// The statements counted since the last call, but for a new pooled connection's own setup
/// (SQLite's `PRAGMA`s): sqlx returns a connection to its pool in a task of its own after the
/// commit, so a write that follows at once may be handed a new connection, which is no round
/// trip of the write's.
fn counted() -> Vec<String> {
    std::mem::take(&mut *STATEMENTS.lock().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .filter(|summary| !summary.to_ascii_uppercase().starts_with("PRAGMA"))
        .collect()
}

fn grant(subject: &SubjectKey, purpose: &str, state: &str) -> Write {
    let record_id = uuid::Uuid::new_v4().to_string();
    let change = Change::Consent(NewConsent {
        record_id: record_id.clone(),
        subject: subject.clone(),
        purpose: purpose.to_owned(),
        scope: None,
        channel: None,
        state: RecordState::parse(state).expect("a record state"),
        consent_type: ConsentType::Explicit,
        legal_basis: LegalBasis::Consent,
        jurisdiction: "EU".to_owned(),
        notice_id: "privacy-notice".to_owned(),
        notice_version: "2.1".to_owned(),
        collection_method: CollectionMethod::PreferenceCenter,
        collected_at: OffsetDateTime::now_utc(),
        expires_at: None,
        source_ip: "203.0.113.0".to_owned(),
        user_agent: "round-trips/1.0".to_owned(),
        guardian_ref: None,
        receipt: (state == "given").then(|| Receipt::Derived {
            context: ReceiptContext {
                kid: "test-kid".into(),
                public_key: "test-public-key".into(),
                language: "en".into(),
                controller: "Example Brand".into(),
                policy_url: "https://example.com/privacy".into(),
                description: "Emails about offers".into(),
                categories: vec!["user.contact.email".into()],
                sensitive: Vec::new(),
            },
            signature: vec![7; 64],
        }),
        imported: None,
    });
    Write {
        caller: "preference-center".into(),
        delegate: None,
        idempotency_key: record_id,
        fingerprint: [1; 32],
        change,
    }
}

/// The most statements sqlx may report for one lone write: the run's lookup (one statement,
/// whatever it reads) and its INSERTs (one statement), and on PostgreSQL the commit notice and
/// `COMMIT` (sqlx reports neither `BEGIN` nor SQLite's `COMMIT`; the advisory lock travels with
/// `BEGIN`).
fn most_statements(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 2,
        Backend::Postgres => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_makes_a_few_round_trips_whatever_it_writes() {
    tracing_subscriber::registry()
        .with(Counter)
        .with(
            tracing_subscriber::filter::Targets::new()
                .with_target("sqlx::query", tracing::Level::TRACE),
        )
        .init();
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let keys = Arc::new(LedgerKeys::generate());
        let store: Arc<dyn ConsentStore> = match backend {
            Backend::Sqlite => Arc::new(SqliteStore::connect(&db.url, keys).await.expect("open")),
            Backend::Postgres => {
                Arc::new(PostgresStore::connect(&db.url, keys).await.expect("open"))
            }
        };
        let person = SubjectKey::Subject("round-trips-person".into());
        // A subject's first write (its row and pseudonym key are new), a grant with a receipt
        // on a subject already held, and a withdrawal (no receipt).
        for (what, write) in [
            (
                "a first grant",
                grant(&person, "marketing.communications.email", "given"),
            ),
            (
                "a second grant",
                grant(&person, "analytics.reporting", "given"),
            ),
            (
                "a withdrawal",
                grant(&person, "analytics.reporting", "withdrawn"),
            ),
        ] {
            counted();
            store.write(write).await.expect("the write commits");
            let statements = counted();
            eprintln!(
                "{backend:?}: {what}: {} statements: {statements:?}",
                statements.len()
            );
            assert!(
                !statements.is_empty(),
                "{backend:?}: no statement was counted: the counter no longer sees sqlx's events"
            );
            assert!(
                statements.len() <= most_statements(backend),
                "{backend:?}: {what} made {} statements, at most {} expected: {statements:#?}",
                statements.len(),
                most_statements(backend)
            );
        }
        // A decision's read of a subject (a decision cache's miss) is one statement, which
        // sees one snapshot by itself: no transaction around it, no statement per kind.
        counted();
        let rows = store
            .load_subject(&person)
            .await
            .expect("the subject loads");
        let statements = counted();
        assert_eq!(
            rows.records.len(),
            2,
            "{backend:?}: the subject's current records: {rows:?}"
        );
        assert_eq!(
            statements.len(),
            1,
            "{backend:?}: loading a subject made {} statements: {statements:#?}",
            statements.len()
        );
    }
}
