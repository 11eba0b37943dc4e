//! Store conformance suite: every test runs against every configured backend (SQLite always,
//! PostgreSQL when `CONSENTGATE_TEST_POSTGRES_URL` is set) and asserts the `ConsentStore` contract of
//! docs/architecture.md §3: gap-free revisions, snapshot loads with links and signals, idempotency, history and
//! change-feed paging, receipts, erasure (crypto-shredding, tombstones), restriction and checkpoints.

use consentgate_consent::ledger::{self, CHECKPOINT_EVERY, GENESIS_HASH, LedgerKeys};
use consentgate_consent::model::{
    Change, ChangeEvent, ImportOrigin, NewConsent, StoredReceipt, StoredRecord, SubjectKey,
    SubjectRows, Write, WriteOutcome,
};
use consentgate_consent::receipt::{Receipt, ReceiptContext};
use consentgate_consent::store::{
    self, ConsentStore, PostgresStore, SqliteStore, StoreError, idempotency_handle,
};
use consentgate_consent::testing::{Backend, TestDb, WriteLock, backends};
use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
use ed25519_dalek::Verifier;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use time::{Duration, OffsetDateTime};

/// The caller most writes are made by.
const CALLER: &str = "preference-center";

/// The records that keep a receipt's signature, as `rows` and the footprint count them.
const SIGNED_RECORDS: &str = "consent_records WHERE receipt_signature IS NOT NULL";

/// The subjects' rows that keep a pseudonym key (migration 0015), as `rows` and the footprint
/// count them.
const SUBJECT_KEYS: &str = "subjects WHERE key IS NOT NULL";

/// Tables that hold rows about one subject key, and the SQL that counts that key's rows in each.
const PER_SUBJECT_TABLES: [(&str, &str); 11] = [
    (
        "consent_records",
        "SELECT COUNT(*) FROM consent_records WHERE subject = $1",
    ),
    // A grant's receipt signature is a column of its record (migration 0014).
    (
        SIGNED_RECORDS,
        "SELECT COUNT(*) FROM consent_records WHERE subject = $1 AND receipt_signature IS NOT NULL",
    ),
    (
        "imported",
        "SELECT COUNT(*) FROM imported i WHERE i.revision IN \
         (SELECT revision FROM consent_records WHERE subject = $1) OR NOT EXISTS \
         (SELECT 1 FROM consent_records r WHERE r.revision = i.revision)",
    ),
    (
        "consent_current",
        "SELECT COUNT(*) FROM consent_current WHERE subject = $1",
    ),
    (
        "receipts",
        "SELECT COUNT(*) FROM receipts WHERE subject = $1",
    ),
    ("signals", "SELECT COUNT(*) FROM signals WHERE subject = $1"),
    (
        SUBJECT_KEYS,
        "SELECT COUNT(*) FROM subjects WHERE subject = $1 AND key IS NOT NULL",
    ),
    (
        "subjects",
        "SELECT COUNT(*) FROM subjects WHERE subject = $1",
    ),
    (
        "links",
        "SELECT COUNT(*) FROM links WHERE device = $1 OR subject = $1",
    ),
    // Idempotency records name no subject (migration 0011): the key's, through the ledger
    // entries of their revisions, and any whose entry erasure un-named (one left behind is
    // counted here); an erasure's own record (the one that counts deleted records) names
    // nobody and stays, to answer its retry.
    (
        "idempotency",
        "SELECT COUNT(*) FROM idempotency i JOIN ledger l ON l.seq = i.revision \
         WHERE l.subject = $1 OR (l.subject IS NULL AND i.records_deleted IS NULL)",
    ),
    // The change stream's subject beside each entry (migration 0013); the entries stay.
    ("ledger", "SELECT COUNT(*) FROM ledger WHERE subject = $1"),
];

/// Every text column of the schema: where an identifier could be left behind after erasure.
const TEXT_COLUMNS: [(&str, &str); 17] = [
    ("ledger", "event"),
    ("ledger", "subject"),
    ("consent_current", "subject"),
    ("subjects", "subject"),
    ("consent_records", "record_id"),
    ("consent_records", "subject"),
    ("consent_records", "body"),
    ("signals", "subject"),
    ("signals", "value"),
    ("links", "device"),
    ("links", "subject"),
    ("tombstones", "erased_at"),
    ("receipts", "record_id"),
    ("receipts", "subject"),
    ("receipts", "receipt_json"),
    ("receipts", "jws"),
    ("receipt_contexts", "body"),
];

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

fn person(id: &str) -> SubjectKey {
    SubjectKey::Subject(id.to_owned())
}

fn device(id: &str) -> SubjectKey {
    SubjectKey::Device(id.to_owned())
}

/// A fully populated consent event (optional fields left empty).
fn consent(subject: &SubjectKey, purpose: &str, state: &str) -> NewConsent {
    NewConsent {
        record_id: uuid::Uuid::new_v4().to_string(),
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
        user_agent: "conformance-test/1.0".to_owned(),
        guardian_ref: None,
        receipt: None,
        imported: None,
    }
}

fn grant(subject: &SubjectKey, purpose: &str) -> Change {
    Change::Consent(consent(subject, purpose, "given"))
}

fn withdraw(subject: &SubjectKey, purpose: &str) -> Change {
    Change::Consent(consent(subject, purpose, "withdrawn"))
}

fn refuse(subject: &SubjectKey, purpose: &str) -> Change {
    Change::Consent(consent(subject, purpose, "refused"))
}

/// A receipt as the service issues one, with a fake but distinct signature: the store keeps
/// and derives receipts, it does not check signatures.
fn fake_receipt(record_id: &str) -> Receipt {
    let mut signature = record_id.as_bytes().to_vec();
    signature.resize(64, 7);
    Receipt::Derived {
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
        signature,
    }
}

/// A grant carrying a receipt.
fn grant_with_receipt(subject: &SubjectKey, purpose: &str) -> Change {
    let mut c = consent(subject, purpose, "given");
    c.receipt = Some(fake_receipt(&c.record_id));
    Change::Consent(c)
}

/// The record as it reads back: records carry no receipt (it is fetched by record id).
fn sans_receipt(mut record: StoredRecord) -> StoredRecord {
    record.consent.receipt = None;
    record
}

fn signal(subject: &SubjectKey, kind: &str, value: &str) -> Change {
    Change::Signal {
        subject: subject.clone(),
        kind: kind.to_owned(),
        value: value.to_owned(),
        collection_method: CollectionMethod::Api,
    }
}

fn link(device: &SubjectKey, subject: &SubjectKey) -> Change {
    Change::Link {
        device: device.clone(),
        subject: subject.clone(),
    }
}

fn restrict(subject: &SubjectKey, restricted: bool) -> Change {
    Change::Restrict {
        subject: subject.clone(),
        restricted,
    }
}

fn erase(subject: &SubjectKey) -> Change {
    Change::Erase {
        subject: subject.clone(),
    }
}

/// A request fingerprint: SHA-256 over the change's full content.
fn fingerprint_of(change: &Change) -> [u8; 32] {
    Sha256::digest(format!("{change:?}").as_bytes()).into()
}

/// What a replay must reproduce: the outcome without the `replayed` flag and without
/// `affected`, which is not kept with the idempotency record (a replay changes nothing to
/// invalidate, and identifiers kept there would outlive an erasure).
fn sans_replayed(o: &WriteOutcome) -> WriteOutcome {
    WriteOutcome {
        replayed: false,
        affected: Vec::new(),
        ..o.clone()
    }
}

fn keyset(keys: &[SubjectKey]) -> BTreeSet<String> {
    keys.iter().map(SubjectKey::storage).collect()
}

// ---------------------------------------------------------------------------------------------
// Harness: one fresh database, a store over it, and its pool for counting rows
// ---------------------------------------------------------------------------------------------

struct Harness {
    /// The backend's name, for assertion messages.
    b: String,
    keys: Arc<LedgerKeys>,
    store: Arc<dyn ConsentStore>,
    pool: AnyPool,
    next_key: AtomicU64,
    /// Last: the database outlives the store and pool.
    db: TestDb,
}

/// Connects a concrete store of `backend` to `url`, returning it with its pool.
async fn connect(
    backend: Backend,
    url: &str,
    keys: Arc<LedgerKeys>,
) -> (Arc<dyn ConsentStore>, AnyPool) {
    match backend {
        Backend::Sqlite => {
            let s = SqliteStore::connect(url, keys)
                .await
                .unwrap_or_else(|e| panic!("[Sqlite] connect {url}: {e}"));
            let pool = s.pool().clone();
            (Arc::new(s), pool)
        }
        Backend::Postgres => {
            let s = PostgresStore::connect(url, keys)
                .await
                .unwrap_or_else(|e| panic!("[Postgres] connect {url}: {e}"));
            let pool = s.pool().clone();
            (Arc::new(s), pool)
        }
    }
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let db = TestDb::new(backend).await;
        assert_eq!(db.backend(), backend);
        let keys = Arc::new(LedgerKeys::generate());
        let (store, pool) = connect(backend, &db.url, keys.clone()).await;
        Harness {
            b: format!("{backend:?}"),
            keys,
            store,
            pool,
            next_key: AtomicU64::new(0),
            db,
        }
    }

    /// A write of `change` by `CALLER` under a fresh idempotency key.
    fn request(&self, change: Change) -> Write {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        Write {
            caller: CALLER.to_owned(),
            delegate: None,
            idempotency_key: format!("idem-{n}"),
            fingerprint: fingerprint_of(&change),
            change,
        }
    }

    async fn submit(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.store.write(write).await
    }

    /// Writes `change` under a fresh key; it must succeed as a new write.
    async fn write(&self, change: Change) -> WriteOutcome {
        let what = format!("{change:?}");
        let outcome = self
            .submit(self.request(change))
            .await
            .unwrap_or_else(|e| panic!("[{}] write {what}: {e}", self.b));
        assert!(
            !outcome.replayed,
            "[{}] a fresh key replayed: {what}",
            self.b
        );
        outcome
    }

    /// The subject's rows, its current records as history reads them: each must say where it
    /// stands in the subject's order (at or after its own time, to the microsecond, and at it
    /// for an imported record), which history does not.
    async fn load(&self, key: &SubjectKey) -> SubjectRows {
        let mut rows = self.placed(key).await;
        for r in &mut rows.records {
            r.ordered_at = None;
        }
        rows
    }

    /// The subject's rows as the store reads them, with each current record's place.
    async fn placed(&self, key: &SubjectKey) -> SubjectRows {
        let rows = self
            .store
            .load_subject(key)
            .await
            .unwrap_or_else(|e| panic!("[{}] load {key:?}: {e}", self.b));
        for r in &rows.records {
            let own = r
                .consent
                .collected_at
                .replace_nanosecond(r.consent.collected_at.nanosecond() / 1000 * 1000)
                .expect("a time");
            let at = r
                .ordered_at
                .unwrap_or_else(|| panic!("[{}] a current record without its place", self.b));
            if r.consent.imported.is_some() {
                assert_eq!(
                    at, own,
                    "[{}] an imported record stands at its own time",
                    self.b
                );
            } else {
                assert!(
                    at >= own,
                    "[{}] a live record stands at or after its own time",
                    self.b
                );
            }
        }
        rows
    }

    async fn count(&self, sql: &'static str, bind: &str) -> i64 {
        sqlx::query(sql)
            .bind(bind.to_owned())
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] {sql}: {e}", self.b))
            .get(0)
    }

    /// Idempotency records of `write`'s key (found by its handle, migration 0016).
    async fn idempotency_rows(&self, write: &Write) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM idempotency WHERE handle = $1")
            .bind(idempotency_handle(&write.caller, &write.idempotency_key))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] idempotency rows: {e}", self.b))
            .get(0)
    }

    /// This harness's backend, from its database's URL.
    fn backend(&self) -> Backend {
        if self.db.url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// Runs DDL written for PostgreSQL on this backend (`BYTEA` is SQLite's `BLOB`): the tables
    /// an older release left behind, for the upgrade tests.
    async fn create_old_table(&self, sql: &str) {
        let sql = match self.backend() {
            Backend::Sqlite => sql.replace("BYTEA", "BLOB"),
            Backend::Postgres => sql.to_owned(),
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] an old table: {e}", self.b));
    }

    /// How many of the tables `names` the database holds.
    async fn tables_present(&self, names: &[&str]) -> i64 {
        let catalog = match self.backend() {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name",
            Backend::Postgres => "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename",
        };
        let list = names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sqlx::AssertSqlSafe(format!("{catalog} IN ({list})")))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] the catalog: {e}", self.b))
            .get(0)
    }

    async fn rows(&self, table: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] count {table}: {e}", self.b))
            .get(0)
    }

    /// Rows of every per-subject table about `key`.
    async fn footprint(&self, key: &SubjectKey) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        for (table, sql) in PER_SUBJECT_TABLES {
            out.push((table, self.count(sql, &key.storage()).await));
        }
        out
    }

    /// Seqs of every ledger row, in order.
    async fn ledger_seqs(&self) -> Vec<u64> {
        sqlx::query("SELECT seq FROM ledger ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] ledger seqs: {e}", self.b))
            .iter()
            .map(|r| u64::try_from(r.get::<i64, _>(0)).unwrap_or(0))
            .collect()
    }

    async fn verify_ok(&self, entries: u64) {
        let report = ledger::verify(&*self.store, self.keys.verifiers())
            .await
            .unwrap_or_else(|e| panic!("[{}] verify: {e}", self.b));
        assert_eq!(report.broken, None, "[{}] ledger must verify", self.b);
        assert_eq!(
            report.entries_checked, entries,
            "[{}] entries walked",
            self.b
        );
    }

    async fn all_changes(&self) -> (Vec<ChangeEvent>, u64) {
        self.store
            .changes_after(0, 10_000)
            .await
            .unwrap_or_else(|e| panic!("[{}] changes_after: {e}", self.b))
    }
}

