//! The `consentgate` binary's library half: the suite's wiring (shared by `consentgate up`, the
//! load generators and the end-to-end tests) and the demo story (shared by `consentgate demo` and
//! the tests that assert on it), and the development certificate authority.

pub mod demo;
pub mod dev_certs;
pub mod suite;
