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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a receipt takes from outside its record: the policy's words for the purpose, the
/// controller, the signing key and the language. Every grant of one purpose and scope, in one
/// language, under one policy and key, shares it, so the store keeps it once (by
/// [`ReceiptContext::digest`]) and each receipt as its record, this digest and a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptContext {
    /// The id of the key that signed (the JWS header's `kid`).
    pub kid: String,
    /// That key's public half, base64url (the receipt's `publicKey`).
    pub public_key: String,
    /// The receipt's language (a BCP 47 tag).
    pub language: String,
    /// The data controller, from the policy.
    pub controller: String,
    /// The privacy policy's address, from the policy.
    pub policy_url: String,
    /// The purpose's plain-language description when the grant was made.
    pub description: String,
    /// The data categories the grant covers (its scope, or the purpose's categories).
    pub categories: Vec<String>,
    /// Those of them that are sensitive.
    pub sensitive: Vec<String>,
}

impl ReceiptContext {
    /// The context of a grant under `policy`, signed with `keys`' current key.
    pub fn new(policy: &Policy, keys: &LedgerKeys, consent: &NewConsent, language: &str) -> Self {
        let purpose = policy.purposes.get(&consent.purpose);
        let categories: Vec<String> = match &consent.scope {
            Some(scope) => vec![scope.clone()],
            None => purpose.map(|p| p.categories.clone()).unwrap_or_default(),
        };
        let sensitive = categories
            .iter()
            .filter(|c| {
                policy
                    .categories
                    .get(c.as_str())
                    .is_some_and(|c| c.sensitive)
            })
            .cloned()
            .collect();
        Self {
            kid: keys.kid().to_owned(),
            public_key: keys.public_key_b64(),
            language: language.to_owned(),
            controller: policy.controller.clone(),
            policy_url: policy.policy_url.clone(),
            description: purpose.map(|p| p.description.clone()).unwrap_or_default(),
            categories,
            sensitive,
        }
    }

    /// How the store keeps it: JSON, its fields in declaration order.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses what [`encode`](Self::encode) wrote.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The key it is stored under: the first 16 bytes of the SHA-256 of its encoding.
    pub fn digest(&self) -> [u8; 16] {
        let hash = Sha256::digest(self.encode().as_bytes());
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&hash[..16]);
        digest
    }
}

/// A grant's receipt as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Derived on demand: the payload is a deterministic function of the record and the
    /// context, and Ed25519 signatures are deterministic, so the signature is all that must be
    /// kept (64 bytes instead of a ~2.5 KB JWS).
    Derived {
        /// What the payload takes from outside the record.
        context: ReceiptContext,
        /// The Ed25519 signature over the JWS signing input.
        signature: Vec<u8>,
    },
    /// An imported grant's receipt until someone asks for it: its context, no signature. An
    /// import hands out no receipt, and most imported receipts are never asked for, while
    /// signing each at import was a quarter of an import's CPU (BENCHMARKS.md); the store
    /// signs it when it is first read ([`Receipt::signed`]), as deterministically as at import.
    Unsigned {
        /// What the payload takes from outside the record.
        context: ReceiptContext,
    },
    /// Stored whole, as every receipt was before receipts were derived (migration 0008): kept
    /// and answered as written.
    Stored {
        /// The receipt JSON.
        json: String,
        /// Its JWS.
        jws: String,
    },
}

impl Receipt {
    /// The receipt JSON of `consent`'s grant.
    pub fn json(&self, consent: &NewConsent) -> String {
        match self {
            Receipt::Derived { context, .. } | Receipt::Unsigned { context } => {
                payload(consent, context)
            }
            Receipt::Stored { json, .. } => json.clone(),
        }
    }

    /// The compact JWS of `consent`'s grant; `None` for a receipt not signed yet (see
    /// [`Receipt::signed`]).
    pub fn jws(&self, consent: &NewConsent) -> Option<String> {
        match self {
            Receipt::Derived { context, signature } => Some(format!(
                "{}.{}",
                signing_input(&context.kid, &payload(consent, context)),
                URL_SAFE_NO_PAD.encode(signature)
            )),
            Receipt::Unsigned { .. } => None,
            Receipt::Stored { jws, .. } => Some(jws.clone()),
        }
    }

    /// The receipt signed: an unsigned one (an imported grant's) with `keys`' current key, the
    /// others as they are. Its context names the key that signs: the one the import named while
    /// it still signs (so asking again gives the same bytes), the current key after a rotation
    /// (a retired key can no longer sign).
    pub fn signed(self, keys: &LedgerKeys, consent: &NewConsent) -> Receipt {
        match self {
            Receipt::Unsigned { mut context } => {
                if context.kid != keys.kid() {
                    context.kid = keys.kid().to_owned();
                    context.public_key = keys.public_key_b64();
                }
                let input = signing_input(&context.kid, &payload(consent, &context));
                Receipt::Derived {
                    signature: keys.sign(input.as_bytes()),
                    context,
                }
            }
            signed => signed,
        }
    }
}

