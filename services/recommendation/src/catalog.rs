//! The catalog: items with a category path, tags, price, popularity and context affinities
//! (season, time of day, device, region). A deterministic demo catalog for the embedded default,
//! and loading from JSONL (one item per line) for real ones.

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A catalog item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Stable id, e.g. `sku-01042`.
    pub id: String,
    /// Human-readable title.
    pub title: String,
    /// Category path, most general first, e.g. `["sports", "running", "trail shoes"]`.
    pub category: Vec<String>,
    /// Free-form tags, e.g. `["waterproof", "trail running"]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Price in minor units (cents).
    pub price_minor: i64,
    /// Relative popularity, 0..=1000.
    pub popularity: u32,
    /// Context affinities: seasons, times of day, devices and regions where the item does well.
    #[serde(default)]
    pub affinity: Affinity,
}

/// Where and when an item does well. Empty lists mean "anywhere, any time".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Affinity {
    /// `spring`, `summer`, `autumn`, `winter`.
    #[serde(default)]
    pub seasons: Vec<String>,
    /// `morning`, `afternoon`, `evening`, `night`.
    #[serde(default)]
    pub dayparts: Vec<String>,
    /// `mobile`, `desktop`, `tablet`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Region codes, e.g. `EU`, `US-CA`.
    #[serde(default)]
    pub regions: Vec<String>,
}

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// A line is not a valid item.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two items share an id.
    #[error(
        "line {line}: duplicate item id {}",
        consentgate_runtime::errors::echo(.id)
    )]
    Duplicate {
        /// 1-based line number of the second one.
        line: usize,
        /// The id.
        id: String,
    },
    /// No items at all.
    #[error("the catalog is empty")]
    Empty,
}

/// An immutable catalog with an index by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Unique to this catalog's contents in this process (see [`Catalog::stamp`]).
    stamp: u64,
    items: Vec<Item>,
    by_id: HashMap<String, usize>,
    /// Per item: its category path and tags, lowercase, `|`-joined (preference matching).
    keywords: Vec<String>,
    /// Item indices, most popular first (ties by id).
    by_popularity: Vec<usize>,
    /// Every item's `keywords`, concatenated: one substring search finds a preference's items.
    keyword_blob: String,
    /// Where each item's keywords start in `keyword_blob`.
    keyword_starts: Vec<usize>,
    /// The moment-only part of ranking per moment (season, daypart, device, region, weather):
    /// context, never personal data, and valid only for these items, hence kept here.
    baselines: moka::sync::Cache<String, Arc<Baseline>>,
}

/// Distinct moments whose baseline is kept (each holds three numbers per item: ~120 KB for the
/// 5,000-item demo catalog).
const BASELINES: u64 = 256;

/// The ranking every item gets from the moment alone: `0.3 × popularity + 0.2 × fit`, and the
/// items in descending order of it (ties by id, as picks are ordered). Personal boosts only add
/// to it, so the best unboosted items are always a prefix of `order`.
#[derive(Debug)]
pub struct Baseline {
    /// Per item: how well it fits the moment.
    pub fit: Vec<f64>,
    /// Per item: `0.3 × popularity + 0.2 × fit`.
    pub score: Vec<f64>,
    /// Item indices by `score`, highest first, ties by id.
    pub order: Vec<usize>,
}

const SEASONS: [&str; 4] = ["spring", "summer", "autumn", "winter"];
const DAYPARTS: [&str; 4] = ["morning", "afternoon", "evening", "night"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const REGIONS: [&str; 3] = ["EU", "UK", "US-CA"];

/// The demo catalog's departments and their categories (24 leaf categories).
const DEPARTMENTS: [(&str, [&str; 4]); 6] = [
    (
        "sports",
        ["trail running", "road running", "climbing", "cycling"],
    ),
    ("outdoor", ["tents", "backpacks", "jackets", "headlamps"]),
    ("home", ["coffee", "kitchen", "lighting", "bedding"]),
    (
        "books",
        ["travel guides", "cookbooks", "novels", "training plans"],
    ),
    ("beauty", ["skincare", "sun care", "fragrance", "hair care"]),
    (
        "electronics",
        ["watches", "headphones", "cameras", "power banks"],
    ),
];

const ADJECTIVES: [&str; 12] = [
    "lightweight",
    "waterproof",
    "classic",
    "pro",
    "compact",
    "organic",
    "recycled",
    "insulated",
    "merino",
    "wireless",
    "everyday",
    "limited edition",
];

/// A small deterministic generator (SplitMix64): the demo catalog is the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str], max: usize) -> Vec<&'a str> {
        let count = self.below(max + 1);
        let mut out: Vec<&str> = Vec::new();
        for _ in 0..count {
            let v = from[self.below(from.len())];
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }
}

