-- The change stream read from the ledger (issue 16, a compact store): every change already has
-- its ledger entry at the same number (revisions are the ledger's sequence numbers), and the
-- entry holds the change's kind, purpose and time (`at`, taken in the same transaction as the
-- commit time `changes` kept). So the `changes` table, a second row and a second primary key
-- per event, goes; what the entry cannot give is the subject in clear, which the change stream
-- hands to every gate and erasure looks its revisions up by. It moves to the ledger as a column
-- outside the entry: the chain hashes the entry (`event`) alone, so clearing it at erasure, as
-- `changes.subject` was cleared, leaves every link verifiable.
--
-- A change from before migration 0003 had no commit time; its entry's time stands in for it
-- now (the same instant, to the microsecond, for every change written since).
ALTER TABLE ledger ADD COLUMN subject TEXT NULL;
UPDATE ledger SET subject = (SELECT c.subject FROM changes c WHERE c.revision = ledger.seq);
DROP TABLE changes;
-- Only the entries that still name someone: an erased subject's and an erasure's own name
-- nobody.
CREATE INDEX ledger_by_subject ON ledger (subject) WHERE subject IS NOT NULL;