// ---------------------------------------------------------------------------------------------
// Revisions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn writes_return_increasing_gap_free_revisions() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let bob = person("bob");
        let phone = device("phone-1");
        let changes = vec![
            grant(&alice, "marketing.communications.email"),
            grant(&bob, "personalize.content.profiled"),
            signal(&alice, "gpc", "1"),
            link(&phone, &alice),
            restrict(&bob, true),
            withdraw(&alice, "marketing.communications.email"),
            refuse(&bob, "analytics.reporting"),
            restrict(&bob, false),
        ];
        let mut revisions = Vec::new();
        let mut first = None;
        for change in changes {
            let w = h.request(change.clone());
            first.get_or_insert_with(|| w.clone());
            let o = h
                .submit(w)
                .await
                .unwrap_or_else(|e| panic!("[{b}] write: {e}"));
            assert!(!o.replayed, "[{b}] new write reported as replayed");
            match &change {
                Change::Consent(c) => assert_eq!(
                    o.record,
                    Some(StoredRecord {
                        consent: c.clone(),
                        revision: o.revision,
                        ordered_at: None,
                    }),
                    "[{b}] a consent write returns its record at its revision"
                ),
                _ => assert_eq!(o.record, None, "[{b}] only consent writes return a record"),
            }
            assert_eq!(o.records_deleted, 0, "[{b}] nothing deleted");
            revisions.push(o.revision);
        }
        assert_eq!(
            revisions,
            (1..=8).collect::<Vec<u64>>(),
            "[{b}] revisions start at 1 and have no gaps"
        );

        // Neither a replay, a conflict nor a refused write consumes a revision.
        let first = first.expect("one write was made");
        let replay = h.submit(first.clone()).await.expect("replay");
        assert!(replay.replayed, "[{b}] retry is a replay");
        assert_eq!(replay.revision, 1, "[{b}] replay keeps its revision");
        let conflict = h
            .submit(Write {
                fingerprint: [7; 32],
                ..first
            })
            .await;
        assert!(
            matches!(conflict, Err(StoreError::IdempotencyConflict)),
            "[{b}] conflicting retry refused: {conflict:?}"
        );
        let carol = person("carol");
        assert_eq!(h.write(erase(&carol)).await.revision, 9, "[{b}] erase");
        let refused = h
            .submit(h.request(grant(&carol, "analytics.reporting")))
            .await;
        assert!(
            matches!(refused, Err(StoreError::SubjectErased)),
            "[{b}] erased subject refused: {refused:?}"
        );
        assert_eq!(
            h.write(grant(&alice, "analytics.reporting")).await.revision,
            10,
            "[{b}] the next write takes the next revision: failures consumed none"
        );

        // The ledger and the change feed carry exactly the same gap-free sequence.
        assert_eq!(
            h.ledger_seqs().await,
            (1..=10).collect::<Vec<u64>>(),
            "[{b}] ledger seqs"
        );
        let (events, high) = h.all_changes().await;
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<u64>>(),
            "[{b}] change revisions"
        );
        assert_eq!(high, 10, "[{b}] high water");
        h.verify_ok(10).await;
    }
}

#[tokio::test]
async fn concurrent_writes_get_distinct_gap_free_revisions() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let store = h.store.clone();
            let w = h.request(grant(
                &person(&format!("subject-{}", i % 4)),
                "personalize.content.profiled",
            ));
            tasks.push(tokio::spawn(async move { store.write(w).await }));
        }
        let mut revisions = Vec::new();
        for t in tasks {
            let o = t
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("[{b}] concurrent write: {e}"));
            revisions.push(o.revision);
        }
        revisions.sort_unstable();
        assert_eq!(
            revisions,
            (1..=32).collect::<Vec<u64>>(),
            "[{b}] concurrent writes: distinct, gap-free revisions"
        );
        h.verify_ok(32).await;
    }
}

#[tokio::test]
async fn two_store_instances_on_one_database_serialize_their_writes() {
    // Two replicas (PostgreSQL) or two processes (SQLite) share one database: each has its own
    // in-process lock, so only the database-level serialization keeps the chain and sequence whole.
    // A writer must wait for the other, never fail.
    let mut failures = Vec::new();
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let (other, _pool) = connect(backend, &h.db.url, h.keys.clone()).await;
        let mut tasks = Vec::new();
        for i in 0..24u32 {
            let store = if i % 2 == 0 {
                h.store.clone()
            } else {
                other.clone()
            };
            let w = h.request(grant(
                &person(&format!("replica-subject-{}", i % 3)),
                "analytics.reporting",
            ));
            tasks.push(tokio::spawn(async move { store.write(w).await }));
        }
        let mut revisions = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(o) => revisions.push(o.revision),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            failures.push(format!(
                "[{b}] {} of 24 writes through two instances failed, e.g. {}",
                errors.len(),
                errors[0]
            ));
            continue;
        }
        revisions.sort_unstable();
        assert_eq!(
            revisions,
            (1..=24).collect::<Vec<u64>>(),
            "[{b}] two instances: distinct, gap-free revisions"
        );
        h.verify_ok(24).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn reopening_the_database_continues_the_sequence() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        for _ in 0..3 {
            h.write(grant(&alice, "analytics.reporting")).await;
        }
        // `open` picks the backend from the URL and migrates an existing database as a no-op.
        let reopened = store::open(&h.db.url, h.keys.clone())
            .await
            .unwrap_or_else(|e| panic!("[{b}] open {}: {e}", h.db.url));
        let history = reopened.history(&alice, 0, 10).await.expect("history");
        assert_eq!(history.len(), 3, "[{b}] reopened store sees the data");
        let rows = reopened.load_subject(&alice).await.expect("load");
        assert_eq!(
            rows.records
                .iter()
                .map(|r| StoredRecord {
                    ordered_at: None,
                    ..r.clone()
                })
                .collect::<Vec<_>>(),
            history[2..].to_vec(),
            "[{b}] reopened store: the latest grant is current"
        );
        assert_eq!(rows.as_of, 3, "[{b}] reopened store's as_of");
        let o = reopened
            .write(h.request(withdraw(&alice, "analytics.reporting")))
            .await
            .unwrap_or_else(|e| panic!("[{b}] write after reopen: {e}"));
        assert_eq!(o.revision, 4, "[{b}] sequence continues after reopen");
        let report = ledger::verify(&*reopened, h.keys.verifiers())
            .await
            .expect("verify");
        assert_eq!(report.broken, None, "[{b}] chain continues after reopen");
        assert_eq!(report.entries_checked, 4, "[{b}] entries");
    }
}

// ---------------------------------------------------------------------------------------------
// load_subject
// ---------------------------------------------------------------------------------------------

/// The current records a subject's history folds to: the latest event per (purpose, channel,
/// scope), ordered by revision.
fn current_of(history: &[StoredRecord]) -> Vec<StoredRecord> {
    let mut latest: Vec<StoredRecord> = Vec::new();
    for r in history {
        let key = |x: &StoredRecord| {
            (
                x.consent.purpose.clone(),
                x.consent.channel.clone(),
                x.consent.scope.clone(),
            )
        };
        latest.retain(|x| key(x) != key(r));
        latest.push(r.clone());
    }
    latest.sort_by_key(|r| r.revision);
    latest
}

#[tokio::test]
async fn load_subject_returns_current_records_oldest_first_with_signals_and_flags() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let bob = person("bob");

        // Every optional field set, to check the record round-trips whole.
        let mut full = consent(&alice, "marketing.communications.sms", "given");
        full.scope = Some("user.contact.phone".into());
        full.channel = Some("sms".into());
        full.consent_type = ConsentType::Expressed;
        full.expires_at = Some(full.collected_at + Duration::days(365));
        full.guardian_ref = Some("guardian-42".into());
        full.receipt = Some(fake_receipt(&full.record_id));
        let r_full = h.write(Change::Consent(full.clone())).await;
        h.write(grant(&bob, "analytics.reporting")).await;
        let r_prof = h.write(grant(&alice, "personalize.content.profiled")).await;
        let r_email = h
            .write(grant(&alice, "marketing.communications.email"))
            .await;
        let r_email_w = h
            .write(withdraw(&alice, "marketing.communications.email"))
            .await;
        // Same purpose as `full`, no channel or scope: a different key, so both are current.
        let r_sms_plain = h.write(grant(&alice, "marketing.communications.sms")).await;
        let gpc = h.write(signal(&alice, "gpc", "1")).await.revision;
        h.write(signal(&bob, "gpc", "0")).await;
        let age = h.write(signal(&alice, "age_band", "adult")).await.revision;
        let last = h.write(grant(&alice, "analytics.reporting")).await;
        h.write(grant(&bob, "analytics.reporting")).await;

        let rec = |o: &WriteOutcome| {
            sans_receipt(
                o.record
                    .clone()
                    .expect("a consent write returns its record"),
            )
        };
        let history = vec![
            rec(&r_full),
            rec(&r_prof),
            rec(&r_email),
            rec(&r_email_w),
            rec(&r_sms_plain),
            rec(&last),
        ];
        assert_eq!(
            h.store.history(&alice, 0, 100).await.expect("history"),
            history,
            "[{b}] history keeps every event"
        );
        assert_eq!(
            r_full.record.as_ref().map(|r| &r.consent),
            Some(&full),
            "[{b}] the write returned the record it was given, receipt included"
        );
        // The body keeps only what the ledger entry leaves out; the rest reads back from it.
        let body: serde_json::Value = serde_json::from_str(
            &sqlx::query("SELECT body FROM consent_records WHERE record_id = $1")
                .bind(&full.record_id)
                .fetch_one(&h.pool)
                .await
                .map(|r| r.get::<String, _>(0))
                .expect("the record's body"),
        )
        .expect("JSON");
        assert_eq!(
            body,
            serde_json::json!([3, full.source_ip, full.user_agent, full.guardian_ref, null]),
            "[{b}] the record's body"
        );

        let rows = h.load(&alice).await;
        assert_eq!(
            rows.records,
            vec![
                rec(&r_full),
                rec(&r_prof),
                rec(&r_email_w),
                rec(&r_sms_plain),
                rec(&last)
            ],
            "[{b}] alice's current records (the email grant superseded by its withdrawal), oldest first, every field intact"
        );
        assert_eq!(
            rows.signals
                .iter()
                .map(|s| (s.kind.as_str(), s.value.as_str(), s.revision))
                .collect::<Vec<_>>(),
            vec![("gpc", "1", gpc), ("age_band", "adult", age)],
            "[{b}] alice's signals, oldest first"
        );
        assert!(!rows.restricted, "[{b}] not restricted");
        assert!(!rows.erased, "[{b}] not erased");
        assert!(rows.links.is_empty(), "[{b}] no links");
        assert_eq!(
            rows.revision, last.revision,
            "[{b}] revision = alice's latest change"
        );
        assert_eq!(rows.as_of, last.revision + 1, "[{b}] as_of = store head");

        // A subject never seen: empty, revision 0, but as_of still the store's head.
        let nobody = h.load(&person("nobody")).await;
        assert_eq!(
            nobody,
            SubjectRows {
                as_of: last.revision + 1,
                ..SubjectRows::default()
            },
            "[{b}] unknown subject: nothing, no default consent"
        );
    }
}

#[tokio::test]
async fn current_records_are_the_latest_per_purpose_channel_and_scope() {
    // The projection load_subject reads must always equal the fold of the full history.
    let purposes = [
        "marketing.communications.email",
        "marketing.communications.sms",
        "personalize.content.profiled",
    ];
    let channels = [None, Some("email"), Some("sms")];
    let scopes = [None, Some("user.contact.email"), Some("user.health")];
    let states = ["given", "withdrawn", "refused", "given", "given"];
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let subjects = [person("p0"), person("p1"), device("d0")];
        // A deterministic walk over the key space that revisits keys with other states.
        for i in 0..60usize {
            let who = &subjects[i % 3];
            let mut c = consent(who, purposes[(i / 3) % 3], states[(i * 7) % 5]);
            c.channel = channels[(i / 2) % 3].map(str::to_owned);
            c.scope = scopes[(i / 5) % 3].map(str::to_owned);
            h.write(Change::Consent(c)).await;
            if i % 13 == 0 {
                h.write(signal(who, "gpc", "1")).await;
            }
        }
        for who in &subjects {
            let history = h.store.history(who, 0, 1000).await.expect("history");
            assert_eq!(history.len(), 20, "[{b}] {who:?}: full history");
            let current = current_of(&history);
            assert!(
                current.len() < history.len() && current.len() > 1,
                "[{b}] {who:?}: the walk both superseded and kept records ({} of {})",
                current.len(),
                history.len()
            );
            assert_eq!(
                h.load(who).await.records,
                current,
                "[{b}] {who:?}: current records = latest per (purpose, channel, scope)"
            );
        }
        // A device linked to p0 is decided by p0's current records.
        h.write(link(&subjects[2], &subjects[0])).await;
        assert_eq!(
            h.load(&subjects[2]).await.records,
            h.load(&subjects[0]).await.records,
            "[{b}] linked device: its subject's current records"
        );
        // A replayed write does not touch the projection.
        let w = h.request(withdraw(&subjects[1], purposes[0]));
        h.submit(w.clone()).await.expect("write");
        let before = h.load(&subjects[1]).await.records;
        let again = h.submit(w).await.expect("replay");
        assert!(again.replayed, "[{b}] replayed");
        assert_eq!(
            h.load(&subjects[1]).await.records,
            before,
            "[{b}] replay leaves the current records alone"
        );
    }
}

