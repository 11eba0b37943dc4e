//! Which database a URL names: the one parser behind every service's `open`.
//!
//! Accepted: `sqlite://PATH` (also `sqlite:PATH` and `sqlite::memory:`, as sqlx reads them) and
//! `postgres://…` or `postgresql://…`. Anything else is refused by name of its scheme; the rest
//! of the URL, which can carry a password, is never repeated.

/// The database products a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one file owned by one service process, the embedded default.
    Sqlite,
    /// PostgreSQL: shared by replicas, the production store.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// A database URL, parsed: which backend, and whether the database lives only in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'a> {
    /// The URL as given, for the drivers.
    pub url: &'a str,
    /// The backend the scheme names.
    pub backend: Backend,
    /// A SQLite database that exists in memory only (`:memory:` or `mode=memory`): it gets
    /// one connection and no file of its own.
    pub in_memory: bool,
}

/// Why a database URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL names a scheme no store runs on.
    #[error("unsupported database URL scheme `{0}`: expected sqlite://PATH or postgres://…")]
    UnknownScheme(String),
    /// The URL has no scheme (`name://`) at all.
    #[error("the database URL has no scheme: expected sqlite://PATH or postgres://…")]
    NoScheme,
    /// The URL names another backend than the store being opened runs on.
    #[error("this store runs on {expected}, but the database URL names {found}")]
    WrongBackend {
        /// The store's backend.
        expected: Backend,
        /// The URL's.
        found: Backend,
    },
}

impl<'a> Location<'a> {
    /// Parses `url`; see the module documentation for what is accepted.
    pub fn parse(url: &'a str) -> Result<Location<'a>, UrlError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location {
                url,
                backend: Backend::Postgres,
                in_memory: false,
            });
        }
        if url.starts_with("sqlite:") {
            return Ok(Location {
                url,
                backend: Backend::Sqlite,
                in_memory: url.contains(":memory:") || url.contains("mode=memory"),
            });
        }
        Err(scheme_error(url))
    }
}

/// The backend `url` names: what a service's `open` dispatches on.
pub fn backend(url: &str) -> Result<Backend, UrlError> {
    Location::parse(url).map(|l| l.backend)
}

/// The error for a URL with no accepted scheme. The scheme is named only when it is one
/// (RFC 3986 letters, digits, `+-.`, followed by `://`): in `user:password@host` the text
/// before the colon is a user name, not a scheme.
fn scheme_error(url: &str) -> UrlError {
    match url.split_once("://") {
        Some((scheme, _))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            UrlError::UnknownScheme(scheme.to_owned())
        }
        _ => UrlError::NoScheme,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (Backend, bool) {
        let l = Location::parse(url).expect("accepted");
        assert_eq!(l.url, url);
        (l.backend, l.in_memory)
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            parsed("sqlite:///var/lib/cg/consent.db"),
            (Backend::Sqlite, false)
        );
        assert_eq!(parsed("sqlite://data/profile.db"), (Backend::Sqlite, false));
        assert_eq!(parsed("sqlite:relative.db"), (Backend::Sqlite, false));
        assert_eq!(parsed("sqlite::memory:"), (Backend::Sqlite, true));
        assert_eq!(
            parsed("sqlite://file:shared?mode=memory&cache=shared"),
            (Backend::Sqlite, true)
        );
    }

    #[test]
    fn postgres_urls() {
        assert_eq!(
            parsed("postgres://postgres@127.0.0.1:5432/test"),
            (Backend::Postgres, false)
        );
        assert_eq!(
            parsed("postgresql://app:secret@db.internal/consent?sslmode=require"),
            (Backend::Postgres, false)
        );
        assert_eq!(backend("postgres://h/db"), Ok(Backend::Postgres));
        assert_eq!(backend("sqlite://x.db"), Ok(Backend::Sqlite));
    }

    #[test]
    fn unknown_scheme_is_named_without_credentials() {
        let err = Location::parse("mysql://app:hunter2@db.internal/consent").unwrap_err();
        assert_eq!(err, UrlError::UnknownScheme("mysql".into()));
        let text = err.to_string();
        assert!(text.contains("`mysql`"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("db.internal"),
            "{text}"
        );
    }

    #[test]
    fn text_that_is_not_a_scheme_is_not_repeated() {
        for url in [
            "app:hunter2@db.internal/consent",
            "/var/lib/cg/consent.db",
            "",
            "app:hunter2@db://x",
            "POSTGRES",
        ] {
            let err = Location::parse(url).unwrap_err();
            assert_eq!(err, UrlError::NoScheme, "{url}");
            assert!(!err.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn schemes_are_matched_exactly() {
        // Case and near-misses are refused rather than guessed at.
        assert_eq!(
            Location::parse("Postgres://h/db").unwrap_err(),
            UrlError::UnknownScheme("Postgres".into())
        );
        assert_eq!(
            Location::parse("postgre://h/db").unwrap_err(),
            UrlError::UnknownScheme("postgre".into())
        );
    }
}
