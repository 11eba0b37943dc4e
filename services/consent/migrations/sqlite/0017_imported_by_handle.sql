-- Imported records found by a digest of their source and source record id (issue 16, a compact
-- store), as idempotency records are since migration 0016: the table kept the source and the
-- id in clear under a primary key on both (~100 bytes a record with its index, for a lookup
-- that only asks "was this record imported, and with what content?"). A row now keeps a
-- 16-byte handle, the first half of SHA-256(the source's length as 4 big-endian bytes ‖ source
-- ‖ source record id) (`store::handles::handle`), the revision, and the first 16 bytes of the
-- record's fingerprint. The source and its id stay in the record's body, where export reads
-- them.
--
-- The rows already held move when the service first starts on this schema
-- (`store::handles::move_held_records`), before it serves, as migration 0016's do.
ALTER TABLE imported RENAME TO imported_held;
CREATE TABLE imported (
    handle      BLOB    PRIMARY KEY,
    revision    INTEGER NOT NULL UNIQUE,
    fingerprint BLOB    NOT NULL
) WITHOUT ROWID;
