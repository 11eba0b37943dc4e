//! `cargo fuzz run -s none policy_loader`: the body is `consentgate_fuzzing::policy_loader` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::policy_loader::TARGET, data);
});
