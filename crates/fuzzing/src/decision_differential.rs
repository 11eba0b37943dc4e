//! The decision function against a reference of its rules: a differential target.
//!
//! The input is turned into a small world ([`World`]): a purpose tree and a category tree with
//! fuzzer-chosen legal bases, categories, channels, GPC scope, notice versions and
//! personalization rungs; two jurisdictions with overrides, consent ages and GPC; two callers
//! with purpose patterns; the cross-purpose rules; a subject (erased, restricted, up to eight
//! records, recorded live or imported with their original time, a GPC signal, an age band,
//! guardians); and one Check. The real
//! `consentgate_policy::decide` answers it on a `Policy` built from the world, and
//! [`reference`] answers it from the world directly, written from docs/architecture.md §3 (and
//! DESIGN.md), sharing no code with the real function. They must agree on:
//! - whether the request is invalid (rule 1), and the field named;
//! - each category's verdict and reason, the overall verdict and the top-level reason;
//! - the personalization level, the obligation, and whether a GPC conflict is named (records and
//!   the signal ordered by time, then revision);
//! - `valid_until`: never later than the docs allow (the earliest expiry of a consent behind an
//!   allowed part, and the policy's TTL), never before `now` (the real function may end it
//!   sooner: caching less is safe, so only the bound is asserted);
//! - and the decision with the trace asked for equals the one without (apart from the trace).
//!
//! Where the docs leave a rule open, the reference follows the implementation and says so
//! ([`reference`]'s notes); those choices are listed in docs/fuzzing.md.

use crate::{Budget, Target};
use arbitrary::{Arbitrary, Unstructured};
use consentgate_policy::{
    AgeBand, Caller, Category, Channel, CheckInput, ConsentType, Decision, Jurisdiction,
    LegalBasis, NoticeVersion, Order, Pattern, Personalization, Policy, Purpose, Record,
    RecordState, Rules, SubjectState, Verdict, decide,
};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// The differential decision target.
pub const TARGET: Target = Target {
    name: "decision_differential",
    run,
    // The world takes a few hundred bytes at most; the rest of a longer input is unused.
    max_len: 4096,
    budget: Budget {
        fixed: 1 << 20,
        per_input_byte: 64,
    },
};

/// The purpose tree: every level declared, as the loader requires.
const PURPOSES: [&str; 8] = ["m", "m.c", "m.c.e", "m.c.s", "m.a", "p", "p.x", "e"];
/// The category tree.
const CATEGORIES: [&str; 5] = ["u", "u.c", "u.c.e", "u.b", "u.h"];
/// The jurisdictions: the first is the default.
const JURISDICTIONS: [&str; 2] = ["J", "K"];
/// The callers; `ghost` asks too, and is in no policy.
const CALLERS: [&str; 2] = ["c1", "c2"];
/// Guardians a record may name; the subject's verified ones are a subset of the first two.
const GUARDIANS: [&str; 3] = ["g1", "g2", "g3"];
/// The moment of the decision.
const NOW: i64 = 1_790_000_000;

// ------------------------------------------------------------------------------------ the world

/// Everything one check depends on, as the fuzzer chooses it.
#[derive(Debug, Arbitrary)]
pub struct World {
    purposes: [PurposeSpec; PURPOSES.len()],
    /// Bit i: category i is sensitive.
    sensitive: u8,
    jurisdictions: [JurisdictionSpec; JURISDICTIONS.len()],
    callers: [Vec<PatternSpec>; CALLERS.len()],
    sensitive_rule: bool,
    minors_rule: bool,
    gpc_rule: bool,
    exclude_third_party_for: Vec<PatternSpec>,
    ttl_seconds: u16,
    subject: SubjectSpec,
    request: RequestSpec,
    /// How record i (in input order) was recorded; None: live, on time. Last: an input written
    /// before it reads the same world, with timings from any bytes left over.
    timings: [Option<Timing>; 8],
}

/// How a record was recorded when not live and on time.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Timing {
    /// Live, by a clock this many minutes behind: moved past the subject's previous change.
    Lagging(u8),
    /// Imported from another platform, with its original time in minutes from [`base`] (live
    /// changes are at their revision in minutes from it, so this may tie with one).
    Imported(i8),
}

#[derive(Debug, Arbitrary)]
struct PurposeSpec {
    basis: Basis,
    /// Bit i: the purpose may use category i.
    categories: u8,
    /// Bit i: channel i of [`Channel::ALL`].
    channels: u8,
    gpc_scoped: bool,
    /// The current notice's major version, 1 to 3.
    notice_major: u8,
    rung: Option<Rung>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum Basis {
    Consent,
    OptOut,
    Contract,
    Essential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Arbitrary)]
