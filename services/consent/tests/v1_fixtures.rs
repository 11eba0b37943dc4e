//! Ledgers written before `consentgate-chain` existed keep verifying, byte for byte: a SQLite
//! database written by the version-1 code (70 entries of every kind, a signed checkpoint at 64,
//! an erased subject) and its seed (`tests/fixtures/v1/`) are opened with today's code and walked
//! end to end; a one-byte edit in a copy is named at its entry.

use base64::Engine as _;
use consentgate_consent::ledger::{self, LedgerKeys};
use consentgate_consent::model::SubjectKey;
use consentgate_consent::store::{ConsentStore, SqliteStore, idempotency_handle};
use sqlx::{Connection, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The head hash the version-1 code reported for the fixture ledger.
const V1_HEAD: &str = "b2c1839d497ee7208ef1a5ecf536e9a71b06a99e9752fda2d3f6a0303938a179";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// A private copy of the fixture database (opening a store migrates and writes to it), and the
/// fixture's keys.
struct Copy {
    store: SqliteStore,
    keys: Arc<LedgerKeys>,
    dir: PathBuf,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn open_copy() -> Copy {
    let dir = std::env::temp_dir().join(format!("cg_v1_consent_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    std::fs::copy(fixtures().join("consent.db"), dir.join("consent.db")).expect("copy fixture");
    let keys = Arc::new(LedgerKeys::load(&fixtures().join("ledger.key")).expect("seed"));
    let url = format!("sqlite://{}", dir.join("consent.db").display());
    let store = SqliteStore::connect(&url, keys.clone())
        .await
        .expect("open the v1 database");
    Copy { store, keys, dir }
}

#[tokio::test]
async fn a_v1_ledger_verifies_end_to_end() {
    let copy = open_copy().await;
    let report = ledger::verify(&copy.store, copy.keys.verifiers())
        .await
        .expect("verify");
    assert_eq!(report.broken, None);
    assert_eq!(
        (report.entries_checked, report.checkpoints_checked),
        (70, 1)
    );
    assert_eq!(hex::encode(&report.head_hash), V1_HEAD);
    // Its checkpoint predates key ids: verified with the seed's key, the keyring's unlabelled one.
    assert_eq!(report.signers, vec![None]);
    assert_eq!(
        copy.keys.verifiers().unlabelled_kid(),
        Some(copy.keys.kid())
    );
    // Today's pseudonym of a subject under its stored key is the HMAC its v1 entries carry
    // (they wrote it in hex, version 3 in base64url).
    let key: Vec<u8> =
        sqlx::query("SELECT key FROM subjects WHERE subject = 's:fixture-subject-1'")
            .fetch_one(copy.store.pool())
            .await
            .expect("the subject's key")
            .get(0);
    let today = ledger::pseudonym(&key, &SubjectKey::Subject("fixture-subject-1".into()));
    let pseudonym = consentgate_chain::pseudonym(&key, "s:fixture-subject-1");
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&today)
            .map(hex::encode)
            .as_deref(),
        Ok(pseudonym.as_str())
    );
    let first = ConsentStore::ledger(&copy.store, 0, 1)
        .await
        .expect("ledger")
        .remove(0);
    assert!(
        first
            .event
            .contains(&format!("\"subject\":\"{pseudonym}\"")),
        "{}",
        first.event
    );
}

#[tokio::test]
async fn a_one_byte_edit_in_a_v1_ledger_is_named_at_its_entry() {
    let copy = open_copy().await;
    let entry = ConsentStore::ledger(&copy.store, 9, 1)
        .await
        .expect("ledger")
        .remove(0);
    assert_eq!(entry.seq, 10);
    // One byte: the first digit of the entry's timestamp year, 2 → 3.
    let edited = entry.event.replacen("\"at\":\"2", "\"at\":\"3", 1);
    assert_eq!(edited.len(), entry.event.len());
    assert_ne!(edited, entry.event);
    sqlx::query("UPDATE ledger SET event = $1 WHERE seq = 10")
        .bind(edited)
        .execute(copy.store.pool())
        .await
        .expect("edit");
    let report = ledger::verify(&copy.store, copy.keys.verifiers())
        .await
        .expect("verify");
    assert_eq!(
        report.broken,
        Some((10, "hash mismatch: the entry was altered".to_owned()))
    );
}

#[tokio::test]
async fn a_one_byte_edit_in_a_v1_checkpoint_signature_is_detected() {
    let copy = open_copy().await;
    let mut signature: Vec<u8> = sqlx::query("SELECT signature FROM checkpoints WHERE seq = 64")
        .fetch_one(copy.store.pool())
        .await
        .expect("the checkpoint")
        .get(0);
    signature[0] ^= 1;
    sqlx::query("UPDATE checkpoints SET signature = $1 WHERE seq = 64")
        .bind(signature)
        .execute(copy.store.pool())
        .await
        .expect("edit");
    let report = ledger::verify(&copy.store, copy.keys.verifiers())
        .await
        .expect("verify");
    // Checked with the seed's key (the checkpoint has no key id), which the problem names.
    let expected = format!(
        "checkpoint signature does not verify (key id {})",
        copy.keys.kid()
    );
    assert_eq!(report.broken, Some((64, expected)));
}

/// Records written whole (before bodies kept only what the ledger entry leaves out) read back
/// whole: each as its stored body says, beside the ledger entry of its revision.
#[tokio::test]
async fn a_v1_databases_whole_records_read_back() {
    let copy = open_copy().await;
    let subject = SubjectKey::Subject("fixture-subject-1".into());
    let history = copy.store.history(&subject, 0, 100).await.expect("history");
    assert!(!history.is_empty(), "the fixture subject has records");
    for record in &history {
        let stored: serde_json::Value = serde_json::from_str(
            &sqlx::query("SELECT body FROM consent_records WHERE revision = $1")
                .bind(record.revision as i64)
                .fetch_one(copy.store.pool())
                .await
                .expect("the record's row")
                .get::<String, _>(0),
        )
        .expect("a whole record");
        assert_eq!(stored["record_id"], record.consent.record_id.as_str());
        assert_eq!(stored["purpose"], record.consent.purpose.as_str());
        assert_eq!(stored["user_agent"], record.consent.user_agent.as_str());
        assert_eq!(record.consent.subject, subject);
    }
}

/// Idempotency records from before revisions were kept (copies of the answer) are keyed by the
/// revision their copy names once migrated (migration 0011) and found by their key's handle
/// (migration 0016): every one is kept, under its own caller and key, and erasing their subject
/// deletes them through the ledger entries of those revisions, as it does new ones.
#[tokio::test]
async fn v1_idempotency_copies_keep_their_revision_and_go_with_their_subject() {
    // The records as the version-1 code kept them, read from the fixture itself.
    let mut fixture = sqlx::sqlite::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=ro",
        fixtures().join("consent.db").display()
    ))
    .await
    .expect("the fixture, read-only");
    let kept: Vec<(String, String, i64)> =
        sqlx::query("SELECT caller, key, outcome FROM idempotency")
            .fetch_all(&mut fixture)
            .await
            .expect("v1 idempotency records")
            .iter()
            .map(|r| {
                let copied: serde_json::Value =
                    serde_json::from_str(&r.get::<String, _>(2)).expect("a copy of the answer");
                let revision = copied["revision"]
                    .as_i64()
                    .expect("the copy names a revision");
                (r.get(0), r.get(1), revision)
            })
            .collect();
    assert_eq!(kept.len(), 57, "the fixture's records");

    let copy = open_copy().await;
    let pool = copy.store.pool();
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM idempotency")
        .fetch_one(pool)
        .await
        .expect("idempotency records")
        .get(0);
    assert_eq!(rows, 57, "every v1 idempotency record is kept");
    for (caller, key, revision) in &kept {
        let found: i64 = sqlx::query("SELECT revision FROM idempotency WHERE handle = $1")
            .bind(idempotency_handle(caller, key))
            .fetch_one(pool)
            .await
            .expect("found by its key's handle")
            .get(0);
        assert_eq!(found, *revision, "keyed by the revision its copy names");
    }
    let subject = "s:fixture-subject-1";
    let count = async |sql: &'static str| -> i64 {
        sqlx::query(sql)
            .bind(subject)
            .fetch_one(pool)
            .await
            .expect("count")
            .get(0)
    };
    // The subject's and its linked devices' (erasure takes both).
    let held = count(
        "SELECT COUNT(*) FROM idempotency i JOIN ledger l ON l.seq = i.revision \
         WHERE l.subject = $1 OR l.subject IN (SELECT device FROM links WHERE subject = $1)",
    )
    .await;
    assert!(held > 0, "the fixture subject has idempotency records");
    let erase = consentgate_consent::model::Change::Erase {
        subject: SubjectKey::Subject("fixture-subject-1".into()),
    };
    copy.store
        .write(consentgate_consent::model::Write {
            caller: "privacy-ops".into(),
            delegate: None,
            idempotency_key: "v1-erasure".into(),
            fingerprint: [7; 32],
            change: erase,
        })
        .await
        .expect("erase");
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM idempotency")
        .fetch_one(pool)
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        left,
        57 - held + 1,
        "the subject's records went, the erasure's own is kept"
    );
    let left_behind: i64 = sqlx::query(
        "SELECT COUNT(*) FROM idempotency i JOIN ledger l ON l.seq = i.revision \
         WHERE l.subject IS NULL AND i.records_deleted IS NULL \
           AND l.event NOT LIKE '%\"kind\":\"erase\"%' AND l.event NOT LIKE '%,\"erase\",%'",
    )
    .fetch_one(pool)
    .await
    .expect("count")
    .get(0);
    assert_eq!(left_behind, 0, "no record of an un-named change is left");
}

