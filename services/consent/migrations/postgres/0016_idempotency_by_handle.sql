-- Idempotency records found by a digest of their caller and key (issue 16, a compact store).
-- A record kept the caller and the key in clear, and a unique index on both: ~40 bytes of text
-- twice per write, for a lookup that only asks "was this (caller, key) used?". A record now
-- keeps a 16-byte handle, the first half of SHA-256(caller's length as 4 big-endian bytes ‖
-- caller ‖ key) (`store::idempotency::handle`), and the first 16 bytes of the request's
-- fingerprint: 128 bits tell keys and requests apart as surely as the text did, for any number
-- of keys a window can hold. The copy of an answer that records from before migration 0006
-- kept (`outcome`) goes too: since migration 0011 every record names its revision, from which
-- the answer is rebuilt.
--
-- The records already held move to the new table when the service first starts on this
-- schema (`store::idempotency::move_held_records`), not here: SQLite has no SHA-256 in SQL,
-- and one procedure for both backends is one to test. Until they have moved, the service does
-- not serve (it moves them before it opens its port), so a retry of a key used before the
-- upgrade is still answered once.
ALTER TABLE idempotency RENAME TO idempotency_held;
DROP INDEX idempotency_by_key;
ALTER INDEX idempotency_pkey RENAME TO idempotency_held_pkey;
CREATE TABLE idempotency (
    revision        BIGINT  PRIMARY KEY,
    created_at      BIGINT  NOT NULL,
    handle          BYTEA   NOT NULL,
    fingerprint     BYTEA   NOT NULL,
    records_deleted BIGINT  NULL
);
CREATE UNIQUE INDEX idempotency_by_handle ON idempotency (handle);
