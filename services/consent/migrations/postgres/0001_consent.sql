-- The consent service's schema (PostgreSQL). Revisions are the ledger's sequence numbers.
CREATE TABLE ledger (
    seq        BIGINT PRIMARY KEY,
    prev_hash  BYTEA   NOT NULL,
    hash       BYTEA   NOT NULL,
    event      TEXT    NOT NULL
);
CREATE TABLE checkpoints (
    seq        BIGINT PRIMARY KEY,
    hash       BYTEA   NOT NULL,
    signature  BYTEA   NOT NULL
);
CREATE TABLE subject_keys (
    subject    TEXT    PRIMARY KEY,
    key        BYTEA   NOT NULL
);
CREATE TABLE subjects (
    subject    TEXT    PRIMARY KEY,
    revision   BIGINT NOT NULL,
    restricted BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE consent_records (
    record_id  TEXT    PRIMARY KEY,
    subject    TEXT    NOT NULL,
    revision   BIGINT NOT NULL UNIQUE,
    purpose    TEXT    NOT NULL,
    body       TEXT    NOT NULL
);
CREATE INDEX consent_records_by_subject ON consent_records (subject, revision);
CREATE TABLE signals (
    subject     TEXT    NOT NULL,
    revision    BIGINT NOT NULL,
    kind        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL
);
CREATE INDEX signals_by_subject ON signals (subject, revision);
CREATE TABLE links (
    device     TEXT    PRIMARY KEY,
    subject    TEXT    NOT NULL,
    revision   BIGINT NOT NULL
);
CREATE INDEX links_by_subject ON links (subject);
CREATE TABLE tombstones (
    tombstone  BYTEA   PRIMARY KEY,
    revision   BIGINT NOT NULL,
    erased_at  TEXT    NOT NULL
);
CREATE TABLE receipts (
    record_id    TEXT  PRIMARY KEY,
    subject      TEXT  NOT NULL,
    receipt_json TEXT  NOT NULL,
    jws          TEXT  NOT NULL
);
CREATE INDEX receipts_by_subject ON receipts (subject);
CREATE TABLE idempotency (
    caller      TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    fingerprint BYTEA  NOT NULL,
    outcome     TEXT   NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_by_subject ON idempotency (subject);
CREATE TABLE changes (
    revision   BIGINT PRIMARY KEY,
    subject    TEXT    NULL,
    kind       TEXT    NOT NULL,
    purpose    TEXT    NULL
);
CREATE INDEX changes_by_subject ON changes (subject);
-- The latest event per (subject, purpose, channel, scope): what decisions read, so a decision
-- costs the same however long a subject's history grows. '' stands for "none".
CREATE TABLE consent_current (
    subject    TEXT    NOT NULL,
    purpose    TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    revision   BIGINT NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (subject, purpose, channel, scope)
);
