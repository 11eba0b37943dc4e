//! Storage behind one trait, with SQLite (embedded default) and PostgreSQL implementations that
//! pass the same conformance suite (`tests/store_conformance.rs`).
//!
//! Every write is one transaction that (1) answers a retried idempotency key from its record,
//! (2) updates the queryable projection, (3) appends a pseudonymized entry to the hash-chained
//! ledger and (4) signs a checkpoint every [`crate::ledger::CHECKPOINT_EVERY`] entries. Writes are
//! serialized (SQLite's single writer; a PostgreSQL advisory lock), which both the hash chain and
//! the gap-free revision sequence rely on.

mod batch;
mod handles;
mod lookup;
mod record;
mod sql;

pub use consentgate_store::{Dialect, Postgres as PostgresDialect, Sqlite as SqliteDialect};
pub use handles::handle as idempotency_handle;
pub use sql::{DEFAULT_IDEMPOTENCY_WINDOW, SqlStore};

use crate::ledger::keys::LedgerKeys;
use crate::model::{
    ChangeEvent, Checkpoint, HeldTombstone, LedgerEntry, StoredReceipt, StoredRecord, SubjectKey,
    SubjectRows, Write, WriteOutcome,
};
use consentgate_store::notify::Notices;
use consentgate_store::{Backend, Migrations, Setup, SqliteSynchronous};
use std::sync::Arc;

/// The consent store on SQLite.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// The consent store on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresDialect>;

/// The consent schema, for both backends.
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// SQLite runs `synchronous=FULL`, so a returned revision survives power loss: a revision is a
/// promise to every enforcer that caches by it. Its own checkpoint waits until the WAL holds
/// 8,192 pages (32 MiB at 4 KiB) instead of 1,000: a bulk import's batch alone dirties more than
/// 1,000, so SQLite checkpointed inside nearly every batch's commit, which every writer waits
/// for (9% of the import's samples; BENCHMARKS.md, fourteenth look). The background
/// checkpointer (`sql::checkpoint_in_background`) does that work off the commit path; SQLite's
/// stays the backstop should it fall behind.
static SETUP: Setup = Setup {
    synchronous: SqliteSynchronous::Full,
    sqlite_pragmas: &[
        "PRAGMA synchronous = FULL",
        "PRAGMA busy_timeout = 10000",
        "PRAGMA wal_autocheckpoint = 8192",
    ],
    sqlite_connections: 8,
    postgres_connections: 16,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An idempotency key was reused with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The subject was erased; nothing more may be recorded about it.
    #[error("the subject was erased")]
    SubjectErased,
    /// The database, its URL, or the stored data failed.
    #[error(transparent)]
    Store(#[from] consentgate_store::Error),
    /// The group commit this write was part of failed (the log-safe reason): nothing of the
    /// batch was committed, so a retry under the same key applies once.
    #[error("the group commit failed: {0}")]
    GroupCommitFailed(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Store(e.into())
    }
}

impl StoreError {
    /// Whether the call's deadline passed before the store work began (see
    /// [`consentgate_store::Error::is_deadline_exceeded`]).
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, StoreError::Store(e) if e.is_deadline_exceeded())
    }

    /// Stored data that could not be decoded.
    pub(crate) fn corrupt(detail: String) -> Self {
        StoreError::Store(consentgate_store::Error::Corrupt(detail))
    }

    /// A description safe for logs: database messages can quote row values (subject ids), so
    /// only the error's class and SQLSTATE code are kept (see
    /// [`consentgate_store::Error::log_safe`]).
    pub fn log_safe(&self) -> String {
        match self {
            StoreError::Store(e) => e.log_safe(),
            StoreError::IdempotencyConflict
            | StoreError::SubjectErased
            | StoreError::GroupCommitFailed(_) => self.to_string(),
        }
    }
}

/// The consent store.
#[async_trait::async_trait]
pub trait ConsentStore: Send + Sync + 'static {
    /// Records one change atomically and durably; returns only after commit (concurrent
    /// writes share a transaction and its commit: a group commit).
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError>;
    /// Records several changes as [`ConsentStore::write`] records one, in this order and in one
    /// group commit (more than one commit carries go in consecutive ones), each stored whole or
    /// not at all and answered on its own; `Err` when the caller's deadline passed before the
    /// rest were queued, or a commit was lost without an answer.
    async fn write_many(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;
    /// Everything decisions need about a subject, in one snapshot.
    async fn load_subject(&self, subject: &SubjectKey) -> Result<SubjectRows, StoreError>;
    /// The subject's consent events with revision > `after`, oldest first, at most `limit`.
    async fn history(
        &self,
        subject: &SubjectKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError>;
    /// Changes with revision > `after`, oldest first, at most `limit`; and the store's high water.
    async fn changes_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<ChangeEvent>, u64), StoreError>;
    /// A grant's receipt.
    async fn receipt(&self, record_id: &str) -> Result<Option<StoredReceipt>, StoreError>;
    /// Ledger entries with seq > `after`, at most `limit`.
    async fn ledger(&self, after: u64, limit: u32) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Forgets the idempotency keys first used before the idempotency window among the
    /// `limit` oldest; how many it forgot (a sweep is done when that is none).
    async fn sweep_idempotency(&self, limit: u32) -> Result<u64, StoreError>;
    /// Transactions the write path committed and the writes they carried (group commit).
    fn group_commits(&self) -> (u64, u64);
    /// Checkpoints covering entries with seq > `after`, by seq, at most `limit`.
    async fn checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError>;
    /// How far the ledger and its signed checkpoints reach (for metrics: two indexed lookups).
    async fn ledger_extent(&self) -> Result<LedgerExtent, StoreError>;
    /// Notices of commits through this database by any replica, on a connection of their own
    /// (PostgreSQL `LISTEN`); `None` where this process is the only writer (SQLite).
    async fn commit_notices(&self) -> Result<Option<Notices>, StoreError>;
    /// Which of these erasure tombstones the database holds.
    async fn tombstones_held(
        &self,
        tombstones: &[Vec<u8>],
    ) -> Result<Vec<HeldTombstone>, StoreError>;
    /// Tombstones after `after` in the order of their bytes, at most `limit`.
    async fn tombstones_after(&self, after: &[u8], limit: u32) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Inserts the tombstones it lacks (after a restore); how many were missing.
    async fn restore_tombstones(&self, tombstones: &[Vec<u8>]) -> Result<u64, StoreError>;
    /// The keys it holds something about despite holding their tombstone (after a restore).
    async fn erased_but_held(&self) -> Result<Vec<SubjectKey>, StoreError>;
}