enum Rung {
    Segment,
    Limited,
    Profiled,
}

#[derive(Debug, Arbitrary)]
struct JurisdictionSpec {
    consent_age: u8,
    honors_gpc: bool,
    /// (purpose index, basis): the legal basis of that purpose (and its subtree) here.
    overrides: Vec<(u8, Basis)>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum PatternSpec {
    Any,
    Subtree(u8),
    Exact(u8),
}

#[derive(Debug, Arbitrary)]
struct SubjectSpec {
    erased: bool,
    restricted: bool,
    records: Vec<RecordSpec>,
    /// The GPC signal, recorded just after this many of the records (in revision order).
    gpc_after: Option<u8>,
    age_band: Option<Band>,
    /// Bit i: guardian i is verified.
    guardians: u8,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Band {
    Under13,
    From13To15,
    From16To17,
    Adult,
}

#[derive(Debug, Arbitrary)]
struct RecordSpec {
    purpose: u8,
    scope: Option<u8>,
    channel: Option<u8>,
    state: State,
    explicit: bool,
    /// Index into the notice versions a record may carry (`1`, `2`, `2.1`, `3`, `x`).
    notice: u8,
    /// Minutes from now to the expiry (≤ 0: expired).
    expires_in_minutes: Option<i8>,
    guardian: Option<u8>,
    /// The order of the records' revisions (ties broken by position).
    order: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum State {
    Given,
    Refused,
    Withdrawn,
}

#[derive(Debug, Arbitrary)]
struct RequestSpec {
    caller: u8,
    /// A purpose index; past the tree, an unknown purpose.
    purpose: u8,
    /// Category indices; past the tree, an unknown category.
    categories: Vec<u8>,
    channel: ChannelSpec,
    /// 0: empty (the default), 1–2: a jurisdiction, else an unknown one.
    jurisdiction: u8,
    gpc: bool,
    explain: bool,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ChannelSpec {
    Empty,
    Known(u8),
    Unknown,
}

const NOTICES: [&str; 5] = ["1", "2", "2.1", "3", "x"];

/// The world's records with revisions and places in the order, as the store keeps them: the
/// latest in the order per (purpose, channel, scope), revisions unique and increasing with
/// `order`; the GPC signal gets a revision between two records'.
struct Records {
    records: Vec<Placed>,
    gpc: Option<Signal>,
}

/// A current record and where it stands.
struct Placed {
    spec: RecordSpec,
    revision: u64,
    collected_at: OffsetDateTime,
    /// Its time in the subject's order (`ordered_at`).
    at: OffsetDateTime,
}

/// The recorded GPC signal.
#[derive(Clone, Copy)]
struct Signal {
    revision: u64,
    recorded_at: OffsetDateTime,
    at: OffsetDateTime,
}

/// Live changes are recorded at their revision in minutes after this (by an on-time clock).
fn base() -> OffsetDateTime {
    now() - Duration::days(1)
}

fn records(world: &World) -> Records {
    let subject = &world.subject;
    let mut specs: Vec<(usize, &RecordSpec)> = subject.records.iter().take(8).enumerate().collect();
    specs.sort_by_key(|(i, r)| (r.order, *i));
    // Revisions 2, 4, 6…: a signal at an odd revision falls between two records. The changes in
    // revision order; None is the signal.
    let mut changes: Vec<(u64, Option<(usize, &RecordSpec)>)> = specs
        .into_iter()
        .enumerate()
        .map(|(n, r)| (2 * (n as u64 + 1), Some(r)))
        .collect();
    if let Some(n) = subject.gpc_after {
        changes.push((2 * u64::from(n % 9) + 1, None));
    }
    changes.sort_by_key(|(revision, _)| *revision);

    let clock = |revision: u64| base() + Duration::minutes(revision as i64);
    // The subject's latest time so far: a live change goes to max(its clock, that + 1µs).
    let mut latest: Option<OffsetDateTime> = None;
    let mut records: Vec<Placed> = Vec::new();
    let mut gpc = None;
    for (revision, change) in changes {
        let timing = change.and_then(|(i, _)| world.timings[i]);
        let collected_at = match timing {
            None => clock(revision),
            Some(Timing::Lagging(m)) => clock(revision) - Duration::minutes(i64::from(m)),
            Some(Timing::Imported(m)) => base() + Duration::minutes(i64::from(m)),
        };
        let at = match (timing, latest) {
            (Some(Timing::Imported(_)), _) | (_, None) => collected_at,
            (_, Some(l)) => collected_at.max(l + Duration::microseconds(1)),
        };
        latest = latest.max(Some(at));
        let Some((_, r)) = change else {
            gpc = Some(Signal {
                revision,
                recorded_at: collected_at,
                at,
            });
            continue;
        };
        let spec = RecordSpec {
            purpose: r.purpose % PURPOSES.len() as u8,
            scope: r.scope.map(|s| s % CATEGORIES.len() as u8),
            channel: r.channel.map(|c| c % Channel::ALL.len() as u8),
            state: r.state,
            explicit: r.explicit,
            notice: r.notice % NOTICES.len() as u8,
            expires_in_minutes: r.expires_in_minutes,
            guardian: r.guardian.map(|g| g % GUARDIANS.len() as u8),
            order: r.order,
        };
        let placed = Placed {
            spec,
            revision,
            collected_at,
            at,
        };
        // The latest in the order per key is current; an older import goes to history only.
        let key = |p: &Placed| (p.spec.purpose, p.spec.channel, p.spec.scope);
        match records.iter().position(|o| key(o) == key(&placed)) {
            Some(k) if (records[k].at, records[k].revision) > (at, revision) => {}
            Some(k) => records[k] = placed,
            None => records.push(placed),
        }
    }
    Records { records, gpc }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).expect("a fixed time")
}

fn expiry(r: &RecordSpec) -> Option<OffsetDateTime> {
    r.expires_in_minutes
        .map(|m| now() + Duration::minutes(i64::from(m)))
}

fn basis_of(b: Basis) -> LegalBasis {
    match b {
        Basis::Consent => LegalBasis::Consent,
        Basis::OptOut => LegalBasis::OptOut,
        Basis::Contract => LegalBasis::Contract,
        Basis::Essential => LegalBasis::Essential,
    }
}

fn pattern_of(p: PatternSpec) -> Pattern {
    match p {
        PatternSpec::Any => Pattern::Any,
        PatternSpec::Subtree(i) => {
            Pattern::Subtree(PURPOSES[usize::from(i) % PURPOSES.len()].into())
        }
        PatternSpec::Exact(i) => Pattern::Exact(PURPOSES[usize::from(i) % PURPOSES.len()].into()),
    }
}

fn channels_of(bits: u8) -> Vec<Channel> {
    Channel::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, c)| c)
        .collect()
}

fn categories_of(bits: u8) -> Vec<String> {
    CATEGORIES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

fn notice_major(p: &PurposeSpec) -> u32 {
    u32::from(p.notice_major % 3) + 1
}

fn consent_age(j: &JurisdictionSpec) -> u8 {
    j.consent_age % 22
}

fn ttl(world: &World) -> u32 {
    u32::from(world.ttl_seconds) + 1
}

/// The world as the real function sees it: a `Policy` (built directly, as the loader would
/// build it from a file) and a `SubjectState`.
fn real_world(world: &World, records: &Records) -> (Policy, SubjectState) {
    let categories = CATEGORIES
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let category = Category {
                key: (*key).into(),
                description: String::new(),
                sensitive: world.sensitive & (1 << i) != 0,
                retention_days: 0,
            };
            ((*key).to_owned(), category)
        })
        .collect();
    let mut ladder: Vec<(Personalization, String)> = Vec::new();
    let mut purposes = BTreeMap::new();
    for (key, p) in PURPOSES.iter().zip(&world.purposes) {
        let personalization = p.rung.map(|r| match r {
            Rung::Segment => Personalization::Segment,
            Rung::Limited => Personalization::Limited,
            Rung::Profiled => Personalization::Profiled,
        });
        // The loader refuses two purposes unlocking one rung: the first keeps it here.
        let personalization = personalization.filter(|rung| ladder.iter().all(|(r, _)| r != rung));
        if let Some(rung) = personalization {
            ladder.push((rung, (*key).to_owned()));
        }
        let major = notice_major(p);
        purposes.insert(
            (*key).to_owned(),
            Purpose {
                key: (*key).into(),
                description: String::new(),
                default_basis: basis_of(p.basis),
                categories: categories_of(p.categories),
                channels: channels_of(p.channels),
                gpc_scoped: p.gpc_scoped,
                retention_days: 0,
                notice_id: "n".into(),
                notice_version: NoticeVersion {
                    major,
                    text: major.to_string(),
                },
                personalization,
            },
        );
    }
    ladder.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let jurisdictions = JURISDICTIONS
        .iter()
        .zip(&world.jurisdictions)
        .map(|(code, j)| {
            let legal_basis = j
                .overrides
                .iter()
                .take(4)
                .map(|(p, b)| {
                    (
                        PURPOSES[usize::from(*p) % PURPOSES.len()].to_owned(),
                        basis_of(*b),
                    )
                })
                .collect();
            let jurisdiction = Jurisdiction {
                code: (*code).into(),
                name: String::new(),
                consent_age: consent_age(j),
                honors_gpc: j.honors_gpc,
                legal_basis,
            };
            ((*code).to_owned(), jurisdiction)
        })
        .collect();
    let callers = CALLERS
        .iter()
        .zip(&world.callers)
        .map(|(name, patterns)| {
            let caller = Caller {
                name: (*name).into(),
                description: String::new(),
                roles: Vec::new(),
                purposes: patterns.iter().take(4).copied().map(pattern_of).collect(),
                delegates: Default::default(),
            };
            ((*name).to_owned(), caller)
        })
        .collect();
    let policy = Policy {
        version: "fuzz".into(),
        default_jurisdiction: JURISDICTIONS[0].into(),
        decision_ttl_seconds: ttl(world),
        controller: String::new(),
        policy_url: String::new(),
        purposes,
        categories,
        jurisdictions,
        callers,
        rules: Rules {
            sensitive_requires_explicit_consent: world.sensitive_rule,
            minors_require_guardian: world.minors_rule,
            honor_gpc: world.gpc_rule,
            exclude_third_party_sources_for: world
                .exclude_third_party_for
                .iter()
                .take(4)
                .copied()
                .map(pattern_of)
                .collect(),
        },
        ladder,
    };
    let state = SubjectState {
        revision: 100,
        erased: world.subject.erased,
        restricted: world.subject.restricted,
        records: records
            .records
            .iter()
            .map(|placed| {
                let r = &placed.spec;
                Record {
                    id: format!("r{}", placed.revision),
                    purpose: PURPOSES[usize::from(r.purpose)].into(),
                    scope: r.scope.map(|s| CATEGORIES[usize::from(s)].into()),
                    channel: r.channel.map(|c| Channel::ALL[usize::from(c)]),
                    state: match r.state {
                        State::Given => RecordState::Given,
                        State::Refused => RecordState::Refused,
                        State::Withdrawn => RecordState::Withdrawn,
                    },
                    consent_type: if r.explicit {
                        ConsentType::Explicit
                    } else {
                        ConsentType::Expressed
                    },
                    notice_version: NOTICES[usize::from(r.notice)].into(),
                    collected_at: placed.collected_at,
                    expires_at: expiry(r),
                    guardian_ref: r.guardian.map(|g| GUARDIANS[usize::from(g)].into()),
                    ordered_at: placed.at,
                    revision: placed.revision,
                }
            })
            .collect(),
        gpc_signal: records.gpc.map(|g| Order {
            at: g.at,
            revision: g.revision,
        }),
        gpc_signal_at: records.gpc.map(|g| g.recorded_at),
        age_band: world.subject.age_band.map(|b| match b {
            Band::Under13 => AgeBand::Under13,
            Band::From13To15 => AgeBand::From13To15,
            Band::From16To17 => AgeBand::From16To17,
            Band::Adult => AgeBand::Adult,
        }),
        guardians: GUARDIANS
            .iter()
            .take(2)
            .enumerate()
            .filter(|(i, _)| world.subject.guardians & (1 << i) != 0)
            .map(|(_, g)| (*g).to_owned())
            .collect(),
    };
    (policy, state)
}

