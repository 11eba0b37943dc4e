-- The change stream read from the ledger (issue 16, a compact store): every change already has
-- its ledger entry at the same number (revisions are the ledger's sequence numbers), and the
-- entry holds the change's kind, purpose and time (`at`, taken in the same transaction as the
-- commit time `changes` kept). So the `changes` table, a second row and a second primary key
-- per event, goes; what the entry cannot give is the subject in clear, which the change stream
-- hands to every gate and erasure looks its revisions up by. It moves to the ledger as a column
-- outside the entry: the chain hashes the entry (`event`) alone, so clearing it at erasure, as
-- `changes.subject` was cleared, leaves every link verifiable.
--
-- The ledger is copied once into a table with the column (an UPDATE of every entry would
-- leave the old version of each behind until a vacuum, doubling the table).
--
-- A change from before migration 0003 had no commit time; its entry's time stands in for it
-- now (the same instant, to the microsecond, for every change written since).
CREATE TABLE ledger_with_subject (
    seq        BIGINT  PRIMARY KEY,
    hash       BYTEA   NOT NULL,
    event      TEXT    NOT NULL,
    subject    TEXT    NULL
);
INSERT INTO ledger_with_subject (seq, hash, event, subject)
SELECT l.seq, l.hash, l.event, c.subject
FROM ledger l LEFT JOIN changes c ON c.revision = l.seq
ORDER BY l.seq;
DROP TABLE ledger;
DROP TABLE changes;
ALTER TABLE ledger_with_subject RENAME TO ledger;
ALTER INDEX ledger_with_subject_pkey RENAME TO ledger_pkey;
-- Only the entries that still name someone: an erased subject's and an erasure's own name
-- nobody.
CREATE INDEX ledger_by_subject ON ledger (subject) WHERE subject IS NOT NULL;
