//! Handles: the 16-byte digests under which a write's idempotency key (migration 0016) is found,
//! with the first 16 bytes of the request's fingerprint, instead of the key and its caller in
//! clear beside a 32-byte fingerprint; the keys imported records are remembered under (migration
//! 0018, [`import_key`]); and the one-time moves of the records older releases kept in other
//! forms (`idempotency_held`, `imported_held`, `imported_by_digest`) into today's.

use super::batch::{Rows, Value};
use super::{StoreError, record};
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

/// Bytes of the source's digest an import key begins with: sources are few, and 64 bits keep
/// any two of them apart.
const SOURCE_BYTES: usize = 8;

/// What follows the source's digest in an import key: the id's text, or the 16 bytes of an id
/// that is a UUID in its canonical form (36 characters kept in 16).
const TEXT_ID: u8 = 0;
const UUID_ID: u8 = 1;

/// The key an imported record is remembered under for good: the first [`SOURCE_BYTES`] of
/// SHA-256(source), then the source record id itself (as 16 bytes when it is a canonical
/// UUID). Why not a digest of both, as until migration 0018: an export lists its records in
/// the order its platform made them, and sequential ids, ULIDs and UUIDv7s keep that order in
/// their text, so the keys of a batch land side by side in the table's B-tree instead of on a
/// random leaf each. A random leaf per record was a third of a SQLite import's time at 300,000
/// records, more as the table grew (BENCHMARKS.md, fifteenth and sixteenth looks). Ids in
/// random order (UUIDv4) stay random, in 25 bytes. The id is no secret here: the record's body
/// holds it in clear, and erasure deletes this row with the record.
pub(super) fn import_key(origin: &ImportOrigin) -> Vec<u8> {
    let id = &origin.source_record_id;
    let mut key = Vec::with_capacity(SOURCE_BYTES + 1 + id.len());
    key.extend_from_slice(&Sha256::digest(origin.source.as_bytes())[..SOURCE_BYTES]);
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().encode_lower(&mut canonical).as_bytes() == id.as_bytes() => {
            key.push(UUID_ID);
            key.extend_from_slice(u.as_bytes());
        }
        _ => {
            key.push(TEXT_ID);
            key.extend_from_slice(id.as_bytes());
        }
    }
    key
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
    row: fn(&AnyRow) -> Result<Vec<Value>, StoreError>,
}

/// Idempotency records kept under their caller and key (before migration 0016).
const IDEMPOTENCY: Held = Held {
    table: "idempotency_held",
    select: "SELECT revision, created_at, caller, key, fingerprint, records_deleted \
             FROM idempotency_held WHERE revision > $1 ORDER BY revision LIMIT $2",
    insert: "INTO idempotency (revision, created_at, handle, fingerprint, records_deleted) VALUES ",
    row: |r| {
        Ok(vec![
            Value::Int(r.get(0)),
            Value::Int(r.get(1)),
            Value::Bytes(handle(r.get(2), r.get(3))),
            Value::Bytes(stored_fingerprint(&r.get::<Vec<u8>, _>(4)).to_vec()),
            Value::MaybeInt(r.get(5)),
        ])
    },
};

/// Imported records kept under their source and source record id (before migration 0017).
const IMPORTED: Held = Held {
    table: "imported_held",
    select: "SELECT revision, source, source_record_id, fingerprint \
             FROM imported_held WHERE revision > $1 ORDER BY revision LIMIT $2",
    insert: "INTO imported (handle, revision, fingerprint) VALUES ",
    row: |r| {
        Ok(vec![
            Value::Bytes(import_key(&ImportOrigin {
                source: r.get(1),
                source_record_id: r.get(2),
            })),
            Value::Int(r.get(0)),
            Value::Bytes(stored_fingerprint(&r.get::<Vec<u8>, _>(3)).to_vec()),
        ])
    },
};

