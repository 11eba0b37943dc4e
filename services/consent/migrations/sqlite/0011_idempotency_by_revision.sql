-- Idempotency records keyed by their write's revision (issue 16, a compact store): every record
-- names the one write it answers for, so the revision is its identity. As SQLite's rowid it
-- costs nothing, erasure finds a subject's records through `changes` (which already knows every
-- revision's subject) instead of a copy of the subject in each record and an index on it, and
-- the sweep walks the oldest revisions first instead of an index on the time of first use
-- (revisions are committed in time order, to the replicas' clock skew). The lookup by
-- (key, caller) keeps its unique index.
--
-- Records from before migration 0006 hold a copy of their answer instead of the revision: the
-- copy names it. One that names none cannot be erased with its subject, and goes (a retry of it
-- is then a new request); two naming the same revision (an erasure answered again under a new
-- key by an early release) keep the first, and the other key's retry meets an erasure that is
-- already done, which answers the same.
CREATE TABLE idempotency_by_revision (
    revision        INTEGER PRIMARY KEY,
    created_at      BIGINT  NOT NULL,
    caller          TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    fingerprint     BLOB    NOT NULL,
    outcome         TEXT    NOT NULL,
    records_deleted BIGINT  NULL
);
INSERT OR IGNORE INTO idempotency_by_revision (revision, created_at, caller, key, fingerprint, outcome, records_deleted)
SELECT revision, created_at, caller, key, fingerprint, outcome, records_deleted
FROM (
    SELECT CASE
               WHEN revision IS NOT NULL THEN revision
               WHEN json_valid(outcome) THEN CAST(json_extract(outcome, '$.revision') AS INTEGER)
           END AS revision,
           created_at, caller, key, fingerprint, outcome, records_deleted
    FROM idempotency
)
WHERE revision IS NOT NULL
ORDER BY created_at;
DROP TABLE idempotency;
ALTER TABLE idempotency_by_revision RENAME TO idempotency;
CREATE UNIQUE INDEX idempotency_by_key ON idempotency (key, caller);
