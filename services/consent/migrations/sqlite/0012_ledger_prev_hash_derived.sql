-- The ledger's previous-hash link is derived, not stored (issue 16, a compact store): it is
-- always the stored hash of the entry before (the genesis hash for entry 1), so the verifier
-- reads it from there (`SqlStore::ledger` joins each entry to its predecessor) with the same
-- tamper evidence: an entry edited and re-hashed no longer links to the hash its successor was
-- computed from, and a suffix rewritten consistently contradicts the next signed checkpoint.
-- 32 bytes and their length less per entry.
ALTER TABLE ledger DROP COLUMN prev_hash;
