//! `cargo fuzz run -s none page_tokens`: the body is `consentgate_fuzzing::page_tokens` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::page_tokens::TARGET, data);
});
