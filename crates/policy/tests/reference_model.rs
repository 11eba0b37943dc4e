//! Property test: random sequences of consent operations (grant / refuse / withdraw, live or
//! imported with an old time, GPC, age band, guardian, restriction, erasure, check) are applied both
//! to a store-shaped `SubjectState` fed to `decide` and to an independent reference model kept in
//! this file (an append-only event log that is searched on every check); every check must give the
//! same per-category allow/deny and reasons.
//!
//! Order is by time, then revision: a live change is placed at its clock's time moved just past
//! every earlier change of the subject (so live changes are in revision order, whatever the
//! clock); an imported record keeps its original time, so one older than what the person chose
//! since lands in history instead of overriding it.
//!
//! A GPC flag on a check, for a subject with no GPC signal on, is recorded as a signal first (as
//! the consent service does) and both sides then decide from the recorded signal.

use consentgate_policy::{
    AgeBand, Channel, CheckInput, ConsentType, Decision, LegalBasis, Order, Pattern,
    Personalization, Policy, Reason, Record, RecordState, SubjectState, Verdict, decide,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::default_policy().unwrap_or_else(|e| panic!("the default policy must load: {e}"))
});

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

/// Live changes are recorded at `BASE` plus one second per revision (by a clock that may lag).
const BASE: OffsetDateTime = datetime!(2026-06-01 10:20 UTC);

/// The step by which a live change is moved past the subject's previous one.
const TICK: Duration = Duration::microseconds(1);

/// Purposes records are written for: chains of ancestors and descendants, GPC-scoped and opt-out
/// ones, channel-scoped ones, and ones with sensitive categories.
const RECORD_PURPOSES: &[&str] = &[
    "marketing",
    "marketing.communications",
    "marketing.communications.email",
    "marketing.communications.sms",
    "marketing.advertising",
    "marketing.advertising.first_party.targeted",
    "personalize",
    "personalize.content",
    "personalize.content.profiled",
    "personalize.content.limited",
    "personalize.content.segment",
    "third_party_sharing",
    "third_party_sharing.sale",
    "research",
];

/// Purposes checks ask about: the above, plus essential/contract ones, and an unknown one.
const CHECK_PURPOSES: &[&str] = &[
    "marketing",
    "marketing.communications",
    "marketing.communications.email",
    "marketing.communications.sms",
    "marketing.advertising",
    "marketing.advertising.first_party.targeted",
    "personalize",
    "personalize.content",
    "personalize.content.profiled",
    "personalize.content.limited",
    "personalize.content.segment",
    "third_party_sharing",
    "third_party_sharing.sale",
    "research",
    "essential.service",
    "essential.order_fulfillment",
    "analytics.reporting",
    "no.such.purpose",
];

const SCOPES: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("user"),
    Some("user.behavior"),
    Some("user.behavior.browsing_history"),
    Some("user.health"),
    Some("user.contact"),
    Some("user.preferences.stated"),
];

const CATEGORIES: &[&str] = &[
    "user.behavior.browsing_history",
    "user.behavior.purchase_history",
    "user.behavior",
    "user.health",
    "user.contact.email",
    "user.contact.phone",
    "user.preferences.stated",
    "user.device.cookie_id",
    "user.account",
    "user.name",
];

const CHANNELS: &[Option<Channel>] = &[
    None,
    None,
    Some(Channel::Email),
    Some(Channel::Sms),
    Some(Channel::Push),
];

const GUARDIANS: &[&str] = &["g1", "g2"];

#[derive(Debug, Clone, Copy)]
enum Notice {
    Current,
    /// Same major, another minor: still valid.
    OtherMinor,
    /// Another major: outdated.
    OtherMajor,
    /// Not a version at all.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Never,
    Past,
    Now,
    Future,
}

/// When a consent event happened, by its own clock.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Recorded live, by a clock this many seconds behind (replicas' clocks differ).
    Live { behind_seconds: i64 },
    /// Imported from another platform: its original time, possibly years ago or tied with a
    /// live change's time (`BASE` plus a whole number of seconds).
    Imported(OffsetDateTime),
}

#[derive(Debug, Clone)]
struct ConsentOp {
    when: When,
    state: RecordState,
    purpose: &'static str,
    channel: Option<Channel>,
    scope: Option<&'static str>,
    explicit: bool,
    notice: Notice,
    expiry: Expiry,
    guardian: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct CheckOp {
    caller: &'static str,
    purpose: &'static str,
    categories: Vec<&'static str>,
    channel: Option<&'static str>,
    jurisdiction: &'static str,
    gpc: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Consent(ConsentOp),
    Gpc(bool),
    Age(AgeBand),
    Guardian(&'static str),
    Restrict(bool),
    Erase,
    Check(CheckOp),
}

// ------------------------------------------------------------------------------------------------
// Strategies.

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        4 => Just(When::Live { behind_seconds: 0 }),
        1 => Just(When::Live { behind_seconds: 3 }),
        1 => Just(When::Live { behind_seconds: 600 }),
        2 => (1..=5i64).prop_map(|years| When::Imported(BASE - Duration::days(365 * years))),
        3 => (0..=30i64).prop_map(|s| When::Imported(BASE + Duration::seconds(s))),
    ]
}

