//! `cargo fuzz run -s none request_validators`: the body is `consentgate_fuzzing::request_validators` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::request_validators::TARGET, data);
});
