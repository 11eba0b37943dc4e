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
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a verification starts: a point of the ledger the auditor trusts. Trust comes from
/// the auditor, never from the server: a marker the server kept ("verified up to here") would
/// prove nothing against a tampered database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The genesis: the whole ledger.
    Genesis,
    /// An entry the auditor verified before (a previous verification's head): its position
    /// and hash. The stored entry must still have that hash.
    Verified {
        /// The entry's sequence number (≥ 1).
        seq: u64,
        /// Its hash (32 bytes).
        hash: Vec<u8>,
    },
    /// A signed checkpoint, trusted once its signature verifies with the public key its key id
    /// names; the stored entry must have its hash.
    Checkpoint(Checkpoint),
}

impl Start {
    /// The position and hash the walk resumes after.
    fn point(&self) -> (u64, Vec<u8>) {
        match self {
            Start::Genesis => (0, GENESIS_HASH.to_vec()),
            Start::Verified { seq, hash } => (*seq, hash.clone()),
            Start::Checkpoint(cp) => (cp.seq, cp.hash.clone()),
        }
    }
}

/// The result of walking the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Where the walk started: 0 for the genesis, else the trusted entry's position.
    pub from_seq: u64,
    /// Entries walked (after the starting point).
    pub entries_checked: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints_checked: u64,
    /// The key ids that signed the checkpoints checked, in the order they first signed (an
    /// auditor sees where the ledger spans a rotation; `None`: stored without a key id).
    pub signers: Vec<Option<String>>,
    /// The first broken link: (seq, what is wrong).
    pub broken: Option<(u64, String)>,
    /// The position of the last entry verified (the ledger's head when whole).
    pub head_seq: u64,
    /// Hash of the last entry walked.
    pub head_hash: Vec<u8>,
    /// The last signed checkpoint verified (the starting one if none was walked past): a start
    /// for the next verification that needs no memory of this one.
    pub last_checkpoint: Option<Checkpoint>,
    /// How long the walk took.
    pub took: Duration,
}

impl VerifyReport {
    /// Entries verified per second of this walk.
    pub fn entries_per_second(&self) -> f64 {
        let secs = self.took.as_secs_f64();
        if secs > 0.0 {
            self.entries_checked as f64 / secs
        } else {
            0.0
        }
    }
}

/// Checkpoints read per query: the walk holds one page of them at a time, however long the
/// ledger.
const CHECKPOINT_PAGE: u32 = 1000;
/// Entries read per query.
const ENTRY_PAGE: u32 = 1000;

/// A walk in progress: what a report is made of.
struct Progress {
    from_seq: u64,
    walk: Walk<RawLinks>,
    checkpoints_checked: u64,
    signers: Vec<Option<String>>,
    last_checkpoint: Option<Checkpoint>,
    began: Instant,
}

impl Progress {
    fn report(self, broken: Option<(u64, String)>) -> VerifyReport {
        let entries_checked = self.walk.entries_checked() - self.from_seq;
        let head_seq = self.walk.entries_checked();
        let (head_hash, signers) = match broken {
            // The head of a broken chain is not reported.
            Some(_) => (GENESIS_HASH.to_vec(), Vec::new()),
            None => (self.walk.into_head(), self.signers),
        };
        VerifyReport {
            from_seq: self.from_seq,
            entries_checked,
            checkpoints_checked: self.checkpoints_checked,
            signers,
            broken,
            head_seq,
            head_hash,
            last_checkpoint: self.last_checkpoint,
            took: self.began.elapsed(),
        }
    }
}

/// Re-walks the whole chain from the store, page by page, and checks every checkpoint.
pub async fn verify(
    store: &dyn ConsentStore,
    keys: &VerifyingKeys,
) -> Result<VerifyReport, StoreError> {
    verify_from(store, keys, &Start::Genesis).await
}

