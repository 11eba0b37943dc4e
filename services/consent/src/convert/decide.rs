//! Check, BatchCheck and Explain: their validation and the decision's wire form. Check is the
//! hot path: validation clones only what the query owns, and the answer is built once.

use super::{common, finish, subject, timestamp};
use crate::engine::CheckQuery;
use crate::model::SubjectKey;
use crate::service::{Ask, Explained};
use consentgate_policy::{Decision, Personalization, Policy, Reason, Verdict};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::limits;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::errors::{Violations, echo};
use tonic::Status;

/// Most checks one BatchCheck may carry.
pub const MAX_BATCH: usize = limits::MAX_BATCH_CHECKS;

/// Validates a Check.
pub fn check(
    policy: &Policy,
    caller: &CallerIdentity,
    c: &pb::CheckRequest,
) -> Result<Ask, Status> {
    let mut v = Violations::default();
    let ask = check_query(policy, &mut v, "", caller, c);
    finish(v, ask)
}

/// Validates a BatchCheck: every check, each violation named by its index.
pub fn batch_check(
    policy: &Policy,
    caller: &CallerIdentity,
    r: &pb::BatchCheckRequest,
) -> Result<Vec<Ask>, Status> {
    let mut v = Violations::default();
    if r.checks.is_empty() {
        v.add("checks", "required: at least one check");
    } else if r.checks.len() > MAX_BATCH {
        v.add(
            "checks",
            format!(
                "at most {MAX_BATCH} checks per call (got {})",
                r.checks.len()
            ),
        );
        return finish(v, None);
    }
    let categories: usize = r.checks.iter().map(|c| c.data_categories.len()).sum();
    if !v.check_count("checks", categories, limits::MAX_BATCH_CATEGORIES) {
        return finish(v, None);
    }
    let mut asks = Vec::with_capacity(r.checks.len());
    for (i, c) in r.checks.iter().enumerate() {
        if let Some(ask) = check_query(policy, &mut v, &format!("checks[{i}]."), caller, c) {
            asks.push(ask);
        }
    }
    v.finish()?;
    Ok(asks)
}

/// Validates an Explain: the caller to explain for, and the check.
pub fn explain(
    policy: &Policy,
    caller: &CallerIdentity,
    r: &pb::ExplainRequest,
) -> Result<CheckQuery, Status> {
    let mut v = Violations::default();
    if r.as_caller.is_empty() {
        v.add(
            "as_caller",
            "required: the caller whose decision to explain",
        );
    } else if v.check_len("as_caller", &r.as_caller, limits::MAX_POLICY_KEY_BYTES)
        && !policy.callers.contains_key(&r.as_caller)
    {
        v.add(
            "as_caller",
            format!("unknown caller {}", echo(&r.as_caller)),
        );
    }
    let ask = match &r.check {
        None => {
            v.add("check", "required");
            None
        }
        Some(c) => check_query(policy, &mut v, "check.", caller, c),
    };
    Ok(finish(v, ask)?.query)
}

/// Validates one Check (fields prefixed with `prefix`) into the query and the caller the
/// caller-purpose rule applies to.
fn check_query(
    policy: &Policy,
    v: &mut Violations,
    prefix: &str,
    caller: &CallerIdentity,
    c: &pb::CheckRequest,
) -> Option<Ask> {
    let mut local = Violations::default();
    if !within_bounds(&mut local, c) {
        v.extend_prefixed(prefix, local);
        return None;
    }
    let subject = subject(&mut local, "subject", c.subject.as_ref());
    let at_least_as_fresh = if c.at_least_as_fresh.is_empty() {
        0
    } else {
        c.at_least_as_fresh.parse::<u64>().unwrap_or_else(|_| {
            local.add(
                "at_least_as_fresh",
                "malformed consistency token: pass the `revision` a write returned",
            );
            0
        })
    };
    // Naming oneself is the same as naming nobody: one's own purposes apply.
    let delegated = !c.on_behalf_of.is_empty() && c.on_behalf_of != caller.name;
    let decider = if !delegated {
        caller.name.clone()
    } else if !policy.callers.contains_key(&c.on_behalf_of) {
        local.add(
            "on_behalf_of",
            format!("unknown caller {}", echo(&c.on_behalf_of)),
        );
        String::new()
    } else {
        c.on_behalf_of.clone()
    };
    let context = c.context.clone().unwrap_or_default();
    let query = CheckQuery {
        // Validated above; a placeholder lets the policy checks below still name their fields.
        subject: subject
            .clone()
            .unwrap_or(SubjectKey::Subject(String::new())),
        purpose: c.purpose.clone(),
        categories: c.data_categories.clone(),
        channel: c.channel.clone(),
        jurisdiction: context.jurisdiction,
        gpc: context.gpc,
        at_least_as_fresh,
        explain: c.include_explanation,
    };
    if c.purpose.is_empty() {
        local.add("purpose", "required");
    } else if let Err(e) = consentgate_policy::validate(policy, &query.input("")) {
        local.add(e.field(), e.describe(echo));
    }
    let ok = local.is_empty() && subject.is_some();
    v.extend_prefixed(prefix, local);
    ok.then_some(Ask {
        query,
        decider,
        delegated,
    })
}

