//! How an idempotency record names its key and its request (migration 0016): a 16-byte handle
//! digested from the caller and the key, and the first 16 bytes of the request's fingerprint,
//! instead of the key and the caller in clear beside a 32-byte fingerprint; and the one-time move
//! of the records an older release kept (`idempotency_held`) into that form.

use super::StoreError;
use crate::model::Write;
use consentgate_store::{Backend, Dialect, begin_serialized};
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

/// Bytes of a handle and of a stored fingerprint: 128 bits, which no two keys or requests a
/// window holds share by chance (a collision among 10^12 keys has odds below 10^-14).
const DIGEST_BYTES: usize = 16;

/// The handle of `caller`'s idempotency `key`: the first half of SHA-256(the caller's length as 4
/// big-endian bytes ‖ caller ‖ key). The length keeps ("ab", "c") and ("a", "bc") apart.
pub fn handle(caller: &str, key: &str) -> Vec<u8> {
    let mut digest = Sha256::new();
    digest.update(
        u32::try_from(caller.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    digest.update(caller.as_bytes());
    digest.update(key.as_bytes());
    digest.finalize()[..DIGEST_BYTES].to_vec()
}

/// The handle of a write's key.
pub(super) fn handle_of(write: &Write) -> Vec<u8> {
    handle(&write.caller, &write.idempotency_key)
}

/// The part of a request's fingerprint a record keeps.
pub(super) fn stored_fingerprint(fingerprint: &[u8]) -> &[u8] {
    &fingerprint[..fingerprint.len().min(DIGEST_BYTES)]
}

/// Records moved per statement: a bound on the parameters of one INSERT.
const MOVE_CHUNK: i64 = 500;

/// Moves the idempotency records an older release kept under their caller and key in clear
/// (left in `idempotency_held` by migration 0016) into today's form, then drops that table;
/// returns how many moved. Runs before the store serves, so a retry of a key used before the
/// upgrade is answered from its first write, not applied again.
///
/// One transaction under the ledger writers' lock: a second replica starting beside this one
/// waits, then finds the table gone and moves nothing. A record whose revision is already in
/// today's table (written by this release) keeps today's.
pub(super) async fn move_held_records<D: Dialect>(
    pool: &AnyPool,
    write_lock: &'static str,
) -> Result<u64, StoreError> {
    let held_table_exists = match D::BACKEND {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'idempotency_held'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM pg_catalog.pg_tables \
             WHERE tablename = 'idempotency_held' AND schemaname = current_schema()"
        }
    };
    let exists = |n: i64| n > 0;
    if !exists(sqlx::query(held_table_exists).fetch_one(pool).await?.get(0)) {
        return Ok(0);
    }
    let mut tx = begin_serialized::<D>(pool, write_lock).await?;
    if !exists(
        sqlx::query(held_table_exists)
            .fetch_one(&mut *tx)
            .await?
            .get(0),
    ) {
        return Ok(0);
    }
    let mut moved = 0u64;
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(
            "SELECT revision, created_at, caller, key, fingerprint, records_deleted \
             FROM idempotency_held WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(after)
        .bind(MOVE_CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.get(0);
        for row in &rows {
            let fingerprint: Vec<u8> = row.get(4);
            sqlx::query(
                "INSERT INTO idempotency (revision, created_at, handle, fingerprint, records_deleted) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(row.get::<i64, _>(0))
            .bind(row.get::<i64, _>(1))
            .bind(handle(row.get(2), row.get(3)))
            .bind(stored_fingerprint(&fingerprint).to_vec())
            .bind(row.get::<Option<i64>, _>(5))
            .execute(&mut *tx)
            .await?;
            moved += 1;
        }
    }
    sqlx::query("DROP TABLE idempotency_held")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_tell_callers_and_keys_apart_and_are_16_bytes() {
        let h = handle("ab", "c");
        assert_eq!(h.len(), DIGEST_BYTES);
        assert_ne!(h, handle("a", "bc"), "the caller's length is in the digest");
        assert_ne!(h, handle("ab", "d"));
        assert_eq!(h, handle("ab", "c"));
        // The exact bytes: a change to them forgets every key held at an upgrade.
        assert_eq!(hex::encode(handle("preference-center", "k-1")).len(), 32);
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
