//! The access log ("who read my data"): every gated read becomes an entry in a hash chain,
//! `h_n = SHA-256(h_{n-1} ‖ canonical(entry_n))`, written by one task that records whatever reads
//! are waiting in one go (group commit): committed to the table, or, on a SQLite file, appended to
//! the store's journal and chained into the table every 100 ms (see `store::journal`). A read's
//! data is returned only after its entry is durable: if the log cannot be written, the read fails.
//!
//! Entries name the subject by a pseudonym under a per-subject key; erasing the key
//! (crypto-shredding) leaves the chain verifiable and the entries anonymous.

use crate::model::{AccessDraft, AccessRecord};
use crate::store::{ProfileStore, StoreError};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The most entries committed in one transaction.
const MAX_BATCH: usize = 512;

/// How often journaled entries are chained into the log (where the store journals).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A fresh per-subject key (hex).
pub fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::corrupt(format!("no randomness for a key: {e}")))?;
    Ok(hex::encode(bytes))
}

/// The subject's pseudonym under its key.
pub fn pseudonym(secret: &str, subject_key: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(subject_key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The entry's hash: SHA-256 over the previous hash and the entry's canonical JSON.
pub fn chain_hash(record: &AccessRecord) -> String {
    // A tuple serializes as the same compact JSON array as `json!([...])` did, without building
    // a `Value` tree first (the flush chains hundreds of entries at a time).
    let canonical = serde_json::to_string(&(
        record.seq,
        record.read_at,
        &record.pseudonym,
        &record.caller,
        &record.enforced_by,
        &record.purpose,
        &record.categories,
        record.revision,
        &record.operation,
        record.items,
    ))
    .expect("strings and numbers serialize");
    let mut hasher = Sha256::new();
    hasher.update(record.prev_hash.as_bytes());
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// How many entries were checked.
    pub entries_checked: u64,
    /// The first broken entry and what is wrong with it.
    pub broken: Option<(u64, String)>,
    /// The last entry's hash.
    pub head_hash: String,
}

/// Re-walks the whole chain.
pub async fn verify(store: &dyn ProfileStore) -> Result<Verification, StoreError> {
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    let mut checked = 0;
    loop {
        let page = store.access_log_page(expected_seq - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for record in page {
            let broken = if record.seq != expected_seq {
                Some(format!("missing entry (found {} next)", record.seq))
            } else if record.prev_hash != prev {
                Some("previous-hash link mismatch".to_owned())
            } else if chain_hash(&record) != record.hash {
                Some("hash mismatch (the entry was altered)".to_owned())
            } else {
                None
            };
            if let Some(problem) = broken {
                return Ok(Verification {
                    entries_checked: checked,
                    broken: Some((expected_seq, problem)),
                    head_hash: prev,
                });
            }
            prev = record.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
    Ok(Verification {
        entries_checked: checked,
        broken: None,
        head_hash: prev,
    })
}

struct Pending {
    draft: AccessDraft,
    done: oneshot::Sender<Result<(), String>>,
}

/// The group-committing writer. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Pending>,
}

impl AccessLog {
    /// Starts the writer task over `store`.
    pub fn start(store: Arc<dyn ProfileStore>) -> AccessLog {
        let (queue, mut incoming) = mpsc::channel::<Pending>(8192);
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    next = incoming.recv() => match next {
                        Some(first) => first,
                        None => break,
                    },
                    // The flush runs here, between groups of reads, not in a task of its own:
                    // run concurrently, it slowed every read that overlapped it (GetProfile p99
                    // ~2.9x the health floor instead of ~1.7x on 2 cores, BENCHMARKS.md);
                    // inline, a few reads wait for it once per interval.
                    _ = flush.tick() => {
                        if let Err(e) = store.flush_access().await {
                            tracing::error!(error = %e.log_safe(), "chaining the access journal failed; retrying");
                        }
                        continue;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let drafts: Vec<AccessDraft> = batch.iter().map(|p| p.draft.clone()).collect();
                let outcome = store.append_access(&drafts).await.map_err(|e| e.log_safe());
                if let Err(why) = &outcome {
                    tracing::error!(error = %why, entries = batch.len(), "access log write failed; the reads fail");
                }
                for p in batch {
                    let _ = p.done.send(outcome.clone());
                }
            }
        });
        AccessLog { queue }
    }

    /// Records one read durably; returns once its entry is committed or journaled.
    pub async fn record(&self, draft: AccessDraft) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Pending { draft, done })
            .await
            .map_err(|_| "the access log writer stopped".to_owned())?;
        committed
            .await
            .map_err(|_| "the access log writer stopped".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries chained before the canonical form was serialized from a tuple must still verify:
    /// the bytes hashed are the same as `json!([...]).to_string()`, escapes included.
    #[test]
    fn the_canonical_form_is_unchanged() {
        let record = AccessRecord {
            seq: 18_446_744_073_709_551_615,
            read_at: -5,
            pseudonym: "ab\"c\\d".into(),
            caller: "mail\ner\u{7}".into(),
            enforced_by: "profile-service".into(),
            purpose: "marketing ✉".into(),
            categories: "user.contact.email,user.health".into(),
            revision: 0,
            operation: "GetProfile".into(),
            items: 3,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        let old = serde_json::json!([
            record.seq,
            record.read_at,
            record.pseudonym,
            record.caller,
            record.enforced_by,
            record.purpose,
            record.categories,
            record.revision,
            record.operation,
            record.items,
        ]);
        let mut hasher = Sha256::new();
        hasher.update(record.prev_hash.as_bytes());
        hasher.update(old.to_string().as_bytes());
        assert_eq!(chain_hash(&record), hex::encode(hasher.finalize()));
    }
}
