//! Walking a chain to verify it: each entry must come at the next position, link to the entry
//! before it, and hash to what it stores. Both verifiers (the consent ledger's, the access log's)
//! feed their entries through one [`Walk`] and add only what is theirs (checkpoints).

use crate::link::Links;

/// Why an entry breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// An entry is missing: the next one stored is at `found`.
    Gap {
        /// The position of the entry found instead.
        found: u64,
    },
    /// The entry's `prev_hash` is not the previous entry's hash (deleted, reordered or forged).
    Unlinked,
    /// The entry's hash is not the hash of its content (the entry was altered).
    Altered,
}

/// A chain verified up to some entry: the next position expected and the last link accepted.
#[derive(Debug, Clone)]
pub struct Walk<L: Links> {
    head: L::Link,
    next_seq: u64,
}

impl<L: Links> Default for Walk<L> {
    fn default() -> Self {
        Walk::new()
    }
}

impl<L: Links> Walk<L> {
    /// A walk from the genesis, expecting entry 1.
    pub fn new() -> Self {
        Walk {
            head: L::genesis(),
            next_seq: 1,
        }
    }

    /// A walk that takes entry `seq`, with link `head`, as verified (by whoever trusts it: an
    /// auditor who verified up to there before, or a signed checkpoint) and expects entry
    /// `seq + 1`. `resume(0, genesis)` is [`Walk::new`].
    pub fn resume(seq: u64, head: L::Link) -> Self {
        Walk {
            head,
            next_seq: seq + 1,
        }
    }

    /// The position the next entry must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries accepted so far.
    pub fn entries_checked(&self) -> u64 {
        self.next_seq - 1
    }

    /// The last accepted entry's hash (the genesis before any).
    pub fn head(&self) -> &L::Link {
        &self.head
    }

    /// The head, consuming the walk.
    pub fn into_head(self) -> L::Link {
        self.head
    }

    /// Checks the entry at `seq` storing `prev` and `hash` over `canonical`, without accepting
    /// it (a verifier may have more to check first).
    pub fn check(
        &self,
        seq: u64,
        prev: &L::Link,
        hash: &L::Link,
        canonical: &str,
    ) -> Result<(), Break> {
        if seq != self.next_seq {
            Err(Break::Gap { found: seq })
        } else if *prev != self.head {
            Err(Break::Unlinked)
        } else if L::next(prev, canonical) != *hash {
            Err(Break::Altered)
        } else {
            Ok(())
        }
    }

    /// Accepts the checked entry whose hash is `hash`.
    pub fn accept(&mut self, hash: L::Link) {
        self.head = hash;
        self.next_seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HexLinks, RawLinks};

    fn chain<L: Links>(events: &[&str]) -> Vec<(u64, L::Link, L::Link, String)> {
        let mut prev = L::genesis();
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let hash = L::next(&prev, e);
            out.push((i as u64 + 1, prev, hash.clone(), (*e).to_owned()));
            prev = hash;
        }
        out
    }

    fn walk<L: Links>(entries: &[(u64, L::Link, L::Link, String)]) -> Result<u64, (u64, Break)> {
        let mut w = Walk::<L>::new();
        for (seq, prev, hash, event) in entries {
            w.check(*seq, prev, hash, event)
                .map_err(|b| (w.next_seq(), b))?;
            w.accept(hash.clone());
        }
        Ok(w.entries_checked())
    }

    #[test]
    fn an_intact_chain_walks_in_both_link_forms() {
        let events = ["a", "b", "c"];
        assert_eq!(walk::<RawLinks>(&chain::<RawLinks>(&events)), Ok(3));
        assert_eq!(walk::<HexLinks>(&chain::<HexLinks>(&events)), Ok(3));
    }

    #[test]
    fn edits_deletions_and_relinks_are_named_at_their_position() {
        let good = chain::<HexLinks>(&["a", "b", "c", "d"]);
        let mut edited = good.clone();
        edited[2].3 = "C".into();
        assert_eq!(walk::<HexLinks>(&edited), Err((3, Break::Altered)));
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(
            walk::<HexLinks>(&deleted),
            Err((2, Break::Gap { found: 3 }))
        );
        let mut relinked = good.clone();
        relinked[1].1 = HexLinks::genesis();
        assert_eq!(walk::<HexLinks>(&relinked), Err((2, Break::Unlinked)));
    }
}