/// The request's strings, as a caller sends them.
struct Request {
    caller: String,
    purpose: String,
    categories: Vec<String>,
    channel: Option<String>,
    jurisdiction: String,
}

fn request(world: &World) -> Request {
    let r = &world.request;
    let caller = match r.caller % 3 {
        0 => "c1",
        1 => "c2",
        _ => "ghost",
    };
    let purpose = PURPOSES
        .get(usize::from(r.purpose % 10))
        .copied()
        .unwrap_or("no.such.purpose");
    let categories = r
        .categories
        .iter()
        .take(4)
        .map(|c| {
            CATEGORIES
                .get(usize::from(c % 6))
                .copied()
                .unwrap_or("no.such.category")
                .to_owned()
        })
        .collect();
    let channel = match r.channel {
        ChannelSpec::Empty => None,
        ChannelSpec::Known(c) => Some(Channel::ALL[usize::from(c) % 4].as_str().to_owned()),
        ChannelSpec::Unknown => Some("fax".to_owned()),
    };
    let jurisdiction = match r.jurisdiction % 4 {
        0 => "",
        1 => "J",
        2 => "K",
        _ => "Q",
    };
    Request {
        caller: caller.into(),
        purpose: purpose.into(),
        categories,
        channel,
        jurisdiction: jurisdiction.into(),
    }
}

