//! Keyed pseudonyms: HMAC-SHA-256 of a subject's id under a key, so records and log lines can be
//! correlated per subject without naming the person. Destroying a per-subject key
//! (crypto-shredding) leaves its pseudonyms unlinkable to anyone.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA-256 of `data` under `key` (any length).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The pseudonym chained entries store for `subject` (its storage form, e.g. `s:alice`):
/// the full HMAC in hex (64 digits), so two subjects never share one.
pub fn pseudonym(key: &[u8], subject: &str) -> String {
    hex::encode(hmac_sha256(key, subject.as_bytes()))
}

/// The shorter pseudonym log lines carry (the HMAC's first 8 bytes, 16 hex digits): enough to
/// correlate one subject's requests, under a per-process key that is never logged.
pub fn log_pseudonym(key: &[u8], subject: &str) -> String {
    hex::encode(&hmac_sha256(key, subject.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers computed by the three HMAC functions before this crate existed: the consent
    /// ledger's (raw 32-byte key), the access log's (the hex secret's text as the key) and the
    /// log lines' (truncated).
    #[test]
    fn pseudonyms_match_the_v1_functions() {
        let key = [0x42u8; 32];
        assert_eq!(pseudonym(&key, "s:alice"), LEDGER_ALICE);
        assert_eq!(pseudonym(&key, "d:phone-1"), LEDGER_PHONE);
        let secret = "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";
        assert_eq!(pseudonym(secret.as_bytes(), "s:lou"), ACCESS_LOU);
        assert_eq!(log_pseudonym(b"log-key", "s:lou"), LOG_LOU);
    }

    const LEDGER_ALICE: &str = "ad8cbf336398285d1ea3f6692ffb392330d878391a525e06cc31962a39e2c9ef";
    const LEDGER_PHONE: &str = "8955f135e608b318b362fc7852064279539a825272e90381a8f7e54ab7e4faab";
    const ACCESS_LOU: &str = "91decb806dd106e06dc852e3c6b8ea96c32530e3fe58fdff538b1a8df66fd0f8";
    const LOG_LOU: &str = "afcae8ed76ac281b";
}
