//! PostgreSQL, for production: replicas share the database, so writers serialize on a lock the
//! store names and snapshot reads use REPEATABLE READ.

use crate::dialect::Dialect;
use crate::error::Error;
use crate::open::{Database, Migrations, Setup};
use crate::url::{Backend, Location};
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AnyPool, Connection};
use std::time::Duration;

/// The PostgreSQL dialect.
#[derive(Debug)]
pub struct Postgres;

impl Dialect for Postgres {
    const BACKEND: Backend = Backend::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const BEGIN_SERIALIZES: bool = false;
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const SINGLE_WRITER: bool = false;
    const NUMBERED_PARAMETERS: bool = true;
    const STATEMENTS_IN_ONE_QUERY: bool = false;
    const INSERT: &'static str = "INSERT";
    const NOTIFY: Option<&'static str> = Some("SELECT pg_notify($1, $2)");

    async fn connect(
        location: Location<'_>,
        migrations: &Migrations,
        setup: &'static Setup,
    ) -> Result<Database, Error> {
        let native = PgPoolOptions::new()
            .max_connections(1)
            .connect(location.url)
            .await?;
        migrations.postgres.run(&native).await?;
        native.close().await;
        Ok(Database {
            backend: Backend::Postgres,
            pool: pool(location.url, setup.postgres_connections).await?,
            file: None,
            url: location.url.to_owned(),
            setup,
        })
    }
}

/// A connection handed out again within this long of its return to the pool is not pinged
/// first (see [`pool`]).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool of up to `max` connections to the database at `url`. A network connection can go
/// stale, so one is pinged before it is handed out, unless it came back to the pool less than
/// [`PING_IF_IDLE_FOR`] ago: sqlx pings every connection as it comes back (and drops one that
/// does not answer), so a second ping a moment later proves little and costs every
/// transaction a round trip (sqlx's default pings on both sides).
pub(crate) async fn pool(url: &str, max: u32) -> Result<AnyPool, Error> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await?)
}
