//! The SQL both stores share. Statements use `$N` placeholders, which SQLite and PostgreSQL both
//! accept, and run over `sqlx::Any`; what differs (connection setup, the write lock, snapshot
//! reads) is a [`Dialect`] from `consentgate-store`.

use super::lookup::Remembered;
use super::{MIGRATIONS, SETUP, StoreError, batch, handles, record};
use crate::ledger::entry::{self, CHECKPOINT_EVERY};
use crate::ledger::keys::{LedgerKeys, random_key};
use crate::model::{
    Change, ChangeEvent, Checkpoint, HeldTombstone, LedgerEntry, StoredReceipt, StoredRecord,
    StoredSignal, SubjectKey, SubjectRows, Write, WriteOutcome,
};
use crate::receipt::{Receipt, ReceiptContext};
use consentgate_chain::{GENESIS_HASH, checkpoint_message};
use consentgate_policy::CollectionMethod;
use consentgate_store::notify::Notices;
use consentgate_store::{
    Dialect, Tx, begin_serialized, begin_snapshot, placeholders, to_i64, to_u64,
};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// What a write transaction runs right after `BEGIN`, in the same round trip, where `BEGIN`
/// does not already serialize writers (PostgreSQL):
/// - the advisory lock with key 0x636f6e73 ("cons"): one ledger writer at a time across every
///   replica;
/// - `enable_seqscan = off` for the transaction. Every statement of a write transaction finds
///   its rows by key (`… WHERE handle IN (…)`, `… WHERE subject IN (…)`), so an index is always
///   the right plan; but a table that has not been analyzed yet (a fresh database, a migration
///   importing into it) has no statistics, and PostgreSQL then guesses that 256 listed keys
///   match 40% of the table and scans all of it. Autovacuum analyzes a minute later at the
///   earliest: until then every batch read whole tables, more each batch (BENCHMARKS.md,
///   fourteenth look). Only this transaction's plans change; a statement without a usable index
///   still scans.
const WRITE_TX_PRELUDE: &str =
    "SELECT pg_advisory_xact_lock(1668247155); SET LOCAL enable_seqscan = off";

/// The channel consent writes announce their commits on (see `consentgate_store::notify`).
pub const CHANGES_CHANNEL: &str = "consentgate_consent_changes";

/// The branches of [`SUBJECT_SNAPSHOT`], by the tag each row carries first.
const SNAPSHOT_HEAD: i64 = 0;
const SNAPSHOT_TOMBSTONE: i64 = 1;
const SNAPSHOT_EFFECTIVE: i64 = 2;
const SNAPSHOT_DEVICE: i64 = 3;
const SNAPSHOT_MEMBER: i64 = 4;
const SNAPSHOT_SIGNAL: i64 = 5;
const SNAPSHOT_RECORD: i64 = 6;

/// What a decision about one key reads, as one statement (`$1` the key as stored, `$2` its
/// tombstone): the ledger's head, the key's tombstone, the key its decisions are made for (a
/// linked device's person, else the key itself), that key's devices, the rows and signals of
/// it and its devices, and its current records with their ledger entries. Each row is tagged by
/// its branch (`SNAPSHOT_*`) and fills the columns its kind needs: two integers and four texts,
/// every other one a typed NULL (PostgreSQL types a `UNION`'s columns from its branches). Every
/// lookup goes by key through an index; the members are the key by `=` and its devices through
/// `links_by_subject`, so that no estimate of a list's size can lead a planner to a scan.
const SUBJECT_SNAPSHOT: &str = "WITH effective (subject) AS (SELECT COALESCE((SELECT subject FROM links WHERE device = $1), $1)) \
    SELECT CAST(0 AS BIGINT) AS part, COALESCE(MAX(seq), 0) AS i1, CAST(NULL AS BIGINT) AS i2, CAST(NULL AS TEXT) AS t1, CAST(NULL AS TEXT) AS t2, CAST(NULL AS TEXT) AS t3, CAST(NULL AS TEXT) AS t4 FROM ledger \
    UNION ALL SELECT 1, revision, NULL, NULL, NULL, NULL, NULL FROM tombstones WHERE tombstone = $2 \
    UNION ALL SELECT 2, NULL, NULL, subject, NULL, NULL, NULL FROM effective \
    UNION ALL SELECT 3, NULL, NULL, device, NULL, NULL, NULL FROM links WHERE subject = (SELECT subject FROM effective) \
    UNION ALL SELECT 4, revision, restricted, subject, NULL, NULL, NULL FROM subjects WHERE subject = (SELECT subject FROM effective) \
    UNION ALL SELECT 4, s.revision, s.restricted, s.subject, NULL, NULL, NULL FROM links k JOIN subjects s ON s.subject = k.device WHERE k.subject = (SELECT subject FROM effective) \
    UNION ALL SELECT 5, revision, order_micros, kind, value, recorded_at, collection_method FROM signals WHERE subject = (SELECT subject FROM effective) \
    UNION ALL SELECT 5, g.revision, g.order_micros, g.kind, g.value, g.recorded_at, g.collection_method FROM links k JOIN signals g ON g.subject = k.device WHERE k.subject = (SELECT subject FROM effective) \
    UNION ALL SELECT 6, c.revision, c.order_micros, r.body, r.subject, l.event, NULL FROM consent_current c JOIN consent_records r ON r.revision = c.revision JOIN ledger l ON l.seq = r.revision WHERE c.subject = (SELECT subject FROM effective)";

/// A consent store over a dialect.
pub struct SqlStore<D> {
    pool: AnyPool,
    /// Kept for the commit listener's own connection.
    database: consentgate_store::Database,
    keys: Arc<LedgerKeys>,
    /// Held by the leader of the group commit in progress: one transaction at a time in this
    /// process, so writers never contend for the database's write lock (see [`SqlStore::write`]).
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Writes waiting for the next group commit, in arrival order.
    queue: std::sync::Mutex<Vec<Queued>>,
    /// Group commits made, and the writes they carried (see [`SqlStore::group_commits`]).
    group_commits: Arc<GroupCommits>,
    /// How long an idempotency key is remembered: a retry within it is answered from the first
    /// write, a key reused after it is a new request (see [`DEFAULT_IDEMPOTENCY_WINDOW`]).
    idempotency_window: Duration,
    dialect: PhantomData<D>,
}

