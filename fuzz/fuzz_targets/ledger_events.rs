//! `cargo fuzz run -s none ledger_events`: the body is `consentgate_fuzzing::ledger_events` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consentgate_fuzz::fuzz(&consentgate_fuzzing::ledger_events::TARGET, data);
});
