//! Access logs written before `consentgate-chain` existed keep verifying, byte for byte: a SQLite
//! database written by the version-1 code (12 entries in two flushes, one subject erased since)
//! (`tests/fixtures/v1/profile.db`) is opened with today's code and walked end to end; a one-byte
//! edit in a copy is named at its entry.

use consentgate_profile::access_log;
use consentgate_profile::store::{ProfileStore, SqliteStore};
use sqlx::Row;
use std::path::{Path, PathBuf};

/// The head hash the version-1 code reported for the fixture log.
const V1_HEAD: &str = "56718892d88e71b9e4ff07814a22991e5d146e4480c8eecde6824be7a818b40f";

/// A private copy of the fixture database (opening a store migrates and writes to it).
struct Copy {
    store: SqliteStore,
    dir: PathBuf,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn open_copy() -> Copy {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/profile.db");
    let dir = std::env::temp_dir().join(format!("cg_v1_profile_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    std::fs::copy(fixture, dir.join("profile.db")).expect("copy fixture");
    let url = format!("sqlite://{}", dir.join("profile.db").display());
    let store = SqliteStore::connect(&url)
        .await
        .expect("open the v1 database");
    Copy { store, dir }
}

#[tokio::test]
async fn a_v1_access_log_verifies_end_to_end() {
    let copy = open_copy().await;
    let v = access_log::verify(&copy.store).await.expect("verify");
    assert_eq!((v.entries_checked, v.broken), (12, None));
    assert_eq!(v.head_hash, V1_HEAD);
    // Today's pseudonym of a subject under its stored key is the one its v1 entries carry.
    let secret: String = sqlx::query("SELECT secret FROM subject_keys WHERE subject = 's:lou'")
        .fetch_one(copy.store.pool())
        .await
        .expect("lou's key")
        .get(0);
    let first = ProfileStore::access_log_page(&copy.store, 0, 1)
        .await
        .expect("page")
        .remove(0);
    assert_eq!(first.pseudonym, access_log::pseudonym(&secret, "s:lou"));
}

#[tokio::test]
async fn a_one_byte_edit_in_a_v1_access_log_is_named_at_its_entry() {
    let copy = open_copy().await;
    // One byte: "mailer" → "mailes".
    let edited =
        sqlx::query("UPDATE access_log SET caller = 'mailes' WHERE seq = 8 AND caller = 'mailer'")
            .execute(copy.store.pool())
            .await
            .expect("edit");
    assert_eq!(edited.rows_affected(), 1);
    let v = access_log::verify(&copy.store).await.expect("verify");
    assert_eq!(
        v.broken,
        Some((8, "hash mismatch (the entry was altered)".to_owned()))
    );
}
