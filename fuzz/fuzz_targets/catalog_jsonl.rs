//! `cargo fuzz run -s none catalog_jsonl`: the body is `consentgate_fuzzing::catalog_jsonl` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::catalog_jsonl::TARGET, data);
});
