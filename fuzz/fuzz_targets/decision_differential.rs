//! `cargo fuzz run -s none decision_differential`: the body is `consentgate_fuzzing::decision_differential` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::decision_differential::TARGET, data);
});
