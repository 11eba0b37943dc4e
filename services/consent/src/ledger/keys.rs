//! The consent service's keys in memory: the Ed25519 key that signs checkpoints and receipts now,
//! the public keys (by key id) that verify what this and earlier keys signed, and the key of
//! erasure tombstones, which never rotates. How they are kept on disk is [`super::keyring`].
//!
//! Signing keys rotate; what they signed must keep verifying. So every signature names its key
//! by a key id (`kid`, the RFC 7638 JWK thumbprint of the public key), and every verifier picks
//! the key by that id from [`VerifyingKeys`]: an id it does not hold fails, never passes.

use crate::model::SubjectKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentgate_chain::hmac_sha256;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::Path;
use time::OffsetDateTime;

/// The key id of an Ed25519 public key: its RFC 7638 JWK thumbprint (base64url of the SHA-256
/// of `{"crv":"Ed25519","kty":"OKP","x":"<key>"}`, RFC 8037 §2). A standard id, so that an
/// auditor's JOSE library computes the same one from the published key, and an id that names
/// one key only (a collision would need a SHA-256 collision).
pub fn key_id(key: &VerifyingKey) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// A public key, base64url without padding (as in a JWK's `x`).
pub fn public_key_b64(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Parses a base64url Ed25519 public key.
pub fn parse_public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(b64).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// What a key is for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Signs new checkpoints and receipts.
    Current,
    /// Staged: verifies, and will sign after the next rotation. Every replica must know a key
    /// before any replica signs with it.
    Next,
    /// Signed before; kept (public key only) to verify what it signed.
    Retired,
    /// Known from a published key set (a JWK Set), whose keys say nothing of their status.
    Published,
}

impl KeyStatus {
    /// The word operators and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Current => "current",
            KeyStatus::Next => "next",
            KeyStatus::Retired => "retired",
            KeyStatus::Published => "published",
        }
    }
}

/// A public key that verifies checkpoints and receipts, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key id ([`key_id`]).
    pub kid: String,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// What the key is for now.
    pub status: KeyStatus,
    /// When it was created (current, next) or retired (retired); `None` when not recorded.
    pub since: Option<OffsetDateTime>,
}

impl PublicKey {
    /// A key with its id derived.
    pub fn new(key: VerifyingKey, status: KeyStatus, since: Option<OffsetDateTime>) -> PublicKey {
        PublicKey {
            kid: key_id(&key),
            key,
            status,
            since,
        }
    }

    /// The public key, base64url without padding.
    pub fn public_key_b64(&self) -> String {
        public_key_b64(&self.key)
    }

    /// The key as a JWK (RFC 8037): what JOSE libraries take.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_key_b64(),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// Why no key could be picked for a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// The signature names a key id no key here has (the key was never in this keyring, was
    /// removed from it, or the id was tampered with).
    #[error("unknown key id {0:?}: no key in the keyring has it")]
    UnknownKid(String),
    /// The signature names no key, and the keyring names no key for unlabelled signatures.
    #[error(
        "no key id, and the keyring names no key for what was signed before key ids (unlabelled_kid)"
    )]
    NoUnlabelledKey,
}

/// The public keys that verify checkpoints and receipts, by key id. Holds no secret: what a
/// verifier (the service, `consentgate ledger verify`, an auditor's JWK Set) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKeys {
    keys: Vec<PublicKey>,
    /// The key id of the key that verifies signatures stored without one (checkpoints written
    /// before key ids, by a bare seed file's key).
    unlabelled: Option<String>,
}

impl VerifyingKeys {
    /// A set of keys; `unlabelled` names the one for signatures without a key id.
    pub fn new(keys: Vec<PublicKey>, unlabelled: Option<String>) -> VerifyingKeys {
        VerifyingKeys { keys, unlabelled }
    }

    /// Every key, the current one first.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The key id that verifies signatures stored without one, if any.
    pub fn unlabelled_kid(&self) -> Option<&str> {
        self.unlabelled.as_deref()
    }

