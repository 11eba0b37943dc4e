//! Backup and restore must not bring an erased person back (issue 14, deliverable 5), on SQLite
//! and PostgreSQL: a service's database is backed up while it runs (SQLite `VACUUM INTO`,
//! PostgreSQL `pg_dump`), a subject is erased through the real cascade, the backup is restored
//! over the database and the service started on it (the erased person's data is back: the
//! problem), then `ReapplyErasures` runs, and the person is gone everywhere again while
//! everybody else is untouched, the ledger and the access log verify, and a second run changes
//! nothing. docs/operations.md, "Backup and restore", is the procedure these tests follow.

mod common;

use common::*;
use consentgate_consent::testing::{Backend, POSTGRES_ENV, TestDb, backends};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::recommendation::v1 as rpb;
use sqlx::Row;
use std::path::PathBuf;

/// Whom the tests erase, and the values only they have (scanned for afterwards).
const GONE: &str = "restore-gone";
const GONE_EMAIL: &str = "gone-canary@example.com";
const GONE_ANSWER: &str = "gone-canary-bouldering";
/// Whom nobody erases.
const KEPT: &str = "restore-kept";
const KEPT_EMAIL: &str = "kept@example.com";

/// The three services wired as in production, each on its own database, the profile service
/// cascading erasures to the recommendation service.
struct Wired {
    consent: TestServer,
    profile: ProfileServer,
    recommendation: RecommendationServer,
    recommendation_db: TestDb,
}

impl Wired {
    async fn start(backend: Backend) -> Wired {
        let consent = TestServer::start(backend).await;
        let listener = ephemeral().await;
        let cascade = Cascade(Some(format!(
            "http://{}",
            listener.local_addr().expect("address")
        )));
        let profile =
            ProfileServer::start_full(&consent, backend, ProfileOptions::default(), cascade).await;
        let recommendation_db = TestDb::new(backend).await;
        let recommendation =
            RecommendationServer::start_on(listener, &consent, &profile, &recommendation_db.url)
                .await;
        Wired {
            consent,
            profile,
            recommendation,
            recommendation_db,
        }
    }

    /// Stops the consent service, restores its database from `backup`, starts it again on the
    /// same address, database and keys.
    async fn restore_consent(self, backup: &Backup) -> Wired {
        let stopped = self.consent.stop_keeping().await;
        restore(stopped.db.as_ref().expect("own database"), backup).await;
        Wired {
            consent: stopped.start().await,
            ..self
        }
    }

    /// Stops the profile service, restores its database from `backup` if given, starts it again
    /// on the same address and database.
    async fn restart_profile(self, backup: Option<&Backup>) -> Wired {
        let cascade = Cascade(Some(format!("http://{}", self.recommendation.addr)));
        let (addr, db) = self.profile.stop_keeping().await;
        if let Some(backup) = backup {
            restore(&db, backup).await;
        }
        let profile = ProfileServer::start_on(
            rebind(addr).await,
            &self.consent,
            db,
            ProfileOptions::default(),
            cascade,
        )
        .await;
        Wired { profile, ..self }
    }

    /// Stops the recommendation service, restores its database from `backup` if given, starts
    /// it again on the same address and database (its model, held in memory, starts empty).
    async fn restart_recommendation(self, backup: Option<&Backup>) -> Wired {
        let addr = self.recommendation.addr;
        self.recommendation.stop().await;
        if let Some(backup) = backup {
            restore(&self.recommendation_db, backup).await;
        }
        let recommendation = RecommendationServer::start_on(
            rebind(addr).await,
            &self.consent,
            &self.profile,
            &self.recommendation_db.url,
        )
        .await;
        Wired {
            recommendation,
            ..self
        }
    }

    async fn stop(self) {
        self.recommendation.stop().await;
        self.profile.stop().await;
        self.consent.stop().await;
    }
}