/// Imported records kept under a digest of their source and id (migration 0017 until 0018):
/// the digest cannot be undone, so each one's key comes from the origin its record's body keeps.
const IMPORTED_BY_DIGEST: Held = Held {
    table: "imported_by_digest",
    select: "SELECT i.revision, r.body, i.fingerprint \
             FROM imported_by_digest i JOIN consent_records r ON r.revision = i.revision \
             WHERE i.revision > $1 ORDER BY i.revision LIMIT $2",
    insert: "INTO imported (handle, revision, fingerprint) VALUES ",
    row: |r| {
        let revision: i64 = r.get(0);
        let origin = record::origin_of(&r.get::<String, _>(1)).ok_or_else(|| {
            StoreError::corrupt(format!(
                "imported record {revision}: its body names no source record"
            ))
        })?;
        Ok(vec![
            Value::Bytes(import_key(&origin)),
            Value::Int(revision),
            Value::Bytes(r.get(2)),
        ])
    },
};

/// Records moved per statement.
const MOVE_CHUNK: i64 = 1024;

/// Moves the records older releases kept in other forms (left by migrations 0016 and 0017 in
/// `idempotency_held` and `imported_held`, in clear, and by 0018 in `imported_by_digest`) into
/// today's tables, then drops the old ones; returns how many moved. Runs before the store
/// serves, so a retry of a key used before the upgrade is answered from its first write, and a
/// record imported before is not imported again.
///
/// One transaction per table under the ledger writers' lock: a second replica starting beside
/// this one waits, then finds the table gone and moves nothing. A record whose revision is
/// already in today's table (written by this release) keeps today's.
pub(super) async fn move_held_records<D: Dialect>(
    pool: &AnyPool,
    write_lock: &'static str,
) -> Result<u64, StoreError> {
    let mut moved = 0;
    for held in [IDEMPOTENCY, IMPORTED, IMPORTED_BY_DIGEST] {
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
        today.rows = rows.iter().map(held.row).collect::<Result<_, _>>()?;
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

    fn origin(source: &str, id: &str) -> ImportOrigin {
        ImportOrigin {
            source: source.into(),
            source_record_id: id.into(),
        }
    }

    #[test]
    fn import_keys_keep_an_exports_order_and_tell_sources_and_ids_apart() {
        // Sequential ids of one source sort as their text does, after the source's digest.
        let a = import_key(&origin("crm", "run-100000"));
        let b = import_key(&origin("crm", "run-100001"));
        assert!(a < b, "consecutive ids stay in order");
        assert_eq!(
            a[..SOURCE_BYTES],
            b[..SOURCE_BYTES],
            "one source, one prefix"
        );
        assert_eq!(&a[SOURCE_BYTES..], b"\0run-100000");
        assert_ne!(
            import_key(&origin("crm", "1")),
            import_key(&origin("erp", "1")),
            "the same id from two sources is two records"
        );
        // A canonical UUID is kept in 16 bytes, and UUIDv7s stay in the order they were made.
        let v7 = "0190a6f1-7b2c-7d3e-8f40-112233445566";
        let key = import_key(&origin("crm", v7));
        assert_eq!(key.len(), SOURCE_BYTES + 1 + 16);
        assert_eq!(key[SOURCE_BYTES], UUID_ID);
        let later = import_key(&origin("crm", "0190a6f1-7b2d-7000-8000-000000000000"));
        assert!(key < later, "a later UUIDv7 sorts after");
        // Any other spelling of a UUID is text: it names another record, and no 16-byte text id
        // can pass for a UUID's bytes.
        let upper = import_key(&origin("crm", &v7.to_uppercase()));
        assert_eq!(upper[SOURCE_BYTES], TEXT_ID);
        assert_ne!(upper, key);
        let sixteen = import_key(&origin("crm", "0123456789abcdef"));
        assert_eq!(sixteen[SOURCE_BYTES], TEXT_ID);
    }

    #[test]
    fn a_stored_fingerprint_is_the_first_16_bytes() {
        let fingerprint = [7u8; 32];
        assert_eq!(stored_fingerprint(&fingerprint), &[7u8; 16]);
        assert_eq!(stored_fingerprint(&[1, 2]), &[1, 2]);
    }
}
