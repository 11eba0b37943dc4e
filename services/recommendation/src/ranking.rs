//! Ranking for each tier, pure: the catalog, the model and what the tier may use go in; items
//! with a score and a reason a person can read come out. Each tier uses only its own inputs: the
//! contextual and popular tiers never see anything about the person.

use crate::catalog::{Catalog, Item};
use crate::model::CoOccurrence;
use crate::profile_reader::HistoryItem;
use std::collections::{HashMap, HashSet};

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
        }
    }

    /// Whether the request said anything beyond the time.
    pub fn has_context(&self) -> bool {
        !self.device.is_empty()
            || !self.region.is_empty()
            || !self.current_item.is_empty()
            || !self.session_items.is_empty()
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

/// Keeps the best `n` by score (ties by id), skipping `exclude`.
fn best(mut scored: Vec<Pick>, n: usize, exclude: &HashSet<String>) -> Vec<Pick> {
    scored.retain(|p| !exclude.contains(&p.item_id) && p.score > 0.0);
    scored.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    scored.truncate(n);
    scored
}

fn popularity(item: &Item) -> f64 {
    f64::from(item.popularity) / 1000.0
}

/// How well an item fits the moment, and the phrase for the strongest fit.
fn fit(item: &Item, moment: &Moment) -> (f64, Option<String>) {
    let a = &item.affinity;
    let mut score = 0.0;
    let mut reason = None;
    if !moment.region.is_empty() && a.regions.contains(&moment.region) {
        score += 0.3;
        reason = Some(format!(
            "popular in your region ({}) this {}",
            moment.region, moment.daypart
        ));
    }
    if a.dayparts.contains(&moment.daypart) {
        score += 0.2;
        reason.get_or_insert_with(|| format!("popular this {}", moment.daypart));
    }
    if a.seasons.contains(&moment.season) {
        score += 0.2;
        reason.get_or_insert_with(|| format!("a {} favorite", moment.season));
    }
    if !moment.device.is_empty() && a.devices.contains(&moment.device) {
        score += 0.1;
        reason.get_or_insert_with(|| format!("popular on {}", moment.device));
    }
    (score, reason)
}

/// What the person is looking at or saw this session: not worth recommending again.
fn seen(moment: &Moment) -> HashSet<String> {
    let mut seen: HashSet<String> = moment.session_items.iter().cloned().collect();
    seen.insert(moment.current_item.clone());
    seen
}

/// The popular tier: popularity alone.
pub fn popular(catalog: &Catalog, n: usize) -> Vec<Pick> {
    let scored = catalog
        .items()
        .iter()
        .map(|item| Pick {
            item_id: item.id.clone(),
            score: popularity(item),
            reason: "popular right now".into(),
        })
        .collect();
    best(scored, n, &HashSet::new())
}

/// The contextual tier: the request's moment, and items often found with the current item and
/// this session's items (the model is aggregate; nothing about the person is used).
pub fn contextual(catalog: &Catalog, model: &CoOccurrence, moment: &Moment, n: usize) -> Vec<Pick> {
    let mut related: HashMap<String, (f64, String)> = HashMap::new();
    let anchors = std::iter::once(moment.current_item.as_str())
        .chain(moment.session_items.iter().map(String::as_str))
        .filter(|s| !s.is_empty());
    for anchor in anchors {
        let phrase = if anchor == moment.current_item {
            "often bought with the item you're viewing".to_owned()
        } else {
            "goes with what you looked at today".to_owned()
        };
        for (id, similarity) in model.similar(anchor, 50) {
            let entry = related.entry(id).or_insert((0.0, phrase.clone()));
            entry.0 += similarity;
        }
    }
    let current_leaf = catalog
        .get(&moment.current_item)
        .and_then(|i| i.category.last().cloned());
    let scored = catalog
        .items()
        .iter()
        .map(|item| {
            let (fit_score, fit_reason) = fit(item, moment);
            let mut score = 0.3 * popularity(item) + fit_score;
            let mut reason = fit_reason.unwrap_or_else(|| "popular right now".into());
            if let Some((similarity, phrase)) = related.get(&item.id) {
                score += 2.0 * similarity;
                reason = phrase.clone();
            } else if current_leaf.is_some() && item.category.last() == current_leaf.as_ref() {
                score += 0.3;
                reason = "similar to the item you're viewing".into();
            }
            Pick {
                item_id: item.id.clone(),
                score,
                reason,
            }
        })
        .collect();
    let mut seen: HashSet<String> = moment.session_items.iter().cloned().collect();
    seen.insert(moment.current_item.clone());
    best(scored, n, &seen)
}

/// Whether an item matches a stated preference (its category or a tag names it).
fn matches(item: &Item, preference: &str) -> bool {
    let p = preference.trim().to_lowercase();
    !p.is_empty()
        && item.category.iter().chain(&item.tags).any(|t| {
            t.to_lowercase() == p || t.to_lowercase().contains(&p) || p.contains(&t.to_lowercase())
        })
}

/// The limited tier: what the person told us (zero-party), then the moment.
pub fn limited(catalog: &Catalog, preferences: &[String], moment: &Moment, n: usize) -> Vec<Pick> {
    let scored = catalog
        .items()
        .iter()
        .map(|item| {
            let (fit_score, _) = fit(item, moment);
            match preferences.iter().find(|p| matches(item, p)) {
                Some(p) => Pick {
                    item_id: item.id.clone(),
                    score: 2.0 + 0.5 * popularity(item) + 0.2 * fit_score,
                    reason: format!("because you told us you like {}", p.trim()),
                },
                None => Pick {
                    item_id: item.id.clone(),
                    score: 0.3 * popularity(item) + 0.2 * fit_score,
                    reason: "popular right now".into(),
                },
            }
        })
        .collect();
    best(scored, n, &seen(moment))
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
        .map(|item| {
            let (fit_score, _) = fit(item, moment);
            let (bonus, reason) = match segment {
                Segment::New if item.price_minor <= 5_000 => {
                    (0.5, "a popular first pick with new customers")
                }
                Segment::Loyal if item.price_minor >= 10_000 => {
                    (0.5, "picked for our loyal customers")
                }
                Segment::Lapsed if item.affinity.seasons.contains(&moment.season) => {
                    (0.5, "new this season: welcome back")
                }
                _ => (0.0, "popular right now"),
            };
            Pick {
                item_id: item.id.clone(),
                score: popularity(item) + bonus + 0.2 * fit_score,
                reason: reason.into(),
            }
        })
        .collect();
    best(scored, n, &seen(moment))
}

/// The profiled tier: items often found with what the person viewed and bought (the model),
/// their stated preferences, then the moment. Already bought items are left out.
pub fn profiled(
    catalog: &Catalog,
    model: &CoOccurrence,
    history: &[HistoryItem],
    preferences: &[String],
    moment: &Moment,
    n: usize,
) -> Vec<Pick> {
    let mut related: HashMap<String, (f64, String)> = HashMap::new();
    for h in history.iter().take(20) {
        let Some(anchor) = catalog.get(&h.item_id) else {
            continue;
        };
        let verb = if h.purchased { "bought" } else { "viewed" };
        for (id, similarity) in model.similar(&h.item_id, 30) {
            let entry = related
                .entry(id)
                .or_insert((0.0, format!("because you {verb} {}", anchor.title)));
            entry.0 += similarity;
        }
    }
    let scored = catalog
        .items()
        .iter()
        .map(|item| {
            let (fit_score, _) = fit(item, moment);
            let mut score = 0.3 * popularity(item) + 0.2 * fit_score;
            let mut reason = "popular right now".to_owned();
            if let Some(p) = preferences.iter().find(|p| matches(item, p)) {
                score += 1.0;
                reason = format!("because you told us you like {}", p.trim());
            }
            if let Some((similarity, phrase)) = related.get(&item.id) {
                score += 3.0 * similarity;
                if *similarity > 0.0 {
                    reason = phrase.clone();
                }
            }
            Pick {
                item_id: item.id.clone(),
                score,
                reason,
            }
        })
        .collect();
    let mut exclude: HashSet<String> = history
        .iter()
        .filter(|h| h.purchased)
        .map(|h| h.item_id.clone())
        .collect();
    exclude.extend(moment.session_items.iter().cloned());
    exclude.insert(moment.current_item.clone());
    best(scored, n, &exclude)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
