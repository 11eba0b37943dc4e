//! The canonical encoding of a chained entry: compact JSON (no whitespace, fields in declaration
//! order, serde_json's escapes), the exact bytes a link hashes.

use serde::Serialize;

/// The canonical form of `entry`. Its field order and types are part of the chain format:
/// change them and stored chains stop verifying, so each service keeps its entry shape fixed
/// (and adds fields only where absent ones serialize to nothing).
pub fn canonical_json<T: Serialize + ?Sized>(entry: &T) -> String {
    serde_json::to_string(entry).expect("plain data (strings, numbers, options) always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HexLinks, Links};

    /// Known answers computed by the access log's `chain_hash` before this crate existed: its
    /// canonical form is a JSON array of the entry's fields, hashed after the previous hex link.
    #[test]
    fn access_log_entries_match_v1() {
        let entry = |seq: u64| {
            canonical_json(&(
                seq,
                1_780_000_000_000_000i64,
                "ab\"c\\d",
                "mail\ner\u{7}",
                "profile-service",
                "marketing ✉",
                "user.contact.email,user.health",
                7u64,
                "GetProfile",
                3u64,
            ))
        };
        assert_eq!(
            entry(1),
            r#"[1,1780000000000000,"ab\"c\\d","mail\ner\u0007","profile-service","marketing ✉","user.contact.email,user.health",7,"GetProfile",3]"#
        );
        let a1 = HexLinks::next(&HexLinks::genesis(), &entry(1));
        assert_eq!(a1, ACCESS_A1);
        assert_eq!(HexLinks::next(&a1, &entry(2)), ACCESS_A2);
    }

    const ACCESS_A1: &str = "dccd09cf531f6033e4a68662a0e8c35b6629f7bce5eab0451efe644b4f1c68c8";
    const ACCESS_A2: &str = "c8499cdf14cbfd13199149f6c2ccaad3b8982b1e0491b20a0e51c59e3bab78b6";
}
