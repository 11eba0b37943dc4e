//! Item-to-item co-occurrence, learned only from subjects who consented to the training purpose,
//! updated incrementally, and unlearned *exactly*: every subject's contribution (the set of items
//! it added) is kept, tagged with the consent revision it was learned under, so that withdrawing or
//! erasing the subject subtracts precisely what it added. After `unlearn(s)` the model equals, count
//! for count, the model trained from scratch without `s` (a property test checks this).
//!
//! The contribution is derived data about the subject: it is dropped by `unlearn`, which the
//! service calls on every withdrawal or erasure change event.
//!
//! A consent can also lapse without any event (its `expires_at` passes), so a contribution may
//! carry a [`Lease`]: until when the training decision that allowed it holds. The model keeps the
//! leases in time order so that the service can find the lapsed ones without scanning every
//! subject ([`CoOccurrence::lapsed`]), ask again, and renew or unlearn each. Leases are not counts:
//! they never change what the model recommends, and unlearning a leased subject is exactly as
//! exact as any other.

use crate::catalog::Catalog;
use consentgate_proto::common::v1::RequestContext;
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// The most distinct items one subject contributes (the first ones given, usually the most
/// recent): bounds a subject's pairs at 200 × 199 / 2.
pub const MAX_ITEMS_PER_SUBJECT: usize = 200;

/// What one subject added to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contribution {
    items: BTreeSet<u32>,
    revision: u64,
    /// Until when the decision that allowed learning holds; `None`: held until unlearned.
    lease: Option<Lease>,
}

/// Until when the consent decision that allowed learning a subject holds, and how it was asked,
/// so that it can be asked again when it lapses. A consent that expires produces no change
/// event; without a lease its subject would stay in the model for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The training decision's `valid_until`: the earliest of the policy's TTL and the expiry of
    /// every record behind it. Past it the contribution rests on nothing until re-checked.
    pub until: SystemTime,
    /// The request context (jurisdiction, GPC) the decision was made under: the re-check asks
    /// the same question, so that a subject is not unlearned merely for being asked differently.
    pub context: Option<RequestContext>,
}

/// A learned subject whose lease has lapsed, as [`CoOccurrence::lapsed`] found it. Renewing or
/// unlearning it applies only while the subject is still held exactly so (same revision, same
/// lease): a subject re-learned meanwhile rests on a newer decision and is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapsed {
    /// The subject's key.
    pub subject: String,
    /// The consent revision it was learned under.
    pub revision: u64,
    /// The lease that lapsed.
    pub lease: Lease,
}

/// The co-occurrence model.
#[derive(Debug, Default, Clone)]
pub struct CoOccurrence {
    ids: Vec<String>,
    index: HashMap<String, u32>,
    /// Subjects whose histories hold both items, in both directions (`neighbors[a][b]` =
    /// `neighbors[b][a]`), so that `similar` reads one item's neighbors, not every pair.
    neighbors: HashMap<u32, HashMap<u32, u32>>,
    /// By model id: how many subjects' histories hold the item (0: none now). Dense, because
    /// ranking reads it once per neighbor.
    items: Vec<u32>,
    contributions: HashMap<String, Contribution>,
    /// The leased subjects by lease end, earliest first: finding the lapsed ones reads only
    /// them, however many subjects the model holds.
    leases: BTreeSet<(SystemTime, String)>,
    /// Each interned item's position in one catalog (see [`CoOccurrence::align`]).
    alignment: Alignment,
}

/// Model ids resolved to one catalog's positions, so that ranking walks thousands of neighbors
/// per request without hashing an item id for each. Derived from `ids` and the catalog only.
#[derive(Debug, Default, Clone)]
struct Alignment {
    /// The catalog's [`Catalog::stamp`].
    catalog: u64,
    /// By model id: the catalog position, or `u32::MAX` when the catalog lacks the item.
    positions: Vec<u32>,
    /// By model id: the item's [`NEAREST`] neighbors in the catalog as `(position, similarity)`,
    /// for the items ranking anchored on (see [`CoOccurrence::prepare`]). A request then reads
    /// a short flat list per anchor instead of walking and sorting a hash map's row. A row is
    /// dropped as soon as a learn or unlearn changes any similarity in it, so it is always what
    /// a walk would give: derived data, unlearned with the counts.
    rows: Vec<Option<NearestRow>>,
    /// Entries held in `rows`, bounded by [`MAX_CACHED_SIMILARITIES`].
    cached: usize,
}

