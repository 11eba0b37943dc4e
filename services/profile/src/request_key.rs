//! The profile service's deployment secret for data-subject requests: the key of the digests
//! under which it keeps erasure requests' idempotency keys.
//!
//! Callers sometimes build idempotency keys from subject ids, so only a keyed digest is stored.
//! The key must be a secret of the deployment: under a public key anyone holding the database
//! could test guesses of subject ids against the stored digests. It comes from a file of 64
//! hex digits (`CONSENTGATE_REQUEST_KEY_FILE`, mounted from a Secret); `consentgate up` creates
//! one in its data folder. Every replica must share it, and it must not change: a retry whose
//! digest differs from the stored one would start a second request instead of resuming the
//! first. Requests begun before the key existed were stored under a constant key
//! ([`RequestKey::legacy_digest`]); a retry of such a request still finds it, so erasures in
//! flight across the upgrade resume instead of starting over.

use std::path::Path;

/// The key, 32 bytes, never logged (`Debug` hides it).
#[derive(Clone)]
pub struct RequestKey([u8; 32]);

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestKey(…)")
    }
}

/// Why the key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RequestKeyError {
    /// It could not be read or written.
    #[error("request key file {0}: {1}")]
    Io(String, std::io::Error),
    /// It does not hold 64 hex digits.
    #[error(
        "request key file {0}: expected 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`"
    )]
    Malformed(String),
}

impl RequestKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: [u8; 32]) -> RequestKey {
        RequestKey(bytes)
    }

    /// A fresh random key (tests and new development data folders).
    pub fn generate() -> RequestKey {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source is available");
        RequestKey(key)
    }

    /// Reads the key file: 64 hex digits, surrounding whitespace ignored.
    pub fn load(path: &Path) -> Result<RequestKey, RequestKeyError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| RequestKeyError::Io(name.clone(), e))?;
        let bytes =
            hex::decode(text.trim()).map_err(|_| RequestKeyError::Malformed(name.clone()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| RequestKeyError::Malformed(name))?;
        Ok(RequestKey(key))
    }

    /// Reads the key file, creating it (owner-only) with a random key when it is missing: for
    /// development data folders, never for a replica that should share a mounted secret.
    pub fn load_or_create(path: &Path) -> Result<RequestKey, RequestKeyError> {
        if path.exists() {
            return RequestKey::load(path);
        }
        let key = RequestKey::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let name = path.display().to_string();
        let written = options.open(path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())?;
            f.sync_all()
        });
        written.map_err(|e| RequestKeyError::Io(name, e))?;
        Ok(key)
    }

    /// The digest an idempotency key is stored under (the full HMAC-SHA-256, hex).
    pub fn digest(&self, idempotency_key: &str) -> String {
        consentgate_chain::pseudonym(&self.0, idempotency_key)
    }

    /// The digest requests begun before the deployment secret were stored under: the same key
    /// under a constant, public HMAC key. Only ever looked up, never written.
    pub fn legacy_digest(idempotency_key: &str) -> String {
        consentgate_chain::log_pseudonym(b"erasure-idempotency", idempotency_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_the_deployment_secret() {
        let (a, b) = (RequestKey::new([1; 32]), RequestKey::new([2; 32]));
        assert_ne!(a.digest("erase-alice"), b.digest("erase-alice"));
        assert_eq!(a.digest("erase-alice"), a.clone().digest("erase-alice"));
        assert_ne!(
            a.digest("erase-alice"),
            RequestKey::legacy_digest("erase-alice")
        );
        // The legacy digest is what the service stored before it had a secret.
        assert_eq!(
            RequestKey::legacy_digest("erase-alice"),
            consentgate_runtime::telemetry::pseudonymize(b"erasure-idempotency", "erase-alice")
        );
    }

    #[test]
    fn key_files_are_read_created_and_checked() {
        let dir = std::env::temp_dir().join(format!("request-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("request.key");
        let created = RequestKey::load_or_create(&path).expect("create");
        let again = RequestKey::load(&path).expect("load");
        assert_eq!(created.digest("k"), again.digest("k"));
        std::fs::write(&path, "not hex").expect("write");
        assert!(matches!(
            RequestKey::load(&path),
            Err(RequestKeyError::Malformed(_))
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