// -------------------------------------------------------------------------------- the reference

/// What the reference answers.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Rule 1: a caller bug, naming these fields (any of them may be the one reported).
    Invalid(Vec<String>),
    Decided(Expected),
}

#[derive(Debug, PartialEq)]
struct Expected {
    /// Per requested category (or the one purpose-level question): None when allowed.
    reasons: Vec<Option<&'static str>>,
    verdict: Verdict,
    reason: Option<&'static str>,
    personalization: Personalization,
    obligation: bool,
    conflict: bool,
    /// The latest `valid_until` the docs allow.
    valid_until_at_most: OffsetDateTime,
}

/// The reasons in the order docs/architecture.md "The reason people see" lists them, most
/// significant first.
const REASON_ORDER: [&str; 12] = [
    "CALLER_NOT_PERMITTED",
    "SUBJECT_ERASED",
    "PROCESSING_RESTRICTED",
    "WITHDRAWN",
    "REFUSED",
    "EXPIRED",
    "NOTICE_OUTDATED",
    "NO_CONSENT",
    "GPC_OPT_OUT",
    "MINOR_REQUIRES_GUARDIAN",
    "SENSITIVE_REQUIRES_EXPLICIT_CONSENT",
    "NOT_NEEDED_FOR_PURPOSE",
];

