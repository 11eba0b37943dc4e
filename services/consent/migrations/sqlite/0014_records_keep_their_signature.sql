-- A consent record keyed by its revision, keeping its receipt's signature (issue 16, a compact
-- store). Three things a record's row and its neighbours held twice or spent a tree on:
--
-- - a grant's signature and context digest lived in `receipt_signatures`, a row and a primary
--   key of their own keyed by the record's revision: they are now two columns of the record
--   (empty for refusals and withdrawals), found, and erased, with it;
-- - the record was keyed by its id, so SQLite kept the table's rowid tree, a tree for the id
--   and a third for the unique revision: the revision is now the rowid (free), the id keeps its
--   unique index, and the subject's index needs no revision column (an index carries the rowid);
-- - `purpose` copied what the record's ledger entry says (every reader reads it from there).
CREATE TABLE consent_records_by_revision (
    revision          INTEGER PRIMARY KEY,
    record_id         TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    receipt_context   BLOB    NULL,
    receipt_signature BLOB    NULL
);
INSERT INTO consent_records_by_revision
    (revision, record_id, subject, body, receipt_context, receipt_signature)
SELECT r.revision, r.record_id, r.subject, r.body, s.context, s.signature
FROM consent_records r LEFT JOIN receipt_signatures s ON s.revision = r.revision
ORDER BY r.revision;
DROP TABLE consent_records;
DROP TABLE receipt_signatures;
ALTER TABLE consent_records_by_revision RENAME TO consent_records;
CREATE UNIQUE INDEX consent_records_by_id ON consent_records (record_id);
CREATE INDEX consent_records_by_subject ON consent_records (subject);
