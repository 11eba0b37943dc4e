//! The consent ledger: a SHA-256 hash chain over canonical, pseudonymized events, with Ed25519-
//! signed checkpoints, and the verifier that re-walks it and names the first broken link.
//!
//! Entries name subjects only by a pseudonym, HMAC-SHA-256 under a key kept per subject. Erasing a
//! subject deletes its key (crypto-shredding): the chain still verifies, but no longer identifies
//! the person. The chain itself (links, genesis, checkpoint messages) is `consentgate-chain`'s
//! [`RawLinks`](consentgate_chain::RawLinks) format.
//!
//! Rooms: [`keys`] (the signing keys by key id, the public keys that verify them, the tombstone
//! key), [`keyring`] (the key file: a bare seed or a keyring, rotation), [`entry`] (what the store writes: canonical
//! events, links, checkpoint cadence), [`verify`](mod@verify) (the walk over the store). The
//! store imports `keys` and `entry`, never `verify`.

pub mod entry;
pub mod keyring;
pub mod keys;
pub mod verify;

pub use entry::{
    CHECKPOINT_EVERY, GENESIS_HASH, canonical_event, chain_hash, checkpoint_message, pseudonym,
};
pub use keyring::{KeyFileError, Keyring};
pub use keys::{
    KeyLookupError, KeyStatus, LedgerKeys, PublicKey, VerifyingKeys, key_id, random_key,
};
pub use verify::{Start, VerifyReport, verify, verify_from};
