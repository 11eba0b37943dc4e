//! Table-driven tests of `decide` against the shipped default policy: every reason code, the order of
//! the decision rules (docs/architecture.md §3), purpose/scope/channel specificity, expiry, notice versions, GPC,
//! minors, sensitive categories, imported records (ordered by time, then revision), verdicts,
//! obligations, personalization levels and `valid_until`.

use consentgate_policy::{
    AgeBand, Channel, CheckInput, ConsentType, Decision, DecisionError, Order, Personalization,
    Policy, Reason, Record, RecordState, SubjectState, Verdict, decide,
};
use std::collections::BTreeSet;
use std::sync::LazyLock;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::default_policy().unwrap_or_else(|e| panic!("the default policy must load: {e}"))
});

/// The time every check is made at (unless a row says otherwise).
const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

/// The default policy's decision TTL, as a `Duration`.
const TTL: Duration = Duration::seconds(300);

// ------------------------------------------------------------------------------------------------
// Records and subject states.

fn record(state: RecordState, purpose: &str, revision: u64) -> Record {
    let notice = POLICY
        .purposes
        .get(purpose)
        .unwrap_or_else(|| panic!("test bug: no purpose {purpose:?} in the default policy"))
        .notice_version
        .text
        .clone();
    Record {
        id: format!("rec-{revision}"),
        purpose: purpose.to_owned(),
        scope: None,
        channel: None,
        state,
        consent_type: ConsentType::Explicit,
        notice_version: notice,
        collected_at: live_at(revision),
        expires_at: None,
        guardian_ref: None,
        // Recorded live: in the subject's order by revision.
        ordered_at: live_at(revision),
        revision,
    }
}

/// When the change with this revision was recorded live: one minute per revision before NOW, so
/// that later revisions were collected later.
fn live_at(revision: u64) -> OffsetDateTime {
    NOW - Duration::minutes(i64::try_from(1000 - revision.min(1000)).unwrap_or(0))
}

/// An explicit `given` record under the purpose's current notice, no scope, no channel, no expiry.
fn given(purpose: &str, revision: u64) -> Record {
    record(RecordState::Given, purpose, revision)
}

fn refused(purpose: &str, revision: u64) -> Record {
    record(RecordState::Refused, purpose, revision)
}

fn withdrawn(purpose: &str, revision: u64) -> Record {
    record(RecordState::Withdrawn, purpose, revision)
}

trait RecordExt {
    fn scope(self, scope: &str) -> Self;
    fn channel(self, channel: Channel) -> Self;
    fn expressed(self) -> Self;
    fn notice(self, version: &str) -> Self;
    fn expires(self, at: OffsetDateTime) -> Self;
    fn guardian(self, guardian: &str) -> Self;
    fn imported(self, collected_at: OffsetDateTime) -> Self;
}

impl RecordExt for Record {
    fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }
    fn channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }
    fn expressed(mut self) -> Self {
        self.consent_type = ConsentType::Expressed;
        self
    }
    fn notice(mut self, version: &str) -> Self {
        self.notice_version = version.to_owned();
        self
    }
    fn expires(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }
    fn guardian(mut self, guardian: &str) -> Self {
        self.guardian_ref = Some(guardian.to_owned());
        self
    }
    /// Imported from another platform: ordered by its original time, whatever its revision.
    fn imported(mut self, collected_at: OffsetDateTime) -> Self {
        self.collected_at = collected_at;
        self.ordered_at = collected_at;
        self
    }
}

/// A subject with these current records; its revision is the latest record's.
fn subject(records: Vec<Record>) -> SubjectState {
    SubjectState {
        revision: records.iter().map(|r| r.revision).max().unwrap_or(0),
        records,
        ..SubjectState::default()
    }
}

trait StateExt {
    fn erased(self) -> Self;
    fn restricted(self) -> Self;
    fn gpc_at(self, revision: u64) -> Self;
    fn age(self, band: AgeBand) -> Self;
    fn verified_guardian(self, guardian: &str) -> Self;
}

impl StateExt for SubjectState {
    fn erased(mut self) -> Self {
        self.erased = true;
        self
    }
    fn restricted(mut self) -> Self {
        self.restricted = true;
        self
    }
    fn gpc_at(mut self, revision: u64) -> Self {
        self.gpc_signal = Some(Order {
            at: live_at(revision),
            revision,
        });
        self.gpc_signal_at = Some(live_at(revision));
        self.revision = self.revision.max(revision);
        self
    }
    fn age(mut self, band: AgeBand) -> Self {
        self.age_band = Some(band);
        self
    }
    fn verified_guardian(mut self, guardian: &str) -> Self {
        self.guardians.push(guardian.to_owned());
        self
    }
}

// ------------------------------------------------------------------------------------------------
// Table rows.

/// What a row expects.
enum Expect {
    /// One entry per requested category (or one for the purpose alone): None = allowed.
    Verdicts(Vec<Option<Reason>>),
    /// `decide` fails with an error about this request field.
    Error(&'static str),
}

struct Case {
    name: &'static str,
    caller: &'static str,
    purpose: &'static str,
    categories: Vec<String>,
    channel: Option<&'static str>,
    jurisdiction: &'static str,
    gpc: bool,
    now: OffsetDateTime,
    state: SubjectState,
    expect: Expect,
}

/// A row asking `profile-service` (allowed every purpose) about `purpose` in the EU, at NOW, for an
/// unknown subject. Finish it with `allow`, `deny`, `each` or `err`.
fn case(name: &'static str, purpose: &'static str, categories: &[&str]) -> Case {
    Case {
        name,
        caller: "profile-service",
        purpose,
        categories: categories.iter().map(|c| (*c).to_owned()).collect(),
        channel: None,
        jurisdiction: "EU",
        gpc: false,
        now: NOW,
        state: SubjectState::default(),
        expect: Expect::Verdicts(Vec::new()),
    }
}

impl Case {
    fn caller(mut self, caller: &'static str) -> Self {
        self.caller = caller;
        self
    }
    fn channel(mut self, channel: &'static str) -> Self {
        self.channel = Some(channel);
        self
    }
    fn jur(mut self, jurisdiction: &'static str) -> Self {
        self.jurisdiction = jurisdiction;
        self
    }
    fn gpc(mut self) -> Self {
        self.gpc = true;
        self
    }
    fn at(mut self, now: OffsetDateTime) -> Self {
        self.now = now;
        self
    }
    fn state(mut self, state: SubjectState) -> Self {
        self.state = state;
        self
    }
    fn targets(&self) -> usize {
        self.categories.len().max(1)
    }
    /// Every target allowed.
    fn allow(mut self) -> Self {
        self.expect = Expect::Verdicts(vec![None; self.targets()]);
        self
    }
    /// Every target denied with `reason`.
    fn deny(mut self, reason: Reason) -> Self {
        self.expect = Expect::Verdicts(vec![Some(reason); self.targets()]);
        self
    }
    /// One expectation per target, in request order.
    fn each(mut self, verdicts: &[Option<Reason>]) -> Self {
        assert_eq!(
            verdicts.len(),
            self.targets(),
            "test bug in row {:?}: wrong number of expectations",
            self.name
        );
        self.expect = Expect::Verdicts(verdicts.to_vec());
        self
    }
    fn err(mut self, field: &'static str) -> Self {
        self.expect = Expect::Error(field);
        self
    }

    fn run(&self) -> Result<Decision, DecisionError> {
        self.run_explained(true)
    }

    fn run_explained(&self, explain: bool) -> Result<Decision, DecisionError> {
        let input = CheckInput {
            caller: self.caller,
            purpose: self.purpose,
            categories: &self.categories,
            channel: self.channel,
            jurisdiction: self.jurisdiction,
            gpc: self.gpc,
            now: self.now,
            explain,
        };
        decide(&POLICY, &input, &self.state)
    }

    /// Checks the row; returns what went wrong, if anything.
    fn check(&self) -> Result<(), String> {
        let got = self.run();
        check_untraced(&got, &self.run_explained(false))?;
        match (&self.expect, got) {
            (Expect::Error(field), Err(e)) if e.field() == *field => Ok(()),
            (Expect::Error(field), Err(e)) => Err(format!(
                "expected an error on {field:?}, got {e:?} on {:?}",
                e.field()
            )),
            (Expect::Error(field), Ok(d)) => Err(format!(
                "expected an error on {field:?}, got a decision {:?} {:?}",
                d.verdict,
                reasons(&d)
            )),
            (Expect::Verdicts(_), Err(e)) => Err(format!("unexpected error {e:?}")),
            (Expect::Verdicts(want), Ok(d)) => self.check_decision(want, &d),
        }
    }

