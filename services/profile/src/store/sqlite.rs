//! SQLite, the embedded default: one file, WAL journal, `synchronous=NORMAL` (a commit survives a
//! crash of the process; a power loss can take the last ones, never corrupting the file), and
//! checkpoints in the background. The consent service, whose revisions are promises, runs FULL.

use super::StoreError;
use super::sql::{Dialect, Pools, SqlStore};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite dialect.
pub struct Sqlite;

/// The profile store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

#[async_trait::async_trait]
impl Dialect for Sqlite {
    async fn connect(url: &str) -> Result<Pools, StoreError> {
        // Migrate through a native connection, which also creates the file and switches it to WAL
        // (journal mode is stored in the file, so every later connection uses it).
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let native = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&native).await?;
        native.close().await;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = open_pool(url, if in_memory { 1 } else { 8 }).await?;
        // The access log's appends get a connection of their own (an in-memory database exists
        // once per connection, so there it shares the only one).
        let log = if in_memory {
            pool.clone()
        } else {
            open_pool(url, 1).await?
        };
        if !in_memory {
            let checkpointer = pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    if checkpointer.is_closed() {
                        return;
                    }
                    // PASSIVE never blocks readers or writers; it copies what it can.
                    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .execute(&checkpointer)
                        .await
                    {
                        tracing::warn!(error = %StoreError::from(e).log_safe(), "WAL checkpoint failed");
                    }
                }
            });
        }
        let journal = if in_memory {
            None
        } else {
            Some(
                SqliteConnectOptions::from_str(url)?
                    .get_filename()
                    .to_owned(),
            )
        };
        Ok(Pools {
            main: pool,
            log,
            journal,
        })
    }

    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const CHAIN_LOCK: Option<&'static str> = None;
    const NUMBERED_PARAMETERS: bool = false;
    const SINGLE_WRITER: bool = true;
}

/// A pool of up to `max` connections to the file at `url`, each set up for the store.
async fn open_pool(url: &str, max: u32) -> Result<AnyPool, StoreError> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        // A file on this machine does not go stale like a network connection: without this,
        // every acquire pings the connection first, a second round trip to sqlx's worker thread
        // for each statement.
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut *conn)
                    .await?;
                // Checkpoints run in the background (see `connect`), not inside whichever
                // request's commit happens to cross the threshold: that stalled reads for ~15 ms.
                sqlx::query("PRAGMA wal_autocheckpoint = 0")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}
