//! Where profile data lives, behind one trait with a SQLite and a PostgreSQL implementation
//! that pass the same conformance suite (`tests/store_conformance.rs`).
//!
//! Every function that reads personal data takes a [`Clearance`], which only the gate can make,
//! and reads only the decision's subject and only the categories it allows. Writes take the
//! decision that allowed the collection and refuse an item it does not cover.

mod held;
mod journal;
mod pools;
mod sql;

pub use consentgate_store::{Dialect, Postgres as PostgresDialect, Sqlite as SqliteDialect};
pub use sql::SqlStore;

use crate::model::{
    AccessDraft, AccessRecord, Answer, Attribute, DsarRequest, Event, EventFields, EventKind,
    Holding, Requester, Table,
};
use consentgate_gate::Clearance;
use consentgate_store::{Backend, Migrations, Setup, SqliteSynchronous};
use std::sync::Arc;

/// The profile store on SQLite.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// The profile store on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresDialect>;

/// The profile schema, for both backends.
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// SQLite runs `synchronous=NORMAL`: a commit survives a crash of the process; a power loss can
/// take the last ones, never corrupting the file (the consent service, whose revisions are
/// promises, runs FULL). Checkpoints run in the background (see [`pools`]), not inside
/// whichever request's commit happens to cross the threshold: that stalled reads for ~15 ms.
static SETUP: Setup = Setup {
    synchronous: SqliteSynchronous::Normal,
    sqlite_pragmas: &[
        "PRAGMA synchronous = NORMAL",
        "PRAGMA busy_timeout = 10000",
        "PRAGMA wal_autocheckpoint = 0",
    ],
    sqlite_connections: 8,
    postgres_connections: 16,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write carried an item its decision does not allow (a bug in the caller: fail closed).
    #[error("the decision does not allow storing {0}")]
    NotAllowed(String),
    /// The database, its URL, or the stored data failed.
    #[error(transparent)]
    Store(#[from] consentgate_store::Error),
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

    /// A description safe for logs: database messages can quote row values (personal data), so
    /// only the error's class and SQLSTATE code are kept (see
    /// [`consentgate_store::Error::log_safe`]).
    pub fn log_safe(&self) -> String {
        match self {
            StoreError::Store(e) => e.log_safe(),
            StoreError::NotAllowed(_) => "write not covered by its decision".into(),
        }
    }
}

/// An attribute to store (the subject comes from the decision).
#[derive(Debug, Clone)]
pub struct NewAttribute {
    /// The attribute, with its provenance; its times are set by the store.
    pub attribute: Attribute,
}

/// Which events a read wants.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// At or after (µs).
    pub since: Option<i64>,
    /// Before (µs).
    pub until: Option<i64>,
    /// Continue after this `(occurred_at, event_id)` (newest first).
    pub after: Option<(i64, String)>,
    /// At most this many.
    pub limit: u32,
    /// The fields to read; the others are left empty. `kind` and `occurred_at` are always read
    /// (the decision is checked per kind's category).
    pub fields: EventFields,
}