#[tokio::test]
async fn as_of_is_at_least_the_latest_committed_revision() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let watcher = person("watcher");
        for i in 0..10u32 {
            let who = person(&format!("writer-{}", i % 3));
            let o = h.write(grant(&who, "analytics.reporting")).await;
            let rows = h.load(&watcher).await;
            assert!(
                rows.as_of >= o.revision,
                "[{b}] as_of {} behind committed revision {}",
                rows.as_of,
                o.revision
            );
            let own = h.load(&who).await;
            assert!(
                own.as_of >= own.revision && own.revision == o.revision,
                "[{b}] writer's own load: revision {} as_of {} after write {}",
                own.revision,
                own.as_of,
                o.revision
            );
        }
    }
}

#[tokio::test]
async fn linked_devices_share_their_subjects_records_and_signals() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let carol = person("carol");
        let dave = person("dave");
        let phone = device("phone");
        let laptop = device("laptop");

        let g1 = h.write(grant(&carol, "personalize.content.profiled")).await;
        let phone_gpc = h.write(signal(&phone, "gpc", "1")).await.revision;
        // The unlinked device is its own subject.
        let alone = h.load(&phone).await;
        assert!(
            alone.records.is_empty(),
            "[{b}] unlinked device: no records"
        );
        assert_eq!(alone.signals.len(), 1, "[{b}] unlinked device: own signal");
        assert!(alone.links.is_empty(), "[{b}] unlinked device: no link");

        let l1 = h.write(link(&phone, &carol)).await;
        assert_eq!(
            keyset(&l1.affected),
            keyset(&[carol.clone(), phone.clone()]),
            "[{b}] link affects the device and the subject"
        );
        let l2 = h.write(link(&laptop, &carol)).await;
        let laptop_sig = h.write(signal(&laptop, "age_band", "adult")).await.revision;
        let carol_sig = h.write(signal(&carol, "guardian", "g-1")).await.revision;
        let g2 = h.write(grant(&carol, "analytics.reporting")).await;
        h.write(grant(&dave, "analytics.reporting")).await;

        let carol_rows = h.load(&carol).await;
        let phone_rows = h.load(&phone).await;
        let carol_records: Vec<u64> = carol_rows.records.iter().map(|r| r.revision).collect();
        assert_eq!(
            carol_records,
            vec![g1.revision, g2.revision],
            "[{b}] carol's records"
        );
        assert_eq!(
            phone_rows.records, carol_rows.records,
            "[{b}] loading the linked device yields its subject's records"
        );
        assert_eq!(
            phone_rows.links,
            vec![carol.clone()],
            "[{b}] the device's load names its subject"
        );
        assert_eq!(
            keyset(&carol_rows.links),
            keyset(&[phone.clone(), laptop.clone()]),
            "[{b}] the subject's load lists its devices"
        );
        let expected_signals = vec![phone_gpc, laptop_sig, carol_sig];
        for (who, rows) in [("carol", &carol_rows), ("phone", &phone_rows)] {
            assert_eq!(
                rows.signals.iter().map(|s| s.revision).collect::<Vec<_>>(),
                expected_signals,
                "[{b}] {who}: signals of the subject and every linked device, oldest first"
            );
            assert_eq!(
                rows.revision, g2.revision,
                "[{b}] {who}: the group's latest revision"
            );
        }
        assert!(l2.revision < g2.revision);

        // Restriction of the subject covers its devices.
        h.write(restrict(&carol, true)).await;
        assert!(
            h.load(&phone).await.restricted,
            "[{b}] a device inherits its subject's restriction"
        );
        h.write(restrict(&carol, false)).await;

        // Re-linking moves the device (and its signals) to the other subject.
        let relink = h.write(link(&laptop, &dave)).await;
        assert_eq!(
            keyset(&relink.affected),
            keyset(&[carol.clone(), phone.clone(), laptop.clone(), dave.clone()]),
            "[{b}] re-link affects the old group and the new one"
        );
        let carol_rows = h.load(&carol).await;
        assert_eq!(
            carol_rows.links,
            vec![phone.clone()],
            "[{b}] carol keeps the phone only"
        );
        assert_eq!(
            carol_rows
                .signals
                .iter()
                .map(|s| s.revision)
                .collect::<Vec<_>>(),
            vec![phone_gpc, carol_sig],
            "[{b}] the laptop's signal left carol's group"
        );
        let laptop_rows = h.load(&laptop).await;
        assert_eq!(
            laptop_rows.links,
            vec![dave.clone()],
            "[{b}] laptop -> dave"
        );
        assert_eq!(
            laptop_rows.records,
            h.load(&dave).await.records,
            "[{b}] laptop now yields dave's records"
        );
        assert!(
            laptop_rows.signals.iter().any(|s| s.revision == laptop_sig),
            "[{b}] the laptop's signal followed it"
        );
    }
}

