//! The policy loader (`Policy::from_toml`): any text is either a policy every later step can use,
//! or a rejection that names at least one problem with a line in the file. Never a panic.
//!
//! A loaded policy is then put to work: every purpose is decided for every caller with the
//! categories the purpose lists, on its first channel, on the policy's default jurisdiction and an
//! empty subject. The loader promises that these all exist, so each decision must succeed.

use crate::{Budget, Target};
use consentgate_policy::{CheckInput, Policy, SubjectState, decide};
use time::OffsetDateTime;

/// The policy loader target.
pub const TARGET: Target = Target {
    name: "policy_loader",
    run,
    // The shipped policy is 16 KB; 64 KB leaves room for policies four times its size.
    max_len: 64 * 1024,
    // toml builds a document tree of a few hundred bytes per key; the policy copies it once.
    budget: Budget {
        fixed: 8 << 20,
        per_input_byte: 512,
    },
};

/// Purposes and callers decided per loaded policy, at most: enough to exercise every shape the
/// loader accepts, without letting a policy of a thousand purposes make one input slow.
const MAX_DECIDED: usize = 32;

fn run(data: &[u8]) {
    // The loader is given text (a file read as UTF-8 by `Policy::from_file`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml(text, "fuzz.toml") {
        Err(e) => {
            assert!(!e.issues.is_empty(), "a rejection names no problem");
            let lines = text.lines().count().max(1);
            for issue in &e.issues {
                assert!(
                    issue.line >= 1 && issue.line <= lines + 1,
                    "issue at line {} of a {lines}-line file: {}",
                    issue.line,
                    issue.reason
                );
                assert!(issue.column >= 1, "issue at column 0: {}", issue.reason);
            }
            // Rendering the error for the operator must not panic either.
            let _ = e.to_string();
        }
        Ok(policy) => exercise(&policy),
    }
}

/// Decides every purpose of a loaded policy for every caller: the loader's promises (purposes'
/// categories exist, the default jurisdiction exists) are what make these succeed.
fn exercise(policy: &Policy) {
    assert!(
        policy
            .jurisdictions
            .contains_key(&policy.default_jurisdiction),
        "the default jurisdiction {:?} is not defined",
        policy.default_jurisdiction
    );
    let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a fixed time");
    let state = SubjectState::default();
    let callers: Vec<&str> = policy
        .callers
        .keys()
        .map(String::as_str)
        .chain(["nobody"])
        .take(MAX_DECIDED)
        .collect();
    for purpose in policy.purposes.values().take(MAX_DECIDED) {
        for &caller in &callers {
            let channel = purpose.channels.first().map(|c| c.as_str());
            let input = CheckInput {
                caller,
                purpose: &purpose.key,
                categories: &purpose.categories,
                channel,
                jurisdiction: "",
                gpc: true,
                now,
                explain: true,
            };
            match decide(policy, &input, &state) {
                Ok(decision) => assert_eq!(
                    decision.categories.len(),
                    purpose.categories.len().max(1),
                    "one verdict per category asked"
                ),
                Err(e) => panic!(
                    "a loaded policy cannot decide its own purpose {:?}: {e}",
                    purpose.key
                ),
            }
        }
    }
}
