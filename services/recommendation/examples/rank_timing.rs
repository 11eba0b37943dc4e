//! Times the profiled ranking on a model like the benchmark's (20 subjects × 200 items).
use consentgate_recommendation::catalog::Catalog;
use consentgate_recommendation::model::CoOccurrence;
use consentgate_recommendation::profile_reader::HistoryItem;
use consentgate_recommendation::ranking::{self, Moment};
use std::time::Instant;

fn main() {
    let catalog = Catalog::demo(5000);
    let mut model = CoOccurrence::new();
    let mut rng = 7u64;
    let mut next = || {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (rng >> 33) as usize % 5000
    };
    let mut histories = Vec::new();
    for s in 0..20 {
        let items: Vec<String> = (0..500).map(|_| format!("sku-{:05}", next())).collect();
        model.learn(&format!("s{s}"), items.iter().map(String::as_str), 1);
        histories.push(items);
    }
    let history: Vec<HistoryItem> = histories[0]
        .iter()
        .take(40)
        .map(|i| HistoryItem {
            item_id: i.clone(),
            purchased: false,
            at: 0,
        })
        .collect();
    let moment = Moment::at(
        1_795_374_000,
        "mobile",
        "EU",
        "sku-00042",
        &["sku-00018".into()],
    );
    // As the service ranks: the model aligned to the catalog and the anchors' rows prepared.
    model.prepare(
        &catalog,
        history
            .iter()
            .take(ranking::ANCHORS)
            .map(|h| h.item_id.as_str())
            .chain(["sku-00042", "sku-00018"]),
    );
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(ranking::profiled(
            &catalog,
            &model,
            &history,
            &[],
            &moment,
            10,
        ));
    }
    println!("profiled: {:?} per call", t.elapsed() / 200);
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(ranking::contextual(&catalog, &model, &moment, 10));
    }
    println!("contextual: {:?} per call", t.elapsed() / 200);
    let n: usize = histories[0]
        .iter()
        .take(20)
        .map(|i| model.neighbors(i).count())
        .sum();
    println!("neighbors of 20 anchors: {n}");
}