#[tokio::test]
async fn a_linked_groups_revision_never_goes_backwards() {
    // A subject's revision is a consistency token (docs/architecture.md §3 "Every change increments the subject's
    // revision"). Moving a device out of a group, or erasing it, changes what the group's load
    // returns, so the remaining members' revision must not drop below what was already reported.
    let mut failures = Vec::new();
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let erin = person("erin");
        let frank = person("frank");
        let tablet = device("tablet");
        let watch = device("watch");
        h.write(grant(&erin, "analytics.reporting")).await;
        h.write(link(&tablet, &erin)).await;
        h.write(link(&watch, &erin)).await;
        h.write(signal(&tablet, "gpc", "1")).await;
        let before = h.load(&erin).await.revision;

        let moved = h.write(link(&tablet, &frank)).await;
        let after_move = h.load(&erin).await.revision;
        if after_move < before {
            failures.push(format!(
                "[{b}] erin's revision went backwards after her tablet was re-linked to frank: {before} -> {after_move} (re-link at {})",
                moved.revision
            ));
        }

        h.write(signal(&watch, "gpc", "1")).await;
        let before = h.load(&erin).await.revision;
        let erased = h.write(erase(&watch)).await;
        let after_erase = h.load(&erin).await.revision;
        if after_erase < before {
            failures.push(format!(
                "[{b}] erin's revision went backwards after her watch was erased: {before} -> {after_erase} (erase at {})",
                erased.revision
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_retries_replay_the_outcome_and_write_once() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let w = h.request(grant_with_receipt(&alice, "marketing.communications.email"));
        let first = h.submit(w.clone()).await.expect("first write");
        assert!(!first.replayed, "[{b}] first write is not a replay");
        h.write(grant(&person("bob"), "analytics.reporting")).await;

        for attempt in 0..3 {
            let again = h.submit(w.clone()).await.expect("retry");
            assert!(again.replayed, "[{b}] retry {attempt} is marked replayed");
            assert_eq!(
                sans_replayed(&again),
                sans_replayed(&first),
                "[{b}] retry {attempt} returns the original outcome (revision, record, time)"
            );
        }
        for (table, n) in [
            ("consent_records", 2),
            ("ledger", 2),
            (SIGNED_RECORDS, 1),
            ("idempotency", 2),
        ] {
            assert_eq!(h.rows(table).await, n, "[{b}] {table} rows after retries");
        }
        assert_eq!(
            h.count(
                "SELECT COUNT(*) FROM consent_records WHERE subject = $1",
                &alice.storage()
            )
            .await,
            1,
            "[{b}] exactly one record for alice"
        );

        // Same caller and key, other content: refused, nothing written.
        let mut other = w.clone();
        other.fingerprint = [0xAB; 32];
        other.change = grant(&alice, "analytics.reporting");
        let conflict = h.submit(other).await;
        assert!(
            matches!(conflict, Err(StoreError::IdempotencyConflict)),
            "[{b}] reused key with another fingerprint: {conflict:?}"
        );
        for (table, n) in [("consent_records", 2), ("ledger", 2), ("idempotency", 2)] {
            assert_eq!(h.rows(table).await, n, "[{b}] {table} rows after conflict");
        }

        // The same key from another caller is a different write.
        let mut mailer = w.clone();
        mailer.caller = "mailer".into();
        mailer.change = grant(&alice, "marketing.communications.email");
        mailer.fingerprint = fingerprint_of(&mailer.change);
        let m = h.submit(mailer.clone()).await.expect("other caller");
        assert!(!m.replayed, "[{b}] other caller's key is its own");
        assert_eq!(m.revision, 3, "[{b}] other caller's write is new");
        let m2 = h.submit(mailer).await.expect("other caller retry");
        assert!(
            m2.replayed && m2.revision == 3,
            "[{b}] other caller's retry replays its own"
        );
        assert_eq!(h.rows("ledger").await, 3, "[{b}] ledger rows");
        assert_eq!(h.rows("idempotency").await, 3, "[{b}] idempotency rows");

        // Idempotency holds for every kind of change.
        for change in [
            signal(&alice, "gpc", "1"),
            link(&device("d1"), &alice),
            restrict(&alice, true),
            erase(&person("zed")),
        ] {
            let w = h.request(change);
            let before = h.rows("ledger").await;
            let o1 = h.submit(w.clone()).await.expect("write");
            let o2 = h.submit(w.clone()).await.expect("retry");
            assert!(
                o2.replayed && sans_replayed(&o2) == sans_replayed(&o1),
                "[{b}] replay of {:?}",
                w.change
            );
            assert_eq!(
                h.rows("ledger").await,
                before + 1,
                "[{b}] one ledger row for {:?}",
                w.change
            );
        }
    }
}

/// Makes every insert of a consent record for `purpose` fail inside the database: a failure in
/// the middle of a group commit's transaction.
async fn poison(h: &Harness, purpose: &str) {
    let statements: Vec<String> = if h.db.url.starts_with("sqlite") {
        vec![format!(
            "CREATE TRIGGER poison BEFORE INSERT ON consent_records WHEN NEW.purpose = '{purpose}' \
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )]
    } else {
        vec![
            format!(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.purpose = '{purpose}' THEN RAISE EXCEPTION 'poisoned'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            "CREATE TRIGGER poison BEFORE INSERT ON consent_records \
             FOR EACH ROW EXECUTE FUNCTION poison()"
                .to_owned(),
        ]
    };
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&h.pool)
            .await
            .unwrap_or_else(|e| panic!("[{}] poison: {e}", h.b));
    }
}

/// Group commit (issue 16): 64 writers at once share transactions; each write still gets its
/// own revision, idempotency record and ledger entry, in order, and is answered only after its
/// batch committed. A batch that fails in the middle (a poisoned insert) fails every member:
/// none of them is acknowledged or visible, the writes of other batches are, and a retry of each
/// failed write under its key applies exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits_and_a_failed_batch_fails_every_member() {
    const WRITERS: usize = 64;
    const POISONED: &str = "research";
    for backend in backends() {
        let h = Arc::new(Harness::new(backend).await);
        let b = h.b.clone();
        poison(&h, POISONED).await;

        // The first write leads and waits for the lock held outside; the rest queue up behind
        // it and go as one batch once it is released, the poisoned one among them.
        let lock = WriteLock::take(&h.db.url).await;
        let request = |i: usize| {
            let subject = person(&format!("writer-{i}"));
            let change = match i % 4 {
                0 => grant(&subject, "analytics.reporting"),
                1 => withdraw(&subject, "analytics.reporting"),
                2 => signal(&subject, "gpc", "1"),
                _ if i == 31 => grant(&subject, POISONED),
                _ => grant(&subject, "marketing.communications.email"),
            };
            h.request(change)
        };
        let writes: Vec<Write> = (0..WRITERS).map(request).collect();
        let submit = |w: Write| {
            let h = h.clone();
            tokio::spawn(async move { h.submit(w).await })
        };
        let first = submit(writes[0].clone());
        // A moment for it to take its batch and wait on the lock (the assertions below hold
        // however the batches fall; this only makes the shared batch likely).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let rest: Vec<_> = writes[1..].iter().cloned().map(submit).collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        lock.release(&h.db.url).await;
        let mut outcomes = vec![first.await.expect("a writer")];
        for r in rest {
            outcomes.push(r.await.expect("a writer"));
        }

        let acked: Vec<(usize, &WriteOutcome)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().ok().map(|o| (i, o)))
            .collect();
        let failed: Vec<usize> = (0..WRITERS).filter(|i| outcomes[*i].is_err()).collect();
        assert!(failed.contains(&31), "[{b}] the poisoned write failed");
        for i in &failed {
            assert!(
                matches!(outcomes[*i], Err(StoreError::GroupCommitFailed(_))),
                "[{b}] write {i}: {:?}",
                outcomes[*i]
            );
        }
        assert!(
            failed.len() > 1,
            "[{b}] the poisoned write's batch failed as a whole, not it alone"
        );
        let (_, carried) = h.store.group_commits();
        assert_eq!(
            carried,
            acked.len() as u64,
            "[{b}] commits carried the acknowledged"
        );

        // Acknowledged: in the ledger, one entry each, revisions gap-free in commit order.
        let mut revisions: Vec<u64> = acked.iter().map(|(_, o)| o.revision).collect();
        revisions.sort_unstable();
        assert_eq!(
            revisions,
            (1..=acked.len() as u64).collect::<Vec<_>>(),
            "[{b}] acknowledged revisions are the ledger's, without gaps"
        );
        assert_eq!(
            h.ledger_seqs().await,
            revisions,
            "[{b}] the ledger holds exactly them"
        );
        // Failed: nothing of them visible.
        for i in &failed {
            assert_eq!(
                h.idempotency_rows(&writes[*i]).await,
                0,
                "[{b}] the failed write {i} left an idempotency record"
            );
        }
        h.verify_ok(acked.len() as u64).await;

        // Retries of the failed writes (the poison lifted) apply exactly once, in order.
        sqlx::raw_sql("DROP TRIGGER poison")
            .execute(&h.pool)
            .await
            .ok();
        if !h.db.url.starts_with("sqlite") {
            sqlx::raw_sql("DROP TRIGGER IF EXISTS poison ON consent_records")
                .execute(&h.pool)
                .await
                .expect("lift the poison");
        }
        // They go at once, queued behind the lock again: they share commits.
        let (commits_before, _) = h.store.group_commits();
        let lock = WriteLock::take(&h.db.url).await;
        let retries: Vec<_> = failed.iter().map(|i| submit(writes[*i].clone())).collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        lock.release(&h.db.url).await;
        let mut retried = Vec::new();
        for r in retries {
            let o = r.await.expect("a writer").expect("a retry");
            assert!(
                !o.replayed,
                "[{b}] a failed write was not recorded the first time"
            );
            retried.push(o.revision);
        }
        let (commits_after, _) = h.store.group_commits();
        assert!(
            commits_after - commits_before < failed.len() as u64,
            "[{b}] {} concurrent writes took {} commits: they did not share",
            failed.len(),
            commits_after - commits_before
        );
        for (i, revision) in failed.iter().zip(&retried) {
            let again = h.submit(writes[*i].clone()).await.expect("a retry");
            assert!(again.replayed && again.revision == *revision, "[{b}] once");
        }
        assert_eq!(
            h.rows("ledger").await,
            WRITERS as i64,
            "[{b}] each write once"
        );
        h.verify_ok(WRITERS as u64).await;
    }
}

/// A group commit applies runs of records and signals with one statement per table
/// (`store/batch.rs`), and links, restrictions and erasures one by one between them. The same
/// writes, in the same order, must come out the same whether each commits alone, all share one
/// batch, or all are handed over as one unit (`write_many`, as an import's chunk is): revisions, records, refusals (a reused key, an erased subject), retries answered
/// inside the batch, link groups, current state per key repeated in the batch, and a ledger
/// that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_mixed_writes_equals_the_same_writes_one_by_one() {
    for backend in backends() {
        let alone = Harness::new(backend).await;
        let shared = Harness::new(backend).await;
        let together = Harness::new(backend).await;
        let b = alone.b.clone();
        let (alice, bob, carol, dave) = (
            person("batch-alice"),
            person("batch-bob"),
            person("batch-carol"),
            person("batch-dave"),
        );
        let phone = device("batch-phone");
        let email = "marketing.communications.email";
        let reporting = "analytics.reporting";
        let mut writes: Vec<Write> = [
            grant(&dave, reporting),
            grant(&alice, reporting),
            grant(&alice, email),
            withdraw(&alice, reporting),
            signal(&bob, "gpc", "1"),
            link(&phone, &alice),
            grant(&phone, email),
            grant_with_receipt(&carol, reporting),
            restrict(&bob, true),
            grant(&bob, reporting),
            erase(&carol),
            grant(&carol, email),
            grant(&alice, reporting),
        ]
        .into_iter()
        .map(|change| alone.request(change))
        .collect();
        // A retry of an earlier write inside the batch, and its key reused for other content.
        writes.insert(4, writes[2].clone());
        let mut reused = alone.request(grant(&bob, email));
        reused.idempotency_key = writes[2].idempotency_key.clone();
        writes.insert(5, reused);
        writes.push(writes[1].clone());

        let mut one_by_one = Vec::new();
        for w in &writes {
            one_by_one.push(alone.submit(w.clone()).await);
        }

        // The first write leads and waits on the lock held outside; each later one is queued,
        // in order, by its first poll, so the rest go as one batch once the lock is released.
        let lock = WriteLock::take(&shared.db.url).await;
        let mut pending = Vec::new();
        for w in &writes {
            let mut write = Box::pin({
                let store = shared.store.clone();
                let w = w.clone();
                async move { store.write(w).await }
            });
            assert!(
                futures::poll!(&mut write).is_pending(),
                "[{b}] a write committed while the lock was held"
            );
            pending.push(tokio::spawn(write));
        }
        let (commits_before, _) = shared.store.group_commits();
        lock.release(&shared.db.url).await;
        let mut batched = Vec::new();
        for p in pending {
            batched.push(p.await.expect("a writer"));
        }
        let (commits_after, _) = shared.store.group_commits();
        assert_eq!(
            commits_after - commits_before,
            2,
            "[{b}] the leader's write alone, then every other write in one commit"
        );

        let comparable = |o: &Result<WriteOutcome, StoreError>| match o {
            Ok(o) => format!(
                "revision {} record {:?} deleted {} affected {:?} replayed {}",
                o.revision,
                o.record,
                o.records_deleted,
                keyset(&o.affected),
                o.replayed
            ),
            Err(e) => format!("refused: {e:?}"),
        };
        for (i, (a, s)) in one_by_one.iter().zip(&batched).enumerate() {
            assert_eq!(comparable(a), comparable(s), "[{b}] write {i}");
        }
        // The same writes handed over as one unit (as an import's chunk is): one commit, the
        // same answers.
        let (commits_before, _) = together.store.group_commits();
        let as_one = together
            .store
            .write_many(writes.clone())
            .await
            .unwrap_or_else(|e| panic!("[{b}] write_many: {e}"));
        let (commits_after, _) = together.store.group_commits();
        assert_eq!(
            commits_after - commits_before,
            1,
            "[{b}] one unit, one commit"
        );
        assert_eq!(as_one.len(), writes.len(), "[{b}] an answer per write");
        for (i, (a, t)) in one_by_one.iter().zip(&as_one).enumerate() {
            assert_eq!(comparable(a), comparable(t), "[{b}] write {i} of the unit");
        }
        // The batch held every kind of answer.
        assert!(matches!(batched[5], Err(StoreError::IdempotencyConflict)));
        assert!(matches!(batched[13], Err(StoreError::SubjectErased)));
        assert!(batched[4].as_ref().is_ok_and(|o| o.replayed));
        assert!(batched[15].as_ref().is_ok_and(|o| o.replayed));
        let alice_phone = batched[8].as_ref().expect("the phone's grant");
        assert!(keyset(&alice_phone.affected).contains(&alice.storage()));

        for key in [&alice, &bob, &carol, &dave, &phone] {
            let (a, s) = (alone.load(key).await, shared.load(key).await);
            assert_eq!(
                (a.revision, a.erased, a.restricted, &a.records, &a.links),
                (s.revision, s.erased, s.restricted, &s.records, &s.links),
                "[{b}] {key:?}"
            );
            let t = together.load(key).await;
            assert_eq!(
                (a.revision, a.erased, a.restricted, &a.records, &a.links),
                (t.revision, t.erased, t.restricted, &t.records, &t.links),
                "[{b}] {key:?}, written as one unit"
            );
            let signals = |r: &SubjectRows| {
                r.signals
                    .iter()
                    .map(|s| (s.kind.clone(), s.value.clone(), s.revision))
                    .collect::<Vec<_>>()
            };
            assert_eq!(signals(&a), signals(&s), "[{b}] {key:?} signals");
        }
        let changes = |c: (Vec<ChangeEvent>, u64)| {
            c.0.iter()
                .map(|e| format!("{} {} {:?}", e.revision, e.kind, e.purpose))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            changes(alone.all_changes().await),
            changes(shared.all_changes().await),
            "[{b}] the change feed"
        );
        for table in [
            "consent_records",
            "consent_current",
            SIGNED_RECORDS,
            "receipt_contexts",
            "signals",
            "idempotency",
            "subjects",
            SUBJECT_KEYS,
        ] {
            assert_eq!(
                alone.rows(table).await,
                shared.rows(table).await,
                "[{b}] {table}"
            );
        }
        let entries = alone.ledger_seqs().await.len() as u64;
        alone.verify_ok(entries).await;
        shared.verify_ok(entries).await;
        together.verify_ok(entries).await;
    }
}

/// Idempotency keys expire (issue 16): a retry inside the window is answered from the first
/// write; once the key's first use is older than the window (its age set back behind the store's
/// back, so no test waits), the same key is a new request, with new content too; the sweep
/// forgets exactly the keys past the window and keeps the rest answering.
#[tokio::test]
async fn idempotency_keys_expire_after_the_window_and_are_swept() {
    const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let w = h.request(grant(&alice, "marketing.communications.email"));
        let first = h.submit(w.clone()).await.expect("first write");
        let retry = h.submit(w.clone()).await.expect("retry inside the window");
        assert!(
            retry.replayed && retry.revision == first.revision,
            "[{b}] inside the window a retry is answered once"
        );
        assert_eq!(h.rows("ledger").await, 1, "[{b}] written once");

        // Six days later: still inside the default window of seven.
        let age = |days: i64, key: &str| {
            let pool = h.pool.clone();
            let handle = idempotency_handle(&w.caller, key);
            async move {
                sqlx::query(
                    "UPDATE idempotency SET created_at = created_at - $1 WHERE handle = $2",
                )
                .bind(days * DAY_MICROS)
                .bind(handle)
                .execute(&pool)
                .await
                .expect("age a key");
            }
        };
        age(6, &w.idempotency_key).await;
        let retry = h.submit(w.clone()).await.expect("retry on day six");
        assert!(retry.replayed, "[{b}] day six is inside the window");

        // Past the window the key is a new request: a new revision, even with other content.
        age(2, &w.idempotency_key).await;
        let mut reused = w.clone();
        reused.change = withdraw(&alice, "marketing.communications.email");
        reused.fingerprint = fingerprint_of(&reused.change);
        let fresh = h
            .submit(reused.clone())
            .await
            .expect("a reused key after the window");
        assert!(
            !fresh.replayed && fresh.revision == first.revision + 1,
            "[{b}] after the window a reused key is a new write: {fresh:?}"
        );
        assert_eq!(
            h.rows("ledger").await,
            2,
            "[{b}] the new write is in the ledger"
        );
        // …and from then on the key answers for the new write.
        let again = h.submit(reused).await.expect("retry of the new write");
        assert!(again.replayed && again.revision == fresh.revision, "[{b}]");
        assert_eq!(h.rows("idempotency").await, 1, "[{b}] one row for the key");

        // The sweep forgets only keys past the window.
        let old: Vec<Write> = (0..5)
            .map(|i| h.request(grant(&person(&format!("old-{i}")), "analytics.reporting")))
            .collect();
        for w in &old {
            h.submit(w.clone()).await.expect("write");
            age(8, &w.idempotency_key).await;
        }
        let young = h.request(grant(&person("young"), "analytics.reporting"));
        h.submit(young.clone()).await.expect("write");
        assert_eq!(h.rows("idempotency").await, 7, "[{b}]");
        // A sweep looks at the oldest keys by revision, a batch at a time, and forgets those
        // past the window among them: alice's reused key (revision 2, young) is among the
        // oldest three and stays, and does not hold back the expired ones behind it.
        let swept = h.store.sweep_idempotency(3).await.expect("sweep");
        assert_eq!(
            swept, 2,
            "[{b}] a sweep looks at no more than its batch, and keeps its young keys"
        );
        let swept = h.store.sweep_idempotency(1000).await.expect("sweep");
        assert_eq!(swept, 3, "[{b}] then the rest past the window");
        assert_eq!(
            h.store.sweep_idempotency(1000).await.expect("sweep"),
            0,
            "[{b}]"
        );
        assert_eq!(h.rows("idempotency").await, 2, "[{b}] the young keys stay");
        let retry = h.submit(young).await.expect("retry of a young key");
        assert!(
            retry.replayed,
            "[{b}] a key inside the window still answers"
        );
        h.verify_ok(h.rows("ledger").await as u64).await;
    }
}

/// Idempotency records keep the revision, not a copy of the answer (issue 16): a retry's answer
/// is rebuilt from the stored record and change, equal to the first; the record keeps its
/// key's handle and the first half of the request's fingerprint, nothing else of the request
/// (migration 0016).
#[tokio::test]
async fn retries_are_answered_from_the_revision_and_a_record_keeps_no_copy() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let w = h.request(grant_with_receipt(&person("dora"), "analytics.reporting"));
        let first = h.submit(w.clone()).await.expect("write");
        let handle = idempotency_handle(&w.caller, &w.idempotency_key);
        let (revision, fingerprint): (i64, Vec<u8>) =
            sqlx::query("SELECT revision, fingerprint FROM idempotency WHERE handle = $1")
                .bind(handle.clone())
                .fetch_one(&h.pool)
                .await
                .map(|r| (r.get(0), r.get(1)))
                .expect("the idempotency record, by its handle");
        assert_eq!(
            revision, first.revision as i64,
            "[{b}] the revision is kept"
        );
        assert_eq!(
            fingerprint,
            w.fingerprint[..16].to_vec(),
            "[{b}] and the fingerprint's first 16 bytes, nothing else of the request"
        );
        let again = h.submit(w.clone()).await.expect("retry");
        assert_eq!(
            sans_replayed(&again),
            sans_replayed(&first),
            "[{b}] rebuilt answer"
        );
    }
}

