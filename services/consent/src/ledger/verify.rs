//! The ledger verifier: re-walks the chain from the store, page by page, checks every signed
//! checkpoint, and names the first broken link. It reads the store; the store never imports it.
//!
//! Each checkpoint is verified with the key its key id names (one stored without an id, with
//! the keyring's key for those: the bare seed's); an id no key has breaks the ledger there,
//! so a rotation never makes old checkpoints unverifiable and never lets one pass unchecked.

use super::entry::CHECKPOINT_EVERY;
use super::keys::VerifyingKeys;
use crate::model::Checkpoint;
use crate::store::{ConsentStore, StoreError};
use consentgate_chain::{Break, GENESIS_HASH, RawLinks, Walk, checkpoint_message};
use ed25519_dalek::Verifier;

/// The result of walking the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries walked.
    pub entries_checked: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints_checked: u64,
    /// The key ids that signed the checkpoints checked, in the order they first signed (an
    /// auditor sees where the ledger spans a rotation; `None`: stored without a key id).
    pub signers: Vec<Option<String>>,
    /// The first broken link: (seq, what is wrong).
    pub broken: Option<(u64, String)>,
    /// Hash of the last entry walked.
    pub head_hash: Vec<u8>,
}

impl VerifyReport {
    /// A walk stopped at `seq` (the head is not reported for a broken chain).
    fn broken(walk: &Walk<RawLinks>, checkpoints_checked: u64, seq: u64, problem: String) -> Self {
        VerifyReport {
            entries_checked: walk.entries_checked(),
            checkpoints_checked,
            signers: Vec::new(),
            broken: Some((seq, problem)),
            head_hash: GENESIS_HASH.to_vec(),
        }
    }
}

/// Re-walks the whole chain from the store, page by page, and checks every checkpoint.
///
/// Detects an edited entry (its hash no longer matches), a deleted or reordered entry (a gap
/// or a broken `prev_hash` link), a rewritten suffix (a signed checkpoint disagrees), and a
/// truncation (a checkpoint lies beyond the last entry).
pub async fn verify(
    store: &dyn ConsentStore,
    keys: &VerifyingKeys,
) -> Result<VerifyReport, StoreError> {
    let checkpoints = store.checkpoints().await?;
    let mut walk = Walk::<RawLinks>::new();
    let mut checkpoints_checked = 0;
    // Checkpoint signatures first: a forged checkpoint makes every later comparison meaningless.
    let mut signers: Vec<Option<String>> = Vec::new();
    for cp in &checkpoints {
        if let Err(problem) = signature_ok(keys, cp) {
            return Ok(VerifyReport::broken(&walk, 0, cp.seq, problem));
        }
        if !signers.contains(&cp.kid) {
            signers.push(cp.kid.clone());
        }
    }
    let mut cps = checkpoints.iter().peekable();
    loop {
        let page = store.ledger(walk.next_seq() - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            let seq = walk.next_seq();
            let problem: Option<String> =
                match walk.check(entry.seq, &entry.prev_hash, &entry.hash, &entry.event) {
                    Err(Break::Gap { found }) => {
                        Some(format!("missing entry (next entry found is {found})"))
                    }
                    Err(Break::Unlinked) => {
                        Some("prev_hash does not link to the previous entry".into())
                    }
                    Err(Break::Altered) => Some("hash mismatch: the entry was altered".into()),
                    Ok(()) if !event_seq_matches(&entry.event, seq) => {
                        Some("the entry's content belongs at another position".into())
                    }
                    // A checkpoint is signed at every CHECKPOINT_EVERY-th entry: one missing was deleted.
                    Ok(())
                        if seq.is_multiple_of(CHECKPOINT_EVERY)
                            && cps.peek().is_none_or(|cp| cp.seq != seq) =>
                    {
                        Some("the signed checkpoint of this entry is missing".into())
                    }
                    Ok(()) => None,
                };
            if let Some(problem) = problem {
                let report = VerifyReport::broken(&walk, checkpoints_checked, seq, problem);
                return Ok(report);
            }
            while let Some(cp) = cps.peek().filter(|cp| cp.seq <= seq) {
                if cp.seq == seq && cp.hash != entry.hash {
                    let problem = "the entry disagrees with a signed checkpoint".to_owned();
                    let report = VerifyReport::broken(&walk, checkpoints_checked, seq, problem);
                    return Ok(report);
                }
                checkpoints_checked += 1;
                cps.next();
            }
            walk.accept(entry.hash);
        }
    }
    if let Some(cp) = cps.next() {
        let last = walk.entries_checked();
        let problem = format!(
            "truncated: a signed checkpoint covers entry {} but the ledger ends at {last}",
            cp.seq
        );
        return Ok(VerifyReport::broken(
            &walk,
            checkpoints_checked,
            last + 1,
            problem,
        ));
    }
    Ok(VerifyReport {
        entries_checked: walk.entries_checked(),
        checkpoints_checked,
        signers,
        broken: None,
        head_hash: walk.into_head(),
    })
}

/// Checks a checkpoint's signature with the key its key id names; the problem otherwise.
fn signature_ok(keys: &VerifyingKeys, cp: &Checkpoint) -> Result<(), String> {
    let key = keys
        .lookup(cp.kid.as_deref())
        .map_err(|e| format!("checkpoint signature cannot be checked: {e}"))?;
    let by = format!("key id {}", key.kid);
    let bytes = <[u8; 64]>::try_from(cp.signature.as_slice())
        .map_err(|_| format!("checkpoint signature does not verify ({by}): not 64 bytes"))?;
    key.key
        .verify(
            &checkpoint_message(cp.seq, &cp.hash),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| format!("checkpoint signature does not verify ({by})"))
}

fn event_seq_matches(event: &str, seq: u64) -> bool {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_str::<Seq>(event).is_ok_and(|e| e.seq == seq)
}
