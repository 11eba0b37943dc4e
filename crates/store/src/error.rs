//! The failures every store shares, and the one form of them that may be written to logs.

use crate::url::UrlError;

/// A storage failure any service's store can have. Each service's `StoreError` wraps it beside
/// the failures of its own domain (an idempotency conflict, a write its decision does not cover).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database URL was refused.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The deadline of the call the transaction would serve had passed, so it was not begun.
    #[error(transparent)]
    DeadlineExceeded(#[from] consentgate_deadline::Expired),
}

impl Error {
    /// Whether the transaction was not begun because its call's deadline had passed: the
    /// caller's doing, not a store failure, so it is answered `DEADLINE_EXCEEDED` and not logged
    /// as a failure.
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, Error::DeadlineExceeded(_))
    }

    /// A description safe for logs. Database messages can quote row values (subject ids,
    /// personal data) and connection errors can quote the URL with its password, so only the
    /// error's class and SQLSTATE code are kept; a corrupt row's detail stays out too.
    pub fn log_safe(&self) -> String {
        match self {
            Error::Database(sqlx::Error::Database(db)) => format!(
                "database error (code {})",
                db.code().as_deref().unwrap_or("unknown")
            ),
            Error::Database(e) => match e {
                sqlx::Error::PoolTimedOut => "database pool timed out",
                sqlx::Error::PoolClosed => "database pool closed",
                sqlx::Error::Io(_) => "database I/O error",
                sqlx::Error::Tls(_) => "database TLS error",
                sqlx::Error::Protocol(_) => "database protocol error",
                sqlx::Error::Configuration(_) => "database configuration error",
                _ => "database error",
            }
            .into(),
            Error::Migrate(_) => "migration error".into(),
            Error::Corrupt(_) => "corrupt stored data".into(),
            // Names the scheme at most, never the rest of the URL.
            Error::Url(e) => e.to_string(),
            Error::DeadlineExceeded(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A database error whose message quotes a row value, as PostgreSQL's and SQLite's do.
    #[derive(Debug)]
    struct Quoting;

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message_text())
        }
    }

    impl Quoting {
        fn message_text(&self) -> &'static str {
            "duplicate key value violates unique constraint: (subject)=(s:alice@example.com)"
        }
    }

    impl std::error::Error for Quoting {}

    impl sqlx::error::DatabaseError for Quoting {
        fn message(&self) -> &str {
            self.message_text()
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some("23505".into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::UniqueViolation
        }
    }

    const SECRETS: [&str; 3] = ["alice", "hunter2", "db.internal"];

    fn assert_clean(e: &Error, expected: &str) {
        let safe = e.log_safe();
        assert_eq!(safe, expected);
        for secret in SECRETS {
            assert!(!safe.contains(secret), "{safe} leaks {secret}");
        }
    }

    #[test]
    fn database_errors_keep_only_their_code() {
        let e = Error::from(sqlx::Error::Database(Box::new(Quoting)));
        // The full form carries the value; the log form must not.
        assert!(e.to_string().contains("alice@example.com"));
        assert_clean(&e, "database error (code 23505)");
    }

    #[test]
    fn connection_errors_never_carry_the_url() {
        let url = "postgres://app:hunter2@db.internal/consent";
        let cases = [
            (
                sqlx::Error::Configuration(format!("bad URL {url}").into()),
                "database configuration error",
            ),
            (
                sqlx::Error::Io(std::io::Error::other(format!("refused: {url}"))),
                "database I/O error",
            ),
            (
                sqlx::Error::Tls(format!("handshake with {url}").into()),
                "database TLS error",
            ),
            (
                sqlx::Error::Protocol(format!("unexpected reply from {url}")),
                "database protocol error",
            ),
            (sqlx::Error::PoolTimedOut, "database pool timed out"),
            (sqlx::Error::PoolClosed, "database pool closed"),
            (
                sqlx::Error::ColumnNotFound("alice".into()),
                "database error",
            ),
        ];
        for (e, expected) in cases {
            assert_clean(&Error::from(e), expected);
        }
    }

    #[test]
    fn corrupt_rows_and_migrations_stay_out() {
        assert_clean(
            &Error::Corrupt("bad stored subject s:alice@example.com".into()),
            "corrupt stored data",
        );
        assert_clean(
            &Error::from(sqlx::migrate::MigrateError::Execute(sqlx::Error::Protocol(
                "postgres://app:hunter2@db.internal".into(),
            ))),
            "migration error",
        );
    }

    #[test]
    fn url_errors_name_the_scheme_only() {
        let e =
            Error::from(crate::Location::parse("mysql://app:hunter2@db.internal/x").unwrap_err());
        let safe = e.log_safe();
        assert!(safe.contains("mysql"), "{safe}");
        for secret in SECRETS {
            assert!(!safe.contains(secret), "{safe} leaks {secret}");
        }
    }
}