fn consent_op() -> impl Strategy<Value = ConsentOp> {
    (
        when(),
        prop_oneof![
            3 => Just(RecordState::Given),
            1 => Just(RecordState::Refused),
            1 => Just(RecordState::Withdrawn),
        ],
        prop::sample::select(RECORD_PURPOSES),
        prop::sample::select(CHANNELS),
        prop::sample::select(SCOPES),
        any::<bool>(),
        prop_oneof![
            6 => Just(Notice::Current),
            2 => Just(Notice::OtherMinor),
            2 => Just(Notice::OtherMajor),
            1 => Just(Notice::Garbage),
        ],
        prop_oneof![
            5 => Just(Expiry::Never),
            2 => Just(Expiry::Past),
            1 => Just(Expiry::Now),
            2 => Just(Expiry::Future),
        ],
        prop::option::weighted(0.4, prop::sample::select(GUARDIANS)),
    )
        .prop_map(
            |(when, state, purpose, channel, scope, explicit, notice, expiry, guardian)| {
                ConsentOp {
                    when,
                    state,
                    purpose,
                    // Channels only make sense in the marketing subtree.
                    channel: if purpose.starts_with("marketing") {
                        channel
                    } else {
                        None
                    },
                    scope,
                    explicit,
                    notice,
                    expiry,
                    guardian,
                }
            },
        )
}