/// The change stream of a version-1 database, once its `changes` table moved into the ledger
/// (migration 0013), says what that table said, change by change: the revision, the subject
/// (none for an erased one), the kind and the purpose, read from entries of version 1.
#[tokio::test]
async fn a_v1_change_stream_reads_the_same_from_the_ledger() {
    let original = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        fixtures().join("consent.db").display()
    ))
    .await
    .expect("the fixture, read only");
    let before: Vec<(u64, Option<String>, String, Option<String>)> =
        sqlx::query("SELECT revision, subject, kind, purpose FROM changes ORDER BY revision")
            .fetch_all(&original)
            .await
            .expect("the v1 changes")
            .iter()
            .map(|r| {
                (
                    u64::try_from(r.get::<i64, _>(0)).expect("a revision"),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                )
            })
            .collect();
    assert_eq!(before.len(), 70, "one change per entry in the fixture");
    assert!(before.iter().any(|c| c.1.is_none()), "an erased subject's");

    let copy = open_copy().await;
    let (events, high) = copy.store.changes_after(0, 1_000).await.expect("changes");
    assert_eq!(high, 70);
    let after: Vec<(u64, Option<String>, String, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e.revision,
                e.subject.as_ref().map(SubjectKey::storage),
                e.kind.clone(),
                e.purpose.clone(),
            )
        })
        .collect();
    assert_eq!(after, before);
    assert!(
        events.iter().all(|e| e.committed_at.is_some()),
        "every change has its entry's time"
    );
}