/// The profile store.
#[async_trait::async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// Stores attributes, each under the decision that allowed its collection; one transaction.
    async fn put_attributes(&self, items: &[(&Clearance, Attribute)]) -> Result<(), StoreError>;
    /// Stores events the decision allowed; one transaction.
    async fn put_events(&self, decision: &Clearance, events: &[Event]) -> Result<(), StoreError>;
    /// Stores answers the decision allowed; one transaction.
    async fn put_answers(&self, decision: &Clearance, answers: &[Answer])
    -> Result<(), StoreError>;

    /// The decision's subject's attributes in the categories it allows.
    async fn attributes(&self, decision: &Clearance) -> Result<Vec<Attribute>, StoreError>;
    /// One round trip for `GetProfile`: the attributes the decision allows, and the holdings of
    /// every attribute category (counts only) for the redaction list.
    async fn profile_view(
        &self,
        decision: &Clearance,
    ) -> Result<(Vec<Attribute>, Vec<Holding>), StoreError>;
    /// The decision's subject's events in the categories it allows, newest first.
    async fn events(
        &self,
        decision: &Clearance,
        query: &EventQuery,
    ) -> Result<Vec<Event>, StoreError>;
    /// The decision's subject's answers in the categories it allows, oldest first.
    async fn answers(&self, decision: &Clearance) -> Result<Vec<Answer>, StoreError>;
    /// How much of one kind of data the decision's subject has per category and source (counts
    /// only, no values): what redactions summarize.
    async fn holdings(
        &self,
        decision: &Clearance,
        table: Table,
    ) -> Result<Vec<Holding>, StoreError>;
    /// Replaces an attribute's value if the decision allows its category, and records the
    /// completed `rectify` request, linked to the subject by its pseudonym, in the same
    /// transaction: a correction that happened is always provable. The request's detail names
    /// the attribute and its category, never a value. The updated attribute and the request;
    /// `None` (nothing written) when the subject has no attribute of that name.
    async fn rectify(
        &self,
        decision: &Clearance,
        name: &str,
        value: &str,
        requester: &Requester,
    ) -> Result<Option<(Attribute, DsarRequest)>, StoreError>;

    /// Deletes everything held about a subject (attributes, events, answers, its pseudonym key,
    /// which leaves its requests anonymous, and their notes); how many rows.
    async fn erase_subject(&self, subject_key: &str) -> Result<u64, StoreError>;
    /// Keeps erasure tombstones (hex, as the consent service made them); how many were new.
    async fn keep_tombstones(&self, tombstones: &[String]) -> Result<u64, StoreError>;
    /// Kept tombstones after `after` in their order, at most `limit`: what a restored consent
    /// database is given back.
    async fn tombstones_after(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    /// The subject keys this store holds anything about (attributes, events, answers, a
    /// pseudonym key) after `after` in their order, at most `limit`: what a restored profile
    /// database asks the consent service about.
    async fn subjects_after(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Deletes data of `category` collected before `cutoff` (µs); how many rows.
    async fn purge_before(&self, category: &str, cutoff: i64) -> Result<u64, StoreError>;

    /// Records gated reads durably: chained and committed to the log (the group commit), or,
    /// where the store journals (SQLite files), appended to the journal that
    /// [`ProfileStore::flush_access`] chains into the log.
    async fn append_access(&self, drafts: &[AccessDraft]) -> Result<(), StoreError>;
    /// Chains what this store journaled into the log (a no-op where nothing is journaled). The
    /// access-log writer calls it periodically; this store's own log reads call it first, so they
    /// see every read it recorded.
    async fn flush_access(&self) -> Result<(), StoreError>;
    /// The access-log entries of the decision's subject, oldest first (none once its key is
    /// erased).
    async fn access_entries(&self, decision: &Clearance) -> Result<Vec<AccessRecord>, StoreError>;
    /// Access-log entries with seq > `after`, oldest first, at most `limit` (for verification).
    async fn access_log_page(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AccessRecord>, StoreError>;

    /// Starts a data-subject request on behalf of `requester`, or returns the one started
    /// under any of the `idempotency` digests (current first, then older forms of the same key;
    /// a new request is stored under the first; none: not idempotent). `(request, created)`.
    async fn begin_request(
        &self,
        kind: &str,
        idempotency: &[&str],
        requester: &Requester,
    ) -> Result<(DsarRequest, bool), StoreError>;
    /// Records a request's new state and details.
    async fn update_request(&self, request: &DsarRequest) -> Result<(), StoreError>;
    /// A request by id.
    async fn request(&self, request_id: &str) -> Result<Option<DsarRequest>, StoreError>;
    /// The requests linked to the decision's subject (its rectifications), oldest first; none
    /// once its key is erased.
    async fn subject_requests(&self, decision: &Clearance) -> Result<Vec<DsarRequest>, StoreError>;
}

/// Opens the store a URL names (`sqlite://…` or `postgres://…`), migrating it.
pub async fn open(url: &str) -> Result<Arc<dyn ProfileStore>, StoreError> {
    Ok(
        match consentgate_store::backend(url).map_err(consentgate_store::Error::from)? {
            Backend::Sqlite => Arc::new(SqliteStore::connect(url).await?),
            Backend::Postgres => Arc::new(PostgresStore::connect(url).await?),
        },
    )
}
