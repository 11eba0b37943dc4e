//! Test support shared by this crate's tests and the black-box tests: a private database per
//! test, on SQLite always and on PostgreSQL when `CONSENTGATE_TEST_POSTGRES_URL` names a server.

use sqlx::Connection;

/// The variable that names the PostgreSQL server for the PostgreSQL half of the store tests.
pub const POSTGRES_ENV: &str = "CONSENTGATE_TEST_POSTGRES_URL";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database on the server `CONSENTGATE_TEST_POSTGRES_URL` names.
    Postgres,
}

/// A private database for one test; PostgreSQL databases are dropped when it is dropped.
pub struct TestDb {
    /// The URL to open the store with.
    pub url: String,
    backend: Backend,
    admin_url: Option<String>,
    name: String,
    _dir: Option<TempDir>,
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backends this run covers: SQLite, plus PostgreSQL when configured. Says so plainly when
/// the PostgreSQL half is skipped; fails (never skips) when `CI` is set and it is not configured.
pub fn backends() -> Vec<Backend> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => vec![Backend::Sqlite, Backend::Postgres],
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!(
                "CI is set but {POSTGRES_ENV} is not: the PostgreSQL half of the store tests must run in CI"
            )
        }
        _ => {
            eprintln!(
                "NOTE: {POSTGRES_ENV} is not set: the PostgreSQL half of this test is NOT run (SQLite only)"
            );
            vec![Backend::Sqlite]
        }
    }
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn new(backend: Backend) -> TestDb {
        let name = format!("cg_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.join("consent.db").display());
                TestDb {
                    url,
                    backend,
                    admin_url: None,
                    name,
                    _dir: Some(TempDir(dir)),
                }
            }
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_ENV).expect("checked by backends()");
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES_ENV} is unreachable: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let url = match admin.rfind('/') {
                    Some(i)
                        if admin[..i].contains("://") && i > admin.find("://").unwrap_or(0) + 2 =>
                    {
                        format!("{}/{name}", &admin[..i])
                    }
                    _ => format!("{admin}/{name}"),
                };
                TestDb {
                    url,
                    backend,
                    admin_url: Some(admin),
                    name,
                    _dir: None,
                }
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return;
        };
        let name = self.name.clone();
        // Dropping runs outside any runtime the test may still hold: use a private one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// The ledger so far, for tests that prove what it holds (that erasure left no id in it, say).
pub async fn ledger(
    engine: &crate::engine::Engine,
) -> Result<Vec<crate::model::LedgerEntry>, crate::store::StoreError> {
    engine.store().ledger(0, u32::MAX).await
}

/// The engine's signing keys, for tests that start another replica over the same database.
pub fn signing_keys(engine: &crate::engine::Engine) -> std::sync::Arc<crate::ledger::LedgerKeys> {
    engine.keys().clone()
}

/// The consent store's write lock held from outside the service, on a connection of its own:
/// SQLite's single writer (`BEGIN IMMEDIATE`), PostgreSQL's advisory write lock. While it is
/// held, writes wait (and queue up for the next group commit); tests use it to make a deadline
/// pass or a batch form.
pub struct WriteLock(sqlx::AnyConnection);

impl WriteLock {
    /// Takes the lock of the consent database at `url`.
    pub async fn take(url: &str) -> WriteLock {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(url)
            .await
            .expect("a second connection");
        let statement = if url.starts_with("sqlite") {
            "BEGIN IMMEDIATE"
        } else {
            "SELECT pg_advisory_lock(1668247155)"
        };
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect("the write lock");
        WriteLock(connection)
    }

    /// Lets the writers go.
    pub async fn release(mut self, url: &str) {
        let statement = if url.starts_with("sqlite") {
            "ROLLBACK"
        } else {
            "SELECT pg_advisory_unlock(1668247155)"
        };
        sqlx::query(statement)
            .execute(&mut self.0)
            .await
            .expect("released");
    }
}
