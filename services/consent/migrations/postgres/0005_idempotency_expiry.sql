-- Idempotency keys expire (issue 16): each remembers when it was first used (microseconds since
-- the Unix epoch), so that a retry is answered from it only within the idempotency window, and
-- the sweep can forget older ones in index order. Keys from before this migration count from
-- the migration: they are kept for a whole window, as a retry of them may still be in flight.
ALTER TABLE idempotency ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
UPDATE idempotency SET created_at = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
