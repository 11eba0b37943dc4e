//! Ranking for each tier, pure: the catalog, the model and what the tier may use go in; items
//! with a score and a reason a person can read come out. Each tier uses only its own inputs: the
//! contextual and popular tiers never see anything about the person.

use crate::catalog::{Baseline, Catalog, Item};
use crate::model::CoOccurrence;
use crate::profile_reader::HistoryItem;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

/// The request's moment: derived from its context, never stored.
#[derive(Debug, Clone, Default)]
pub struct Moment {
    /// `spring` … `winter` (northern hemisphere, from the month).
    pub season: String,
    /// `morning`, `afternoon`, `evening`, `night` (from the hour, UTC).
    pub daypart: String,
    /// `mobile`, `desktop`, `tablet`, or empty.
    pub device: String,
    /// A region code, or empty.
    pub region: String,
    /// The item being viewed, or empty.
    pub current_item: String,
    /// Items seen in this session.
    pub session_items: Vec<String>,
    /// The weather where the person is (`rain`, `snow`, `sunny`, …), lowercase, or empty.
    pub weather: String,
}

impl Moment {
    /// The moment at `unix_seconds` with the request's other context.
    pub fn at(
        unix_seconds: i64,
        device: &str,
        region: &str,
        current_item: &str,
        session_items: &[String],
    ) -> Moment {
        let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let season = match u8::from(t.month()) {
            3..=5 => "spring",
            6..=8 => "summer",
            9..=11 => "autumn",
            _ => "winter",
        };
        let daypart = match t.hour() {
            5..=11 => "morning",
            12..=16 => "afternoon",
            17..=21 => "evening",
            _ => "night",
        };
        Moment {
            season: season.into(),
            daypart: daypart.into(),
            device: device.to_owned(),
            region: region.to_owned(),
            current_item: current_item.to_owned(),
            session_items: session_items.to_vec(),
            weather: String::new(),
        }
    }

    /// Whether the request said anything beyond the time.
    pub fn has_context(&self) -> bool {
        !self.device.is_empty()
            || !self.region.is_empty()
            || !self.current_item.is_empty()
            || !self.session_items.is_empty()
            || !self.weather.is_empty()
    }
}

/// A recommended item.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// The item's id.
    pub item_id: String,
    /// Higher is better.
    pub score: f64,
    /// Why, for a person.
    pub reason: String,
}

/// Why an item scored, kept as a code while 5,000 items are scored and rendered as a sentence
/// only for the few that are picked.
#[derive(Debug, Clone, Copy)]
enum Why {
    Popular,
    Region,
    Daypart,
    Season,
    Device,
    Weather,
    WithCurrent,
    WithSession,
    SameCategory,
    Told(usize),
    Viewed(usize),
    Bought(usize),
    FirstPick,
    Loyal,
    WelcomeBack,
}

#[derive(Debug, Clone, Copy)]
struct Scored {
    index: usize,
    score: f64,
    why: Why,
}

/// What a reason may mention.
struct Words<'a> {
    catalog: &'a Catalog,
    moment: &'a Moment,
    preferences: &'a [String],
}

impl Words<'_> {
    fn render(&self, why: Why) -> String {
        let m = self.moment;
        let title = |i: usize| self.catalog.items()[i].title.as_str();
        match why {
            Why::Popular => "popular right now".into(),
            Why::Region => format!("popular in your region ({}) this {}", m.region, m.daypart),
            Why::Daypart => format!("popular this {}", m.daypart),
            Why::Season => format!("a {} favorite", m.season),
            Why::Device => format!("popular on {}", m.device),
            Why::Weather => format!("made for today's weather ({})", m.weather),
            Why::WithCurrent => "often bought with the item you're viewing".into(),
            Why::WithSession => "goes with what you looked at today".into(),
            Why::SameCategory => "similar to the item you're viewing".into(),
            Why::Told(p) => format!(
                "because you told us you like {}",
                self.preferences[p].trim()
            ),
            Why::Viewed(i) => format!("because you viewed {}", title(i)),
            Why::Bought(i) => format!("because you bought {}", title(i)),
            Why::FirstPick => "a popular first pick with new customers".into(),
            Why::Loyal => "picked for our loyal customers".into(),
            Why::WelcomeBack => "new this season: welcome back".into(),
        }
    }
}