/// How long idempotency keys are remembered unless configured otherwise: 7 days, as payment
/// APIs keep theirs. Long enough for any client's retries (and a weekend's outage of one), short
/// enough that the table holds a week of writes, not all of them.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// A stored collection method; an unknown spelling is corruption, never a guess.
pub(super) fn collection_method(text: &str) -> Result<CollectionMethod, StoreError> {
    CollectionMethod::parse(text).ok_or_else(|| {
        StoreError::corrupt(format!(
            "unknown collection method {:?}",
            text.chars().take(32).collect::<String>()
        ))
    })
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::corrupt(format!("bad stored timestamp: {e}")))
}

pub(super) fn subject_of(text: &str) -> Result<SubjectKey, StoreError> {
    SubjectKey::from_storage(text)
        .ok_or_else(|| StoreError::corrupt("a stored subject key has no s:/d: prefix".into()))
}

impl<D: Dialect> SqlStore<D> {
    /// Connects, migrates, and keeps `keys` for pseudonyms, tombstones and checkpoints.
    pub async fn connect(url: &str, keys: Arc<LedgerKeys>) -> Result<Self, StoreError> {
        let database = consentgate_store::open::<D>(url, &MIGRATIONS, &SETUP).await?;
        handles::move_held_records::<D>(database.pool(), WRITE_TX_PRELUDE).await?;
        Ok(SqlStore {
            pool: database.pool().clone(),
            database,
            keys,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            queue: std::sync::Mutex::new(Vec::new()),
            group_commits: Arc::default(),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            dialect: PhantomData,
        })
    }

