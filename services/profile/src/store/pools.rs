//! The pools the profile store works through: on a SQLite file, the access log's appends get a
//! connection of their own and WAL checkpoints run in the background; elsewhere one pool serves.

use super::{MIGRATIONS, SETUP, StoreError};
use consentgate_store::Dialect;
use consentgate_store::notify::Payloads;
use sqlx::AnyPool;
use std::path::PathBuf;
use std::time::Duration;

/// The pools a store works through.
pub struct Pools {
    /// Profile data, requests, keys.
    pub main: AnyPool,
    /// Access-log appends. SQLite gives them a connection of their own, whose page cache then
    /// stays valid from one append to the next (a connection whose file another connection
    /// wrote re-reads its pages); PostgreSQL shares the main pool: appends from replicas
    /// serialize on a table lock, not on a connection.
    pub log: AnyPool,
    /// The database file, where reads are journaled before they are chained (see
    /// [`super::journal`]): a SQLite file this process owns; `None` for PostgreSQL and in-memory
    /// databases, where every read's entry is committed to the table directly.
    pub journal: Option<PathBuf>,
    /// Changes announced by the replicas sharing the database (PostgreSQL; see
    /// [`super::held`]); `None` where this process is the only writer.
    pub notices: Option<Payloads>,
}

impl Pools {
    /// Opens the database `url` names on `D`, migrating it.
    pub async fn open<D: Dialect>(url: &str) -> Result<Pools, StoreError> {
        let database = consentgate_store::open::<D>(url, &MIGRATIONS, &SETUP).await?;
        let journal = database.file().map(PathBuf::from);
        // An in-memory database exists once per connection, so there the log shares the only one.
        let log = if journal.is_some() {
            database.another_pool(1).await?
        } else {
            database.pool().clone()
        };
        if journal.is_some() {
            checkpoint_in_background(database.pool().clone());
        }
        let notices = database.notifications(super::held::CHANNEL).await?;
        Ok(Pools {
            notices,
            main: database.into_pool(),
            log,
            journal,
        })
    }
}

/// Copies the WAL into the file every 250 ms until `pool` closes: connections run with
/// `wal_autocheckpoint = 0` (see [`SETUP`]), so no request's commit pays for a checkpoint.
fn checkpoint_in_background(pool: AnyPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            // PASSIVE never blocks readers or writers; it copies what it can.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %StoreError::from(e).log_safe(), "WAL checkpoint failed");
            }
        }
    });
}
