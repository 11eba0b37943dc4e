//! The `consentgate` binary's library half: the suite's wiring (shared by `consentgate up`, the
//! load generators and the end-to-end tests) and the demo story (shared by `consentgate demo` and
//! the tests that assert on it), the development certificate authority, and `consentgate
//! import` (shared with the import tests).

pub mod demo;
pub mod dev_certs;
pub mod import;
pub mod suite;
