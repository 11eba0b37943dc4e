//! Consent receipts shaped like the Kantara Initiative Consent Receipt v1.1, signed as a JWS
//! (compact serialization, EdDSA over Ed25519) that anyone can verify with the public key.

use crate::ledger::LedgerKeys;
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
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": keys.public_key_b64() }).to_string();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let signature = URL_SAFE_NO_PAD.encode(keys.sign(signing_input.as_bytes()));
    (payload, format!("{signing_input}.{signature}"))
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
