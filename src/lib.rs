//! The `consentgate` binary's library half: the demo story, shared by `consentgate demo` and the
//! end-to-end tests that assert on it.

pub mod demo;
