//! Storage plumbing the three services share, so that each service's store holds only its own
//! SQL and its own migrations.
//!
//! - [`Dialect`] is what truly differs between SQLite (the embedded default) and PostgreSQL
//!   (production): connection setup, how a write transaction begins and serializes writers,
//!   snapshot reads, parameter style. Stores are generic over it, so each difference is a
//!   constant the compiler folds away on the hot paths.
//! - [`open`] parses a database URL (one parser: [`backend`]), connects and runs the service's
//!   migrations ([`Migrations`]) with the service's [`Setup`].
//! - [`Error`] is the failure core every service's `StoreError` wraps; [`Error::log_safe`] is
//!   the only form of it that goes to logs.
//! - [`notify`] carries commit notices between replicas on PostgreSQL (`LISTEN`/`NOTIFY`).
//! - [`to_i64`] and [`to_u64`] convert between the databases' signed integers and the domain's
//!   unsigned ones.

mod dialect;
mod error;
mod int;
pub mod notify;
mod open;
mod postgres;
mod sqlite;
mod url;

pub use dialect::{
    Dialect, Tx, begin_serialized, begin_snapshot, begin_write, placeholders, values,
};
pub use error::Error;
pub use int::{to_i64, to_u64};
pub use open::{Database, Migrations, Setup, open};
pub use postgres::Postgres;
pub use sqlite::Sqlite;
pub use url::{Backend, Location, UrlError, backend};

/// SQLite durability levels, for [`Setup::synchronous`].
pub use sqlx::sqlite::SqliteSynchronous;
