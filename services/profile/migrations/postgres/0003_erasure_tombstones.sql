-- Erasure tombstones: for every erasure, the consent service's tombstone of the subject (hex of
-- an HMAC under a key only the consent service holds, so it names nobody here), kept so that a
-- consent database restored from a backup taken before the erasure can be given it back
-- (ReapplyErasures, docs/operations.md "Backup and restore"). Never deleted.
CREATE TABLE erasure_tombstones (
    tombstone TEXT PRIMARY KEY,
    recorded_at BIGINT NOT NULL
);
