//! The profile service's domain types, independent of protobuf and SQL.

use serde::Serialize;

/// Where an attribute came from (docs/architecture.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The person told us.
    ZeroParty,
    /// We observed it.
    FirstParty,
    /// A partner's first-party data.
    SecondParty,
    /// Bought or obtained from a third party.
    ThirdParty,
}

impl Source {
    /// The stored and obligation spelling (`third_party`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ZeroParty => "zero_party",
            Source::FirstParty => "first_party",
            Source::SecondParty => "second_party",
            Source::ThirdParty => "third_party",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Source> {
        Some(match text {
            "zero_party" => Source::ZeroParty,
            "first_party" => Source::FirstParty,
            "second_party" => Source::SecondParty,
            "third_party" => Source::ThirdParty,
            _ => return None,
        })
    }
}

/// A first-party event's kind and the data category it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A page view.
    PageView,
    /// A product view.
    ProductView,
    /// A search.
    Search,
    /// An add-to-cart.
    AddToCart,
    /// A purchase.
    Purchase,
    /// A return.
    Return,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        EventKind::PageView,
        EventKind::ProductView,
        EventKind::Search,
        EventKind::AddToCart,
        EventKind::Purchase,
        EventKind::Return,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PageView => "page_view",
            EventKind::ProductView => "product_view",
            EventKind::Search => "search",
            EventKind::AddToCart => "add_to_cart",
            EventKind::Purchase => "purchase",
            EventKind::Return => "return",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The data category events of this kind are (so consent is checked per category).
    pub fn category(self) -> &'static str {
        match self {
            EventKind::PageView | EventKind::ProductView => "user.behavior.browsing_history",
            EventKind::Search => "user.behavior.search_history",
            EventKind::AddToCart => "user.behavior.cart",
            EventKind::Purchase | EventKind::Return => "user.behavior.purchase_history",
        }
    }
}

/// One field of an event as the API names it (`consentgate.profile.v1.Event`), for reads that
/// return only some fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventField {
    /// `event_id`.
    EventId,
    /// `kind`.
    Kind,
    /// `occurred_at`.
    OccurredAt,
    /// `item_id`.
    ItemId,
    /// `query`.
    Query,
    /// `page`.
    Page,
    /// `amount_minor`.
    AmountMinor,
    /// `currency`.
    Currency,
    /// `quantity`.
    Quantity,
    /// `data_category`.
    DataCategory,
    /// `purpose` (and the notice version it was collected under).
    Purpose,
}

impl EventField {
    /// Every field.
    pub const ALL: [EventField; 11] = [
        EventField::EventId,
        EventField::Kind,
        EventField::OccurredAt,
        EventField::ItemId,
        EventField::Query,
        EventField::Page,
        EventField::AmountMinor,
        EventField::Currency,
        EventField::Quantity,
        EventField::DataCategory,
        EventField::Purpose,
    ];

    /// The field's name in the API (a field-mask path).
    pub fn name(self) -> &'static str {
        match self {
            EventField::EventId => "event_id",
            EventField::Kind => "kind",
            EventField::OccurredAt => "occurred_at",
            EventField::ItemId => "item_id",
            EventField::Query => "query",
            EventField::Page => "page",
            EventField::AmountMinor => "amount_minor",
            EventField::Currency => "currency",
            EventField::Quantity => "quantity",
            EventField::DataCategory => "data_category",
            EventField::Purpose => "purpose",
        }
    }

    /// The field named `name` (a field-mask path).
    pub fn parse(name: &str) -> Option<EventField> {
        EventField::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The fields of each event a read returns (AIP-157 partial responses): a caller that needs
/// three fields receives three (data minimization), and the store reads only their columns,
/// which is most of what a read of hundreds of events costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFields(u16);

impl EventFields {
    /// Every field.
    pub const ALL: EventFields = EventFields((1 << EventField::ALL.len()) - 1);

    /// Exactly `fields`.
    pub fn only(fields: impl IntoIterator<Item = EventField>) -> EventFields {
        EventFields(fields.into_iter().fold(0, |bits, f| bits | 1 << f as u16))
    }

    /// These fields and `field`.
    pub fn with(self, field: EventField) -> EventFields {
        EventFields(self.0 | 1 << field as u16)
    }

    /// Whether `field` is returned.
    pub fn has(self, field: EventField) -> bool {
        self.0 & 1 << field as u16 != 0
    }
}

/// Every field, unless a read asks for fewer.
impl Default for EventFields {
    fn default() -> Self {
        EventFields::ALL
    }
}

/// A zero-party answer's kind and its data category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// A survey answer.
    Survey,
    /// A quiz answer.
    Quiz,
    /// A preference-center choice.
    Preference,
    /// Why a product was returned.
    ReturnReason,
}

