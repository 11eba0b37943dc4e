//! A subject's consent state as the decision function sees it: current records and signals.

use crate::model::{AgeBand, Channel};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a consent event recorded. Stored (and serialized) as its snake_case spelling; an unknown
/// spelling in a database is an error, never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Consent given.
    Given,
    /// Consent refused when asked.
    Refused,
    /// Consent withdrawn after it was given.
    Withdrawn,
}

impl RecordState {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Given => "given",
            RecordState::Refused => "refused",
            RecordState::Withdrawn => "withdrawn",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(text: &str) -> Option<RecordState> {
        Some(match text {
            "given" => RecordState::Given,
            "refused" => RecordState::Refused,
            "withdrawn" => RecordState::Withdrawn,
            _ => return None,
        })
    }
}

/// How consent was expressed (ISO/IEC TS 27560).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentType {
    /// An explicit statement; required for sensitive categories.
    Explicit,
    /// An affirmative act without an explicit statement.
    Expressed,
}

impl ConsentType {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentType::Explicit => "explicit",
            ConsentType::Expressed => "expressed",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(text: &str) -> Option<ConsentType> {
        Some(match text {
            "explicit" => ConsentType::Explicit,
            "expressed" => ConsentType::Expressed,
            _ => return None,
        })
    }
}

/// How a consent event or signal was collected (ISO/IEC TS 27560's collection method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionMethod {
    /// A preference center the person used.
    PreferenceCenter,
    /// A consent banner.
    Banner,
    /// A survey or quiz.
    Survey,
    /// Another system, over the API.
    Api,
    /// A browser's Global Privacy Control signal (a request's GPC flag, first seen on a Check).
    GpcSignal,
    /// Imported from another consent platform.
    Import,
}

impl CollectionMethod {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectionMethod::PreferenceCenter => "preference_center",
            CollectionMethod::Banner => "banner",
            CollectionMethod::Survey => "survey",
            CollectionMethod::Api => "api",
            CollectionMethod::GpcSignal => "gpc_signal",
            CollectionMethod::Import => "import",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(text: &str) -> Option<CollectionMethod> {
        Some(match text {
            "preference_center" => CollectionMethod::PreferenceCenter,
            "banner" => CollectionMethod::Banner,
            "survey" => CollectionMethod::Survey,
            "api" => CollectionMethod::Api,
            "gpc_signal" => CollectionMethod::GpcSignal,
            "import" => CollectionMethod::Import,
            _ => return None,
        })
    }
}

/// The latest consent event for one (purpose, channel, data-category scope) of a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record id, cited in explanations.
    pub id: String,
    /// The purpose key the event names.
    pub purpose: String,
    /// The data category the event is limited to, if any.
    pub scope: Option<String>,
    /// The channel the event is limited to, if any (None on a withdrawal covers every channel).
    pub channel: Option<Channel>,
    /// Given, refused or withdrawn.
    pub state: RecordState,
    /// Explicit or expressed.
    pub consent_type: ConsentType,
    /// The notice version the person saw.
    pub notice_version: String,
    /// When the event was collected: people are told when they chose what (e.g. the date of an
    /// opt-in that overrides a GPC signal).
    pub collected_at: OffsetDateTime,
    /// When a given consent lapses.
    pub expires_at: Option<OffsetDateTime>,
    /// The guardian who backs a minor's consent.
    pub guardian_ref: Option<String>,
    /// When the record takes its place in the subject's order ([`Order`]): its `collected_at`
    /// for a record imported from another platform, and for one recorded live, `collected_at`
    /// moved just past the subject's previous change (replicas' clocks differ, and a withdrawal
    /// must never sort before the grant it withdraws).
    pub ordered_at: OffsetDateTime,
    /// The global revision of the event: later events have larger numbers.
    pub revision: u64,
}

impl Record {
    /// Where the record stands in its subject's order: later records override earlier ones.
    pub fn order(&self) -> Order {
        Order {
            at: self.ordered_at,
            revision: self.revision,
        }
    }
}

/// The order of a subject's consent events and signals: by time, then revision. Records recorded
/// live are in revision order (their times only move forward per subject); an imported record
/// from years ago sorts before them although its revision is newer, so it lands in history
/// instead of overriding what the person chose since (docs/architecture.md, "Bulk import").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    /// The record's `ordered_at` (a signal's time of recording, moved the same way).
    pub at: OffsetDateTime,
    /// The global revision, breaking ties.
    pub revision: u64,
}

impl Order {
    /// After everything recorded: a GPC flag seen on a request and not yet recorded.
    pub const LATEST: Order = Order {
        at: time::macros::datetime!(9999-12-31 23:59:59.999999 UTC),
        revision: u64::MAX,
    };
}

/// Everything the decision function needs to know about one subject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectState {
    /// The revision of the subject's latest change (0: never seen).
    pub revision: u64,
    /// The subject was erased: nothing may be processed.
    pub erased: bool,
    /// Processing is restricted (GDPR Art. 18): only essential purposes.
    pub restricted: bool,
    /// Current records: the latest per (purpose, channel, scope).
    pub records: Vec<Record>,
    /// Where the latest GPC signal that is on stands in the subject's order (None when off or
    /// never recorded).
    pub gpc_signal: Option<Order>,
    /// When that signal was recorded, to name it when a later opt-in overrides it.
    pub gpc_signal_at: Option<OffsetDateTime>,
    /// The recorded age band, if any.
    pub age_band: Option<AgeBand>,
    /// Verified guardian references.
    pub guardians: Vec<String>,
}
