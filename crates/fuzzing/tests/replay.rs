//! The committed corpora, replayed as plain tests: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the target's body (the function the fuzz binary
//! calls), so CI checks every input a fuzzer kept and every crash that was fixed, without
//! libFuzzer. A target whose corpus directory is missing or empty fails: a replay that finds
//! nothing to replay must not pass.

use consentgate_fuzzing::{TARGETS, Target};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/` at the repository root.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Replays every file of `corpus` (required, non-empty) and of `regressions` (optional) through
/// `target`: the number of inputs replayed, or what went wrong (each input that panicked, by
/// file name).
fn replay(target: &Target, corpus: &Path, regressions: &Path) -> Result<usize, String> {
    let mut files =
        inputs(corpus).map_err(|e| format!("{}: corpus {}: {e}", target.name, corpus.display()))?;
    if files.is_empty() {
        return Err(format!(
            "{}: corpus {} is empty: nothing would be replayed",
            target.name,
            corpus.display()
        ));
    }
    if regressions.exists() {
        files.extend(inputs(regressions).map_err(|e| format!("{}: {e}", regressions.display()))?);
    }
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if catch_unwind(AssertUnwindSafe(|| target.exercise(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    if failed.is_empty() {
        Ok(files.len())
    } else {
        Err(format!(
            "{}: {} of {} inputs panicked:\n{}",
            target.name,
            failed.len(),
            files.len(),
            failed.join("\n")
        ))
    }
}

fn inputs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn replay_target(name: &str) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let fuzz = fuzz_dir();
    match replay(
        target,
        &fuzz.join("corpus").join(name),
        &fuzz.join("regressions").join(name),
    ) {
        Ok(count) => eprintln!("{name}: replayed {count} inputs"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn policy_loader_corpus() {
    replay_target("policy_loader");
}

#[test]
fn request_validators_corpus() {
    replay_target("request_validators");
}

#[test]
fn page_tokens_corpus() {
    replay_target("page_tokens");
}

#[test]
fn catalog_jsonl_corpus() {
    replay_target("catalog_jsonl");
}

#[test]
fn receipts_corpus() {
    replay_target("receipts");
}

#[test]
fn decision_differential_corpus() {
    replay_target("decision_differential");
}

#[test]
fn ledger_events_corpus() {
    replay_target("ledger_events");
}

#[test]
fn every_target_is_replayed_and_has_a_fuzz_binary() {
    let replayed = [
        "policy_loader",
        "request_validators",
        "page_tokens",
        "catalog_jsonl",
        "receipts",
        "decision_differential",
        "ledger_events",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, replayed, "a target without its replay test above");
    for name in names {
        let binary = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(binary.is_file(), "no fuzz binary {}", binary.display());
    }
}

/// The replay itself: an input that panics fails it, and so does a missing or empty corpus.
#[test]
fn the_replay_fails_on_a_panic_and_on_a_missing_or_empty_corpus() {
    let panics = Target {
        name: "panics",
        run: |data| assert!(data.is_empty(), "a planted failure"),
        ..TARGETS[0]
    };
    let corpus = fuzz_dir().join("corpus").join("policy_loader");
    let nowhere = fuzz_dir().join("no-such-directory");
    let failed = replay(&panics, &corpus, &nowhere).expect_err("a panicking input fails");
    assert!(failed.contains("panicked"), "{failed}");

    let missing = replay(&TARGETS[0], &nowhere, &nowhere).expect_err("a missing corpus fails");
    assert!(missing.contains("no-such-directory"), "{missing}");

    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-corpus");
    std::fs::create_dir_all(&empty).expect("a scratch directory");
    let none = replay(&TARGETS[0], &empty, &nowhere).expect_err("an empty corpus fails");
    assert!(none.contains("is empty"), "{none}");
}
