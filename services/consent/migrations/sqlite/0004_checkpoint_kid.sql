-- The id of the key that signed each checkpoint (RFC 7638 thumbprint of its Ed25519 public key),
-- so that the signing key can rotate and every checkpoint is still verified with the key that
-- made it. Checkpoints written before this migration have none: the key of the bare seed file
-- signed them, and the keyring names it (`unlabelled_kid`).
ALTER TABLE checkpoints ADD COLUMN kid TEXT NULL;