/// `a` is `b` or a dotted prefix of it (`a.b` covers `a.b.c`, not `a.bc`).
fn covers(a: &str, b: &str) -> bool {
    b == a || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('.'))
}

fn depth(key: &str) -> usize {
    key.split('.').count()
}

/// One record as the reference reads it.
struct Rec<'w> {
    spec: &'w RecordSpec,
    revision: u64,
    /// Its time in the subject's order.
    at: OffsetDateTime,
    purpose: &'static str,
    scope: Option<&'static str>,
}

impl Rec<'_> {
    /// Later is greater: by time, then revision.
    fn later_than(&self, other: &Rec<'_>) -> bool {
        (self.at, self.revision) > (other.at, other.revision)
    }

    fn live(&self) -> bool {
        expiry(self.spec).is_none_or(|e| e > now())
    }
}

/// The reference decision, from the world alone. Notes where the docs leave a choice open and
/// the reference follows the implementation:
/// - a channel named for a purpose that is not channel-scoped, or one the purpose does not
///   have, is rule 1's "unknown channel" (the proto: "empty selects the purpose's only
///   channel"; several channels and none named is a caller bug too);
/// - "the current major notice version" is the current notice of the record's own purpose (the
///   one the person was shown), and a version without a numeric major is outdated;
/// - rule 7 (minors) applies only where the legal basis needs consent or allows opting out, and
///   rule 8 (sensitive categories) everywhere but `essential`: an essential purpose needs no
///   consent to begin with;
/// - an age band counts by its youngest age (fail closed);
/// - the personalization level skips channel-scoped rungs (a level has no channel), and is
///   decided as a purpose-level question with the request's jurisdiction and GPC flag.
fn reference(world: &World, recs: &Records, req: &Request) -> Answer {
    // Rule 1.
    let mut invalid = Vec::new();
    let purpose_index = PURPOSES.iter().position(|p| *p == req.purpose);
    if purpose_index.is_none() {
        invalid.push("purpose".to_owned());
    }
    for (i, c) in req.categories.iter().enumerate() {
        if !CATEGORIES.contains(&c.as_str()) {
            invalid.push(format!("data_categories[{i}]"));
        }
    }
    let jurisdiction_index = match req.jurisdiction.as_str() {
        "" => Some(0),
        code => JURISDICTIONS.iter().position(|j| *j == code),
    };
    if jurisdiction_index.is_none() {
        invalid.push("context.jurisdiction".to_owned());
    }
    let channel = match purpose_index {
        None => None,
        Some(p) => {
            let channels = channels_of(world.purposes[p].channels);
            let named = req.channel.as_deref().filter(|c| !c.is_empty());
            match named {
                None if channels.len() <= 1 => channels.first().copied(),
                None => {
                    invalid.push("channel".to_owned());
                    None
                }
                Some(text) => match channels.iter().find(|c| c.as_str() == text) {
                    Some(c) => Some(*c),
                    None => {
                        invalid.push("channel".to_owned());
                        None
                    }
                },
            }
        }
    };
    let (Some(p), Some(j), true) = (purpose_index, jurisdiction_index, invalid.is_empty()) else {
        return Answer::Invalid(invalid);
    };

    let all = recs;
    let recs: Vec<Rec<'_>> = all
        .records
        .iter()
        .map(|placed| Rec {
            spec: &placed.spec,
            revision: placed.revision,
            at: placed.at,
            purpose: PURPOSES[usize::from(placed.spec.purpose)],
            scope: placed.spec.scope.map(|s| CATEGORIES[usize::from(s)]),
        })
        .collect();
    let ctx = Ctx {
        world,
        recs: &recs,
        gpc: gpc_signal(all, world.request.gpc),
        j,
    };
    let caller_index = CALLERS.iter().position(|c| *c == req.caller);
    let permitted = |purpose: usize| {
        caller_index.is_some_and(|c| {
            world.callers[c]
                .iter()
                .take(4)
                .any(|pattern| matches(*pattern, PURPOSES[purpose]))
        })
    };

    let questions: Vec<Option<&str>> = if req.categories.is_empty() {
        vec![None]
    } else {
        req.categories.iter().map(|c| Some(c.as_str())).collect()
    };
    let mut reasons = Vec::new();
    let mut conflict = false;
    let mut valid_until_at_most = now() + Duration::seconds(i64::from(ttl(world)));
    for question in questions {
        let answer = if permitted(p) {
            ctx.answer(p, channel, question)
        } else {
            Outcome::denied("CALLER_NOT_PERMITTED")
        };
        if answer.reason.is_none() {
            conflict |= answer.gpc_override;
            if let Some(e) = answer.behind.and_then(|r| expiry(r.spec)) {
                valid_until_at_most = valid_until_at_most.min(e);
            }
        }
        reasons.push(answer.reason);
    }
    let allowed = reasons.iter().filter(|r| r.is_none()).count();
    let verdict = if allowed == reasons.len() {
        Verdict::Allow
    } else if allowed == 0 {
        Verdict::Deny
    } else {
        Verdict::Partial
    };
    let reason = (verdict == Verdict::Deny)
        .then(|| {
            REASON_ORDER
                .into_iter()
                .find(|code| reasons.contains(&Some(*code)))
        })
        .flatten();
    let obligation = verdict != Verdict::Deny
        && world
            .exclude_third_party_for
            .iter()
            .take(4)
            .any(|pattern| matches(*pattern, PURPOSES[p]));

    // The level: the highest rung whose purpose this caller may ask for and the consents allow.
    let mut personalization = Personalization::Contextual;
    if world.subject.erased || world.subject.restricted {
        personalization = Personalization::Anonymous;
    } else {
        for rung in [Rung::Profiled, Rung::Limited, Rung::Segment] {
            // The first purpose in the tree to claim a rung holds it.
            let Some(holder) = world.purposes.iter().position(|q| q.rung == Some(rung)) else {
                continue;
            };
            if !permitted(holder) || !channels_of(world.purposes[holder].channels).is_empty() {
                continue;
            }
            let answer = ctx.answer(holder, None, None);
            if answer.reason.is_none() {
                if let Some(e) = answer.behind.and_then(|r| expiry(r.spec)) {
                    valid_until_at_most = valid_until_at_most.min(e);
                }
                personalization = match rung {
                    Rung::Profiled => Personalization::Profiled,
                    Rung::Limited => Personalization::Limited,
                    Rung::Segment => Personalization::Segment,
                };
                break;
            }
        }
    }
    Answer::Decided(Expected {
        reasons,
        verdict,
        reason,
        personalization,
        obligation,
        conflict,
        valid_until_at_most: valid_until_at_most.max(now()),
    })
}

