//! Data-subject rights and proof: what is held about a person (their current consents with what
//! overrides them, their signals, linked devices), their history, receipts, restriction and
//! erasure, and the ledger's verification.

use super::{Idempotency, Service, ServiceError};
use crate::engine::to_state;
use crate::ledger::{self, VerifyReport};
use crate::model::{Change, HeldTombstone, StoredRecord, StoredSignal, SubjectKey, WriteOutcome};
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::delegation::Actor;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;

/// A subject's current consents, as a preference center shows them.
#[derive(Debug, Clone)]
pub struct ConsentsView {
    /// The latest record per (purpose, channel, scope).
    pub records: Vec<CurrentRecord>,
    /// GPC and age band: the latest value only. Guardians accumulate.
    pub signals: Vec<StoredSignal>,
    /// Devices linked to the subject.
    pub linked_device_ids: Vec<String>,
    /// Whether processing is restricted.
    pub restricted: bool,
    /// The subject's revision.
    pub revision: u64,
    /// GPC conflicts the person resolved by opting in after a signal.
    pub conflicts: Vec<String>,
    /// When the view was taken (a grant past its expiry then shows as expired).
    pub as_of: OffsetDateTime,
}

/// A current record and what overrides it.
#[derive(Debug, Clone)]
pub struct CurrentRecord {
    /// The record.
    pub record: StoredRecord,
    /// A later refusal or withdrawal that fully covers this grant, so that a preference center
    /// never shows e-mail as on after "withdraw all marketing".
    pub overridden_by: Option<String>,
}

/// A page of a subject's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Records, oldest first.
    pub records: Vec<StoredRecord>,
    /// The revision to continue after, when there is more.
    pub next_after: Option<u64>,
}

/// What `ReapplyErasures` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reapplied {
    /// Tombstones the database held already.
    pub already_present: u64,
    /// Tombstones it lacked and holds again.
    pub restored: u64,
    /// Keys erased again (persons and their linked devices).
    pub subjects_erased: u64,
    /// Consent records those erasures deleted.
    pub records_deleted: u64,
    /// The revision of the last erasure (0: none).
    pub revision: u64,
}

/// A grant's receipt, with the key that verifies it.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Receipt JSON.
    pub json: String,
    /// JWS compact serialization.
    pub jws: String,
    /// The Ed25519 public key (base64url) that verifies it: the key its `kid` names, which
    /// after a rotation is not the current one. Empty when no key of the keyring has that id.
    pub public_key: String,
    /// The id of the key that signed it (empty when it names none this service knows).
    pub kid: String,
}

impl Service {
    /// The subject's current consents, signals and links, read fresh.
    pub async fn consents(&self, subject: &SubjectKey) -> Result<ConsentsView, ServiceError> {
        let rows = self.engine.rows(subject).await?;
        if rows.erased {
            return Err(ServiceError::Erased);
        }
        let as_of = OffsetDateTime::now_utc();
        let current = to_state(&rows);
        let current_ids: HashSet<&str> = current.records.iter().map(|r| r.id.as_str()).collect();
        let records = rows
            .records
            .into_iter()
            .filter(|r| current_ids.contains(r.consent.record_id.as_str()))
            .map(|record| CurrentRecord {
                overridden_by: consentgate_policy::overriding_record(
                    &current,
                    &record.to_policy_record(),
                )
                .map(|n| n.id.clone()),
                record,
            })
            .collect();
        let linked_device_ids = rows
            .links
            .into_iter()
            .filter_map(|k| match k {
                SubjectKey::Device(d) => Some(d),
                SubjectKey::Subject(_) => None,
            })
            .collect();
        Ok(ConsentsView {
            records,
            signals: latest_signals(rows.signals),
            linked_device_ids,
            restricted: rows.restricted,
            revision: rows.revision,
            conflicts: consentgate_policy::gpc_conflicts(self.policy(), &current, as_of),
            as_of,
        })
    }

