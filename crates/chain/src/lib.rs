//! The hash chains that make consentgate's records tamper-evident: the consent ledger and the
//! profile access log are both chains `h_n = SHA-256(link(h_{n-1}) ‖ canonical(entry_n))`, and
//! this crate is the one implementation of them (docs/architecture.md §3 "Audit, proof and
//! transparency").
//!
//! The two chains were written with different link encodings, and every entry already stored
//! must keep verifying byte for byte, so the encoding is a type parameter ([`Links`]):
//! [`RawLinks`] (the consent ledger, version 1) feeds the previous hash's 32 raw bytes,
//! [`HexLinks`] (the access log, version 1) feeds its 64 lowercase hex digits. Known-answer
//! tests computed by the code before this crate pin both, so neither can drift silently.
//!
//! Pure: no I/O, no clock, no randomness. Stores chain and verifiers walk ([`Walk`]) with it.

mod canonical;
mod checkpoint;
mod link;
mod pseudonym;
mod walk;

pub use canonical::canonical_json;
pub use checkpoint::checkpoint_message;
pub use link::{GENESIS_HASH, GENESIS_HEX, HexLinks, Links, RawLinks, link_digest};
pub use pseudonym::{hmac_sha256, log_pseudonym, pseudonym};
pub use walk::{Break, Walk};