/// The GPC signal in force, if any.
enum Gpc {
    /// Recorded at this (time, revision) in the subject's order.
    Recorded(OffsetDateTime, u64),
    /// Only on the request: a signal as of now, after every record.
    OnRequest,
}

/// The GPC signal in force: the recorded one, else the request's flag.
fn gpc_signal(recs: &Records, flag: bool) -> Option<Gpc> {
    match (recs.gpc, flag) {
        (Some(g), _) => Some(Gpc::Recorded(g.at, g.revision)),
        (None, true) => Some(Gpc::OnRequest),
        (None, false) => None,
    }
}

fn matches(pattern: PatternSpec, key: &str) -> bool {
    match pattern {
        PatternSpec::Any => true,
        PatternSpec::Subtree(i) => covers(PURPOSES[usize::from(i) % PURPOSES.len()], key),
        PatternSpec::Exact(i) => PURPOSES[usize::from(i) % PURPOSES.len()] == key,
    }
}

struct Ctx<'a, 'w> {
    world: &'w World,
    recs: &'a [Rec<'w>],
    gpc: Option<Gpc>,
    j: usize,
}

/// One question's answer: the reason it is denied (None: allowed), the record an allow rests
/// on, and whether an opt-in after the GPC signal decided.
struct Outcome<'a, 'w> {
    reason: Option<&'static str>,
    behind: Option<&'a Rec<'w>>,
    gpc_override: bool,
}

impl<'a, 'w> Outcome<'a, 'w> {
    fn denied(reason: &'static str) -> Self {
        Outcome {
            reason: Some(reason),
            behind: None,
            gpc_override: false,
        }
    }
}