/// Consents, profile data and a learned model contribution for `who`.
async fn seed(wired: &Wired, who: &str, email: &str, answer: &str) -> u64 {
    let mut pc = wired.consent.as_caller("preference-center").await;
    let mut revision = 0;
    for purpose in [
        "personalize.content.profiled",
        "personalize.content.limited",
        "train_ai_system",
    ] {
        revision = pc
            .grant(grant(who, purpose, &format!("{who}-{purpose}")))
            .await
            .expect("grant")
            .into_inner()
            .revision;
    }
    let collector = wired.profile.as_caller("collector").await;
    let r = collector
        .clone()
        .set_attributes(ppb::SetAttributesRequest {
            subject: subject(who),
            context: None,
            attributes: vec![attribute(
                "email",
                email,
                "user.contact.email",
                "essential.service",
            )],
        })
        .await
        .expect("attributes")
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");
    let r = collector
        .clone()
        .record_events(product_views(who, &["sku-00001", "sku-00002", "sku-00003"]))
        .await
        .expect("events")
        .into_inner();
    assert_eq!(r.accepted, 3, "{r:?}");
    let r = wired
        .profile
        .as_caller("preference-center")
        .await
        .submit_answers(ppb::SubmitAnswersRequest {
            subject: subject(who),
            purpose: "personalize.content.limited".into(),
            answers: vec![ppb::AnswerInput {
                kind: ppb::AnswerKind::Preference as i32,
                question_id: "fav-sport".into(),
                question: "Your favorite sport?".into(),
                answer: answer.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("answers")
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");
    // A profiled recommendation teaches the model the subject's history.
    let r = wired
        .recommendation
        .as_caller("recommendation-service")
        .await
        .recommend(rpb::RecommendRequest {
            subject: subject(who),
            n: 3,
            at_least_as_fresh: revision.to_string(),
            ..Default::default()
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(r.tier(), rpb::Tier::Profiled, "{}", r.tier_reason);
    assert!(learned(wired, who), "the model learned {who}");
    revision
}

/// Whether the recommendation model holds a contribution of `who`.
fn learned(wired: &Wired, who: &str) -> bool {
    wired
        .recommendation
        .recommender
        .model
        .lock()
        .expect("model")
        .learned_revision(&format!("s:{who}"))
        .is_some()
}

async fn erase_through_the_cascade(wired: &Wired, who: &str) {
    let status = wired
        .profile
        .as_caller("privacy-ops")
        .await
        .erase_subject(ppb::EraseSubjectRequest {
            subject: subject(who),
            idempotency_key: format!("erase-{who}"),
        })
        .await
        .expect("erase")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state(), ppb::ErasureState::Completed, "{status:?}");
    assert!(!learned(wired, who), "the cascade unlearned {who}");
}

async fn reapply(wired: &Wired) -> ppb::ReapplyErasuresResponse {
    let reply = wired
        .profile
        .as_caller("privacy-ops")
        .await
        .reapply_erasures(ppb::ReapplyErasuresRequest {})
        .await
        .expect("ReapplyErasures")
        .into_inner();
    assert_eq!(reply.state(), ppb::RequestState::Completed, "{reply:?}");
    reply
}

// ------------------------------------------------------------------ backups

/// A backup of one database, taken while its service ran.
enum Backup {
    /// A consistent copy of the SQLite file (`VACUUM INTO`).
    Sqlite(PathBuf),
    /// A `pg_dump` archive (custom format).
    Postgres(PathBuf),
}

fn sqlite_path(db: &TestDb) -> PathBuf {
    PathBuf::from(db.url.trim_start_matches("sqlite://"))
}

fn database_name(db: &TestDb) -> String {
    db.url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned()
}

async fn backup(db: &TestDb) -> Backup {
    match db.backend() {
        Backend::Sqlite => {
            let path = sqlite_path(db);
            let copy = path.with_extension("backup");
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&db.url)
                .await
                .expect("open the live database");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "VACUUM INTO '{}'",
                copy.display()
            )))
            .execute(&pool)
            .await
            .expect("VACUUM INTO");
            pool.close().await;
            Backup::Sqlite(copy)
        }
        Backend::Postgres => {
            let file = std::env::temp_dir().join(format!("{}.dump", database_name(db)));
            let out = std::process::Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--file"])
                .arg(&file)
                .arg(&db.url)
                .output()
                .expect("pg_dump (postgresql-client) is needed for the PostgreSQL half");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Backup::Postgres(file)
        }
    }
}

/// Replaces the (stopped) service's database with the backup.
async fn restore(db: &TestDb, backup: &Backup) {
    match backup {
        Backup::Sqlite(copy) => {
            let path = sqlite_path(db);
            // The old write-ahead log must go with the file, or it would be replayed over the
            // restored one.
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            std::fs::copy(copy, &path).expect("copy the backup in");
        }
        Backup::Postgres(file) => {
            use sqlx::Connection;
            let admin = std::env::var(POSTGRES_ENV).expect("set for PostgreSQL");
            let name = database_name(db);
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL");
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .expect("recreate the database");
            }
            conn.close().await.expect("close");
            let out = std::process::Command::new("pg_restore")
                .args(["--no-owner", "--exit-on-error", "--dbname"])
                .arg(&db.url)
                .arg(file)
                .output()
                .expect("pg_restore");
            assert!(
                out.status.success(),
                "pg_restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

// ------------------------------------------------------------------ what is held

/// Rows naming `key` in each of `tables` of the database at `url`.
async fn rows_of(url: &str, tables: &[&str], key: &str) -> Vec<(String, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool");
    let mut out = Vec::new();
    for table in tables {
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table} WHERE subject = $1"
        )))
        .bind(key)
        .fetch_one(&pool)
        .await
        .expect("count")
        .get(0);
        out.push(((*table).to_owned(), n));
    }
    pool.close().await;
    out
}

