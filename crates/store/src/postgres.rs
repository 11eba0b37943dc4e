//! PostgreSQL, for production: replicas share the database, so writers serialize on a lock the
//! store names and snapshot reads use REPEATABLE READ.

use crate::dialect::Dialect;
use crate::error::Error;
use crate::open::{Database, Migrations, Setup};
use crate::url::{Backend, Location};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;

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

/// A pool of up to `max` connections to the database at `url`. Connections are checked before
/// each acquire (sqlx's default): a network connection can go stale.
pub(crate) async fn pool(url: &str, max: u32) -> Result<AnyPool, Error> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .connect(url)
        .await?)
}