    /// Up to `limit` records of the subject's history after revision `after`.
    pub async fn history(
        &self,
        subject: &SubjectKey,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, ServiceError> {
        let mut records = self
            .engine
            .history(subject, after, limit.saturating_add(1))
            .await?;
        let more = records.len() > limit as usize;
        records.truncate(limit as usize);
        let next_after = records.last().filter(|_| more).map(|last| last.revision);
        Ok(HistoryPage {
            records,
            next_after,
        })
    }

    /// A grant's receipt (only grants have receipts; erased subjects have none).
    pub async fn receipt(&self, record_id: &str) -> Result<Receipt, ServiceError> {
        let receipt = self
            .engine
            .store()
            .receipt(record_id)
            .await?
            .ok_or(ServiceError::ReceiptNotFound)?;
        // The key that signed it, which a rotation since has retired, not the current key.
        let signer = crate::receipt::signer(&receipt.jws, self.engine.keys().verifiers()).ok();
        Ok(Receipt {
            public_key: signer.map(|k| k.public_key_b64()).unwrap_or_default(),
            kid: signer.map(|k| k.kid.clone()).unwrap_or_default(),
            json: receipt.json,
            jws: receipt.jws,
        })
    }

    /// The public keys that verify checkpoints and receipts, by key id.
    pub fn signing_keys(&self) -> ledger::VerifyingKeys {
        self.engine.keys().verifiers().clone()
    }

    /// Walks the ledger from `start` (the genesis, or a point the auditor trusts) and checks
    /// every checkpoint after it.
    pub async fn verify_ledger(&self, start: &ledger::Start) -> Result<VerifyReport, ServiceError> {
        let report = ledger::verify_from(
            self.engine.store().as_ref(),
            self.engine.keys().verifiers(),
            start,
        )
        .await?;
        self.metrics.verified(report.broken.is_none());
        Ok(report)
    }

    /// Erases the subject (and its linked devices); the outcome and the subject's tombstone,
    /// which other services keep so that a restored consent database can be given it back.
    /// `actor` may be a delegate (the profile service for the privacy team): the ledger entry
    /// then names both.
    pub async fn erase(
        &self,
        actor: &Actor,
        idempotency: Idempotency,
        subject: SubjectKey,
    ) -> Result<(WriteOutcome, Vec<u8>), ServiceError> {
        let tombstone = self.engine.keys().tombstone(&subject);
        let outcome = self
            .record_as(actor, idempotency, Change::Erase { subject })
            .await?;
        Ok((outcome, tombstone))
    }

    /// `FindErased`: which of `subjects` are erased, each with its tombstone, in the order asked.
    pub async fn find_erased(
        &self,
        subjects: Vec<SubjectKey>,
    ) -> Result<Vec<(SubjectKey, HeldTombstone)>, ServiceError> {
        let keys = self.engine.keys();
        let tombstones: Vec<Vec<u8>> = subjects.iter().map(|s| keys.tombstone(s)).collect();
        let held: HashMap<Vec<u8>, HeldTombstone> = self
            .engine
            .store()
            .tombstones_held(&tombstones)
            .await?
            .into_iter()
            .map(|t| (t.tombstone.clone(), t))
            .collect();
        Ok(subjects
            .into_iter()
            .zip(tombstones)
            .filter_map(|(s, t)| held.get(&t).map(|h| (s, h.clone())))
            .collect())
    }

    /// `ListErasures`: a page of the tombstones held after `after`, and where the next page
    /// starts (`None`: this page is the last).
    pub async fn list_erasures(
        &self,
        after: &[u8],
        limit: u32,
    ) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), ServiceError> {
        let page = self.engine.store().tombstones_after(after, limit).await?;
        let next = (page.len() == limit as usize)
            .then(|| page.last().cloned())
            .flatten();
        Ok((page, next))
    }

