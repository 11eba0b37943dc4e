//! The decision function: docs/architecture.md §3 "Decision rules", evaluated in order, with reasons and a trace.

use crate::model::{Channel, Jurisdiction, LegalBasis, Personalization, Policy, Purpose};
use crate::pattern::is_ancestor_or_self;
use crate::state::{ConsentType, Order, Record, RecordState, SubjectState};
use std::fmt;
use time::{Duration, OffsetDateTime};

/// Why something was denied. Stable, machine-readable codes (the `reason` strings on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The caller may not ask for this purpose.
    CallerNotPermitted,
    /// The purpose does not need this category (data minimization).
    NotNeededForPurpose,
    /// The subject was erased.
    SubjectErased,
    /// Processing is restricted (GDPR Art. 18) to essential purposes.
    ProcessingRestricted,
    /// No consent recorded (or not on this channel): consent is never assumed.
    NoConsent,
    /// The person refused.
    Refused,
    /// The person withdrew.
    Withdrawn,
    /// The consent's expiry has passed.
    Expired,
    /// The consent was given under an older major notice version.
    NoticeOutdated,
    /// A Global Privacy Control signal opts out of this purpose.
    GpcOptOut,
    /// The subject is a minor and the consent is not backed by a recorded guardian.
    MinorRequiresGuardian,
    /// A sensitive category needs an explicit consent naming it.
    SensitiveRequiresExplicitConsent,
}

/// Every reason, for parsing wire codes.
const ALL_REASONS: [Reason; 12] = [
    Reason::CallerNotPermitted,
    Reason::NotNeededForPurpose,
    Reason::SubjectErased,
    Reason::ProcessingRestricted,
    Reason::NoConsent,
    Reason::Refused,
    Reason::Withdrawn,
    Reason::Expired,
    Reason::NoticeOutdated,
    Reason::GpcOptOut,
    Reason::MinorRequiresGuardian,
    Reason::SensitiveRequiresExplicitConsent,
];

impl Reason {
    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::CallerNotPermitted => "CALLER_NOT_PERMITTED",
            Reason::NotNeededForPurpose => "NOT_NEEDED_FOR_PURPOSE",
            Reason::SubjectErased => "SUBJECT_ERASED",
            Reason::ProcessingRestricted => "PROCESSING_RESTRICTED",
            Reason::NoConsent => "NO_CONSENT",
            Reason::Refused => "REFUSED",
            Reason::Withdrawn => "WITHDRAWN",
            Reason::Expired => "EXPIRED",
            Reason::NoticeOutdated => "NOTICE_OUTDATED",
            Reason::GpcOptOut => "GPC_OPT_OUT",
            Reason::MinorRequiresGuardian => "MINOR_REQUIRES_GUARDIAN",
            Reason::SensitiveRequiresExplicitConsent => "SENSITIVE_REQUIRES_EXPLICIT_CONSENT",
        }
    }
}

impl Reason {
    /// Where the reason stands in rule order (docs/architecture.md §3), most significant first: the reason a
    /// person is shown when several categories are denied for different reasons is the one with
    /// the lowest rank. Minimization comes last: a category the purpose never needed explains
    /// nothing about the ones it does need, so `NOT_NEEDED_FOR_PURPOSE` is the top-level reason
    /// only when nothing else denied. Within the legal-basis rule, what the person said (withdrew,
    /// refused) ranks before what lapsed or was never said.
    pub fn significance(self) -> u8 {
        match self {
            Reason::CallerNotPermitted => 0,
            Reason::SubjectErased => 1,
            Reason::ProcessingRestricted => 2,
            Reason::Withdrawn => 3,
            Reason::Refused => 4,
            Reason::Expired => 5,
            Reason::NoticeOutdated => 6,
            Reason::NoConsent => 7,
            Reason::GpcOptOut => 8,
            Reason::MinorRequiresGuardian => 9,
            Reason::SensitiveRequiresExplicitConsent => 10,
            Reason::NotNeededForPurpose => 11,
        }
    }

    /// Parses a wire code (`WITHDRAWN`…); None for a code this version does not know.
    pub fn from_code(code: &str) -> Option<Reason> {
        ALL_REASONS.into_iter().find(|r| r.code() == code)
    }

