-- The current state per (subject, purpose, channel, scope) points at its record by revision
-- instead of holding a copy of the record's body (issue 16, a compact store): every consent
-- event wrote its body twice, once into history and once over the current row. Reads join
-- `consent_records` on its unique revision.
ALTER TABLE consent_current DROP COLUMN body;
