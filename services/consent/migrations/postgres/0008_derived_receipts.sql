-- Receipts derived on demand (issue 16, a compact store): a receipt's payload is a function of
-- its consent record and a context shared by every grant of one purpose and scope in one
-- language under one policy and key, and Ed25519 signatures are deterministic, so a grant
-- keeps its 64-byte signature and the context's digest instead of the whole JWS (~2.5 KB).
-- Contexts hold policy text and a public key, nothing about a person. Receipts written before
-- stay in `receipts` and are answered as written.
CREATE TABLE receipt_contexts (
    digest     BYTEA   PRIMARY KEY,
    body       TEXT    NOT NULL
);
-- By the grant's revision (its consent record's unique revision): erasure deletes a subject's
-- signatures through its records, so no subject column or index is needed here.
CREATE TABLE receipt_signatures (
    revision   BIGINT  PRIMARY KEY,
    context    BYTEA   NOT NULL,
    signature  BYTEA   NOT NULL
);