    /// The most significant of `reasons` in rule order (see [`Reason::significance`]).
    pub fn most_significant(reasons: impl IntoIterator<Item = Reason>) -> Option<Reason> {
        reasons.into_iter().min_by_key(|r| r.significance())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A bad request: a bug in the caller, answered with INVALID_ARGUMENT, never a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionError {
    /// The purpose is not in the policy.
    UnknownPurpose(String),
    /// A data category is not in the policy.
    UnknownCategory {
        /// Index in the request's list.
        index: usize,
        /// The unknown key.
        category: String,
    },
    /// The jurisdiction is not in the policy.
    UnknownJurisdiction(String),
    /// The channel is not one this model knows.
    UnknownChannel(String),
    /// The channel is missing or not one of the purpose's channels (the text names only values
    /// the policy knows, never the request's).
    BadChannel(String),
}

/// The whole value quoted: for tests and logs of this crate; the gRPC layer quotes a prefix
/// through [`DecisionError::describe`].
impl fmt::Display for DecisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|v| format!("{v:?}")))
    }
}

impl std::error::Error for DecisionError {}

impl DecisionError {
    /// The request field the error is about (relative to a Check request).
    pub fn field(&self) -> String {
        match self {
            DecisionError::UnknownPurpose(_) => "purpose".into(),
            DecisionError::UnknownCategory { index, .. } => format!("data_categories[{index}]"),
            DecisionError::UnknownJurisdiction(_) => "context.jurisdiction".into(),
            DecisionError::UnknownChannel(_) | DecisionError::BadChannel(_) => "channel".into(),
        }
    }

    /// What is wrong, quoting the request's value through `echo`: the gRPC layer passes one that
    /// quotes a short prefix, so a hostile value never swells the answer (this crate does no I/O
    /// and leaves that bound to it).
    pub fn describe(&self, echo: impl Fn(&str) -> String) -> String {
        match self {
            DecisionError::UnknownPurpose(p) => format!("unknown purpose {}", echo(p)),
            DecisionError::UnknownCategory { category, .. } => {
                format!("unknown data category {}", echo(category))
            }
            DecisionError::UnknownJurisdiction(j) => format!("unknown jurisdiction {}", echo(j)),
            DecisionError::UnknownChannel(c) => format!(
                "unknown channel {} (expected email, sms, push or in_app)",
                echo(c)
            ),
            DecisionError::BadChannel(why) => why.clone(),
        }
    }
}

/// What is being asked, and by whom.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    /// The caller the caller-purpose rule applies to (the original caller under delegation).
    pub caller: &'a str,
    /// The purpose key.
    pub purpose: &'a str,
    /// Requested data categories; empty asks about the purpose alone.
    pub categories: &'a [String],
    /// Channel, for channel-scoped purposes.
    pub channel: Option<&'a str>,
    /// Jurisdiction code; empty for the policy default.
    pub jurisdiction: &'a str,
    /// GPC flag carried by the originating request.
    pub gpc: bool,
    /// The time of the decision.
    pub now: OffsetDateTime,
    /// Build the rule-by-rule explanation and the detail of allowed categories. Off on the hot
    /// path (`Check` without `include_explanation`): formatting the trace costs more than the
    /// decision itself, and denials carry their detail either way.
    pub explain: bool,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything asked for is allowed.
    Allow,
    /// Some categories allowed, some denied.
    Partial,
    /// Nothing is allowed.
    Deny,
}

/// The verdict for one requested category (or for the purpose alone when no category was asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryVerdict {
    /// The category (None: the purpose-level question).
    pub category: Option<String>,
    /// None when allowed.
    pub denied: Option<Reason>,
    /// Human-readable detail.
    pub detail: String,
}

/// Something the enforcer must do when it acts on an allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligation {
    /// The kind, e.g. `exclude_sources`.
    pub kind: &'static str,
    /// Its values, e.g. `third_party`.
    pub values: Vec<String>,
}

/// One step of the trace: which rule decided what, from which records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The rule's name, e.g. `legal_basis`.
    pub rule: &'static str,
    /// What it concluded, e.g. `allow` or a reason code.
    pub outcome: String,
    /// Human-readable detail.
    pub detail: String,
    /// Records that decided it.
    pub record_ids: Vec<String>,
}

