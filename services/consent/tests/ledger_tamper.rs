//! Ledger tamper-evidence (docs/architecture.md §3 "Audit, proof and transparency"): on every backend, a real ledger of
//! 150 entries (checkpoints at 64 and 128) verifies, and every single-entry tampering done with SQL
//! behind the store's back (edit, edit-and-rehash, consistent suffix rewrite, deletion, reorder,
//! truncation, forged checkpoints) is detected at the right seq, each on a fresh database.
//! Erasure (crypto-shredding) keeps the chain verifying. A signing-key rotation keeps every
//! checkpoint verifying under the key its id names (those from before key ids under the bare
//! seed's key), keeps erased subjects erased, and a tampered or unknown key id is named.

use consentgate_consent::ledger::{self, CHECKPOINT_EVERY, Keyring, LedgerKeys, VerifyReport};
use consentgate_consent::model::{Change, LedgerEntry, NewConsent, SubjectKey, Write};
use consentgate_consent::store::{ConsentStore, PostgresStore, SqliteStore};
use consentgate_consent::testing::{Backend, POSTGRES_ENV, TestDb, backends};
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
use sqlx::{AnyPool, Connection};
use std::sync::Arc;
use time::OffsetDateTime;

/// Entries in every test ledger.
const ENTRIES: u64 = 150;
/// The checkpoints a 150-entry ledger has.
const CP1: u64 = CHECKPOINT_EVERY;
const CP2: u64 = 2 * CHECKPOINT_EVERY;

// ---------------------------------------------------------------------------------------------
// Building writes
// ---------------------------------------------------------------------------------------------

fn person(i: u64) -> SubjectKey {
    SubjectKey::Subject(format!("tamper-subject-{i}"))
}

fn device(i: u64) -> SubjectKey {
    SubjectKey::Device(format!("tamper-device-{i}"))
}

/// A consent event about `subject` (record ids are uuid-like, unique per `n`).
fn consent(n: u64, subject: SubjectKey, purpose: &str, state: &str) -> NewConsent {
    NewConsent {
        record_id: format!("00000000-0000-4000-8000-{n:012}"),
        subject,
        purpose: purpose.to_owned(),
        scope: None,
        channel: None,
        state: RecordState::parse(state).expect("a record state"),
        consent_type: ConsentType::Explicit,
        legal_basis: LegalBasis::Consent,
        jurisdiction: "EU".to_owned(),
        notice_id: "privacy-notice".to_owned(),
        notice_version: "3.0".to_owned(),
        collection_method: CollectionMethod::PreferenceCenter,
        collected_at: OffsetDateTime::now_utc(),
        expires_at: None,
        source_ip: "198.51.100.0".to_owned(),
        user_agent: "ledger-tamper-test".to_owned(),
        guardian_ref: None,
        receipt: None,
        imported: None,
    }
}

/// The `n`-th write (from 1) of the standard ledger: mostly consents, with signals, links and
/// restrictions mixed in.
fn nth_change(n: u64) -> Change {
    let who = person(n % 5);
    match n {
        n if n % 25 == 0 => Change::Link {
            device: device(n % 3),
            subject: who,
        },
        n if n % 11 == 0 => Change::Signal {
            subject: who,
            kind: "gpc".into(),
            value: "1".into(),
            collection_method: CollectionMethod::GpcSignal,
        },
        n if n % 17 == 0 => Change::Restrict {
            subject: who,
            restricted: n % 2 == 0,
        },
        n if n % 3 == 0 => Change::Consent(consent(
            n,
            who,
            "marketing.communications.email",
            "withdrawn",
        )),
        n => Change::Consent(consent(n, who, "personalize.content.profiled", "given")),
    }
}

/// A write of `change` under idempotency key `n`; the fingerprint is any 32 bytes unique to `n`.
fn write(n: u64, change: Change) -> Write {
    let mut fingerprint = [0u8; 32];
    fingerprint[..8].copy_from_slice(&n.to_be_bytes());
    Write {
        caller: "preference-center".into(),
        delegate: None,
        idempotency_key: format!("tamper-{n}"),
        fingerprint,
        change,
    }
}

// ---------------------------------------------------------------------------------------------
// A ledger on a fresh database
// ---------------------------------------------------------------------------------------------

struct Ledger {
    /// The backend's name, for messages.
    b: String,
    keys: Arc<LedgerKeys>,
    store: Arc<dyn ConsentStore>,
    pool: AnyPool,
    /// Last: the database outlives the store.
    _db: Database,
}

/// Whichever kind of private database a ledger lives in.
enum Database {
    /// Created (and dropped) by the crate's test support.
    Test(TestDb),
    /// A PostgreSQL copy of a template, held for its `Drop`.
    PgCopy { _guard: PgCopy },
}

/// A PostgreSQL database created from a template; dropped, like `TestDb`'s, with the guard.
struct PgCopy {
    admin: String,
    name: String,
}

impl Drop for PgCopy {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Dropping runs outside any runtime the test may still hold: use a private one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

impl Ledger {
    /// A fresh database holding the standard ledger of `ENTRIES` entries, verified intact.
    async fn build(backend: Backend) -> Ledger {
        Ledger::build_with(backend, Arc::new(LedgerKeys::generate())).await
    }

