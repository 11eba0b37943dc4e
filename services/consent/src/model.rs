//! The consent service's domain types: subjects, changes to record, stored records and events.

use consentgate_policy::{Channel, CollectionMethod, ConsentType, LegalBasis, RecordState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Whom a consent is about; defined once, in the policy crate, for every service and store.
pub use consentgate_policy::SubjectKey;

/// A consent event to record (Grant, Refuse or Withdraw), already validated against the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewConsent {
    /// Generated before the write so that the receipt can cite it.
    pub record_id: String,
    /// Whom it is about.
    pub subject: SubjectKey,
    /// The purpose key.
    pub purpose: String,
    /// Optional data-category scope.
    pub scope: Option<String>,
    /// Optional channel.
    pub channel: Option<String>,
    /// Given, refused or withdrawn.
    pub state: RecordState,
    /// Explicit or expressed.
    pub consent_type: ConsentType,
    /// The purpose's legal basis in the jurisdiction, when it was recorded.
    pub legal_basis: LegalBasis,
    /// Jurisdiction code.
    pub jurisdiction: String,
    /// The notice the person saw.
    pub notice_id: String,
    /// Its version.
    pub notice_version: String,
    /// How it was collected.
    pub collection_method: CollectionMethod,
    /// When it was collected (server time).
    pub collected_at: OffsetDateTime,
    /// When a given consent lapses.
    pub expires_at: Option<OffsetDateTime>,
    /// Anonymized source address (/24 or /48).
    pub source_ip: String,
    /// User agent, as sent.
    pub user_agent: String,
    /// Guardian backing a minor's consent.
    pub guardian_ref: Option<String>,
    /// Signed receipt (grants only). Not part of the record's stored body: the store keeps it
    /// apart (a signature and a shared context), bodies written before that carried a copy,
    /// which reading ignores. Records read back have none; a receipt is fetched by record id.
    #[serde(skip)]
    pub receipt: Option<crate::receipt::Receipt>,
    /// Where the record came from when it was imported from another platform (ImportConsents);
    /// `None` for one recorded here. An imported record keeps its own time in the subject's
    /// order, so it never overrides a newer choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportOrigin>,
}

/// The origin of an imported consent record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportOrigin {
    /// The platform it came from, as the import named it (`onetrust`, `legacy-crm`).
    pub source: String,
    /// The source platform's own id for the record: imports are deduplicated by it, for good.
    pub source_record_id: String,
}

/// A stored consent record: the event plus the revision it was recorded at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The event.
    pub consent: NewConsent,
    /// Its global revision.
    pub revision: u64,
    /// Where it stands in the subject's order (see [`consentgate_policy::Order`]): set on the
    /// current records a subject's state is read with, which decisions compare; `None` on
    /// history and write answers (decisions never read those), which then stand at their
    /// `collected_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_at: Option<OffsetDateTime>,
}

impl StoredRecord {
    /// The decision function's view of the record.
    pub fn to_policy_record(&self) -> consentgate_policy::Record {
        let c = &self.consent;
        consentgate_policy::Record {
            id: c.record_id.clone(),
            purpose: c.purpose.clone(),
            scope: c.scope.clone(),
            channel: c.channel.as_deref().and_then(Channel::parse),
            state: c.state,
            consent_type: c.consent_type,
            notice_version: c.notice_version.clone(),
            collected_at: c.collected_at,
            expires_at: c.expires_at,
            guardian_ref: c.guardian_ref.clone(),
            ordered_at: self.ordered_at.unwrap_or(c.collected_at),
            revision: self.revision,
        }
    }
}

/// A signal about a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSignal {
    /// gpc / age_band / guardian.
    pub kind: String,
    /// The value.
    pub value: String,
    /// Its revision.
    pub revision: u64,
    /// When it was recorded.
    pub recorded_at: OffsetDateTime,
    /// Where it stands in the subject's order, beside its consent records (see
    /// [`consentgate_policy::Order`]): `recorded_at`, moved past the subject's previous change.
    pub ordered_at: OffsetDateTime,
    /// How it was collected (`GpcSignal` for a request's GPC flag).
    pub collection_method: CollectionMethod,
}

/// One change to record atomically.
// Changes are built once per write and moved, never stored in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Grant, Refuse or Withdraw.
    Consent(NewConsent),
    /// A signal (GPC, age band, guardian).
    Signal {
        /// Whom it is about.
        subject: SubjectKey,
        /// gpc / age_band / guardian.
        kind: String,
        /// Its value.
        value: String,
        /// How it was collected (`GpcSignal` for a GPC flag first seen on a Check).
        collection_method: CollectionMethod,
    },
    /// A device linked to a known subject.
    Link {
        /// The device.
        device: SubjectKey,
        /// The subject.
        subject: SubjectKey,
    },
    /// Restrict or lift the restriction of processing.
    Restrict {
        /// Whom it is about.
        subject: SubjectKey,
        /// true restricts.
        restricted: bool,
    },
    /// Erase the subject (and its linked devices).
    Erase {
        /// Whom to erase.
        subject: SubjectKey,
    },
}