/// An item's nearest neighbors in one catalog: `(catalog position, similarity)`, in
/// [`nearness`] order.
type NearestRow = Box<[(u32, f64)]>;

/// How many of an item's neighbors ranking relates it to: its most similar ones. Weaker
/// co-occurrences are mostly chance, and a request anchored on 20 items then scores about a
/// thousand related items instead of most of the catalog.
pub const NEAREST: usize = 50;

/// The [`NEAREST`] of `(position, similarity)` in `catalog`, in [`nearness`] order.
fn nearest(catalog: &Catalog, found: impl Iterator<Item = (usize, f64)>) -> Vec<(usize, f64)> {
    let mut all: Vec<(usize, f64)> = found.collect();
    let order = |a: &(usize, f64), b: &(usize, f64)| nearness(catalog, *a, *b);
    if all.len() > NEAREST {
        all.select_nth_unstable_by(NEAREST - 1, order);
        all.truncate(NEAREST);
    }
    all.sort_unstable_by(order);
    all
}

/// The order of an item's neighbors `(position, similarity)`: most similar first; among equally
/// similar ones (sparse counts tie often), the more popular, then the lower position.
pub fn nearness(catalog: &Catalog, a: (usize, f64), b: (usize, f64)) -> std::cmp::Ordering {
    let popularity = |p: usize| catalog.items().get(p).map_or(0, |i| i.popularity);
    b.1.total_cmp(&a.1)
        .then_with(|| popularity(b.0).cmp(&popularity(a.0)))
        .then(a.0.cmp(&b.0))
}

/// The most `(position, similarity)` entries the model keeps precomputed (16 bytes each: 64 MiB).
/// Past it, every row is dropped and rows are computed again as ranking asks for them.
const MAX_CACHED_SIMILARITIES: usize = 4 << 20;

/// The model's counts in a canonical form (by item id, zeros omitted), to compare two models.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Pair counts.
    pub pairs: BTreeMap<(String, String), u32>,
    /// Item counts.
    pub items: BTreeMap<String, u32>,
    /// The subjects that contributed, with the revision each was learned under.
    pub subjects: BTreeMap<String, u64>,
}