/// A decision: verdicts, the personalization level, obligations, and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The overall verdict.
    pub verdict: Verdict,
    /// When nothing is allowed: the most significant denial in rule order
    /// ([`Reason::most_significant`]), so that a category the purpose does not need never hides
    /// the withdrawal that decided the ones it does.
    pub reason: Option<Reason>,
    /// One verdict per requested category (or one purpose-level verdict).
    pub categories: Vec<CategoryVerdict>,
    /// The highest personalization rung the subject's consents allow this caller.
    pub personalization: Personalization,
    /// Duties that travel with an allow.
    pub obligations: Vec<Obligation>,
    /// The subject state's revision.
    pub revision: u64,
    /// How long a cache may keep this decision: the earliest of the policy's TTL and the expiry
    /// of every record behind any part of it (each category's verdict and the personalization
    /// level), so that no cache serves an allow or a level past a consent's expiry.
    pub valid_until: OffsetDateTime,
    /// Conflicts between the person's choices and signals that the decision resolved, in plain
    /// language, e.g. an explicit opt-in recorded after a GPC signal (CCPA regs §7025(c)(3)).
    /// Empty on the common path.
    pub conflicts: Vec<String>,
    /// The trace.
    pub explanation: Vec<Step>,
}

/// A single evaluation outcome for one (purpose, category).
struct Outcome<'s> {
    denied: Option<Reason>,
    detail: String,
    rule: &'static str,
    record: Option<&'s Record>,
    /// Set when an explicit grant recorded after a GPC signal decided (the conflict to name).
    gpc_overridden: bool,
}

impl Outcome<'_> {
    /// For an allow, the expiry of the record behind it: the moment the allow may turn into
    /// `EXPIRED` (one already past, behind an opt-out allow, makes the decision uncacheable).
    /// A denial never turns into an allow when a record lapses (the lapsed record stays the
    /// deciding one), and cached denials are harmless, so denials give none.
    fn lapses_at(&self) -> Option<OffsetDateTime> {
        self.record
            .filter(|_| self.denied.is_none())
            .and_then(|r| r.expires_at)
    }
}

impl<'s> Outcome<'s> {
    fn allow(rule: &'static str, detail: String, record: Option<&'s Record>) -> Self {
        Outcome {
            denied: None,
            detail,
            rule,
            record,
            gpc_overridden: false,
        }
    }
    fn deny(
        rule: &'static str,
        reason: Reason,
        detail: String,
        record: Option<&'s Record>,
    ) -> Self {
        Outcome {
            denied: Some(reason),
            detail,
            rule,
            record,
            gpc_overridden: false,
        }
    }
}

