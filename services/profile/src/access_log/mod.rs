//! The access log ("who read my data"): every gated read becomes an entry in a hash chain,
//! `h_n = SHA-256(h_{n-1} ‖ canonical(entry_n))` (`consentgate-chain`'s
//! [`HexLinks`](consentgate_chain::HexLinks) format), written by one task that records whatever
//! reads are waiting in one go (group commit).
//!
//! Entries name the subject by a pseudonym under a per-subject key; erasing the key
//! (crypto-shredding) leaves the chain verifiable and the entries anonymous.
//!
//! Rooms: [`entry`] (what the store writes: canonical form, link, pseudonym), [`writer`] (the
//! group-committing task), [`verify`](mod@verify) (the walk over the store). The store imports
//! `entry`, never `verify`.

pub mod entry;
pub mod verify;
pub mod writer;

pub use entry::{GENESIS, chain_hash, new_secret, pseudonym};
pub use verify::{Verification, verify};
pub use writer::AccessLog;