/// The best `n` by score (ties by id), skipping `exclude` and non-positive scores, as picks.
fn best(
    mut scored: Vec<Scored>,
    n: usize,
    exclude: &HashSet<usize>,
    words: &Words<'_>,
) -> Vec<Pick> {
    let items = words.catalog.items();
    scored.retain(|s| s.score > 0.0 && !exclude.contains(&s.index));
    let order = |a: &Scored, b: &Scored| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| items[a.index].id.cmp(&items[b.index].id))
    };
    if scored.len() > n && n > 0 {
        scored.select_nth_unstable_by(n - 1, order);
        scored.truncate(n);
    }
    scored.sort_by(order);
    scored.truncate(n);
    scored
        .into_iter()
        .map(|s| Pick {
            item_id: items[s.index].id.clone(),
            score: s.score,
            reason: words.render(s.why),
        })
        .collect()
}

fn popularity(item: &Item) -> f64 {
    f64::from(item.popularity) / 1000.0
}

/// How well an item fits the moment, and its strongest fit.
fn fit(item: &Item, moment: &Moment) -> (f64, Option<Why>) {
    let a = &item.affinity;
    let mut score = 0.0;
    let mut why = None;
    if !moment.region.is_empty() && a.regions.contains(&moment.region) {
        score += 0.3;
        why = Some(Why::Region);
    }
    if a.dayparts.contains(&moment.daypart) {
        score += 0.2;
        why.get_or_insert(Why::Daypart);
    }
    if a.seasons.contains(&moment.season) {
        score += 0.2;
        why.get_or_insert(Why::Season);
    }
    if !moment.device.is_empty() && a.devices.contains(&moment.device) {
        score += 0.1;
        why.get_or_insert(Why::Device);
    }
    let weather_fit = match moment.weather.as_str() {
        "rain" | "snow" | "storm" | "cold" => item
            .tags
            .iter()
            .any(|t| t == "waterproof" || t == "insulated"),
        "sunny" | "hot" => item.category.iter().any(|c| c == "sun care"),
        _ => false,
    };
    if weather_fit {
        score += 0.4;
        why = Some(Why::Weather);
    }
    (score, why)
}

/// What the person is looking at or saw this session: not worth recommending again.
fn seen(catalog: &Catalog, moment: &Moment) -> HashSet<usize> {
    std::iter::once(&moment.current_item)
        .chain(&moment.session_items)
        .filter_map(|id| catalog.index(id))
        .collect()
}

/// The popular tier: popularity alone (precomputed order).
pub fn popular(catalog: &Catalog, n: usize) -> Vec<Pick> {
    catalog
        .by_popularity()
        .iter()
        .take(n)
        .map(|&i| Pick {
            item_id: catalog.items()[i].id.clone(),
            score: popularity(&catalog.items()[i]),
            reason: "popular right now".into(),
        })
        .collect()
}