fn check_op() -> impl Strategy<Value = CheckOp> {
    (
        prop_oneof![
            6 => Just("profile-service"),
            2 => Just("recommendation-service"),
            1 => Just("mailer"),
            1 => Just("stranger"),
        ],
        prop::sample::select(CHECK_PURPOSES),
        prop::collection::vec(
            prop_oneof![
                30 => prop::sample::select(CATEGORIES),
                1 => Just("user.nope"),
            ],
            0..=3,
        ),
        prop_oneof![
            6 => Just(None),
            2 => Just(Some("email")),
            2 => Just(Some("sms")),
            1 => Just(Some("push")),
            1 => Just(Some("")),
            1 => Just(Some("fax")),
        ],
        prop_oneof![
            4 => Just("EU"),
            5 => Just("US-CA"),
            2 => Just("UK"),
            1 => Just(""),
            1 => Just("XX"),
        ],
        any::<bool>(),
    )
        .prop_map(
            |(caller, purpose, categories, channel, jurisdiction, gpc)| CheckOp {
                caller,
                purpose,
                categories,
                channel,
                jurisdiction,
                gpc,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        60 => consent_op().prop_map(Op::Consent),
        50 => check_op().prop_map(Op::Check),
        12 => prop_oneof![3 => Just(true), 1 => Just(false)].prop_map(Op::Gpc),
        6 => prop::sample::select(&[
            AgeBand::Under13,
            AgeBand::From13To15,
            AgeBand::From16To17,
            AgeBand::Adult,
        ][..])
        .prop_map(Op::Age),
        6 => prop::sample::select(GUARDIANS).prop_map(Op::Guardian),
        4 => any::<bool>().prop_map(Op::Restrict),
        1 => Just(Op::Erase),
    ]
}

// ------------------------------------------------------------------------------------------------
// Turning an operation into record fields (shared by the store and the model: this is the input,
// not the logic under test).

fn notice_text(purpose: &str, notice: Notice) -> String {
    let current = &POLICY.purposes[purpose].notice_version;
    match notice {
        Notice::Current => current.text.clone(),
        Notice::OtherMinor => format!("{}.9", current.major),
        Notice::OtherMajor => format!("{}.0", current.major + 1),
        Notice::Garbage => "draft".to_owned(),
    }
}

/// The time by the recording clock of a change at `revision`: for a consent event, when it was
/// collected.
fn clock_time(revision: u64, when: When) -> OffsetDateTime {
    match when {
        When::Live { behind_seconds } => BASE + Duration::seconds(revision as i64 - behind_seconds),
        When::Imported(at) => at,
    }
}

const LIVE: When = When::Live { behind_seconds: 0 };

fn expiry_time(expiry: Expiry) -> Option<OffsetDateTime> {
    match expiry {
        Expiry::Never => None,
        Expiry::Past => Some(NOW - Duration::hours(1)),
        Expiry::Now => Some(NOW),
        Expiry::Future => Some(NOW + Duration::seconds(90)),
    }
}

// ------------------------------------------------------------------------------------------------
// (a) The system under test: a SubjectState kept the way a store keeps it.

#[derive(Default)]
struct Store {
    state: SubjectState,
    /// The latest `ordered_at` of the subject's records and signals.
    latest: Option<OffsetDateTime>,
}

impl Store {
    /// Where a live change recorded at `clock` goes: just past everything recorded before.
    fn place_live(&mut self, clock: OffsetDateTime) -> OffsetDateTime {
        let at = self.latest.map_or(clock, |latest| clock.max(latest + TICK));
        self.latest = Some(at);
        at
    }

    fn apply(&mut self, op: &Op, revision: u64) {
        self.state.revision = revision;
        match op {
            Op::Consent(c) => {
                let collected_at = clock_time(revision, c.when);
                let ordered_at = match c.when {
                    When::Live { .. } => self.place_live(collected_at),
                    When::Imported(at) => {
                        self.latest = self.latest.max(Some(at));
                        at
                    }
                };
                let s = &mut self.state;
                let record = Record {
                    id: format!("r{revision}"),
                    purpose: c.purpose.to_owned(),
                    scope: c.scope.map(str::to_owned),
                    channel: c.channel,
                    state: c.state,
                    consent_type: if c.explicit {
                        ConsentType::Explicit
                    } else {
                        ConsentType::Expressed
                    },
                    notice_version: notice_text(c.purpose, c.notice),
                    collected_at,
                    expires_at: expiry_time(c.expiry),
                    guardian_ref: c.guardian.map(str::to_owned),
                    ordered_at,
                    revision,
                };
                // The current record per (purpose, channel, scope) is the latest in the order: an
                // import older than it goes to history only.
                let same_key = s.records.iter().position(|r| {
                    (r.purpose.as_str(), r.channel, r.scope.as_deref())
                        == (c.purpose, c.channel, c.scope)
                });
                match same_key {
                    Some(i) if s.records[i].order() > record.order() => {}
                    Some(i) => s.records[i] = record,
                    None => s.records.push(record),
                }
            }
            Op::Gpc(on) => {
                let clock = clock_time(revision, LIVE);
                let at = self.place_live(clock);
                let s = &mut self.state;
                s.gpc_signal = on.then_some(Order { at, revision });
                s.gpc_signal_at = on.then_some(clock);
            }
            Op::Age(band) => self.state.age_band = Some(*band),
            Op::Guardian(g) => {
                let s = &mut self.state;
                if !s.guardians.iter().any(|x| x == g) {
                    s.guardians.push((*g).to_owned());
                }
            }
            Op::Restrict(on) => self.state.restricted = *on,
            Op::Erase => self.state.erased = true,
            Op::Check(_) => unreachable!("checks do not change state"),
        }
    }

    fn check(&self, c: &CheckOp) -> Result<Decision, String> {
        let categories: Vec<String> = c.categories.iter().map(|x| (*x).to_owned()).collect();
        let input = CheckInput {
            caller: c.caller,
            purpose: c.purpose,
            categories: &categories,
            channel: c.channel,
            jurisdiction: c.jurisdiction,
            gpc: c.gpc,
            now: NOW,
            // The service's hot path: decisions without the trace.
            explain: false,
        };
        decide(&POLICY, &input, &self.state).map_err(|e| e.field())
    }
}

// ------------------------------------------------------------------------------------------------
// (b) The reference model: the full event log, and docs/architecture.md §3's rules written out plainly.

#[derive(Debug, Clone)]
enum Event {
    Consent(ConsentOp),
    Gpc(bool),
    Age(AgeBand),
    Guardian(&'static str),
    Restrict(bool),
    Erase,
}

/// One change of the log.
struct Entry {
    /// The revision it produced.
    revision: u64,
    /// Its time in the subject's order, for consent events and GPC signals.
    at: Option<OffsetDateTime>,
    event: Event,
}

#[derive(Default)]
struct Model {
    /// Every change, in the order it was made (by revision).
    log: Vec<Entry>,
}

/// What the model predicts for a check.
#[derive(Debug, PartialEq)]
struct Prediction {
    targets: Vec<(Option<String>, Option<Reason>)>,
    verdict: Verdict,
    reason: Option<Reason>,
    personalization: Personalization,
    obligations: Vec<(String, Vec<String>)>,
    revision: u64,
    valid_until: OffsetDateTime,
}

thread_local! {
    /// How often the model's replay struck a grant that would otherwise have decided.
    static SUBTREE_OVERRIDES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `a` is `b` or a dotted prefix of `b`.
fn covers(a: &str, b: &str) -> bool {
    b == a || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('.'))
}

fn depth(key: &str) -> usize {
    key.split('.').count()
}

fn youngest_age(band: AgeBand) -> u8 {
    match band {
        AgeBand::Under13 => 0,
        AgeBand::From13To15 => 13,
        AgeBand::From16To17 => 16,
        AgeBand::Adult => 18,
    }
}

fn channel_named(text: &str) -> Option<Channel> {
    match text {
        "email" => Some(Channel::Email),
        "sms" => Some(Channel::Sms),
        "push" => Some(Channel::Push),
        "in_app" => Some(Channel::InApp),
        _ => None,
    }
}

fn pattern_matches(pattern: &Pattern, key: &str) -> bool {
    match pattern {
        Pattern::Any => true,
        Pattern::Subtree(root) => covers(root, key),
        Pattern::Exact(exact) => exact == key,
    }
}

fn may_ask(caller: &str, purpose: &str) -> bool {
    POLICY
        .callers
        .get(caller)
        .is_some_and(|c| c.purposes.iter().any(|p| pattern_matches(p, purpose)))
}

/// A consent event that is still current (none later in time, then revision, for the same
/// purpose, channel, scope).
struct Current {
    revision: u64,
    at: OffsetDateTime,
    op: ConsentOp,
}

impl Current {
    /// Later in the subject's order is greater: time first, then revision.
    fn order(&self) -> (OffsetDateTime, u64) {
        (self.at, self.revision)
    }
    fn notice_major(&self) -> Option<u32> {
        notice_text(self.op.purpose, self.op.notice)
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
    }
    fn expired(&self) -> bool {
        expiry_time(self.op.expiry).is_some_and(|t| t <= NOW)
    }
    /// `given`, and not (yet) `expired` by time.
    fn live_given(&self) -> bool {
        self.op.state == RecordState::Given && !self.expired()
    }
}

/// What the model knows about the subject at one point: everything derived by searching the log.
struct Snapshot {
    revision: u64,
    current: Vec<Current>,
    /// The (time, revision) of the GPC signal that is on.
    gpc_signal: Option<(OffsetDateTime, u64)>,
    age: Option<AgeBand>,
    guardians: Vec<&'static str>,
    restricted: bool,
    erased: bool,
}

impl Model {
    fn apply(&mut self, op: &Op, revision: u64) {
        let event = match op {
            Op::Consent(c) => Event::Consent(c.clone()),
            Op::Gpc(on) => Event::Gpc(*on),
            Op::Age(band) => Event::Age(*band),
            Op::Guardian(g) => Event::Guardian(g),
            Op::Restrict(on) => Event::Restrict(*on),
            Op::Erase => Event::Erase,
            Op::Check(_) => return,
        };
        // An import keeps its own time; a consent event or signal made live is placed at
        // max(its clock, the latest time logged so far + one tick).
        let clock = match &event {
            Event::Consent(c) => Some(clock_time(revision, c.when)),
            Event::Gpc(_) => Some(clock_time(revision, LIVE)),
            _ => None,
        };
        let imported = matches!(&event, Event::Consent(c) if matches!(c.when, When::Imported(_)));
        let latest = self.log.iter().filter_map(|e| e.at).max();
        let at = clock.map(|clock| match latest {
            Some(latest) if !imported => clock.max(latest + TICK),
            _ => clock,
        });
        self.log.push(Entry {
            revision,
            at,
            event,
        });
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot_ordered(|at| at)
    }

    /// The snapshot of an implementation that orders by revision alone (every time the same):
    /// what this test must tell apart from the rules.
    fn snapshot_by_revision(&self) -> Snapshot {
        self.snapshot_ordered(|_| BASE)
    }

    fn snapshot_ordered(&self, time: impl Fn(OffsetDateTime) -> OffsetDateTime) -> Snapshot {
        // Of the consent events for one (purpose, channel, scope), the latest by time, then
        // revision, is current.
        let consents: Vec<Current> = self
            .log
            .iter()
            .filter_map(|e| match (&e.event, e.at.map(&time)) {
                (Event::Consent(c), Some(at)) => Some(Current {
                    revision: e.revision,
                    at,
                    op: c.clone(),
                }),
                _ => None,
            })
            .collect();
        let superseded: Vec<bool> = consents
            .iter()
            .map(|c| {
                consents.iter().any(|l| {
                    (l.op.purpose, l.op.channel, l.op.scope)
                        == (c.op.purpose, c.op.channel, c.op.scope)
                        && l.order() > c.order()
                })
            })
            .collect();
        let current = consents
            .into_iter()
            .zip(superseded)
            .filter_map(|(c, superseded)| (!superseded).then_some(c))
            .collect();
        let last = |f: &dyn Fn(&Event) -> bool| self.log.iter().rev().find(|e| f(&e.event));
        Snapshot {
            revision: self.log.last().map_or(0, |e| e.revision),
            current,
            gpc_signal: match last(&|e| matches!(e, Event::Gpc(_))) {
                Some(Entry {
                    revision,
                    at: Some(at),
                    event: Event::Gpc(true),
                }) => Some((time(*at), *revision)),
                _ => None,
            },
            age: match last(&|e| matches!(e, Event::Age(_))) {
                Some(Entry {
                    event: Event::Age(band),
                    ..
                }) => Some(*band),
                _ => None,
            },
            guardians: self
                .log
                .iter()
                .filter_map(|e| match e.event {
                    Event::Guardian(g) => Some(g),
                    _ => None,
                })
                .collect(),
            restricted: matches!(
                last(&|e| matches!(e, Event::Restrict(_))),
                Some(Entry {
                    event: Event::Restrict(true),
                    ..
                })
            ),
            erased: self.log.iter().any(|e| matches!(e.event, Event::Erase)),
        }
    }
}

/// Everything fixed for one check.
#[derive(Clone, Copy)]
struct Ask<'a> {
    snap: &'a Snapshot,
    caller: &'a str,
    jurisdiction: &'a consentgate_policy::Jurisdiction,
    channel: Option<Channel>,
    gpc: bool,
}

impl Ask<'_> {
    fn basis(&self, purpose: &str) -> LegalBasis {
        // The jurisdiction's override for the longest prefix of the purpose, else the default.
        self.jurisdiction
            .legal_basis
            .iter()
            .filter(|(k, _)| covers(k, purpose))
            .max_by_key(|(k, _)| depth(k))
            .map_or(POLICY.purposes[purpose].default_basis, |(_, b)| *b)
    }

    /// The record that decides, found by replaying history: take the current records that apply
    /// (purpose is the asked one or an ancestor; no channel or the asked channel; no scope or a
    /// scope covering the category) oldest first, by time then revision; each refusal or
    /// withdrawal strikes every standing grant on its own purpose or beneath it; every record
    /// then stands. Of what stands at the end, the one with the deepest purpose, then the deepest
    /// scope, then the latest (time, revision) decides.
    fn deciding(&self, purpose: &str, category: Option<&str>) -> Option<&Current> {
        let mut applicable: Vec<&Current> = self
            .snap
            .current
            .iter()
            .filter(|r| covers(r.op.purpose, purpose))
            .filter(|r| r.op.channel.is_none() || r.op.channel == self.channel)
            .filter(|r| match (r.op.scope, category) {
                (None, _) => true,
                (Some(s), Some(c)) => covers(s, c),
                (Some(_), None) => false,
            })
            .collect();
        applicable.sort_by_key(|r| r.order());
        let rank = |r: &&Current| (depth(r.op.purpose), r.op.scope.map_or(0, depth), r.order());
        let most_specific = |rs: &[&Current]| rs.iter().max_by_key(|r| rank(r)).map(|r| r.revision);
        let without_striking = most_specific(&applicable);
        let mut standing: Vec<&Current> = Vec::new();
        for r in applicable {
            if r.op.state != RecordState::Given {
                standing.retain(|g| {
                    !(g.op.state == RecordState::Given && covers(r.op.purpose, g.op.purpose))
                });
            }
            standing.push(r);
        }
        if most_specific(&standing) != without_striking {
            SUBTREE_OVERRIDES.with(|n| n.set(n.get() + 1));
        }
        standing.sort_by_key(rank);
        standing.pop()
    }

    /// docs/architecture.md §3 rules 3 to 8 for one target. Returns the denial (None: allowed) and, for an allow,
    /// the expiry of the record behind it.
    fn judge(
        &self,
        purpose: &str,
        category: Option<&str>,
    ) -> (Option<Reason>, Option<OffsetDateTime>) {
        let p = &POLICY.purposes[purpose];
        let snap = self.snap;
        if let Some(c) = category
            && !p.categories.iter().any(|needed| covers(needed, c))
        {
            return (Some(Reason::NotNeededForPurpose), None);
        }
        let basis = self.basis(purpose);
        if snap.erased {
            return (Some(Reason::SubjectErased), None);
        }
        if snap.restricted && basis != LegalBasis::Essential {
            return (Some(Reason::ProcessingRestricted), None);
        }
        let record = self.deciding(purpose, category);
        let deny = |reason| (Some(reason), None);

        if matches!(basis, LegalBasis::Consent | LegalBasis::OptOut) {
            match record.map(|r| r.op.state) {
                Some(RecordState::Refused) => return deny(Reason::Refused),
                Some(RecordState::Withdrawn) => return deny(Reason::Withdrawn),
                _ => {}
            }
        }
        if basis == LegalBasis::Consent {
            let Some(r) = record else {
                return deny(Reason::NoConsent);
            };
            if r.expired() {
                return deny(Reason::Expired);
            }
            if r.notice_major() != Some(POLICY.purposes[r.op.purpose].notice_version.major) {
                return deny(Reason::NoticeOutdated);
            }
        }

        let gpc_applies = POLICY.rules.honor_gpc && p.gpc_scoped && self.jurisdiction.honors_gpc;
        if gpc_applies && (snap.gpc_signal.is_some() || self.gpc) {
            // Only an explicit, live grant made after a recorded signal opts back in.
            let opted_back_in = snap.gpc_signal.is_some_and(|signal| {
                record.is_some_and(|r| r.live_given() && r.op.explicit && r.order() > signal)
            });
            if !opted_back_in {
                return deny(Reason::GpcOptOut);
            }
        }

        let minor = snap
            .age
            .is_some_and(|band| youngest_age(band) < self.jurisdiction.consent_age);
        if POLICY.rules.minors_require_guardian
            && minor
            && matches!(basis, LegalBasis::Consent | LegalBasis::OptOut)
        {
            let backed = record.is_some_and(|r| {
                r.live_given() && r.op.guardian.is_some_and(|g| snap.guardians.contains(&g))
            });
            if !backed {
                return deny(Reason::MinorRequiresGuardian);
            }
        }

        if let Some(c) = category
            && POLICY.rules.sensitive_requires_explicit_consent
            && POLICY.categories[c].sensitive
            && basis != LegalBasis::Essential
        {
            let named = record.is_some_and(|r| {
                r.live_given() && r.op.explicit && r.op.scope.is_some_and(|s| covers(s, c))
            });
            if !named {
                return deny(Reason::SensitiveRequiresExplicitConsent);
            }
        }
        (None, record.and_then(|r| expiry_time(r.op.expiry)))
    }

    /// The highest rung allowed, and the expiry of the record behind it.
    fn personalization(&self) -> (Personalization, Option<OffsetDateTime>) {
        if self.snap.erased || self.snap.restricted {
            return (Personalization::Anonymous, None);
        }
        let plain = Ask {
            channel: None,
            ..*self
        };
        POLICY
            .purposes
            .values()
            .filter_map(|p| p.personalization.map(|rung| (rung, p)))
            .filter(|(_, p)| may_ask(self.caller, &p.key) && p.channels.is_empty())
            .filter_map(|(rung, p)| match plain.judge(&p.key, None) {
                (None, expiry) => Some((rung, expiry)),
                (Some(_), _) => None,
            })
            .max_by_key(|(rung, _)| *rung)
            .unwrap_or((Personalization::Contextual, None))
    }
}

