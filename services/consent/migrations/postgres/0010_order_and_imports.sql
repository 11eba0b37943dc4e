-- The order of a subject's consent events (issue 16, bulk import): records imported from another
-- platform arrive with their original times, years before records already held, so "the latest
-- record" is the latest by time, revision breaking ties, no longer simply the highest revision.
-- `order_micros` is when a row takes its place in that order (Unix microseconds): an imported
-- record's own collected-at; for one recorded live, its collected-at moved just past the
-- subject's previous change, so that live changes stay in revision order whatever the replicas'
-- clocks say. `subjects.order_micros` is the subject's latest, what the next live change must
-- follow.
ALTER TABLE consent_current ADD COLUMN order_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signals ADD COLUMN order_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subjects ADD COLUMN order_micros BIGINT NOT NULL DEFAULT 0;

-- Rows written before: each subject's times, as a running maximum in revision order, so the
-- order they already had (by revision) is kept exactly and an import compares against their
-- real times. Collected-at comes from the ledger entry, which every record has.
CREATE TEMP TABLE order_backfill AS
SELECT subject, revision, MAX(t) OVER (PARTITION BY subject ORDER BY revision) AS o
FROM (
    SELECT r.subject AS subject, r.revision AS revision,
           (extract(epoch FROM ((l.event::jsonb -> 'consent' ->> 'collected_at')::timestamptz)) * 1000000)::bigint AS t
    FROM consent_records r JOIN ledger l ON l.seq = r.revision
    UNION ALL
    SELECT subject, revision, (extract(epoch FROM recorded_at::timestamptz) * 1000000)::bigint
    FROM signals
) times;
UPDATE consent_current c SET order_micros = b.o FROM order_backfill b WHERE b.revision = c.revision;
UPDATE signals s SET order_micros = b.o FROM order_backfill b WHERE b.revision = s.revision;
UPDATE subjects s SET order_micros = m.o
FROM (SELECT subject, MAX(o) AS o FROM order_backfill GROUP BY subject) m
WHERE m.subject = s.subject;
DROP TABLE order_backfill;

-- Records imported from another platform, by the source's own record id: permanent (not the
-- expiring idempotency window), so a file imported twice, or resumed after an interruption,
-- lands once. The fingerprint tells a re-sent record from a different one under the same id.
-- Erasure deletes a subject's rows through its records. The id comes first in the key: one
-- import has one source, so a key led by the source tells rows apart not at all, and a database
-- without statistics yet (any new deployment) would scan every import to find a few.
CREATE TABLE imported (
    source           TEXT    NOT NULL,
    source_record_id TEXT    NOT NULL,
    revision         BIGINT  NOT NULL UNIQUE,
    fingerprint      BYTEA   NOT NULL,
    PRIMARY KEY (source_record_id, source)
);
