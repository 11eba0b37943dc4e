//! Gated collection, written once for SetAttributes, SubmitAnswers and RecordEvents: ask the
//! gate once per purpose about the categories the items fall in, store only the items whose
//! category it allows (one transaction), and answer a verdict per item. An item whose category
//! is not allowed is rejected with the decision's reason and nothing of it is stored
//! (docs/architecture.md §4).

use super::{Service, ServiceError};
use crate::model::{Answer, Attribute, Event, now_micros};
use crate::store::{ProfileStore, StoreError};
use consentgate_gate::Clearance;
use consentgate_proto::common::v1::{RequestContext, SubjectRef};
use consentgate_runtime::CallerIdentity;
use std::collections::BTreeMap;
use std::future::Future;

/// Something a person shares or the brand observes, collected under a purpose into one data
/// category: what the gate is asked about, and how the accepted ones are stored.
pub trait Collectable: Sized + Send + Sync {
    /// The purpose it is collected under.
    fn purpose(&self) -> &str;
    /// Its data category.
    fn category(&self) -> &str;
    /// Gives an accepted item what the service assigns at collection: its id and time.
    fn stamp(&mut self, now: i64);
    /// Stores the accepted items, each with the decision that allowed it, in one transaction.
    fn put<'a>(
        store: &'a dyn ProfileStore,
        accepted: Vec<(&'a Clearance, Self)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;
}

/// A collection call as asked: whose data, the request's context (GPC, jurisdiction) and the
/// items, each already valid.
#[derive(Debug, Clone)]
pub struct CollectAsk<T> {
    /// Whom the items are about.
    pub subject: SubjectRef,
    /// The request's context, passed to the consent check.
    pub context: Option<RequestContext>,
    /// The items, in the caller's order (verdicts answer in the same order).
    pub items: Vec<T>,
}

/// Why an item was not collected: the decision's reason code for its category and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code, e.g. `NO_CONSENT`.
    pub reason: String,
    /// What it means, in words.
    pub detail: String,
}

/// One item's outcome: stored, or refused with its reason.
pub type ItemVerdict = Result<(), Refusal>;

impl Service {
    /// Collects what the decisions allow and answers a verdict per item, in order.
    pub async fn collect<T: Collectable>(
        &self,
        caller: &CallerIdentity,
        ask: CollectAsk<T>,
    ) -> Result<Vec<ItemVerdict>, ServiceError> {
        // One decision per purpose, covering the categories collected under it.
        let mut by_purpose: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in &ask.items {
            let categories = by_purpose.entry(item.purpose().to_owned()).or_default();
            if !categories.iter().any(|c| c == item.category()) {
                categories.push(item.category().to_owned());
            }
        }
        let mut decisions: BTreeMap<String, Clearance> = BTreeMap::new();
        for (purpose, categories) in by_purpose {
            let decision = self
                .decide(
                    caller,
                    ask.subject.clone(),
                    &purpose,
                    categories,
                    ask.context.clone(),
                    "",
                )
                .await?;
            decisions.insert(purpose, decision);
        }
        let now = now_micros();
        let mut verdicts = Vec::with_capacity(ask.items.len());
        let mut accepted = Vec::new();
        for mut item in ask.items {
            let decision = &decisions[item.purpose()];
            let verdict = verdict(decision, item.category());
            if let Err(refusal) = &verdict {
                self.metrics.refused(&refusal.reason);
            }
            if verdict.is_ok() {
                item.stamp(now);
                accepted.push((decision, item));
            }
            verdicts.push(verdict);
        }
        if !accepted.is_empty() {
            T::put(self.store.as_ref(), accepted).await?;
        }
        Ok(verdicts)
    }
}

/// Whether the decision lets `category` be collected; the reason when not.
fn verdict(decision: &Clearance, category: &str) -> ItemVerdict {
    match decision.category(category) {
        Some(c) if c.allowed => Ok(()),
        Some(c) => Err(Refusal {
            reason: c.reason.clone(),
            detail: c.detail.clone(),
        }),
        None => Err(Refusal {
            reason: decision.reason().to_owned(),
            detail: "the consent service did not decide this category".to_owned(),
        }),
    }
}

/// The accepted items grouped by the decision that allowed them (in first-seen order), for the
/// stores that write one decision's items at a time. A call's answers or events share its
/// purpose, so this is one group; grouping anyway means no item is ever stored under another
/// item's decision.
fn by_decision<T>(accepted: Vec<(&Clearance, T)>) -> Vec<(&Clearance, Vec<T>)> {
    let mut groups: Vec<(&Clearance, Vec<T>)> = Vec::new();
    for (decision, item) in accepted {
        match groups.iter_mut().find(|(d, _)| std::ptr::eq(*d, decision)) {
            Some((_, items)) => items.push(item),
            None => groups.push((decision, vec![item])),
        }
    }
    groups
}

impl Collectable for Attribute {
    fn purpose(&self) -> &str {
        &self.collection.purpose
    }

    fn category(&self) -> &str {
        &self.category
    }

    /// The store sets an attribute's times (an update keeps its first collection time).
    fn stamp(&mut self, _now: i64) {}

    async fn put(
        store: &dyn ProfileStore,
        accepted: Vec<(&Clearance, Self)>,
    ) -> Result<(), StoreError> {
        store.put_attributes(&accepted).await
    }
}

impl Collectable for Answer {
    fn purpose(&self) -> &str {
        &self.collection.purpose
    }

    fn category(&self) -> &str {
        self.kind.category()
    }

    fn stamp(&mut self, now: i64) {
        self.answer_id = uuid::Uuid::now_v7().to_string();
        self.collected_at = now;
    }

    async fn put(
        store: &dyn ProfileStore,
        accepted: Vec<(&Clearance, Self)>,
    ) -> Result<(), StoreError> {
        for (decision, answers) in by_decision(accepted) {
            store.put_answers(decision, &answers).await?;
        }
        Ok(())
    }
}

impl Collectable for Event {
    fn purpose(&self) -> &str {
        &self.collection.purpose
    }

    fn category(&self) -> &str {
        self.kind.category()
    }

    /// An event keeps the time it occurred (the caller's, or the call's when unset).
    fn stamp(&mut self, _now: i64) {
        self.event_id = uuid::Uuid::now_v7().to_string();
    }

    async fn put(
        store: &dyn ProfileStore,
        accepted: Vec<(&Clearance, Self)>,
    ) -> Result<(), StoreError> {
        for (decision, events) in by_decision(accepted) {
            store.put_events(decision, &events).await?;
        }
        Ok(())
    }
}