impl CoOccurrence {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = u32::try_from(self.ids.len()).expect("fewer than 4 billion items");
        self.ids.push(id.to_owned());
        self.items.push(0);
        self.index.insert(id.to_owned(), i);
        i
    }

    /// Learns `subject`'s history (item ids, most relevant first), replacing whatever it
    /// contributed before. `revision` is the consent revision that allowed it.
    pub fn learn<'a>(
        &mut self,
        subject: &str,
        history: impl IntoIterator<Item = &'a str>,
        revision: u64,
    ) {
        self.unlearn(subject);
        let mut items = BTreeSet::new();
        for id in history {
            if items.len() == MAX_ITEMS_PER_SUBJECT {
                break;
            }
            let i = self.intern(id);
            items.insert(i);
        }
        self.apply(&items, true);
        self.contributions.insert(
            subject.to_owned(),
            Contribution {
                items,
                revision,
                lease: None,
            },
        );
    }

    /// [`CoOccurrence::learn`], held only under `lease`: once `lease.until` passes, the subject
    /// is among [`CoOccurrence::lapsed`] until renewed or unlearned.
    pub fn learn_leased<'a>(
        &mut self,
        subject: &str,
        history: impl IntoIterator<Item = &'a str>,
        revision: u64,
        lease: Lease,
    ) {
        self.learn(subject, history, revision);
        self.leases.insert((lease.until, subject.to_owned()));
        if let Some(c) = self.contributions.get_mut(subject) {
            c.lease = Some(lease);
        }
    }

    /// Removes everything `subject` contributed; whether it had contributed anything.
    pub fn unlearn(&mut self, subject: &str) -> bool {
        match self.contributions.remove(subject) {
            Some(c) => {
                self.apply(&c.items, false);
                if let Some(lease) = c.lease {
                    self.leases.remove(&(lease.until, subject.to_owned()));
                }
                true
            }
            None => false,
        }
    }

    /// Up to `limit` learned subjects whose lease ended at or before `now`, earliest first.
    pub fn lapsed(&self, now: SystemTime, limit: usize) -> Vec<Lapsed> {
        self.leases
            .iter()
            .take_while(|(until, _)| *until <= now)
            .take(limit)
            .filter_map(|(_, subject)| {
                let c = self.contributions.get(subject)?;
                Some(Lapsed {
                    subject: subject.clone(),
                    revision: c.revision,
                    lease: c.lease.clone()?,
                })
            })
            .collect()
    }

    /// When the earliest lease ends, if any subject is leased.
    pub fn next_lapse(&self) -> Option<SystemTime> {
        self.leases.first().map(|(until, _)| *until)
    }

    /// The lease `subject` is held under, if it is learned and leased.
    pub fn lease(&self, subject: &str) -> Option<&Lease> {
        self.contributions.get(subject)?.lease.as_ref()
    }

    /// Whether the subject is still held exactly as `lapsed` found it.
    fn still(&self, lapsed: &Lapsed) -> bool {
        self.contributions.get(&lapsed.subject).is_some_and(|c| {
            c.revision == lapsed.revision && c.lease.as_ref() == Some(&lapsed.lease)
        })
    }

    /// A re-check allowed the subject again: it is held until `until`. Whether the lease was
    /// renewed (not when the subject changed meanwhile, see [`Lapsed`]).
    pub fn renew(&mut self, lapsed: &Lapsed, until: SystemTime) -> bool {
        if !self.still(lapsed) {
            return false;
        }
        self.leases
            .remove(&(lapsed.lease.until, lapsed.subject.clone()));
        self.leases.insert((until, lapsed.subject.clone()));
        if let Some(lease) = self
            .contributions
            .get_mut(&lapsed.subject)
            .and_then(|c| c.lease.as_mut())
        {
            lease.until = until;
        }
        true
    }

    /// A re-check denied the subject (or could not be made): unlearns it, exactly. Whether it
    /// was unlearned (not when the subject changed meanwhile, see [`Lapsed`]).
    pub fn unlearn_lapsed(&mut self, lapsed: &Lapsed) -> bool {
        self.still(lapsed) && self.unlearn(&lapsed.subject)
    }

    fn apply(&mut self, items: &BTreeSet<u32>, add: bool) {
        let bump = |count: &mut u32| {
            if add {
                *count += 1;
            } else {
                *count -= 1;
            }
        };
        for &i in items {
            bump(&mut self.items[i as usize]);
        }
        let list: Vec<u32> = items.iter().copied().collect();
        for (n, &a) in list.iter().enumerate() {
            for &b in &list[n + 1..] {
                for (x, y) in [(a, b), (b, a)] {
                    let row = self.neighbors.entry(x).or_default();
                    bump(row.entry(y).or_default());
                    if row.get(&y) == Some(&0) {
                        row.remove(&y);
                    }
                    if row.is_empty() {
                        self.neighbors.remove(&x);
                    }
                }
            }
        }
        self.drop_rows_touched_by(items);
    }

    /// Drops the precomputed rows whose similarities a learn or unlearn of `items` changed: the
    /// rows of the items themselves (their counts and pairs moved) and of every item now found
    /// with one of them (its similarity to it moved with the count). An item that was found
    /// with one of them only through this subject is itself in `items`.
    fn drop_rows_touched_by(&mut self, items: &BTreeSet<u32>) {
        let rows = &mut self.alignment.rows;
        let cached = &mut self.alignment.cached;
        if *cached == 0 {
            return;
        }
        let mut drop = |i: u32| {
            if let Some(row) = rows.get_mut(i as usize).and_then(Option::take) {
                *cached -= row.len();
            }
        };
        for &j in items {
            drop(j);
            for &x in self.neighbors.get(&j).into_iter().flat_map(HashMap::keys) {
                drop(x);
            }
        }
    }

    /// How many subjects hold model item `i`, if any do.
    fn count(&self, i: u32) -> Option<u32> {
        self.items.get(i as usize).copied().filter(|&c| c > 0)
    }

    /// The revision `subject` was learned under, if it contributed.
    pub fn learned_revision(&self, subject: &str) -> Option<u64> {
        self.contributions.get(subject).map(|c| c.revision)
    }

    /// How many subjects contributed.
    pub fn subjects(&self) -> usize {
        self.contributions.len()
    }

    /// Every item found with `item`, with its cosine similarity `c(i,j) / sqrt(c(i) c(j))`, as
    /// model ids, in no particular order (no allocation: ranking aggregates over many anchors).
    fn similarities<'a>(&'a self, item: &str) -> impl Iterator<Item = (u32, f64)> + 'a {
        self.index
            .get(item)
            .into_iter()
            .flat_map(|&i| self.similarities_of(i))
    }

    /// [`CoOccurrence::similarities`] of model item `i`.
    fn similarities_of(&self, i: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        let found = self
            .count(i)
            .and_then(|ci| Some((self.neighbors.get(&i)?, ci)));
        found.into_iter().flat_map(move |(row, ci)| {
            row.iter().filter_map(move |(&other, &count)| {
                let cj = self.count(other)?;
                Some((
                    other,
                    f64::from(count) / (f64::from(ci) * f64::from(cj)).sqrt(),
                ))
            })
        })
    }

    /// Every item found with `item`, with its cosine similarity, in no particular order.
    pub fn neighbors<'a>(&'a self, item: &str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.similarities(item)
            .map(|(other, similarity)| (self.ids[other as usize].as_str(), similarity))
    }

    /// Resolves every interned item to its position in `catalog` (only the items interned since
    /// the last call, unless the catalog changed), for [`CoOccurrence::for_each_nearest_in`].
    pub fn align(&mut self, catalog: &Catalog) {
        if self.alignment.catalog != catalog.stamp() {
            self.alignment = Alignment {
                catalog: catalog.stamp(),
                positions: Vec::with_capacity(self.ids.len()),
                rows: Vec::new(),
                cached: 0,
            };
        }
        let known = self.alignment.positions.len();
        self.alignment
            .positions
            .extend(self.ids[known..].iter().map(|id| {
                catalog
                    .index(id)
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(u32::MAX)
            }));
    }

    /// Aligns to `catalog` (see [`CoOccurrence::align`]) and precomputes the rows of `anchors`
    /// (item ids) that are not held yet, so that [`CoOccurrence::for_each_nearest_in`] reads
    /// them as flat lists.
    pub fn prepare<'a>(&mut self, catalog: &Catalog, anchors: impl IntoIterator<Item = &'a str>) {
        self.align(catalog);
        let mut wanted: Vec<u32> = Vec::new();
        for anchor in anchors {
            let Some(&i) = self.index.get(anchor) else {
                continue;
            };
            if self.row(i).is_none() && !wanted.contains(&i) {
                wanted.push(i);
            }
        }
        if wanted.is_empty() {
            return;
        }
        let positions = &self.alignment.positions;
        let computed: Vec<(u32, NearestRow)> = wanted
            .into_iter()
            .map(|i| {
                let found = self.similarities_of(i).filter_map(|(other, similarity)| {
                    let position = positions[other as usize];
                    (position != u32::MAX).then_some((position as usize, similarity))
                });
                let row = nearest(catalog, found)
                    .into_iter()
                    .map(|(position, similarity)| (position as u32, similarity))
                    .collect();
                (i, row)
            })
            .collect();
        let alignment = &mut self.alignment;
        if alignment.cached + computed.iter().map(|(_, r)| r.len()).sum::<usize>()
            > MAX_CACHED_SIMILARITIES
        {
            alignment.rows.clear();
            alignment.cached = 0;
        }
        alignment.rows.resize(self.ids.len(), None);
        for (i, row) in computed {
            alignment.cached += row.len();
            alignment.rows[i as usize] = Some(row);
        }
    }

    /// The precomputed row of model item `i`, if held.
    fn row(&self, i: u32) -> Option<&[(u32, f64)]> {
        self.alignment.rows.get(i as usize)?.as_deref()
    }

    /// Calls `f(position, similarity)` for the [`NEAREST`] items of `catalog` most similar to
    /// `item` (cosine similarity), in [`nearness`] order. A flat list
    /// when the model is aligned to `catalog` and the item's row was prepared (see
    /// [`CoOccurrence::prepare`]); the same items otherwise, found the slow way. A callback
    /// rather than an iterator: ranking calls it for thousands of items per request, and a loop
    /// over a slice is several times cheaper than a chain of iterator adapters.
    pub fn for_each_nearest_in(
        &self,
        catalog: &Catalog,
        item: &str,
        mut f: impl FnMut(usize, f64),
    ) {
        let aligned = self.alignment.catalog == catalog.stamp()
            && self.alignment.positions.len() == self.ids.len();
        if aligned && let Some(row) = self.index.get(item).and_then(|&i| self.row(i)) {
            for &(position, similarity) in row {
                f(position as usize, similarity);
            }
            return;
        }
        let positions = aligned.then_some(self.alignment.positions.as_slice());
        let found = self.similarities(item).filter_map(|(other, similarity)| {
            let position = match positions {
                Some(p) => Some(p[other as usize])
                    .filter(|&p| p != u32::MAX)
                    .map(|p| p as usize)?,
                None => catalog.index(&self.ids[other as usize])?,
            };
            Some((position, similarity))
        });
        for (position, similarity) in nearest(catalog, found) {
            f(position, similarity);
        }
    }

    /// The items most often found with `item`, best first, scored by cosine similarity
    /// `c(i,j) / sqrt(c(i) c(j))`; ties by item id.
    pub fn similar(&self, item: &str, n: usize) -> Vec<(String, f64)> {
        let mut scored: Vec<(String, f64)> = self
            .neighbors(item)
            .map(|(id, similarity)| (id.to_owned(), similarity))
            .collect();
        scored.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        scored.truncate(n);
        scored
    }

    /// The canonical counts.
    pub fn snapshot(&self) -> Snapshot {
        let name = |i: u32| self.ids[i as usize].clone();
        Snapshot {
            pairs: self
                .neighbors
                .iter()
                .flat_map(|(&a, row)| row.iter().map(move |(&b, &c)| (a, b, c)))
                .filter(|&(a, b, _)| name(a) < name(b))
                .map(|(a, b, c)| ((name(a), name(b)), c))
                .collect(),
            items: (0..self.items.len())
                .filter_map(|i| u32::try_from(i).ok())
                .filter_map(|i| self.count(i).map(|c| (name(i), c)))
                .collect(),
            subjects: self
                .contributions
                .iter()
                .map(|(s, c)| (s.clone(), c.revision))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_items_come_from_shared_histories() {
        let mut m = CoOccurrence::new();
        m.learn("a", ["tent", "headlamp", "stove"], 1);
        m.learn("b", ["tent", "headlamp"], 2);
        m.learn("c", ["novel"], 3);
        let similar = m.similar("tent", 5);
        assert_eq!(similar[0].0, "headlamp");
        assert!(similar.iter().all(|(id, _)| id != "novel"));
        assert!(m.unlearn("b"));
        assert!(!m.unlearn("b"));
        assert_eq!(m.similar("tent", 1)[0].0, "headlamp");
        assert_eq!(m.learned_revision("a"), Some(1));
        assert_eq!(m.learned_revision("b"), None);
    }

    #[test]
    fn lapsed_leases_are_found_in_time_order_and_renewed_or_unlearned() {
        use std::time::Duration;
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let lease = |s: u64| Lease {
            until: t(s),
            context: None,
        };
        let mut m = CoOccurrence::new();
        m.learn_leased("late", ["tent", "stove"], 1, lease(30));
        m.learn_leased("early", ["tent", "headlamp"], 2, lease(10));
        m.learn("unleased", ["tent", "novel"], 3);
        assert!(m.lapsed(t(9), 10).is_empty());
        assert_eq!(m.next_lapse(), Some(t(10)));
        let lapsed = m.lapsed(t(30), 10);
        let names: Vec<&str> = lapsed.iter().map(|l| l.subject.as_str()).collect();
        assert_eq!(names, ["early", "late"], "earliest first, unleased never");
        assert_eq!(m.lapsed(t(30), 1).len(), 1);
        // Renewed: no longer lapsed until the new end; a second renewal of the same find is stale.
        assert!(m.renew(&lapsed[0], t(50)));
        assert!(!m.renew(&lapsed[0], t(60)));
        assert_eq!(m.lease("early").map(|l| l.until), Some(t(50)));
        // Re-learned meanwhile: the lapsed find no longer applies.
        m.learn_leased("late", ["tent", "stove"], 4, lease(40));
        assert!(!m.unlearn_lapsed(&lapsed[1]));
        assert_eq!(m.learned_revision("late"), Some(4));
        let now_lapsed = m.lapsed(t(45), 10);
        assert_eq!(now_lapsed.len(), 1);
        assert!(m.unlearn_lapsed(&now_lapsed[0]));
        assert_eq!(m.learned_revision("late"), None);
        // Unlearning drops the lease too: nothing lapses for a subject that is gone.
        assert!(m.unlearn("early"));
        assert!(m.lapsed(t(1000), 10).is_empty());
        assert_eq!(m.next_lapse(), None);
        assert_eq!(m.subjects(), 1);
    }
}
