//! The consent model and the decision function: consentgate's policy decision logic.
//!
//! Everything here is pure: no network, no database, no clock (the caller passes `now`).
//! The consent service feeds [`decide`] a [`SubjectState`] it loaded from its store; tests
//! feed it hand-built states. That is what makes the decision rules testable as tables.

mod decision;
mod delegation;
mod file;
mod model;
mod pattern;
mod state;
mod subject;

pub use decision::{
    CategoryVerdict, CheckInput, Decision, DecisionError, Obligation, Reason, Step, Verdict,
    decide, gpc_conflicts, overriding_record, validate,
};
pub use delegation::{DELEGABLE_RPCS, Delegates, Principals, rpc_short_name};
pub use file::{PolicyError, PolicyIssue};
pub use model::{
    AgeBand, Caller, Category, Channel, Jurisdiction, LegalBasis, NoticeVersion, Personalization,
    Policy, Purpose, Role, Rules,
};
pub use pattern::{Pattern, is_ancestor_or_self, parent_key};
pub use state::{CollectionMethod, ConsentType, Order, Record, RecordState, SubjectState};
pub use subject::SubjectKey;

/// The default policy shipped with consentgate: strict opt-in for everything not essential.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../../policy/default.toml");
