//! PostgreSQL, for production: replicas share the database; access-log
//! appends are optimistic (the sequence number is the primary key) with a locked fallback.

use super::StoreError;
use super::sql::{Dialect, Pools, SqlStore};
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;

/// The PostgreSQL dialect.
pub struct Postgres;

/// The profile store on PostgreSQL.
pub type PostgresStore = SqlStore<Postgres>;

#[async_trait::async_trait]
impl Dialect for Postgres {
    async fn connect(url: &str) -> Result<Pools, StoreError> {
        let native = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&native).await?;
        native.close().await;
        let main = AnyPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        // Appends from replicas serialize on a table lock, not on a connection: share the pool.
        Ok(Pools {
            log: main.clone(),
            main,
            journal: None,
        })
    }

    const BEGIN_WRITE: &'static str = "BEGIN";
    /// Conflicts with INSERT: other replicas' appends wait until this one commits.
    const CHAIN_LOCK: Option<&'static str> =
        Some("LOCK TABLE access_log IN SHARE ROW EXCLUSIVE MODE");
    const NUMBERED_PARAMETERS: bool = true;
    const SINGLE_WRITER: bool = false;
}