impl Model {
    fn check(&self, snap: &Snapshot, c: &CheckOp) -> Result<Prediction, String> {
        // Rule 1: requests naming unknown things are errors, in field order.
        let Some(purpose) = POLICY.purposes.get(c.purpose) else {
            return Err("purpose".into());
        };
        if let Some(i) = c
            .categories
            .iter()
            .position(|k| !POLICY.categories.contains_key(*k))
        {
            return Err(format!("data_categories[{i}]"));
        }
        let code = if c.jurisdiction.is_empty() {
            POLICY.default_jurisdiction.as_str()
        } else {
            c.jurisdiction
        };
        let Some(jurisdiction) = POLICY.jurisdictions.get(code) else {
            return Err("context.jurisdiction".into());
        };
        let channel = match c.channel.filter(|t| !t.is_empty()) {
            None => match purpose.channels.as_slice() {
                [] => None,
                [only] => Some(*only),
                _ => return Err("channel".into()),
            },
            Some(text) => match channel_named(text) {
                Some(ch) if purpose.channels.contains(&ch) => Some(ch),
                _ => return Err("channel".into()),
            },
        };
        let ask = Ask {
            snap,
            caller: c.caller,
            jurisdiction,
            channel,
            gpc: c.gpc,
        };

        let asked: Vec<Option<&str>> = if c.categories.is_empty() {
            vec![None]
        } else {
            c.categories.iter().map(|k| Some(*k)).collect()
        };
        let permitted = may_ask(c.caller, c.purpose);
        let mut valid_until = NOW + Duration::seconds(i64::from(POLICY.decision_ttl_seconds));
        let mut targets = Vec::new();
        for category in asked {
            let (denied, expiry) = if permitted {
                ask.judge(c.purpose, category)
            } else {
                (Some(Reason::CallerNotPermitted), None)
            };
            if let Some(t) = expiry {
                valid_until = valid_until.min(t);
            }
            targets.push((category.map(str::to_owned), denied));
        }
        let (personalization, level_expiry) = ask.personalization();
        if let Some(t) = level_expiry {
            valid_until = valid_until.min(t);
        }
        let valid_until = valid_until.max(NOW);
        let denials: Vec<Reason> = targets.iter().filter_map(|(_, d)| *d).collect();
        let verdict = if denials.is_empty() {
            Verdict::Allow
        } else if denials.len() == targets.len() {
            Verdict::Deny
        } else {
            Verdict::Partial
        };
        // The reason people see: the denial of the earliest rule, minimization only when nothing
        // else denied; within the legal basis, what the person said before what lapsed.
        let rank = |r: &Reason| match r {
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
        };
        let reason = (verdict == Verdict::Deny)
            .then(|| denials.iter().copied().min_by_key(rank))
            .flatten();
        let drops_third_party = POLICY
            .rules
            .exclude_third_party_sources_for
            .iter()
            .any(|pattern| pattern_matches(pattern, c.purpose));
        let obligations = if verdict != Verdict::Deny && drops_third_party {
            vec![("exclude_sources".to_owned(), vec!["third_party".to_owned()])]
        } else {
            Vec::new()
        };
        Ok(Prediction {
            targets,
            verdict,
            reason,
            personalization,
            obligations,
            revision: snap.revision,
            valid_until,
        })
    }
}

