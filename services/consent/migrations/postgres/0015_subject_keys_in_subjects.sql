-- A subject's pseudonym key kept in its `subjects` row (issue 16, a compact store).
-- `subject_keys` held one row per key beside the key's `subjects` row (its revision,
-- restriction and place in its order), under the same primary key: a second copy of every
-- subject id, a second row header and a second index. The key is now a column of the subject's
-- row (empty for a key that never needed a pseudonym). Erasure deletes the row, and with it the
-- key (crypto-shredding, as before). A key with no `subjects` row (written by a release that
-- bumped no revision for it) keeps its key in a row at revision 0, which reads as no state.
--
-- Copied once into a new table rather than updated in place (which would leave the old version
-- of every row behind until a vacuum).
CREATE TABLE subjects_with_key (
    subject      TEXT    PRIMARY KEY,
    revision     BIGINT  NOT NULL,
    restricted   BIGINT  NOT NULL DEFAULT 0,
    order_micros BIGINT  NOT NULL DEFAULT 0,
    key          BYTEA   NULL
);
INSERT INTO subjects_with_key (subject, revision, restricted, order_micros, key)
SELECT s.subject, s.revision, s.restricted, s.order_micros, k.key
FROM subjects s LEFT JOIN subject_keys k ON k.subject = s.subject;
INSERT INTO subjects_with_key (subject, revision, restricted, order_micros, key)
SELECT k.subject, 0, 0, 0, k.key
FROM subject_keys k
WHERE NOT EXISTS (SELECT 1 FROM subjects s WHERE s.subject = k.subject);
DROP TABLE subjects;
DROP TABLE subject_keys;
ALTER TABLE subjects_with_key RENAME TO subjects;
ALTER INDEX subjects_with_key_pkey RENAME TO subjects_pkey;
