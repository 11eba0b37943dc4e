//! The consent ledger: a SHA-256 hash chain over canonical, pseudonymized events, with Ed25519-
//! signed checkpoints, and the verifier that re-walks it and names the first broken link.
//!
//! Entries name subjects only by a pseudonym, HMAC-SHA-256 under a key kept per subject. Erasing a
//! subject deletes its key (crypto-shredding): the chain still verifies, but no longer identifies
//! the person.

use crate::model::{Change, Checkpoint, SubjectKey};
use crate::store::{ConsentStore, StoreError};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// A checkpoint is signed every this many entries.
pub const CHECKPOINT_EVERY: u64 = 64;

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
        hmac(&self.tombstone_key, subject.storage().as_bytes()).to_vec()
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

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The pseudonym of a subject under its per-subject key.
pub fn pseudonym(subject_key: &[u8], subject: &SubjectKey) -> String {
    hex::encode(hmac(subject_key, subject.storage().as_bytes()))
}

/// The chain link: SHA-256(prev_hash ‖ event).
pub fn chain_hash(prev_hash: &[u8], event: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(event.as_bytes());
    h.finalize().to_vec()
}

/// The hash before the first entry.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, hash: &[u8]) -> Vec<u8> {
    let mut m = b"consentgate-ledger-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// The canonical ledger form of a change: fixed field order, no subject id in clear.
#[derive(Serialize)]
struct CanonicalEvent<'a> {
    v: u8,
    seq: u64,
    at: String,
    kind: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<CanonicalConsent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<(&'a str, String)>,
    /// How a signal was collected (absent from entries written before it was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restricted: Option<bool>,
}

#[derive(Serialize)]
struct CanonicalConsent<'a> {
    record_id: &'a str,
    purpose: &'a str,
    scope: Option<&'a str>,
    channel: Option<&'a str>,
    state: &'a str,
    consent_type: &'a str,
    legal_basis: &'a str,
    jurisdiction: &'a str,
    notice_id: &'a str,
    notice_version: &'a str,
    collection_method: &'a str,
    collected_at: String,
    expires_at: Option<String>,
    guardian: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Builds the canonical event. `subject_pseudonym` (and `device_pseudonym` for links) come from
/// the per-subject keys; values that could identify a person (guardian references) are hashed.
pub fn canonical_event(
    seq: u64,
    at: time::OffsetDateTime,
    change: &Change,
    subject_pseudonym: &str,
    device_pseudonym: Option<&str>,
) -> String {
    let digest = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let event = CanonicalEvent {
        v: 1,
        seq,
        at: rfc3339(at),
        kind: change.kind(),
        subject: subject_pseudonym,
        device: device_pseudonym,
        consent: match change {
            Change::Consent(c) => Some(CanonicalConsent {
                record_id: &c.record_id,
                purpose: &c.purpose,
                scope: c.scope.as_deref(),
                channel: c.channel.as_deref(),
                state: &c.state,
                consent_type: &c.consent_type,
                legal_basis: &c.legal_basis,
                jurisdiction: &c.jurisdiction,
                notice_id: &c.notice_id,
                notice_version: &c.notice_version,
                collection_method: &c.collection_method,
                collected_at: rfc3339(c.collected_at),
                expires_at: c.expires_at.map(rfc3339),
                guardian: c.guardian_ref.as_deref().map(digest),
            }),
            _ => None,
        },
        signal: match change {
            Change::Signal { kind, value, .. } if kind == "guardian" => {
                Some((kind.as_str(), digest(value)))
            }
            Change::Signal { kind, value, .. } => Some((kind.as_str(), value.clone())),
            _ => None,
        },
        signal_method: match change {
            Change::Signal {
                collection_method, ..
            } => Some(collection_method.as_str()),
            _ => None,
        },
        restricted: match change {
            Change::Restrict { restricted, .. } => Some(*restricted),
            _ => None,
        },
    };
    serde_json::to_string(&event).expect("serializing plain data cannot fail")
}