impl<'a, 'w> Ctx<'a, 'w> {
    /// The legal basis of purpose `p` here: the override of the purpose or its nearest
    /// overridden ancestor, else its default.
    fn basis(&self, p: usize) -> Basis {
        let overrides: Vec<(&str, Basis)> = self.world.jurisdictions[self.j]
            .overrides
            .iter()
            .take(4)
            .map(|(i, b)| (PURPOSES[usize::from(*i) % PURPOSES.len()], *b))
            .collect();
        // A later override of the same purpose replaces an earlier one (a map): of the deepest,
        // the last.
        overrides
            .iter()
            .filter(|(key, _)| covers(key, PURPOSES[p]))
            .max_by_key(|(key, _)| depth(key))
            .map_or(self.world.purposes[p].basis, |(_, b)| *b)
    }

    /// Rules 3–8 for purpose `p`, on `channel`, for one category (None: the purpose alone).
    fn answer(
        &self,
        p: usize,
        channel: Option<Channel>,
        category: Option<&str>,
    ) -> Outcome<'a, 'w> {
        let world = self.world;
        let purpose = &world.purposes[p];
        let key = PURPOSES[p];
        // Rule 3: minimization.
        if let Some(c) = category
            && !categories_of(purpose.categories)
                .iter()
                .any(|needed| covers(needed, c))
        {
            return Outcome::denied("NOT_NEEDED_FOR_PURPOSE");
        }
        // Rule 4.
        let basis = self.basis(p);
        if world.subject.erased {
            return Outcome::denied("SUBJECT_ERASED");
        }
        if world.subject.restricted && basis != Basis::Essential {
            return Outcome::denied("PROCESSING_RESTRICTED");
        }
        let deciding = self.deciding(key, channel, category);
        let deny = |reason| Outcome {
            reason: Some(reason),
            behind: deciding,
            gpc_override: false,
        };
        // Rule 5.
        let needs_consent = matches!(basis, Basis::Consent | Basis::OptOut);
        if needs_consent {
            match deciding.map(|r| r.spec.state) {
                Some(State::Refused) => return deny("REFUSED"),
                Some(State::Withdrawn) => return deny("WITHDRAWN"),
                _ => {}
            }
        }
        if basis == Basis::Consent {
            let Some(r) = deciding else {
                return deny("NO_CONSENT");
            };
            if !r.live() {
                return deny("EXPIRED");
            }
            let shown = NOTICES[usize::from(r.spec.notice)];
            let major: Option<u32> = shown.split('.').next().and_then(|m| m.parse().ok());
            let current = notice_major(
                &world.purposes[PURPOSES
                    .iter()
                    .position(|k| *k == r.purpose)
                    .expect("a record's purpose is in the tree")],
            );
            if major != Some(current) {
                return deny("NOTICE_OUTDATED");
            }
        }
        // A live given record: what an opt-in, a guardian or an explicit consent rests on.
        let live_given = deciding.filter(|r| r.spec.state == State::Given && r.live());
        // Rule 6: GPC.
        let mut gpc_override = false;
        if world.gpc_rule
            && purpose.gpc_scoped
            && world.jurisdictions[self.j].honors_gpc
            && let Some(signal) = &self.gpc
        {
            let after_signal = |r: &Rec<'_>| match signal {
                Gpc::Recorded(at, revision) => (r.at, r.revision) > (*at, *revision),
                Gpc::OnRequest => false,
            };
            match live_given.filter(|r| r.spec.explicit && after_signal(r)) {
                Some(_) => gpc_override = true,
                None => return deny("GPC_OPT_OUT"),
            }
        }
        // Rule 7: minors.
        let minor = world.subject.age_band.is_some_and(|band| {
            let youngest = match band {
                Band::Under13 => 0,
                Band::From13To15 => 13,
                Band::From16To17 => 16,
                Band::Adult => 18,
            };
            youngest < consent_age(&world.jurisdictions[self.j])
        });
        if world.minors_rule && needs_consent && minor {
            let verified: Vec<&str> = GUARDIANS
                .iter()
                .take(2)
                .enumerate()
                .filter(|(i, _)| world.subject.guardians & (1 << i) != 0)
                .map(|(_, g)| *g)
                .collect();
            let backed = live_given.is_some_and(|r| {
                r.spec
                    .guardian
                    .is_some_and(|g| verified.contains(&GUARDIANS[usize::from(g)]))
            });
            if !backed {
                return deny("MINOR_REQUIRES_GUARDIAN");
            }
        }
        // Rule 8: sensitive categories need a live, explicit grant naming them.
        if let Some(c) = category {
            let i = CATEGORIES.iter().position(|k| *k == c).expect("validated");
            let sensitive = world.sensitive & (1 << i) != 0;
            if world.sensitive_rule && sensitive && basis != Basis::Essential {
                let named = live_given.is_some_and(|r| {
                    r.spec.explicit && r.scope.is_some_and(|scope| covers(scope, c))
                });
                if !named {
                    return deny("SENSITIVE_REQUIRES_EXPLICIT_CONSENT");
                }
            }
        }
        Outcome {
            reason: None,
            behind: deciding,
            gpc_override,
        }
    }

    /// docs/architecture.md "Which record decides": applicable records; refusals and
    /// withdrawals override older grants (by time, then revision) on their purpose or beneath;
    /// the most specific of what is left (deepest purpose, deepest scope, then the latest).
    fn deciding(
        &self,
        purpose: &str,
        channel: Option<Channel>,
        category: Option<&str>,
    ) -> Option<&'a Rec<'w>> {
        let applicable: Vec<&'a Rec<'w>> = self
            .recs
            .iter()
            .filter(|r| covers(r.purpose, purpose))
            .filter(|r| match r.spec.channel {
                None => true,
                Some(c) => channel == Some(Channel::ALL[usize::from(c)]),
            })
            .filter(|r| match (r.scope, category) {
                (None, _) => true,
                (Some(scope), Some(c)) => covers(scope, c),
                (Some(_), None) => false,
            })
            .collect();
        let is_no = |r: &Rec<'_>| r.spec.state != State::Given;
        let survivors = applicable
            .iter()
            .copied()
            .filter(|given| !given_overridden(given, &applicable, is_no));
        let mut best: Option<&'a Rec<'w>> = None;
        for r in survivors {
            let rank = |r: &Rec<'_>| (depth(r.purpose), r.scope.map_or(0, depth));
            if best.is_none_or(|b| rank(r) > rank(b) || (rank(r) == rank(b) && r.later_than(b))) {
                best = Some(r);
            }
        }
        best
    }
}