fn observed(d: &Decision) -> Prediction {
    Prediction {
        targets: d
            .categories
            .iter()
            .map(|c| (c.category.clone(), c.denied))
            .collect(),
        verdict: d.verdict,
        reason: d.reason,
        personalization: d.personalization,
        obligations: d
            .obligations
            .iter()
            .map(|o| (o.kind.to_owned(), o.values.clone()))
            .collect(),
        revision: d.revision,
        valid_until: d.valid_until,
    }
}

/// Every check the final sweep makes: each check purpose, in each jurisdiction, with and without a
/// GPC flag, about the purpose alone and about several categories, on each of the purpose's channels.
fn sweep() -> Vec<CheckOp> {
    let mut checks = Vec::new();
    for purpose in CHECK_PURPOSES.iter().copied() {
        let mut channels: Vec<Option<&'static str>> = vec![None];
        if let Some(p) = POLICY.purposes.get(purpose) {
            channels.extend(p.channels.iter().map(|c| Some(c.as_str())));
        }
        for jurisdiction in ["EU", "US-CA", "UK"] {
            for gpc in [false, true] {
                for categories in [
                    vec![],
                    vec![
                        "user.behavior.browsing_history",
                        "user.health",
                        "user.contact.email",
                        "user.preferences.stated",
                        "user.device.cookie_id",
                    ],
                ] {
                    for channel in &channels {
                        checks.push(CheckOp {
                            caller: "profile-service",
                            purpose,
                            categories: categories.clone(),
                            channel: *channel,
                            jurisdiction,
                            gpc,
                        });
                    }
                }
            }
        }
    }
    for caller in ["recommendation-service", "mailer"] {
        checks.push(CheckOp {
            caller,
            purpose: "personalize.content.profiled",
            categories: vec!["user.behavior.browsing_history"],
            channel: None,
            jurisdiction: "EU",
            gpc: false,
        });
    }
    checks
}