impl AnswerKind {
    /// Every kind.
    pub const ALL: [AnswerKind; 4] = [
        AnswerKind::Survey,
        AnswerKind::Quiz,
        AnswerKind::Preference,
        AnswerKind::ReturnReason,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Survey => "survey",
            AnswerKind::Quiz => "quiz",
            AnswerKind::Preference => "preference",
            AnswerKind::ReturnReason => "return_reason",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<AnswerKind> {
        AnswerKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The data category answers of this kind are.
    pub fn category(self) -> &'static str {
        match self {
            AnswerKind::Survey | AnswerKind::Quiz => "user.survey.answers",
            AnswerKind::Preference => "user.preferences.stated",
            AnswerKind::ReturnReason => "user.survey.return_reason",
        }
    }
}

/// Under which purpose and notice something was collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collection {
    /// The purpose key.
    pub purpose: String,
    /// The notice version shown.
    pub notice_version: String,
}

/// An attribute of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribute {
    /// The attribute's name, unique per subject.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Its data category.
    pub category: String,
    /// Where it came from.
    pub source: Source,
    /// The partner, for second- and third-party data.
    pub partner: String,
    /// The purpose and notice it was collected under.
    #[serde(flatten)]
    pub collection: Collection,
    /// When it was first collected (µs since the epoch).
    pub collected_at: i64,
    /// When its value last changed (µs since the epoch).
    pub updated_at: i64,
}

/// A first-party event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// A time-ordered unique id (UUID v7).
    pub event_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When (µs since the epoch).
    pub occurred_at: i64,
    /// The product, if any.
    pub item_id: String,
    /// The search text, if any.
    pub query: String,
    /// The page path, if any.
    pub page: String,
    /// Amount in minor units, for purchases and returns.
    pub amount_minor: i64,
    /// ISO 4217 currency of the amount.
    pub currency: String,
    /// Quantity.
    pub quantity: u32,
    /// The purpose and notice it was collected under.
    #[serde(flatten)]
    pub collection: Collection,
}

/// A zero-party answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// A unique id (UUID v7).
    pub answer_id: String,
    /// What kind of answer.
    pub kind: AnswerKind,
    /// The question's stable id.
    pub question_id: String,
    /// The question as shown.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// The product, for return reasons.
    pub item_id: String,
    /// The purpose and notice it was collected under.
    #[serde(flatten)]
    pub collection: Collection,
    /// When it was given (µs since the epoch).
    pub collected_at: i64,
}

/// The three kinds of personal data the profile service holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Attributes (profile fields).
    Attributes,
    /// First-party events.
    Events,
    /// Zero-party answers.
    Answers,
}

/// How much data of one category (and source) a subject has: what a redaction summarizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The data category.
    pub category: String,
    /// The source (`first_party` for events, `zero_party` for answers).
    pub source: Source,
    /// How many items.
    pub items: u64,
    /// Which kind of data.
    pub table: Table,
}

/// One gated read, before it is chained into the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDraft {
    /// The subject read (its key; the log stores only a pseudonym).
    pub subject_key: String,
    /// When (µs since the epoch).
    pub read_at: i64,
    /// Who read it.
    pub caller: String,
    /// Who enforced the decision.
    pub enforced_by: String,
    /// For what purpose.
    pub purpose: String,
    /// The categories returned.
    pub categories: Vec<String>,
    /// The decision's revision.
    pub revision: u64,
    /// The RPC.
    pub operation: String,
    /// How many items were returned.
    pub items: u64,
}

/// An access-log entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When (µs since the epoch).
    pub read_at: i64,
    /// The subject's pseudonym under its per-subject key.
    pub pseudonym: String,
    /// Who read.
    pub caller: String,
    /// Who enforced.
    pub enforced_by: String,
    /// For what purpose.
    pub purpose: String,
    /// The categories returned, comma-separated.
    pub categories: String,
    /// The decision's revision.
    pub revision: u64,
    /// The RPC.
    pub operation: String,
    /// Items returned.
    pub items: u64,
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
}

/// A data-subject request's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsarRequest {
    /// The request's id (UUID v7).
    pub request_id: String,
    /// `erase`, `export` or `rectify`.
    pub kind: String,
    /// `in_progress` or `completed`.
    pub state: String,
    /// When it was asked for (µs).
    pub requested_at: i64,
    /// When it completed (µs; 0 while in progress).
    pub completed_at: i64,
    /// Outcome details as JSON (counts, steps; a rectification's attribute name and category);
    /// never subject ids, never a value of the subject's data.
    pub detail: String,
    /// The caller identity that made the request (empty for requests recorded before callers
    /// were kept).
    pub requested_by: String,
    /// The free-text reason given with the request (a rectification's); cleared at erasure,
    /// since it may describe the person.
    pub note: String,
}

/// Who asks for a data-subject request, and why: kept with it, so that the subject's access
/// report and the request's status can say by whom and for what a correction was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// The authenticated caller identity (never a value from the request body).
    pub caller: String,
    /// The reason given with the request (free text; see [`DsarRequest::note`]).
    pub note: String,
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}