    /// The key a signature names (`None`: a signature stored without a key id).
    pub fn lookup(&self, kid: Option<&str>) -> Result<&PublicKey, KeyLookupError> {
        let kid = match kid {
            Some(kid) => kid,
            None => self
                .unlabelled
                .as_deref()
                .ok_or(KeyLookupError::NoUnlabelledKey)?,
        };
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| KeyLookupError::UnknownKid(kid.to_owned()))
    }

    /// The key whose public key is `b64` (receipts issued before key ids named their key by the
    /// public key itself).
    pub fn by_public_key(&self, b64: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.public_key_b64() == b64)
    }

    /// The keys as a JWK Set (RFC 7517), for verifiers with a JOSE library.
    pub fn jwks(&self) -> String {
        let keys: Vec<serde_json::Value> = self.keys.iter().map(PublicKey::jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// Reads a JWK Set of Ed25519 keys. A `kid` that is not the key's thumbprint is refused:
    /// a verifier must not be told which key an id means by whoever handed it the set.
    pub fn from_jwks(text: &str) -> Result<VerifyingKeys, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Jwk>,
        }
        #[derive(serde::Deserialize)]
        struct Jwk {
            kty: String,
            crv: Option<String>,
            x: Option<String>,
            kid: Option<String>,
        }
        // serde's message may quote the offending value whole: a short prefix names it.
        let set: Set = serde_json::from_str(text).map_err(|e| {
            let reason = e.to_string();
            let short: String = reason.chars().take(120).collect();
            let more = if short.len() < reason.len() {
                "…"
            } else {
                ""
            };
            format!("not a JWK Set ({short}{more})")
        })?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.into_iter().enumerate() {
            if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
                continue;
            }
            let key = jwk
                .x
                .as_deref()
                .and_then(parse_public_key)
                .ok_or_else(|| format!("key {i}: `x` is not an Ed25519 public key"))?;
            let key = PublicKey::new(key, KeyStatus::Published, None);
            if jwk.kid.as_deref().is_some_and(|kid| kid != key.kid) {
                return Err(format!(
                    "key {i}: its kid is not the key's RFC 7638 thumbprint ({})",
                    key.kid
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("the JWK Set holds no Ed25519 key".into());
        }
        Ok(VerifyingKeys::new(keys, None))
    }
}

/// The secrets of a consent service and the public keys it verifies with: the key that signs
/// checkpoints and receipts now, the key of erasure tombstones, and every public key by id.
pub struct LedgerKeys {
    signing: SigningKey,
    kid: String,
    tombstone_key: [u8; 32],
    verifiers: VerifyingKeys,
}

impl std::fmt::Debug for LedgerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKeys")
            .field("kid", &self.kid)
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

/// The version-1 derivation of a bare seed: SHA-256(label ‖ seed).
pub(crate) fn derive(label: &[u8], seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(seed);
    h.finalize().into()
}

/// The label of a bare seed's signing key.
pub(crate) const SIGNING_LABEL: &[u8] = b"consentgate/signing/v1";
/// The label of a bare seed's tombstone key.
pub(crate) const TOMBSTONE_LABEL: &[u8] = b"consentgate/tombstone/v1";

impl LedgerKeys {
    /// The keys of a bare seed (the version-1 key file): the signing key and the tombstone key
    /// derived from it; its signing key also verifies what was signed without a key id.
    pub fn from_seed(seed: &[u8; 32]) -> LedgerKeys {
        let signing = SigningKey::from_bytes(&derive(SIGNING_LABEL, seed));
        let kid = key_id(&signing.verifying_key());
        LedgerKeys::new(
            signing,
            derive(TOMBSTONE_LABEL, seed),
            Vec::new(),
            Some(kid),
        )
    }

    /// Keys from their parts: the signing key, the tombstone key, the other public keys (staged
    /// and retired), and the id of the key for signatures without one.
    pub fn new(
        signing: SigningKey,
        tombstone_key: [u8; 32],
        others: Vec<PublicKey>,
        unlabelled: Option<String>,
    ) -> LedgerKeys {
        let current = PublicKey::new(signing.verifying_key(), KeyStatus::Current, None);
        LedgerKeys::with_current(signing, current, tombstone_key, others, unlabelled)
    }

    /// As [`LedgerKeys::new`], with the current key's public record given (its creation time).
    pub(crate) fn with_current(
        signing: SigningKey,
        current: PublicKey,
        tombstone_key: [u8; 32],
        others: Vec<PublicKey>,
        unlabelled: Option<String>,
    ) -> LedgerKeys {
        let kid = current.kid.clone();
        let mut keys = vec![current];
        keys.extend(others.into_iter().filter(|k| k.kid != kid));
        LedgerKeys {
            signing,
            kid,
            tombstone_key,
            verifiers: VerifyingKeys::new(keys, unlabelled),
        }
    }

    /// Fresh random keys (tests, throwaway servers).
    pub fn generate() -> LedgerKeys {
        LedgerKeys::from_seed(&random_key())
    }

    /// Loads a key file (a bare seed or a keyring); never creates one. The error names the file
    /// and what is wrong with it, never a secret.
    pub fn load(path: &Path) -> Result<LedgerKeys, super::keyring::KeyFileError> {
        Ok(super::keyring::Keyring::read(path)?.keys())
    }

    /// Loads a key file, creating a new keyring (mode 0600) when there is none: for the
    /// embedded suite (`consentgate up`), whose data folder starts empty. Production serving
    /// must not, see `--create-key-file`.
    pub fn load_or_create(path: &Path) -> Result<LedgerKeys, super::keyring::KeyFileError> {
        super::keyring::Keyring::read_or_create(path).map(|ring| ring.keys())
    }

    /// Signs `message` with the current key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).to_bytes().to_vec()
    }

    /// The current signing key's id: stored with every checkpoint and put in every receipt.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The current public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The current public key, base64url without padding.
    pub fn public_key_b64(&self) -> String {
        public_key_b64(&self.verifying_key())
    }

    /// Every public key that verifies what this service (and its earlier keys) signed.
    pub fn verifiers(&self) -> &VerifyingKeys {
        &self.verifiers
    }

    /// The tombstone of an erased subject: lets Check answer SUBJECT_ERASED without keeping the id.
    pub fn tombstone(&self, subject: &SubjectKey) -> Vec<u8> {
        hmac_sha256(&self.tombstone_key, subject.storage().as_bytes()).to_vec()
    }
}