/// A `given` record is overridden when an applicable refusal or withdrawal on its purpose or an
/// ancestor is later than it in the order (time, then revision).
fn given_overridden(
    given: &Rec<'_>,
    applicable: &[&Rec<'_>],
    is_no: impl Fn(&Rec<'_>) -> bool,
) -> bool {
    given.spec.state == State::Given
        && applicable
            .iter()
            .any(|no| is_no(no) && no.later_than(given) && covers(no.purpose, given.purpose))
}

// -------------------------------------------------------------------------------- the target

fn run(data: &[u8]) {
    let Ok(world) = World::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let recs = records(&world);
    let (policy, state) = real_world(&world, &recs);
    let req = request(&world);
    let input = CheckInput {
        caller: &req.caller,
        purpose: &req.purpose,
        categories: &req.categories,
        channel: req.channel.as_deref(),
        jurisdiction: &req.jurisdiction,
        gpc: world.request.gpc,
        now: now(),
        explain: world.request.explain,
    };
    let real = decide(&policy, &input, &state);
    let expected = reference(&world, &recs, &req);
    match (&real, &expected) {
        (Err(e), Answer::Invalid(fields)) => assert!(
            fields.contains(&e.field()),
            "rule 1 named {:?}, the reference {fields:?}",
            e.field()
        ),
        (Ok(decision), Answer::Decided(expected)) => {
            agree(decision, expected);
            // The trace changes nothing else.
            let other = decide(
                &policy,
                &CheckInput {
                    explain: !input.explain,
                    ..input.clone()
                },
                &state,
            )
            .expect("decided once");
            assert_eq!(
                strip(decision.clone()),
                strip(other),
                "asking for the trace changed the decision"
            );
        }
        (real, expected) => panic!("rule 1 disagrees: real {real:?}, reference {expected:?}"),
    }
}

fn agree(d: &Decision, e: &Expected) {
    let reasons: Vec<Option<&str>> = d
        .categories
        .iter()
        .map(|c| c.denied.map(|r| r.code()))
        .collect();
    assert_eq!(reasons, e.reasons, "per-category reasons");
    assert_eq!(d.verdict, e.verdict, "verdict");
    assert_eq!(d.reason.map(|r| r.code()), e.reason, "top-level reason");
    assert_eq!(
        d.personalization, e.personalization,
        "personalization level"
    );
    assert_eq!(!d.obligations.is_empty(), e.obligation, "obligation");
    assert_eq!(!d.conflicts.is_empty(), e.conflict, "GPC conflict named");
    assert!(
        d.valid_until >= now() && d.valid_until <= e.valid_until_at_most,
        "valid_until {} outside [now, {}]",
        d.valid_until,
        e.valid_until_at_most
    );
}

/// A decision without what only the trace adds (the steps, the detail of allowed categories).
fn strip(mut d: Decision) -> Decision {
    d.explanation.clear();
    for c in &mut d.categories {
        if c.denied.is_none() {
            c.detail.clear();
        }
    }
    d
}