/// What came out of the run, to make sure the generator exercises every rule.
#[derive(Default)]
struct Coverage {
    outcomes: BTreeMap<String, usize>,
    checks: usize,
    /// GPC flags on checks that were recorded as signals.
    gpc_flags_recorded: usize,
    /// Allowed checks decided by an explicit grant recorded after a GPC signal.
    gpc_overrides: usize,
    /// Whether the current sequence had a check that an implementation ordering by revision
    /// alone would answer otherwise (and one where GPC_OPT_OUT is part of the difference).
    revision_order_fails: bool,
    revision_order_fails_gpc: bool,
    /// How many sequences had such a check.
    revision_order_sequences: usize,
    revision_order_gpc_sequences: usize,
}

fn compare(
    store: &Store,
    model: &Model,
    snap: &Snapshot,
    check: &CheckOp,
    coverage: &RefCell<Coverage>,
) -> Result<(), String> {
    let want = model.check(snap, check);
    let got = store.check(check);
    {
        let mut cov = coverage.borrow_mut();
        cov.checks += 1;
        let keys: Vec<String> = match &got {
            Err(field) => vec![format!(
                "error {}",
                field.split('[').next().unwrap_or(field)
            )],
            Ok(d) => {
                let mut k: Vec<String> = d
                    .categories
                    .iter()
                    .map(|c| c.denied.map_or("allow".to_owned(), |r| r.code().to_owned()))
                    .collect();
                k.push(format!("verdict {:?}", d.verdict));
                if !d.conflicts.is_empty() {
                    cov.gpc_overrides += 1;
                }
                k.push(format!("level {:?}", d.personalization));
                k
            }
        };
        for key in keys {
            *cov.outcomes.entry(key).or_default() += 1;
        }
    }
    match (want, got) {
        (Err(a), Err(b)) if a == b => Ok(()),
        (Ok(a), Ok(d)) if a == observed(&d) => Ok(()),
        (Ok(a), Ok(d)) => Err(format!(
            "check {check:?}\n  model:  {a:?}\n  decide: {:?}\n  details: {:?}",
            observed(&d),
            d.categories.iter().map(|c| &c.detail).collect::<Vec<_>>()
        )),
        (a, b) => Err(format!(
            "check {check:?}\n  model:  {:?}\n  decide: {:?}",
            a.map(|p| p.targets),
            b.map(|d| observed(&d).targets)
        )),
    }
}