    fn check_decision(&self, want: &[Option<Reason>], d: &Decision) -> Result<(), String> {
        let got = reasons(d);
        if got != want {
            return Err(format!(
                "per-target verdicts: want {want:?}, got {got:?}\n  details: {:?}",
                d.categories.iter().map(|c| &c.detail).collect::<Vec<_>>()
            ));
        }
        let names: Vec<Option<&str>> = d.categories.iter().map(|c| c.category.as_deref()).collect();
        let want_names: Vec<Option<&str>> = if self.categories.is_empty() {
            vec![None]
        } else {
            self.categories.iter().map(|c| Some(c.as_str())).collect()
        };
        if names != want_names {
            return Err(format!("targets: want {want_names:?}, got {names:?}"));
        }
        let allowed = want.iter().filter(|r| r.is_none()).count();
        let want_verdict = if allowed == want.len() {
            Verdict::Allow
        } else if allowed == 0 {
            Verdict::Deny
        } else {
            Verdict::Partial
        };
        if d.verdict != want_verdict {
            return Err(format!(
                "verdict: want {want_verdict:?}, got {:?}",
                d.verdict
            ));
        }
        // The top-level reason of a DENY is the most significant denial in rule order, with
        // minimization last (written out here, independently of `Reason::significance`).
        let want_reason = if want_verdict == Verdict::Deny {
            want.iter()
                .flatten()
                .copied()
                .min_by_key(|r| RULE_ORDER.iter().position(|o| o == r))
        } else {
            None
        };
        if d.reason != want_reason {
            return Err(format!("reason: want {want_reason:?}, got {:?}", d.reason));
        }
        if d.revision != self.state.revision {
            return Err(format!(
                "revision: want {}, got {}",
                self.state.revision, d.revision
            ));
        }
        if d.explanation.first().map(|s| s.rule) != Some("caller_permission") {
            return Err("the trace must start with the caller-permission step".into());
        }
        for reason in want.iter().flatten() {
            if !d.explanation.iter().any(|s| s.outcome == reason.code()) {
                return Err(format!("no trace step reports {}", reason.code()));
            }
        }
        Ok(())
    }
}

fn reasons(d: &Decision) -> Vec<Option<Reason>> {
    d.categories.iter().map(|c| c.denied).collect()
}

const OK: Option<Reason> = None;
const fn no(reason: Reason) -> Option<Reason> {
    Some(reason)
}

use Reason::{
    CallerNotPermitted as CNP, Expired, GpcOptOut, MinorRequiresGuardian as Minor, NoConsent,
    NotNeededForPurpose as NotNeeded, NoticeOutdated, ProcessingRestricted as Restricted, Refused,
    SensitiveRequiresExplicitConsent as Sensitive, SubjectErased as Erased, Withdrawn,
};

/// Denial reasons, most significant first: the rules in docs/architecture.md §3 order, what the person said
/// before what lapsed or was never said, and minimization last (it says nothing about the
/// categories the purpose does need).
const RULE_ORDER: [Reason; 12] = [
    CNP,
    Erased,
    Restricted,
    Withdrawn,
    Refused,
    Expired,
    NoticeOutdated,
    NoConsent,
    GpcOptOut,
    Minor,
    Sensitive,
    NotNeeded,
];

const SALE: &str = "third_party_sharing.sale";
const PUSH: &str = "marketing.communications.push";
const COMMUNICATIONS: &str = "marketing.communications";
const PROFILED: &str = "personalize.content.profiled";
const EMAIL: &str = "marketing.communications.email";
const SMS: &str = "marketing.communications.sms";
const TARGETED: &str = "marketing.advertising.first_party.targeted";

fn table() -> Vec<Case> {
    let analytics = || subject(vec![given("analytics", 1)]);
    let expired_soon = |s: i64| NOW + Duration::seconds(s);
    let years_ago = NOW - Duration::days(3 * 365);
    vec![
        // ---------------------------------------------------------------- rule 1: bad requests
        case(
            "unknown purpose is an error, not a denial",
            "marketing.telepathy",
            &[],
        )
        .err("purpose"),
        case(
            "unknown purpose is reported before the caller rule",
            "marketing.telepathy",
            &[],
        )
        .caller("mailer")
        .err("purpose"),
        case(
            "unknown category names its index",
            "analytics.reporting",
            &["user.behavior", "user.nope"],
        )
        .err("data_categories[1]"),
        case(
            "unknown category is reported before minimization",
            "analytics.reporting",
            &["user.health", "user.nope"],
        )
        .err("data_categories[1]"),
        case("unknown jurisdiction", "analytics.reporting", &[])
            .jur("XX")
            .err("context.jurisdiction"),
        case(
            "unknown jurisdiction is reported before the caller rule",
            "analytics.reporting",
            &[],
        )
        .caller("mailer")
        .jur("XX")
        .err("context.jurisdiction"),
        case(
            "channel-scoped purpose with several channels and no channel",
            "marketing.communications",
            &[],
        )
        .state(subject(vec![given("marketing.communications", 1)]))
        .err("channel"),
        case("unknown channel", EMAIL, &[])
            .channel("fax")
            .err("channel"),
        case("channel the purpose does not offer", EMAIL, &[])
            .channel("sms")
            .err("channel"),
        case(
            "channel on a purpose that is not channel-scoped",
            "analytics.reporting",
            &[],
        )
        .channel("email")
        .err("channel"),
        case(
            "empty channel on a one-channel purpose means that channel",
            EMAIL,
            &[],
        )
        .channel("")
        .state(subject(vec![given(EMAIL, 1).channel(Channel::Email)]))
        .allow(),
        case(
            "empty jurisdiction means the default (EU: sale is opt-in)",
            SALE,
            &[],
        )
        .jur("")
        .deny(NoConsent),
        // ---------------------------------------------------------------- rule 2: callers
        case(
            "caller not permitted: mailer asking for analytics",
            "analytics.reporting",
            &["user.behavior.browsing_history", "user.device.cookie_id"],
        )
        .caller("mailer")
        .state(analytics())
        .deny(CNP),
        case(
            "caller not permitted beats minimization",
            "analytics.reporting",
            &["user.health", "user.behavior"],
        )
        .caller("mailer")
        .state(analytics())
        .deny(CNP),
        case(
            "caller not permitted beats erasure",
            "analytics.reporting",
            &[],
        )
        .caller("mailer")
        .state(analytics().erased())
        .deny(CNP),
        case(
            "caller not permitted beats restriction",
            "analytics.reporting",
            &[],
        )
        .caller("mailer")
        .state(analytics().restricted())
        .deny(CNP),
        case(
            "caller not permitted even for essential purposes",
            "essential.service",
            &["user.account"],
        )
        .caller("recommendation-service")
        .deny(CNP),
        case(
            "unknown caller is not permitted",
            "analytics.reporting",
            &[],
        )
        .caller("stranger")
        .state(analytics())
        .deny(CNP),
        case(
            "mailer may ask for e-mail marketing",
            EMAIL,
            &["user.contact.email"],
        )
        .caller("mailer")
        .state(subject(vec![given(EMAIL, 1)]))
        .allow(),
        case("mailer may not ask for sms marketing", SMS, &[])
            .caller("mailer")
            .state(subject(vec![given(SMS, 1)]))
            .deny(CNP),
        case(
            "a subtree pattern covers its root purpose",
            "analytics",
            &[],
        )
        .caller("analytics-job")
        .state(analytics())
        .allow(),
        case(
            "a subtree pattern covers descendants",
            "analytics.reporting",
            &[],
        )
        .caller("analytics-job")
        .state(analytics())
        .allow(),
        case("an exact pattern", "train_ai_system", &[])
            .caller("recommendation-service")
            .state(subject(vec![given("train_ai_system", 1)]))
            .allow(),
        case(
            "recommendation-service asking for analytics",
            "analytics",
            &[],
        )
        .caller("recommendation-service")
        .state(analytics())
        .deny(CNP),
        // ---------------------------------------------------------------- rule 3: minimization
        case(
            "category the purpose does not need",
            "analytics.reporting",
            &["user.health"],
        )
        .state(analytics())
        .deny(NotNeeded),
        case(
            "a category's parent is not needed when only the child is listed",
            "personalize.content.limited",
            &["user.preferences", "user.preferences.stated"],
        )
        .state(subject(vec![given("personalize", 1)]))
        .each(&[no(NotNeeded), OK]),
        case(
            "a listed category covers its descendants",
            "analytics.reporting",
            &["user.behavior.search_history"],
        )
        .state(analytics())
        .allow(),
        case(
            "minimization before erasure",
            "analytics.reporting",
            &["user.health", "user.behavior"],
        )
        .state(analytics().erased())
        .each(&[no(NotNeeded), no(Erased)]),
        case(
            "minimization before restriction",
            "analytics.reporting",
            &["user.health", "user.behavior"],
        )
        .state(analytics().restricted())
        .each(&[no(NotNeeded), no(Restricted)]),
        case(
            "minimization before consent",
            "analytics.reporting",
            &["user.financial", "user.device"],
        )
        .each(&[no(NotNeeded), no(NoConsent)]),
        // ---------------------------------------------------------------- rule 4: erasure, restriction
        case(
            "erased subject: consent no longer counts",
            "analytics.reporting",
            &[],
        )
        .state(analytics().erased())
        .deny(Erased),
        case(
            "erasure covers essential purposes",
            "essential.service",
            &["user.account"],
        )
        .state(subject(vec![]).erased())
        .deny(Erased),
        case("erasure before restriction", "analytics.reporting", &[])
            .state(analytics().erased().restricted())
            .deny(Erased),
        case(
            "restricted: consent does not help",
            "analytics.reporting",
            &[],
        )
        .state(analytics().restricted())
        .deny(Restricted),
        case(
            "restricted: essential still allowed",
            "essential.service",
            &["user.account"],
        )
        .state(subject(vec![]).restricted())
        .allow(),
        case(
            "restricted: a contract basis is not essential",
            "essential.order_fulfillment",
            &["user.name"],
        )
        .state(subject(vec![]).restricted())
        .deny(Restricted),
        case(
            "restriction before consent: withdrawn",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![withdrawn("analytics", 1)]).restricted())
        .deny(Restricted),
        case(
            "restriction before consent: no record",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![]).restricted())
        .deny(Restricted),
        case("restriction before GPC", SALE, &[])
            .jur("US-CA")
            .gpc()
            .state(subject(vec![]).restricted())
            .deny(Restricted),
        // ---------------------------------------------------------------- rule 5: legal basis
        case(
            "essential needs no consent",
            "essential.service",
            &["user.account"],
        )
        .allow(),
        case(
            "contract needs no consent",
            "essential.order_fulfillment",
            &["user.name"],
        )
        .allow(),
        case(
            "essential ignores a refusal on record",
            "essential.service",
            &[],
        )
        .state(subject(vec![refused("essential", 1)]))
        .allow(),
        case("no record is no consent", "analytics.reporting", &[]).deny(NoConsent),
        case(
            "consent on a sibling does not count",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![given("analytics.improve", 1)]))
        .deny(NoConsent),
        case(
            "consent on a child does not cover its parent",
            "personalize.content",
            &[],
        )
        .state(subject(vec![given(PROFILED, 1)]))
        .deny(NoConsent),
        case("consent on an ancestor covers a descendant", PROFILED, &[])
            .state(subject(vec![given("personalize", 1)]))
            .allow(),
        case("refused", "analytics.reporting", &[])
            .state(subject(vec![refused("analytics.reporting", 1)]))
            .deny(Refused),
        case("withdrawn", "analytics.reporting", &[])
            .state(subject(vec![withdrawn("analytics.reporting", 1)]))
            .deny(Withdrawn),
        case("refused on an ancestor", EMAIL, &[])
            .state(subject(vec![refused("marketing", 1)]))
            .deny(Refused),
        case(
            "most specific wins: withdrawn on sms beats a later given on marketing",
            SMS,
            &[],
        )
        .state(subject(vec![withdrawn(SMS, 2), given("marketing", 5)]))
        .deny(Withdrawn),
        case(
            "most specific wins: the given on marketing still covers email",
            EMAIL,
            &[],
        )
        .state(subject(vec![withdrawn(SMS, 2), given("marketing", 5)]))
        .allow(),
        // ---------------------------------------------------------------- withdrawal over the subtree, in time order
        case(
            "parent withdrawal over an older child grant: stop all marketing stops e-mail",
            EMAIL,
            &["user.contact.email"],
        )
        .state(subject(vec![given(EMAIL, 1), withdrawn("marketing", 9)]))
        .deny(Withdrawn),
        case(
            "parent withdrawal over an older channel-scoped child grant (the issue's story)",
            EMAIL,
            &["user.contact.email"],
        )
        .channel("email")
        .state(subject(vec![
            given(EMAIL, 1).channel(Channel::Email),
            withdrawn("marketing", 2),
        ]))
        .deny(Withdrawn),
        case(
            "a newer child grant over an older parent withdrawal applies again",
            EMAIL,
            &["user.contact.email"],
        )
        .state(subject(vec![withdrawn("marketing", 1), given(EMAIL, 9)]))
        .allow(),
        case(
            "the re-grant covers only the child: its sibling stays withdrawn",
            SMS,
            &[],
        )
        .state(subject(vec![withdrawn("marketing", 1), given(EMAIL, 9)]))
        .deny(Withdrawn),
        case("parent refusal over an older child grant", EMAIL, &[])
            .state(subject(vec![given(EMAIL, 1), refused("marketing", 3)]))
            .deny(Refused),
        case(
            "a newer child grant over an older parent refusal applies",
            EMAIL,
            &[],
        )
        .state(subject(vec![refused("marketing", 1), given(EMAIL, 3)]))
        .allow(),
        case(
            "a middle-level re-grant after a root withdrawal covers its subtree",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given(EMAIL, 1),
            withdrawn("marketing", 2),
            given(COMMUNICATIONS, 3),
        ]))
        .allow(),
        case(
            "a root withdrawal overrides older grants at every level beneath it",
            PUSH,
            &[],
        )
        .state(subject(vec![
            given("marketing", 1),
            given(COMMUNICATIONS, 2),
            given(PUSH, 3),
            withdrawn("marketing", 4),
        ]))
        .deny(Withdrawn),
        case(
            "a channel-less withdrawal over an older channel grant",
            COMMUNICATIONS,
            &[],
        )
        .channel("sms")
        .state(subject(vec![
            given(COMMUNICATIONS, 1).channel(Channel::Sms),
            withdrawn(COMMUNICATIONS, 2),
        ]))
        .deny(Withdrawn),
        case(
            "a withdrawal on one channel leaves another channel's older grant",
            COMMUNICATIONS,
            &[],
        )
        .channel("email")
        .state(subject(vec![
            given(COMMUNICATIONS, 1).channel(Channel::Email),
            withdrawn(COMMUNICATIONS, 2).channel(Channel::Sms),
        ]))
        .allow(),
        case(
            "a channel withdrawal on the parent covers the child on that channel",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given(EMAIL, 1),
            withdrawn(COMMUNICATIONS, 2).channel(Channel::Email),
        ]))
        .deny(Withdrawn),
        case(
            "a scoped withdrawal on an ancestor covers only its categories",
            PROFILED,
            &["user.behavior.browsing_history", "user.preferences.stated"],
        )
        .state(subject(vec![
            given(PROFILED, 1),
            withdrawn("personalize", 2).scope("user.behavior"),
        ]))
        .each(&[no(Withdrawn), OK]),
        case(
            "a scope re-grant after a root withdrawal applies to its category",
            EMAIL,
            &["user.contact.email"],
        )
        .state(subject(vec![
            given(EMAIL, 1),
            withdrawn("marketing", 2),
            given("marketing", 3).scope("user.contact"),
        ]))
        .allow(),
        case(
            "ties at the same specificity: the later revision decides (grant last)",
            COMMUNICATIONS,
            &[],
        )
        .channel("push")
        .state(subject(vec![
            withdrawn(COMMUNICATIONS, 2),
            given(COMMUNICATIONS, 3).channel(Channel::Push),
        ]))
        .allow(),
        case(
            "ties at the same specificity: the later revision decides (withdrawal last)",
            COMMUNICATIONS,
            &[],
        )
        .channel("push")
        .state(subject(vec![
            given(COMMUNICATIONS, 2).channel(Channel::Push),
            withdrawn(COMMUNICATIONS, 3),
        ]))
        .deny(Withdrawn),
        case(
            "ties between grants: the later one decides, expired or not",
            COMMUNICATIONS,
            &[],
        )
        .channel("push")
        .state(subject(vec![
            given(COMMUNICATIONS, 2),
            given(COMMUNICATIONS, 3)
                .channel(Channel::Push)
                .expires(NOW - Duration::hours(1)),
        ]))
        .deny(Expired),
        case(
            "most specific wins: the ancestor's withdrawal still covers the sibling",
            SMS,
            &[],
        )
        .state(subject(vec![given(EMAIL, 1), withdrawn("marketing", 9)]))
        .deny(Withdrawn),
        case(
            "most specific wins: middle level beats the root",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given("marketing", 1),
            refused("marketing.communications", 2),
        ]))
        .deny(Refused),
        // scope specificity
        case(
            "a scope-less withdrawal over an older category-scoped grant",
            PROFILED,
            &["user.behavior.browsing_history", "user.preferences.stated"],
        )
        .state(subject(vec![
            given(PROFILED, 2).scope("user.behavior"),
            withdrawn(PROFILED, 5),
        ]))
        .deny(Withdrawn),
        case(
            "a scoped grant newer than a scope-less withdrawal applies to its category",
            PROFILED,
            &["user.behavior.browsing_history", "user.preferences.stated"],
        )
        .state(subject(vec![
            withdrawn(PROFILED, 2),
            given(PROFILED, 5).scope("user.behavior"),
        ]))
        .each(&[OK, no(Withdrawn)]),
        case(
            "a deeper scope beats a shallower, later one",
            PROFILED,
            &[
                "user.behavior.browsing_history",
                "user.behavior.purchase_history",
            ],
        )
        .state(subject(vec![
            withdrawn(PROFILED, 1).scope("user.behavior.browsing_history"),
            given(PROFILED, 3).scope("user.behavior"),
        ]))
        .each(&[no(Withdrawn), OK]),
        case(
            "a scoped grant does not cover other categories",
            PROFILED,
            &["user.preferences.stated"],
        )
        .state(subject(vec![given(PROFILED, 1).scope("user.behavior")]))
        .deny(NoConsent),
        case(
            "a scoped grant does not answer the purpose-level question",
            PROFILED,
            &[],
        )
        .state(subject(vec![given(PROFILED, 1).scope("user.behavior")]))
        .deny(NoConsent),
        case(
            "a scope narrower than the requested category does not cover it",
            "personalize.content",
            &["user.behavior"],
        )
        .state(subject(vec![
            given("personalize.content", 1).scope("user.behavior.browsing_history"),
        ]))
        .deny(NoConsent),
        case(
            "purpose specificity beats scope specificity",
            PROFILED,
            &["user.behavior.browsing_history"],
        )
        .state(subject(vec![
            withdrawn(PROFILED, 1),
            given("personalize", 2).scope("user.behavior.browsing_history"),
        ]))
        .deny(Withdrawn),
        // latest revision at the same level
        case(
            "same level: the later unchannelled grant beats an earlier channelled withdrawal",
            SMS,
            &[],
        )
        .state(subject(vec![
            withdrawn(SMS, 3).channel(Channel::Sms),
            given(SMS, 7),
        ]))
        .allow(),
        case(
            "same level: the later unchannelled withdrawal beats an earlier channelled grant",
            SMS,
            &[],
        )
        .state(subject(vec![
            given(SMS, 3).channel(Channel::Sms),
            withdrawn(SMS, 7),
        ]))
        .deny(Withdrawn),
        case(
            "same level: record order in the state does not matter",
            SMS,
            &[],
        )
        .state(subject(vec![
            withdrawn(SMS, 7),
            given(SMS, 3).channel(Channel::Sms),
        ]))
        .deny(Withdrawn),
        // imported records: a newer revision, ordered by their own (old) time, then revision
        case(
            "import: an old grant with a newer revision does not override a later withdrawal",
            SMS,
            &[],
        )
        .state(subject(vec![
            withdrawn(SMS, 5),
            given(SMS, 9).channel(Channel::Sms).imported(years_ago),
        ]))
        .deny(Withdrawn),
        case(
            "import: an old grant beneath a later withdrawal of the ancestor stays withdrawn",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            withdrawn("marketing", 5),
            given(EMAIL, 9).imported(years_ago),
        ]))
        .deny(Withdrawn),
        case(
            "import: an old withdrawal does not withdraw a later grant",
            SMS,
            &[],
        )
        .state(subject(vec![
            given(SMS, 5),
            withdrawn(SMS, 9).channel(Channel::Sms).imported(years_ago),
        ]))
        .allow(),
        case(
            "import: an old withdrawal of the ancestor does not withdraw a later grant beneath it",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given(EMAIL, 5),
            withdrawn("marketing", 9).imported(years_ago),
        ]))
        .allow(),
        case(
            "import: a withdrawal of the ancestor newer by time withdraws a grant beneath it",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given(EMAIL, 5),
            withdrawn("marketing", 9).imported(live_at(7)),
        ]))
        .deny(Withdrawn),
        case(
            "import: by time, not revision: the ancestor's withdrawal beats an older grant imported after it",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            withdrawn("marketing", 8).imported(live_at(7)),
            given(EMAIL, 9).imported(live_at(6)),
        ]))
        .deny(Withdrawn),
        case(
            "import: at the same time the higher revision wins (withdrawal)",
            SMS,
            &[],
        )
        .state(subject(vec![
            given(SMS, 5),
            withdrawn(SMS, 9).channel(Channel::Sms).imported(live_at(5)),
        ]))
        .deny(Withdrawn),
        case(
            "import: at the same time the higher revision wins (grant)",
            SMS,
            &[],
        )
        .state(subject(vec![
            withdrawn(SMS, 5),
            given(SMS, 9).channel(Channel::Sms).imported(live_at(5)),
        ]))
        .allow(),
        // expiry
        case(
            "expiry one second ahead: allowed",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![
            given("analytics", 1).expires(expired_soon(1)),
        ]))
        .allow(),
        case("expiry exactly now: expired", "analytics.reporting", &[])
            .state(subject(vec![given("analytics", 1).expires(NOW)]))
            .deny(Expired),
        case("expiry one second ago: expired", "analytics.reporting", &[])
            .state(subject(vec![
                given("analytics", 1).expires(expired_soon(-1)),
            ]))
            .deny(Expired),
        case(
            "the same record checked a day earlier",
            "analytics.reporting",
            &[],
        )
        .at(NOW - Duration::days(1))
        .state(subject(vec![given("analytics", 1).expires(NOW)]))
        .allow(),
        case(
            "an expired child is not rescued by a valid ancestor",
            PROFILED,
            &[],
        )
        .state(subject(vec![
            given("personalize", 1),
            given(PROFILED, 2).expires(expired_soon(-60)),
        ]))
        .deny(Expired),
        case("expiry before notice", PROFILED, &[])
            .state(subject(vec![
                given(PROFILED, 1).notice("1.0").expires(expired_soon(-1)),
            ]))
            .deny(Expired),
        // notice versions (personalization notice is 2.0, marketing notice is 1.2)
        case("notice: an older major version is outdated", PROFILED, &[])
            .state(subject(vec![given(PROFILED, 1).notice("1.9")]))
            .deny(NoticeOutdated),
        case(
            "notice: a different (newer) major is outdated",
            PROFILED,
            &[],
        )
        .state(subject(vec![given(PROFILED, 1).notice("3.0")]))
        .deny(NoticeOutdated),
        case("notice: an unparsable version is outdated", PROFILED, &[])
            .state(subject(vec![given(PROFILED, 1).notice("v2")]))
            .deny(NoticeOutdated),
        case("notice: a minor difference is fine", PROFILED, &[])
            .state(subject(vec![given(PROFILED, 1).notice("2.7")]))
            .allow(),
        case("notice: the major alone is fine", PROFILED, &[])
            .state(subject(vec![given(PROFILED, 1).notice("2")]))
            .allow(),
        case(
            "notice: an older minor of the current major is fine",
            EMAIL,
            &[],
        )
        .state(subject(vec![given(EMAIL, 1).notice("1.0")]))
        .allow(),
        case(
            "notice: outdated on the deciding ancestor record",
            EMAIL,
            &[],
        )
        .state(subject(vec![given("marketing", 1).notice("0.9")]))
        .deny(NoticeOutdated),
        // channels
        case("a grant on the email channel does not cover sms", SMS, &[])
            .state(subject(vec![
                given("marketing.communications", 1).channel(Channel::Email),
            ]))
            .deny(NoConsent),
        case("a grant on the email channel covers email", EMAIL, &[])
            .state(subject(vec![
                given("marketing.communications", 1).channel(Channel::Email),
            ]))
            .allow(),
        case(
            "a grant on the email channel, asked on the email channel",
            "marketing.communications",
            &[],
        )
        .channel("email")
        .state(subject(vec![
            given("marketing.communications", 1).channel(Channel::Email),
        ]))
        .allow(),
        case(
            "a grant on the email channel, asked on the push channel",
            "marketing.communications",
            &[],
        )
        .channel("push")
        .state(subject(vec![
            given("marketing.communications", 1).channel(Channel::Email),
        ]))
        .deny(NoConsent),
        case(
            "an unchannelled withdrawal covers every channel: email",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given("marketing.communications", 1).channel(Channel::Email),
            withdrawn("marketing.communications", 2),
        ]))
        .deny(Withdrawn),
        case(
            "an unchannelled withdrawal covers every channel: in_app",
            "marketing.communications",
            &[],
        )
        .channel("in_app")
        .state(subject(vec![
            given("marketing.communications", 1).channel(Channel::Email),
            withdrawn("marketing.communications", 2),
        ]))
        .deny(Withdrawn),
        case(
            "an unchannelled withdrawal on a purpose beats a channelled grant on its ancestor",
            SMS,
            &[],
        )
        .state(subject(vec![
            given("marketing", 3).channel(Channel::Sms),
            withdrawn("marketing.communications", 2),
        ]))
        .deny(Withdrawn),
        case(
            "an unchannelled grant covers every channel",
            "marketing.communications",
            &[],
        )
        .channel("push")
        .state(subject(vec![given("marketing", 1)]))
        .allow(),
        case(
            "a channelled withdrawal only covers its channel: sms",
            SMS,
            &[],
        )
        .state(subject(vec![
            given("marketing", 1),
            withdrawn("marketing.communications", 2).channel(Channel::Sms),
        ]))
        .deny(Withdrawn),
        case(
            "a channelled withdrawal only covers its channel: email",
            EMAIL,
            &[],
        )
        .state(subject(vec![
            given("marketing", 1),
            withdrawn("marketing.communications", 2).channel(Channel::Sms),
        ]))
        .allow(),
        case(
            "a channelled record does not apply to a purpose without channels",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![given("analytics", 1).channel(Channel::Email)]))
        .deny(NoConsent),
        // ---------------------------------------------------------------- rule 6: GPC (US-CA sale is opt-out)
        case(
            "opt-out: allowed with no record",
            SALE,
            &["user.contact.email"],
        )
        .jur("US-CA")
        .allow(),
        case("opt-out: refused", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![refused(SALE, 1)]))
            .deny(Refused),
        case("opt-out: withdrawn on the ancestor", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![withdrawn("third_party_sharing", 1)]))
            .deny(Withdrawn),
        case(
            "opt-out: an expired grant changes nothing without GPC",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 1).expires(expired_soon(-1))]))
        .allow(),
        case("opt-out: an outdated notice changes nothing", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![given(SALE, 1).notice("1.0")]))
            .allow(),
        case("GPC recorded", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![]).gpc_at(5))
            .deny(GpcOptOut),
        case(
            "GPC on the request",
            SALE,
            &["user.behavior", "user.contact"],
        )
        .jur("US-CA")
        .gpc()
        .deny(GpcOptOut),
        case("GPC overridden by a later explicit grant", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![given(SALE, 6)]).gpc_at(5))
            .allow(),
        case(
            "GPC recorded and on the request, overridden by a later explicit grant",
            SALE,
            &[],
        )
        .jur("US-CA")
        .gpc()
        .state(subject(vec![given(SALE, 6)]).gpc_at(5))
        .allow(),
        case(
            "GPC overridden by a later explicit grant on the ancestor",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given("third_party_sharing", 6)]).gpc_at(5))
        .allow(),
        case("GPC not overridden by an earlier explicit grant", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![given(SALE, 4)]).gpc_at(5))
            .deny(GpcOptOut),
        case(
            "GPC not overridden by a grant with the signal's own revision (boundary)",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 5)]).gpc_at(5))
        .deny(GpcOptOut),
        case("GPC not overridden by a later expressed grant", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![given(SALE, 6).expressed()]).gpc_at(5))
            .deny(GpcOptOut),
        case(
            "GPC not overridden by a later grant that has expired",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 6).expires(expired_soon(-1))]).gpc_at(5))
        .deny(GpcOptOut),
        case(
            "GPC not overridden by a later explicit grant for a sibling purpose",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given("third_party_sharing.cross_context", 6)]).gpc_at(5))
        .deny(GpcOptOut),
        case(
            "GPC not overridden by an imported explicit grant collected before the signal",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 9).imported(live_at(4))]).gpc_at(5))
        .deny(GpcOptOut),
        case(
            "GPC overridden by an imported explicit grant collected after the signal",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 9).imported(live_at(6))]).gpc_at(5))
        .allow(),
        case(
            "GPC overridden by an imported explicit grant at the signal's time with a later revision",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(SALE, 9).imported(live_at(5))]).gpc_at(5))
        .allow(),
        case(
            "GPC on a consent-basis purpose: an imported grant from before the signal does not override",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given("marketing", 9).imported(years_ago)]).gpc_at(5))
        .deny(GpcOptOut),
        case(
            "GPC on the request with none recorded is never overridden",
            SALE,
            &[],
        )
        .jur("US-CA")
        .gpc()
        .state(subject(vec![given(SALE, 6)]))
        .deny(GpcOptOut),
        case("withdrawn plus GPC gives WITHDRAWN", SALE, &[])
            .jur("US-CA")
            .gpc()
            .state(subject(vec![withdrawn(SALE, 6)]).gpc_at(5))
            .deny(Withdrawn),
        case("refused plus GPC gives REFUSED", SALE, &[])
            .jur("US-CA")
            .gpc()
            .state(subject(vec![refused(SALE, 2)]))
            .deny(Refused),
        case(
            "GPC on a consent-basis purpose: no consent comes first",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .gpc()
        .deny(NoConsent),
        case(
            "GPC on a consent-basis purpose: expired comes first",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(TARGETED, 6).expires(NOW)]).gpc_at(5))
        .deny(Expired),
        case(
            "GPC on a consent-basis purpose: an outdated notice comes first",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given(TARGETED, 6).notice("0.1")]).gpc_at(5))
        .deny(NoticeOutdated),
        case(
            "GPC on a consent-basis purpose: a later expressed grant does not override",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given("marketing", 6).expressed()]).gpc_at(5))
        .deny(GpcOptOut),
        case(
            "GPC on a consent-basis purpose: a later explicit grant overrides",
            TARGETED,
            &[],
        )
        .jur("US-CA")
        .state(subject(vec![given("marketing", 6)]).gpc_at(5))
        .allow(),
        case(
            "GPC does not touch purposes that are not GPC-scoped",
            "analytics.reporting",
            &[],
        )
        .jur("US-CA")
        .gpc()
        .state(analytics().gpc_at(5))
        .allow(),
        case("GPC ignored in the EU (sale is opt-in there)", SALE, &[])
            .gpc()
            .state(subject(vec![given(SALE, 3).expressed()]).gpc_at(5))
            .allow(),
        case("GPC ignored in the EU for advertising", TARGETED, &[])
            .gpc()
            .state(subject(vec![given("marketing", 3).expressed()]).gpc_at(5))
            .allow(),
        case("GPC ignored in the UK", SALE, &[])
            .jur("UK")
            .gpc()
            .state(subject(vec![given(SALE, 3).expressed()]).gpc_at(5))
            .allow(),
        case(
            "the cross-context-ads override is opt-out in US-CA",
            "marketing.advertising.third_party",
            &[],
        )
        .jur("US-CA")
        .allow(),
        // ---------------------------------------------------------------- rule 7: minors
        case(
            "minor (EU, 13-15) without a guardian",
            "analytics.reporting",
            &[],
        )
        .state(analytics().age(AgeBand::From13To15))
        .deny(Minor),
        case("minor with a recorded guardian", "analytics.reporting", &[])
            .state(
                subject(vec![given("analytics", 1).guardian("g1")])
                    .age(AgeBand::From13To15)
                    .verified_guardian("g1"),
            )
            .allow(),
        case(
            "minor whose guardian reference is not recorded",
            "analytics.reporting",
            &[],
        )
        .state(
            subject(vec![given("analytics", 1).guardian("g1")])
                .age(AgeBand::From13To15)
                .verified_guardian("g2"),
        )
        .deny(Minor),
        case(
            "minor whose deciding record names no guardian",
            "analytics.reporting",
            &[],
        )
        .state(
            subject(vec![
                given("analytics", 1).guardian("g1"),
                given("analytics.reporting", 2),
            ])
            .age(AgeBand::From13To15)
            .verified_guardian("g1"),
        )
        .deny(Minor),
        case("minor under 13", "analytics.reporting", &[])
            .state(analytics().age(AgeBand::Under13))
            .deny(Minor),
        case("16-17 is not a minor in the EU", "analytics.reporting", &[])
            .state(analytics().age(AgeBand::From16To17))
            .allow(),
        case("adult", "analytics.reporting", &[])
            .state(analytics().age(AgeBand::Adult))
            .allow(),
        case("13-15 is not a minor in the UK", "analytics.reporting", &[])
            .jur("UK")
            .state(analytics().age(AgeBand::From13To15))
            .allow(),
        case("under 13 is a minor in the UK", "analytics.reporting", &[])
            .jur("UK")
            .state(analytics().age(AgeBand::Under13))
            .deny(Minor),
        case(
            "minor: essential needs no guardian",
            "essential.service",
            &["user.account"],
        )
        .state(subject(vec![]).age(AgeBand::Under13))
        .allow(),
        case(
            "minor: contract needs no guardian",
            "essential.order_fulfillment",
            &["user.name"],
        )
        .state(subject(vec![]).age(AgeBand::Under13))
        .allow(),
        case("minor: opt-out sale in US-CA needs a guardian", SALE, &[])
            .jur("US-CA")
            .state(subject(vec![]).age(AgeBand::From13To15))
            .deny(Minor),
        case("minor: guardian-backed grant for sale in US-CA", SALE, &[])
            .jur("US-CA")
            .state(
                subject(vec![given(SALE, 1).guardian("g1")])
                    .age(AgeBand::From13To15)
                    .verified_guardian("g1"),
            )
            .allow(),
        case(
            "minor: an expired guardian-backed grant does not back anything",
            SALE,
            &[],
        )
        .jur("US-CA")
        .state(
            subject(vec![
                given(SALE, 1).guardian("g1").expires(expired_soon(-1)),
            ])
            .age(AgeBand::From13To15)
            .verified_guardian("g1"),
        )
        .deny(Minor),
        case(
            "legal basis before minors: no consent",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![]).age(AgeBand::Under13))
        .deny(NoConsent),
        case(
            "legal basis before minors: withdrawn",
            "analytics.reporting",
            &[],
        )
        .state(subject(vec![withdrawn("analytics", 1)]).age(AgeBand::Under13))
        .deny(Withdrawn),
        case("GPC before minors", SALE, &[])
            .jur("US-CA")
            .gpc()
            .state(subject(vec![]).age(AgeBand::Under13))
            .deny(GpcOptOut),
        // ---------------------------------------------------------------- rule 8: sensitive categories
        case(
            "sensitive: an unscoped explicit grant is not enough",
            PROFILED,
            &["user.health"],
        )
        .state(subject(vec![given(PROFILED, 1)]))
        .deny(Sensitive),
        case(
            "sensitive: a scoped expressed grant is not enough",
            PROFILED,
            &["user.health"],
        )
        .state(subject(vec![
            given(PROFILED, 1).scope("user.health").expressed(),
        ]))
        .deny(Sensitive),
        case(
            "sensitive: a scoped explicit grant is enough",
            PROFILED,
            &["user.health"],
        )
        .state(subject(vec![given(PROFILED, 1).scope("user.health")]))
        .allow(),
        case(
            "sensitive: explicit consent scoped to an ancestor category",
            PROFILED,
            &["user.health"],
        )
        .state(subject(vec![given(PROFILED, 1).scope("user")]))
        .allow(),
        case(
            "sensitive: scoped explicit grant on an ancestor purpose",
            "research",
            &["user.health"],
        )
        .state(subject(vec![given("research", 1).scope("user.health")]))
        .allow(),
        case(
            "PARTIAL: sensitive denied, ordinary category allowed",
            PROFILED,
            &["user.health", "user.behavior.browsing_history"],
        )
        .state(subject(vec![given(PROFILED, 1)]))
        .each(&[no(Sensitive), OK]),
        case(
            "PARTIAL: the scoped sensitive grant does not answer other categories",
            "research",
            &["user.health", "user.survey.answers"],
        )
        .state(subject(vec![given("research", 1).scope("user.health")]))
        .each(&[OK, no(NoConsent)]),
        case("minors before sensitive", PROFILED, &["user.health"])
            .state(subject(vec![given(PROFILED, 1).expressed()]).age(AgeBand::From13To15))
            .deny(Minor),
        case(
            "minor with guardian, sensitive still needs explicit scoped consent",
            PROFILED,
            &["user.health"],
        )
        .state(
            subject(vec![given(PROFILED, 1).guardian("g1")])
                .age(AgeBand::From13To15)
                .verified_guardian("g1"),
        )
        .deny(Sensitive),
        case("withdrawn before sensitive", PROFILED, &["user.health"])
            .state(subject(vec![withdrawn(PROFILED, 1).scope("user.health")]))
            .deny(Withdrawn),
        // ---------------------------------------------------------------- verdicts
        case(
            "PARTIAL: some allowed, some not needed, some not consented",
            "personalize.content",
            &[
                "user.behavior.browsing_history",
                "user.health",
                "user.preferences.stated",
            ],
        )
        .state(subject(vec![
            given("personalize.content", 1).scope("user.behavior"),
        ]))
        .each(&[OK, no(NotNeeded), no(NoConsent)]),
        case(
            "DENY reports the most significant reason, never minimization over a real denial",
            "analytics.reporting",
            &["user.health", "user.behavior"],
        )
        .each(&[no(NotNeeded), no(NoConsent)]),
        case(
            "DENY: a withdrawal outranks minimization and missing consent (the gated read)",
            EMAIL,
            &["user.health", "user.contact.phone", "user.contact.email"],
        )
        .state(subject(vec![
            withdrawn(EMAIL, 2).scope("user.contact.email"),
        ]))
        .each(&[no(NotNeeded), no(NotNeeded), no(Withdrawn)]),
        case(
            "ALLOW for several categories",
            "analytics.reporting",
            &[
                "user.behavior",
                "user.device.cookie_id",
                "user.location.coarse",
            ],
        )
        .state(analytics())
        .allow(),
    ]
}

