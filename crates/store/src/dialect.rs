//! What differs between SQLite and PostgreSQL, in one trait the stores are generic over.
//!
//! Everything else is written once: statements use `$N` placeholders, which both accept, and
//! run over `sqlx::Any`; upserts (`ON CONFLICT … DO UPDATE SET x = excluded.x`) and
//! `RETURNING` read the same in both, so no SQL fragment varies but the ones below.

use crate::error::Error;
use crate::open::{Database, Migrations, Setup};
use crate::url::{Backend, Location};
use sqlx::AnyPool;
use std::future::Future;

/// A transaction over `sqlx::Any`.
pub type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// One database product. Implemented by [`crate::Sqlite`] and [`crate::Postgres`]; every item
/// is a constant, so a store generic over it pays for no branch on its hot paths.
pub trait Dialect: Send + Sync + 'static {
    /// The backend a URL must name for this dialect.
    const BACKEND: Backend;

    /// Opens a write transaction. SQLite: `BEGIN IMMEDIATE`, which takes the write lock at
    /// once, so a second process waits for it instead of failing to upgrade a read transaction,
    /// and which holds every other writer off until commit.
    const BEGIN_WRITE: &'static str;

    /// Whether [`Dialect::BEGIN_WRITE`] alone serializes writers (SQLite's single writer). Where
    /// it does not (PostgreSQL), a store that needs one writer at a time names its own lock
    /// (an advisory lock, a table lock) for [`begin_serialized`] to take.
    const BEGIN_SERIALIZES: bool;

    /// Run first in a read transaction that must see one snapshot. SQLite's WAL reader already
    /// does; PostgreSQL's default READ COMMITTED would see each statement's own snapshot.
    const SNAPSHOT: Option<&'static str>;

    /// Whether this process is the database's only writer, so it may keep what it wrote in
    /// memory and know exactly when that changes. An embedded SQLite file belongs to one
    /// service process; PostgreSQL is shared by replicas, whose writes this process would not
    /// see, so it reads through.
    const SINGLE_WRITER: bool;

    /// Whether multi-row INSERTs should number their parameters (`$1`, PostgreSQL) rather than
    /// use positional ones (`?`, SQLite). sqlx resolves each numbered SQLite parameter by
    /// scanning the statement's parameter names, which is quadratic in a multi-row INSERT's
    /// parameters (a 32-row access-log INSERT spent ~10 µs per row there); positional ones bind
    /// directly. See [`values`].
    const NUMBERED_PARAMETERS: bool;

    /// Whether one query may carry several statements separated by `;`, their parameters
    /// bound in turn (sqlx steps through SQLite's one after another). Where it may not
    /// (PostgreSQL's extended protocol prepares exactly one statement), several INSERTs travel
    /// as the data-modifying `WITH` clauses of one statement instead. Either way they cost one
    /// round trip, not one each.
    const STATEMENTS_IN_ONE_QUERY: bool;

    /// How a multi-row INSERT of a writing transaction begins (`{INSERT} INTO table …`), for
    /// callers that roll the whole transaction back when a statement fails (the consent
    /// store's group commit fails every write of the batch), so that nothing needs a statement
    /// to undo only its own rows. SQLite undoes them by default, and for that keeps a statement
    /// journal of every page the statement changes (spilled to a temporary file past 64 KiB):
    /// `INSERT OR FAIL` stops at the failing row without one. It was a sixth of SQLite's time
    /// in a bulk import (BENCHMARKS.md, thirteenth look). PostgreSQL has no such journal: plain
    /// `INSERT`.
    const INSERT: &'static str;

    /// The statement a writing transaction runs before it commits to announce its commit to the
    /// other replicas, with the channel as `$1` and the payload as `$2` (see [`crate::notify`]);
    /// `None` where no other process writes the database (SQLite).
    const NOTIFY: Option<&'static str>;

    /// Connects to `location` as `setup` asks, runs the service's migrations for this backend
    /// through a native connection, and opens the `sqlx::Any` pool the store works through.
    fn connect(
        location: Location<'_>,
        migrations: &Migrations,
        setup: &'static Setup,
    ) -> impl Future<Output = Result<Database, Error>> + Send;
}

/// Begins a write transaction (see [`Dialect::BEGIN_WRITE`]), unless the deadline of the call
/// it serves has passed ([`consentgate_deadline`]): a caller that gave up must not get a write
/// it never hears of.
pub async fn begin_write<D: Dialect>(pool: &AnyPool) -> Result<Tx<'static>, Error> {
    consentgate_deadline::time_left()?;
    Ok(pool.begin_with(D::BEGIN_WRITE).await?)
}

/// Begins a write transaction that no other writer, in this process or another, runs beside:
/// where `BEGIN` does not already serialize writers, `lock` (the store's own lock statement and
/// any settings of the transaction, with no parameters) runs first and holds them off until
/// commit. They go as one simple query, one round trip: a lone write's round trips, not its
/// commit, set its latency.
pub async fn begin_serialized<D: Dialect>(
    pool: &AnyPool,
    lock: &'static str,
) -> Result<Tx<'static>, sqlx::Error> {
    if D::BEGIN_SERIALIZES {
        pool.begin_with(D::BEGIN_WRITE).await
    } else {
        pool.begin_with(sqlx::AssertSqlSafe(format!("{}; {lock}", D::BEGIN_WRITE)))
            .await
    }
}

/// Begins a read transaction whose statements all see one snapshot (see [`Dialect::SNAPSHOT`]),
/// unless the deadline of the call it serves has passed, as [`begin_write`].
pub async fn begin_snapshot<D: Dialect>(pool: &AnyPool) -> Result<Tx<'static>, Error> {
    consentgate_deadline::time_left()?;
    let mut tx = pool.begin().await?;
    if let Some(sql) = D::SNAPSHOT {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// `$first, $first+1, …` for `count` values: a parameter list after other numbered ones (an
/// `IN (…)` following `$1`).
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` rows of `columns` parameters for a multi-row INSERT's `VALUES`, numbered or
/// positional as the dialect binds them best (see [`Dialect::NUMBERED_PARAMETERS`]).
pub fn values<D: Dialect>(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            if D::NUMBERED_PARAMETERS {
                format!("({})", placeholders(row * columns + 1, columns))
            } else {
                format!("({})", vec!["?"; columns].join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Postgres, Sqlite};

    #[test]
    fn parameter_lists() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(values::<Postgres>(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values::<Sqlite>(2, 3), "(?, ?, ?), (?, ?, ?)");
    }
}
