-- Idempotency records are found by key first (issue 16): the primary key was (caller, key),
-- and with few callers its first column tells rows apart hardly at all, so until statistics
-- said otherwise (a fresh database, its first minute) PostgreSQL's plan for a group commit's
-- lookup of 64 keys walked every record of the caller: 10 ms a batch at 20,000 records.
-- A key is nearly unique by itself; (key, caller) finds each in one probe whatever the
-- statistics say.
ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
ALTER TABLE idempotency ADD PRIMARY KEY (key, caller);