    /// The standard ledger, signed with `keys`.
    async fn build_with(backend: Backend, keys: Arc<LedgerKeys>) -> Ledger {
        let db = TestDb::new(backend).await;
        let url = db.url.clone();
        let ledger = Ledger::connect(backend, &url, Database::Test(db), keys).await;
        for n in 1..=ENTRIES {
            let o = ledger
                .store
                .write(write(n, nth_change(n)))
                .await
                .unwrap_or_else(|e| panic!("[{}] write {n}: {e}", ledger.b));
            assert_eq!(o.revision, n, "[{}] write {n} revision", ledger.b);
        }
        ledger.assert_intact().await;
        ledger
    }

    /// A store over `db`.
    async fn connect(backend: Backend, url: &str, db: Database, keys: Arc<LedgerKeys>) -> Ledger {
        let b = format!("{backend:?}");
        let (store, pool): (Arc<dyn ConsentStore>, AnyPool) = match backend {
            Backend::Sqlite => {
                let s = SqliteStore::connect(url, keys.clone())
                    .await
                    .unwrap_or_else(|e| panic!("[{b}] connect: {e}"));
                let pool = s.pool().clone();
                (Arc::new(s), pool)
            }
            Backend::Postgres => {
                let s = PostgresStore::connect(url, keys.clone())
                    .await
                    .unwrap_or_else(|e| panic!("[{b}] connect: {e}"));
                let pool = s.pool().clone();
                (Arc::new(s), pool)
            }
        };
        Ledger {
            b,
            keys,
            store,
            pool,
            _db: db,
        }
    }

    /// The standard ledger verifies: every entry and both checkpoints.
    async fn assert_intact(&self) {
        let report = self.verify().await;
        assert_eq!(
            report.broken, None,
            "[{}] the untouched ledger verifies",
            self.b
        );
        assert_eq!(
            report.entries_checked, ENTRIES,
            "[{}] entries_checked",
            self.b
        );
        assert_eq!(
            report.checkpoints_checked, 2,
            "[{}] checkpoints_checked",
            self.b
        );
    }

    async fn verify(&self) -> VerifyReport {
        ledger::verify(&*self.store, self.keys.verifiers())
            .await
            .unwrap_or_else(|e| panic!("[{}] verify: {e}", self.b))
    }

    async fn entries(&self) -> Vec<LedgerEntry> {
        self.store
            .ledger(0, 100_000)
            .await
            .unwrap_or_else(|e| panic!("[{}] read ledger: {e}", self.b))
    }

    async fn entry(&self, seq: u64) -> LedgerEntry {
        self.store
            .ledger(seq - 1, 1)
            .await
            .unwrap_or_else(|e| panic!("[{}] read entry {seq}: {e}", self.b))
            .into_iter()
            .next()
            .filter(|e| e.seq == seq)
            .unwrap_or_else(|| panic!("[{}] entry {seq} exists", self.b))
    }

    /// Overwrites entry `seq` behind the store's back. Its link to the entry before is not
    /// stored (migration 0012): it is that entry's hash.
    async fn set(&self, seq: u64, hash: &[u8], event: &str) {
        let r = sqlx::query("UPDATE ledger SET hash = $1, event = $2 WHERE seq = $3")
            .bind(hash.to_vec())
            .bind(event.to_owned())
            .bind(i64::try_from(seq).expect("seq fits"))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] tamper with entry {seq}: {e}", self.b));
        assert_eq!(r.rows_affected(), 1, "[{}] entry {seq} updated", self.b);
    }

    async fn exec(&self, sql: &'static str, seq: u64) -> u64 {
        sqlx::query(sql)
            .bind(i64::try_from(seq).expect("seq fits"))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] {sql} ({seq}): {e}", self.b))
            .rows_affected()
    }

    async fn set_checkpoint(&self, seq: u64, hash: &[u8], signature: &[u8]) {
        let r = sqlx::query("UPDATE checkpoints SET hash = $1, signature = $2 WHERE seq = $3")
            .bind(hash.to_vec())
            .bind(signature.to_vec())
            .bind(i64::try_from(seq).expect("seq fits"))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] tamper with checkpoint {seq}: {e}", self.b));
        assert_eq!(
            r.rows_affected(),
            1,
            "[{}] checkpoint {seq} updated",
            self.b
        );
    }

    /// Replaces the events of `from..=end` (by `edit(seq, event)`) and recomputes every hash and
    /// link from `from` to the end of the ledger, so that the chain itself is consistent.
    async fn rewrite_from(&self, from: u64, mut edit: impl FnMut(u64, &str) -> String) {
        let entries = self.entries().await;
        let mut prev = entries[index(from)].prev_hash.clone();
        let mut tx = self.pool.begin().await.expect("begin");
        for e in &entries[index(from)..] {
            let event = edit(e.seq, &e.event);
            let hash = ledger::chain_hash(&prev, &event);
            sqlx::query("UPDATE ledger SET hash = $1, event = $2 WHERE seq = $3")
                .bind(hash.clone())
                .bind(event)
                .bind(i64::try_from(e.seq).expect("seq fits"))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|err| panic!("[{}] rewrite entry {}: {err}", self.b, e.seq));
            prev = hash;
        }
        tx.commit().await.expect("commit");
    }

    /// Edits entry `from` and rewrites everything after it consistently.
    async fn rewrite_suffix(&self, from: u64) {
        self.rewrite_from(
            from,
            |s, ev| {
                if s == from { edited(ev) } else { ev.to_owned() }
            },
        )
        .await;
    }
}

/// A standard ledger built once through the store, closed, and copied into a fresh database for
/// every case (a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL): every case
/// tampers with its own, real, untouched ledger without paying for 150 durable writes each.
struct Template {
    backend: Backend,
    keys: Arc<LedgerKeys>,
    db: TestDb,
}