impl Catalog {
    /// Builds a catalog; ids must be unique and it must not be empty.
    pub fn new(items: Vec<Item>) -> Result<Catalog, CatalogError> {
        if items.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut by_id = HashMap::with_capacity_and_hasher(items.len(), Default::default());
        for (i, item) in items.iter().enumerate() {
            if by_id.insert(item.id.clone(), i).is_some() {
                return Err(CatalogError::Duplicate {
                    line: i + 1,
                    id: item.id.clone(),
                });
            }
        }
        let keywords: Vec<String> = items
            .iter()
            .map(|i| {
                let mut words: Vec<String> = i
                    .category
                    .iter()
                    .chain(&i.tags)
                    .map(|w| w.to_lowercase())
                    .collect();
                words.dedup();
                format!("|{}|", words.join("|"))
            })
            .collect();
        let mut by_popularity: Vec<usize> = (0..items.len()).collect();
        by_popularity.sort_by(|&a, &b| {
            items[b]
                .popularity
                .cmp(&items[a].popularity)
                .then_with(|| items[a].id.cmp(&items[b].id))
        });
        let mut keyword_starts = Vec::with_capacity(keywords.len());
        let mut keyword_blob = String::new();
        for k in &keywords {
            keyword_starts.push(keyword_blob.len());
            keyword_blob.push_str(k);
        }
        static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Catalog {
            stamp: STAMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            items,
            by_id,
            keywords,
            by_popularity,
            keyword_blob,
            keyword_starts,
            baselines: moka::sync::Cache::new(BASELINES),
        })
    }

    /// The deterministic demo catalog: `count` items over 24 categories in 6 departments.
    pub fn demo(count: usize) -> Catalog {
        let mut rng = SplitMix(0xC0_45E7_6A7E);
        let mut items = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (department, categories) = DEPARTMENTS[i % DEPARTMENTS.len()];
            let leaf = categories[(i / DEPARTMENTS.len()) % categories.len()];
            let adjective = ADJECTIVES[rng.below(ADJECTIVES.len())];
            // A long-tailed popularity: a few hits, many niche items.
            let popularity = (1000.0 / (1.0 + (rng.below(200) as f64) / 8.0)) as u32;
            let affinity = Affinity {
                seasons: rng
                    .pick(&SEASONS, 2)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                dayparts: rng
                    .pick(&DAYPARTS, 2)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                devices: rng
                    .pick(&DEVICES, 1)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                regions: rng
                    .pick(&REGIONS, 1)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            };
            items.push(Item {
                id: format!("sku-{i:05}"),
                title: format!("{} {} #{}", capitalize(adjective), leaf, i / 24 + 1),
                category: vec![department.to_owned(), leaf.to_owned()],
                tags: vec![leaf.to_owned(), adjective.to_owned()],
                price_minor: 499 + (rng.below(400) as i64) * 50,
                popularity,
                affinity,
            });
        }
        Catalog::new(items).expect("generated ids are unique and there is at least one item")
    }

    /// Parses JSONL: one [`Item`] per line; blank lines are skipped. The first bad line fails
    /// the whole load with its line number (no half-loaded catalog).
    pub fn from_jsonl(text: &str) -> Result<Catalog, CatalogError> {
        let mut items = Vec::new();
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item: Item = serde_json::from_str(line).map_err(|e| CatalogError::BadLine {
                line: n + 1,
                reason: e.to_string(),
            })?;
            if item.id.trim().is_empty() {
                return Err(CatalogError::BadLine {
                    line: n + 1,
                    reason: "id must not be empty".into(),
                });
            }
            if item.category.is_empty() {
                return Err(CatalogError::BadLine {
                    line: n + 1,
                    reason: "category must name at least one level".into(),
                });
            }
            if item.price_minor < 0 {
                return Err(CatalogError::BadLine {
                    line: n + 1,
                    reason: "price_minor must not be negative".into(),
                });
            }
            items.push(item);
            lines.push(n + 1);
        }
        Catalog::new(items).map_err(|e| match e {
            CatalogError::Duplicate { line, id } => CatalogError::Duplicate {
                line: lines[line - 1],
                id,
            },
            other => other,
        })
    }

    /// Every item, in catalog order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// A number no other catalog built in this process has: the model's alignment to item
    /// positions is keyed by it, so a `LoadCatalog` invalidates the alignment.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// The index of an item by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Item `index`'s lowercase category path and tags, `|`-joined with `|` at both ends.
    pub fn keywords(&self, index: usize) -> &str {
        &self.keywords[index]
    }

    /// The items whose keywords contain `needle` (a lowercase preference), ascending: one
    /// substring search over all keywords instead of one per item.
    pub fn items_matching(&self, needle: &str) -> Vec<usize> {
        if needle.is_empty() {
            return Vec::new();
        }
        if needle.contains('|') {
            // A match could span two items' keywords in the blob: ask each item.
            return (0..self.items.len())
                .filter(|&i| self.keywords[i].contains(needle))
                .collect();
        }
        // Without `|`, a match lies inside one item's keywords.
        let mut out: Vec<usize> = Vec::new();
        for at in memchr::memmem::find_iter(self.keyword_blob.as_bytes(), needle.as_bytes()) {
            let item = self.keyword_starts.partition_point(|&start| start <= at) - 1;
            if out.last() != Some(&item) {
                out.push(item);
            }
        }
        out
    }

    /// The moment's baseline ranking, computed by `build` once per distinct moment.
    pub fn baseline(&self, moment_key: String, build: impl FnOnce() -> Baseline) -> Arc<Baseline> {
        self.baselines.get_with(moment_key, || Arc::new(build()))
    }

    /// Item indices, most popular first.
    pub fn by_popularity(&self) -> &[usize] {
        &self.by_popularity
    }

    /// An item by id.
    pub fn get(&self, id: &str) -> Option<&Item> {
        self.by_id.get(id).map(|&i| &self.items[i])
    }

    /// The distinct leaf categories.
    pub fn categories(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .items
            .iter()
            .filter_map(|i| i.category.last().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_is_big_varied_and_deterministic() {
        let a = Catalog::demo(5000);
        let b = Catalog::demo(5000);
        assert_eq!(a.items(), b.items());
        assert_eq!(a.items().len(), 5000);
        assert!(a.categories().len() >= 20, "{:?}", a.categories());
        assert!(
            a.items()
                .iter()
                .any(|i| i.affinity.seasons.contains(&"winter".to_owned()))
        );
        assert!(a.items().iter().map(|i| i.popularity).max() > Some(900));
    }

    #[test]
    fn jsonl_round_trips_and_bad_lines_are_named() {
        let demo = Catalog::demo(30);
        let text: String = demo
            .items()
            .iter()
            .map(|i| serde_json::to_string(i).expect("json") + "\n")
            .collect();
        let loaded = Catalog::from_jsonl(&text).expect("load");
        assert_eq!(loaded.items(), demo.items());
        let bad = format!(
            "{}\n\n{{\"id\": \"x\"}}\n",
            serde_json::to_string(&demo.items()[0]).expect("json")
        );
        match Catalog::from_jsonl(&bad) {
            Err(CatalogError::BadLine { line: 3, .. }) => {}
            other => panic!("expected a bad line 3, got {other:?}"),
        }
        let dup = format!(
            "{0}\n{0}\n",
            serde_json::to_string(&demo.items()[0]).expect("json")
        );
        assert_eq!(
            Catalog::from_jsonl(&dup).err(),
            Some(CatalogError::Duplicate {
                line: 2,
                id: "sku-00000".into()
            })
        );
        assert_eq!(Catalog::from_jsonl("\n").err(), Some(CatalogError::Empty));
    }
}