/// Decides a Check. Pure: the same policy, input and state always give the same decision.
pub fn decide(
    policy: &Policy,
    input: &CheckInput<'_>,
    state: &SubjectState,
) -> Result<Decision, DecisionError> {
    let (purpose, jurisdiction, channel) = resolve(policy, input)?;

    let ctx = Evaluation {
        policy,
        jurisdiction,
        channel,
        gpc: input.gpc,
        now: input.now,
        explain: input.explain,
        state,
    };
    // Stays empty unless the caller asked for the trace (`input.explain`).
    let mut explanation = Vec::new();

    // Rule 2: the caller-purpose rule.
    let permitted = policy.caller_may_ask(input.caller, &purpose.key);
    if input.explain {
        explanation.push(Step {
            rule: "caller_permission",
            outcome: if permitted {
                "allow".into()
            } else {
                Reason::CallerNotPermitted.code().into()
            },
            detail: if permitted {
                format!("caller {:?} may ask for {:?}", input.caller, purpose.key)
            } else {
                format!(
                    "caller {:?} is not allowed to ask for {:?}",
                    input.caller, purpose.key
                )
            },
            record_ids: Vec::new(),
        });
    }

    let targets: Vec<Option<&str>> = if input.categories.is_empty() {
        vec![None]
    } else {
        input.categories.iter().map(|c| Some(c.as_str())).collect()
    };
    let mut verdicts = Vec::with_capacity(targets.len());
    let mut conflicts = Vec::new();
    let mut valid_until = input.now + Duration::seconds(i64::from(policy.decision_ttl_seconds));
    for target in targets {
        let outcome = if !permitted {
            Outcome::deny(
                "caller_permission",
                Reason::CallerNotPermitted,
                format!(
                    "caller {:?} is not allowed to ask for {:?}",
                    input.caller, purpose.key
                ),
                None,
            )
        } else {
            ctx.evaluate(purpose, target)
        };
        if let Some(expiry) = outcome.lapses_at() {
            valid_until = valid_until.min(expiry);
        }
        if outcome.gpc_overridden
            && let Some(line) = ctx.gpc_conflict(outcome.record)
            && !conflicts.contains(&line)
        {
            if input.explain {
                explanation.push(Step {
                    rule: "gpc",
                    outcome: "overridden".into(),
                    detail: line.clone(),
                    record_ids: outcome
                        .record
                        .map(|r| vec![r.id.clone()])
                        .unwrap_or_default(),
                });
            }
            conflicts.push(line);
        }
        if input.explain {
            explanation.push(Step {
                rule: outcome.rule,
                outcome: outcome
                    .denied
                    .map_or_else(|| "allow".into(), |r| r.code().into()),
                detail: match target {
                    Some(c) => format!("{c}: {}", outcome.detail),
                    None => outcome.detail.clone(),
                },
                record_ids: outcome
                    .record
                    .map(|r| vec![r.id.clone()])
                    .unwrap_or_default(),
            });
        }
        verdicts.push(CategoryVerdict {
            category: target.map(str::to_owned),
            denied: outcome.denied,
            detail: outcome.detail,
        });
    }

    let allowed = verdicts.iter().filter(|v| v.denied.is_none()).count();
    let verdict = match allowed {
        0 => Verdict::Deny,
        n if n == verdicts.len() => Verdict::Allow,
        _ => Verdict::Partial,
    };
    let reason = if verdict == Verdict::Deny {
        Reason::most_significant(verdicts.iter().filter_map(|v| v.denied))
    } else {
        None
    };

    // Rule 9: obligations travel with an allow.
    let mut obligations = Vec::new();
    if verdict != Verdict::Deny
        && policy
            .rules
            .exclude_third_party_sources_for
            .iter()
            .any(|p| p.matches(&purpose.key))
    {
        obligations.push(Obligation {
            kind: "exclude_sources",
            values: vec!["third_party".into()],
        });
        explanation.extend(input.explain.then(|| Step {
            rule: "obligations",
            outcome: "exclude_sources".into(),
            detail: "third-party-sourced data may not be used for this purpose".into(),
            record_ids: Vec::new(),
        }));
    }

    let (personalization, level_lapses_at) = ctx.personalization(input.caller);
    if let Some(expiry) = level_lapses_at {
        valid_until = valid_until.min(expiry);
    }
    if valid_until < input.now {
        valid_until = input.now;
    }
    Ok(Decision {
        verdict,
        reason,
        categories: verdicts,
        personalization,
        obligations,
        revision: state.revision,
        valid_until,
        conflicts,
        explanation,
    })
}

/// The conflicts between a subject's choices and its GPC signal, for a person-facing listing
/// (GetConsents): every current explicit, unexpired grant of a GPC-scoped purpose recorded after
/// the GPC signal that is on, in the words a decision uses for the same conflict.
pub fn gpc_conflicts(policy: &Policy, state: &SubjectState, now: OffsetDateTime) -> Vec<String> {
    let (Some(signal), Some(signal_at)) = (state.gpc_signal, state.gpc_signal_at) else {
        return Vec::new();
    };
    if !policy.rules.honor_gpc {
        return Vec::new();
    }
    state
        .records
        .iter()
        .filter(|r| {
            r.state == RecordState::Given
                && r.consent_type == ConsentType::Explicit
                && r.order() > signal
                && r.expires_at.is_none_or(|e| e > now)
                && policy
                    .purposes
                    .get(&r.purpose)
                    .is_some_and(|p| p.gpc_scoped)
        })
        .map(|r| gpc_conflict_line(r, signal_at))
        .collect()
}

fn gpc_conflict_line(record: &Record, signal_at: OffsetDateTime) -> String {
    format!(
        "opted in to {} on {} after a GPC signal on {}",
        record.purpose,
        day_and_minute(record.collected_at),
        day_and_minute(signal_at)
    )
}