/// The contextual tier: the request's moment, and items often found with the current item and
/// this session's items (the model is aggregate; nothing about the person is used).
pub fn contextual(catalog: &Catalog, model: &CoOccurrence, moment: &Moment, n: usize) -> Vec<Pick> {
    let mut related: HashMap<usize, (f64, Why)> = HashMap::default();
    let anchors = std::iter::once((moment.current_item.as_str(), Why::WithCurrent)).chain(
        moment
            .session_items
            .iter()
            .map(|s| (s.as_str(), Why::WithSession)),
    );
    for (anchor, why) in anchors.filter(|(a, _)| !a.is_empty()) {
        model.for_each_nearest_in(catalog, anchor, |index, similarity| {
            related.entry(index).or_insert((0.0, why)).0 += similarity;
        });
    }
    let current_leaf = catalog
        .get(&moment.current_item)
        .and_then(|i| i.category.last());
    let scored = catalog
        .items()
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let (fit_score, fit_why) = fit(item, moment);
            let mut score = 0.3 * popularity(item) + fit_score;
            let mut why = fit_why.unwrap_or(Why::Popular);
            if let Some(&(similarity, related_why)) = related.get(&index) {
                score += 2.0 * similarity;
                why = related_why;
            } else if current_leaf.is_some() && item.category.last() == current_leaf {
                score += 0.3;
                why = Why::SameCategory;
            }
            Scored { index, score, why }
        })
        .collect();
    let words = Words {
        catalog,
        moment,
        preferences: &[],
    };
    best(scored, n, &seen(catalog, moment), &words)
}

/// Lowercase preferences, `|word|`-delimited for whole-word matches, and plain for substrings.
fn needles(preferences: &[String]) -> Vec<String> {
    preferences
        .iter()
        .map(|p| p.trim().to_lowercase())
        .collect()
}

/// The first preference an item matches (its category or a tag contains it).
#[cfg(test)]
fn matching(catalog: &Catalog, index: usize, needles: &[String]) -> Option<usize> {
    let keywords = catalog.keywords(index);
    needles
        .iter()
        .position(|p| !p.is_empty() && keywords.contains(p.as_str()))
}

/// The limited tier: what the person told us (zero-party), then the moment.
pub fn limited(catalog: &Catalog, preferences: &[String], moment: &Moment, n: usize) -> Vec<Pick> {
    let base = baseline(catalog, moment);
    let mut scored: Vec<Scored> = Vec::new();
    let mut told: HashSet<usize> = HashSet::default();
    for (p, needle) in needles(preferences).iter().enumerate() {
        for index in catalog.items_matching(needle) {
            // The first preference an item matches names it.
            if told.insert(index) {
                let item = &catalog.items()[index];
                scored.push(Scored {
                    index,
                    score: 2.0 + 0.5 * popularity(item) + 0.2 * base.fit[index],
                    why: Why::Told(p),
                });
            }
        }
    }
    let exclude = seen(catalog, moment);
    scored.extend(unboosted(&base, n, |i| {
        told.contains(&i) || exclude.contains(&i)
    }));
    let words = Words {
        catalog,
        moment,
        preferences,
    };
    best(scored, n, &exclude, &words)
}

/// A coarse segment, from purchase history alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Fewer than two purchases.
    New,
    /// Two or more purchases, the last within 90 days.
    Loyal,
    /// Two or more purchases, none within 90 days.
    Lapsed,
}

impl Segment {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::New => "new",
            Segment::Loyal => "loyal",
            Segment::Lapsed => "lapsed",
        }
    }
}

/// The segment of a purchase history at `now` (µs).
pub fn segment_of(history: &[HistoryItem], now: i64) -> Segment {
    let purchases: Vec<&HistoryItem> = history.iter().filter(|h| h.purchased).collect();
    let last = purchases.iter().map(|h| h.at).max().unwrap_or(0);
    if purchases.len() < 2 {
        Segment::New
    } else if now - last <= 90 * 86_400 * 1_000_000 {
        Segment::Loyal
    } else {
        Segment::Lapsed
    }
}

/// The segment tier: what works for people in the segment, and the moment.
pub fn segment(catalog: &Catalog, segment: Segment, moment: &Moment, n: usize) -> Vec<Pick> {
    let scored = catalog
        .items()
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let (fit_score, _) = fit(item, moment);
            let (bonus, why) = match segment {
                Segment::New if item.price_minor <= 5_000 => (0.5, Why::FirstPick),
                Segment::Loyal if item.price_minor >= 10_000 => (0.5, Why::Loyal),
                Segment::Lapsed if item.affinity.seasons.contains(&moment.season) => {
                    (0.5, Why::WelcomeBack)
                }
                _ => (0.0, Why::Popular),
            };
            Scored {
                index,
                score: popularity(item) + bonus + 0.2 * fit_score,
                why,
            }
        })
        .collect();
    let words = Words {
        catalog,
        moment,
        preferences: &[],
    };
    best(scored, n, &seen(catalog, moment), &words)
}

