//! Importing consent records from another platform (ImportConsents): each record becomes a
//! consent event with its original time, marked with its origin in history, in the ledger and in
//! a grant's receipt, and lands once per source record id, for good.
//!
//! A chunk's records go to the store as one unit (`Engine::record_many`), so one group commit
//! lands the whole chunk; each is its own write all the same (its own revision, ledger entry and
//! change event), so a record is stored whole or not at all and the chunk's answer says which, record
//! by record. Where an imported record stands among a subject's records is the store's business:
//! by its own time, so one older than the subject's current record lands in history only.

use super::consent::ConsentAsk;
use super::{Service, ServiceError};
use crate::engine::EngineError;
use crate::model::{Change, ImportOrigin, Write};
use crate::receipt;
use consentgate_policy::{ConsentType, RecordState};
use consentgate_runtime::CallerIdentity;
use time::OffsetDateTime;

/// One imported record as asked, already validated.
#[derive(Debug, Clone)]
pub struct ImportAsk {
    /// Its position in its chunk, for the answer.
    pub index: usize,
    /// The source and the source's record id.
    pub origin: ImportOrigin,
    /// The shared parts of a consent event (the idempotency key is the source record id's).
    pub consent: ConsentAsk,
    /// Given, refused or withdrawn.
    pub state: RecordState,
    /// Explicit or expressed.
    pub consent_type: ConsentType,
    /// When the source collected it (not in the future).
    pub collected_at: OffsetDateTime,
    /// When a grant lapses, as the source recorded it.
    pub expires_at: Option<OffsetDateTime>,
    /// Guardian backing a minor's consent.
    pub guardian_ref: Option<String>,
    /// The receipt's language.
    pub language: String,
}

/// What became of one imported record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Stored at `revision`; `current` unless the subject holds a newer record for the same
    /// purpose, channel and scope (then in history only).
    Stored {
        /// Its position in its chunk.
        index: usize,
        /// The revision it was stored at.
        revision: u64,
        /// Its record id here.
        record_id: String,
        /// Whether it is now the current record for its key.
        current: bool,
    },
    /// Imported before, with the same content: nothing written.
    Duplicate {
        /// Its position in its chunk.
        index: usize,
        /// The revision it was stored at the first time.
        revision: u64,
        /// Its record id here.
        record_id: String,
    },
    /// Not stored.
    Rejected {
        /// Its position in its chunk.
        index: usize,
        /// `INVALID_ARGUMENT`, `SUBJECT_ERASED` or `SOURCE_RECORD_CONFLICT`.
        code: &'static str,
        /// The bad field (`records[i].…`), empty when no one field is to blame.
        field: String,
        /// Why, in words.
        reason: String,
    },
}

impl ImportOutcome {
    /// The status word for metrics and the log: imported, history_only, duplicate, rejected.
    pub fn status(&self) -> &'static str {
        match self {
            ImportOutcome::Stored { current: true, .. } => "imported",
            ImportOutcome::Stored { current: false, .. } => "history_only",
            ImportOutcome::Duplicate { .. } => "duplicate",
            ImportOutcome::Rejected { .. } => "rejected",
        }
    }
}

