-- Imported records keep the order they arrive in (issue 16, bulk import): a row's key is now the
-- first 8 bytes of SHA-256(source), then the source record id itself (its 16 bytes when it is a
-- canonical UUID) (`store::handles::import_key`), instead of a 16-byte digest of both. An export
-- lists its records in the order its platform made them, and sequential ids, ULIDs and UUIDv7s
-- keep that order, so a batch's keys land side by side in the B-tree: under the digest each
-- record dirtied a random leaf (BENCHMARKS.md).
--
-- A digest cannot be undone: the rows already held move when the service first starts on this
-- schema (`store::handles::move_held_records`), before it serves, each keyed from the origin its
-- record's body keeps.
ALTER TABLE imported RENAME TO imported_by_digest;
ALTER INDEX imported_pkey RENAME TO imported_by_digest_pkey;
ALTER INDEX imported_revision_key RENAME TO imported_by_digest_revision_key;
CREATE TABLE imported (
    handle      BYTEA   PRIMARY KEY,
    revision    BIGINT  NOT NULL UNIQUE,
    fingerprint BYTEA   NOT NULL
);
