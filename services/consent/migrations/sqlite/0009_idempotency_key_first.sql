-- Idempotency records are found by key first (issue 16): the primary key was (caller, key),
-- and with few callers its first column tells rows apart hardly at all; a key is nearly unique
-- by itself, so (key, caller) finds each in one probe whatever the planner knows. SQLite
-- cannot change a primary key in place: the table is rebuilt with its indexes.
CREATE TABLE idempotency_by_key (
    caller          TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    fingerprint     BLOB    NOT NULL,
    outcome         TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL DEFAULT 0,
    revision        BIGINT  NULL,
    records_deleted BIGINT  NULL,
    PRIMARY KEY (key, caller)
);
INSERT INTO idempotency_by_key (caller, key, subject, fingerprint, outcome, created_at, revision, records_deleted)
    SELECT caller, key, subject, fingerprint, outcome, created_at, revision, records_deleted FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_by_key RENAME TO idempotency;
CREATE INDEX idempotency_by_subject ON idempotency (subject);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
