//! Storage behind one trait, with SQLite (embedded default) and PostgreSQL implementations that
//! pass the same conformance suite (`tests/store_conformance.rs`).
//!
//! Every write is one transaction that (1) answers a retried idempotency key from its record,
//! (2) updates the queryable projection, (3) appends a pseudonymized entry to the hash-chained
//! ledger and (4) signs a checkpoint every [`crate::ledger::CHECKPOINT_EVERY`] entries. Writes are
//! serialized (SQLite's single writer; a PostgreSQL advisory lock), which both the hash chain and
//! the gap-free revision sequence rely on.

mod postgres;
mod sql;
mod sqlite;

pub use postgres::PostgresStore;
pub use sql::{Dialect, SqlStore};
pub use sqlite::SqliteStore;

use crate::ledger::keys::LedgerKeys;
use crate::model::{
    ChangeEvent, Checkpoint, LedgerEntry, StoredReceipt, StoredRecord, SubjectKey, SubjectRows,
    Write, WriteOutcome,
};
use std::sync::Arc;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An idempotency key was reused with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The subject was erased; nothing more may be recorded about it.
    #[error("the subject was erased")]
    SubjectErased,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A description safe for logs: database messages can quote row values (subject ids), so
    /// only the error's class and SQLSTATE code are kept.
    pub fn log_safe(&self) -> String {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                format!(
                    "database error (code {})",
                    db.code().as_deref().unwrap_or("unknown")
                )
            }
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut => "database pool timed out".into(),
                sqlx::Error::PoolClosed => "database pool closed".into(),
                sqlx::Error::Io(_) => "database I/O error".into(),
                sqlx::Error::Tls(_) => "database TLS error".into(),
                sqlx::Error::Protocol(_) => "database protocol error".into(),
                _ => "database error".into(),
            },
            StoreError::Migrate(_) => "migration error".into(),
            StoreError::Corrupt(_) => "corrupt stored data".into(),
            StoreError::IdempotencyConflict | StoreError::SubjectErased => self.to_string(),
        }
    }
}

/// The consent store.
#[async_trait::async_trait]
pub trait ConsentStore: Send + Sync + 'static {
    /// Records one change atomically and durably; returns only after commit.
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError>;
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
    /// Every checkpoint, by seq.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}

/// Opens the store a URL names (`sqlite://…` or `postgres://…`) and runs its migrations.
pub async fn open(url: &str, keys: Arc<LedgerKeys>) -> Result<Arc<dyn ConsentStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, keys).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url, keys).await?))
    }
}

#[async_trait::async_trait]
impl<D: Dialect> ConsentStore for SqlStore<D> {
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        SqlStore::write(self, write).await
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
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        SqlStore::checkpoints(self).await
    }
}