/// The database name at the end of a PostgreSQL URL.
fn database_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a URL with a database name")
}

impl Template {
    async fn build(backend: Backend) -> Template {
        let Ledger {
            keys,
            store,
            pool,
            _db: Database::Test(db),
            ..
        } = Ledger::build(backend).await
        else {
            unreachable!("a built ledger lives in a TestDb")
        };
        drop(store);
        // Closed, so that SQLite checkpoints its WAL into the file and PostgreSQL lets it be a
        // template (no other sessions).
        pool.close().await;
        Template { backend, keys, db }
    }

    /// A fresh database holding a copy of the template, verified intact.
    async fn copy(&self) -> Ledger {
        let (url, db) = match self.backend {
            Backend::Sqlite => {
                let db = TestDb::new(self.backend).await;
                let path = |url: &str| {
                    std::path::PathBuf::from(url.strip_prefix("sqlite://").expect("sqlite URL"))
                };
                let (from, to) = (path(&self.db.url), path(&db.url));
                let dir = from.parent().expect("template directory");
                let stem = from
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned();
                for entry in std::fs::read_dir(dir).expect("template directory") {
                    let entry = entry.expect("directory entry");
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(suffix) = name.strip_prefix(&stem) {
                        let target = format!("{}{suffix}", to.display());
                        std::fs::copy(entry.path(), target).expect("copy the template");
                    }
                }
                (db.url.clone(), Database::Test(db))
            }
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_ENV).expect("checked by backends()");
                let name = format!("cg_test_{}", uuid::Uuid::new_v4().simple());
                let template = database_name(&self.db.url);
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("PostgreSQL admin connection");
                let sql = format!("CREATE DATABASE {name} TEMPLATE {template}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("[Postgres] {sql}: {e}"));
                conn.close().await.ok();
                let url = format!(
                    "{}/{name}",
                    self.db.url.rsplit_once('/').expect("a database URL").0
                );
                (
                    url,
                    Database::PgCopy {
                        _guard: PgCopy { admin, name },
                    },
                )
            }
        };
        let ledger = Ledger::connect(self.backend, &url, db, self.keys.clone()).await;
        ledger.assert_intact().await;
        ledger
    }
}

fn index(seq: u64) -> usize {
    usize::try_from(seq - 1).expect("seq fits")
}

/// A meaningful, minimal edit of a canonical (version 2) event: a grant turned into a withdrawal
/// and back, a restriction lifted, a GPC signal cleared, or (otherwise) the entry re-attributed
/// to another pseudonym.
fn edited(event: &str) -> String {
    // A version-3 entry's kind is its fourth element, a code: grant 0, withdraw 2.
    let kind_code = ledger::entry::head(event).map(|h| h.kind);
    let head_prefix = |e: &str| {
        e.char_indices()
            .filter(|&(_, c)| c == ',')
            .nth(2)
            .map(|(i, _)| i + 1)
    };
    if let (Some(kind), Some(at)) = (kind_code.as_deref(), head_prefix(event)) {
        let swapped = match kind {
            "grant" => Some("2"),
            "withdraw" => Some("0"),
            _ => None,
        };
        if let Some(to) = swapped {
            let end = at + event[at..].find(',').expect("the kind ends");
            return format!("{}{to}{}", &event[..at], &event[end..]);
        }
    }
    let swaps = [
        (",true]", ",false]"),
        (",false]", ",true]"),
        (r#"["gpc","1""#, r#"["gpc","0""#),
    ];
    for (from, to) in swaps {
        if event.contains(from) {
            return event.replacen(from, to, 1);
        }
    }
    let at = pseudonym_at(event).expect("every event names a pseudonym");
    format!("{}{}{}", &event[..at], "A".repeat(43), &event[at + 43..])
}

/// Where the first pseudonym (a quoted string of 43 base64url digits: the subject's) starts.
fn pseudonym_at(event: &str) -> Option<usize> {
    let bytes = event.as_bytes();
    let digit = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    (0..bytes.len().saturating_sub(44)).find_map(|i| {
        let quoted = bytes[i] == b'"' && bytes.get(i + 44) == Some(&b'"');
        (quoted && bytes[i + 1..i + 44].iter().all(digit)).then_some(i + 1)
    })
}

// ---------------------------------------------------------------------------------------------
// Tamperings
// ---------------------------------------------------------------------------------------------

/// One way to tamper with the ledger, applied with SQL behind the store's back.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// Edit entry `seq`'s event text, leaving its hash.
    EditEvent(u64),
    /// Edit entry `seq`'s event and recompute its hash (the next link still points at the old one).
    EditAndRehash(u64),
    /// Edit entry `seq` and rewrite every later entry consistently (hashes and links).
    RewriteSuffix(u64),
    /// Flip one bit of entry `seq`'s stored hash (which is also the next entry's link).
    EditHash(u64),
    /// Delete entry `seq`.
    Delete(u64),
    /// Swap the whole rows (hash, event) of `seq` and `seq + 1`.
    SwapRows(u64),
    /// Swap the events of `seq` and `seq + 1` and recompute the chain consistently from `seq`.
    SwapAndRehash(u64),
    /// Delete every entry after `seq`.
    TruncateAfter(u64),
    /// Flip one bit of checkpoint `seq`'s signature.
    ForgeSignature(u64),
    /// Cut checkpoint `seq`'s signature short.
    TruncateSignature(u64),
    /// Point checkpoint `seq` at another hash, without re-signing.
    ForgeCheckpointHash(u64),
    /// Rewrite the suffix from `seq`, then re-sign the later checkpoints with an attacker's key.
    RewriteAndResign(u64),
    /// Rewrite the suffix from `seq` and delete the checkpoints it would contradict.
    RewriteAndDropCheckpoints(u64),
    /// Delete checkpoint `seq` only.
    DropCheckpoint(u64),
}

