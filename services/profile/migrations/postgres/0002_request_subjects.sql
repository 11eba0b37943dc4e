-- Data-subject requests remember who asked (`requested_by`, a caller identity), and a request
-- about one subject's data (a rectification) is linked to that subject by its access-log
-- pseudonym, so that the subject's access report and export can list it. Erasure destroys the
-- pseudonym's key, which leaves the request anonymous but still provable, and clears `note`
-- (the free-text reason given with the request), the one field that could describe the person.
ALTER TABLE dsar_requests ADD COLUMN requested_by TEXT NOT NULL DEFAULT '';
ALTER TABLE dsar_requests ADD COLUMN pseudonym TEXT;
ALTER TABLE dsar_requests ADD COLUMN note TEXT NOT NULL DEFAULT '';
CREATE INDEX dsar_requests_by_pseudonym ON dsar_requests (pseudonym, requested_at);
