//! The parts of a gated read (attributes, events, answers): each takes the gate's decision and
//! returns what it allows, with obligations applied and a redaction for what it withholds.
//! GetProfile, ListEvents and GetAnswers read one part each; ReadSubject reads several under one
//! decision and records them as one access-log entry.

use crate::grpc::store_status;
use crate::model::{Answer, AnswerKind, Attribute, Event, Holding, Table};
use crate::store::{EventQuery, ProfileStore};
use consentgate_gate::Decision;
use consentgate_proto::consent::v1::Verdict;
use consentgate_proto::profile::v1 as pb;
use std::collections::BTreeMap;
use tonic::Status;

/// What one part of a read returns.
pub(crate) struct Part<T> {
    /// The items the decision allows.
    pub items: Vec<T>,
    /// What the part holds in its categories but the decision withheld.
    pub redactions: Vec<pb::Redaction>,
    /// Obligations applied, e.g. `exclude_sources=third_party`.
    pub applied: Vec<String>,
}

/// The attributes in `wanted` categories that the decision allows, minus sources its obligations
/// exclude.
pub(crate) async fn attributes(
    store: &dyn ProfileStore,
    decision: &Decision,
    wanted: &[String],
) -> Result<Part<Attribute>, Status> {
    let wants = |category: &str| wanted.iter().any(|w| w == category);
    let (mut items, holdings) = store.profile_view(decision).await.map_err(store_status)?;
    items.retain(|a| wants(&a.category));
    let holdings: Vec<Holding> = holdings
        .into_iter()
        .filter(|h| wants(&h.category))
        .collect();
    let mut redactions = redactions(decision, &holdings);
    let excluded = decision.excluded_sources();
    let mut applied = Vec::new();
    if !excluded.is_empty() {
        applied.push(format!("exclude_sources={}", excluded.join(",")));
        let mut dropped: BTreeMap<String, u32> = BTreeMap::new();
        items.retain(|a| {
            let keep = !excluded.contains(&a.source.as_str());
            if !keep {
                *dropped.entry(a.category.clone()).or_default() += 1;
            }
            keep
        });
        for (category, items) in dropped {
            redactions.push(pb::Redaction {
                data_category: category,
                reason: "THIRD_PARTY_SOURCE_EXCLUDED".into(),
                detail: format!(
                    "the purpose's obligations exclude data from these sources: {}",
                    excluded.join(", ")
                ),
                items,
            });
        }
    }
    Ok(Part {
        items,
        redactions,
        applied,
    })
}

/// The events `query` selects that the decision allows, newest first; redactions cover the
/// `wanted` categories (those of the kinds asked for).
pub(crate) async fn events(
    store: &dyn ProfileStore,
    decision: &Decision,
    query: &EventQuery,
    wanted: &[String],
) -> Result<Part<Event>, Status> {
    let holdings = held_where_denied(store, decision, Table::Events, wanted).await?;
    let items = store.events(decision, query).await.map_err(store_status)?;
    Ok(Part {
        items,
        redactions: redactions(decision, &holdings),
        applied: Vec::new(),
    })
}

/// The answers of `kinds` (empty: all) that the decision allows, oldest first; redactions cover
/// the `wanted` categories (those of the kinds asked for).
pub(crate) async fn answers(
    store: &dyn ProfileStore,
    decision: &Decision,
    kinds: &[AnswerKind],
    wanted: &[String],
) -> Result<Part<Answer>, Status> {
    let holdings = held_where_denied(store, decision, Table::Answers, wanted).await?;
    let mut items = store.answers(decision).await.map_err(store_status)?;
    if !kinds.is_empty() {
        items.retain(|a| kinds.contains(&a.kind));
    }
    Ok(Part {
        items,
        redactions: redactions(decision, &holdings),
        applied: Vec::new(),
    })
}

/// The distinct categories of what a read returns, sorted: what its access-log entry names.
pub(crate) fn returned_categories<'a>(categories: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = categories.map(str::to_owned).collect();
    out.sort();
    out.dedup();
    out
}

/// Redactions of several parts, one per category and reason (items added up).
pub(crate) fn merge_redactions(parts: Vec<pb::Redaction>) -> Vec<pb::Redaction> {
    let mut by: BTreeMap<(String, String), pb::Redaction> = BTreeMap::new();
    for r in parts {
        match by.entry((r.data_category.clone(), r.reason.clone())) {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let merged = o.get_mut();
                merged.items = merged.items.saturating_add(r.items);
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(r);
            }
        }
    }
    by.into_values().collect()
}

/// What the subject holds of `table` in `wanted` categories, for redactions, which only denied
/// categories produce: a decision that allows everything it was asked about needs no count query.
async fn held_where_denied(
    store: &dyn ProfileStore,
    decision: &Decision,
    table: Table,
    wanted: &[String],
) -> Result<Vec<Holding>, Status> {
    if decision.verdict() == Verdict::Allow {
        return Ok(Vec::new());
    }
    let mut holdings = store
        .holdings(decision, table)
        .await
        .map_err(store_status)?;
    holdings.retain(|h| wanted.contains(&h.category));
    Ok(holdings)
}

/// Redactions from holdings: categories held but denied, with the decision's reasons.
fn redactions(decision: &Decision, holdings: &[Holding]) -> Vec<pb::Redaction> {
    let mut by: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
    for h in holdings {
        let Some(verdict) = decision.category(&h.category) else {
            continue;
        };
        if verdict.allowed {
            continue;
        }
        let entry = by
            .entry((h.category.clone(), verdict.reason.clone()))
            .or_insert_with(|| (verdict.detail.clone(), 0));
        entry.1 += h.items;
    }
    by.into_iter()
        .map(|((category, reason), (detail, items))| pb::Redaction {
            data_category: category,
            reason,
            detail,
            items: u32::try_from(items).unwrap_or(u32::MAX),
        })
        .collect()
}
