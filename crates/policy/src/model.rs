//! The validated policy: taxonomy (purposes, data categories), jurisdictions, callers and rules.

use crate::pattern::{Pattern, is_ancestor_or_self, parent_key};
use std::collections::BTreeMap;
use std::fmt;

/// The legal basis a purpose relies on in a jurisdiction (recorded on every consent event,
/// serialized as its policy-file spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    /// Opt-in: needs a current `given` record.
    Consent,
    /// Allowed unless refused, withdrawn, or opted out by a GPC signal.
    OptOut,
    /// Needed to perform a contract with the person; no consent needed.
    Contract,
    /// Strictly necessary to provide the service; no consent needed.
    Essential,
}

impl LegalBasis {
    /// The policy-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LegalBasis::Consent => "consent",
            LegalBasis::OptOut => "opt_out",
            LegalBasis::Contract => "contract",
            LegalBasis::Essential => "essential",
        }
    }

    /// Parses the policy-file spelling.
    pub fn parse(text: &str) -> Option<LegalBasis> {
        Some(match text {
            "consent" => LegalBasis::Consent,
            "opt_out" => LegalBasis::OptOut,
            "contract" => LegalBasis::Contract,
            "essential" => LegalBasis::Essential,
            _ => return None,
        })
    }

    /// Essential and contract purposes need no consent.
    pub fn needs_no_consent(self) -> bool {
        matches!(self, LegalBasis::Contract | LegalBasis::Essential)
    }
}

/// A communication channel a purpose may be scoped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// E-mail.
    Email,
    /// Text messages.
    Sms,
    /// Push notifications.
    Push,
    /// Messages inside the app or site.
    InApp,
}

impl Channel {
    /// Every channel, for error messages.
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::InApp => "in_app",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The personalization ladder, lowest first so that `Ord` ranks `Profiled` highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Personalization {
    /// No personalization, not even from request context.
    Anonymous,
    /// From the request's context only.
    Contextual,
    /// Coarse segments.
    Segment,
    /// Zero-party data only.
    Limited,
    /// The full profile.
    Profiled,
}

impl Personalization {
    /// Parses the policy-file spelling of a rung that a purpose can unlock.
    pub fn parse_rung(text: &str) -> Option<Personalization> {
        Some(match text {
            "segment" => Personalization::Segment,
            "limited" => Personalization::Limited,
            "profiled" => Personalization::Profiled,
            _ => return None,
        })
    }
}

/// A caller's role: which RPCs it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Records consent and signals; reads a subject's consents and receipts.
    PreferenceCenter,
    /// Writes first-party events and attributes.
    Collector,
    /// The profile and recommendation services: Check, BatchCheck, WatchChanges; may delegate.
    Enforcer,
    /// Reads profile data for the purposes the policy lists for it.
    Reader,
    /// Data-subject requests: export, rectify, restrict, erase, access reports.
    PrivacyOps,
    /// History, Explain, VerifyLedger.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::PreferenceCenter,
        Role::Collector,
        Role::Enforcer,
        Role::Reader,
        Role::PrivacyOps,
        Role::Auditor,
    ];

    /// The policy-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PreferenceCenter => "preference_center",
            Role::Collector => "collector",
            Role::Enforcer => "enforcer",
            Role::Reader => "reader",
            Role::PrivacyOps => "privacy_ops",
            Role::Auditor => "auditor",
        }
    }

    /// Parses the policy-file spelling.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// A notice version, `MAJOR[.MINOR]`. Consent given under an older major version is outdated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeVersion {
    /// The major version: a change here invalidates earlier consents.
    pub major: u32,
    /// The version as written.
    pub text: String,
}

impl NoticeVersion {
    /// Parses `MAJOR` or `MAJOR.MINOR[...]`.
    pub fn parse(text: &str) -> Option<NoticeVersion> {
        let major = text.split('.').next()?.parse().ok()?;
        let well_formed = text
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        well_formed.then(|| NoticeVersion {
            major,
            text: text.to_owned(),
        })
    }
}

/// A data category (fideslang style `user.contact.email`).
#[derive(Debug, Clone)]
pub struct Category {
    /// The dotted key.
    pub key: String,
    /// Plain-language description shown to people.
    pub description: String,
    /// GDPR Art. 9 special category or CPRA sensitive PI: needs explicit consent naming it.
    pub sensitive: bool,
    /// How long data of this category may be kept, in days (0: as long as the purpose allows).
    pub retention_days: u32,
}

/// A purpose of processing (fideslang "data use" style `personalize.content.profiled`).
#[derive(Debug, Clone)]
pub struct Purpose {
    /// The dotted key.
    pub key: String,
    /// Plain-language description shown to people.
    pub description: String,
    /// Legal basis unless a jurisdiction overrides it.
    pub default_basis: LegalBasis,
    /// Data categories the purpose may use (each covers its descendants): data minimization.
    pub categories: Vec<String>,
    /// Channels, when the purpose is channel-scoped (consent is per channel).
    pub channels: Vec<Channel>,
    /// Whether a Global Privacy Control signal opts the person out of this purpose.
    pub gpc_scoped: bool,
    /// Retention of data collected for this purpose, in days.
    pub retention_days: u32,
    /// The notice that describes this purpose.
    pub notice_id: String,
    /// The notice's current version.
    pub notice_version: NoticeVersion,
    /// The personalization rung this purpose unlocks, if any.
    pub personalization: Option<Personalization>,
}

