//! Deciding: Check, BatchCheck and Explain, with Explain's plain-language narrative. Check is
//! the hot path: nothing here allocates or awaits beyond what the engine does.

use super::{Service, ServiceError};
use crate::engine::CheckQuery;
use consentgate_policy::{Decision, Policy};
use consentgate_runtime::{CallerIdentity, traces};
use opentelemetry::KeyValue;

/// One decision request: the query and whose caller-purpose rule applies.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The question.
    pub query: CheckQuery,
    /// The caller the caller-purpose rule applies to: the asker, or whom it asks on behalf of.
    pub decider: String,
    /// Whether the asker named another caller than itself (`on_behalf_of`).
    pub delegated: bool,
}

/// An explained decision: the decision with its trace, and the trace told as sentences.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The decision, with its explanation steps.
    pub decision: Decision,
    /// One sentence per step, framed by the policy version and the verdict.
    pub narrative: Vec<String>,
}

/// Records on the current span what an operator debugs a decision by: purpose, categories,
/// verdict, reason codes, level and revision. Never whom it is about.
fn annotate(query: &CheckQuery, decision: &Decision) {
    traces::annotate(|| {
        let reasons: Vec<&str> = decision
            .categories
            .iter()
            .filter_map(|c| c.denied.map(|r| r.code()))
            .collect();
        [
            KeyValue::new("consentgate.purpose", query.purpose.clone()),
            KeyValue::new("consentgate.categories", query.categories.join(",")),
            KeyValue::new("consentgate.verdict", format!("{:?}", decision.verdict)),
            KeyValue::new(
                "consentgate.reason",
                decision.reason.map_or("", |r| r.code()),
            ),
            KeyValue::new("consentgate.reasons", reasons.join(",")),
            KeyValue::new(
                "consentgate.personalization_level",
                format!("{:?}", decision.personalization),
            ),
            KeyValue::new(
                "consentgate.revision",
                i64::try_from(decision.revision).unwrap_or(i64::MAX),
            ),
        ]
    });
}

/// A caller may decide on behalf of another only as the policy's `delegates` allow it for
/// `rpc` (`consent.Check` or `consent.BatchCheck`); the caller-purpose rule then applies to the
/// other caller. (Its own `enforcer` role, which Check requires, the auth layer checked.)
fn may_delegate(
    policy: &Policy,
    caller: &CallerIdentity,
    ask: &Ask,
    rpc: &'static str,
) -> Result<(), ServiceError> {
    if ask.delegated && !policy.may_delegate(&caller.name, rpc, &ask.decider) {
        return Err(ServiceError::DelegationNotPermitted {
            delegate: caller.name.clone(),
            principal: ask.decider.clone(),
            rpc,
        });
    }
    Ok(())
}

impl Service {
    /// Decides one check (recording a request's GPC flag first, see [`crate::engine::Engine::check`]).
    pub async fn check(
        &self,
        caller: &CallerIdentity,
        ask: &Ask,
    ) -> Result<Decision, ServiceError> {
        may_delegate(self.policy(), caller, ask, "consent.Check")?;
        let decision = traces::in_span(
            "consentgate.consent.decide",
            || [],
            self.engine.check(&ask.decider, &ask.query),
        )
        .await?;
        self.metrics.decided(&ask.query.purpose, &decision);
        annotate(&ask.query, &decision);
        if ask.delegated {
            tracing::debug!(caller = %caller.name, on_behalf_of = %ask.decider, purpose = %ask.query.purpose, "delegated check");
        }
        Ok(decision)
    }

    /// Decides every check in order and hands each decision to `answer` as it is made (so a
    /// batch never holds its decisions and their answers at once). Delegation is checked for
    /// the whole batch before anything is decided.
    pub async fn batch_check<T>(
        &self,
        caller: &CallerIdentity,
        asks: &[Ask],
        mut answer: impl FnMut(&Ask, &Decision) -> T,
    ) -> Result<Vec<T>, ServiceError> {
        for ask in asks {
            may_delegate(self.policy(), caller, ask, "consent.BatchCheck")?;
        }
        let mut results = Vec::with_capacity(asks.len());
        for ask in asks {
            let decision = self.engine.check(&ask.decider, &ask.query).await?;
            self.metrics.decided(&ask.query.purpose, &decision);
            results.push(answer(ask, &decision));
        }
        Ok(results)
    }

    /// Explains the decision `as_caller` would get, trace included, and tells it as sentences.
    /// Writes nothing (see [`crate::engine::Engine::explain`]).
    pub async fn explain(
        &self,
        as_caller: &str,
        mut query: CheckQuery,
    ) -> Result<Explained, ServiceError> {
        query.explain = true;
        let decision = self.engine.explain(as_caller, &query).await?;
        let narrative = self.narrative(as_caller, &query, &decision);
        Ok(Explained {
            decision,
            narrative,
        })
    }

    fn narrative(&self, as_caller: &str, query: &CheckQuery, decision: &Decision) -> Vec<String> {
        let mut narrative = vec![format!(
            "Policy {} evaluated {:?} for caller {:?} at revision {}.",
            self.policy().version,
            query.purpose,
            as_caller,
            decision.revision
        )];
        for step in &decision.explanation {
            let records = if step.record_ids.is_empty() {
                String::new()
            } else {
                format!(" (records: {})", step.record_ids.join(", "))
            };
            narrative.push(format!(
                "{}: {} — {}{}",
                step.rule, step.outcome, step.detail, records
            ));
        }
        for conflict in &decision.conflicts {
            narrative.push(format!("Conflict resolved: the person {conflict}."));
        }
        narrative.push(format!(
            "Verdict: {:?}; personalization level: {:?}.",
            decision.verdict, decision.personalization
        ));
        narrative
    }
}