/// Idempotency records an older release kept under their caller and key in clear (before
/// migration 0016), and imports kept under their source and source record id (before 0017),
/// move to today's form when the store opens: a retry of a key used before an upgrade is
/// answered once, a record imported before is not imported again, and a different request
/// under either is still a conflict; the old tables go, and opening again moves nothing.
#[tokio::test]
async fn records_kept_before_the_handle_still_answer_after_the_upgrade() {
    for backend in backends() {
        let mut h = Harness::new(backend).await;
        let b = h.b.clone();
        let w = h.request(grant_with_receipt(&person("held"), "analytics.reporting"));
        let first = h.submit(w.clone()).await.expect("write");
        let import = h.import_request(imported(
            &person("held-import"),
            "analytics.reporting",
            "given",
            "crm-held-1",
            Duration::days(30),
        ));
        let first_import = h.submit(import.clone()).await.expect("import");
        // The import and the record as the release before kept them (migrations 0010 and
        // 0011's tables), and nothing in today's.
        let import_fingerprint: Vec<u8> = import.fingerprint.to_vec();
        let created_at: i64 = sqlx::query("SELECT created_at FROM idempotency")
            .fetch_one(&h.pool)
            .await
            .expect("the record")
            .get(0);
        for sql in [
            "DELETE FROM imported",
            "CREATE TABLE imported_held (source TEXT NOT NULL, source_record_id TEXT NOT NULL, \
             revision BIGINT NOT NULL UNIQUE, fingerprint BYTEA NOT NULL, \
             PRIMARY KEY (source_record_id, source))",
            "DELETE FROM idempotency",
            "CREATE TABLE idempotency_held (revision BIGINT PRIMARY KEY, created_at BIGINT NOT NULL, \
             caller TEXT NOT NULL, key TEXT NOT NULL, fingerprint BYTEA NOT NULL, \
             outcome TEXT NOT NULL, records_deleted BIGINT NULL)",
        ] {
            if sql.starts_with("CREATE") {
                h.create_old_table(sql).await;
            } else {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&h.pool)
                    .await
                    .unwrap_or_else(|e| panic!("[{b}] {sql}: {e}"));
            }
        }
        sqlx::query(
            "INSERT INTO imported_held (source, source_record_id, revision, fingerprint) \
             VALUES ('legacy-crm', 'crm-held-1', $1, $2)",
        )
        .bind(first_import.revision as i64)
        .bind(import_fingerprint)
        .execute(&h.pool)
        .await
        .expect("an import kept in clear");
        sqlx::query(
            "INSERT INTO idempotency_held (revision, created_at, caller, key, fingerprint, outcome) \
             VALUES ($1, $2, $3, $4, $5, '')",
        )
        .bind(first.revision as i64)
        .bind(created_at)
        .bind(w.caller.clone())
        .bind(w.idempotency_key.clone())
        .bind(w.fingerprint.to_vec())
        .execute(&h.pool)
        .await
        .expect("a record kept in clear");

        (h.store, h.pool) = connect(backend, &h.db.url, h.keys.clone()).await;
        assert_eq!(h.idempotency_rows(&w).await, 1, "[{b}] moved to its handle");
        let held = h
            .tables_present(&["idempotency_held", "imported_held"])
            .await;
        assert_eq!(held, 0, "[{b}] the old tables are gone");
        assert_eq!(h.rows("imported").await, 1, "[{b}] the import moved");
        let again = h.submit(w.clone()).await.expect("retry after the upgrade");
        assert!(again.replayed, "[{b}] answered, not applied again");
        assert_eq!(sans_replayed(&again), sans_replayed(&first), "[{b}]");
        let mut other = w.clone();
        other.change = withdraw(&person("held"), "analytics.reporting");
        other.fingerprint = fingerprint_of(&other.change);
        assert!(
            matches!(h.submit(other).await, Err(StoreError::IdempotencyConflict)),
            "[{b}] a different request under the key is still a conflict"
        );
        let again = h.submit(import.clone()).await.expect("the import again");
        assert!(again.replayed, "[{b}] imported once, not again");
        assert_eq!(again.revision, first_import.revision, "[{b}]");
        assert_eq!(h.rows("ledger").await, 2, "[{b}] written once each");
        let changed = h.import_request(imported(
            &person("held-import"),
            "analytics.reporting",
            "withdrawn",
            "crm-held-1",
            Duration::days(30),
        ));
        assert!(
            matches!(
                h.submit(changed).await,
                Err(StoreError::IdempotencyConflict)
            ),
            "[{b}] other content under the source record id is still a conflict"
        );
        (h.store, h.pool) = connect(backend, &h.db.url, h.keys.clone()).await;
        assert_eq!(
            (h.rows("idempotency").await, h.rows("imported").await),
            (1, 1),
            "[{b}] opening again moves nothing"
        );
    }
}

/// Imports kept under a digest of their source and source record id (migrations 0017 until
/// 0018) are keyed by their origin when the store opens, read from each record's body: a record
/// imported before is still not imported again, other content under its id is still a conflict,
/// the digest table goes, and opening again moves nothing.
#[tokio::test]
async fn imports_kept_under_a_digest_still_answer_after_the_upgrade() {
    for backend in backends() {
        let mut h = Harness::new(backend).await;
        let b = h.b.clone();
        let subject = person("digest-import");
        let mut imports = Vec::new();
        for (id, purpose) in [
            ("crm-digest-1", "analytics.reporting"),
            (
                "0190a6f1-7b2c-7d3e-8f40-112233445566",
                "marketing.communications.email",
            ),
        ] {
            let import =
                h.import_request(imported(&subject, purpose, "given", id, Duration::days(30)));
            let first = h.submit(import.clone()).await.expect("import");
            imports.push((id, purpose, import, first));
        }
        // The rows as migration 0017 kept them: under SHA-256 of source and id, in a table of
        // their own, and nothing in today's.
        h.create_old_table(
            "CREATE TABLE imported_by_digest (handle BYTEA PRIMARY KEY, \
             revision BIGINT NOT NULL UNIQUE, fingerprint BYTEA NOT NULL)",
        )
        .await;
        for (id, _, _, first) in &imports {
            sqlx::query(
                "INSERT INTO imported_by_digest (handle, revision, fingerprint) \
                 SELECT $1, revision, fingerprint FROM imported WHERE revision = $2",
            )
            .bind(consentgate_consent::store::idempotency_handle(
                "legacy-crm",
                id,
            ))
            .bind(first.revision as i64)
            .execute(&h.pool)
            .await
            .unwrap_or_else(|e| panic!("[{b}] a row kept under its digest: {e}"));
        }
        sqlx::query("DELETE FROM imported")
            .execute(&h.pool)
            .await
            .expect("today's rows gone");

        (h.store, h.pool) = connect(backend, &h.db.url, h.keys.clone()).await;
        assert_eq!(h.rows("imported").await, 2, "[{b}] both rows moved");
        let left = h.tables_present(&["imported_by_digest"]).await;
        assert_eq!(left, 0, "[{b}] the digest table is gone");
        for (id, purpose, import, first) in &imports {
            let again = h.submit(import.clone()).await.expect("the import again");
            assert!(again.replayed, "[{b}] {id}: imported once, not again");
            assert_eq!(again.revision, first.revision, "[{b}] {id}");
            let changed = h.import_request(imported(
                &subject,
                purpose,
                "withdrawn",
                id,
                Duration::days(30),
            ));
            assert!(
                matches!(
                    h.submit(changed).await,
                    Err(StoreError::IdempotencyConflict)
                ),
                "[{b}] {id}: other content under the source record id is still a conflict"
            );
        }
        assert_eq!(h.rows("ledger").await, 2, "[{b}] written once each");
        (h.store, h.pool) = connect(backend, &h.db.url, h.keys.clone()).await;
        assert_eq!(
            h.rows("imported").await,
            2,
            "[{b}] opening again moves nothing"
        );
    }
}

/// A window set on the store is the one it keeps: a key a day old is past a one-hour window.
#[tokio::test]
async fn a_configured_window_is_the_one_kept() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let keys = Arc::new(LedgerKeys::generate());
        let store = consentgate_consent::store::open_with_window(
            &db.url,
            keys.clone(),
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("open");
        let change = grant(&person("carol"), "analytics.reporting");
        let w = Write {
            caller: CALLER.to_owned(),
            delegate: None,
            idempotency_key: "k".into(),
            fingerprint: fingerprint_of(&change),
            change,
        };
        let first = store.write(w.clone()).await.expect("write");
        assert!(store.write(w.clone()).await.expect("retry").replayed);
        let (_, pool) = connect(backend, &db.url, keys).await;
        sqlx::query("UPDATE idempotency SET created_at = created_at - $1")
            .bind(2 * 3600 * 1_000_000i64)
            .execute(&pool)
            .await
            .expect("age");
        // The same request again, as the service makes it: a fresh record id, the same
        // fingerprint (of the request's meaningful fields).
        let late = Write {
            change: grant(&person("carol"), "analytics.reporting"),
            ..w
        };
        let later = store.write(late).await.expect("a retry two hours later");
        assert!(
            !later.replayed && later.revision == first.revision + 1,
            "[{backend:?}] two hours is past a one-hour window"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// History and the change feed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn history_pages_by_revision() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let bob = person("bob");
        let mut mine = Vec::new();
        for i in 0..7u32 {
            let purpose = if i % 2 == 0 {
                "analytics.reporting"
            } else {
                "personalize.content.profiled"
            };
            let o = h.write(grant(&alice, purpose)).await;
            mine.push(o.record.expect("record"));
            h.write(grant(&bob, purpose)).await;
            if i == 3 {
                h.write(signal(&alice, "gpc", "1")).await;
                h.write(restrict(&alice, true)).await;
            }
        }
        let all = h.store.history(&alice, 0, 100).await.expect("history");
        assert_eq!(
            all, mine,
            "[{b}] full history: the subject's consent events only, oldest first"
        );

        let mut paged = Vec::new();
        let mut after = 0;
        let mut pages = Vec::new();
        loop {
            let page = h.store.history(&alice, after, 3).await.expect("page");
            if page.is_empty() {
                break;
            }
            pages.push(page.len());
            after = page.last().expect("non-empty").revision;
            paged.extend(page);
        }
        assert_eq!(pages, vec![3, 3, 1], "[{b}] page sizes with limit 3");
        assert_eq!(paged, mine, "[{b}] pages concatenate to the history");

        let tail = h
            .store
            .history(&alice, mine[3].revision, 100)
            .await
            .expect("tail");
        assert_eq!(
            tail,
            mine[4..].to_vec(),
            "[{b}] after = a revision excludes it"
        );
        let between = h
            .store
            .history(&alice, mine[3].revision - 1, 100)
            .await
            .expect("between");
        assert_eq!(
            between,
            mine[3..].to_vec(),
            "[{b}] after = a revision not the subject's"
        );
        assert!(
            h.store
                .history(&alice, 0, 0)
                .await
                .expect("limit 0")
                .is_empty(),
            "[{b}] limit 0"
        );
        assert!(
            h.store
                .history(&alice, mine[6].revision, 10)
                .await
                .expect("end")
                .is_empty(),
            "[{b}] after the last"
        );
        assert!(
            h.store
                .history(&person("nobody"), 0, 10)
                .await
                .expect("nobody")
                .is_empty(),
            "[{b}] unknown subject"
        );
    }
}

#[tokio::test]
async fn changes_after_lists_events_in_order_with_a_high_water() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let (events, high) = h.store.changes_after(0, 10).await.expect("empty");
        assert!(
            events.is_empty() && high == 0,
            "[{b}] empty store: {events:?} {high}"
        );

        let alice = person("alice");
        let bob = person("bob");
        let phone = device("phone");
        let script: Vec<(Change, &str, Option<&str>, Option<SubjectKey>)> = vec![
            (
                grant(&alice, "analytics.reporting"),
                "grant",
                Some("analytics.reporting"),
                Some(alice.clone()),
            ),
            (
                refuse(&bob, "train_ai_system"),
                "refuse",
                Some("train_ai_system"),
                Some(bob.clone()),
            ),
            (
                withdraw(&alice, "analytics.reporting"),
                "withdraw",
                Some("analytics.reporting"),
                Some(alice.clone()),
            ),
            (
                signal(&phone, "gpc", "1"),
                "signal",
                None,
                Some(phone.clone()),
            ),
            (link(&phone, &alice), "link", None, Some(alice.clone())),
            (restrict(&bob, true), "restrict", None, Some(bob.clone())),
            (
                grant(&bob, "personalize.content.profiled"),
                "grant",
                Some("personalize.content.profiled"),
                Some(bob.clone()),
            ),
        ];
        let mut expected = Vec::new();
        for (change, kind, purpose, subject) in script {
            let o = h.write(change).await;
            // Each change carries its commit time (to the microsecond), for gates to measure
            // how long it took to reach them.
            let micros = o.committed_at.unix_timestamp_nanos() / 1_000;
            expected.push(ChangeEvent {
                revision: o.revision,
                subject,
                kind: kind.to_owned(),
                purpose: purpose.map(str::to_owned),
                committed_at: time::OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).ok(),
            });
        }
        let last = expected.last().expect("events").revision;

        let (events, high) = h.store.changes_after(0, 100).await.expect("all");
        assert_eq!(events, expected, "[{b}] every change, in order");
        assert_eq!(high, last, "[{b}] high water = last revision");

        // A full page's high water is its last event, not the store's head.
        let (page, high) = h.store.changes_after(0, 3).await.expect("page");
        assert_eq!(page, expected[..3].to_vec(), "[{b}] first page");
        assert_eq!(high, expected[2].revision, "[{b}] full page high water");
        let (page, high) = h.store.changes_after(high, 3).await.expect("page 2");
        assert_eq!(page, expected[3..6].to_vec(), "[{b}] second page");
        assert_eq!(high, expected[5].revision, "[{b}] full page high water 2");
        let (page, high) = h.store.changes_after(high, 3).await.expect("page 3");
        assert_eq!(page, expected[6..].to_vec(), "[{b}] last, partial page");
        assert_eq!(high, last, "[{b}] partial page: the store's head");
        let (page, high) = h.store.changes_after(last, 3).await.expect("caught up");
        assert!(page.is_empty(), "[{b}] nothing after the head");
        assert_eq!(high, last, "[{b}] caught up: high water = head");

        // Paging through with any limit reproduces the whole feed.
        for limit in [1u32, 2, 4, 7, 8] {
            let mut after = 0;
            let mut seen = Vec::new();
            loop {
                let (page, high) = h.store.changes_after(after, limit).await.expect("page");
                assert!(high >= after, "[{b}] high water never behind the cursor");
                seen.extend(page.iter().cloned());
                if page.is_empty() {
                    break;
                }
                after = high;
            }
            assert_eq!(seen, expected, "[{b}] paged with limit {limit}");
        }
    }
}

