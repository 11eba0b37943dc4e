//! The access-log verifier: re-walks the chain from the store and names the first broken entry.
//! It reads the store; the store never imports it.

use super::entry::canonical;
use crate::store::{ProfileStore, StoreError};
use consentgate_chain::{Break, HexLinks, Walk};

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
    let mut walk = Walk::<HexLinks>::new();
    loop {
        let page = store.access_log_page(walk.next_seq() - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for record in page {
            let checked = walk.check(
                record.seq,
                &record.prev_hash,
                &record.hash,
                &canonical(&record),
            );
            if let Err(broken) = checked {
                let problem = match broken {
                    Break::Gap { found } => format!("missing entry (found {found} next)"),
                    Break::Unlinked => "previous-hash link mismatch".to_owned(),
                    Break::Altered => "hash mismatch (the entry was altered)".to_owned(),
                };
                return Ok(Verification {
                    entries_checked: walk.entries_checked(),
                    broken: Some((walk.next_seq(), problem)),
                    head_hash: walk.into_head(),
                });
            }
            walk.accept(record.hash);
        }
    }
    Ok(Verification {
        entries_checked: walk.entries_checked(),
        broken: None,
        head_hash: walk.into_head(),
    })
}
