-- A consent record keyed by its revision, keeping its receipt's signature (issue 16, a compact
-- store). Two things a record's row and its neighbours held twice:
--
-- - a grant's signature and context digest lived in `receipt_signatures`, a row (a 24-byte
--   header and a line pointer) and a primary key of their own keyed by the record's revision:
--   they are now two columns of the record (empty for refusals and withdrawals), found, and
--   erased, with it;
-- - `purpose` copied what the record's ledger entry says (every reader reads it from there);
-- - the subject's index held (subject, revision), a distinct key per record; on the subject
--   alone, a subject's records share one key and a list of row pointers (B-tree deduplication,
--   PostgreSQL 13 on), 6 bytes a record instead of ~40. A subject's history is read by that
--   index and sorted by revision: its records, not the table's.
--
-- The revision becomes the primary key (it was a unique constraint beside the id's key), so the
-- table keeps three indexes. It is copied once, as a new table, rather than updated in place
-- (which would leave the old version of every row behind until a vacuum).
CREATE TABLE consent_records_by_revision (
    revision          BIGINT  PRIMARY KEY,
    record_id         TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    receipt_context   BYTEA   NULL,
    receipt_signature BYTEA   NULL
);
INSERT INTO consent_records_by_revision
    (revision, record_id, subject, body, receipt_context, receipt_signature)
SELECT r.revision, r.record_id, r.subject, r.body, s.context, s.signature
FROM consent_records r LEFT JOIN receipt_signatures s ON s.revision = r.revision
ORDER BY r.revision;
DROP TABLE consent_records;
DROP TABLE receipt_signatures;
ALTER TABLE consent_records_by_revision RENAME TO consent_records;
ALTER INDEX consent_records_by_revision_pkey RENAME TO consent_records_pkey;
CREATE UNIQUE INDEX consent_records_by_id ON consent_records (record_id);
CREATE INDEX consent_records_by_subject ON consent_records (subject);