    /// The same store, remembering idempotency keys for `window` instead of the default.
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    /// Forgets the idempotency keys first used before the window among the `limit` oldest
    /// records (by revision); returns how many. Their writes stay in the history and the ledger:
    /// only the shortcut that answers a retry from the first write goes.
    ///
    /// Why the oldest `limit` and not "`limit` expired ones": records are keyed by revision
    /// (migration 0011) and carry no index on their time, so looking past the oldest would scan
    /// the whole window of live keys. Revisions commit in time order (to the replicas' clock
    /// skew), so the expired records are the oldest; a young record among them (a replica whose
    /// clock ran ahead) only stays until it expires, while the rest go. A sweep is done when a
    /// call forgets nothing.
    pub(super) async fn sweep_idempotency(&self, limit: u32) -> Result<u64, StoreError> {
        let _serialized = self.write_lock.lock().await;
        let cutoff = remembered_since(OffsetDateTime::now_utc(), self.idempotency_window);
        let deleted = sqlx::query(
            "DELETE FROM idempotency WHERE revision IN \
             (SELECT revision FROM \
              (SELECT revision, created_at FROM idempotency ORDER BY revision LIMIT $2) AS oldest \
              WHERE created_at < $1)",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    /// Commit notices from other replicas (PostgreSQL), on a connection of their own.
    pub(super) async fn commit_notices(&self) -> Result<Option<Notices>, StoreError> {
        Ok(self.database.commit_notices(CHANGES_CHANNEL).await?)
    }

    /// Transactions committed by the write path, and the writes they carried: how well writes
    /// share commits (tests and benchmarks read it; `writes / commits` is the mean batch).
    pub fn group_commits(&self) -> (u64, u64) {
        (
            self.group_commits.commits.load(Ordering::Relaxed),
            self.group_commits.writes.load(Ordering::Relaxed),
        )
    }

    /// The underlying pool (tests count rows through it).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Records a write durably and answers once it is committed: a group commit. The write
    /// joins the queue; whoever holds the write lock leads, taking every queued write (up to
    /// [`MAX_BATCH`]) into one transaction with one durable commit, its own among them unless an
    /// earlier leader's batch took it. Each write gets its own revision, idempotency record and
    /// ledger entry, in queue order; each is answered only after the commit; a batch that fails
    /// fails every member (none is acknowledged). A write refused on its own (a reused key with
    /// other content, an erased subject) is decided before anything of it is written, and fails
    /// alone.
    pub(super) async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.write_many(vec![write])
            .await?
            .pop()
            .unwrap_or_else(|| Err(unanswered()))
    }

    /// Records several writes as [`SqlStore::write`] records one, queued as one unit: they go
    /// into the same group commit, in this order, and are answered together after it, each with
    /// its own answer. Why: an import chunk of a thousand records as a thousand queued writes
    /// cost a future, a channel and a cache invalidation each, and was split across commits
    /// wherever a batch filled; as one unit it costs one of each. More than [`MAX_BATCH`]
    /// writes are queued as consecutive units of at most that many, one after another. `Err`
    /// only when the caller's deadline had passed before a unit was queued (the units before
    /// it are committed), or a commit was lost without an answer.
    pub(super) async fn write_many(
        &self,
        mut writes: Vec<Write>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let mut answers = Vec::with_capacity(writes.len());
        while writes.len() > MAX_BATCH {
            let rest = writes.split_off(MAX_BATCH);
            answers.extend(self.write_unit(writes).await?);
            writes = rest;
        }
        if !writes.is_empty() {
            answers.extend(self.write_unit(writes).await?);
        }
        Ok(answers)
    }

    /// Queues `writes` (at most [`MAX_BATCH`]) as one unit and leads group commits until they
    /// are answered.
    async fn write_unit(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        consentgate_deadline::time_left().map_err(|e| StoreError::Store(e.into()))?;
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        lock(&self.queue).push(Queued {
            writes,
            deadline: consentgate_deadline::current(),
            answer,
        });
        loop {
            // Answered (by a batch another writer led) wins over leading: a writer whose write
            // has committed must not wait its turn at the lock only to lead the next batch, or
            // every answered writer leads a batch of the one write that arrived meanwhile and
            // the writes behind it queue at the lock instead of sharing a commit.
            let leader = tokio::select! {
                biased;
                result = &mut answered => return result.map_err(|_| unanswered()),
                leader = self.write_lock.clone().lock_owned() => leader,
            };
            let batch: Vec<Queued> = {
                let mut queue = lock(&self.queue);
                // Whole units while they fit in MAX_BATCH writes (the first always does).
                let mut taken = 0;
                let n = queue
                    .iter()
                    .take_while(|q| {
                        let fits = taken == 0 || taken + q.writes.len() <= MAX_BATCH;
                        taken += q.writes.len();
                        fits
                    })
                    .count();
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(leader);
                continue;
            }
            let group = Group::<D> {
                pool: self.pool.clone(),
                keys: self.keys.clone(),
                window: self.idempotency_window,
                counted: self.group_commits.clone(),
                dialect: PhantomData,
            };
            // The batch runs to its end even if this caller goes away: the others wait on it.
            // The lock goes with it. Its own writes, if not in this batch (past a full batch, or
            // taken by an earlier one), are answered on the next turn of the loop.
            let _ = tokio::spawn(async move {
                group.commit(batch).await;
                drop(leader);
            })
            .await;
        }
    }

    /// Everything a decision about `key` reads, in one statement ([`SUBJECT_SNAPSHOT`]): one
    /// statement reads one snapshot on both backends, so no transaction is needed around it.
    /// Why: read one kind at a time inside a snapshot transaction this was eight or more round
    /// trips (begin, the ledger's head, the tombstone, the links, each member's row and
    /// signals, the records, commit), and on PostgreSQL a decision cache's miss cost that many
    /// trips over the socket (BENCHMARKS.md, fifteenth look).
    pub(super) async fn load_subject(&self, key: &SubjectKey) -> Result<SubjectRows, StoreError> {
        consentgate_deadline::time_left().map_err(consentgate_store::Error::from)?;
        let key_s = key.storage();
        let found = sqlx::query(SUBJECT_SNAPSHOT)
            .bind(&key_s)
            .bind(self.keys.tombstone(key))
            .fetch_all(&self.pool)
            .await?;
        let mut rows = SubjectRows::default();
        let mut tombstone = None;
        // A linked device is decided by its person's consents; the person by its own.
        let mut effective = key_s.clone();
        let mut devices = Vec::new();
        let mut members: Vec<(String, i64, i64)> = Vec::new();
        for r in &found {
            match r.get::<i64, _>(0) {
                SNAPSHOT_HEAD => rows.as_of = to_u64(r.get(1)),
                SNAPSHOT_TOMBSTONE => tombstone = Some(to_u64(r.get(1))),
                SNAPSHOT_EFFECTIVE => effective = r.get(3),
                SNAPSHOT_DEVICE => devices.push(r.get::<String, _>(3)),
                SNAPSHOT_MEMBER => members.push((r.get(3), r.get(1), r.get(2))),
                SNAPSHOT_SIGNAL => rows.signals.push(StoredSignal {
                    revision: to_u64(r.get(1)),
                    kind: r.get(3),
                    value: r.get(4),
                    recorded_at: parse_time(&r.get::<String, _>(5))?,
                    collection_method: collection_method(&r.get::<String, _>(6))?,
                    ordered_at: order_time(r.get(2))?,
                }),
                SNAPSHOT_RECORD => {
                    let mut record = record::decode_parts(
                        r.get(1),
                        &r.get::<String, _>(3),
                        &r.get::<String, _>(4),
                        &r.get::<String, _>(5),
                    )?;
                    record.ordered_at = Some(order_time(r.get(2))?);
                    rows.records.push(record);
                }
                other => {
                    return Err(StoreError::corrupt(format!(
                        "a subject's snapshot returned a row of unknown kind {other}"
                    )));
                }
            }
        }
        if let Some(revision) = tombstone {
            return Ok(SubjectRows {
                as_of: rows.as_of,
                erased: true,
                revision,
                ..SubjectRows::default()
            });
        }
        for (member, revision, restricted) in members {
            rows.revision = rows.revision.max(to_u64(revision));
            if member == effective {
                rows.restricted = restricted != 0;
            }
        }
        rows.links = if effective == key_s {
            devices
                .iter()
                .filter(|d| **d != effective)
                .map(|d| subject_of(d))
                .collect::<Result<_, _>>()?
        } else {
            vec![subject_of(&effective)?]
        };
        rows.signals.sort_by_key(|s| s.revision);
        rows.records.sort_by_key(|r| r.revision);
        Ok(rows)
    }

    pub(super) async fn history(
        &self,
        subject: &SubjectKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!("SELECT {} FROM consent_records r JOIN ledger l ON l.seq = r.revision WHERE r.subject = $1 AND r.revision > $2 ORDER BY r.revision LIMIT $3", record::COLUMNS)))
            .bind(subject.storage()).bind(to_i64(after)).bind(i64::from(limit))
            .fetch_all(&self.pool).await?
            .iter().map(record::decode).collect()
    }

    pub(super) async fn changes_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<ChangeEvent>, u64), StoreError> {
        let mut tx = begin_snapshot::<D>(&self.pool).await?;
        let high: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM ledger")
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        // The change stream is the ledger read with the subject its entries leave out
        // (migration 0013): kind, purpose and time come from the entry.
        let rows = sqlx::query(
            "SELECT seq, subject, event FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let events = rows
            .iter()
            .map(|r| {
                let revision: i64 = r.get(0);
                let change = entry::change_of(r.get::<&str, _>(2)).ok_or_else(|| {
                    StoreError::corrupt(format!(
                        "ledger entry {revision} does not read as a change"
                    ))
                })?;
                Ok(ChangeEvent {
                    revision: to_u64(revision),
                    subject: r
                        .get::<Option<String>, _>(1)
                        .as_deref()
                        .map(subject_of)
                        .transpose()?,
                    kind: change.kind,
                    purpose: change.purpose,
                    committed_at: Some(commit_time(&change.at)?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // When the page is full, only what it covers is known to be delivered.
        let high = if events.len() == limit as usize {
            events.last().map_or(after, |e| e.revision)
        } else {
            to_u64(high)
        };
        Ok((events, high))
    }

    pub(super) async fn receipt(
        &self,
        record_id: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(record) =
            sqlx::query(AssertSqlSafe(format!("SELECT {} FROM consent_records r JOIN ledger l ON l.seq = r.revision WHERE r.record_id = $1", record::COLUMNS)))
                .bind(record_id)
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| record::decode(&r))
                .transpose()?
        else {
            return Ok(None);
        };
        let consent = &record.consent;
        let Some(receipt) = receipt_of(&mut conn, &record).await? else {
            return Ok(None);
        };
        // An imported grant's receipt is signed now, on its first reading and every later one
        // (deterministically: the same bytes while the same key signs).
        let receipt = receipt.signed(&self.keys, consent);
        let jws = receipt.jws(consent).ok_or_else(|| {
            StoreError::corrupt(format!(
                "the receipt of revision {} is unsigned",
                record.revision
            ))
        })?;
        Ok(Some(StoredReceipt {
            subject: consent.subject.clone(),
            json: receipt.json(consent),
            jws,
        }))
    }

    pub(super) async fn ledger(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        // The link is the stored hash of the entry before (migration 0012): the genesis for
        // entry 1, nothing when that entry is missing (the verifier reports the gap). The page's
        // first link is read by key and the rest from the page itself; a self-join would let
        // PostgreSQL hash-join the whole ledger for every page.
        let mut link: Option<(u64, Vec<u8>)> = match after {
            0 => Some((0, GENESIS_HASH.to_vec())),
            _ => sqlx::query("SELECT hash FROM ledger WHERE seq = $1")
                .bind(to_i64(after))
                .fetch_optional(&self.pool)
                .await?
                .map(|r| (after, r.get(0))),
        };
        let rows =
            sqlx::query("SELECT seq, hash, event FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(to_i64(after))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq = to_u64(r.get(0));
            let hash: Vec<u8> = r.get(1);
            let prev_hash = match link.take() {
                Some((before, h)) if before + 1 == seq => h,
                _ => Vec::new(),
            };
            link = Some((seq, hash.clone()));
            entries.push(LedgerEntry {
                seq,
                prev_hash,
                hash,
                event: r.get(2),
            });
        }
        Ok(entries)
    }

    pub(super) async fn ledger_extent(&self) -> Result<super::LedgerExtent, StoreError> {
        let last = |sql: &'static str| async move {
            let seq: i64 = sqlx::query(sql).fetch_one(&self.pool).await?.get(0);
            Ok::<u64, StoreError>(to_u64(seq))
        };
        let last_checkpoint = last("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").await?;
        // The checkpointed entry's own time, from its canonical event (`at`).
        let last_checkpoint_at = match sqlx::query("SELECT event FROM ledger WHERE seq = $1")
            .bind(to_i64(last_checkpoint))
            .fetch_optional(&self.pool)
            .await?
        {
            Some(row) => {
                let event: String = row.get(0);
                let head = entry::head(&event).ok_or_else(|| {
                    StoreError::corrupt(format!(
                        "ledger entry {last_checkpoint} is not a canonical event"
                    ))
                })?;
                Some(parse_time(&head.at)?)
            }
            None => None,
        };
        Ok(super::LedgerExtent {
            last_entry: last("SELECT COALESCE(MAX(seq), 0) FROM ledger").await?,
            last_checkpoint,
            last_checkpoint_at,
        })
    }

    pub(super) async fn checkpoints(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(sqlx::query(
            "SELECT seq, hash, signature, kid FROM checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Checkpoint {
            seq: to_u64(r.get(0)),
            hash: r.get(1),
            signature: r.get(2),
            kid: r.get(3),
        })
        .collect())
    }
}

impl<D: Dialect> SqlStore<D> {
    /// Which of `tombstones` this database holds, with the revision and time of each.
    pub(super) async fn tombstones_held(
        &self,
        tombstones: &[Vec<u8>],
    ) -> Result<Vec<HeldTombstone>, StoreError> {
        let mut held = Vec::new();
        for part in tombstones.chunks(500) {
            let sql = format!(
                "SELECT tombstone, revision, erased_at FROM tombstones WHERE tombstone IN ({})",
                placeholders(1, part.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for t in part {
                q = q.bind(t.clone());
            }
            for r in q.fetch_all(&self.pool).await? {
                held.push(HeldTombstone {
                    tombstone: r.get(0),
                    revision: to_u64(r.get(1)),
                    erased_at: parse_time(&r.get::<String, _>(2))?,
                });
            }
        }
        Ok(held)
    }

    /// Tombstones after `after` in the order of their bytes, at most `limit`.
    pub(super) async fn tombstones_after(
        &self,
        after: &[u8],
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(sqlx::query(
            "SELECT tombstone FROM tombstones WHERE tombstone > $1 ORDER BY tombstone LIMIT $2",
        )
        .bind(after.to_vec())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    /// Inserts the tombstones this database lacks (a restored database given back erasures it
    /// lost), at the current head revision; how many were missing. Serialized with writes, so
    /// that from its commit on every write about those subjects is refused.
    pub(super) async fn restore_tombstones(
        &self,
        tombstones: &[Vec<u8>],
    ) -> Result<u64, StoreError> {
        let _serialized = self.write_lock.lock().await;
        let mut tx = begin_serialized::<D>(&self.pool, WRITE_TX_PRELUDE).await?;
        let head: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM ledger")
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        let now = rfc3339(OffsetDateTime::now_utc());
        let mut restored = 0;
        for t in tombstones {
            restored += sqlx::query("INSERT INTO tombstones (tombstone, revision, erased_at) VALUES ($1, $2, $3) ON CONFLICT (tombstone) DO NOTHING")
                .bind(t.clone())
                .bind(head)
                .bind(&now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(restored)
    }

    /// Every key this database holds something about although it holds its tombstone: what a
    /// restore brought back of subjects erased after the backup, once their tombstones are back.
    /// One pass over the keys (each written key has its row in `subjects`), a page
    /// at a time, computing each key's tombstone: linear in the subjects held, so it runs when
    /// an operator re-applies erasures, never on a request path.
    pub(super) async fn erased_but_held(&self) -> Result<Vec<SubjectKey>, StoreError> {
        const PAGE: i64 = 5_000;
        let mut found = Vec::new();
        let mut after = String::new();
        loop {
            let page: Vec<String> = sqlx::query(
                "SELECT subject FROM subjects WHERE subject > $1 ORDER BY subject LIMIT $2",
            )
            .bind(&after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let Some(last) = page.last().cloned() else {
                break;
            };
            let keys = page
                .iter()
                .map(|s| subject_of(s))
                .collect::<Result<Vec<_>, _>>()?;
            let tombstones: Vec<Vec<u8>> = keys.iter().map(|k| self.keys.tombstone(k)).collect();
            let held: std::collections::HashSet<Vec<u8>> = self
                .tombstones_held(&tombstones)
                .await?
                .into_iter()
                .map(|t| t.tombstone)
                .collect();
            found.extend(
                keys.into_iter()
                    .zip(&tombstones)
                    .filter(|(_, t)| held.contains(*t))
                    .map(|(k, _)| k),
            );
            after = last;
        }
        Ok(found)
    }
}

/// Subjects a change names, each of which must not be erased.
fn involved(change: &Change) -> Vec<&SubjectKey> {
    match change {
        Change::Link { device, subject } => vec![device, subject],
        other => vec![other.subject()],
    }
}

/// How often the background checkpointer looks for commits to checkpoint (SQLite).
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(50);

/// Copies committed pages from SQLite's write-ahead log into the database file in a task of its
/// own, on a pooled connection (and so on its own worker thread), while commits go on. Why:
/// left to itself, SQLite checkpoints inside the commit that grows the log past 1,000 pages, on
/// the one thread every write waits for: 15% of that thread's time during a bulk import
/// (BENCHMARKS.md). A PASSIVE checkpoint takes no lock writers or readers wait for; SQLite's own
/// checkpoint stays on as the backstop should this task fall behind, at 8,192 pages (see
/// `SETUP`: at 1,000 an import's batches still crossed it in their commits). It runs while
/// commits come in and ends with the store.
pub(super) fn checkpoint_in_background<D: Dialect>(store: &Arc<SqlStore<D>>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut checkpointed = 0;
        loop {
            tokio::time::sleep(CHECKPOINT_PAUSE).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let commits = store.group_commits.commits.load(Ordering::Relaxed);
            if commits == checkpointed {
                continue;
            }
            checkpointed = commits;
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&store.pool)
                .await
            {
                // Not a failure of any write: SQLite's own checkpoint remains.
                tracing::warn!(error = %StoreError::from(e).log_safe(), "a background WAL checkpoint failed");
            }
        }
    });
}

/// The most writes one transaction commits: enough to amortize a durable commit and a batch's
/// lookups many times over. Live writes rarely fill it (a batch holds what queued during the
/// last commit: ~32 at 64 in flight); a bulk import does, and gained 13% (SQLite) and 30%
/// (PostgreSQL) from 256 to 1,024 (BENCHMARKS.md). Readers do not wait for it (SQLite's WAL,
/// PostgreSQL's MVCC); a live write queued behind a full import batch waits for its commit,
/// tens of milliseconds.
const MAX_BATCH: usize = 1024;

/// Writes waiting for a group commit, queued together (one, or an import's chunk): committed in
/// the same transaction and answered together.
struct Queued {
    writes: Vec<Write>,
    /// Its caller's deadline: the writes are not applied after it.
    deadline: Option<tokio::time::Instant>,
    /// Each write's answer, in order.
    answer: tokio::sync::oneshot::Sender<Vec<Result<WriteOutcome, StoreError>>>,
}

/// What a writer hears when its batch ended without answering it (its task was lost).
fn unanswered() -> StoreError {
    StoreError::GroupCommitFailed("the group commit ended without an answer".into())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts of committed group commits.
#[derive(Default)]
struct GroupCommits {
    commits: AtomicU64,
    writes: AtomicU64,
}

/// What a group commit needs of the store, owned, so that it runs to its end in a task of its
/// own whatever happens to the caller that started it.
struct Group<D> {
    pool: AnyPool,
    keys: Arc<LedgerKeys>,
    window: Duration,
    counted: Arc<GroupCommits>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> Group<D> {
    /// Applies `batch` in one transaction and answers every member after the commit. Runs of
    /// consent records and signals are applied together ([`batch::apply_run`]); links,
    /// restrictions and erasures one by one between them ([`apply`]).
    async fn commit(self, batch: Vec<Queued>) {
        // The lock first: a caller may give up while the batch waits for it.
        let tx = match begin_serialized::<D>(&self.pool, WRITE_TX_PRELUDE).await {
            Ok(tx) => tx,
            Err(e) => return fail(batch, &StoreError::from(e)),
        };
        // A caller that gave up (its deadline passed, or it went away) gets no write it never
        // hears of.
        let mut members = Vec::with_capacity(batch.len());
        for q in batch {
            if q.answer.is_closed() {
                continue;
            }
            if q.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                let expired = || StoreError::Store(consentgate_deadline::Expired.into());
                let _ = q
                    .answer
                    .send(q.writes.iter().map(|_| Err(expired())).collect());
                continue;
            }
            members.push(q);
        }
        if members.is_empty() {
            return;
        }
        let writes: Vec<&Write> = members.iter().flat_map(|q| &q.writes).collect();
        match self.apply_all(tx, &writes).await {
            Ok(answers) => {
                self.counted.commits.fetch_add(1, Ordering::Relaxed);
                self.counted
                    .writes
                    .fetch_add(answers.len() as u64, Ordering::Relaxed);
                let mut answers = answers.into_iter();
                for member in members {
                    let own = answers.by_ref().take(member.writes.len()).collect();
                    let _ = member.answer.send(own);
                }
            }
            Err(e) => fail(members, &e),
        }
    }

    /// Applies `writes` in order in the transaction `tx` and commits it: each write's answer, or
    /// the failure that fails them all (nothing of the batch committed, or in doubt).
    async fn apply_all(
        &self,
        mut tx: Tx<'_>,
        writes: &[&Write],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        // To the microsecond, as the change's commit time is stored: a retry's rebuilt answer
        // names the same instant as the first.
        let now = OffsetDateTime::now_utc();
        let now = from_unix_micros(unix_micros(now)).unwrap_or(now);
        let remembered_since = remembered_since(now, self.window);
        let mut answers: Vec<Result<WriteOutcome, StoreError>> = Vec::with_capacity(writes.len());
        let mut next = 0;
        while next < writes.len() {
            if !batch::joins_a_run(&writes[next].change) {
                match apply(&mut tx, &self.keys, writes[next], now, remembered_since).await {
                    Ok(outcome) => answers.push(Ok(outcome)),
                    // Decided before anything of the write was written: it fails alone.
                    Err(e @ (StoreError::IdempotencyConflict | StoreError::SubjectErased)) => {
                        answers.push(Err(e));
                    }
                    // The transaction is in doubt: the whole batch fails.
                    Err(e) => return Err(e),
                }
                next += 1;
                continue;
            }
            // The run: up to the next write that cannot join, or that repeats a key of the run
            // (answered from the first once that is written).
            let mut keys = std::collections::HashSet::new();
            let run: Vec<&Write> = writes[next..]
                .iter()
                .copied()
                .take_while(|w| {
                    batch::joins_a_run(&w.change)
                        && keys.insert((w.caller.as_str(), w.idempotency_key.as_str()))
                })
                .collect();
            next += run.len();
            answers.extend(
                batch::apply_run::<D>(&mut tx, &self.keys, &run, now, remembered_since).await?,
            );
        }
        // Other replicas hear of the commit at once (PostgreSQL delivers it on commit only).
        let head = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .filter(|o| !o.replayed)
            .map(|o| o.revision)
            .max();
        if let (Some(head), Some(notify)) = (head, D::NOTIFY) {
            sqlx::query(notify)
                .bind(CHANGES_CHANNEL)
                .bind(head.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(answers)
    }
}

/// Answers every write of a failed batch with the failure (none of them committed).
fn fail(members: Vec<Queued>, error: &StoreError) {
    let reason = error.log_safe();
    for member in members {
        let failed = member
            .writes
            .iter()
            .map(|_| Err(StoreError::GroupCommitFailed(reason.clone())))
            .collect();
        let _ = member.answer.send(failed);
    }
}

/// Applies one link, restriction or erasure inside a group commit's transaction: its
/// idempotency check, its rows, its ledger entry (and checkpoint), its change event and
/// idempotency record. Consent records and signals go in runs ([`batch::apply_run`]).
async fn apply(
    tx: &mut Tx<'_>,
    keys: &LedgerKeys,
    write: &Write,
    now: OffsetDateTime,
    remembered_since: i64,
) -> Result<WriteOutcome, StoreError> {
    if let Some(outcome) = replay(tx, write, remembered_since).await? {
        return Ok(outcome);
    }
    let subject = write.change.subject().clone();
    let subject_s = subject.storage();

    if let Change::Erase { .. } = &write.change {
        // Already erased, unless rows of the subject sit beside its tombstone: a database
        // restored from a backup and given its tombstones back (`restore_tombstones`) still
        // holds what was erased after the backup, and erasing it again must not be a no-op.
        if let Some(revision) = tombstone_revision(tx, &keys.tombstone(&subject)).await?
            && !holds_anything(tx, &subject_s).await?
        {
            // Already erased: erasure is idempotent even under a new key.
            let outcome = WriteOutcome {
                revision,
                record: None,
                records_deleted: 0,
                committed_at: now,
                affected: Vec::new(),
                replayed: true,
                history_only: false,
            };
            return Ok(outcome);
        }
    } else {
        for key in involved(&write.change) {
            if tombstone_revision(tx, &keys.tombstone(key))
                .await?
                .is_some()
            {
                return Err(StoreError::SubjectErased);
            }
        }
    }

    let head: Option<(i64, Vec<u8>)> =
        sqlx::query("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| (r.get(0), r.get(1)));
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS_HASH.to_vec()));
    let seq = to_u64(prev_seq) + 1;
    let rev = to_i64(seq);

    let subject_pseudonym = entry::pseudonym(&subject_key(tx, &subject_s).await?, &subject);
    let mut device_pseudonym = None;
    let mut affected = link_group(tx, &subject_s).await?;
    let mut records_deleted = 0u64;
    let mut erased_keys: Vec<SubjectKey> = Vec::new();

    match &write.change {
        // Applied in runs (`batch::apply_run`), never one by one.
        Change::Consent(_) | Change::Signal { .. } => {
            return Err(StoreError::GroupCommitFailed(
                "a consent record or signal was applied outside a run".into(),
            ));
        }
        Change::Link { device, .. } => {
            let device_s = device.storage();
            device_pseudonym = Some(entry::pseudonym(&subject_key(tx, &device_s).await?, device));
            // A device re-linked to another subject leaves its old group: refresh that too.
            affected.extend(link_group(tx, &device_s).await?);
            sqlx::query("INSERT INTO links (device, subject, revision) VALUES ($1, $2, $3) ON CONFLICT (device) DO UPDATE SET subject = excluded.subject, revision = excluded.revision")
                    .bind(&device_s).bind(&subject_s).bind(rev)
                    .execute(&mut **tx).await?;
            bump(tx, &subject_s, rev, None).await?;
            bump(tx, &device_s, rev, None).await?;
            affected.push(device.clone());
        }
        Change::Restrict { restricted, .. } => {
            bump(tx, &subject_s, rev, Some(*restricted)).await?;
        }
        Change::Erase { .. } => {
            // The subject and, for a person, every device linked to it.
            let mut erase = vec![subject.clone()];
            if let SubjectKey::Subject(_) = subject {
                erase.extend(affected.iter().filter(|k| **k != subject).cloned());
            }
            for key in &erase {
                records_deleted += erase_key(tx, key, &keys.tombstone(key), rev, now).await?;
            }
            erased_keys = erase;
        }
    }

    let event = entry::canonical_event(
        seq,
        now,
        &write.change,
        &subject_pseudonym,
        device_pseudonym.as_deref(),
        write
            .delegate
            .as_deref()
            .map(|d| consentgate_runtime::delegation::on_behalf_of(d, &write.caller)),
    );
    let hash = entry::chain_hash(&prev_hash, &event);
    // An erased subject's entries were un-named above; its erase entry names nobody. The
    // subject is the change stream's (migration 0013), outside the hashed entry.
    let change_subject = if matches!(write.change, Change::Erase { .. }) {
        None
    } else {
        Some(subject_s.clone())
    };
    sqlx::query("INSERT INTO ledger (seq, hash, event, subject) VALUES ($1, $2, $3, $4)")
        .bind(rev)
        .bind(&hash)
        .bind(&event)
        .bind(change_subject)
        .execute(&mut **tx)
        .await?;
    if seq.is_multiple_of(CHECKPOINT_EVERY) {
        let signature = keys.sign(&checkpoint_message(seq, &hash));
        sqlx::query("INSERT INTO checkpoints (seq, hash, signature, kid) VALUES ($1, $2, $3, $4)")
            .bind(rev)
            .bind(&hash)
            .bind(signature)
            .bind(keys.kid())
            .execute(&mut **tx)
            .await?;
    }

    affected.sort_by_key(SubjectKey::storage);
    affected.dedup();
    // Every key whose decisions the change touches moves to this revision, so that a key's
    // revision never goes backwards when a device leaves its group (re-link or erasure).
    for key in affected.iter().filter(|k| !erased_keys.contains(k)) {
        bump(tx, &key.storage(), rev, None).await?;
    }
    let outcome = WriteOutcome {
        revision: seq,
        record: None,
        records_deleted,
        committed_at: now,
        affected,
        replayed: false,
        history_only: false,
    };
    // The revision, not a copy of the answer: a retry rebuilds it (see `replay`). The record
    // names no subject: erasure finds it through the change of its revision, and an erasure's
    // own record (its change names nobody) outlives the subject, so its retry is answered.
    let erased = matches!(write.change, Change::Erase { .. }).then(|| to_i64(records_deleted));
    sqlx::query("INSERT INTO idempotency (revision, created_at, handle, fingerprint, records_deleted) VALUES ($1, $2, $3, $4, $5)")
        .bind(rev)
        .bind(unix_micros(now))
        .bind(handles::handle_of(write))
        .bind(handles::stored_fingerprint(&write.fingerprint).to_vec())
        .bind(erased)
        .execute(&mut **tx)
        .await?;
    Ok(outcome)
}

/// The answer of the first write under this write's idempotency key, if the key was first used
/// at or after `remembered_since` (microseconds); a key from before is forgotten here and now
/// (whether or not the sweep has reached it), and the write is a new request.
async fn replay(
    tx: &mut Tx<'_>,
    write: &Write,
    remembered_since: i64,
) -> Result<Option<WriteOutcome>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT fingerprint, created_at, revision, records_deleted FROM idempotency WHERE handle = $1",
    )
    .bind(handles::handle_of(write))
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let remembered = Remembered {
        fingerprint: row.get(0),
        created_at: row.get(1),
        revision: row.get(2),
        records_deleted: row.get(3),
    };
    answer_from_record(tx, write, &remembered, remembered_since).await
}

/// [`replay`] from the idempotency record already read. `IdempotencyConflict` when the key was
/// used for other content.
pub(super) async fn answer_from_record(
    tx: &mut Tx<'_>,
    write: &Write,
    remembered: &Remembered,
    remembered_since: i64,
) -> Result<Option<WriteOutcome>, StoreError> {
    if remembered.created_at < remembered_since {
        sqlx::query("DELETE FROM idempotency WHERE handle = $1")
            .bind(handles::handle_of(write))
            .execute(&mut **tx)
            .await?;
        return Ok(None);
    }
    if remembered.fingerprint != handles::stored_fingerprint(&write.fingerprint) {
        return Err(StoreError::IdempotencyConflict);
    }
    let mut outcome = rebuilt(tx, remembered.revision, remembered.records_deleted).await?;
    outcome.replayed = true;
    Ok(Some(outcome))
}

/// The answer of the write committed at `revision`, rebuilt from what the database holds anyway:
/// the change's commit time, the consent record written at that revision (none for signals,
/// links, restrictions and erasures), and for an erasure the records it deleted.
pub(super) async fn rebuilt(
    tx: &mut Tx<'_>,
    revision: i64,
    records_deleted: Option<i64>,
) -> Result<WriteOutcome, StoreError> {
    let event: Option<String> = sqlx::query("SELECT event FROM ledger WHERE seq = $1")
        .bind(revision)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0));
    let committed_at = event
        .as_deref()
        .and_then(entry::head)
        .ok_or_else(|| {
            StoreError::corrupt(format!(
                "idempotency record of revision {revision}: its ledger entry is missing"
            ))
        })
        .and_then(|head| commit_time(&head.at))?;
    let mut record = sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM consent_records r JOIN ledger l ON l.seq = r.revision WHERE r.revision = $1",
        record::COLUMNS
    )))
        .bind(revision)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| record::decode(&r))
        .transpose()?;
    // A retried grant is answered with its receipt, as the first answer was.
    if let Some(record) = &mut record {
        record.consent.receipt = receipt_of(tx, record).await?;
    }
    Ok(WriteOutcome {
        revision: to_u64(revision),
        record,
        records_deleted: records_deleted.map_or(0, to_u64),
        committed_at,
        affected: Vec::new(),
        replayed: true,
        history_only: false,
    })
}