impl Tamper {
    async fn apply(self, l: &Ledger) {
        match self {
            Tamper::EditEvent(seq) => {
                let e = l.entry(seq).await;
                let event = edited(&e.event);
                assert_ne!(event, e.event, "[{}] the edit changes entry {seq}", l.b);
                l.set(seq, &e.hash, &event).await;
            }
            Tamper::EditAndRehash(seq) => {
                let e = l.entry(seq).await;
                let event = edited(&e.event);
                let hash = ledger::chain_hash(&e.prev_hash, &event);
                l.set(seq, &hash, &event).await;
            }
            Tamper::RewriteSuffix(seq) => l.rewrite_suffix(seq).await,
            Tamper::EditHash(seq) => {
                let e = l.entry(seq).await;
                let mut hash = e.hash.clone();
                hash[0] ^= 0x01;
                l.set(seq, &hash, &e.event).await;
            }
            Tamper::Delete(seq) => {
                let n = l.exec("DELETE FROM ledger WHERE seq = $1", seq).await;
                assert_eq!(n, 1, "[{}] entry {seq} deleted", l.b);
            }
            Tamper::SwapRows(seq) => {
                let a = l.entry(seq).await;
                let b = l.entry(seq + 1).await;
                l.set(seq, &b.hash, &b.event).await;
                l.set(seq + 1, &a.hash, &a.event).await;
            }
            Tamper::SwapAndRehash(seq) => {
                let a = l.entry(seq).await.event;
                let b = l.entry(seq + 1).await.event;
                l.rewrite_from(seq, |s, ev| {
                    if s == seq {
                        b.clone()
                    } else if s == seq + 1 {
                        a.clone()
                    } else {
                        ev.to_owned()
                    }
                })
                .await;
            }
            Tamper::TruncateAfter(seq) => {
                let n = l.exec("DELETE FROM ledger WHERE seq > $1", seq).await;
                assert_eq!(n, ENTRIES - seq, "[{}] entries after {seq} deleted", l.b);
            }
            Tamper::ForgeSignature(seq) => {
                let cp = checkpoint(l, seq).await;
                let mut sig = cp.signature.clone();
                sig[10] ^= 0x01;
                l.set_checkpoint(seq, &cp.hash, &sig).await;
            }
            Tamper::TruncateSignature(seq) => {
                let cp = checkpoint(l, seq).await;
                l.set_checkpoint(seq, &cp.hash, &cp.signature[..10]).await;
            }
            Tamper::ForgeCheckpointHash(seq) => {
                let cp = checkpoint(l, seq).await;
                let other = l.entry(seq - 1).await.hash;
                l.set_checkpoint(seq, &other, &cp.signature).await;
            }
            Tamper::RewriteAndResign(seq) => {
                l.rewrite_suffix(seq).await;
                let attacker = LedgerKeys::generate();
                for cp in l.store.checkpoints(0, u32::MAX).await.expect("checkpoints") {
                    if cp.seq >= seq {
                        let hash = l.entry(cp.seq).await.hash;
                        let sig = attacker.sign(&ledger::checkpoint_message(cp.seq, &hash));
                        l.set_checkpoint(cp.seq, &hash, &sig).await;
                    }
                }
            }
            Tamper::RewriteAndDropCheckpoints(seq) => {
                l.rewrite_suffix(seq).await;
                l.exec("DELETE FROM checkpoints WHERE seq >= $1", seq).await;
            }
            Tamper::DropCheckpoint(seq) => {
                let n = l.exec("DELETE FROM checkpoints WHERE seq = $1", seq).await;
                assert_eq!(n, 1, "[{}] checkpoint {seq} deleted", l.b);
            }
        }
    }
}

async fn checkpoint(l: &Ledger, seq: u64) -> consentgate_consent::model::Checkpoint {
    l.store
        .checkpoints(0, u32::MAX)
        .await
        .expect("checkpoints")
        .into_iter()
        .find(|c| c.seq == seq)
        .unwrap_or_else(|| panic!("[{}] checkpoint {seq} exists", l.b))
}