/// The profiled tier: items bought or viewed together with the person's recent history, what
/// they told us, then the moment. Only boosted items are scored one by one; the rest come from
/// the moment's precomputed baseline, so a request costs its boosts, not the catalog's size.
pub fn profiled(
    catalog: &Catalog,
    model: &CoOccurrence,
    history: &[HistoryItem],
    preferences: &[String],
    moment: &Moment,
    n: usize,
) -> Vec<Pick> {
    let base = baseline(catalog, moment);
    // Boosted items: (score, why), starting from the baseline, in the order a full scan adds.
    let related = related_items(catalog, model, history);
    let mut boosted: Dense<(f64, Why)> = Dense::new(catalog.items().len());
    for (p, needle) in needles(preferences).iter().enumerate() {
        for index in catalog.items_matching(needle) {
            boosted.or_insert(index, (base.score[index] + 1.0, Why::Told(p)));
        }
    }
    for (index, &(similarity, related_why)) in related.iter() {
        let entry = boosted.or_insert(index, (base.score[index], Why::Popular));
        entry.0 += 3.0 * similarity;
        if similarity > 0.0 {
            entry.1 = related_why;
        }
    }
    let mut exclude = seen(catalog, moment);
    exclude.extend(
        history
            .iter()
            .filter(|h| h.purchased)
            .filter_map(|h| catalog.index(&h.item_id)),
    );
    let mut scored: Vec<Scored> = boosted
        .iter()
        .map(|(index, &(score, why))| Scored { index, score, why })
        .collect();
    scored.extend(unboosted(&base, n, |i| {
        boosted.contains(i) || exclude.contains(&i)
    }));
    let words = Words {
        catalog,
        moment,
        preferences,
    };
    best(scored, n, &exclude, &words)
}

/// A map from catalog positions to values: a flat array of slots (4 bytes per catalog item)
/// pointing into a compact list of entries. A request touches a few thousand items, each several
/// times; indexing by position costs no hashing.
struct Dense<T> {
    /// By position: the entry's index in `entries`, or `u32::MAX`.
    slots: Vec<u32>,
    /// `(position, value)`, in the order first set.
    entries: Vec<(usize, T)>,
}

impl<T> Dense<T> {
    fn new(len: usize) -> Self {
        Dense {
            slots: vec![u32::MAX; len],
            entries: Vec::new(),
        }
    }

    /// The value at `index`, set to `value` first if it has none.
    fn or_insert(&mut self, index: usize, value: T) -> &mut T {
        let slot = &mut self.slots[index];
        if *slot == u32::MAX {
            *slot = u32::try_from(self.entries.len()).expect("fewer entries than catalog items");
            self.entries.push((index, value));
        }
        &mut self.entries[*slot as usize].1
    }

    fn contains(&self, index: usize) -> bool {
        self.slots[index] != u32::MAX
    }

    /// The values set, in the order they were first set.
    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries.iter().map(|(i, v)| (*i, v))
    }
}

/// How many of the most recent history items the profiled tier anchors on.
pub const ANCHORS: usize = 20;