impl Change {
    /// The subject the change is about.
    pub fn subject(&self) -> &SubjectKey {
        match self {
            Change::Consent(c) => &c.subject,
            Change::Signal { subject, .. }
            | Change::Link { subject, .. }
            | Change::Restrict { subject, .. }
            | Change::Erase { subject } => subject,
        }
    }

    /// The event kind on the change stream.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Consent(c) => match c.state {
                RecordState::Given => "grant",
                RecordState::Refused => "refuse",
                RecordState::Withdrawn => "withdraw",
            },
            Change::Signal { .. } => "signal",
            Change::Link { .. } => "link",
            Change::Restrict { .. } => "restrict",
            Change::Erase { .. } => "erase",
        }
    }

    /// The purpose, for consent changes.
    pub fn purpose(&self) -> Option<&str> {
        match self {
            Change::Consent(c) => Some(&c.purpose),
            _ => None,
        }
    }
}

/// A write: who asks, the idempotency key, a fingerprint of the request, and the change.
#[derive(Debug, Clone)]
pub struct Write {
    /// The caller's name: idempotency keys are scoped per caller.
    pub caller: String,
    /// The service that made the write on the caller's behalf (delegation), if any: the ledger
    /// entry names both.
    pub delegate: Option<String>,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// SHA-256 of the request's meaningful fields: a reused key with other content is refused.
    pub fingerprint: [u8; 32],
    /// The change.
    pub change: Change,
}

/// What a write produced. Stored with the idempotency key so retries get the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The revision of the change.
    pub revision: u64,
    /// The record written (consent changes).
    pub record: Option<StoredRecord>,
    /// Rows deleted (erasure).
    pub records_deleted: u64,
    /// When it was committed.
    pub committed_at: OffsetDateTime,
    /// Other subject keys whose cached state the change affects (linked devices). Not kept
    /// with the idempotency record: a replay changes nothing, and ids must not outlive erasure.
    #[serde(skip)]
    pub affected: Vec<SubjectKey>,
    /// True when this is a retry answered from the idempotency record.
    #[serde(skip)]
    pub replayed: bool,
    /// An imported record older than the subject's current one for its purpose, channel and
    /// scope: it landed in history only, and decides nothing.
    #[serde(skip)]
    pub history_only: bool,
}

/// An erasure tombstone the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTombstone {
    /// The tombstone (see [`crate::ledger::LedgerKeys::tombstone`]).
    pub tombstone: Vec<u8>,
    /// The revision of the erasure (for a tombstone given back after a restore, the head then).
    pub revision: u64,
    /// When it was written.
    pub erased_at: OffsetDateTime,
}

/// A change as the WatchChanges stream shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Its global revision.
    pub revision: u64,
    /// Whom it is about; None once the subject was erased (consumers then flush everything).
    pub subject: Option<SubjectKey>,
    /// grant / refuse / withdraw / signal / link / restrict / erase.
    pub kind: String,
    /// The purpose, for consent changes.
    pub purpose: Option<String>,
    /// When it was written (in its transaction): gates measure propagation from it. `None` for
    /// changes written before commit times were kept.
    pub committed_at: Option<OffsetDateTime>,
}

/// Everything stored about a subject that decisions need, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectRows {
    /// The revision of the subject's latest change (0 if never seen).
    pub revision: u64,
    /// The highest revision in the store when the snapshot was read.
    pub as_of: u64,
    /// Whether a tombstone exists.
    pub erased: bool,
    /// Whether processing is restricted.
    pub restricted: bool,
    /// The current consent events: the latest per (purpose, channel, scope), oldest first.
    pub records: Vec<StoredRecord>,
    /// Every signal, oldest first.
    pub signals: Vec<StoredSignal>,
    /// Devices linked to this subject (for a subject), or the linked subject (for a device).
    pub links: Vec<SubjectKey>,
}

/// One ledger entry: the hash chain over canonical events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The previous entry's hash (32 zero bytes for the first), read from that entry: the
    /// store keeps no copy (migration 0012), so it is empty when that entry is missing.
    pub prev_hash: Vec<u8>,
    /// SHA-256(prev_hash ‖ event).
    pub hash: Vec<u8>,
    /// The canonical event (JSON, pseudonymized).
    pub event: String,
}

/// A signed checkpoint of the chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The entry it covers.
    pub seq: u64,
    /// That entry's hash.
    pub hash: Vec<u8>,
    /// Ed25519 signature over the checkpoint message.
    pub signature: Vec<u8>,
    /// The id of the key that signed it; `None` for checkpoints written before key ids (a bare
    /// seed's key signed those). Not covered by the signature: it only picks the key, and a
    /// wrong id makes verification fail.
    pub kid: Option<String>,
}

/// The receipt of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The subject it belongs to.
    pub subject: SubjectKey,
    /// Receipt JSON.
    pub json: String,
    /// JWS compact serialization.
    pub jws: String,
}
