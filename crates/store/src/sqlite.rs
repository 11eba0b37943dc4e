//! SQLite, the embedded default: one file owned by one service process, WAL journal, writers
//! serialized by `BEGIN IMMEDIATE`.

use crate::dialect::Dialect;
use crate::error::Error;
use crate::open::{Database, Migrations, Setup};
use crate::url::{Backend, Location};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite dialect.
#[derive(Debug)]
pub struct Sqlite;

impl Dialect for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const BEGIN_SERIALIZES: bool = true;
    const SNAPSHOT: Option<&'static str> = None;
    const SINGLE_WRITER: bool = true;
    const NUMBERED_PARAMETERS: bool = false;
    const STATEMENTS_IN_ONE_QUERY: bool = true;
    const INSERT: &'static str = "INSERT OR FAIL";
    const NOTIFY: Option<&'static str> = None;

    async fn connect(
        location: Location<'_>,
        migrations: &Migrations,
        setup: &'static Setup,
    ) -> Result<Database, Error> {
        // Migrate through a native connection, which also creates the file and switches it to
        // WAL (journal mode is stored in the file, so every later connection uses it).
        let options = SqliteConnectOptions::from_str(location.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(setup.synchronous)
            .busy_timeout(Duration::from_secs(10));
        let file = (!location.in_memory).then(|| options.get_filename().to_owned());
        let native = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        migrations.sqlite.run(&native).await?;
        native.close().await;
        // An in-memory database exists once per connection: keep exactly one.
        let max = if location.in_memory {
            1
        } else {
            setup.sqlite_connections
        };
        Ok(Database {
            backend: Backend::Sqlite,
            pool: pool(location.url, max, setup).await?,
            file,
            url: location.url.to_owned(),
            setup,
        })
    }
}

/// A pool of up to `max` connections to the database at `url`, each running the service's
/// per-connection pragmas when it opens.
pub(crate) async fn pool(url: &str, max: u32, setup: &'static Setup) -> Result<AnyPool, Error> {
    let mut options = AnyPoolOptions::new()
        .max_connections(max)
        // A file on this machine does not go stale like a network connection: without this,
        // every acquire pings the connection first, a second round trip to sqlx's worker
        // thread for each statement.
        .test_before_acquire(false);
    let pragmas = setup.sqlite_pragmas;
    if !pragmas.is_empty() {
        options = options.after_connect(move |conn, _| {
            Box::pin(async move {
                for pragma in pragmas {
                    sqlx::query(*pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        });
    }
    Ok(options.connect(url).await?)
}
