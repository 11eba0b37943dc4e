//! What the access log writes: an entry's canonical form, its link, and the subject's pseudonym
//! under its per-subject key. The store chains entries with this module; only the verifier
//! (`access_log::verify`) walks the store.

use crate::model::AccessRecord;
use consentgate_chain::{HexLinks, Links, canonical_json};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = consentgate_chain::GENESIS_HEX;

/// A fresh per-subject key (hex).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The subject's pseudonym under its key (the key is the secret's hex text, as since version 1).
pub fn pseudonym(secret: &str, subject_key: &str) -> String {
    consentgate_chain::pseudonym(secret.as_bytes(), subject_key)
}

/// The entry's canonical form: a compact JSON array of its fields, in this order.
pub fn canonical(record: &AccessRecord) -> String {
    // A tuple serializes as the same compact JSON array as `json!([...])` did, without building
    // a `Value` tree first (the flush chains hundreds of entries at a time).
    canonical_json(&(
        record.seq,
        record.read_at,
        &record.pseudonym,
        &record.caller,
        &record.enforced_by,
        &record.purpose,
        &record.categories,
        record.revision,
        &record.operation,
        record.items,
    ))
}

/// The entry's hash: SHA-256 over the previous hash's hex text and the entry's canonical JSON
/// ([`HexLinks`], the access log's format since version 1).
pub fn chain_hash(record: &AccessRecord) -> String {
    HexLinks::next(&record.prev_hash, &canonical(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Entries chained before the canonical form was serialized from a tuple must still verify:
    /// the bytes hashed are the same as `json!([...]).to_string()`, escapes included.
    #[test]
    fn the_canonical_form_is_unchanged() {
        let record = AccessRecord {
            seq: 18_446_744_073_709_551_615,
            read_at: -5,
            pseudonym: "ab\"c\\d".into(),
            caller: "mail\ner\u{7}".into(),
            enforced_by: "profile-service".into(),
            purpose: "marketing ✉".into(),
            categories: "user.contact.email,user.health".into(),
            revision: 0,
            operation: "GetProfile".into(),
            items: 3,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        let old = serde_json::json!([
            record.seq,
            record.read_at,
            record.pseudonym,
            record.caller,
            record.enforced_by,
            record.purpose,
            record.categories,
            record.revision,
            record.operation,
            record.items,
        ]);
        let mut hasher = Sha256::new();
        hasher.update(record.prev_hash.as_bytes());
        hasher.update(old.to_string().as_bytes());
        assert_eq!(chain_hash(&record), hex::encode(hasher.finalize()));
    }
}