/// The result of walking the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries walked.
    pub entries_checked: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints_checked: u64,
    /// The first broken link: (seq, what is wrong).
    pub broken: Option<(u64, String)>,
    /// Hash of the last entry walked.
    pub head_hash: Vec<u8>,
}

/// Re-walks the whole chain from the store, page by page, and checks every checkpoint.
///
/// Detects an edited entry (its hash no longer matches), a deleted or reordered entry (a gap
/// or a broken `prev_hash` link), a rewritten suffix (a signed checkpoint disagrees), and a
/// truncation (a checkpoint lies beyond the last entry).
pub async fn verify(
    store: &dyn ConsentStore,
    key: &VerifyingKey,
) -> Result<VerifyReport, StoreError> {
    let checkpoints = store.checkpoints().await?;
    let mut report = VerifyReport {
        entries_checked: 0,
        checkpoints_checked: 0,
        broken: None,
        head_hash: GENESIS_HASH.to_vec(),
    };
    // Checkpoint signatures first: a forged checkpoint makes every later comparison meaningless.
    for cp in &checkpoints {
        if !signature_ok(key, cp) {
            report.broken = Some((cp.seq, "checkpoint signature does not verify".into()));
            return Ok(report);
        }
    }
    let mut cps = checkpoints.iter().peekable();
    let mut prev_hash = GENESIS_HASH.to_vec();
    let mut expected_seq = 1u64;
    loop {
        let page = store.ledger(expected_seq - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            let broken = if entry.seq != expected_seq {
                Some((
                    expected_seq,
                    format!("missing entry (next entry found is {})", entry.seq),
                ))
            } else if entry.prev_hash != prev_hash {
                Some((
                    entry.seq,
                    "prev_hash does not link to the previous entry".into(),
                ))
            } else if chain_hash(&prev_hash, &entry.event) != entry.hash {
                Some((entry.seq, "hash mismatch: the entry was altered".into()))
            } else if !event_seq_matches(&entry.event, entry.seq) {
                Some((
                    entry.seq,
                    "the entry's content belongs at another position".into(),
                ))
            } else {
                None
            };
            if let Some(b) = broken {
                report.broken = Some(b);
                return Ok(report);
            }
            // A checkpoint is signed at every CHECKPOINT_EVERY-th entry: one missing was deleted.
            if entry.seq.is_multiple_of(CHECKPOINT_EVERY)
                && cps.peek().is_none_or(|cp| cp.seq != entry.seq)
            {
                report.broken = Some((
                    entry.seq,
                    "the signed checkpoint of this entry is missing".into(),
                ));
                return Ok(report);
            }
            while let Some(cp) = cps.peek().filter(|cp| cp.seq <= entry.seq) {
                if cp.seq == entry.seq && cp.hash != entry.hash {
                    report.broken = Some((
                        entry.seq,
                        "the entry disagrees with a signed checkpoint".into(),
                    ));
                    return Ok(report);
                }
                report.checkpoints_checked += 1;
                cps.next();
            }
            prev_hash = entry.hash;
            report.entries_checked += 1;
            expected_seq += 1;
        }
    }
    if let Some(cp) = cps.next() {
        report.broken = Some((
            expected_seq,
            format!(
                "truncated: a signed checkpoint covers entry {} but the ledger ends at {}",
                cp.seq,
                expected_seq - 1
            ),
        ));
        return Ok(report);
    }
    report.head_hash = prev_hash;
    Ok(report)
}

fn signature_ok(key: &VerifyingKey, cp: &Checkpoint) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(cp.signature.as_slice()) else {
        return false;
    };
    key.verify(
        &checkpoint_message(cp.seq, &cp.hash),
        &ed25519_dalek::Signature::from_bytes(&bytes),
    )
    .is_ok()
}

fn event_seq_matches(event: &str, seq: u64) -> bool {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_str::<Seq>(event).is_ok_and(|e| e.seq == seq)
}
