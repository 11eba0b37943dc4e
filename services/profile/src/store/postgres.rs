//! PostgreSQL, for production: replicas share the database; an advisory lock serializes access-log
//! appends across processes and snapshot reads use REPEATABLE READ.

use super::StoreError;
use super::sql::{Dialect, SqlStore};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;

/// The PostgreSQL dialect.
pub struct Postgres;

/// The profile store on PostgreSQL.
pub type PostgresStore = SqlStore<Postgres>;

#[async_trait::async_trait]
impl Dialect for Postgres {
    async fn connect(url: &str) -> Result<AnyPool, StoreError> {
        let native = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&native).await?;
        native.close().await;
        Ok(AnyPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?)
    }

    const BEGIN_WRITE: &'static str = "BEGIN";

    /// Key 0x70726f66 ("prof"): one access-log writer at a time across every replica.
    const WRITE_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(1886547814)");
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY");
}
