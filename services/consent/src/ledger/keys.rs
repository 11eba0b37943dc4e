//! The consent service's secrets: the Ed25519 key that signs checkpoints and receipts, and the
//! key of erasure tombstones, both derived from one seed file an operator keeps.

use crate::model::SubjectKey;
use consentgate_chain::hmac_sha256;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The secrets of a consent service: the checkpoint/receipt signing key, and the key of erasure
/// tombstones. Derived from one 32-byte seed so that one secret file is all an operator keeps.
pub struct LedgerKeys {
    signing: SigningKey,
    tombstone_key: [u8; 32],
}

impl std::fmt::Debug for LedgerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKeys")
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

impl LedgerKeys {
    /// Derives the keys from a seed.
    pub fn from_seed(seed: &[u8; 32]) -> LedgerKeys {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(seed);
            h.finalize().into()
        };
        LedgerKeys {
            signing: SigningKey::from_bytes(&derive(b"consentgate/signing/v1")),
            tombstone_key: derive(b"consentgate/tombstone/v1"),
        }
    }

    /// Fresh random keys (tests, throwaway servers).
    pub fn generate() -> LedgerKeys {
        LedgerKeys::from_seed(&random_key())
    }

    /// Loads the seed from `path`, creating it (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<LedgerKeys> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = hex::decode(String::from_utf8_lossy(&bytes).trim())
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: expected 64 hex digits", path.display()),
                        )
                    })?;
                Ok(LedgerKeys::from_seed(&seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed = random_key();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, hex::encode(seed).as_bytes())?;
                Ok(LedgerKeys::from_seed(&seed))
            }
            Err(e) => Err(e),
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).to_bytes().to_vec()
    }

    /// The public key that verifies checkpoints and receipts.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key, base64url without padding.
    pub fn public_key_b64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.verifying_key().as_bytes())
    }

    /// The tombstone of an erased subject: lets Check answer SUBJECT_ERASED without keeping the id.
    pub fn tombstone(&self, subject: &SubjectKey) -> Vec<u8> {
        hmac_sha256(&self.tombstone_key, subject.storage().as_bytes()).to_vec()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
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
    }
}
