//! Handles: the 16-byte digests under which a write's idempotency key (migration 0016) and an
//! imported record's source record id (migration 0017) are found, with the first 16 bytes of the
//! request's fingerprint, instead of the key and its caller, or the id and its source, in clear
//! beside a 32-byte fingerprint; and the one-time move of the records an older release kept in
//! clear (`idempotency_held`, `imported_held`) into that form.

use super::StoreError;
use super::batch::{Rows, Value};
use crate::model::{ImportOrigin, Write};
use consentgate_store::{Backend, Dialect, begin_serialized};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

/// Bytes of a handle and of a stored fingerprint: 128 bits, which no two keys or requests a
/// store holds share by chance (a collision among 10^12 keys has odds below 10^-14).
const DIGEST_BYTES: usize = 16;

/// The handle of `name` within `scope` (an idempotency key of a caller, a source record id of a
/// source): the first half of SHA-256(the scope's length as 4 big-endian bytes ‖ scope ‖ name).
/// The length keeps ("ab", "c") and ("a", "bc") apart.
pub fn handle(scope: &str, name: &str) -> Vec<u8> {
    let mut digest = Sha256::new();
    digest.update(u32::try_from(scope.len()).unwrap_or(u32::MAX).to_be_bytes());
    digest.update(scope.as_bytes());
    digest.update(name.as_bytes());
    digest.finalize()[..DIGEST_BYTES].to_vec()
}

/// The handle of a write's idempotency key, scoped to its caller.
pub(super) fn handle_of(write: &Write) -> Vec<u8> {
    handle(&write.caller, &write.idempotency_key)
}

/// The handle of an imported record's source record id, scoped to its source.
pub(super) fn import_handle(origin: &ImportOrigin) -> Vec<u8> {
    handle(&origin.source, &origin.source_record_id)
}

/// The part of a request's fingerprint a record keeps.
pub(super) fn stored_fingerprint(fingerprint: &[u8]) -> &[u8] {
    &fingerprint[..fingerprint.len().min(DIGEST_BYTES)]
}

/// Records an older release kept in clear, where a migration left them, and how each becomes a
/// row of today's table.
struct Held {
    /// The table the migration renamed the old one to.
    table: &'static str,
    /// Selects `$2` of them after revision `$1`, in revision order; the revision first.
    select: &'static str,
    /// The head of today's multi-row INSERT (`INTO table (columns) VALUES `).
    insert: &'static str,
    /// Today's row for a held one.
    row: fn(&AnyRow) -> Vec<Value>,
}

/// Idempotency records kept under their caller and key (before migration 0016).
const IDEMPOTENCY: Held = Held {
    table: "idempotency_held",
    select: "SELECT revision, created_at, caller, key, fingerprint, records_deleted \
             FROM idempotency_held WHERE revision > $1 ORDER BY revision LIMIT $2",
    insert: "INTO idempotency (revision, created_at, handle, fingerprint, records_deleted) VALUES ",
    row: |r| {
        vec![
            Value::Int(r.get(0)),
            Value::Int(r.get(1)),
            Value::Bytes(handle(r.get(2), r.get(3))),
            Value::Bytes(stored_fingerprint(&r.get::<Vec<u8>, _>(4)).to_vec()),
            Value::MaybeInt(r.get(5)),
        ]
    },
};

/// Imported records kept under their source and source record id (before migration 0017).
const IMPORTED: Held = Held {
    table: "imported_held",
    select: "SELECT revision, source, source_record_id, fingerprint \
             FROM imported_held WHERE revision > $1 ORDER BY revision LIMIT $2",
    insert: "INTO imported (handle, revision, fingerprint) VALUES ",
    row: |r| {
        vec![
            Value::Bytes(handle(r.get(1), r.get(2))),
            Value::Int(r.get(0)),
            Value::Bytes(stored_fingerprint(&r.get::<Vec<u8>, _>(3)).to_vec()),
        ]
    },
};

/// Records moved per statement.
const MOVE_CHUNK: i64 = 1024;

/// Moves the records an older release kept in clear (left by migrations 0016 and 0017 in
/// `idempotency_held` and `imported_held`) into today's tables, then drops the old ones; returns
/// how many moved. Runs before the store serves, so a retry of a key used before the upgrade is
/// answered from its first write, and a record imported before is not imported again.
///
/// One transaction per table under the ledger writers' lock: a second replica starting beside
/// this one waits, then finds the table gone and moves nothing. A record whose revision is
/// already in today's table (written by this release) keeps today's.
pub(super) async fn move_held_records<D: Dialect>(
    pool: &AnyPool,
    write_lock: &'static str,
) -> Result<u64, StoreError> {
    let mut moved = 0;
    for held in [IDEMPOTENCY, IMPORTED] {
        moved += move_held::<D>(pool, write_lock, &held).await?;
    }
    Ok(moved)
}

async fn move_held<D: Dialect>(
    pool: &AnyPool,
    write_lock: &'static str,
    held: &Held,
) -> Result<u64, StoreError> {
    let exists = match D::BACKEND {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Backend::Postgres => {
            "SELECT COUNT(*) FROM pg_catalog.pg_tables \
             WHERE tablename = $1 AND schemaname = current_schema()"
        }
    };
    let count = |n: i64| n > 0;
    if !count(
        sqlx::query(exists)
            .bind(held.table)
            .fetch_one(pool)
            .await?
            .get(0),
    ) {
        return Ok(0);
    }
    let mut tx = begin_serialized::<D>(pool, write_lock).await?;
    if !count(
        sqlx::query(exists)
            .bind(held.table)
            .fetch_one(&mut *tx)
            .await?
            .get(0),
    ) {
        return Ok(0);
    }
    let mut moved = 0u64;
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(held.select)
            .bind(after)
            .bind(MOVE_CHUNK)
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.get(0);
        moved += rows.len() as u64;
        let mut today = Rows::new(held.insert, " ON CONFLICT DO NOTHING");
        today.rows = rows.iter().map(held.row).collect();
        today.insert::<D>(&mut tx).await?;
    }
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {}", held.table)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_tell_scopes_and_names_apart_and_are_16_bytes() {
        let h = handle("ab", "c");
        assert_eq!(h.len(), DIGEST_BYTES);
        assert_ne!(h, handle("a", "bc"), "the scope's length is in the digest");
        assert_ne!(h, handle("ab", "d"));
        assert_eq!(h, handle("ab", "c"));
        // The exact bytes: a change to them forgets every key and import held at an upgrade.
        let mut expected = Sha256::new();
        expected.update([0, 0, 0, 17]);
        expected.update(b"preference-centerk-1");
        assert_eq!(
            handle("preference-center", "k-1"),
            expected.finalize()[..16].to_vec()
        );
    }

    #[test]
    fn a_stored_fingerprint_is_the_first_16_bytes() {
        let fingerprint = [7u8; 32];
        assert_eq!(stored_fingerprint(&fingerprint), &[7u8; 16]);
        assert_eq!(stored_fingerprint(&[1, 2]), &[1, 2]);
    }
}