#[tokio::test]
async fn changes_after_a_cursor_past_the_head_reports_the_stores_high_water() {
    // The trait documents the second value as "the store's high water". Engine::new relies on it:
    // it asks `changes_after(u64::MAX - 1, 1)` to learn the current head.
    let mut failures = Vec::new();
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let (_, high) = h.store.changes_after(u64::MAX - 1, 1).await.expect("empty");
        if high != 0 {
            failures.push(format!(
                "[{b}] empty store, changes_after(u64::MAX - 1, 1): high water {high}, expected 0"
            ));
        }
        for _ in 0..3 {
            h.write(grant(&person("alice"), "analytics.reporting"))
                .await;
        }
        let (events, high) = h.store.changes_after(u64::MAX - 1, 1).await.expect("head");
        assert!(events.is_empty(), "[{b}] nothing past the head");
        if high != 3 {
            failures.push(format!(
                "[{b}] 3 writes, changes_after(u64::MAX - 1, 1): high water {high}, expected 3"
            ));
        }
        let (_, high) = h.store.changes_after(10, 5).await.expect("ahead");
        if high != 3 {
            failures.push(format!(
                "[{b}] 3 writes, changes_after(10, 5): high water {high}, expected 3"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ledger's extent (what the metrics report): its length, the last signed checkpoint, and
/// when that checkpoint's entry was written.
#[tokio::test]
async fn the_ledger_extent_names_the_last_checkpoint_and_its_time() {
    use consentgate_consent::ledger::CHECKPOINT_EVERY;
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let empty = h.store.ledger_extent().await.expect("extent");
        assert_eq!(
            (
                empty.last_entry,
                empty.last_checkpoint,
                empty.last_checkpoint_at
            ),
            (0, 0, None),
            "[{b}]"
        );
        let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        for _ in 0..CHECKPOINT_EVERY + 3 {
            h.write(grant(&person("alice"), "analytics.reporting"))
                .await;
        }
        let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let extent = h.store.ledger_extent().await.expect("extent");
        assert_eq!(extent.last_entry, CHECKPOINT_EVERY + 3, "[{b}]");
        assert_eq!(extent.last_checkpoint, CHECKPOINT_EVERY, "[{b}]");
        let at = extent
            .last_checkpoint_at
            .unwrap_or_else(|| panic!("[{b}] the checkpointed entry's time"));
        assert!(
            before <= at && at <= after,
            "[{b}] {at} not within the writes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Receipts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn receipts_are_stored_with_grants_and_fetched_by_record_id() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let change = grant_with_receipt(&alice, "marketing.communications.email");
        let Change::Consent(c) = &change else {
            unreachable!()
        };
        let receipt = c.receipt.clone().expect("receipt");
        let (json, jws) = (receipt.json(c), receipt.jws(c).expect("a signed receipt"));
        let id = c.record_id.clone();
        h.write(change).await;
        let plain = h.write(grant(&alice, "analytics.reporting")).await;
        let plain_id = plain.record.expect("record").consent.record_id;

        assert_eq!(
            h.store.receipt(&id).await.expect("receipt"),
            Some(StoredReceipt {
                subject: alice.clone(),
                json,
                jws
            }),
            "[{b}] the grant's receipt"
        );
        assert_eq!(
            h.store.receipt(&plain_id).await.expect("none"),
            None,
            "[{b}] a record without a receipt"
        );
        assert_eq!(
            h.store.receipt("no-such-record").await.expect("unknown"),
            None,
            "[{b}] unknown record id"
        );
        assert_eq!(
            h.rows(SIGNED_RECORDS).await,
            1,
            "[{b}] one receipt signature"
        );
        assert_eq!(
            h.rows("receipts").await,
            0,
            "[{b}] no receipt is stored whole"
        );
    }
}

/// Receipts derived on demand (migration 0008): a grant's stored body holds no receipt, its
/// receipt and a retry's answer are derived from the signature, and a grant recorded before
/// (a copy of the receipt in its body, the JWS in `receipts`) is still answered as stored, and
/// still verifies.
#[tokio::test]
async fn receipts_are_derived_and_receipts_stored_whole_before_still_answer() {
    let policy = consentgate_policy::Policy::default_policy().expect("the shipped policy");
    let keys = LedgerKeys::generate();
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");

        // A new grant, with a receipt signed as the service signs one.
        let mut c = consent(&alice, "marketing.communications.email", "given");
        c.receipt = Some(consentgate_consent::receipt::issue(
            &policy, &keys, &c, "en",
        ));
        let issued_jws = c
            .receipt
            .as_ref()
            .expect("receipt")
            .jws(&c)
            .expect("a signed receipt");
        let w = h.request(Change::Consent(c.clone()));
        let first = h.submit(w.clone()).await.expect("grant");
        let body: String = sqlx::query("SELECT body FROM consent_records WHERE record_id = $1")
            .bind(&c.record_id)
            .fetch_one(&h.pool)
            .await
            .map(|r| r.get(0))
            .expect("the record's body");
        assert!(
            !body.contains("receipt") && !body.contains(&issued_jws[..40]),
            "[{b}] the record's body holds no receipt: {body}"
        );
        let derived = h.store.receipt(&c.record_id).await.expect("receipt");
        assert_eq!(
            derived.as_ref().map(|r| r.jws.as_str()),
            Some(issued_jws.as_str()),
            "[{b}] the derived receipt is the issued one, byte for byte"
        );
        consentgate_consent::receipt::verify_with(&issued_jws, keys.verifiers())
            .expect("the derived receipt verifies");
        let again = h.submit(w).await.expect("retry");
        assert_eq!(
            sans_replayed(&again),
            sans_replayed(&first),
            "[{b}] a retried grant is answered with its receipt"
        );

        // A grant recorded before migration 0008: its body carried a copy, `receipts` the JWS.
        let mut old = consent(&alice, "analytics.reporting", "given");
        let issued = consentgate_consent::receipt::issue(&policy, &keys, &old, "en");
        let (json, jws) = (
            issued.json(&old),
            issued.jws(&old).expect("a signed receipt"),
        );
        let w = h.request(Change::Consent(old.clone()));
        h.submit(w.clone()).await.expect("grant");
        // The whole record, as bodies were written then.
        let mut value = serde_json::to_value(&old).expect("JSON");
        value["receipt"] = serde_json::json!([json, jws]);
        sqlx::query("UPDATE consent_records SET body = $1 WHERE record_id = $2")
            .bind(value.to_string())
            .bind(&old.record_id)
            .execute(&h.pool)
            .await
            .expect("the old body");
        sqlx::query(
            "INSERT INTO receipts (record_id, subject, receipt_json, jws) VALUES ($1, $2, $3, $4)",
        )
        .bind(&old.record_id)
        .bind(alice.storage())
        .bind(&json)
        .bind(&jws)
        .execute(&h.pool)
        .await
        .expect("the old receipt");
        assert_eq!(
            h.store.receipt(&old.record_id).await.expect("receipt"),
            Some(StoredReceipt {
                subject: alice.clone(),
                json: json.clone(),
                jws: jws.clone()
            }),
            "[{b}] a receipt stored whole is answered as stored"
        );
        let verified =
            consentgate_consent::receipt::verify_with(&jws, keys.verifiers()).expect("verifies");
        assert_eq!(verified.json, json, "[{b}] and still verifies");
        let replayed = h.submit(w).await.expect("retry");
        old.receipt = Some(Receipt::Stored { json, jws });
        assert_eq!(
            replayed.record.map(|r| r.consent),
            Some(old),
            "[{b}] its retry is answered with the receipt as stored"
        );
        let loaded = h.store.history(&alice, 0, 10).await.expect("history");
        assert!(
            loaded.iter().all(|r| r.consent.receipt.is_none()),
            "[{b}] records read back carry no receipt (the old copy in a body is ignored)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Erasure
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn erasure_deletes_the_subject_and_its_devices_and_leaves_a_tombstone() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let erin = person("erin");
        let phone = device("erin-phone");
        let tablet = device("erin-tablet");
        let frank = person("frank");
        let frank_phone = device("frank-phone");

        let receipt_grant = grant_with_receipt(&erin, "marketing.communications.email");
        let Change::Consent(rc) = &receipt_grant else {
            unreachable!()
        };
        let erin_record = rc.record_id.clone();
        let phone_own = h.write(grant(&phone, "analytics.reporting")).await;
        h.write(signal(&phone, "gpc", "1")).await;
        h.write(receipt_grant.clone()).await;
        h.write(grant_with_receipt(&erin, "personalize.content.profiled"))
            .await;
        h.write(withdraw(&erin, "marketing.communications.email"))
            .await;
        h.write(signal(&erin, "age_band", "adult")).await;
        h.write(link(&phone, &erin)).await;
        h.write(link(&tablet, &erin)).await;
        h.write(signal(&tablet, "gpc", "1")).await;
        h.write(restrict(&erin, true)).await;
        // A bystander with the same shape, which must be untouched.
        h.write(grant_with_receipt(&frank, "marketing.communications.email"))
            .await;
        h.write(signal(&frank, "gpc", "1")).await;
        h.write(link(&frank_phone, &frank)).await;
        h.write(signal(&frank_phone, "age_band", "adult")).await;

        let before_erin = h.footprint(&erin).await;
        let before_phone = h.footprint(&phone).await;
        let before_tablet = h.footprint(&tablet).await;
        let before_frank = h.footprint(&frank).await;
        let before_frank_phone = h.footprint(&frank_phone).await;
        // The setup really put rows in every table, so that "0 afterwards" means something.
        let n = |fp: &[(&str, i64)], t: &str| {
            fp.iter()
                .find(|(table, _)| *table == t)
                .map_or(0, |(_, n)| *n)
        };
        for table in [
            "consent_records",
            "consent_current",
            SIGNED_RECORDS,
            "signals",
            SUBJECT_KEYS,
            "subjects",
            "links",
            "idempotency",
            "ledger",
        ] {
            assert!(
                n(&before_erin, table) > 0,
                "[{b}] setup: erin has {table} rows"
            );
        }
        for table in [
            "consent_records",
            "consent_current",
            "signals",
            SUBJECT_KEYS,
            "links",
        ] {
            assert!(
                n(&before_phone, table) > 0,
                "[{b}] setup: phone has {table} rows"
            );
        }
        assert!(
            n(&before_tablet, "signals") > 0 && n(&before_tablet, "links") > 0,
            "[{b}] setup: tablet rows"
        );
        let erin_records = n(&before_erin, "consent_records") + n(&before_phone, "consent_records");
        let ledger_before = h.rows("ledger").await;
        let tombstones_before = h.rows("tombstones").await;

        let w = h.request(erase(&erin));
        let erased = h.submit(w.clone()).await.expect("erase");
        assert!(!erased.replayed, "[{b}] first erase is not a replay");
        assert_eq!(
            erased.revision,
            u64::try_from(ledger_before).expect("count") + 1,
            "[{b}] erase takes the next revision"
        );
        assert_eq!(
            erased.records_deleted,
            u64::try_from(erin_records).expect("count"),
            "[{b}] records_deleted counts the subject's and its devices' records"
        );
        assert_eq!(erased.record, None, "[{b}] erase returns no record");
        assert_eq!(
            keyset(&erased.affected),
            keyset(&[erin.clone(), phone.clone(), tablet.clone()]),
            "[{b}] erase affects the subject and its devices"
        );

        for (who, key) in [("erin", &erin), ("phone", &phone), ("tablet", &tablet)] {
            for (table, count) in h.footprint(key).await {
                assert_eq!(count, 0, "[{b}] {who}: {table} rows left after erasure");
            }
        }
        assert_eq!(
            h.footprint(&frank).await,
            before_frank,
            "[{b}] bystander untouched"
        );
        assert_eq!(
            h.footprint(&frank_phone).await,
            before_frank_phone,
            "[{b}] bystander's device untouched"
        );
        assert_eq!(
            h.rows("tombstones").await,
            tombstones_before + 3,
            "[{b}] one tombstone per erased key"
        );
        assert_eq!(
            h.rows("ledger").await,
            ledger_before + 1,
            "[{b}] the erasure is itself one ledger entry"
        );
        assert_eq!(
            h.store.receipt(&erin_record).await.expect("receipt"),
            None,
            "[{b}] receipt gone"
        );
        assert!(
            h.store
                .history(&erin, 0, 100)
                .await
                .expect("history")
                .is_empty(),
            "[{b}] history gone"
        );
        assert!(
            h.store
                .history(&phone, 0, 100)
                .await
                .expect("history")
                .is_empty(),
            "[{b}] device history gone (had {})",
            phone_own.revision
        );

        for (who, key) in [("erin", &erin), ("phone", &phone), ("tablet", &tablet)] {
            let rows = h.load(key).await;
            assert_eq!(
                rows,
                SubjectRows {
                    revision: erased.revision,
                    as_of: erased.revision,
                    erased: true,
                    ..SubjectRows::default()
                },
                "[{b}] {who}: load says erased at the erase revision, and nothing else"
            );
        }
        let frank_rows = h.load(&frank).await;
        assert!(
            !frank_rows.erased && frank_rows.records.len() == 1 && frank_rows.links.len() == 1,
            "[{b}] bystander still loads"
        );

        // Nothing more may be recorded about an erased subject or device.
        for change in [
            grant(&erin, "analytics.reporting"),
            signal(&erin, "gpc", "1"),
            restrict(&erin, false),
            signal(&phone, "gpc", "0"),
            grant(&tablet, "analytics.reporting"),
            link(&device("new-device"), &erin),
            link(&phone, &frank),
        ] {
            let r = h.submit(h.request(change.clone())).await;
            assert!(
                matches!(r, Err(StoreError::SubjectErased)),
                "[{b}] {change:?} after erasure: {r:?}"
            );
        }
        assert_eq!(
            h.rows("ledger").await,
            ledger_before + 1,
            "[{b}] refused writes add no ledger row"
        );

        // Erasing again is idempotent: under the same key, a new key, or via an erased device.
        let same = h.submit(w).await.expect("retry");
        assert!(
            same.replayed && sans_replayed(&same) == sans_replayed(&erased),
            "[{b}] same-key retry replays the erasure"
        );
        for key in [&erin, &phone] {
            let again = h.submit(h.request(erase(key))).await.expect("erase again");
            assert!(again.replayed, "[{b}] erase {key:?} again is a replay");
            assert_eq!(
                again.revision, erased.revision,
                "[{b}] erase {key:?} again: the original revision"
            );
            assert_eq!(
                again.records_deleted, 0,
                "[{b}] erase again deletes nothing"
            );
        }
        assert_eq!(
            h.rows("ledger").await,
            ledger_before + 1,
            "[{b}] repeated erasure adds no ledger row"
        );
        assert_eq!(
            h.rows("tombstones").await,
            tombstones_before + 3,
            "[{b}] repeated erasure adds no tombstone"
        );

        // The change feed no longer names the subject or its devices, but keeps every revision.
        let (events, high) = h.all_changes().await;
        assert_eq!(
            high, erased.revision,
            "[{b}] high water is the erase revision"
        );
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (1..=erased.revision).collect::<Vec<_>>(),
            "[{b}] every revision still in the feed"
        );
        let gone = keyset(&[erin.clone(), phone.clone(), tablet.clone()]);
        for e in &events {
            if let Some(s) = &e.subject {
                assert!(
                    !gone.contains(&s.storage()),
                    "[{b}] change {} still names {s:?}",
                    e.revision
                );
            }
        }
        let last = events.last().expect("events");
        assert_eq!(
            (last.kind.as_str(), &last.subject),
            ("erase", &None),
            "[{b}] the erase event names nobody"
        );
        assert!(
            events
                .iter()
                .any(|e| e.subject.as_ref() == Some(&frank_phone)),
            "[{b}] the bystander is still named"
        );

        // The chain still verifies after crypto-shredding.
        h.verify_ok(erased.revision).await;
    }
}

#[tokio::test]
async fn erasing_a_device_erases_only_that_device() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let gina = person("gina");
        let phone = device("gina-phone");
        let laptop = device("gina-laptop");
        h.write(grant(&gina, "analytics.reporting")).await;
        h.write(link(&phone, &gina)).await;
        h.write(link(&laptop, &gina)).await;
        h.write(signal(&phone, "gpc", "1")).await;
        h.write(signal(&laptop, "gpc", "1")).await;
        let gina_before = h.footprint(&gina).await;

        let o = h.write(erase(&phone)).await;
        assert!(
            keyset(&o.affected).contains(&gina.storage()),
            "[{b}] the device's subject is affected"
        );
        for (table, count) in h.footprint(&phone).await {
            assert_eq!(count, 0, "[{b}] phone: {table} rows left");
        }
        assert!(h.load(&phone).await.erased, "[{b}] the device is erased");
        let rows = h.load(&gina).await;
        assert!(!rows.erased, "[{b}] the subject is not erased");
        assert_eq!(rows.records.len(), 1, "[{b}] the subject keeps its records");
        assert_eq!(
            rows.links,
            vec![laptop.clone()],
            "[{b}] the erased device is unlinked"
        );
        assert_eq!(
            rows.signals.len(),
            1,
            "[{b}] only the remaining device's signal"
        );
        assert_eq!(
            h.footprint(&gina)
                .await
                .iter()
                .find(|(t, _)| *t == "consent_records"),
            gina_before.iter().find(|(t, _)| *t == "consent_records"),
            "[{b}] the subject's records untouched"
        );
        h.write(grant(&gina, "personalize.content.profiled")).await;
        let r = h.submit(h.request(link(&phone, &gina))).await;
        assert!(
            matches!(r, Err(StoreError::SubjectErased)),
            "[{b}] re-linking an erased device: {r:?}"
        );

        // Erasing a subject never seen still leaves a tombstone.
        let ghost = person("ghost");
        let g = h.write(erase(&ghost)).await;
        assert_eq!(g.records_deleted, 0, "[{b}] nothing to delete");
        let rows = h.load(&ghost).await;
        assert!(
            rows.erased && rows.revision == g.revision,
            "[{b}] unknown subject erased"
        );
        assert_eq!(
            h.count(
                "SELECT COUNT(*) FROM subjects WHERE subject = $1 AND key IS NOT NULL",
                &ghost.storage()
            )
            .await,
            0,
            "[{b}] no pseudonym key left for the ghost"
        );
        h.verify_ok(g.revision).await;
    }
}

#[tokio::test]
async fn erasure_leaves_no_identifier_of_the_subject_in_any_table() {
    // docs/architecture.md §3: after erasure the chain "no longer identifies the person"; the change feed's
    // rows are un-named and the idempotency rows of the subject are deleted. No text column of
    // any table may still hold the subject's or its devices' identifiers.
    let mut failures = Vec::new();
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let id = "hana.erasable@example.com";
        let hana = person(id);
        let phone = device("hana-phone-7f3a9c");
        h.write(grant_with_receipt(&hana, "marketing.communications.email"))
            .await;
        h.write(signal(&hana, "gpc", "1")).await;
        h.write(link(&phone, &hana)).await;
        h.write(signal(&phone, "age_band", "adult")).await;
        h.write(restrict(&hana, true)).await;
        h.write(grant(&person("ivan"), "analytics.reporting")).await;
        h.write(erase(&hana)).await;

        for needle in [id, "hana-phone-7f3a9c"] {
            for (table, column) in TEXT_COLUMNS {
                let hits: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} LIKE $1"
                )))
                .bind(format!("%{needle}%"))
                .fetch_one(&h.pool)
                .await
                .unwrap_or_else(|e| panic!("[{b}] scan {table}.{column}: {e}"))
                .get(0);
                if hits != 0 {
                    failures.push(format!(
                        "[{b}] {table}.{column}: {hits} row(s) still contain {needle:?} after erasure"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Restriction
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn restriction_turns_on_and_off() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let jo = person("jo");
        h.write(grant(&jo, "analytics.reporting")).await;
        assert!(!h.load(&jo).await.restricted, "[{b}] not restricted");

        let on = h.write(restrict(&jo, true)).await;
        let rows = h.load(&jo).await;
        assert!(rows.restricted, "[{b}] restricted");
        assert_eq!(
            rows.revision, on.revision,
            "[{b}] restriction bumps the revision"
        );
        assert_eq!(rows.records.len(), 1, "[{b}] records kept while restricted");

        let g = h.write(grant(&jo, "personalize.content.profiled")).await;
        let rows = h.load(&jo).await;
        assert!(
            rows.restricted,
            "[{b}] a later consent keeps the restriction"
        );
        assert_eq!(rows.revision, g.revision, "[{b}] revision follows writes");

        let again = h.write(restrict(&jo, true)).await;
        assert!(h.load(&jo).await.restricted, "[{b}] restricting twice");
        let off = h.write(restrict(&jo, false)).await;
        let rows = h.load(&jo).await;
        assert!(!rows.restricted, "[{b}] lifted");
        assert_eq!(
            rows.revision, off.revision,
            "[{b}] lifting bumps the revision"
        );
        assert!(off.revision > again.revision);

        // A subject never seen can be restricted before anything else is recorded.
        let kim = person("kim");
        let k = h.write(restrict(&kim, true)).await;
        let rows = h.load(&kim).await;
        assert!(
            rows.restricted && rows.revision == k.revision,
            "[{b}] restricting a new subject"
        );

        let (events, _) = h.all_changes().await;
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == "restrict")
            .map(|e| e.kind.as_str())
            .collect();
        assert_eq!(kinds.len(), 4, "[{b}] restrict events on the feed");
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger structure and checkpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn checkpoints_are_signed_every_checkpoint_every_entries() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let every = CHECKPOINT_EVERY;
        let subjects: Vec<SubjectKey> = (0..5).map(|i| person(&format!("cp-{i}"))).collect();
        let total = 2 * every + 5;
        for i in 0..total {
            let who = &subjects[usize::try_from(i % 5).expect("small")];
            let change = match i % 4 {
                0 => grant(who, "analytics.reporting"),
                1 => withdraw(who, "analytics.reporting"),
                2 => signal(who, "gpc", "1"),
                _ => restrict(who, i % 8 == 3),
            };
            h.write(change).await;
            let seq = i + 1;
            let cps = h.store.checkpoints(0, u32::MAX).await.expect("checkpoints");
            assert_eq!(
                u64::try_from(cps.len()).expect("len"),
                seq / every,
                "[{b}] checkpoints after {seq} entries"
            );
        }

        let entries = h.store.ledger(0, 10_000).await.expect("ledger");
        assert_eq!(
            u64::try_from(entries.len()).expect("len"),
            total,
            "[{b}] entries"
        );
        let mut prev = GENESIS_HASH.to_vec();
        for (i, e) in entries.iter().enumerate() {
            let seq = u64::try_from(i).expect("index") + 1;
            assert_eq!(e.seq, seq, "[{b}] seq");
            assert_eq!(
                e.prev_hash, prev,
                "[{b}] entry {seq} links to its predecessor"
            );
            assert_eq!(
                e.hash,
                ledger::chain_hash(&prev, &e.event),
                "[{b}] entry {seq} hash"
            );
            let head = ledger::entry::head(&e.event).expect("a canonical event");
            assert_eq!(
                (head.version, head.seq),
                (ledger::entry::EVENT_VERSION, seq),
                "[{b}] entry {seq} names its position"
            );
            for s in &subjects {
                assert!(
                    !e.event.contains(&s.storage()) && !e.event.contains("cp-"),
                    "[{b}] entry {seq} names a subject in clear: {}",
                    e.event
                );
            }
            prev = e.hash.clone();
        }
        // Ledger pages.
        let page = h.store.ledger(10, 5).await.expect("page");
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![11, 12, 13, 14, 15],
            "[{b}] ledger(after, limit) pages"
        );

        let cps = h.store.checkpoints(0, u32::MAX).await.expect("checkpoints");
        assert_eq!(
            cps.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![every, 2 * every],
            "[{b}] checkpoint positions"
        );
        let key = h.keys.verifying_key();
        for cp in &cps {
            let entry = &entries[usize::try_from(cp.seq - 1).expect("index")];
            assert_eq!(cp.hash, entry.hash, "[{b}] checkpoint {} hash", cp.seq);
            let sig = ed25519_dalek::Signature::from_slice(&cp.signature)
                .unwrap_or_else(|e| panic!("[{b}] checkpoint {} signature: {e}", cp.seq));
            assert!(
                key.verify(&ledger::checkpoint_message(cp.seq, &cp.hash), &sig)
                    .is_ok(),
                "[{b}] checkpoint {} signed by the ledger key",
                cp.seq
            );
        }
        let report = ledger::verify(&*h.store, h.keys.verifiers())
            .await
            .expect("verify");
        assert_eq!(report.broken, None, "[{b}] verifies");
        assert_eq!(report.entries_checked, total, "[{b}] entries checked");
        assert_eq!(report.checkpoints_checked, 2, "[{b}] checkpoints checked");
        assert_eq!(
            report.head_hash,
            entries.last().expect("entries").hash,
            "[{b}] head"
        );

        // Every checkpoint names the key that signed it.
        assert!(
            cps.iter().all(|cp| cp.kid.as_deref() == Some(h.keys.kid())),
            "[{b}] checkpoints carry the signing key's id"
        );
        assert_eq!(report.signers, vec![Some(h.keys.kid().to_owned())]);
        // Another keyring does not know the key id: the first checkpoint fails, with the reason.
        let stranger = LedgerKeys::generate();
        let report = ledger::verify(&*h.store, stranger.verifiers())
            .await
            .expect("verify");
        let (seq, problem) = report
            .broken
            .expect("[{b}] a stranger's keys do not verify");
        assert_eq!(seq, every, "[{b}] another key rejects the first checkpoint");
        assert!(
            problem.contains("unknown key id") && problem.contains(h.keys.kid()),
            "[{b}] {problem}"
        );
    }
}

