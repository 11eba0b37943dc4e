//! Opening a service's database from its URL: parse, connect, migrate, pool.

use crate::dialect::Dialect;
use crate::error::Error;
use crate::url::{Location, UrlError};
use sqlx::AnyPool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteSynchronous;
use std::path::PathBuf;

/// A service's migrations for both backends, each made by `sqlx::migrate!` from the service's
/// own `migrations/sqlite` and `migrations/postgres` directories (the schemas differ in types).
#[derive(Debug)]
pub struct Migrations {
    /// Run on SQLite databases.
    pub sqlite: Migrator,
    /// Run on PostgreSQL databases.
    pub postgres: Migrator,
}

/// How a service wants its connections set up: what its data's durability and load need.
#[derive(Debug)]
pub struct Setup {
    /// SQLite `synchronous` while migrating (the connection that also switches the file to
    /// WAL). FULL where a returned write is a promise that must survive power loss (consent
    /// revisions); NORMAL where losing the last commits to a power cut is acceptable.
    pub synchronous: SqliteSynchronous,
    /// Statements every pooled SQLite connection runs when it opens (`PRAGMA synchronous`,
    /// `busy_timeout`, …): SQLite keeps these per connection, not in the file. Empty: none.
    pub sqlite_pragmas: &'static [&'static str],
    /// Pooled connections to a SQLite file (an in-memory database gets one).
    pub sqlite_connections: u32,
    /// Pooled PostgreSQL connections.
    pub postgres_connections: u32,
}

/// An open, migrated database. Not `Debug`: it keeps the URL, which can carry a password.
pub struct Database {
    pub(crate) pool: AnyPool,
    pub(crate) backend: crate::Backend,
    /// See [`Database::file`].
    pub(crate) file: Option<PathBuf>,
    /// See [`Database::another_pool`].
    pub(crate) url: String,
    pub(crate) setup: &'static Setup,
}

impl Database {
    /// The pool the store works through.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool, for a store that keeps nothing else.
    pub fn into_pool(self) -> AnyPool {
        self.pool
    }

    /// The SQLite file, where the database is one (not in memory, not PostgreSQL): a store that
    /// owns the file may keep files of its own beside it.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// Commit notices from the other replicas sharing this database, heard on `channel`
    /// ([`crate::notify`]); `None` for SQLite, whose file has no other writer to hear from.
    pub async fn commit_notices(
        &self,
        channel: &'static str,
    ) -> Result<Option<crate::notify::Notices>, Error> {
        Ok(match self.backend {
            crate::Backend::Sqlite => None,
            crate::Backend::Postgres => Some(crate::notify::listen(&self.url, channel).await?),
        })
    }

    /// Every notification sent on `channel` through this database, as sent
    /// ([`crate::notify::Heard`]); `None` for SQLite, whose file has no other writer to hear from.
    pub async fn notifications(
        &self,
        channel: &'static str,
    ) -> Result<Option<crate::notify::Payloads>, Error> {
        Ok(match self.backend {
            crate::Backend::Sqlite => None,
            crate::Backend::Postgres => {
                Some(crate::notify::listen_payloads(&self.url, channel).await?)
            }
        })
    }

    /// A further pool of at most `max` connections to the same database, set up like the
    /// first: for work that should not wait behind the main pool or share its page cache.
    pub async fn another_pool(&self, max: u32) -> Result<AnyPool, Error> {
        Ok(match self.backend {
            crate::Backend::Sqlite => crate::sqlite::pool(&self.url, max, self.setup).await?,
            crate::Backend::Postgres => crate::postgres::pool(&self.url, max).await?,
        })
    }
}

/// Opens the database `url` names on dialect `D` (a URL naming the other backend is refused),
/// connecting as `setup` asks and running `migrations` first. A service's `open` picks `D` by
/// [`crate::backend`]`(url)`.
pub async fn open<D: Dialect>(
    url: &str,
    migrations: &Migrations,
    setup: &'static Setup,
) -> Result<Database, Error> {
    let location = Location::parse(url)?;
    if location.backend != D::BACKEND {
        return Err(UrlError::WrongBackend {
            expected: D::BACKEND,
            found: location.backend,
        }
        .into());
    }
    sqlx::any::install_default_drivers();
    D::connect(location, migrations, setup).await
}
