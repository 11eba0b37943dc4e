//! SQLite, the embedded default: one file, WAL journal, `synchronous=FULL` so a returned revision
//! survives power loss.

use super::StoreError;
use super::sql::{Dialect, SqlStore};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite dialect.
pub struct Sqlite;

/// The consent store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

#[async_trait::async_trait]
impl Dialect for Sqlite {
    async fn connect(url: &str) -> Result<AnyPool, StoreError> {
        // Migrate through a native connection, which also creates the file and switches it to WAL
        // (journal mode is stored in the file, so every later connection uses it).
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let native = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&native).await?;
        native.close().await;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = AnyPoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 8 })
            // A file on this machine does not go stale like a network connection: without this,
            // every acquire pings the connection first, a second round trip to sqlx's worker
            // thread for each statement.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(pool)
    }

    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    const WRITE_LOCK: Option<&'static str> = None;
    const SNAPSHOT: Option<&'static str> = None;
}