/// A record's receipt: derived from its signature and context (unsigned for an imported grant
/// not asked for yet), or, for a grant recorded before receipts were derived (migration 0008),
/// as it was stored. `None` when it has none (refusals, withdrawals).
async fn receipt_of(
    conn: &mut sqlx::AnyConnection,
    record: &StoredRecord,
) -> Result<Option<Receipt>, StoreError> {
    let derived = sqlx::query(
        "SELECT c.body, r.receipt_signature FROM consent_records r \
         JOIN receipt_contexts c ON c.digest = r.receipt_context WHERE r.revision = $1",
    )
    .bind(to_i64(record.revision))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = derived {
        let context = ReceiptContext::decode(&row.get::<String, _>(0))
            .map_err(|e| StoreError::corrupt(format!("receipt context: {e}")))?;
        // No signature: an imported grant's, signed when asked for (`Receipt::signed`).
        return Ok(Some(match row.get::<Option<Vec<u8>>, _>(1) {
            Some(signature) => Receipt::Derived { context, signature },
            None => Receipt::Unsigned { context },
        }));
    }
    Ok(
        sqlx::query("SELECT receipt_json, jws FROM receipts WHERE record_id = $1")
            .bind(&record.consent.record_id)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| Receipt::Stored {
                json: r.get(0),
                jws: r.get(1),
            }),
    )
}