impl Service {
    /// Imports one chunk: `records` as validated (a rejection stays one); answers every record,
    /// in order. `Err` only when the store failed: nothing of the failed group commits was
    /// stored, and sending the chunk again resumes (what landed is answered as a duplicate).
    pub async fn import(
        &self,
        caller: &CallerIdentity,
        records: Vec<Result<ImportAsk, ImportOutcome>>,
    ) -> Result<Vec<ImportOutcome>, ServiceError> {
        let started = std::time::Instant::now();
        let mut answers: Vec<Option<ImportOutcome>> = Vec::with_capacity(records.len());
        let mut writes = Vec::new();
        for record in records {
            match record {
                Err(rejected) => answers.push(Some(rejected)),
                Ok(ask) => {
                    let index = ask.index;
                    let write = self.import_write(caller, ask)?;
                    writes.push((index, answers.len(), write));
                    answers.push(None);
                }
            }
        }
        // Queued in time order, so the ledger chains a chunk's records of a subject in the order
        // they were collected (the state comes out the same in any order).
        writes.sort_by_key(|(_, _, write)| match &write.change {
            Change::Consent(c) => Some(c.collected_at),
            _ => None,
        });
        let (places, writes): (Vec<(usize, usize, &'static str)>, Vec<Write>) = writes
            .into_iter()
            .map(|(index, slot, write)| ((index, slot, write.change.kind()), write))
            .unzip();
        let results = self.engine.record_many(writes).await?;
        for ((index, slot, kind), result) in places.into_iter().zip(results) {
            let answer = match result {
                Ok(outcome) => {
                    self.metrics
                        .wrote(kind, outcome.replayed, started.elapsed());
                    let record_id = outcome
                        .record
                        .as_ref()
                        .map(|r| r.consent.record_id.clone())
                        .unwrap_or_default();
                    if outcome.replayed {
                        ImportOutcome::Duplicate {
                            index,
                            revision: outcome.revision,
                            record_id,
                        }
                    } else {
                        ImportOutcome::Stored {
                            index,
                            revision: outcome.revision,
                            record_id,
                            current: !outcome.history_only,
                        }
                    }
                }
                Err(EngineError::Erased) => ImportOutcome::Rejected {
                    index,
                    code: "SUBJECT_ERASED",
                    field: String::new(),
                    reason: "the subject was erased; nothing more is recorded about it".into(),
                },
                Err(EngineError::IdempotencyConflict) => ImportOutcome::Rejected {
                    index,
                    code: "SOURCE_RECORD_CONFLICT",
                    field: format!("records[{index}].source_record_id"),
                    reason:
                        "imported before with other content; a source record id names one record"
                            .into(),
                },
                Err(e) => return Err(e.into()),
            };
            answers[slot] = Some(answer);
        }
        let answers: Vec<ImportOutcome> = answers.into_iter().flatten().collect();
        let count = |status: &str| answers.iter().filter(|a| a.status() == status).count();
        tracing::info!(
            caller = %caller.name,
            records = answers.len(),
            imported = count("imported"),
            history_only = count("history_only"),
            duplicate = count("duplicate"),
            rejected = count("rejected"),
            "imported a chunk of consent records"
        );
        Ok(answers)
    }

    /// The write of one imported record: the event as a live one would be built (legal basis,
    /// notice, truncated source), with the source's time, the retention cap counted from it, the
    /// origin, and for a grant its receipt's context (the receipt says it was imported), signed
    /// when first asked for ([`receipt::Receipt::Unsigned`]): an import hands out no receipt.
    fn import_write(&self, caller: &CallerIdentity, ask: ImportAsk) -> Result<Write, ServiceError> {
        let (idempotency, mut consent, retention) =
            self.new_consent(ask.consent, ask.state, ask.consent_type)?;
        consent.collected_at = ask.collected_at;
        let cap = (retention > 0 && ask.state == RecordState::Given)
            .then(|| ask.collected_at + time::Duration::days(i64::from(retention)));
        consent.expires_at = match (ask.expires_at, cap) {
            (Some(e), Some(c)) => Some(e.min(c)),
            (e, c) => e.or(c),
        };
        consent.guardian_ref = ask.guardian_ref;
        consent.imported = Some(ask.origin);
        if ask.state == RecordState::Given {
            consent.receipt = Some(receipt::unsigned(
                self.policy(),
                self.engine.keys(),
                &consent,
                &ask.language,
            ));
        }
        Ok(Write {
            caller: caller.name.clone(),
            delegate: None,
            idempotency_key: idempotency.key,
            fingerprint: idempotency.fingerprint,
            change: Change::Consent(consent),
        })
    }
}
