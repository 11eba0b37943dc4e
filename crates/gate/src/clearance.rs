//! The [`Clearance`] value: proof that the consent service was asked (named apart from the policy
//! crate's `Decision`, the decision function's verdict, which it carries). Its fields are private and
//! it has no public constructor, so only [`crate::Gate`] can make one; every store function that
//! reads personal data takes one, which makes a read that skips the gate a compile error.
//!
//! A store function asks for one:
//! ```
//! fn read_profile(_proof: &consentgate_gate::Clearance) {}
//! ```
//! and outside this crate one cannot be forged, neither by a struct literal…
//! ```compile_fail
//! let forged = consentgate_gate::Clearance {
//!     subject_key: "s:alice".into(),
//!     purpose: "marketing".into(),
//!     caller: "me".into(),
//!     response: Default::default(),
//!     from_cache: false,
//! };
//! ```
//! …nor by a default.
//! ```compile_fail
//! let forged = consentgate_gate::Clearance::default();
//! ```

use consentgate_policy::SubjectKey;
use consentgate_proto::common::v1::{PersonalizationLevel, SubjectRef, subject_ref};
use consentgate_proto::consent::v1::{CategoryDecision, CheckResponse, Obligation, Verdict};
use std::sync::Arc;
use std::time::SystemTime;

/// The consent service's decision for one subject, purpose and caller, as the gate obtained it:
/// the capability a store read requires.
#[derive(Debug, Clone)]
pub struct Clearance {
    pub(crate) subject_key: String,
    pub(crate) purpose: String,
    pub(crate) caller: String,
    pub(crate) response: Arc<CheckResponse>,
    pub(crate) from_cache: bool,
}

/// The storage key of a subject reference: `s:<id>` for a person, `d:<id>` for a device.
/// The prefixes keep a person and a device with the same id apart.
pub fn subject_key(subject: &SubjectRef) -> Option<String> {
    let key = match subject.id.as_ref()? {
        subject_ref::Id::SubjectId(id) if !id.is_empty() => SubjectKey::Subject(id.clone()),
        subject_ref::Id::DeviceId(id) if !id.is_empty() => SubjectKey::Device(id.clone()),
        _ => return None,
    };
    Some(key.storage())
}

/// The subject reference behind a storage key made by [`subject_key`] (`s:<id>` → a person,
/// `d:<id>` → a device), for services that keep derived data by key and must ask about it again
/// later (the recommendation service re-checks the training consent of subjects it learned).
pub fn subject_of_key(key: &str) -> Option<SubjectRef> {
    let id = match SubjectKey::from_storage(key)? {
        SubjectKey::Subject(id) if !id.is_empty() => subject_ref::Id::SubjectId(id),
        SubjectKey::Device(id) if !id.is_empty() => subject_ref::Id::DeviceId(id),
        _ => return None,
    };
    Some(SubjectRef { id: Some(id) })
}

impl Clearance {
    /// The subject the decision is about (`s:<id>` or `d:<id>`): stores read only this subject.
    pub fn subject_key(&self) -> &str {
        &self.subject_key
    }

    /// The purpose that was checked.
    pub fn purpose(&self) -> &str {
        &self.purpose
    }

    /// The caller the decision was made for (the original caller under delegation).
    pub fn caller(&self) -> &str {
        &self.caller
    }

    /// The subject's revision the decision was computed from.
    pub fn revision(&self) -> u64 {
        self.response.revision
    }

    /// Until when the decision may be relied on: the consent service's `valid_until`, the
    /// earliest of the policy's TTL and the expiry of every record behind any part of the answer
    /// (each category, the personalization level). Anything derived from the decision and kept
    /// (a tier, a model's contribution) must be re-checked or dropped by then, as the gate's own
    /// cache is. A response without one is valid for no time at all (`UNIX_EPOCH`): fail closed.
    pub fn valid_until(&self) -> SystemTime {
        self.response
            .valid_until
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Whether the decision still holds at `now` (see [`Clearance::valid_until`]).
    pub fn holds_at(&self, now: SystemTime) -> bool {
        now < self.valid_until()
    }

    /// Whether the answer came from the gate's cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The overall verdict.
    pub fn verdict(&self) -> Verdict {
        self.response.verdict()
    }

    /// The purpose-level reason code (empty when allowed).
    pub fn reason(&self) -> &str {
        &self.response.reason
    }

    /// The highest personalization rung the subject's consents allow.
    pub fn personalization_level(&self) -> PersonalizationLevel {
        self.response.personalization_level()
    }

    /// Whether the purpose itself is allowed (for a check without categories) or at least one
    /// requested category is.
    pub fn allows_anything(&self) -> bool {
        matches!(self.verdict(), Verdict::Allow | Verdict::Partial)
    }

    /// The verdict on one requested category; `None` when it was not part of the check.
    pub fn category(&self, category: &str) -> Option<&CategoryDecision> {
        self.response
            .categories
            .iter()
            .find(|c| c.data_category == category)
    }

    /// Whether data of exactly this category may be used. A category that was not part of the
    /// check is not allowed: the gate never widens a decision.
    pub fn is_allowed(&self, category: &str) -> bool {
        self.category(category).is_some_and(|c| c.allowed)
    }

    /// The allowed categories.
    pub fn allowed_categories(&self) -> Vec<&str> {
        self.response
            .categories
            .iter()
            .filter(|c| c.allowed)
            .map(|c| c.data_category.as_str())
            .collect()
    }

    /// The obligations that travel with the allow.
    pub fn obligations(&self) -> &[Obligation] {
        &self.response.obligations
    }

    /// Data sources the obligations exclude (e.g. `third_party` for targeted advertising).
    pub fn excluded_sources(&self) -> Vec<&str> {
        self.response
            .obligations
            .iter()
            .filter(|o| o.kind == "exclude_sources")
            .flat_map(|o| o.values.iter().map(String::as_str))
            .collect()
    }

    /// The subject is erased in the consent service: nothing may be read or kept.
    pub fn subject_erased(&self) -> bool {
        self.response.reason == "SUBJECT_ERASED"
    }
}
