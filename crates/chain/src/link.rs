//! One link of a chain: SHA-256 over the previous link, as the chain stores it, and the entry's
//! canonical bytes; and the two ways a chain stores its links.

use sha2::{Digest, Sha256};

/// The hash before the first entry of a [`RawLinks`] chain: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// The hash before the first entry of a [`HexLinks`] chain: [`GENESIS_HASH`] in hex.
pub const GENESIS_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256(`prev_link` ‖ `canonical`): the one hash both chains compute. `prev_link` is the
/// previous link exactly as its chain feeds it ([`Links::fed`]), so the encoding of a stored
/// chain is never re-derived, only repeated.
pub fn link_digest(prev_link: &[u8], canonical: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_link);
    hasher.update(canonical.as_bytes());
    hasher.finalize().into()
}

/// How a chain stores its links, and so which bytes of the previous link the next one hashes.
/// A new chain format is a new implementation; the existing ones never change.
pub trait Links {
    /// A link as the chain stores it.
    type Link: Clone + PartialEq + std::fmt::Debug;
    /// The link before the first entry.
    fn genesis() -> Self::Link;
    /// The bytes of `link` the next link hashes.
    fn fed(link: &Self::Link) -> &[u8];
    /// A digest in the chain's stored form.
    fn stored(digest: [u8; 32]) -> Self::Link;
    /// The link of an entry whose canonical form is `canonical`, after `prev`.
    fn next(prev: &Self::Link, canonical: &str) -> Self::Link {
        Self::stored(link_digest(Self::fed(prev), canonical))
    }
}

/// Links stored as 32 raw bytes and fed raw; genesis is 32 zero bytes. The consent ledger's
/// format (version 1).
#[derive(Debug, Clone, Copy)]
pub struct RawLinks;

impl Links for RawLinks {
    type Link = Vec<u8>;
    fn genesis() -> Vec<u8> {
        GENESIS_HASH.to_vec()
    }
    fn fed(link: &Vec<u8>) -> &[u8] {
        link
    }
    fn stored(digest: [u8; 32]) -> Vec<u8> {
        digest.to_vec()
    }
}

/// Links stored as 64 lowercase hex digits and fed as that text; genesis is 64 `0`s. The access
/// log's format (version 1).
#[derive(Debug, Clone, Copy)]
pub struct HexLinks;

impl Links for HexLinks {
    type Link = String;
    fn genesis() -> String {
        GENESIS_HEX.to_owned()
    }
    fn fed(link: &String) -> &[u8] {
        link.as_bytes()
    }
    fn stored(digest: [u8; 32]) -> String {
        hex::encode(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers computed by the consent ledger's `chain_hash` before this crate existed.
    #[test]
    fn raw_links_match_the_v1_consent_ledger() {
        let h1 = RawLinks::next(&RawLinks::genesis(), r#"{"v":1,"seq":1}"#);
        assert_eq!(hex::encode(&h1), RAW_H1);
        let h2 = RawLinks::next(&h1, r#"{"v":1,"seq":2,"kind":"ünïcode ✉"}"#);
        assert_eq!(hex::encode(&h2), RAW_H2);
        assert_eq!(hex::encode(link_digest(&GENESIS_HASH, "{}")), RAW_EMPTY);
    }

    /// The hex genesis is the raw genesis written in hex, as the access log always stored it.
    #[test]
    fn the_two_geneses_are_one_hash_in_two_forms() {
        assert_eq!(HexLinks::genesis(), hex::encode(GENESIS_HASH));
        assert_eq!(HexLinks::fed(&HexLinks::genesis()).len(), 64);
        assert_eq!(RawLinks::fed(&RawLinks::genesis()).len(), 32);
    }

    const RAW_EMPTY: &str = "fb1634c4e6cd4b1f1afe3ce2d6ef080f7ac5d1f357d723ad4dfca782733b62db";
    const RAW_H1: &str = "39b9ddc59474b579053d0620ff8e1772a8b84365917e5f17c1cb00dcfa203618";
    const RAW_H2: &str = "b88b6b8d5733571b6e6344357f857ae51d865afd9d2a659124b5d30fa00c354a";
}