/// One check as the consent service makes it: a valid check carrying a GPC flag, for a subject
/// with no GPC signal on (and not erased), first records the flag as a signal at a new revision;
/// repeated flags record nothing more. Then both sides decide.
fn check_step(
    store: &mut Store,
    model: &mut Model,
    revision: &mut u64,
    check: &CheckOp,
    coverage: &RefCell<Coverage>,
) -> Result<(), String> {
    let snap = model.snapshot();
    if check.gpc && snap.gpc_signal.is_none() && !snap.erased && model.check(&snap, check).is_ok() {
        *revision += 1;
        store.apply(&Op::Gpc(true), *revision);
        model.apply(&Op::Gpc(true), *revision);
        coverage.borrow_mut().gpc_flags_recorded += 1;
    }
    let snap = model.snapshot();
    compare(store, model, &snap, check, coverage)?;
    // Would ordering by revision alone answer otherwise? Only imports can make it differ.
    let imported = model
        .log
        .iter()
        .any(|e| matches!(&e.event, Event::Consent(c) if matches!(c.when, When::Imported(_))));
    let known = {
        let cov = coverage.borrow();
        cov.revision_order_fails && cov.revision_order_fails_gpc
    };
    if !imported || known {
        return Ok(());
    }
    // (Not counted in the model's statistics.)
    let subtree_overrides = SUBTREE_OVERRIDES.with(std::cell::Cell::get);
    let rules = model.check(&snap, check);
    let by_revision = model.check(&model.snapshot_by_revision(), check);
    SUBTREE_OVERRIDES.with(|n| n.set(subtree_overrides));
    if let (Ok(a), Ok(b)) = (&rules, &by_revision)
        && a != b
    {
        let gpc = |p: &Prediction| p.targets.iter().any(|t| t.1 == Some(Reason::GpcOptOut));
        let mut cov = coverage.borrow_mut();
        cov.revision_order_fails = true;
        cov.revision_order_fails_gpc |= gpc(a) != gpc(b);
    }
    Ok(())
}