/// State, consent type, legal basis and collection method are enums end to end: a spelling the
/// code does not know, found in the database, fails the load as corruption. It is never read as
/// some other value (an unknown state used to become `withdrawn`, an unknown method `api`).
#[tokio::test]
async fn an_unknown_spelling_in_the_database_is_an_error_not_a_guess() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("enum-alice");
        let granted = h.write(grant(&alice, "personalize.content.profiled")).await;
        // A record's enumerations read back from its ledger entry (the body keeps only what
        // the entry leaves out).
        let seq = granted.revision as i64;
        h.write(signal(&alice, "gpc", "1")).await;
        let subject = alice.storage();
        let loaded = h.load(&alice).await;
        assert_eq!(loaded.records.len(), 1, "[{b}] the grant loads");

        let original: String = sqlx::query("SELECT event FROM ledger WHERE seq = $1")
            .bind(seq)
            .fetch_one(&h.pool)
            .await
            .expect("the grant's entry")
            .get(0);
        // Codes past each list of a version-3 entry: the kind (whose state a consent event's
        // is), the consent type, the legal basis and the collection method.
        for (field, path) in [
            ("kind", &[3][..]),
            ("consent type", &[6, 4][..]),
            ("legal basis", &[6, 5][..]),
            ("collection method", &[6, 9][..]),
        ] {
            let mut event: serde_json::Value = serde_json::from_str(&original).expect("JSON");
            let mut at = &mut event;
            for &i in path {
                at = &mut at[i];
            }
            assert!(at.is_u64(), "[{b}] {field} is a code in {original}");
            *at = serde_json::json!(99);
            let changed = sqlx::query("UPDATE ledger SET event = $1 WHERE seq = $2")
                .bind(event.to_string())
                .bind(seq)
                .execute(&h.pool)
                .await
                .unwrap_or_else(|e| panic!("[{b}] edit the {field}: {e}"))
                .rows_affected();
            assert_eq!(changed, 1, "[{b}] the {field} is stored as written");
            let err = h
                .store
                .load_subject(&alice)
                .await
                .expect_err("an unknown code must not load");
            assert!(
                matches!(err, StoreError::Store(consentgate_store::Error::Corrupt(_))),
                "[{b}] {field}: {err:?}"
            );
            // Put it back, so the next field is the only unknown one.
            sqlx::query("UPDATE ledger SET event = $1 WHERE seq = $2")
                .bind(&original)
                .bind(seq)
                .execute(&h.pool)
                .await
                .expect("restore");
            assert_eq!(h.load(&alice).await.records.len(), 1, "[{b}] restored");
        }

        sqlx::query("UPDATE signals SET collection_method = 'carrier_pigeon' WHERE subject = $1")
            .bind(&subject)
            .execute(&h.pool)
            .await
            .expect("corrupt the signal");
        let err = h
            .store
            .load_subject(&alice)
            .await
            .expect_err("an unknown signal collection method must not load");
        assert!(
            matches!(err, StoreError::Store(consentgate_store::Error::Corrupt(_))),
            "[{b}] signal: {err:?}"
        );
    }
}