    /// `ReapplyErasures`: gives a restored database back the tombstones it lacks; with `sweep`,
    /// then erases again every subject it holds whose tombstone it holds (one pass over its
    /// subjects, run once after the last page of tombstones). Each such erasure is an ordinary
    /// erase change: a ledger entry naming the subject by its pseudonym, whose key is shredded
    /// again, and a change event that makes every gate and replica drop what it cached. A
    /// second run finds every tombstone present and nobody to erase, and changes nothing.
    pub async fn reapply_erasures(
        &self,
        actor: &Actor,
        tombstones: Vec<Vec<u8>>,
        sweep: bool,
    ) -> Result<Reapplied, ServiceError> {
        let store = self.engine.store();
        let restored = store.restore_tombstones(&tombstones).await?;
        if restored > 0 {
            self.engine.forget_all();
        }
        let mut done = Reapplied {
            already_present: tombstones.len() as u64 - restored.min(tombstones.len() as u64),
            restored,
            ..Reapplied::default()
        };
        if sweep {
            for subject in store.erased_but_held().await? {
                let tombstone = self.engine.keys().tombstone(&subject);
                // Keyed by the tombstone, so a retry after a failure is answered once; a key
                // erased meanwhile as a person's linked device is found erased and skipped.
                let idempotency = Idempotency {
                    key: format!("reapply-erasure-{}", hex::encode(&tombstone)),
                    fingerprint: Sha256::digest(&tombstone).into(),
                };
                let outcome = self
                    .record_as(actor, idempotency, Change::Erase { subject })
                    .await?;
                if !outcome.replayed {
                    // The erased key's link group: itself and, for a person, its devices.
                    done.subjects_erased += outcome.affected.len().max(1) as u64;
                    done.records_deleted += outcome.records_deleted;
                    done.revision = outcome.revision;
                }
            }
        }
        if done.restored > 0 || done.subjects_erased > 0 {
            tracing::warn!(
                restored = done.restored,
                erased_again = done.subjects_erased,
                "erasures re-applied to a restored consent database"
            );
        }
        Ok(done)
    }

    /// Restricts processing (or lifts the restriction) and returns the revision.
    pub async fn restrict(
        &self,
        caller: &CallerIdentity,
        idempotency: Idempotency,
        subject: SubjectKey,
        restricted: bool,
    ) -> Result<u64, ServiceError> {
        let change = Change::Restrict {
            subject,
            restricted,
        };
        Ok(self.record(caller, idempotency, change).await?.revision)
    }
}

/// Folds signals to what is in force: for GPC and age band the latest value wins; guardians
/// accumulate (in the order they were recorded).
fn latest_signals(signals: Vec<StoredSignal>) -> Vec<StoredSignal> {
    let mut latest: Vec<StoredSignal> = Vec::with_capacity(signals.len());
    for s in signals {
        if s.kind == "gpc" || s.kind == "age_band" {
            latest.retain(|x| x.kind != s.kind);
        }
        latest.push(s);
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use consentgate_policy::CollectionMethod;

    fn signal(kind: &str, value: &str, revision: u64) -> StoredSignal {
        StoredSignal {
            kind: kind.to_owned(),
            value: value.to_owned(),
            revision,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            ordered_at: OffsetDateTime::UNIX_EPOCH,
            collection_method: CollectionMethod::Api,
        }
    }

    #[test]
    fn the_latest_gpc_and_age_band_win_and_guardians_accumulate() {
        let folded = latest_signals(vec![
            signal("gpc", "1", 1),
            signal("guardian", "g1", 2),
            signal("age_band", "13_15", 3),
            signal("gpc", "0", 4),
            signal("guardian", "g2", 5),
            signal("age_band", "adult", 6),
        ]);
        let revisions: Vec<u64> = folded.iter().map(|s| s.revision).collect();
        assert_eq!(revisions, [2, 4, 5, 6]);
    }
}