/// The refusal or withdrawal that overrides a `given` record entirely (docs/architecture.md §3 rule 5): the
/// latest one recorded after it, on its purpose or an ancestor, on no channel or the same channel,
/// with no scope or a scope covering the grant's own. For person-facing listings (GetConsents),
/// which show the latest record per key and must not present a grant as standing when "withdraw
/// all marketing" came after it. (A narrower refusal, e.g. of one category under an unscoped
/// grant, overrides the grant only for that category, and is listed on its own.)
pub fn overriding_record<'s>(state: &'s SubjectState, given: &Record) -> Option<&'s Record> {
    if given.state != RecordState::Given {
        return None;
    }
    state
        .records
        .iter()
        .filter(|n| {
            n.state != RecordState::Given
                && n.order() > given.order()
                && is_ancestor_or_self(&n.purpose, &given.purpose)
                && n.channel.is_none_or(|ch| given.channel == Some(ch))
                && match (&n.scope, &given.scope) {
                    (None, _) => true,
                    (Some(n), Some(g)) => is_ancestor_or_self(n, g),
                    (Some(_), None) => false,
                }
        })
        .max_by_key(|n| n.order())
}

/// Rule 1 alone: checks that the purpose, categories, jurisdiction and channel exist, without
/// deciding. Lets a batch be validated whole before any state is read.
pub fn validate(policy: &Policy, input: &CheckInput<'_>) -> Result<(), DecisionError> {
    resolve(policy, input).map(|_| ())
}

/// Rule 1: unknown purpose, category, jurisdiction or channel is a caller bug, not a denial.
fn resolve<'p>(
    policy: &'p Policy,
    input: &CheckInput<'_>,
) -> Result<(&'p Purpose, &'p Jurisdiction, Option<Channel>), DecisionError> {
    let purpose = policy
        .purposes
        .get(input.purpose)
        .ok_or_else(|| DecisionError::UnknownPurpose(input.purpose.to_owned()))?;
    for (index, category) in input.categories.iter().enumerate() {
        if !policy.categories.contains_key(category) {
            return Err(DecisionError::UnknownCategory {
                index,
                category: category.clone(),
            });
        }
    }
    let jurisdiction = policy
        .jurisdiction(input.jurisdiction)
        .ok_or_else(|| DecisionError::UnknownJurisdiction(input.jurisdiction.to_owned()))?;
    let channel = resolve_channel(purpose, input.channel)?;
    Ok((purpose, jurisdiction, channel))
}

fn resolve_channel(
    purpose: &Purpose,
    requested: Option<&str>,
) -> Result<Option<Channel>, DecisionError> {
    match requested.filter(|c| !c.is_empty()) {
        None if purpose.channels.is_empty() => Ok(None),
        None if purpose.channels.len() == 1 => Ok(Some(purpose.channels[0])),
        None => Err(DecisionError::BadChannel(format!(
            "purpose {:?} is channel-scoped: name one of {}",
            purpose.key,
            list(&purpose.channels)
        ))),
        Some(text) => {
            let channel = Channel::parse(text)
                .ok_or_else(|| DecisionError::UnknownChannel(text.to_owned()))?;
            if purpose.channels.contains(&channel) {
                Ok(Some(channel))
            } else if purpose.channels.is_empty() {
                Err(DecisionError::BadChannel(format!(
                    "purpose {:?} is not channel-scoped",
                    purpose.key
                )))
            } else {
                Err(DecisionError::BadChannel(format!(
                    "purpose {:?} has no channel {text:?}: name one of {}",
                    purpose.key,
                    list(&purpose.channels)
                )))
            }
        }
    }
}

fn list(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

struct Evaluation<'a> {
    policy: &'a Policy,
    jurisdiction: &'a Jurisdiction,
    channel: Option<Channel>,
    gpc: bool,
    now: OffsetDateTime,
    explain: bool,
    state: &'a SubjectState,
}