async fn tombstone_revision(tx: &mut Tx<'_>, tombstone: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(
        sqlx::query("SELECT revision FROM tombstones WHERE tombstone = $1")
            .bind(tombstone.to_vec())
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| to_u64(r.get(0))),
    )
}

/// Whether the database holds anything about a key: every write creates the key's row (its
/// revision and pseudonym key), and erasure deletes it.
async fn holds_anything(tx: &mut Tx<'_>, subject: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 FROM subjects WHERE subject = $1")
        .bind(subject)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

/// The subject's pseudonym key (a column of its row since migration 0015), created on first
/// use; a new row stays at revision 0 (no state) until the write moves it to its revision.
async fn subject_key(tx: &mut Tx<'_>, subject: &str) -> Result<Vec<u8>, StoreError> {
    if let Some(key) = sqlx::query("SELECT key FROM subjects WHERE subject = $1")
        .bind(subject)
        .fetch_optional(&mut **tx)
        .await?
        .and_then(|r| r.get::<Option<Vec<u8>>, _>(0))
    {
        return Ok(key);
    }
    let key = random_key().to_vec();
    sqlx::query(
        "INSERT INTO subjects (subject, revision, restricted, key) VALUES ($1, 0, 0, $2) \
         ON CONFLICT (subject) DO UPDATE SET key = excluded.key",
    )
    .bind(subject)
    .bind(&key)
    .execute(&mut **tx)
    .await?;
    Ok(key)
}

/// The subject and every key linked with it: a person's devices, or a device's person and its devices.
async fn link_group(tx: &mut Tx<'_>, subject: &str) -> Result<Vec<SubjectKey>, StoreError> {
    let person: String = sqlx::query("SELECT subject FROM links WHERE device = $1")
        .bind(subject)
        .fetch_optional(&mut **tx)
        .await?
        .map_or_else(|| subject.to_owned(), |r| r.get(0));
    let mut group = vec![subject_of(subject)?];
    if person != subject {
        group.push(subject_of(&person)?);
    }
    for r in sqlx::query("SELECT device FROM links WHERE subject = $1")
        .bind(&person)
        .fetch_all(&mut **tx)
        .await?
    {
        let device = subject_of(&r.get::<String, _>(0))?;
        if !group.contains(&device) {
            group.push(device);
        }
    }
    Ok(group)
}

async fn bump(
    tx: &mut Tx<'_>,
    subject: &str,
    revision: i64,
    restricted: Option<bool>,
) -> Result<(), StoreError> {
    match restricted {
        None => sqlx::query("INSERT INTO subjects (subject, revision, restricted) VALUES ($1, $2, 0) ON CONFLICT (subject) DO UPDATE SET revision = excluded.revision")
            .bind(subject).bind(revision).execute(&mut **tx).await?,
        Some(r) => sqlx::query("INSERT INTO subjects (subject, revision, restricted) VALUES ($1, $2, $3) ON CONFLICT (subject) DO UPDATE SET revision = excluded.revision, restricted = excluded.restricted")
            .bind(subject).bind(revision).bind(i64::from(r)).execute(&mut **tx).await?,
    };
    Ok(())
}

/// Deletes everything held about one key, shreds its pseudonym key, and leaves a tombstone.
async fn erase_key(
    tx: &mut Tx<'_>,
    key: &SubjectKey,
    tombstone: &[u8],
    revision: i64,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let k = key.storage();
    // Before the records they are found through: an import's fingerprint would confirm a
    // guess at a record's content (a grant's receipt signature goes with its record's row).
    sqlx::query(
        "DELETE FROM imported WHERE revision IN \
         (SELECT revision FROM consent_records WHERE subject = $1)",
    )
    .bind(&k)
    .execute(&mut **tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM consent_records WHERE subject = $1")
        .bind(&k)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    for sql in [
        "DELETE FROM consent_current WHERE subject = $1",
        "DELETE FROM receipts WHERE subject = $1",
        "DELETE FROM signals WHERE subject = $1",
        "DELETE FROM subjects WHERE subject = $1",
        // Through the ledger entries of the key's revisions, so before they forget the key below.
        "DELETE FROM idempotency WHERE revision IN (SELECT seq FROM ledger WHERE subject = $1)",
        "DELETE FROM links WHERE device = $1 OR subject = $1",
        // The entries stay, pseudonymous (the chain hashes `event` alone): only the change
        // stream's copy of the subject goes.
        "UPDATE ledger SET subject = NULL WHERE subject = $1",
    ] {
        sqlx::query(sql).bind(&k).execute(&mut **tx).await?;
    }
    // A tombstone given back after a restore may be there already (see `write`).
    sqlx::query("INSERT INTO tombstones (tombstone, revision, erased_at) VALUES ($1, $2, $3) ON CONFLICT (tombstone) DO NOTHING")
        .bind(tombstone.to_vec())
        .bind(revision)
        .bind(rfc3339(now))
        .execute(&mut **tx)
        .await?;
    Ok(deleted)
}

/// The oldest first use (microseconds) an idempotency key may have at `now` and still be
/// remembered under `window`: the write path and the sweep draw the same line.
fn remembered_since(now: OffsetDateTime, window: Duration) -> i64 {
    unix_micros(now).saturating_sub(i64::try_from(window.as_micros()).unwrap_or(i64::MAX))
}

/// Microseconds since the Unix epoch: how a change's commit time is stored (an integer compares
/// and converts the same on both backends).
pub(super) fn unix_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// A change's commit time from its ledger entry's `at`, to the microsecond, as the change stream
/// carried it when it was stored beside the entry (migration 0013): the same instant.
fn commit_time(at: &str) -> Result<OffsetDateTime, StoreError> {
    let t = parse_time(at)?;
    from_unix_micros(unix_micros(t)).ok_or_else(|| {
        StoreError::corrupt(format!("commit time {} is out of range", unix_micros(t)))
    })
}

/// A stored `order_micros` (migration 0010) as a time.
pub(super) fn order_time(micros: i64) -> Result<OffsetDateTime, StoreError> {
    from_unix_micros(micros)
        .ok_or_else(|| StoreError::corrupt(format!("order time {micros} is out of range")))
}

/// The inverse of [`unix_micros`]; `None` for a value no timestamp has.
fn from_unix_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}
