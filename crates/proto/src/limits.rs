//! The bounds of every request, in one place: each is quoted in the proto comment of its field
//! (`proto/`), and the services' validators enforce it with `INVALID_ARGUMENT` naming the field,
//! before any expensive work. A real client never comes near them; they bound what one request
//! can make a server allocate, store or answer. Counts are items, lengths are UTF-8 bytes.

// ---------------------------------------------------------------- shared by every service

/// Subject and device ids, record and request ids, guardian references, item ids.
pub const MAX_ID_BYTES: usize = 256;
/// Idempotency keys.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// A key the policy defines, as a request names it: a purpose, a data category, a channel, a
/// jurisdiction, a caller (`on_behalf_of`, `as_caller`). The shipped keys are under 50 bytes.
pub const MAX_POLICY_KEY_BYTES: usize = 128;
/// Data categories one Check or one read names (the shipped policy has about 20).
pub const MAX_CATEGORIES: usize = 64;
/// A consistency token (`at_least_as_fresh`, a decimal revision) or a page token.
pub const MAX_TOKEN_BYTES: usize = 128;
/// A notice version (`2`, `2.1`).
pub const MAX_NOTICE_VERSION_BYTES: usize = 32;

// ---------------------------------------------------------------- consent service

/// Checks in one BatchCheck.
pub const MAX_BATCH_CHECKS: usize = 1000;
/// Data categories named across all the checks of one BatchCheck: with explanations asked
/// for, each costs a few hundred bytes of answer, and the answer must fit in one message.
pub const MAX_BATCH_CATEGORIES: usize = 4096;
/// Subjects in one FindErased, tombstones in one ReapplyErasures, the page of ListErasures.
pub const MAX_ERASURE_BATCH: usize = 1000;
/// Records per ImportConsents request (one chunk of the stream, answered as a whole).
pub const MAX_IMPORT_CHUNK: usize = 1000;
/// Bytes of an import's source name (`onetrust`, `legacy-crm`).
pub const MAX_IMPORT_SOURCE_BYTES: usize = 64;
/// Bytes of a source's record id.
pub const MAX_SOURCE_RECORD_ID_BYTES: usize = 128;
/// The page size of ListConsentHistory.
pub const MAX_HISTORY_PAGE: u32 = 500;
/// A consent source's user agent.
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// A consent source's IP address (an IPv6 address with a zone fits).
pub const MAX_IP_ADDRESS_BYTES: usize = 64;
/// A language tag (BCP 47).
pub const MAX_LANGUAGE_BYTES: usize = 35;
/// The shortest heartbeat interval a WatchChanges may ask for: a stream costs the server a wakeup
/// per heartbeat, and 10,000 streams at this floor cost 100,000 wakeups a second at most.
pub const MIN_HEARTBEAT_MILLIS: u32 = 100;
/// The longest heartbeat interval a WatchChanges may ask for.
pub const MAX_HEARTBEAT_MILLIS: u32 = 10_000;
/// The bytes of an erasure tombstone.
pub const TOMBSTONE_BYTES: usize = 32;

// ---------------------------------------------------------------- profile service

/// Attributes in one SetAttributes, answers in one SubmitAnswers.
pub const MAX_ITEMS: usize = 500;
/// Events in one RecordEvents.
pub const MAX_EVENTS: usize = 1000;
/// Names: an attribute's name, a question id, a partner.
pub const MAX_NAME_BYTES: usize = 128;
/// Free text: an attribute's value, a question, an answer, a search query, a page.
pub const MAX_VALUE_BYTES: usize = 4096;
/// A rectification's reason.
pub const MAX_REASON_BYTES: usize = 1024;
/// Kinds one read filters on (event or answer kinds), and paths in one read mask.
pub const MAX_KINDS: usize = 16;
/// The page size of ListEvents and the event limit of ReadSubject.
pub const MAX_PAGE: u32 = 1000;

// ---------------------------------------------------------------- recommendation service

/// Items one Recommend may ask for.
pub const MAX_RECOMMENDED_ITEMS: u32 = 100;
/// A Recommend's context text (device, region, current item, weather).
pub const MAX_CONTEXT_TEXT_BYTES: usize = 256;
/// Session items one Recommend may carry.
pub const MAX_SESSION_ITEMS: usize = 100;