/// Runs every case on every backend, each on its own fresh copy of the standard ledger, and
/// reports all misses at once. A case is (tampering, the seq `broken` must name, a word its
/// reason must contain).
async fn expect_detected(cases: &[(Tamper, u64, &str)]) {
    let mut failures = Vec::new();
    for backend in backends() {
        let template = Template::build(backend).await;
        for &(tamper, seq, reason) in cases {
            let l = template.copy().await;
            tamper.apply(&l).await;
            let report = l.verify().await;
            match &report.broken {
                Some((at, why)) if *at == seq && why.contains(reason) => {}
                other => failures.push(format!(
                    "[{}] {tamper:?}: expected broken at {seq} ({reason:?}), got {other:?}",
                    l.b
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_untouched_ledger_verifies() {
    for backend in backends() {
        let l = Ledger::build(backend).await;
        let b = &l.b;
        let report = l.verify().await;
        let entries = l.entries().await;
        assert_eq!(
            report.head_hash,
            entries.last().expect("entries").hash,
            "[{b}] head hash is the last entry's"
        );
        assert_eq!(
            l.store
                .checkpoints(0, u32::MAX)
                .await
                .expect("checkpoints")
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>(),
            vec![CP1, CP2],
            "[{b}] checkpoints at {CP1} and {CP2}"
        );
        // Every tampering below hits an entry whose edit really changes its text.
        for seq in [1, CP1, CP1 + 1, 75, 100, CP2 - 1, CP2, ENTRIES] {
            let e = &entries[index(seq)];
            assert_ne!(edited(&e.event), e.event, "[{b}] entry {seq} is editable");
        }
    }
}

#[tokio::test]
async fn an_edited_entry_is_detected_at_that_entry() {
    expect_detected(&[
        (Tamper::EditEvent(1), 1, "hash mismatch"),
        (Tamper::EditEvent(CP1 + 1), CP1 + 1, "hash mismatch"),
        (Tamper::EditEvent(75), 75, "hash mismatch"),
        (Tamper::EditEvent(CP1), CP1, "hash mismatch"),
        (Tamper::EditEvent(CP2), CP2, "hash mismatch"),
        (Tamper::EditEvent(ENTRIES), ENTRIES, "hash mismatch"),
        (Tamper::EditHash(1), 1, "hash mismatch"),
        (Tamper::EditHash(75), 75, "hash mismatch"),
        (Tamper::EditHash(ENTRIES), ENTRIES, "hash mismatch"),
    ])
    .await;
}

#[tokio::test]
async fn an_edited_and_rehashed_entry_is_detected_by_the_next_link_or_a_checkpoint() {
    expect_detected(&[
        // The next entry links to the new hash (links are read from the entry before), but its
        // own hash was computed from the old one.
        (Tamper::EditAndRehash(1), 2, "hash mismatch"),
        (Tamper::EditAndRehash(75), 76, "hash mismatch"),
        (Tamper::EditAndRehash(CP2 - 1), CP2, "hash mismatch"),
        (Tamper::EditAndRehash(ENTRIES - 1), ENTRIES, "hash mismatch"),
        // A checkpointed entry: its own link is intact, the signed checkpoint is not.
        (Tamper::EditAndRehash(CP1), CP1, "checkpoint"),
        (Tamper::EditAndRehash(CP2), CP2, "checkpoint"),
    ])
    .await;
}

#[tokio::test]
async fn a_consistently_rewritten_suffix_is_detected_by_the_next_checkpoint() {
    expect_detected(&[
        (Tamper::RewriteSuffix(1), CP1, "checkpoint"),
        (Tamper::RewriteSuffix(CP1), CP1, "checkpoint"),
        (Tamper::RewriteSuffix(CP1 + 1), CP2, "checkpoint"),
        (Tamper::RewriteSuffix(100), CP2, "checkpoint"),
        (Tamper::RewriteSuffix(CP2), CP2, "checkpoint"),
        // Re-signing the checkpoints needs the ledger key: another key's signature is refused.
        (Tamper::RewriteAndResign(100), CP2, "signature"),
        (Tamper::RewriteAndResign(1), CP1, "signature"),
    ])
    .await;
}

#[tokio::test]
async fn a_deleted_entry_is_detected_at_the_gap() {
    expect_detected(&[
        (Tamper::Delete(1), 1, "missing entry"),
        (Tamper::Delete(75), 75, "missing entry"),
        (Tamper::Delete(CP2 - 1), CP2 - 1, "missing entry"),
        (Tamper::Delete(CP1), CP1, "missing entry"),
        (Tamper::Delete(ENTRIES - 1), ENTRIES - 1, "missing entry"),
    ])
    .await;
}

#[tokio::test]
async fn reordered_entries_are_detected() {
    expect_detected(&[
        // The entry that moved up was hashed from another predecessor.
        (Tamper::SwapRows(1), 1, "hash mismatch"),
        (Tamper::SwapRows(40), 40, "hash mismatch"),
        (Tamper::SwapRows(CP1 - 1), CP1 - 1, "hash mismatch"),
        (Tamper::SwapRows(CP1), CP1, "hash mismatch"),
        (Tamper::SwapRows(ENTRIES - 1), ENTRIES - 1, "hash mismatch"),
        // Swapped and re-chained: every link holds, but each event names its own position.
        (Tamper::SwapAndRehash(40), 40, "another position"),
        (
            Tamper::SwapAndRehash(ENTRIES - 1),
            ENTRIES - 1,
            "another position",
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_truncated_tail_is_detected_when_a_checkpoint_covers_it() {
    expect_detected(&[
        (Tamper::TruncateAfter(100), 101, "truncated"),
        (Tamper::TruncateAfter(CP2 - 1), CP2, "truncated"),
        (Tamper::TruncateAfter(CP1), CP1 + 1, "truncated"),
        (Tamper::TruncateAfter(CP1 - 1), CP1, "truncated"),
        (Tamper::TruncateAfter(0), 1, "truncated"),
    ])
    .await;
}

#[tokio::test]
async fn a_forged_checkpoint_is_detected() {
    expect_detected(&[
        (Tamper::ForgeSignature(CP1), CP1, "signature"),
        (Tamper::ForgeSignature(CP2), CP2, "signature"),
        (Tamper::TruncateSignature(CP2), CP2, "signature"),
        (Tamper::ForgeCheckpointHash(CP1), CP1, "signature"),
        (Tamper::ForgeCheckpointHash(CP2), CP2, "signature"),
    ])
    .await;
}

#[tokio::test]
async fn a_deleted_checkpoint_is_detected() {
    // The store signs a checkpoint at every multiple of CHECKPOINT_EVERY in the same transaction as
    // the entry, so a ledger that reaches such a seq without one has lost it. Otherwise deleting
    // the checkpoint makes a consistent suffix rewrite (the case above) undetectable.
    expect_detected(&[
        (Tamper::DropCheckpoint(CP2), CP2, "checkpoint"),
        (Tamper::DropCheckpoint(CP1), CP1, "checkpoint"),
        (Tamper::RewriteAndDropCheckpoints(100), CP2, "checkpoint"),
        (Tamper::RewriteAndDropCheckpoints(1), CP1, "checkpoint"),
    ])
    .await;
}

#[tokio::test]
async fn erasure_keeps_the_chain_verifying() {
    for backend in backends() {
        let l = Ledger::build(backend).await;
        let b = l.b.clone();
        let before = l.entries().await;
        // Subject 0 has consents, signals, a restriction, and every linked device (entries
        // 25, 50, ... link devices 0, 1 and 2 to it): erasing it erases them too.
        let victim = person(0);
        let victim_key = victim.storage();
        // The victim's pseudonym keys: a column of its `subjects` row (migration 0015).
        let pseudonym_keys = async || -> i64 {
            sqlx::query("SELECT COUNT(*) FROM subjects WHERE subject = $1 AND key IS NOT NULL")
                .bind(victim_key.clone())
                .fetch_one(&l.pool)
                .await
                .map(|r| sqlx::Row::get(&r, 0))
                .expect("count")
        };
        let keys_before = pseudonym_keys().await;
        assert_eq!(keys_before, 1, "[{b}] the victim has a pseudonym key");

        let o = l
            .store
            .write(write(ENTRIES + 1, Change::Erase { subject: victim }))
            .await
            .unwrap_or_else(|e| panic!("[{b}] erase: {e}"));
        assert_eq!(
            o.revision,
            ENTRIES + 1,
            "[{b}] erase is entry {}",
            ENTRIES + 1
        );
        assert!(o.records_deleted > 0, "[{b}] the victim had records");

        let report = l.verify().await;
        assert_eq!(
            report.broken, None,
            "[{b}] the chain verifies after erasure"
        );
        assert_eq!(
            report.entries_checked,
            ENTRIES + 1,
            "[{b}] entries after erasure"
        );
        assert_eq!(
            report.checkpoints_checked, 2,
            "[{b}] checkpoints after erasure"
        );
        let after = l.entries().await;
        assert_eq!(
            after[..before.len()],
            before[..],
            "[{b}] erasure rewrites no ledger entry"
        );
        let keys_after = pseudonym_keys().await;
        assert_eq!(keys_after, 0, "[{b}] the pseudonym key is shredded");
        for e in &after {
            assert!(
                !e.event.contains("tamper-subject-") && !e.event.contains("tamper-device-"),
                "[{b}] entry {} names the erased subject in clear",
                e.seq
            );
        }

        // The erased subject's old entries are still tamper-evident.
        let victims_entry = after
            .iter()
            .position(|e| {
                e.seq % 5 == 0 && ledger::entry::head(&e.event).is_some_and(|h| h.kind == "grant")
            })
            .expect("the victim granted something");
        let seq = after[victims_entry].seq;
        Tamper::EditEvent(seq).apply(&l).await;
        assert_eq!(
            l.verify().await.broken.map(|(s, _)| s),
            Some(seq),
            "[{b}] editing an erased subject's entry is still detected"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Key rotation
// ---------------------------------------------------------------------------------------------

impl Ledger {
    /// The same database under other keys: a restart with a changed key file.
    async fn reopen_with(self, keys: Arc<LedgerKeys>) -> Ledger {
        let Ledger {
            store, pool, _db, ..
        } = self;
        let Database::Test(db) = _db else {
            unreachable!("rotation tests build their own ledger")
        };
        drop(store);
        pool.close().await;
        let url = db.url.clone();
        Ledger::connect(db.backend(), &url, Database::Test(db), keys).await
    }

    async fn set_kid(&self, seq: u64, kid: Option<&str>) {
        let r = sqlx::query("UPDATE checkpoints SET kid = $1 WHERE seq = $2")
            .bind(kid.map(str::to_owned))
            .bind(i64::try_from(seq).expect("seq fits"))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] set the kid of checkpoint {seq}: {e}", self.b));
        assert_eq!(
            r.rows_affected(),
            1,
            "[{}] checkpoint {seq} updated",
            self.b
        );
    }

    async fn verify_with(&self, keys: &LedgerKeys) -> VerifyReport {
        ledger::verify(&*self.store, keys.verifiers())
            .await
            .unwrap_or_else(|e| panic!("[{}] verify: {e}", self.b))
    }
}

/// The checkpoint after the standard ledger's two, written under the rotated key.
const CP3: u64 = 3 * CHECKPOINT_EVERY;

/// A ledger begun under a bare seed (its first checkpoint stored without a key id, as
/// migration 0004 leaves those written before it), a subject erased, the key staged and
/// rotated, and written on past a third checkpoint: returns it with the keys of each phase.
async fn rotated(backend: Backend) -> (Ledger, [Arc<LedgerKeys>; 3]) {
    let mut ring = Keyring::from_seed(&ledger::random_key());
    let v1 = Arc::new(ring.keys());
    let l = Ledger::build_with(backend, v1.clone()).await;
    // Written before key ids: the migration added the column empty.
    l.set_kid(CP1, None).await;
    l.store
        .write(write(ENTRIES + 1, Change::Erase { subject: person(1) }))
        .await
        .unwrap_or_else(|e| panic!("[{}] erase: {e}", l.b));
    let now = OffsetDateTime::now_utc();
    ring.stage(now).expect("stage");
    let staged = Arc::new(Keyring::parse(&ring.render()).expect("round trip").keys());
    ring.rotate(now, false).expect("rotate");
    let current = Arc::new(Keyring::parse(&ring.render()).expect("round trip").keys());
    let l = l.reopen_with(current.clone()).await;
    for n in ENTRIES + 2..=CP3 + 3 {
        // Person 1 is erased: its writes go to person 2 instead.
        let change = match nth_change(n) {
            c if c.subject() == &person(1) => Change::Consent(consent(
                n,
                person(2),
                "personalize.content.profiled",
                "given",
            )),
            c => c,
        };
        l.store
            .write(write(n, change))
            .await
            .unwrap_or_else(|e| panic!("[{}] write {n}: {e}", l.b));
    }
    (l, [v1, staged, current])
}

#[tokio::test]
async fn checkpoints_before_and_after_a_rotation_all_verify() {
    for backend in backends() {
        let (l, [v1, staged, current]) = rotated(backend).await;
        let b = l.b.clone();
        let cps = l.store.checkpoints(0, u32::MAX).await.expect("checkpoints");
        assert_eq!(
            cps.iter()
                .map(|c| (c.seq, c.kid.clone()))
                .collect::<Vec<_>>(),
            vec![
                (CP1, None),
                (CP2, Some(v1.kid().to_owned())),
                (CP3, Some(current.kid().to_owned())),
            ],
            "[{b}] each checkpoint names its key"
        );
        assert_ne!(v1.kid(), current.kid());
        // The rotated keyring verifies all three; so does the staged one (a replica not yet
        // restarted after the rotation knows the new key already).
        for keys in [&current, &staged] {
            let report = l.verify_with(keys).await;
            assert_eq!(report.broken, None, "[{b}] verifies across the rotation");
            assert_eq!(report.checkpoints_checked, 3, "[{b}]");
            assert_eq!(
                report.signers,
                vec![
                    None,
                    Some(v1.kid().to_owned()),
                    Some(current.kid().to_owned())
                ],
                "[{b}] signers in order"
            );
        }
        // The old bare seed alone does not know the new key: that is why a key is staged (and
        // rolled out) before it signs. The failure names the key id.
        let report = l.verify_with(&v1).await;
        let (seq, problem) = report.broken.expect("an unknown key id breaks");
        assert_eq!(seq, CP3, "[{b}]");
        assert!(
            problem.contains("unknown key id") && problem.contains(current.kid()),
            "[{b}] {problem}"
        );
        // The subject erased before the rotation is still erased: its tombstone is found.
        let rows = l.store.load_subject(&person(1)).await.expect("load");
        assert!(rows.erased, "[{b}] still erased after the rotation");
        let err = l
            .store
            .write(write(
                10_000,
                Change::Consent(consent(
                    10_000,
                    person(1),
                    "personalize.content.profiled",
                    "given",
                )),
            ))
            .await
            .expect_err("an erased subject records nothing");
        assert!(
            matches!(err, consentgate_consent::store::StoreError::SubjectErased),
            "[{b}] {err}"
        );
    }
}

#[tokio::test]
async fn a_tampered_or_unknown_key_id_is_detected() {
    for backend in backends() {
        let (l, [v1, _, current]) = rotated(backend).await;
        let b = l.b.clone();
        let cases: [(u64, Option<&str>, &str); 4] = [
            // The old key's id on a checkpoint the new key signed: the signature fails.
            (CP3, Some(v1.kid()), "does not verify"),
            // An id no key has.
            (CP3, Some("not-a-key-id"), "unknown key id"),
            // Stripped: verified with the bare seed's key, which did not sign it.
            (CP3, None, "does not verify"),
            // The new key's id on a checkpoint the old key signed.
            (CP2, Some(current.kid()), "does not verify"),
        ];
        for (seq, kid, expected) in cases {
            let original = l
                .store
                .checkpoints(0, u32::MAX)
                .await
                .expect("checkpoints")
                .into_iter()
                .find(|c| c.seq == seq)
                .expect("checkpoint")
                .kid;
            l.set_kid(seq, kid).await;
            let report = l.verify_with(&current).await;
            let (at, problem) = report
                .broken
                .unwrap_or_else(|| panic!("[{b}] kid {kid:?} on {seq} must not verify"));
            assert_eq!(at, seq, "[{b}] {problem}");
            assert!(
                problem.contains(expected),
                "[{b}] {problem} should say {expected}"
            );
            l.set_kid(seq, original.as_deref()).await;
            assert_eq!(l.verify_with(&current).await.broken, None, "[{b}] restored");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental verification: from a point the auditor trusts
// ---------------------------------------------------------------------------------------------

impl Ledger {
    async fn verify_from(&self, start: &ledger::Start) -> VerifyReport {
        ledger::verify_from(&*self.store, self.keys.verifiers(), start)
            .await
            .unwrap_or_else(|e| panic!("[{}] verify from {start:?}: {e}", self.b))
    }

    /// Entry `seq` as a point the auditor verified before.
    async fn verified_point(&self, seq: u64) -> ledger::Start {
        ledger::Start::Verified {
            seq,
            hash: self.entry(seq).await.hash,
        }
    }
}

#[tokio::test]
async fn verification_from_a_trusted_point_walks_only_what_follows_it() {
    for backend in backends() {
        let template = Template::build(backend).await;
        let l = template.copy().await;
        let b = &l.b;
        let whole = l.verify().await;
        assert_eq!(
            (whole.from_seq, whole.head_seq, whole.entries_checked),
            (0, ENTRIES, ENTRIES),
            "[{b}] from the genesis"
        );
        let last = whole.last_checkpoint.clone().expect("a checkpoint");
        assert_eq!(last, checkpoint(&l, CP2).await, "[{b}] the last checkpoint");

        // From an entry verified before: only the entries after it, with the same head.
        let from_100 = l.verify_from(&l.verified_point(100).await).await;
        assert_eq!(from_100.broken, None, "[{b}] from entry 100");
        assert_eq!(
            (
                from_100.from_seq,
                from_100.entries_checked,
                from_100.checkpoints_checked,
                from_100.head_seq
            ),
            (100, ENTRIES - 100, 1, ENTRIES),
            "[{b}] from entry 100: entries and checkpoints after it"
        );
        assert_eq!(from_100.head_hash, whole.head_hash, "[{b}] the same head");
        assert_eq!(from_100.last_checkpoint, Some(last.clone()), "[{b}]");

        // From the signed checkpoint a previous answer gave: needs only the public key.
        let from_cp = l
            .verify_from(&ledger::Start::Checkpoint(last.clone()))
            .await;
        assert_eq!(from_cp.broken, None, "[{b}] from the checkpoint");
        assert_eq!(
            (
                from_cp.from_seq,
                from_cp.entries_checked,
                from_cp.checkpoints_checked
            ),
            (CP2, ENTRIES - CP2, 0),
            "[{b}] from the checkpoint"
        );
        assert_eq!(from_cp.head_hash, whole.head_hash, "[{b}] the same head");
        assert_eq!(from_cp.last_checkpoint, Some(last.clone()), "[{b}]");

        // From the head itself: nothing new, still whole.
        let from_head = l.verify_from(&l.verified_point(ENTRIES).await).await;
        assert_eq!(
            (from_head.broken, from_head.entries_checked),
            (None, 0),
            "[{b}] from the head"
        );
    }
}

#[tokio::test]
async fn verification_from_a_trusted_point_detects_what_changed_since_and_a_wrong_point() {
    let failures = std::cell::RefCell::new(Vec::new());
    for backend in backends() {
        let template = Template::build(backend).await;
        let expect = |b: &str, what: &str, report: VerifyReport, seq: u64, reason: &str| {
            match &report.broken {
                Some((at, why)) if *at == seq && why.contains(reason) => {}
                other => failures.borrow_mut().push(format!(
                    "[{b}] {what}: expected broken at {seq} ({reason:?}), got {other:?}"
                )),
            }
        };

        // An entry after the point, edited.
        let l = template.copy().await;
        let start = l.verified_point(100).await;
        Tamper::EditEvent(120).apply(&l).await;
        expect(
            &l.b,
            "an edit after the point",
            l.verify_from(&start).await,
            120,
            "hash mismatch",
        );

        // The past rewritten consistently from before the point: the stored entry at the point
        // no longer has the hash the auditor verified.
        let l = template.copy().await;
        let start = l.verified_point(100).await;
        l.rewrite_suffix(90).await;
        expect(
            &l.b,
            "a rewritten past",
            l.verify_from(&start).await,
            100,
            "trusted starting point",
        );

        // A point the ledger no longer reaches: truncated.
        let l = template.copy().await;
        let start = l.verified_point(ENTRIES).await;
        l.exec("DELETE FROM ledger WHERE seq >= $1", ENTRIES - 5)
            .await;
        expect(
            &l.b,
            "a truncation",
            l.verify_from(&start).await,
            ENTRIES,
            "truncated",
        );

        // A starting checkpoint whose signature does not verify: nothing is trusted.
        let l = template.copy().await;
        let mut forged = checkpoint(&l, CP2).await;
        forged.signature[0] ^= 1;
        let report = l.verify_from(&ledger::Start::Checkpoint(forged)).await;
        expect(&l.b, "a forged start", report, CP2, "starting checkpoint");

        // A signed checkpoint whose entry was since rewritten (with the chain after it).
        let l = template.copy().await;
        let signed = checkpoint(&l, CP2).await;
        l.rewrite_suffix(CP2).await;
        let report = l.verify_from(&ledger::Start::Checkpoint(signed)).await;
        expect(
            &l.b,
            "a rewritten checkpointed entry",
            report,
            CP2,
            "trusted starting point",
        );

        // What lies before the point is the auditor's earlier verification's: an edit there is
        // found by a walk from the genesis, not from the point.
        let l = template.copy().await;
        let start = l.verified_point(100).await;
        Tamper::EditEvent(10).apply(&l).await;
        let report = l.verify_from(&start).await;
        if report.broken.is_some() {
            let miss = format!("[{}] an edit before the point: {:?}", l.b, report.broken);
            failures.borrow_mut().push(miss);
        }
        expect(
            &l.b,
            "an edit before the point, from the genesis",
            l.verify().await,
            10,
            "hash mismatch",
        );
    }
    let failures = failures.into_inner();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