/// 32 random bytes from the operating system.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system's random source is available");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed JWK Set is named with a short prefix of serde's reason, never the whole
    /// offending value (a file an auditor was handed can be anything).
    #[test]
    fn a_malformed_jwk_set_is_refused_with_a_bounded_reason() {
        let huge = format!(r#"{{"keys": "{}"}}"#, "A".repeat(100_000));
        let err = VerifyingKeys::from_jwks(&huge).expect_err("not a JWK Set");
        assert!(err.starts_with("not a JWK Set ("), "{err}");
        assert!(err.chars().count() < 160, "{} characters", err.len());
        let published = LedgerKeys::generate().verifiers().jwks();
        assert!(
            VerifyingKeys::from_jwks(&published).is_ok(),
            "a published set still reads"
        );
    }

    /// Known answers computed before `consentgate-chain` existed: an operator's seed file must
    /// keep deriving the same signing key and the same tombstones, or erased subjects would
    /// come back and old checkpoints stop verifying.
    #[test]
    fn a_seed_derives_the_v1_keys() {
        let keys = LedgerKeys::from_seed(&[7u8; 32]);
        assert_eq!(
            keys.public_key_b64(),
            "0vOdn8OlEfxRnPubGPRjWko6TJNjeGTO0zBgYbcsg6o"
        );
        assert_eq!(
            hex::encode(keys.tombstone(&SubjectKey::Subject("alice".into()))),
            "5b11e2df3e79ba2c533371e1b82ca937e1a05f89dc338989bdea3efc1b04b550"
        );
        // A bare seed's key verifies what was signed before key ids.
        assert_eq!(keys.verifiers().unlabelled_kid(), Some(keys.kid()));
    }

    /// The key id is the RFC 7638 thumbprint: RFC 8037 appendix A.3's example key and answer.
    #[test]
    fn the_key_id_is_the_rfc_7638_thumbprint() {
        let key = parse_public_key("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").expect("key");
        assert_eq!(key_id(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn an_unknown_kid_or_a_missing_unlabelled_key_is_an_error() {
        let keys = LedgerKeys::generate();
        let v = keys.verifiers();
        assert_eq!(
            v.lookup(Some(keys.kid())).map(|k| k.key),
            Ok(keys.verifying_key())
        );
        assert_eq!(v.lookup(None).map(|k| k.key), Ok(keys.verifying_key()));
        assert_eq!(
            v.lookup(Some("nope")),
            Err(KeyLookupError::UnknownKid("nope".into()))
        );
        let bare = VerifyingKeys::new(v.keys().to_vec(), None);
        assert_eq!(bare.lookup(None), Err(KeyLookupError::NoUnlabelledKey));
    }

    #[test]
    fn a_jwk_set_round_trips_and_a_wrong_kid_is_refused() {
        let keys = LedgerKeys::generate();
        let jwks = keys.verifiers().jwks();
        let read = VerifyingKeys::from_jwks(&jwks).expect("a JWK Set");
        assert_eq!(
            read.lookup(Some(keys.kid())).map(|k| k.key),
            Ok(keys.verifying_key())
        );
        let forged = jwks.replace(keys.kid(), "AAAA");
        assert!(VerifyingKeys::from_jwks(&forged).is_err());
    }
}