/// After a restore from an older backup: the tombstones given back are held (only those, and
/// giving them twice changes nothing), nothing more is recorded about those keys, and what the
/// database still holds about them is found, erased by an ordinary erase (not answered as a
/// replay of an erasure the database forgot), and then no longer found.
#[tokio::test]
async fn tombstones_given_back_refuse_writes_and_find_what_is_still_held() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = &h.b;
        let (ada, bob, cy) = (person("ada"), person("bob"), person("cy"));
        h.write(grant(&ada, "analytics.reporting")).await;
        h.write(grant(&bob, "analytics.reporting")).await;
        let tomb = |k: &SubjectKey| h.keys.tombstone(k);
        let held_set = |held: Vec<consentgate_consent::model::HeldTombstone>| {
            held.into_iter()
                .map(|t| t.tombstone)
                .collect::<BTreeSet<_>>()
        };
        let all = [tomb(&ada), tomb(&bob), tomb(&cy)];
        assert!(
            h.store
                .tombstones_held(&all)
                .await
                .expect("held")
                .is_empty(),
            "[{b}]"
        );
        assert!(h.store.erased_but_held().await.expect("scan").is_empty());

        // ada's and cy's tombstones come back (nobody here is cy).
        let given = [tomb(&ada), tomb(&cy)];
        assert_eq!(h.store.restore_tombstones(&given).await.expect("give"), 2);
        assert_eq!(
            h.store.restore_tombstones(&given).await.expect("again"),
            0,
            "[{b}] giving them again changes nothing"
        );
        assert_eq!(
            held_set(h.store.tombstones_held(&all).await.expect("held")),
            given.iter().cloned().collect::<BTreeSet<_>>(),
            "[{b}]"
        );
        for key in [&ada, &cy] {
            let refused = h
                .submit(h.request(grant(key, "analytics.reporting")))
                .await
                .expect_err("nothing more is recorded about an erased key");
            assert!(
                matches!(refused, StoreError::SubjectErased),
                "[{b}] {refused:?}"
            );
        }

        // ada's rows are still here: found, erased for real, then gone.
        assert_eq!(
            keyset(&h.store.erased_but_held().await.expect("scan")),
            keyset(std::slice::from_ref(&ada)),
            "[{b}]"
        );
        let erased = h.write(erase(&ada)).await;
        assert!(!erased.replayed, "[{b}] not a replay");
        assert_eq!(erased.records_deleted, 1, "[{b}]");
        assert!(
            h.footprint(&ada).await.iter().all(|(_, n)| *n == 0),
            "[{b}] {:?}",
            h.footprint(&ada).await
        );
        assert!(h.store.erased_but_held().await.expect("scan").is_empty());
        assert!(h.load(&ada).await.erased, "[{b}]");
        let again = h.submit(h.request(erase(&ada))).await.expect("erase again");
        assert!(again.replayed, "[{b}] now an erase is a replay");
        // Everybody else is untouched, and the ledger verifies.
        let bob_rows = h.load(&bob).await;
        assert!(!bob_rows.erased && bob_rows.records.len() == 1, "[{b}]");
        h.verify_ok(3).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Imports (issue 16): records from another platform, in the subject's order by their own time
// ---------------------------------------------------------------------------------------------

/// A record imported from `legacy-crm` under `id`, collected `ago` before now.
fn imported(subject: &SubjectKey, purpose: &str, state: &str, id: &str, ago: Duration) -> Change {
    let mut c = consent(subject, purpose, state);
    c.collected_at = OffsetDateTime::now_utc() - ago;
    c.collection_method = CollectionMethod::Banner;
    c.imported = Some(ImportOrigin {
        source: "legacy-crm".into(),
        source_record_id: id.into(),
    });
    Change::Consent(c)
}

impl Harness {
    /// An import's write: keyed by its source record id, as the service keys it.
    fn import_request(&self, change: Change) -> Write {
        let Change::Consent(c) = &change else {
            panic!("only consent records are imported")
        };
        let origin = c.imported.clone().expect("an imported record");
        Write {
            caller: "privacy-ops".to_owned(),
            delegate: None,
            idempotency_key: format!(
                "import\u{0}{}\u{0}{}",
                origin.source, origin.source_record_id
            ),
            fingerprint: fingerprint_of(&change),
            change,
        }
    }

    /// The current record of a subject for a purpose (unscoped, any channel none).
    async fn current(&self, key: &SubjectKey, purpose: &str) -> Option<StoredRecord> {
        self.placed(key)
            .await
            .records
            .into_iter()
            .find(|r| r.consent.purpose == purpose)
    }
}

#[tokio::test]
async fn imports_keep_their_own_time_land_once_and_never_override_a_newer_record() {
    for backend in backends() {
        let h = Harness::new(backend).await;
        let b = h.b.clone();
        let alice = person("alice");
        let email = "marketing.communications.email";
        let analytics = "analytics.reporting";

        // A live grant an hour ago; an imported withdrawal from two years ago lands in history
        // only, although its revision is newer.
        let mut live = consent(&alice, analytics, "given");
        live.collected_at = OffsetDateTime::now_utc() - Duration::hours(1);
        let live = h.write(Change::Consent(live)).await;
        let old = h
            .submit(h.import_request(imported(
                &alice,
                analytics,
                "withdrawn",
                "crm-1",
                Duration::days(730),
            )))
            .await
            .expect("an old import");
        assert!(
            old.revision > live.revision && old.history_only,
            "[{b}] an older import lands in history only"
        );
        let current = h
            .current(&alice, analytics)
            .await
            .expect("a current record");
        assert_eq!(
            current.revision, live.revision,
            "[{b}] the newer live grant stays current"
        );
        assert_eq!(
            h.store.history(&alice, 0, 10).await.expect("history").len(),
            2,
            "[{b}] both in history"
        );

        // An import newer than the current record (a withdrawal made on the old platform after
        // the person's last choice here) becomes current.
        let newer = h
            .submit(h.import_request(imported(
                &alice,
                analytics,
                "withdrawn",
                "crm-2",
                Duration::minutes(30),
            )))
            .await
            .expect("a newer import");
        assert!(!newer.history_only, "[{b}] a newer import becomes current");
        let current = h
            .current(&alice, analytics)
            .await
            .expect("a current record");
        assert_eq!(
            (current.revision, current.consent.state),
            (newer.revision, RecordState::Withdrawn),
            "[{b}]"
        );
        assert_eq!(
            current
                .consent
                .imported
                .as_ref()
                .map(|o| o.source_record_id.as_str()),
            Some("crm-2"),
            "[{b}] the current record says where it came from"
        );

        // A key with nothing current takes the import, however old.
        let first = h
            .submit(h.import_request(imported(
                &alice,
                email,
                "given",
                "crm-3",
                Duration::days(400),
            )))
            .await
            .expect("an import");
        assert!(
            !first.history_only,
            "[{b}] the only record of its key is current"
        );

        // Sent again: answered from the first landing, nothing written; other content under
        // the same id is refused.
        let again = h
            .submit(h.import_request(imported(
                &alice,
                email,
                "given",
                "crm-3",
                Duration::days(400),
            )))
            .await;
        // Built anew, it has another record id (and time): other content.
        assert!(
            matches!(again, Err(StoreError::IdempotencyConflict)),
            "[{b}] other content under an imported id: {again:?}"
        );
        let resent = h.import_request(imported(
            &alice,
            email,
            "refused",
            "crm-4",
            Duration::days(300),
        ));
        let stored = h.submit(resent.clone()).await.expect("an import");
        let duplicate = h.submit(resent).await.expect("the same import again");
        assert!(
            duplicate.replayed,
            "[{b}] the same record again is a duplicate"
        );
        assert_eq!(
            duplicate.revision, stored.revision,
            "[{b}] at its first revision"
        );
        assert_eq!(duplicate.record, stored.record, "[{b}] with its record");
        let head = h.ledger_seqs().await.len();

        // One source record id twice in one group commit lands once.
        let twice = h.import_request(imported(
            &alice,
            email,
            "refused",
            "crm-5",
            Duration::days(200),
        ));
        let (one, two) = tokio::join!(h.submit(twice.clone()), h.submit(twice));
        let (one, two) = (one.expect("first"), two.expect("second"));
        assert_eq!(one.revision, two.revision, "[{b}] one landing");
        assert!(
            one.replayed != two.replayed,
            "[{b}] one of them a duplicate"
        );
        assert_eq!(
            h.ledger_seqs().await.len(),
            head + 1,
            "[{b}] one ledger entry for both"
        );
        assert_eq!(
            h.rows("imported").await,
            5,
            "[{b}] each source record id kept once, permanently"
        );

        // Live writes follow the subject's latest place, whatever their clock says: a
        // withdrawal from a replica whose clock is a minute behind still withdraws.
        let grant = h.write(grant(&alice, email)).await;
        let mut behind = consent(&alice, email, "withdrawn");
        behind.collected_at = OffsetDateTime::now_utc() - Duration::minutes(1);
        let withdrawal = h.write(Change::Consent(behind)).await;
        assert!(
            !grant.history_only && !withdrawal.history_only,
            "[{b}] live records are always current"
        );
        let current = h.current(&alice, email).await.expect("a current record");
        assert_eq!(
            current.revision, withdrawal.revision,
            "[{b}] the later withdrawal is current"
        );

        // Erasure leaves no import of the subject behind.
        h.write(erase(&alice)).await;
        assert_eq!(
            h.rows("imported").await,
            0,
            "[{b}] erasure deletes the subject's imports"
        );
        let after = h
            .submit(h.import_request(imported(&alice, email, "given", "crm-9", Duration::days(1))))
            .await;
        assert!(
            matches!(after, Err(StoreError::SubjectErased)),
            "[{b}] an erased subject takes no import: {after:?}"
        );
    }
}
