-- The profile store. Times are microseconds since the Unix epoch (UTC). Subjects are keys
-- `s:<id>` (a person) or `d:<id>` (a device).

CREATE TABLE attributes (
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    category TEXT NOT NULL,
    source TEXT NOT NULL,
    partner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    collected_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (subject, name)
);
CREATE INDEX attributes_by_category ON attributes (category, collected_at);

CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    query TEXT NOT NULL,
    page TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    purpose TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX events_by_subject ON events (subject, occurred_at, event_id);
CREATE INDEX events_by_category ON events (category, recorded_at);

CREATE TABLE answers (
    answer_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    question_id TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    item_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    collected_at BIGINT NOT NULL
);
CREATE INDEX answers_by_subject ON answers (subject, collected_at);
CREATE INDEX answers_by_category ON answers (category, collected_at);

-- Per-subject keys of the access log's pseudonyms; deleting one crypto-shreds the subject's entries.
CREATE TABLE subject_keys (
    subject TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);

-- Who read whose data: a hash chain, h_n = SHA-256(h_{n-1} || canonical(entry_n)).
CREATE TABLE access_log (
    seq BIGINT PRIMARY KEY,
    read_at BIGINT NOT NULL,
    pseudonym TEXT NOT NULL,
    caller TEXT NOT NULL,
    enforced_by TEXT NOT NULL,
    purpose TEXT NOT NULL,
    categories TEXT NOT NULL,
    revision BIGINT NOT NULL,
    operation TEXT NOT NULL,
    items BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX access_log_by_pseudonym ON access_log (pseudonym, seq);

-- Data-subject requests (erasure, export, rectification). No subject ids: only the request's
-- outcome, so completion stays provable after the subject is gone.
CREATE TABLE dsar_requests (
    request_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    idempotency TEXT UNIQUE,
    state TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    completed_at BIGINT NOT NULL,
    detail TEXT NOT NULL
);