/// Similarity to the [`ANCHORS`] most recent history items (each relating its
/// [`NEAREST`](crate::model::NEAREST) neighbors), summed per related item, with the first anchor
/// that related it.
fn related_items(
    catalog: &Catalog,
    model: &CoOccurrence,
    history: &[HistoryItem],
) -> Dense<(f64, Why)> {
    let mut related = Dense::new(catalog.items().len());
    for h in history.iter().take(ANCHORS) {
        let Some(anchor) = catalog.index(&h.item_id) else {
            continue;
        };
        let why = if h.purchased {
            Why::Bought(anchor)
        } else {
            Why::Viewed(anchor)
        };
        model.for_each_nearest_in(catalog, &h.item_id, |index, similarity| {
            related.or_insert(index, (0.0, why)).0 += similarity;
        });
    }
    related
}

/// The moment's baseline (see [`Baseline`]), built once per distinct moment and catalog.
fn baseline(catalog: &Catalog, moment: &Moment) -> Arc<Baseline> {
    // Debug-quoted, so that no two moments share a key whatever their strings hold.
    let key = format!(
        "{:?}",
        (
            &moment.season,
            &moment.daypart,
            &moment.device,
            &moment.region,
            &moment.weather
        )
    );
    catalog.baseline(key, || {
        let items = catalog.items();
        let fit: Vec<f64> = items.iter().map(|item| fit(item, moment).0).collect();
        let score: Vec<f64> = items
            .iter()
            .zip(&fit)
            .map(|(item, f)| 0.3 * popularity(item) + 0.2 * f)
            .collect();
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| {
            score[b]
                .total_cmp(&score[a])
                .then_with(|| items[a].id.cmp(&items[b].id))
        });
        Baseline { fit, score, order }
    })
}