fn run_sequence(ops: &[Op], coverage: &RefCell<Coverage>) -> Result<(), TestCaseError> {
    let result = run_ops(ops, coverage);
    let mut cov = coverage.borrow_mut();
    cov.revision_order_sequences += usize::from(std::mem::take(&mut cov.revision_order_fails));
    cov.revision_order_gpc_sequences +=
        usize::from(std::mem::take(&mut cov.revision_order_fails_gpc));
    result
}

fn run_ops(ops: &[Op], coverage: &RefCell<Coverage>) -> Result<(), TestCaseError> {
    let mut store = Store::default();
    let mut model = Model::default();
    let mut revision = 0;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Check(check) => {
                check_step(&mut store, &mut model, &mut revision, check, coverage)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
            }
            other => {
                revision += 1;
                store.apply(other, revision);
                model.apply(other, revision);
            }
        }
    }
    for check in sweep() {
        check_step(&mut store, &mut model, &mut revision, &check, coverage)
            .map_err(|e| TestCaseError::fail(format!("final sweep: {e}")))?;
    }
    Ok(())
}

#[test]
fn decide_agrees_with_the_reference_model() {
    let config = ProptestConfig {
        cases: 1500,
        // No regression files next to the sources; a failure prints its minimal sequence.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let coverage = RefCell::new(Coverage::default());
    let strategy = prop::collection::vec(op(), 1..40);
    if let Err(e) = runner.run(&strategy, |ops| run_sequence(&ops, &coverage)) {
        panic!("decide and the reference model diverge: {e}");
    }

    // The generator must reach every rule, or agreement would mean little.
    let cov = coverage.into_inner();
    let mut wanted: Vec<String> = [
        "CALLER_NOT_PERMITTED",
        "NOT_NEEDED_FOR_PURPOSE",
        "SUBJECT_ERASED",
        "PROCESSING_RESTRICTED",
        "NO_CONSENT",
        "REFUSED",
        "WITHDRAWN",
        "EXPIRED",
        "NOTICE_OUTDATED",
        "GPC_OPT_OUT",
        "MINOR_REQUIRES_GUARDIAN",
        "SENSITIVE_REQUIRES_EXPLICIT_CONSENT",
        "allow",
        "verdict Allow",
        "verdict Partial",
        "verdict Deny",
        "level Anonymous",
        "level Contextual",
        "level Segment",
        "level Limited",
        "level Profiled",
        "error purpose",
        "error data_categories",
        "error context.jurisdiction",
        "error channel",
    ]
    .map(str::to_owned)
    .to_vec();
    wanted.retain(|k| cov.outcomes.get(k).copied().unwrap_or(0) < 5);
    let subtree_overrides = SUBTREE_OVERRIDES.with(std::cell::Cell::get);
    let (by_revision, by_revision_gpc) = (
        cov.revision_order_sequences,
        cov.revision_order_gpc_sequences,
    );
    eprintln!(
        "{} checks; the subtree rule decided {subtree_overrides} targets; ordering by revision \
         alone would fail {by_revision} sequences ({by_revision_gpc} on GPC_OPT_OUT)",
        cov.checks
    );
    assert!(
        by_revision >= 80 && by_revision_gpc >= 10,
        "ordering by revision alone would answer otherwise in only {by_revision} sequences \
         ({by_revision_gpc} on GPC_OPT_OUT): too few for agreement to cover imports"
    );
    assert!(
        subtree_overrides >= 100 && cov.gpc_flags_recorded >= 100 && cov.gpc_overrides >= 5,
        "the time-ordered subtree rule decided {subtree_overrides} targets, {} GPC flags were \
         recorded and {} allows overrode a GPC signal: too few for agreement to mean much",
        cov.gpc_flags_recorded,
        cov.gpc_overrides
    );
    assert!(
        wanted.is_empty(),
        "outcomes seen fewer than 5 times in {} checks: {wanted:?}\nall outcomes: {:?}",
        cov.checks,
        cov.outcomes
    );
}