#[test]
fn decision_table() {
    let table = table();
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for row in &table {
        assert!(names.insert(row.name), "duplicate row name {:?}", row.name);
        if let Err(why) = row.check() {
            failures.push(format!("{}: {why}", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

const ALL_REASONS: [(Reason, &str); 12] = [
    (CNP, "CALLER_NOT_PERMITTED"),
    (NotNeeded, "NOT_NEEDED_FOR_PURPOSE"),
    (Erased, "SUBJECT_ERASED"),
    (Restricted, "PROCESSING_RESTRICTED"),
    (NoConsent, "NO_CONSENT"),
    (Refused, "REFUSED"),
    (Withdrawn, "WITHDRAWN"),
    (Expired, "EXPIRED"),
    (NoticeOutdated, "NOTICE_OUTDATED"),
    (GpcOptOut, "GPC_OPT_OUT"),
    (Minor, "MINOR_REQUIRES_GUARDIAN"),
    (Sensitive, "SENSITIVE_REQUIRES_EXPLICIT_CONSENT"),
];

#[test]
fn the_table_covers_every_reason_code_and_every_error_field() {
    let mut reasons = BTreeSet::new();
    let mut fields = BTreeSet::new();
    for row in table() {
        match row.expect {
            Expect::Verdicts(v) => reasons.extend(v.into_iter().flatten().map(Reason::code)),
            Expect::Error(f) => {
                fields.insert(f.split('[').next().unwrap_or(f).to_owned());
            }
        }
    }
    for (reason, code) in ALL_REASONS {
        assert_eq!(reason.code(), code, "wire code of {reason:?}");
        assert_eq!(reason.to_string(), code, "Display of {reason:?}");
        assert!(reasons.contains(code), "no table row denies with {code}");
    }
    let want: BTreeSet<String> = [
        "purpose",
        "data_categories",
        "context.jurisdiction",
        "channel",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(fields, want);
}

fn check(
    caller: &str,
    purpose: &str,
    categories: &[&str],
    jurisdiction: &str,
    state: &SubjectState,
) -> Result<Decision, DecisionError> {
    let categories: Vec<String> = categories.iter().map(|c| (*c).to_owned()).collect();
    let input = CheckInput {
        caller,
        purpose,
        categories: &categories,
        channel: None,
        jurisdiction,
        gpc: false,
        now: NOW,
        explain: true,
    };
    decide(&POLICY, &input, state)
}

/// The hot path (no explanation) must decide exactly as the explained one: same verdicts, reasons,
/// denial details, level, obligations, revision and validity; only the trace and the detail of
/// allowed categories are left out.
fn check_untraced(
    explained: &Result<Decision, DecisionError>,
    untraced: &Result<Decision, DecisionError>,
) -> Result<(), String> {
    match (explained, untraced) {
        (Err(a), Err(b)) if a.field() == b.field() => Ok(()),
        (Ok(a), Ok(b)) => {
            let mut want = a.clone();
            want.explanation.clear();
            for c in &mut want.categories {
                if c.denied.is_none() {
                    c.detail.clear();
                }
            }
            if *b != want {
                return Err(format!(
                    "without the explanation the decision differs:\n  explained {a:?}\n  untraced {b:?}"
                ));
            }
            Ok(())
        }
        (a, b) => Err(format!(
            "explained and untraced runs disagree: {a:?} vs {b:?}"
        )),
    }
}

fn ok(result: Result<Decision, DecisionError>) -> Decision {
    result.unwrap_or_else(|e| panic!("unexpected error {e:?}"))
}

#[test]
fn errors_carry_what_was_wrong() {
    let state = SubjectState::default();
    assert_eq!(
        check("profile-service", "nope", &[], "EU", &state).unwrap_err(),
        DecisionError::UnknownPurpose("nope".into())
    );
    let err = check(
        "profile-service",
        "analytics",
        &["user.behavior", "user.behavior", "user.nope"],
        "EU",
        &state,
    )
    .unwrap_err();
    assert_eq!(
        err,
        DecisionError::UnknownCategory {
            index: 2,
            category: "user.nope".into()
        }
    );
    assert_eq!(err.field(), "data_categories[2]");
    assert_eq!(
        check("profile-service", "analytics", &[], "MARS", &state).unwrap_err(),
        DecisionError::UnknownJurisdiction("MARS".into())
    );
    let categories: Vec<String> = Vec::new();
    let input = CheckInput {
        caller: "profile-service",
        purpose: "marketing.communications",
        categories: &categories,
        channel: None,
        jurisdiction: "EU",
        gpc: false,
        now: NOW,
        explain: false,
    };
    let err = decide(&POLICY, &input, &state).unwrap_err();
    assert!(matches!(err, DecisionError::BadChannel(_)), "{err:?}");
    assert!(err.to_string().contains("email"), "{err}");
}

/// Personalization: the highest ladder rung (profiled > limited > segment) allowed for the caller.
#[test]
fn personalization_levels() {
    use Personalization::{Anonymous, Contextual, Limited, Profiled, Segment};
    let rows: Vec<(&str, &str, SubjectState, Personalization)> = vec![
        (
            "no consent at all",
            "recommendation-service",
            subject(vec![]),
            Contextual,
        ),
        (
            "consent on the root purpose unlocks every rung",
            "recommendation-service",
            subject(vec![given("personalize", 1)]),
            Profiled,
        ),
        (
            "profiled only",
            "recommendation-service",
            subject(vec![given(PROFILED, 1)]),
            Profiled,
        ),
        (
            "limited only",
            "recommendation-service",
            subject(vec![given("personalize.content.limited", 1)]),
            Limited,
        ),
        (
            "segment only",
            "recommendation-service",
            subject(vec![given("personalize.content.segment", 1)]),
            Segment,
        ),
        (
            "profiled withdrawn, the rest given on the ancestor",
            "recommendation-service",
            subject(vec![given("personalize", 1), withdrawn(PROFILED, 2)]),
            Limited,
        ),
        (
            "profiled and limited refused",
            "recommendation-service",
            subject(vec![
                given("personalize.content", 1),
                refused(PROFILED, 2),
                refused("personalize.content.limited", 3),
            ]),
            Segment,
        ),
        (
            "a scoped grant does not unlock a rung",
            "recommendation-service",
            subject(vec![given(PROFILED, 1).scope("user.behavior")]),
            Contextual,
        ),
        (
            "outdated notice",
            "recommendation-service",
            subject(vec![given("personalize", 1).notice("1.0")]),
            Contextual,
        ),
        (
            "expired consent",
            "recommendation-service",
            subject(vec![given("personalize", 1).expires(NOW)]),
            Contextual,
        ),
        (
            "minor without a guardian",
            "recommendation-service",
            subject(vec![given("personalize", 1)]).age(AgeBand::Under13),
            Contextual,
        ),
        (
            "erased",
            "recommendation-service",
            subject(vec![given("personalize", 1)]).erased(),
            Anonymous,
        ),
        (
            "restricted",
            "recommendation-service",
            subject(vec![given("personalize", 1)]).restricted(),
            Anonymous,
        ),
        (
            "erased with no consent is still anonymous",
            "profile-service",
            subject(vec![]).erased(),
            Anonymous,
        ),
        (
            "a caller that may not ask for personalization",
            "mailer",
            subject(vec![given("personalize", 1), given(EMAIL, 2)]),
            Contextual,
        ),
        (
            "profile-service may ask for everything",
            "profile-service",
            subject(vec![given("personalize", 1)]),
            Profiled,
        ),
    ];
    let mut failures = Vec::new();
    for (name, caller, state, want) in rows {
        // The level does not depend on which purpose was asked about.
        for purpose in [PROFILED, "analytics.reporting", EMAIL] {
            let d = ok(check(caller, purpose, &[], "EU", &state));
            if d.personalization != want {
                failures.push(format!(
                    "{name} (asking {purpose}): want {want:?}, got {:?}",
                    d.personalization
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Obligations travel with an allow (or a partial allow) of targeted advertising, never with a deny.
#[test]
fn obligations() {
    struct Row {
        name: &'static str,
        purpose: &'static str,
        categories: &'static [&'static str],
        jurisdiction: &'static str,
        state: SubjectState,
        verdict: Verdict,
        exclude_third_party: bool,
    }
    let ads = || subject(vec![given("marketing", 1)]);
    let rows = [
        Row {
            name: "targeted ads allowed",
            purpose: TARGETED,
            categories: &["user.behavior.browsing_history"],
            jurisdiction: "EU",
            state: ads(),
            verdict: Verdict::Allow,
            exclude_third_party: true,
        },
        Row {
            name: "targeted ads partially allowed",
            purpose: TARGETED,
            categories: &["user.behavior.browsing_history", "user.health"],
            jurisdiction: "EU",
            state: ads(),
            verdict: Verdict::Partial,
            exclude_third_party: true,
        },
        Row {
            name: "the advertising root purpose",
            purpose: "marketing.advertising",
            categories: &[],
            jurisdiction: "EU",
            state: ads(),
            verdict: Verdict::Allow,
            exclude_third_party: true,
        },
        Row {
            name: "third-party ads under opt-out in US-CA",
            purpose: "marketing.advertising.third_party",
            categories: &[],
            jurisdiction: "US-CA",
            state: subject(vec![]),
            verdict: Verdict::Allow,
            exclude_third_party: true,
        },
        Row {
            name: "targeted ads denied",
            purpose: TARGETED,
            categories: &["user.behavior.browsing_history"],
            jurisdiction: "EU",
            state: subject(vec![]),
            verdict: Verdict::Deny,
            exclude_third_party: false,
        },
        Row {
            name: "marketing e-mail is not advertising",
            purpose: EMAIL,
            categories: &[],
            jurisdiction: "EU",
            state: ads(),
            verdict: Verdict::Allow,
            exclude_third_party: false,
        },
        Row {
            name: "personalization carries no obligation",
            purpose: PROFILED,
            categories: &[],
            jurisdiction: "EU",
            state: subject(vec![given(PROFILED, 1)]),
            verdict: Verdict::Allow,
            exclude_third_party: false,
        },
    ];
    for row in rows {
        let d = ok(check(
            "profile-service",
            row.purpose,
            row.categories,
            row.jurisdiction,
            &row.state,
        ));
        assert_eq!(d.verdict, row.verdict, "{}", row.name);
        let got: Vec<(&str, Vec<String>)> = d
            .obligations
            .iter()
            .map(|o| (o.kind, o.values.clone()))
            .collect();
        let want = if row.exclude_third_party {
            vec![("exclude_sources", vec!["third_party".to_owned()])]
        } else {
            Vec::new()
        };
        assert_eq!(got, want, "{}", row.name);
    }
}

/// `valid_until` is now + the policy TTL, capped by the expiry of the records behind allows.
#[test]
fn valid_until_is_capped_by_record_expiry() {
    assert_eq!(POLICY.decision_ttl_seconds, 300);
    let soon = NOW + Duration::seconds(100);
    let later = NOW + Duration::hours(1);
    let rows: Vec<(&str, &str, &[&str], SubjectState, OffsetDateTime)> = vec![
        (
            "no expiry",
            "analytics.reporting",
            &[],
            subject(vec![given("analytics", 1)]),
            NOW + TTL,
        ),
        (
            "expiry sooner than the TTL",
            "analytics.reporting",
            &[],
            subject(vec![given("analytics", 1).expires(soon)]),
            soon,
        ),
        (
            "expiry later than the TTL",
            "analytics.reporting",
            &[],
            subject(vec![given("analytics", 1).expires(later)]),
            NOW + TTL,
        ),
        (
            "a denial is not capped by anything",
            "analytics.reporting",
            &[],
            subject(vec![withdrawn("analytics", 1).expires(soon)]),
            NOW + TTL,
        ),
        (
            "an essential allow",
            "essential.service",
            &["user.account"],
            subject(vec![]),
            NOW + TTL,
        ),
        (
            "the soonest expiry among allowed categories",
            PROFILED,
            &[
                "user.behavior.browsing_history",
                "user.preferences.stated",
                "user.health",
            ],
            subject(vec![
                given(PROFILED, 1).scope("user.behavior").expires(later),
                given(PROFILED, 2)
                    .scope("user.preferences")
                    .expires(NOW + Duration::seconds(42)),
                // Denied (expressed, sensitive): its nearer expiry must not count.
                given(PROFILED, 3)
                    .scope("user.health")
                    .expressed()
                    .expires(NOW + Duration::seconds(7)),
            ]),
            NOW + Duration::seconds(42),
        ),
        (
            "the personalization level's consent caps a denied check (Recommend's question)",
            PROFILED,
            &[],
            subject(vec![
                given("personalize.content.limited", 1).expires(NOW + Duration::seconds(2)),
            ]),
            NOW + Duration::seconds(2),
        ),
        (
            "the personalization level's consent caps an allow on another purpose",
            "analytics.reporting",
            &[],
            subject(vec![
                given("analytics", 1),
                given("personalize.content.limited", 2).expires(NOW + Duration::seconds(30)),
            ]),
            NOW + Duration::seconds(30),
        ),
        (
            "the record behind the highest rung caps it, not the rungs beneath",
            "analytics.reporting",
            &[],
            subject(vec![
                given("analytics", 1),
                given(PROFILED, 2).expires(NOW + Duration::seconds(20)),
                given("personalize.content.limited", 3).expires(NOW + Duration::seconds(60)),
            ]),
            NOW + Duration::seconds(20),
        ),
        (
            "an opt-out allow behind an already expired grant is not cached",
            SALE,
            &[],
            subject(vec![given(SALE, 1).expires(NOW - Duration::hours(1))]),
            NOW,
        ),
    ];
    for (name, purpose, categories, state, want) in rows {
        let jurisdiction = if purpose == SALE { "US-CA" } else { "EU" };
        let d = ok(check(
            "profile-service",
            purpose,
            categories,
            jurisdiction,
            &state,
        ));
        assert_eq!(d.valid_until, want, "{name}: verdict {:?}", d.verdict);
    }
}

/// An explicit opt-in recorded after a GPC signal overrides it, and the decision says so in
/// plain language (with both dates) in `conflicts` and in the trace; a grant from before the
/// signal does not override it and names no conflict.
#[test]
fn an_opt_in_after_a_gpc_signal_is_named_as_a_conflict() {
    let after = subject(vec![given(SALE, 3)]).gpc_at(2);
    let d = ok(check("profile-service", SALE, &[], "US-CA", &after));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.conflicts,
        vec![
            "opted in to third_party_sharing.sale on 2026-05-31 19:23 UTC after a GPC signal on 2026-05-31 19:22 UTC"
                .to_owned()
        ]
    );
    let step = d
        .explanation
        .iter()
        .find(|s| s.rule == "gpc")
        .unwrap_or_else(|| panic!("no gpc step in {:?}", d.explanation));
    assert_eq!(step.outcome, "overridden");
    assert_eq!(step.detail, d.conflicts[0]);
    assert_eq!(step.record_ids, vec!["rec-3".to_owned()]);

    let before = subject(vec![given(SALE, 1)]).gpc_at(2);
    let d = ok(check("profile-service", SALE, &[], "US-CA", &before));
    assert_eq!(d.reason, Some(GpcOptOut));
    assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);

    let expressed = subject(vec![given(SALE, 3).expressed()]).gpc_at(2);
    let d = ok(check("profile-service", SALE, &[], "US-CA", &expressed));
    assert_eq!(
        d.reason,
        Some(GpcOptOut),
        "only an explicit opt-in overrides GPC"
    );
    assert!(d.conflicts.is_empty());

    // Without a GPC signal nothing conflicts.
    let plain = subject(vec![given(SALE, 3)]);
    assert!(
        ok(check("profile-service", SALE, &[], "US-CA", &plain))
            .conflicts
            .is_empty()
    );
}

/// `overriding_record` names the refusal or withdrawal that fully covers a grant: later, on its
/// purpose or an ancestor, on its channel (or none), on its scope (or wider).
#[test]
fn the_record_that_overrides_a_grant_is_named() {
    let state = subject(vec![
        given(EMAIL, 1).channel(Channel::Email),
        given(SMS, 2),
        given(PROFILED, 3).scope("user.behavior"),
        given("personalize.content.limited", 4),
        withdrawn("marketing", 5),
        withdrawn(COMMUNICATIONS, 6).channel(Channel::Push),
        withdrawn("personalize", 7).scope("user.behavior.browsing_history"),
        given(SMS, 8).channel(Channel::Sms),
    ]);
    let by = |r: &Record| consentgate_policy::overriding_record(&state, r).map(|n| n.id.clone());
    let r = |i: usize| &state.records[i];
    assert_eq!(
        by(r(0)),
        Some("rec-5".into()),
        "parent withdrawal, no channel"
    );
    assert_eq!(by(r(1)), Some("rec-5".into()));
    assert_eq!(
        by(r(2)),
        None,
        "a narrower scope covers only part of the grant"
    );
    assert_eq!(by(r(3)), None, "no withdrawal above it");
    assert_eq!(by(r(4)), None, "a withdrawal is never overridden");
    assert_eq!(by(r(7)), None, "a grant after the withdrawal stands");
}

/// The listings' helpers place imported records by their time as `decide` does: an old imported
/// withdrawal overrides no later grant, an old imported grant is overridden by a later
/// withdrawal, and an imported opt-in from before the GPC signal names no conflict.
#[test]
fn imported_records_take_their_place_by_time_in_listings() {
    let years_ago = NOW - Duration::days(3 * 365);
    let state = subject(vec![
        given(EMAIL, 5),
        withdrawn("marketing", 9).imported(years_ago),
        given(SMS, 10).imported(years_ago - Duration::days(1)),
    ]);
    let by = |r: &Record| consentgate_policy::overriding_record(&state, r).map(|n| n.id.clone());
    assert_eq!(
        by(&state.records[0]),
        None,
        "an older import overrides nothing"
    );
    assert_eq!(
        by(&state.records[2]),
        Some("rec-9".into()),
        "older than the withdrawal"
    );

    let gpc = subject(vec![
        given(SALE, 9).imported(live_at(4)),
        given(TARGETED, 10).imported(live_at(6)),
    ])
    .gpc_at(5);
    assert_eq!(
        consentgate_policy::gpc_conflicts(&POLICY, &gpc, NOW),
        vec![
            "opted in to marketing.advertising.first_party.targeted on 2026-05-31 19:26 UTC after a GPC signal on 2026-05-31 19:25 UTC"
                .to_owned()
        ]
    );
}

/// The explanation names the rule and the record that decided.
#[test]
fn the_explanation_cites_the_deciding_record() {
    let state = subject(vec![given("marketing", 5), withdrawn(SMS, 7)]);
    let d = ok(check("profile-service", SMS, &[], "EU", &state));
    let step = d
        .explanation
        .iter()
        .find(|s| s.outcome == "WITHDRAWN")
        .unwrap_or_else(|| panic!("no WITHDRAWN step in {:?}", d.explanation));
    assert_eq!(step.rule, "legal_basis");
    assert_eq!(step.record_ids, vec!["rec-7".to_owned()]);

    let d = ok(check("profile-service", EMAIL, &[], "EU", &state));
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(
        d.explanation
            .iter()
            .any(|s| s.outcome == "allow" && s.record_ids == vec!["rec-5".to_owned()]),
        "{:?}",
        d.explanation
    );

    let d = ok(check("mailer", "analytics", &[], "EU", &state));
    assert_eq!(d.explanation[0].outcome, "CALLER_NOT_PERMITTED");
}

/// The decision is a function of its inputs: asking twice gives the same answer.
#[test]
fn decide_is_deterministic() {
    for row in table() {
        let (a, b) = (row.run(), row.run());
        assert_eq!(a, b, "{}", row.name);
    }
}

/// Rule 8 under a basis that does not deny an expired grant itself: a sensitive category is
/// released only on a live explicit grant naming it (found by the `decision_differential` fuzz
/// target: `research` made `opt_out`, an explicit grant scoped to `user.health` that had expired
/// still released health data).
#[test]
fn an_expired_explicit_grant_does_not_release_a_sensitive_category() {
    let text = consentgate_policy::DEFAULT_POLICY_TOML.replace(
        "\"marketing.advertising.third_party\" = \"opt_out\"",
        "\"marketing.advertising.third_party\" = \"opt_out\"\n\"research\" = \"opt_out\"",
    );
    let policy = Policy::from_toml(&text, "research-opt-out.toml").expect("the policy loads");
    let decide_health = |expires_at: OffsetDateTime| {
        let state = subject(vec![
            given("research", 5)
                .scope("user.health")
                .expires(expires_at),
        ]);
        let categories = vec!["user.health".to_owned()];
        let input = CheckInput {
            caller: "preference-center",
            purpose: "research",
            categories: &categories,
            channel: None,
            jurisdiction: "US-CA",
            gpc: false,
            now: NOW,
            explain: false,
        };
        ok(decide(&policy, &input, &state))
    };
    let live = decide_health(NOW + Duration::days(1));
    assert_eq!(live.verdict, Verdict::Allow, "{live:?}");
    let lapsed = decide_health(NOW - Duration::days(1));
    assert_eq!(
        lapsed.reason,
        Some(Reason::SensitiveRequiresExplicitConsent),
        "{lapsed:?}"
    );
}