/// The best `n` items on the baseline alone, skipping those `skip` names (boosted or excluded)
/// and those with nothing to recommend them: exactly the unboosted items a full scan would pick.
fn unboosted(base: &Baseline, n: usize, skip: impl Fn(usize) -> bool) -> Vec<Scored> {
    base.order
        .iter()
        .copied()
        .filter(|&i| base.score[i] > 0.0 && !skip(i))
        .take(n)
        .map(|index| Scored {
            index,
            score: base.score[index],
            why: Why::Popular,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NEAREST, nearness};

    // The full scans the tiers used before the baseline: the reference they must equal.
    /// The limited tier: what the person told us (zero-party), then the moment.
    fn limited_scan(
        catalog: &Catalog,
        preferences: &[String],
        moment: &Moment,
        n: usize,
    ) -> Vec<Pick> {
        let needles = needles(preferences);
        let scored = catalog
            .items()
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let (fit_score, _) = fit(item, moment);
                match matching(catalog, index, &needles) {
                    Some(p) => Scored {
                        index,
                        score: 2.0 + 0.5 * popularity(item) + 0.2 * fit_score,
                        why: Why::Told(p),
                    },
                    None => Scored {
                        index,
                        score: 0.3 * popularity(item) + 0.2 * fit_score,
                        why: Why::Popular,
                    },
                }
            })
            .collect();
        let words = Words {
            catalog,
            moment,
            preferences,
        };
        best(scored, n, &seen(catalog, moment), &words)
    }

    /// The profiled tier: items often found with what the person viewed and bought (the model),
    /// their stated preferences, then the moment. Already bought items are left out.
    fn profiled_scan(
        catalog: &Catalog,
        model: &CoOccurrence,
        history: &[HistoryItem],
        preferences: &[String],
        moment: &Moment,
        n: usize,
    ) -> Vec<Pick> {
        let mut related: HashMap<usize, (f64, Why)> = HashMap::default();
        for h in history.iter().take(ANCHORS) {
            let Some(anchor) = catalog.index(&h.item_id) else {
                continue;
            };
            let why = if h.purchased {
                Why::Bought(anchor)
            } else {
                Why::Viewed(anchor)
            };
            // The anchor's nearest catalog items.
            let mut nearest: Vec<(usize, f64)> = model
                .neighbors(&h.item_id)
                .filter_map(|(id, similarity)| Some((catalog.index(id)?, similarity)))
                .collect();
            nearest.sort_by(|a, b| nearness(catalog, *a, *b));
            nearest.truncate(NEAREST);
            for (index, similarity) in nearest {
                related.entry(index).or_insert((0.0, why)).0 += similarity;
            }
        }
        let needles = needles(preferences);
        let scored = catalog
            .items()
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let (fit_score, _) = fit(item, moment);
                let mut score = 0.3 * popularity(item) + 0.2 * fit_score;
                let mut why = Why::Popular;
                if let Some(p) = matching(catalog, index, &needles) {
                    score += 1.0;
                    why = Why::Told(p);
                }
                if let Some(&(similarity, related_why)) = related.get(&index) {
                    score += 3.0 * similarity;
                    if similarity > 0.0 {
                        why = related_why;
                    }
                }
                Scored { index, score, why }
            })
            .collect();
        let mut exclude = seen(catalog, moment);
        exclude.extend(
            history
                .iter()
                .filter(|h| h.purchased)
                .filter_map(|h| catalog.index(&h.item_id)),
        );
        let words = Words {
            catalog,
            moment,
            preferences,
        };
        best(scored, n, &exclude, &words)
    }

    fn moment() -> Moment {
        // 2026-11-22 19:00 UTC: autumn evening.
        Moment::at(1_795_374_000, "mobile", "EU", "", &[])
    }

    #[test]
    fn the_moment_comes_from_the_time() {
        let m = moment();
        assert_eq!(
            (m.season.as_str(), m.daypart.as_str()),
            ("autumn", "evening")
        );
        assert!(m.has_context());
        assert!(!Moment::at(0, "", "", "", &[]).has_context());
    }

    #[test]
    fn each_tier_explains_itself() {
        let catalog = Catalog::demo(500);
        let mut model = CoOccurrence::new();
        model.learn("a", ["sku-00001", "sku-00002"], 1);
        model.learn("b", ["sku-00001", "sku-00002", "sku-00003"], 2);
        let popular = popular(&catalog, 5);
        assert_eq!(popular.len(), 5);
        assert!(popular.windows(2).all(|w| w[0].score >= w[1].score));
        let mut m = moment();
        m.current_item = "sku-00001".into();
        let ctx = contextual(&catalog, &model, &m, 5);
        assert_eq!(ctx[0].item_id, "sku-00002");
        assert_eq!(ctx[0].reason, "often bought with the item you're viewing");
        assert!(ctx.iter().all(|p| p.item_id != "sku-00001"));
        let lim = limited(&catalog, &["climbing".to_owned()], &moment(), 5);
        assert!(
            lim.iter()
                .all(|p| p.reason == "because you told us you like climbing")
        );
        let history = [HistoryItem {
            item_id: "sku-00001".into(),
            purchased: true,
            at: 0,
        }];
        let prof = profiled(&catalog, &model, &history, &[], &moment(), 3);
        assert_eq!(prof[0].item_id, "sku-00002");
        assert!(prof[0].reason.starts_with("because you bought "));
        assert!(prof.iter().all(|p| p.item_id != "sku-00001"));
        let mut rainy = moment();
        rainy.weather = "rain".into();
        let wet = contextual(&catalog, &CoOccurrence::new(), &rainy, 5);
        assert!(
            wet.iter()
                .any(|p| p.reason == "made for today's weather (rain)"),
            "{wet:?}"
        );
    }

    #[test]
    fn segments_follow_purchases() {
        let day = 86_400 * 1_000_000;
        let bought = |at| HistoryItem {
            item_id: "x".into(),
            purchased: true,
            at,
        };
        assert_eq!(segment_of(&[bought(0)], 10 * day), Segment::New);
        assert_eq!(
            segment_of(&[bought(5 * day), bought(9 * day)], 10 * day),
            Segment::Loyal
        );
        assert_eq!(
            segment_of(&[bought(0), bought(day)], 200 * day),
            Segment::Lapsed
        );
    }

    /// A small deterministic generator for the equivalence test.
    struct Xorshift(u64);

    impl Xorshift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn the_baseline_ranking_equals_a_full_scan() {
        let catalog = Catalog::demo(5000);
        let ids: Vec<String> = catalog.items().iter().map(|i| i.id.clone()).collect();
        let mut rng = Xorshift(0x5EED_CAFE);
        let mut model = CoOccurrence::new();
        for s in 0..60 {
            let basket: Vec<&str> = (0..8).map(|_| ids[rng.below(300)].as_str()).collect();
            model.learn(&format!("s{s}"), basket, s);
        }
        let words = [
            "trail running",
            "running",
            "run",
            "tents",
            "waterproof",
            "insulated",
            "sun care",
            "Cycling ",
            "|",
            "ing|",
            "nothing-matches",
            "",
            "a",
            "climbing",
            "jackets",
        ];
        let seasons = [1_795_374_000, 1_780_000_000, 1_770_000_000, 1_800_000_000];
        let (devices, regions, weathers) = (
            ["", "mobile", "desktop", "tablet", "fridge"],
            ["", "EU", "UK", "US-CA", "MARS"],
            ["", "rain", "sunny", "snow", "fog"],
        );
        // The model's alignment to catalog positions is exercised fresh, stale (items interned
        // since), against another catalog, and absent, and its precomputed rows fresh and after
        // learns and unlearns that change them: every state must rank the same.
        let other_catalog = Catalog::demo(400);
        for case in 0..400 {
            if case % 40 == 20 {
                let unknown = format!("late-unknown-{case}");
                let late = [ids[rng.below(300)].as_str(), &unknown, &ids[rng.below(300)]];
                model.learn(&format!("late{case}"), late, case);
            }
            let preferences: Vec<String> = (0..rng.below(4))
                .map(|_| words[rng.below(words.len())].to_owned())
                .collect();
            let history: Vec<HistoryItem> = (0..rng.below(40))
                .map(|k| HistoryItem {
                    item_id: if k % 7 == 6 {
                        "unknown-item".to_owned()
                    } else {
                        ids[rng.below(300)].clone()
                    },
                    purchased: rng.below(3) == 0,
                    at: k as i64,
                })
                .collect();
            match case % 5 {
                0 | 1 => model.prepare(
                    &catalog,
                    history.iter().take(ANCHORS).map(|h| h.item_id.as_str()),
                ),
                2 => model.align(&catalog),
                3 => model.align(&other_catalog),
                _ => {}
            }
            if case % 5 == 1 {
                // A subject re-learned or withdrawn after the rows were prepared, sharing an
                // anchor: the rows it changed must not be read stale.
                let subject = format!("s{}", rng.below(60));
                if rng.below(2) == 0 {
                    let mut basket: Vec<&str> =
                        history.iter().take(2).map(|h| h.item_id.as_str()).collect();
                    basket.extend((0..6).map(|_| ids[rng.below(300)].as_str()));
                    model.learn(&subject, basket, case);
                } else {
                    model.unlearn(&subject);
                }
            }
            let session: Vec<String> = (0..rng.below(3))
                .map(|_| ids[rng.below(5000)].clone())
                .collect();
            let mut moment = Moment::at(
                seasons[rng.below(seasons.len())] + 3600 * rng.below(24) as i64,
                devices[rng.below(devices.len())],
                regions[rng.below(regions.len())],
                &ids[rng.below(5000)],
                &session,
            );
            moment.weather = weathers[rng.below(weathers.len())].to_owned();
            let n = 1 + rng.below(30);
            assert_eq!(
                profiled(&catalog, &model, &history, &preferences, &moment, n),
                profiled_scan(&catalog, &model, &history, &preferences, &moment, n),
                "case {case}: profiled, preferences {preferences:?}"
            );
            assert_eq!(
                limited(&catalog, &preferences, &moment, n),
                limited_scan(&catalog, &preferences, &moment, n),
                "case {case}: limited, preferences {preferences:?}"
            );
        }
    }
}