const PROFILE_TABLES: [&str; 4] = ["attributes", "events", "answers", "subject_keys"];
const CONSENT_TABLES: [&str; 5] = [
    "consent_records",
    "consent_current",
    "receipts",
    "signals",
    "subjects",
];

async fn profile_rows(wired: &Wired, who: &str) -> i64 {
    rows_of(&wired.profile.db.url, &PROFILE_TABLES, &format!("s:{who}"))
        .await
        .iter()
        .map(|(_, n)| n)
        .sum()
}

async fn consent_rows(wired: &Wired, who: &str) -> i64 {
    let url = &wired.consent.db.as_ref().expect("own database").url;
    rows_of(url, &CONSENT_TABLES, &format!("s:{who}"))
        .await
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Check's verdict and top-level reason for `who`, asked fresh.
async fn checked(wired: &Wired, who: &str) -> (pb::Verdict, String) {
    let d = wired
        .consent
        .as_caller("recommendation-service")
        .await
        .check(check(
            who,
            "personalize.content.profiled",
            &["user.behavior.browsing_history"],
        ))
        .await
        .expect("check")
        .into_inner();
    (d.verdict(), d.reason)
}

async fn export(wired: &Wired, who: &str) -> String {
    wired
        .profile
        .as_caller("privacy-ops")
        .await
        .export_subject_data(ppb::ExportSubjectDataRequest {
            subject: subject(who),
        })
        .await
        .expect("export")
        .into_inner()
        .document_json
}

/// Everything the erased person must be gone from, and everything the others must keep.
async fn assert_gone_everywhere(wired: &Wired, kept_profile_rows: i64, kept_consents: usize) {
    assert_eq!(profile_rows(wired, GONE).await, 0, "profile rows of {GONE}");
    assert_eq!(consent_rows(wired, GONE).await, 0, "consent rows of {GONE}");
    let text = wired.profile.all_text().await;
    assert!(
        !text.contains(GONE_EMAIL) && !text.contains(GONE_ANSWER),
        "the profile database still holds the erased person's values"
    );
    let document = export(wired, GONE).await;
    assert!(
        !document.contains(GONE_EMAIL) && !document.contains(GONE_ANSWER),
        "the export still holds them: {document}"
    );
    assert_eq!(
        checked(wired, GONE).await,
        (pb::Verdict::Deny, "SUBJECT_ERASED".to_owned())
    );
    assert!(!learned(wired, GONE), "the model holds the erased person");
    // Everybody else is untouched.
    assert_eq!(profile_rows(wired, KEPT).await, kept_profile_rows);
    assert!(export(wired, KEPT).await.contains(KEPT_EMAIL));
    let consents = wired
        .consent
        .as_caller("privacy-ops")
        .await
        .get_consents(pb::GetConsentsRequest {
            on_behalf_of: String::new(),
            subject: subject(KEPT),
        })
        .await
        .expect("kept's consents")
        .into_inner()
        .consents;
    assert_eq!(consents.len(), kept_consents);
    assert_eq!(checked(wired, KEPT).await.0, pb::Verdict::Allow);
    // The ledger and the access log verify.
    let ledger = wired
        .consent
        .as_caller("auditor")
        .await
        .verify_ledger(pb::VerifyLedgerRequest::default())
        .await
        .expect("verify ledger")
        .into_inner();
    assert!(ledger.ok, "{ledger:?}");
    let log = wired
        .profile
        .as_caller("auditor")
        .await
        .verify_access_log(ppb::VerifyAccessLogRequest {})
        .await
        .expect("verify access log")
        .into_inner();
    assert!(log.ok, "{log:?}");
}

/// A second run finds nothing to do and changes nothing.
async fn assert_second_run_changes_nothing(wired: &Wired) {
    let ledger = wired.consent.ledger_len().await;
    let kept = profile_rows(wired, KEPT).await;
    let again = reapply(wired).await;
    let o = again.outcome.expect("outcome");
    assert_eq!(
        (
            o.consent_tombstones_restored,
            o.consent_subjects_erased,
            o.profile_subjects_erased,
            o.profile_rows_deleted,
            o.recommendation_unlearned,
            o.tombstones_copied
        ),
        (0, 0, 0, 0, 0, 0),
        "{o:?}"
    );
    assert!(o.tombstones_sent >= 1, "{o:?}");
    assert_eq!(wired.consent.ledger_len().await, ledger, "no ledger entry");
    assert_eq!(profile_rows(wired, KEPT).await, kept);
    assert_eq!(profile_rows(wired, GONE).await, 0);
}

// ------------------------------------------------------------------ the cases

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_profile_database_is_healed_from_the_consent_service() {
    for backend in backends() {
        let wired = Wired::start(backend).await;
        seed(&wired, GONE, GONE_EMAIL, GONE_ANSWER).await;
        seed(&wired, KEPT, KEPT_EMAIL, "kept-answer").await;
        let kept_rows = profile_rows(&wired, KEPT).await;
        let saved = backup(&wired.profile.db).await;

        erase_through_the_cascade(&wired, GONE).await;
        assert_eq!(profile_rows(&wired, GONE).await, 0);

        // The restore brings the erased person's data back into the profile database (gated
        // reads stay denied: the consent service kept the tombstone).
        let wired = wired.restart_profile(Some(&saved)).await;
        assert!(
            profile_rows(&wired, GONE).await > 0,
            "{backend:?}: the backup holds the person"
        );
        assert!(wired.profile.all_text().await.contains(GONE_EMAIL));
        assert_eq!(checked(&wired, GONE).await.1, "SUBJECT_ERASED");

        let run = reapply(&wired).await;
        let o = run.outcome.clone().expect("outcome");
        assert_eq!(o.profile_subjects_erased, 1, "{backend:?}: {o:?}");
        // The copy kept at the erasure was lost with the restore; it is kept again.
        assert_eq!(o.tombstones_copied, 1, "{o:?}");
        assert!(o.profile_rows_deleted >= 5, "{o:?}");
        assert_eq!(o.subjects_checked, 2, "{o:?}");
        assert_eq!(
            (o.consent_tombstones_restored, o.consent_subjects_erased),
            (0, 0),
            "the consent database was not restored: {o:?}"
        );
        assert_gone_everywhere(&wired, kept_rows, 3).await;

        // The run is provable by its id, and names nobody.
        let status = wired
            .profile
            .as_caller("auditor")
            .await
            .get_request_status(ppb::GetRequestStatusRequest {
                request_id: run.request_id.clone(),
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status");
        assert_eq!(status.kind(), ppb::RequestKind::ErasureReapply);
        assert_eq!(status.state(), ppb::RequestState::Completed);
        assert!(!status.summary.contains(GONE), "{}", status.summary);

        assert_second_run_changes_nothing(&wired).await;
        wired.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_consent_database_gets_its_tombstones_back_from_the_profile_service() {
    for backend in backends() {
        let wired = Wired::start(backend).await;
        seed(&wired, GONE, GONE_EMAIL, GONE_ANSWER).await;
        seed(&wired, KEPT, KEPT_EMAIL, "kept-answer").await;
        let kept_rows = profile_rows(&wired, KEPT).await;
        let saved = backup(wired.consent.db.as_ref().expect("own database")).await;

        erase_through_the_cascade(&wired, GONE).await;
        let erased_ledger = wired.consent.ledger_len().await;

        // The restore brings the person's consents and ledger pseudonym key back, and loses
        // the tombstone: the consent service would allow processing again.
        let wired = wired.restore_consent(&saved).await;
        assert!(consent_rows(&wired, GONE).await > 0, "{backend:?}");
        assert_eq!(checked(&wired, GONE).await.0, pb::Verdict::Allow);
        let restored_ledger = wired.consent.ledger_len().await;
        assert!(
            restored_ledger < erased_ledger,
            "the erasure's entry is gone"
        );
        // As the procedure says: the enforcers restart after a consent restore (their gates
        // follow revisions the restored database reuses).
        let wired = wired.restart_profile(None).await;
        let wired = wired.restart_recommendation(None).await;

        let o = reapply(&wired).await.outcome.expect("outcome");
        assert_eq!(
            (
                o.tombstones_sent,
                o.consent_tombstones_restored,
                o.consent_subjects_erased
            ),
            (1, 1, 1),
            "{backend:?}: {o:?}"
        );
        assert_eq!(
            (o.profile_subjects_erased, o.tombstones_copied),
            (0, 0),
            "{o:?}"
        );
        // One `erase` entry re-records the erasure; the chain still verifies (below).
        assert_eq!(wired.consent.ledger_len().await, restored_ledger + 1);
        assert_gone_everywhere(&wired, kept_rows, 3).await;
        let mut pc = wired.consent.as_caller("preference-center").await;
        let refused = pc
            .grant(grant(GONE, "personalize.content.limited", "after-restore"))
            .await
            .expect_err("nothing more is recorded about an erased subject");
        assert_eq!(reason(&refused), "SUBJECT_ERASED");

        assert_second_run_changes_nothing(&wired).await;
        wired.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_recommendation_database_holds_nobody() {
    for backend in backends() {
        let wired = Wired::start(backend).await;
        seed(&wired, GONE, GONE_EMAIL, GONE_ANSWER).await;
        let saved = backup(&wired.recommendation_db).await;
        erase_through_the_cascade(&wired, GONE).await;

        let wired = wired.restart_recommendation(Some(&saved)).await;
        // The model lives in memory and learns only under a training decision, which the
        // consent service denies for an erased person: nothing of them comes back.
        let r = wired
            .recommendation
            .as_caller("recommendation-service")
            .await
            .recommend(rpb::RecommendRequest {
                subject: subject(GONE),
                n: 3,
                ..Default::default()
            })
            .await
            .expect("recommend")
            .into_inner();
        assert_eq!(r.tier(), rpb::Tier::Popular, "{backend:?}");
        assert!(!learned(&wired, GONE));
        // Nothing to re-apply; the operator's command says so and succeeds.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_consentgate"))
            .args(["restore", "reapply-erasures", "--profile"])
            .arg(format!("http://{}", wired.profile.addr))
            .env("CONSENTGATE_PRIVACY_OPS_TOKEN", token("privacy-ops"))
            .output()
            .await
            .expect("run consentgate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(
                "completed: 0 erased again in the consent database, 0 in the profile database"
            ),
            "{stdout}"
        );
        assert!(!stdout.contains(GONE), "{stdout}");
        wired.stop().await;
    }
}