/// The receipt of an imported grant, to be signed when first asked for ([`Receipt::Unsigned`]).
pub fn unsigned(
    policy: &Policy,
    keys: &LedgerKeys,
    consent: &NewConsent,
    language: &str,
) -> Receipt {
    Receipt::Unsigned {
        context: ReceiptContext::new(policy, keys, consent, language),
    }
}

/// Issues the receipt of a grant: its context and the signature with the current key.
pub fn issue(policy: &Policy, keys: &LedgerKeys, consent: &NewConsent, language: &str) -> Receipt {
    let context = ReceiptContext::new(policy, keys, consent, language);
    let input = signing_input(&context.kid, &payload(consent, &context));
    Receipt::Derived {
        signature: keys.sign(input.as_bytes()),
        context,
    }
}

/// The receipt JSON (Kantara Consent Receipt v1.1). Built from structs, not maps, so its bytes
/// depend on nothing but the record and the context (not on serde_json's map features): a
/// derived receipt must be the one that was signed.
fn payload(consent: &NewConsent, context: &ReceiptContext) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Kantara<'a> {
        version: &'static str,
        jurisdiction: &'a str,
        consent_timestamp: i64,
        collection_method: &'a str,
        #[serde(rename = "consentReceiptID")]
        consent_receipt_id: &'a str,
        public_key: &'a str,
        language: &'a str,
        pii_principal_id: &'a str,
        pii_controllers: [Controller<'a>; 1],
        policy_url: &'a str,
        services: [Service<'a>; 1],
        sensitive: bool,
        spi_cat: &'a [String],
        /// The platform an imported consent was first collected on (absent otherwise): the
        /// controller vouches for the import, not for having collected it.
        #[serde(rename = "importedFrom", skip_serializing_if = "Option::is_none")]
        imported_from: Option<&'a str>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Controller<'a> {
        pii_controller: &'a str,
        on_behalf: bool,
        policy_url: &'a str,
    }
    #[derive(Serialize)]
    struct Service<'a> {
        service: &'a str,
        purposes: [Purpose<'a>; 1],
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Purpose<'a> {
        purpose: &'a str,
        purpose_category: [&'a str; 1],
        consent_type: String,
        pii_category: &'a [String],
        primary_purpose: bool,
        termination: String,
        third_party_disclosure: bool,
        channel: Option<&'a str>,
        notice_id: &'a str,
        notice_version: &'a str,
    }
    let principal = match &consent.subject {
        SubjectKey::Subject(id) | SubjectKey::Device(id) => id.as_str(),
    };
    let termination = match consent.expires_at {
        Some(t) => format!(
            "expires {}",
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
        None => "until withdrawn".to_owned(),
    };
    let receipt = Kantara {
        version: "KI-CR-v1.1.0",
        jurisdiction: &consent.jurisdiction,
        consent_timestamp: consent.collected_at.unix_timestamp(),
        collection_method: consent.collection_method.as_str(),
        consent_receipt_id: &consent.record_id,
        public_key: &context.public_key,
        language: &context.language,
        pii_principal_id: principal,
        pii_controllers: [Controller {
            pii_controller: &context.controller,
            on_behalf: false,
            policy_url: &context.policy_url,
        }],
        policy_url: &context.policy_url,
        services: [Service {
            service: &consent.purpose,
            purposes: [Purpose {
                purpose: &context.description,
                purpose_category: [&consent.purpose],
                consent_type: consent.consent_type.as_str().to_uppercase(),
                pii_category: &context.categories,
                primary_purpose: true,
                termination,
                third_party_disclosure: consent.purpose.starts_with("third_party_sharing"),
                channel: consent.channel.as_deref(),
                notice_id: &consent.notice_id,
                notice_version: &consent.notice_version,
            }],
        }],
        sensitive: !context.sensitive.is_empty(),
        spi_cat: &context.sensitive,
        imported_from: consent.imported.as_ref().map(|i| i.source.as_str()),
    };
    serde_json::to_string(&receipt).unwrap_or_default()
}

/// The JWS signing input (`header.payload`, both base64url) for a receipt signed by `kid`.
fn signing_input(kid: &str, payload: &str) -> String {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'static str,
        kid: &'a str,
        typ: &'static str,
    }
    let header = serde_json::to_string(&Header {
        alg: "EdDSA",
        kid,
        typ: "JWT",
    })
    .unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
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

    use serde_json::json;

    const PAYLOAD: &str = r#"{"version":"KI-CR-v1.1.0"}"#;

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

    fn grant(scope: Option<&str>) -> NewConsent {
        use consentgate_policy::{CollectionMethod, ConsentType, LegalBasis, RecordState};
        NewConsent {
            record_id: "0b9c7e52-4f4e-4a57-9d0e-2f1c9b1f6a10".into(),
            subject: SubjectKey::Subject("jane".into()),
            purpose: "marketing.communications.email".into(),
            scope: scope.map(str::to_owned),
            channel: Some("email".into()),
            state: RecordState::Given,
            consent_type: ConsentType::Explicit,
            legal_basis: LegalBasis::Consent,
            jurisdiction: "EU".into(),
            notice_id: "marketing".into(),
            notice_version: "2.0".into(),
            collection_method: CollectionMethod::PreferenceCenter,
            collected_at: now(),
            expires_at: Some(now() + time::Duration::days(365)),
            source_ip: "203.0.113.0".into(),
            user_agent: "unit".into(),
            guardian_ref: None,
            receipt: None,
            imported: None,
        }
    }

    #[test]
    fn a_derived_receipt_is_the_one_signed_and_verifies() {
        let policy = Policy::default_policy().expect("the shipped policy");
        let keys = LedgerKeys::generate();
        let consent = grant(None);
        let issued = issue(&policy, &keys, &consent, "en");
        let Receipt::Derived { context, signature } = &issued else {
            panic!("a new receipt is derived");
        };
        assert_eq!(signature.len(), 64, "an Ed25519 signature");
        // What the store keeps, read back: the same JWS, byte for byte, that verifies.
        let stored = Receipt::Derived {
            context: ReceiptContext::decode(&context.encode()).expect("decodes"),
            signature: signature.clone(),
        };
        let jws = issued.jws(&consent).expect("signed");
        assert_eq!(stored.jws(&consent), Some(jws.clone()));
        let verified = verify_with(&jws, keys.verifiers()).expect("verifies");
        assert_eq!(verified.json, issued.json(&consent));
        assert_eq!(
            verify(&jws, &keys.public_key_b64()),
            Some(verified.json.clone())
        );
        let body: serde_json::Value = serde_json::from_str(&verified.json).expect("JSON");
        assert_eq!(body["consentReceiptID"], json!(consent.record_id));
        assert_eq!(body["piiPrincipalId"], json!("jane"));
        assert_eq!(body["publicKey"], json!(keys.public_key_b64()));
        assert_eq!(
            body["services"][0]["purposes"][0]["channel"],
            json!("email")
        );
        // The record is part of what was signed: another record does not borrow its signature.
        let mut other = consent.clone();
        other.notice_version = "3.0".into();
        assert!(matches!(
            verify_with(&stored.jws(&other).expect("signed"), keys.verifiers()),
            Err(ReceiptError::BadSignature(_))
        ));
        // Grants of one purpose and scope share a context; another scope is another context.
        let again = ReceiptContext::new(&policy, &keys, &grant(None), "en");
        assert_eq!(again.digest(), context.digest());
        let scoped = ReceiptContext::new(&policy, &keys, &grant(Some("user.contact.email")), "en");
        assert_ne!(scoped.digest(), context.digest());
        assert_eq!(scoped.categories, vec!["user.contact.email".to_owned()]);
    }

    /// An imported grant's receipt, signed when first asked for, is the one an import would
    /// have signed, asked again the same bytes; after a rotation the current key signs it.
    #[test]
    fn an_unsigned_receipt_is_signed_as_an_issued_one_and_by_the_key_that_signs_now() {
        let policy = Policy::default_policy().expect("the shipped policy");
        let mut ring = Keyring::from_seed(&[7u8; 32]);
        let before = ring.keys();
        let consent = grant(None);
        let unsigned = unsigned(&policy, &before, &consent, "de");
        assert_eq!(unsigned.jws(&consent), None, "no JWS before it is signed");
        let issued = issue(&policy, &before, &consent, "de");
        let signed = unsigned.clone().signed(&before, &consent);
        assert_eq!(signed, issued, "as if signed at import");
        assert_eq!(
            signed.clone().signed(&before, &consent),
            signed,
            "a signed receipt stays as it is"
        );

        ring.stage(now()).expect("stage");
        ring.rotate(now(), false).expect("rotate");
        let after = ring.keys();
        let rekeyed = unsigned.signed(&after, &consent);
        let jws = rekeyed.jws(&consent).expect("signed");
        let verified = verify_with(&jws, after.verifiers()).expect("verifies");
        assert_eq!(verified.kid, after.kid());
        let body: serde_json::Value = serde_json::from_str(&verified.json).expect("JSON");
        assert_eq!(body["publicKey"], json!(after.public_key_b64()));
        assert_eq!(body["language"], json!("de"), "the import's language kept");
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