/// Walks the chain from `start` to its end, page by page, and checks every checkpoint after
/// `start`: the cost is the entries after the trusted point, not the ledger's length.
///
/// Detects an edited entry (its hash no longer matches), a deleted or reordered entry (a gap
/// or a broken `prev_hash` link), a rewritten suffix (a signed checkpoint disagrees), a
/// truncation (a checkpoint, or the trusted point, lies beyond the last entry), and a rewritten
/// past (the stored entry at the trusted point no longer has the trusted hash). A checkpoint's
/// signature is checked when the walk reaches it; a starting checkpoint's before anything else.
pub async fn verify_from(
    store: &dyn ConsentStore,
    keys: &VerifyingKeys,
    start: &Start,
) -> Result<VerifyReport, StoreError> {
    let (from_seq, from_hash) = start.point();
    let mut progress = Progress {
        from_seq,
        walk: Walk::resume(from_seq, from_hash.clone()),
        checkpoints_checked: 0,
        signers: Vec::new(),
        last_checkpoint: None,
        began: Instant::now(),
    };
    if let Start::Checkpoint(cp) = start {
        if let Err(problem) = signature_ok(keys, cp) {
            let problem = format!("the starting checkpoint: {problem}");
            return Ok(progress.report(Some((cp.seq, problem))));
        }
        progress.signers.push(cp.kid.clone());
        progress.last_checkpoint = Some(cp.clone());
    }
    if from_seq > 0 {
        match store.ledger(from_seq - 1, 1).await?.first() {
            Some(entry) if entry.seq == from_seq && entry.hash == from_hash => {}
            Some(entry) if entry.seq == from_seq => {
                let problem = "the entry differs from the trusted starting point".to_owned();
                return Ok(progress.report(Some((from_seq, problem))));
            }
            _ => {
                let last = store.ledger_extent().await?.last_entry;
                let problem = format!(
                    "truncated: the trusted starting point is entry {from_seq} but the ledger ends at {last}"
                );
                return Ok(progress.report(Some((from_seq, problem))));
            }
        }
    }

    // The checkpoints ahead of the walk, a page at a time.
    let mut cps: VecDeque<Checkpoint> = VecDeque::new();
    let mut more_checkpoints = true;
    let mut refill = async |cps: &mut VecDeque<Checkpoint>, after: u64| {
        if cps.is_empty() && more_checkpoints {
            let page = store.checkpoints(after, CHECKPOINT_PAGE).await?;
            more_checkpoints = page.len() == CHECKPOINT_PAGE as usize;
            cps.extend(page);
        }
        Ok::<(), StoreError>(())
    };
    loop {
        let page = store
            .ledger(progress.walk.next_seq() - 1, ENTRY_PAGE)
            .await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            let seq = progress.walk.next_seq();
            refill(&mut cps, seq - 1).await?;
            let problem: Option<String> =
                match progress
                    .walk
                    .check(entry.seq, &entry.prev_hash, &entry.hash, &entry.event)
                {
                    Err(Break::Gap { found }) => {
                        Some(format!("missing entry (next entry found is {found})"))
                    }
                    Err(Break::Unlinked) => {
                        Some("prev_hash does not link to the entry before it (or to the trusted starting point)".into())
                    }
                    Err(Break::Altered) => Some("hash mismatch: the entry was altered".into()),
                    Ok(()) if !event_seq_matches(&entry.event, seq) => {
                        Some("the entry's content belongs at another position".into())
                    }
                    // A checkpoint is signed at every CHECKPOINT_EVERY-th entry: one missing was deleted.
                    Ok(())
                        if seq.is_multiple_of(CHECKPOINT_EVERY)
                            && cps.front().is_none_or(|cp| cp.seq != seq) =>
                    {
                        Some("the signed checkpoint of this entry is missing".into())
                    }
                    Ok(()) => None,
                };
            if let Some(problem) = problem {
                return Ok(progress.report(Some((seq, problem))));
            }
            while let Some(cp) = cps.front().filter(|cp| cp.seq <= seq) {
                // A forged checkpoint makes every comparison with it meaningless.
                if let Err(problem) = signature_ok(keys, cp) {
                    let at = cp.seq;
                    return Ok(progress.report(Some((at, problem))));
                }
                if cp.seq == seq && cp.hash != entry.hash {
                    let problem = "the entry disagrees with a signed checkpoint".to_owned();
                    return Ok(progress.report(Some((seq, problem))));
                }
                if !progress.signers.contains(&cp.kid) {
                    progress.signers.push(cp.kid.clone());
                }
                progress.checkpoints_checked += 1;
                progress.last_checkpoint = cps.pop_front();
            }
            progress.walk.accept(entry.hash);
        }
    }
    let last = progress.walk.entries_checked();
    refill(&mut cps, last).await?;
    if let Some(cp) = cps.front() {
        let problem = format!(
            "truncated: a signed checkpoint covers entry {} but the ledger ends at {last}",
            cp.seq
        );
        return Ok(progress.report(Some((last + 1, problem))));
    }
    Ok(progress.report(None))
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

/// Whether the event names the position it is stored at (either version's form).
fn event_seq_matches(event: &str, seq: u64) -> bool {
    super::entry::head(event).is_some_and(|h| h.seq == seq)
}
