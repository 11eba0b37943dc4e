//! The JSONL catalog loader (`Catalog::from_jsonl`, behind the recommendation service's
//! LoadCatalog): any text is either a catalog whose index agrees with its items, or a rejection
//! naming a line of the text. Never a panic.
//!
//! A loaded catalog is checked against what it was loaded from: one item per non-blank line, in
//! order, each found by its id; the popularity order is a permutation, most popular first; the
//! items written back as JSONL load to the same items; and the one-pass keyword search
//! (`items_matching`) finds exactly the items a naive per-item search finds (a differential
//! check of its blob-and-offsets shortcut). The LoadCatalog validator's rejection stays bounded
//! in size whatever the line echoes.

use crate::{Budget, Target};
use consentgate_proto::recommendation::v1 as pb;
use consentgate_recommendation::catalog::{Catalog, CatalogError};
use consentgate_recommendation::convert::load_catalog;
use tonic::Code;

/// The catalog loader target.
pub const TARGET: Target = Target {
    name: "catalog_jsonl",
    run,
    // A few dozen items: enough for duplicates, blank lines and every field's shapes.
    max_len: 16 * 1024,
    // serde_json's values, the items, the index, the keyword blob, and the second load of the
    // round trip: each a small multiple of the text.
    budget: Budget {
        fixed: 4 << 20,
        per_input_byte: 256,
    },
};

/// Needles tried per loaded catalog, at most.
const MAX_NEEDLES: usize = 16;

fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    let filled: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, _)| n + 1)
        .collect();
    match Catalog::from_jsonl(text) {
        Err(CatalogError::BadLine { line, .. } | CatalogError::Duplicate { line, .. }) => {
            assert!(
                filled.contains(&line),
                "the error names line {line}, not a non-blank line of {lines}"
            );
        }
        Err(CatalogError::Empty) => assert!(filled.is_empty(), "a non-blank catalog is empty"),
        Ok(catalog) => check(&catalog, filled.len()),
    }
    let request = pb::LoadCatalogRequest {
        jsonl: text.to_owned(),
    };
    if let Err(status) = load_catalog(&request) {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() <= 1024, "an unbounded message");
        assert!(status.details().len() <= 4096, "unbounded details");
    }
}

fn check(catalog: &Catalog, filled: usize) {
    let items = catalog.items();
    assert_eq!(items.len(), filled, "one item per non-blank line");
    for (i, item) in items.iter().enumerate() {
        assert!(!item.id.trim().is_empty() && !item.category.is_empty() && item.price_minor >= 0);
        assert_eq!(
            catalog.index(&item.id),
            Some(i),
            "the index finds {:?}",
            item.id
        );
    }
    let order = catalog.by_popularity();
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    assert!(
        sorted.iter().copied().eq(0..items.len()),
        "not a permutation"
    );
    assert!(
        order
            .windows(2)
            .all(|w| items[w[0]].popularity >= items[w[1]].popularity),
        "not most popular first"
    );

    // Written back and read again: the same items.
    let written: String = items
        .iter()
        .map(|item| serde_json::to_string(item).expect("an item serializes") + "\n")
        .collect();
    let reread = Catalog::from_jsonl(&written).expect("a written catalog loads");
    assert_eq!(
        reread.items(),
        items,
        "the JSONL round trip changed the items"
    );

    // The keyword search agrees with a naive one, for whole words and pieces of them.
    let mut needles = Vec::new();
    for item in items.iter().take(MAX_NEEDLES / 2) {
        let word = item.category[0].to_lowercase();
        let piece: String = word.chars().skip(1).take(3).collect();
        needles.extend([word, piece]);
    }
    for needle in needles {
        let naive: Vec<usize> = if needle.is_empty() {
            Vec::new()
        } else {
            (0..items.len())
                .filter(|&i| catalog.keywords(i).contains(&needle))
                .collect()
        };
        assert_eq!(
            catalog.items_matching(&needle),
            naive,
            "items_matching({needle:?})"
        );
    }
}
