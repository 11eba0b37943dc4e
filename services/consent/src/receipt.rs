//! Consent receipts shaped like the Kantara Initiative Consent Receipt v1.1, signed as a JWS
//! (compact serialization, EdDSA over Ed25519) that anyone can verify with the public key.
//!
//! The protected header names the signing key (`kid`, its RFC 7638 thumbprint), so a receipt
//! issued before a key rotation is verified with the key that signed it. Receipts issued
//! before key ids named their key by the public key itself (`kid` = the base64url key): the
//! verifier accepts that form too, by exact match against the keys it holds.

use crate::ledger::{KeyLookupError, LedgerKeys, PublicKey, VerifyingKeys};
use crate::model::{NewConsent, SubjectKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentgate_policy::Policy;
use serde_json::json;

/// Builds the receipt JSON and its JWS for a grant.
pub fn issue(
    policy: &Policy,
    keys: &LedgerKeys,
    consent: &NewConsent,
    language: &str,
) -> (String, String) {
    let purpose = policy.purposes.get(&consent.purpose);
    let categories: Vec<String> = match &consent.scope {
        Some(scope) => vec![scope.clone()],
        None => purpose.map(|p| p.categories.clone()).unwrap_or_default(),
    };
    let sensitive: Vec<&String> = categories
        .iter()
        .filter(|c| {
            policy
                .categories
                .get(c.as_str())
                .is_some_and(|c| c.sensitive)
        })
        .collect();
    let principal = match &consent.subject {
        SubjectKey::Subject(id) | SubjectKey::Device(id) => id.clone(),
    };
    let receipt = json!({
        "version": "KI-CR-v1.1.0",
        "jurisdiction": consent.jurisdiction,
        "consentTimestamp": consent.collected_at.unix_timestamp(),
        "collectionMethod": consent.collection_method.as_str(),
        "consentReceiptID": consent.record_id,
        "publicKey": keys.public_key_b64(),
        "language": language,
        "piiPrincipalId": principal,
        "piiControllers": [{ "piiController": policy.controller, "onBehalf": false, "policyUrl": policy.policy_url }],
        "policyUrl": policy.policy_url,
        "services": [{
            "service": consent.purpose,
            "purposes": [{
                "purpose": purpose.map(|p| p.description.as_str()).unwrap_or_default(),
                "purposeCategory": [consent.purpose],
                "consentType": consent.consent_type.as_str().to_uppercase(),
                "piiCategory": categories,
                "primaryPurpose": true,
                "termination": match consent.expires_at {
                    Some(t) => format!("expires {}", t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()),
                    None => "until withdrawn".to_owned(),
                },
                "thirdPartyDisclosure": consent.purpose.starts_with("third_party_sharing"),
                "channel": consent.channel,
                "noticeId": consent.notice_id,
                "noticeVersion": consent.notice_version,
            }],
        }],
        "sensitive": !sensitive.is_empty(),
        "spiCat": sensitive,
    });
    let payload = receipt.to_string();
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": keys.kid() });
    let jws = sign_compact(keys, &header, &payload);
    (payload, jws)
}

/// A compact JWS of `payload` under `header`, signed with the current key.
fn sign_compact(keys: &LedgerKeys, header: &serde_json::Value, payload: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = URL_SAFE_NO_PAD.encode(keys.sign(signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Verifies a receipt JWS against a public key (base64url); returns the receipt JSON.
pub fn verify(jws: &str, public_key_b64: &str) -> Option<String> {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let key: [u8; 32] = URL_SAFE_NO_PAD
        .decode(public_key_b64)
        .ok()?
        .try_into()
        .ok()?;
    let key = VerifyingKey::from_bytes(&key).ok()?;
    let (signing_input, signature) = jws.rsplit_once('.')?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).ok()?.try_into().ok()?;
    key.verify(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .ok()?;
    let (_, payload) = signing_input.split_once('.')?;
    String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not a compact JWS with a JSON protected header.
    #[error("not a compact JWS receipt: {0}")]
    Malformed(&'static str),
    /// The header's algorithm is not EdDSA (never guessed: `none` must not pass).
    #[error("unsupported algorithm {0:?} (receipts are signed with EdDSA)")]
    Algorithm(String),
    /// No key the verifier holds is the one the receipt names.
    #[error("{0}")]
    UnknownKey(#[from] KeyLookupError),
    /// The key was found and the signature does not verify: the receipt was altered.
    #[error("the signature does not verify with key id {0}")]
    BadSignature(String),
}

/// A receipt that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The receipt JSON.
    pub json: String,
    /// The id of the key that signed it.
    pub kid: String,
}

/// The protected header's `alg` and `kid`.
fn header(jws: &str) -> Result<(String, Option<String>), ReceiptError> {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
    }
    let (h, _) = jws
        .split_once('.')
        .ok_or(ReceiptError::Malformed("no header"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| ReceiptError::Malformed("the header is not base64url"))?;
    let h: Header = serde_json::from_slice(&bytes)
        .map_err(|_| ReceiptError::Malformed("the header is not a JSON object with alg"))?;
    Ok((h.alg, h.kid))
}

/// The key that signed a receipt, as named by its header (by key id, or by the public key for
/// receipts issued before key ids); `kid` absent: the keys' key for unlabelled signatures.
pub fn signer<'k>(jws: &str, keys: &'k VerifyingKeys) -> Result<&'k PublicKey, ReceiptError> {
    let (_, kid) = header(jws)?;
    match kid.as_deref() {
        Some(kid) => match keys.lookup(Some(kid)) {
            Ok(key) => Ok(key),
            Err(e) => keys.by_public_key(kid).ok_or(ReceiptError::UnknownKey(e)),
        },
        None => Ok(keys.lookup(None)?),
    }
}

/// Verifies a receipt with the key its header names, among `keys`; returns the receipt JSON
/// and the key id. An unknown key id is an error, never a pass.
pub fn verify_with(jws: &str, keys: &VerifyingKeys) -> Result<Verified, ReceiptError> {
    use ed25519_dalek::{Signature, Verifier};
    let (alg, _) = header(jws)?;
    if alg != "EdDSA" {
        return Err(ReceiptError::Algorithm(alg));
    }
    let key = signer(jws, keys)?;
    let (signing_input, signature) = jws
        .rsplit_once('.')
        .ok_or(ReceiptError::Malformed("no signature"))?;
    let (_, payload) = signing_input
        .split_once('.')
        .ok_or(ReceiptError::Malformed("no payload"))?;
    let bad = || ReceiptError::BadSignature(key.kid.clone());
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    key.key
        .verify(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| bad())?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or(ReceiptError::Malformed(
            "the payload is not base64url UTF-8",
        ))?;
    Ok(Verified {
        json,
        kid: key.kid.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{KeyStatus, Keyring};

    const PAYLOAD: &str = r#"{"version":"KI-CR-v1.1.0"}"#;

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time")
    }

    fn receipt(keys: &LedgerKeys, kid: Option<&str>) -> String {
        let header = match kid {
            Some(kid) => json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid }),
            None => json!({ "alg": "EdDSA", "typ": "JWT" }),
        };
        sign_compact(keys, &header, PAYLOAD)
    }

    #[test]
    fn a_receipt_from_before_a_rotation_verifies_after_it() {
        let mut ring = Keyring::from_seed(&[9u8; 32]);
        let before = ring.keys();
        let old = receipt(&before, Some(before.kid()));
        // Issued before key ids: the header named the public key itself.
        let legacy = receipt(&before, Some(&before.public_key_b64()));
        ring.stage(now()).expect("stage");
        ring.rotate(now(), false).expect("rotate");
        let after = ring.keys();
        assert_ne!(after.kid(), before.kid());
        let new = receipt(&after, Some(after.kid()));
        for (jws, kid) in [
            (&old, before.kid()),
            (&legacy, before.kid()),
            (&new, after.kid()),
        ] {
            let verified = verify_with(jws, after.verifiers()).expect("verifies");
            assert_eq!(
                (verified.json.as_str(), verified.kid.as_str()),
                (PAYLOAD, kid)
            );
        }
        assert_eq!(
            signer(&old, after.verifiers()).map(|k| k.status),
            Ok(KeyStatus::Retired)
        );
        // An auditor with only the published keys verifies both.
        let published = VerifyingKeys::from_jwks(&after.verifiers().jwks()).expect("jwks");
        assert!(verify_with(&old, &published).is_ok());
        assert!(verify_with(&new, &published).is_ok());
    }

    #[test]
    fn an_unknown_or_tampered_kid_fails_with_the_reason() {
        let keys = LedgerKeys::generate();
        let other = LedgerKeys::generate();
        // Signed by a key the verifier does not hold.
        let stranger = receipt(&other, Some(other.kid()));
        assert_eq!(
            verify_with(&stranger, keys.verifiers()),
            Err(ReceiptError::UnknownKey(KeyLookupError::UnknownKid(
                other.kid().to_owned()
            )))
        );
        // Signed by a stranger's key but naming ours: the signature fails under our key.
        let lying = receipt(&other, Some(keys.kid()));
        assert_eq!(
            verify_with(&lying, keys.verifiers()),
            Err(ReceiptError::BadSignature(keys.kid().to_owned()))
        );
        // A kid edited after signing: the header is signed, so nothing verifies.
        let mut ring = Keyring::generate(now());
        let first = ring.keys();
        ring.rotate(now(), true).expect("rotate");
        let both = ring.keys();
        let genuine = receipt(&first, Some(first.kid()));
        let (h, rest) = genuine.split_once('.').expect("jws");
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(h).expect("b64")).expect("utf8");
        let edited = format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode(header.replace(first.kid(), both.kid()))
        );
        assert_eq!(
            verify_with(&edited, both.verifiers()),
            Err(ReceiptError::BadSignature(both.kid().to_owned()))
        );
        // No kid and no key for unlabelled signatures: refused, never assumed.
        let unnamed = receipt(&both, None);
        assert_eq!(
            verify_with(&unnamed, both.verifiers()),
            Err(ReceiptError::UnknownKey(KeyLookupError::NoUnlabelledKey))
        );
        let none = sign_compact(&keys, &json!({ "alg": "none", "kid": keys.kid() }), PAYLOAD);
        assert!(matches!(
            verify_with(&none, keys.verifiers()),
            Err(ReceiptError::Algorithm(_))
        ));
    }
}