/// The ledger's last entry and last signed checkpoint, by seq (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerExtent {
    /// The seq of the last entry (entries are never deleted, so also their number).
    pub last_entry: u64,
    /// The seq of the last signed checkpoint.
    pub last_checkpoint: u64,
    /// When the entry that checkpoint covers was written (`None`: no checkpoint yet).
    pub last_checkpoint_at: Option<time::OffsetDateTime>,
}

/// Opens the store a URL names (`sqlite://…` or `postgres://…`) and runs its migrations; it
/// remembers idempotency keys for [`DEFAULT_IDEMPOTENCY_WINDOW`].
pub async fn open(url: &str, keys: Arc<LedgerKeys>) -> Result<Arc<dyn ConsentStore>, StoreError> {
    open_with_window(url, keys, DEFAULT_IDEMPOTENCY_WINDOW).await
}

/// [`open`], remembering idempotency keys for `idempotency_window`.
pub async fn open_with_window(
    url: &str,
    keys: Arc<LedgerKeys>,
    idempotency_window: std::time::Duration,
) -> Result<Arc<dyn ConsentStore>, StoreError> {
    Ok(
        match consentgate_store::backend(url).map_err(consentgate_store::Error::from)? {
            Backend::Sqlite => {
                let store = Arc::new(
                    SqliteStore::connect(url, keys)
                        .await?
                        .with_idempotency_window(idempotency_window),
                );
                sql::checkpoint_in_background(&store);
                store
            }
            Backend::Postgres => Arc::new(
                PostgresStore::connect(url, keys)
                    .await?
                    .with_idempotency_window(idempotency_window),
            ),
        },
    )
}

#[async_trait::async_trait]
impl<D: Dialect> ConsentStore for SqlStore<D> {
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        SqlStore::write(self, write).await
    }
    async fn write_many(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        SqlStore::write_many(self, writes).await
    }
    async fn load_subject(&self, subject: &SubjectKey) -> Result<SubjectRows, StoreError> {
        SqlStore::load_subject(self, subject).await
    }
    async fn history(
        &self,
        subject: &SubjectKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        SqlStore::history(self, subject, after, limit).await
    }
    async fn changes_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<ChangeEvent>, u64), StoreError> {
        SqlStore::changes_after(self, after, limit).await
    }
    async fn receipt(&self, record_id: &str) -> Result<Option<StoredReceipt>, StoreError> {
        SqlStore::receipt(self, record_id).await
    }
    async fn ledger(&self, after: u64, limit: u32) -> Result<Vec<LedgerEntry>, StoreError> {
        SqlStore::ledger(self, after, limit).await
    }
    async fn sweep_idempotency(&self, limit: u32) -> Result<u64, StoreError> {
        SqlStore::sweep_idempotency(self, limit).await
    }
    fn group_commits(&self) -> (u64, u64) {
        SqlStore::group_commits(self)
    }
    async fn checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        SqlStore::checkpoints(self, after, limit).await
    }
    async fn ledger_extent(&self) -> Result<LedgerExtent, StoreError> {
        SqlStore::ledger_extent(self).await
    }
    async fn commit_notices(&self) -> Result<Option<Notices>, StoreError> {
        SqlStore::commit_notices(self).await
    }
    async fn tombstones_held(
        &self,
        tombstones: &[Vec<u8>],
    ) -> Result<Vec<HeldTombstone>, StoreError> {
        SqlStore::tombstones_held(self, tombstones).await
    }
    async fn tombstones_after(&self, after: &[u8], limit: u32) -> Result<Vec<Vec<u8>>, StoreError> {
        SqlStore::tombstones_after(self, after, limit).await
    }
    async fn restore_tombstones(&self, tombstones: &[Vec<u8>]) -> Result<u64, StoreError> {
        SqlStore::restore_tombstones(self, tombstones).await
    }
    async fn erased_but_held(&self) -> Result<Vec<SubjectKey>, StoreError> {
        SqlStore::erased_but_held(self).await
    }
}
