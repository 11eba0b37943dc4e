-- Compact idempotency records (issue 16): a key keeps the revision its write committed at (and,
-- for an erasure, how many records it deleted) instead of a copy of the answer, which a retry
-- rebuilds from the stored record and change. `outcome` is '' for such rows; rows from before
-- this migration keep their copy and are answered from it until they expire.
ALTER TABLE idempotency ADD COLUMN revision BIGINT NULL;
ALTER TABLE idempotency ADD COLUMN records_deleted BIGINT NULL;