impl<'a> Evaluation<'a> {
    /// Rules 3–8 for one (purpose, category), in the order of the rule list: the first rule that
    /// denies decides; an allow carries the record it rests on.
    fn evaluate(&self, purpose: &Purpose, category: Option<&str>) -> Outcome<'a> {
        let basis = self.policy.legal_basis(purpose, self.jurisdiction);
        if let Some(denied) = self.minimization(purpose, category) {
            return denied;
        }
        if let Some(denied) = self.erasure_or_restriction(basis) {
            return denied;
        }
        let record = self.deciding_record(purpose, category);
        if let Some(denied) = self.legal_basis(purpose, basis, record) {
            return denied;
        }
        let gpc_overridden = match self.gpc(purpose, record) {
            Ok(overridden) => overridden,
            Err(denied) => return denied,
        };
        if let Some(denied) = self.minors(basis, record) {
            return denied;
        }
        if let Some(denied) = self.sensitive(category, basis, record) {
            return denied;
        }
        Outcome {
            gpc_overridden,
            ..self.allowed(basis, record)
        }
    }

    /// Rule 3: a category the purpose does not need is never released for it.
    fn minimization(&self, purpose: &Purpose, category: Option<&str>) -> Option<Outcome<'a>> {
        let c = category?;
        (!purpose.needs(c)).then(|| {
            Outcome::deny(
                "minimization",
                Reason::NotNeededForPurpose,
                format!("purpose {:?} does not need this category", purpose.key),
                None,
            )
        })
    }

    /// Rule 4: an erased subject gets nothing; a restricted one only what is essential.
    fn erasure_or_restriction(&self, basis: LegalBasis) -> Option<Outcome<'a>> {
        if self.state.erased {
            return Some(Outcome::deny(
                "erasure",
                Reason::SubjectErased,
                "the subject was erased".into(),
                None,
            ));
        }
        (self.state.restricted && basis != LegalBasis::Essential).then(|| {
            Outcome::deny(
                "restriction",
                Reason::ProcessingRestricted,
                "processing is restricted to essential purposes".into(),
                None,
            )
        })
    }

    /// Rule 5: the legal basis. Essential and contract purposes need nothing; under `opt_out` only
    /// a deciding refusal or withdrawal denies; under `consent` the deciding record must be a live
    /// `given` under the current major notice version.
    fn legal_basis(
        &self,
        purpose: &Purpose,
        basis: LegalBasis,
        record: Option<&'a Record>,
    ) -> Option<Outcome<'a>> {
        if basis.needs_no_consent() {
            return None;
        }
        let opted_out = |said: &str| match basis {
            LegalBasis::OptOut => "the person opted out".to_owned(),
            _ => format!("consent was {said}"),
        };
        let deny = |reason, detail| Some(Outcome::deny("legal_basis", reason, detail, record));
        match record {
            Some(r) if r.state == RecordState::Refused => {
                deny(Reason::Refused, opted_out("refused"))
            }
            Some(r) if r.state == RecordState::Withdrawn => {
                deny(Reason::Withdrawn, opted_out("withdrawn"))
            }
            _ if basis == LegalBasis::OptOut => None,
            None => Some(Outcome::deny(
                "legal_basis",
                Reason::NoConsent,
                self.no_consent_detail(purpose),
                None,
            )),
            Some(r) if r.expires_at.is_some_and(|e| e <= self.now) => {
                deny(Reason::Expired, "consent has expired".into())
            }
            Some(r) => {
                let current = &self.policy.purposes.get(&r.purpose)?.notice_version;
                (notice_major(&r.notice_version) != Some(current.major)).then(|| {
                    Outcome::deny(
                        "legal_basis",
                        Reason::NoticeOutdated,
                        format!(
                            "consent was given under notice {:?}; the current notice is {:?}",
                            r.notice_version, current.text
                        ),
                        Some(r),
                    )
                })
            }
        }
    }

    /// Rule 6: Global Privacy Control. A recorded signal (or, unrecorded, a flag on the request
    /// as of now) opts out of GPC-scoped purposes unless an explicit, live grant recorded after
    /// it decides: `Ok(true)` then, the conflict to name.
    fn gpc(&self, purpose: &Purpose, record: Option<&'a Record>) -> Result<bool, Outcome<'a>> {
        if !(self.policy.rules.honor_gpc && purpose.gpc_scoped && self.jurisdiction.honors_gpc) {
            return Ok(false);
        }
        let signal = match (self.state.gpc_signal, self.gpc) {
            (Some(order), _) => order,
            // A flag on the request with nothing recorded: a signal as of now, which no earlier
            // grant overrides (the consent service records it first; `Explain` does not).
            (None, true) => Order::LATEST,
            (None, false) => return Ok(false),
        };
        // An expired grant is `expired`, not `given` (docs/architecture.md §3): it does not opt
        // back in.
        let overridden = record.is_some_and(|r| {
            r.state == RecordState::Given
                && r.expires_at.is_none_or(|e| e > self.now)
                && r.consent_type == ConsentType::Explicit
                && r.order() > signal
        });
        if overridden {
            Ok(true)
        } else {
            Err(Outcome::deny(
                "gpc",
                Reason::GpcOptOut,
                "a Global Privacy Control signal opts out of this purpose".into(),
                record,
            ))
        }
    }

    /// Rule 7: a subject under the jurisdiction's consent age needs consent backed by a verified
    /// guardian.
    fn minors(&self, basis: LegalBasis, record: Option<&'a Record>) -> Option<Outcome<'a>> {
        let minor = self
            .state
            .age_band
            .is_some_and(|band| band.youngest() < self.jurisdiction.consent_age);
        if !(self.policy.rules.minors_require_guardian && !basis.needs_no_consent() && minor) {
            return None;
        }
        let backed = record.is_some_and(|r| {
            r.state == RecordState::Given
                && r.expires_at.is_none_or(|e| e > self.now)
                && r.guardian_ref
                    .as_ref()
                    .is_some_and(|g| self.state.guardians.contains(g))
        });
        (!backed).then(|| {
            Outcome::deny(
                "minors",
                Reason::MinorRequiresGuardian,
                format!(
                    "the subject is under the consent age ({}) of {}",
                    self.jurisdiction.consent_age, self.jurisdiction.code
                ),
                record,
            )
        })
    }

    /// Rule 8: a sensitive category needs an explicit, live grant whose scope names it. A grant
    /// past its expiry is `expired`, not `given` (docs/architecture.md §3): under a basis that
    /// does not itself deny an expired record (`opt_out`, `contract`) it must not release a
    /// sensitive category either.
    fn sensitive(
        &self,
        category: Option<&str>,
        basis: LegalBasis,
        record: Option<&'a Record>,
    ) -> Option<Outcome<'a>> {
        let c = category?;
        let sensitive = self
            .policy
            .categories
            .get(c)
            .is_some_and(|cat| cat.sensitive);
        if !(self.policy.rules.sensitive_requires_explicit_consent
            && basis != LegalBasis::Essential
            && sensitive)
        {
            return None;
        }
        let explicit = record.is_some_and(|r| {
            r.state == RecordState::Given
                && r.expires_at.is_none_or(|e| e > self.now)
                && r.consent_type == ConsentType::Explicit
                && r.scope
                    .as_deref()
                    .is_some_and(|s| is_ancestor_or_self(s, c))
        });
        (!explicit).then(|| {
            Outcome::deny(
                "sensitive",
                Reason::SensitiveRequiresExplicitConsent,
                "a sensitive category needs explicit consent naming it".into(),
                record,
            )
        })
    }

    /// Every rule passed: the allow, with why in words only when the trace was asked for.
    fn allowed(&self, basis: LegalBasis, record: Option<&'a Record>) -> Outcome<'a> {
        let detail = match (basis, record) {
            // Why an allow holds is part of the explanation, built only when asked for.
            _ if !self.explain => String::new(),
            (LegalBasis::Essential | LegalBasis::Contract, _) => {
                format!("legal basis {} needs no consent", basis.as_str())
            }
            (_, Some(r)) if r.state == RecordState::Given => {
                format!("consent given for {:?}", r.purpose)
            }
            _ => format!("legal basis {} and no opt-out recorded", basis.as_str()),
        };
        Outcome::allow("legal_basis", detail, record)
    }

    /// The plain-language line for an explicit grant that overrides the recorded GPC signal:
    /// "opted in to <purpose> on <date> after a GPC signal on <date>".
    fn gpc_conflict(&self, record: Option<&Record>) -> Option<String> {
        Some(gpc_conflict_line(record?, self.state.gpc_signal_at?))
    }

    fn no_consent_detail(&self, purpose: &Purpose) -> String {
        match self.channel {
            Some(ch) => format!("no consent recorded for {:?} on channel {ch}", purpose.key),
            None => format!("no consent recorded for {:?}", purpose.key),
        }
    }

    /// The record that decides one question (the purpose, the asked channel, one category or
    /// none). docs/architecture.md §3 rule 5, precisely:
    ///
    /// 1. A record *applies* when its purpose is the asked purpose or an ancestor of it, its
    ///    channel is none or the asked one, and its scope is none or covers the asked category (a
    ///    purpose-level question, without a category, sees only unscoped records).
    /// 2. A `refused` or `withdrawn` record that applies overrides every applying `given` record
    ///    on its purpose or beneath it that is *older* (earlier in [`Order`]: by time, then
    ///    revision; live records are in revision order, imported ones by their own time): withdrawing
    ///    `marketing` withdraws an earlier grant of `marketing.communications.email`, on every
    ///    channel and every category scope the withdrawal itself covers.
    /// 3. Of the records left (every refusal and withdrawal, and the grants nobody overrode), the
    ///    most specific decides: the deepest purpose, then the deepest scope, then the latest
    ///    [`Order`]. So a grant of `marketing.communications.email` made *after* withdrawing
    ///    `marketing` applies again (the person opted back in to that one thing), and a
    ///    withdrawal of `marketing.communications.sms` beats a grant of `marketing` whenever it
    ///    was made: a broad yes never reopens a specific no.
    fn deciding_record(&self, purpose: &Purpose, category: Option<&str>) -> Option<&'a Record> {
        let channel = self.channel;
        let applies = move |r: &&'a Record| {
            is_ancestor_or_self(&r.purpose, &purpose.key)
                && r.channel.is_none_or(|ch| channel == Some(ch))
                && match (&r.scope, category) {
                    (None, _) => true,
                    (Some(scope), Some(c)) => is_ancestor_or_self(scope, c),
                    (Some(_), None) => false,
                }
        };
        let records = &self.state.records;
        let overridden = |given: &Record| {
            records.iter().filter(applies).any(|n| {
                n.state != RecordState::Given
                    && n.order() > given.order()
                    && is_ancestor_or_self(&n.purpose, &given.purpose)
            })
        };
        records
            .iter()
            .filter(applies)
            .filter(|r| r.state != RecordState::Given || !overridden(r))
            .max_by_key(|r| {
                (
                    key_depth(&r.purpose),
                    r.scope.as_deref().map_or(0, key_depth),
                    r.order(),
                )
            })
    }

    /// The highest rung of the ladder whose purpose is allowed for this caller, and when the
    /// record behind that rung lapses (the level may drop then).
    fn personalization(&self, caller: &str) -> (Personalization, Option<OffsetDateTime>) {
        if self.state.erased || self.state.restricted {
            return (Personalization::Anonymous, None);
        }
        for (rung, key) in &self.policy.ladder {
            let Some(purpose) = self.policy.purposes.get(key) else {
                continue;
            };
            if !self.policy.caller_may_ask(caller, key) {
                continue;
            }
            let ctx = Evaluation {
                channel: None,
                ..*self
            };
            if !purpose.channels.is_empty() {
                continue;
            }
            let outcome = ctx.evaluate(purpose, None);
            if outcome.denied.is_none() {
                return (*rung, outcome.lapses_at());
            }
        }
        (Personalization::Contextual, None)
    }
}

impl Clone for Evaluation<'_> {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for Evaluation<'_> {}

/// The depth of a dotted key: `a` is 1, `a.b.c` is 3.
fn key_depth(key: &str) -> usize {
    key.bytes().filter(|b| *b == b'.').count() + 1
}

/// A moment as people read it in an explanation: `2026-11-29 20:31 UTC`.
fn day_and_minute(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The major part of a stored notice version string.
fn notice_major(text: &str) -> Option<u32> {
    text.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_from_its_code_and_ranks_uniquely() {
        let mut ranks = std::collections::BTreeSet::new();
        for reason in ALL_REASONS {
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
            assert!(
                ranks.insert(reason.significance()),
                "{reason} shares a rank"
            );
        }
        assert_eq!(Reason::from_code("NOT_A_REASON"), None);
        assert_eq!(
            Reason::NotNeededForPurpose.significance(),
            *ranks.last().unwrap_or(&0),
            "minimization ranks last"
        );
    }
}
