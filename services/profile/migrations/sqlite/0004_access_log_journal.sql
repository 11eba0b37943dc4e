-- Which SQLite access journal (services/profile/src/store/journal.rs) an entry was chained
-- from, on the first entry of each journal only, written in the statement that chains the
-- journal: a journal found again after a crash between that commit and the deletion of its file
-- is recognised and deleted, not chained twice. Not part of an entry's hash (bookkeeping, not
-- the read); NULL on every other entry, and on PostgreSQL, which keeps no journals.
ALTER TABLE access_log ADD COLUMN journal TEXT;
CREATE UNIQUE INDEX access_log_by_journal ON access_log (journal) WHERE journal IS NOT NULL;