impl Purpose {
    /// Whether the purpose may use `category` (it or an ancestor is listed).
    pub fn needs(&self, category: &str) -> bool {
        self.categories
            .iter()
            .any(|c| is_ancestor_or_self(c, category))
    }
}

/// A jurisdiction: consent age, GPC and per-purpose legal bases.
#[derive(Debug, Clone)]
pub struct Jurisdiction {
    /// Code, e.g. `EU`, `US-CA`.
    pub code: String,
    /// Human-readable name.
    pub name: String,
    /// Below this age a person needs a guardian's consent.
    pub consent_age: u8,
    /// Whether GPC signals are legally binding here.
    pub honors_gpc: bool,
    /// Overrides of purposes' legal bases; the most specific matching purpose key wins.
    pub legal_basis: BTreeMap<String, LegalBasis>,
}

/// A calling service identity.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity's name (what tokens map to).
    pub name: String,
    /// What it is.
    pub description: String,
    /// Which RPCs it may call.
    pub roles: Vec<Role>,
    /// Which purposes it may ask decisions for (directly or through delegation).
    pub purposes: Vec<Pattern>,
    /// Which RPCs it may make on behalf of which other callers (`on_behalf_of`); empty: none.
    pub delegates: crate::delegation::Delegates,
}

/// Rules that apply across purposes.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Sensitive categories need an explicit record whose scope names the category.
    pub sensitive_requires_explicit_consent: bool,
    /// Subjects under the jurisdiction's consent age need guardian-backed consent.
    pub minors_require_guardian: bool,
    /// GPC signals opt out of GPC-scoped purposes in jurisdictions that honor GPC.
    pub honor_gpc: bool,
    /// Purposes whose allows carry the obligation to drop third-party-sourced data.
    pub exclude_third_party_sources_for: Vec<Pattern>,
}

/// A validated policy. Construct with [`Policy::from_toml`] or [`Policy::default_policy`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's version label, recorded in decisions' explanations.
    pub version: String,
    /// Jurisdiction used when a request names none.
    pub default_jurisdiction: String,
    /// How long a cache may keep a decision (capped by record expiry).
    pub decision_ttl_seconds: u32,
    /// The data controller named on receipts.
    pub controller: String,
    /// The privacy policy URL named on receipts.
    pub policy_url: String,
    /// Purposes by key.
    pub purposes: BTreeMap<String, Purpose>,
    /// Data categories by key.
    pub categories: BTreeMap<String, Category>,
    /// Jurisdictions by code.
    pub jurisdictions: BTreeMap<String, Jurisdiction>,
    /// Callers by name.
    pub callers: BTreeMap<String, Caller>,
    /// Cross-purpose rules.
    pub rules: Rules,
    /// Purposes that unlock a personalization rung, highest rung first.
    pub ladder: Vec<(Personalization, String)>,
}

impl Policy {
    /// The shipped default policy. It is validated by the test suite, so this cannot fail in a release.
    pub fn default_policy() -> Result<Policy, crate::PolicyError> {
        Policy::from_toml(crate::DEFAULT_POLICY_TOML, "policy/default.toml")
    }

    /// The legal basis of `purpose` in `jurisdiction`: the most specific override, else the default.
    pub fn legal_basis(&self, purpose: &Purpose, jurisdiction: &Jurisdiction) -> LegalBasis {
        let mut key = Some(purpose.key.as_str());
        while let Some(k) = key {
            if let Some(basis) = jurisdiction.legal_basis.get(k) {
                return *basis;
            }
            key = parent_key(k);
        }
        purpose.default_basis
    }

    /// Whether caller `name` may ask for decisions about `purpose`.
    pub fn caller_may_ask(&self, name: &str, purpose: &str) -> bool {
        self.callers
            .get(name)
            .is_some_and(|c| c.purposes.iter().any(|p| p.matches(purpose)))
    }

    /// The jurisdiction by code, or the default one for an empty code.
    pub fn jurisdiction(&self, code: &str) -> Option<&Jurisdiction> {
        let code = if code.is_empty() {
            &self.default_jurisdiction
        } else {
            code
        };
        self.jurisdictions.get(code)
    }
}

/// A person's age band, as recorded by a signal. Bands, not birthdates: data minimization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeBand {
    /// 0–12.
    Under13,
    /// 13–15.
    From13To15,
    /// 16–17.
    From16To17,
    /// 18 and over.
    Adult,
}

impl AgeBand {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AgeBand::Under13 => "under_13",
            AgeBand::From13To15 => "13_15",
            AgeBand::From16To17 => "16_17",
            AgeBand::Adult => "adult",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<AgeBand> {
        [
            AgeBand::Under13,
            AgeBand::From13To15,
            AgeBand::From16To17,
            AgeBand::Adult,
        ]
        .into_iter()
        .find(|b| b.as_str() == text)
    }

    /// The youngest age in the band: a band straddling the consent age counts as minor (fail closed).
    pub fn youngest(self) -> u8 {
        match self {
            AgeBand::Under13 => 0,
            AgeBand::From13To15 => 13,
            AgeBand::From16To17 => 16,
            AgeBand::Adult => 18,
        }
    }
}
