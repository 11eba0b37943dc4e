//! `cargo fuzz run -s none receipts`: the body is `consentgate_fuzzing::receipts` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::receipts::TARGET, data);
});
