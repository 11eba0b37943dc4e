//! What the fuzz targets exercise: one module per target, each a function from arbitrary bytes
//! to "no panic, and every property it asserts holds".
//!
//! The fuzz targets in `fuzz/fuzz_targets/` are one line each: they hand libFuzzer's input to
//! [`Target::exercise`] of the target of the same name here. Keeping the bodies in this normal
//! workspace crate means `cargo test --workspace` builds them with everything else and replays
//! every committed corpus file through the very same function (`tests/replay.rs`), so CI checks
//! the corpora without fuzzing and without libFuzzer in the root dependency tree.
//!
//! Each body bounds its input ([`Target::max_len`]) and states the most memory one input may make
//! it hold ([`Budget`]); the fuzz binaries count allocations and fail an input that goes over
//! (`fuzz/src/lib.rs`). docs/fuzzing.md says how to run them and what they found.

pub mod catalog_jsonl;
pub mod decision_differential;
pub mod ledger_events;
pub mod page_tokens;
pub mod policy_loader;
pub mod receipts;
pub mod request_validators;

/// How much memory one input may make a target hold at its peak: `fixed + per_input_byte × len`
/// bytes beyond what was live before the input. A body that allocates in proportion to its input
/// (a parser building a tree) fits; one that amplifies (quadratic growth, a length read from the
/// input and trusted) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes any input may use (tables, a policy, keys).
    pub fixed: usize,
    /// Bytes per byte of input.
    pub per_input_byte: usize,
}

impl Budget {
    /// The budget of an input of `len` bytes.
    pub fn bytes(&self, len: usize) -> usize {
        self.fixed
            .saturating_add(self.per_input_byte.saturating_mul(len))
    }
}

/// A fuzz target: its name (the file in `fuzz/fuzz_targets/`, the corpus directory), its body,
/// and its bounds.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name: `fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// The body: panics on a finding.
    pub run: fn(&[u8]),
    /// Longer inputs are skipped (pass `-max_len` with the same value to libFuzzer so it does not
    /// waste time on them): the bounds the services enforce are far below it, and a longer input
    /// only makes each run slower.
    pub max_len: usize,
    /// The most memory one input may make the body hold.
    pub budget: Budget,
}

impl Target {
    /// Runs the body on `data`, unless it is longer than [`Target::max_len`].
    pub fn exercise(&self, data: &[u8]) {
        if data.len() <= self.max_len {
            (self.run)(data);
        }
    }
}

/// Every target, for the replay tests.
pub const TARGETS: [Target; 7] = [
    policy_loader::TARGET,
    request_validators::TARGET,
    page_tokens::TARGET,
    catalog_jsonl::TARGET,
    receipts::TARGET,
    decision_differential::TARGET,
    ledger_events::TARGET,
];