/// The bounds of a Check (see `consentgate_proto::limits`), checked before anything is cloned
/// or looked up: true when every field is within them.
fn within_bounds(v: &mut Violations, c: &pb::CheckRequest) -> bool {
    let key = limits::MAX_POLICY_KEY_BYTES;
    let jurisdiction = c.context.as_ref().map_or("", |x| x.jurisdiction.as_str());
    let mut fits = v.check_len("purpose", &c.purpose, key)
        & v.check_len("channel", &c.channel, key)
        & v.check_len("context.jurisdiction", jurisdiction, key)
        & v.check_len("on_behalf_of", &c.on_behalf_of, key)
        & v.check_len(
            "at_least_as_fresh",
            &c.at_least_as_fresh,
            limits::MAX_TOKEN_BYTES,
        );
    if v.check_count(
        "data_categories",
        c.data_categories.len(),
        limits::MAX_CATEGORIES,
    ) {
        for (i, category) in c.data_categories.iter().enumerate() {
            fits &= v.check_len(&format!("data_categories[{i}]"), category, key);
        }
    } else {
        fits = false;
    }
    fits
}

/// Converts a decision to its wire form; the trace only when asked for.
pub fn decision_pb(d: &Decision, include_explanation: bool) -> pb::CheckResponse {
    pb::CheckResponse {
        verdict: match d.verdict {
            Verdict::Allow => pb::Verdict::Allow,
            Verdict::Partial => pb::Verdict::Partial,
            Verdict::Deny => pb::Verdict::Deny,
        } as i32,
        reason: d.reason.map(Reason::code).unwrap_or_default().to_owned(),
        categories: d
            .categories
            .iter()
            .map(|c| pb::CategoryDecision {
                data_category: c.category.clone().unwrap_or_default(),
                allowed: c.denied.is_none(),
                reason: c.denied.map(Reason::code).unwrap_or_default().to_owned(),
                detail: c.detail.clone(),
            })
            .collect(),
        personalization_level: match d.personalization {
            Personalization::Anonymous => common::PersonalizationLevel::Anonymous,
            Personalization::Contextual => common::PersonalizationLevel::Contextual,
            Personalization::Segment => common::PersonalizationLevel::Segment,
            Personalization::Limited => common::PersonalizationLevel::Limited,
            Personalization::Profiled => common::PersonalizationLevel::Profiled,
        } as i32,
        obligations: d
            .obligations
            .iter()
            .map(|o| pb::Obligation {
                kind: o.kind.to_owned(),
                values: o.values.clone(),
            })
            .collect(),
        revision: d.revision,
        valid_until: Some(timestamp(d.valid_until)),
        conflicts: d.conflicts.clone(),
        explanation: d
            .explanation
            .iter()
            .filter(|_| include_explanation)
            .map(|s| pb::ExplanationStep {
                rule: s.rule.to_owned(),
                outcome: s.outcome.clone(),
                detail: s.detail.clone(),
                record_ids: s.record_ids.clone(),
            })
            .collect(),
    }
}

/// Explain's answer: the decision with its trace, and the narrative.
pub fn explain_response(explained: Explained) -> pb::ExplainResponse {
    pb::ExplainResponse {
        decision: Some(decision_pb(&explained.decision, true)),
        narrative: explained.narrative,
    }
}
