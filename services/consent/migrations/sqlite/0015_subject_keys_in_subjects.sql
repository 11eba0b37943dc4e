-- A subject's pseudonym key kept in its `subjects` row (issue 16, a compact store), and the
-- per-subject tables keyed by text stored as one tree each.
--
-- - `subject_keys` held one row per key beside the key's `subjects` row (its revision,
--   restriction and place in its order), under the same primary key: a second copy of every
--   subject id and a second tree. The key is now a column of the subject's row (empty for a
--   key that never needed a pseudonym). Erasure deletes the row, and with it the key
--   (crypto-shredding, as before). A key with no `subjects` row (written by a release that
--   bumped no revision for it) keeps its key in a row at revision 0, which reads as no state.
-- - A SQLite table whose primary key is not an integer keeps a rowid tree and a second tree for
--   the key, each holding the key's text: `subjects` and `consent_current` become WITHOUT ROWID
--   tables, one tree keyed by their primary key.
CREATE TABLE subjects_with_key (
    subject      TEXT    PRIMARY KEY,
    revision     INTEGER NOT NULL,
    restricted   INTEGER NOT NULL DEFAULT 0,
    order_micros BIGINT  NOT NULL DEFAULT 0,
    key          BLOB    NULL
) WITHOUT ROWID;
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

CREATE TABLE consent_current_by_key (
    subject      TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    revision     INTEGER NOT NULL,
    order_micros BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, purpose, channel, scope)
) WITHOUT ROWID;
INSERT INTO consent_current_by_key (subject, purpose, channel, scope, revision, order_micros)
SELECT subject, purpose, channel, scope, revision, order_micros FROM consent_current;
DROP TABLE consent_current;
ALTER TABLE consent_current_by_key RENAME TO consent_current;
