//! Loading a policy from TOML: every problem is reported with file, line and reason, all at once,
//! and a policy with any problem is rejected whole (the service never starts on a half-valid policy).

use crate::delegation::{DELEGABLE_RPCS, Delegates, Principals};
use crate::model::{
    Caller, Category, Channel, Jurisdiction, LegalBasis, NoticeVersion, Personalization, Policy,
    Purpose, Role, Rules,
};
use crate::pattern::{Pattern, parent_key};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, in words a policy author understands.
    pub reason: String,
}

/// A rejected policy file: every problem found, each with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name as given.
    pub file: String,
    /// The problems, in file order.
    pub issues: Vec<PolicyIssue>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, issue.line, issue.column, issue.reason
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    policy: RawHeader,
    #[serde(default)]
    rules: Option<RawRules>,
    categories: BTreeMap<Spanned<String>, RawCategory>,
    purposes: BTreeMap<Spanned<String>, RawPurpose>,
    jurisdictions: BTreeMap<Spanned<String>, RawJurisdiction>,
    callers: BTreeMap<Spanned<String>, RawCaller>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    version: String,
    default_jurisdiction: Spanned<String>,
    #[serde(default = "default_ttl")]
    decision_ttl_seconds: Spanned<u32>,
    controller: String,
    policy_url: String,
}

fn default_ttl() -> Spanned<u32> {
    Spanned::new(0..0, 300)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    sensitive_requires_explicit_consent: bool,
    minors_require_guardian: bool,
    honor_gpc: bool,
    #[serde(default)]
    exclude_third_party_sources_for: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    description: String,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    retention_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    description: String,
    legal_basis: Spanned<String>,
    #[serde(default)]
    categories: Vec<Spanned<String>>,
    #[serde(default)]
    channels: Vec<Spanned<String>>,
    #[serde(default)]
    gpc_scoped: bool,
    retention_days: u32,
    notice_id: String,
    notice_version: Spanned<String>,
    #[serde(default)]
    personalization_level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJurisdiction {
    name: String,
    consent_age: Spanned<u8>,
    #[serde(default)]
    honors_gpc: bool,
    #[serde(default)]
    legal_basis: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    #[serde(default)]
    description: String,
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    purposes: Vec<Spanned<String>>,
    /// RPC short name → the callers it may act for (`"*"`: every caller).
    #[serde(default)]
    delegates: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

/// Collects issues with positions computed from byte offsets.
struct Issues<'a> {
    text: &'a str,
    found: Vec<PolicyIssue>,
}

impl Issues<'_> {
    fn at(&mut self, offset: usize, reason: impl Into<String>) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.found.push(PolicyIssue {
            line,
            column,
            reason: reason.into(),
        });
    }

    fn on<T>(&mut self, spanned: &Spanned<T>, reason: impl Into<String>) {
        self.at(spanned.span().start, reason);
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

impl Policy {
    /// Parses and validates a policy. `file` is only used to name the file in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let mut issues = Issues {
                text,
                found: Vec::new(),
            };
            issues.at(
                e.span().map_or(0, |s| s.start),
                e.message().trim().to_owned(),
            );
            PolicyError {
                file: file.to_owned(),
                issues: issues.found,
            }
        })?;
        let mut issues = Issues {
            text,
            found: Vec::new(),
        };
        let policy = validate(raw, &mut issues);
        if issues.found.is_empty() {
            Ok(policy)
        } else {
            let mut found = issues.found;
            found.sort_by_key(|i| (i.line, i.column));
            Err(PolicyError {
                file: file.to_owned(),
                issues: found,
            })
        }
    }

    /// Reads and validates a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: name.clone(),
            issues: vec![PolicyIssue {
                line: 0,
                column: 0,
                reason: format!("cannot read the file: {e}"),
            }],
        })?;
        Policy::from_toml(&text, &name)
    }
}

fn validate(raw: RawPolicy, issues: &mut Issues<'_>) -> Policy {
    let mut categories = BTreeMap::new();
    for (key, c) in &raw.categories {
        if !valid_key(key.get_ref()) {
            issues.on(
                key,
                format!(
                    "category key {:?} must be dotted lowercase words",
                    key.get_ref()
                ),
            );
        }
        if let Some(parent) = parent_key(key.get_ref())
            && !raw.categories.keys().any(|k| k.get_ref() == parent)
        {
            issues.on(key, format!("category {:?} has no parent category {parent:?}: declare every level of the hierarchy", key.get_ref()));
        }
        categories.insert(
            key.get_ref().clone(),
            Category {
                key: key.get_ref().clone(),
                description: c.description.clone(),
                sensitive: c.sensitive,
                retention_days: c.retention_days,
            },
        );
    }

    let mut purposes = BTreeMap::new();
    let mut ladder = Vec::new();
    for (key, p) in &raw.purposes {
        let k = key.get_ref();
        if !valid_key(k) {
            issues.on(
                key,
                format!("purpose key {k:?} must be dotted lowercase words"),
            );
        }
        if let Some(parent) = parent_key(k)
            && !raw.purposes.keys().any(|o| o.get_ref() == parent)
        {
            issues.on(key, format!("purpose {k:?} has no parent purpose {parent:?}: declare every level of the hierarchy"));
        }
        let basis = LegalBasis::parse(p.legal_basis.get_ref()).unwrap_or_else(|| {
            issues.on(
                &p.legal_basis,
                format!(
                    "unknown legal basis {:?} (expected consent, opt_out, contract or essential)",
                    p.legal_basis.get_ref()
                ),
            );
            LegalBasis::Consent
        });
        for c in &p.categories {
            if !categories.contains_key(c.get_ref()) {
                issues.on(
                    c,
                    format!(
                        "purpose {k:?} names unknown data category {:?}",
                        c.get_ref()
                    ),
                );
            }
        }
        let mut channels = Vec::new();
        for c in &p.channels {
            match Channel::parse(c.get_ref()) {
                Some(ch) => channels.push(ch),
                None => issues.on(
                    c,
                    format!(
                        "unknown channel {:?} (expected email, sms, push or in_app)",
                        c.get_ref()
                    ),
                ),
            }
        }
        let notice_version =
            NoticeVersion::parse(p.notice_version.get_ref()).unwrap_or_else(|| {
                issues.on(
                    &p.notice_version,
                    format!(
                        "notice_version {:?} must look like 2 or 2.1",
                        p.notice_version.get_ref()
                    ),
                );
                NoticeVersion {
                    major: 0,
                    text: String::new(),
                }
            });
        let personalization = p.personalization_level.as_ref().and_then(|level| {
            let rung = Personalization::parse_rung(level.get_ref());
            if rung.is_none() {
                issues.on(
                    level,
                    format!(
                        "personalization_level {:?} must be segment, limited or profiled",
                        level.get_ref()
                    ),
                );
            }
            rung
        });
        if let Some(rung) = personalization {
            if let Some((_, other)) = ladder.iter().find(|(r, _)| *r == rung) {
                issues.on(
                    key,
                    format!(
                        "purposes {other:?} and {k:?} both unlock the same personalization level"
                    ),
                );
            }
            ladder.push((rung, k.clone()));
        }
        purposes.insert(
            k.clone(),
            Purpose {
                key: k.clone(),
                description: p.description.clone(),
                default_basis: basis,
                categories: p.categories.iter().map(|c| c.get_ref().clone()).collect(),
                channels,
                gpc_scoped: p.gpc_scoped,
                retention_days: p.retention_days,
                notice_id: p.notice_id.clone(),
                notice_version,
                personalization,
            },
        );
    }
    ladder.sort_by_key(|entry| std::cmp::Reverse(entry.0));

    let mut jurisdictions = BTreeMap::new();
    for (code, j) in &raw.jurisdictions {
        let mut legal_basis = BTreeMap::new();
        for (purpose, basis) in &j.legal_basis {
            if !purposes.contains_key(purpose.get_ref()) {
                issues.on(
                    purpose,
                    format!(
                        "jurisdiction {:?} sets the legal basis of unknown purpose {:?}",
                        code.get_ref(),
                        purpose.get_ref()
                    ),
                );
            }
            match LegalBasis::parse(basis.get_ref()) {
                Some(b) => {
                    legal_basis.insert(purpose.get_ref().clone(), b);
                }
                None => issues.on(basis, format!("unknown legal basis {:?}", basis.get_ref())),
            }
        }
        if *j.consent_age.get_ref() > 21 {
            issues.on(&j.consent_age, "consent_age must be at most 21");
        }
        jurisdictions.insert(
            code.get_ref().clone(),
            Jurisdiction {
                code: code.get_ref().clone(),
                name: j.name.clone(),
                consent_age: *j.consent_age.get_ref(),
                honors_gpc: j.honors_gpc,
                legal_basis,
            },
        );
    }
    if !jurisdictions.contains_key(raw.policy.default_jurisdiction.get_ref()) {
        issues.on(
            &raw.policy.default_jurisdiction,
            format!(
                "default_jurisdiction {:?} is not defined under [jurisdictions]",
                raw.policy.default_jurisdiction.get_ref()
            ),
        );
    }
    if *raw.policy.decision_ttl_seconds.get_ref() == 0
        || *raw.policy.decision_ttl_seconds.get_ref() > 86_400
    {
        issues.on(
            &raw.policy.decision_ttl_seconds,
            "decision_ttl_seconds must be between 1 and 86400",
        );
    }

    let check_pattern = |text: &Spanned<String>, issues: &mut Issues<'_>, what: &str| {
        let pattern = Pattern::parse(text.get_ref());
        if let Some(root) = pattern.root()
            && !purposes.contains_key(root)
        {
            issues.on(text, format!("{what} names unknown purpose {root:?}"));
        }
        pattern
    };

    let mut callers = BTreeMap::new();
    for (name, c) in &raw.callers {
        let mut roles = Vec::new();
        for r in &c.roles {
            match Role::parse(r.get_ref()) {
                Some(role) => roles.push(role),
                None => issues.on(r, format!("unknown role {:?} (expected one of preference_center, collector, enforcer, reader, privacy_ops, auditor)", r.get_ref())),
            }
        }
        if roles.is_empty() && !c.roles.is_empty() || c.roles.is_empty() {
            issues.on(
                name,
                format!("caller {:?} needs at least one valid role", name.get_ref()),
            );
        }
        if name.get_ref().is_empty() || name.get_ref().chars().any(char::is_whitespace) {
            // Records name a delegated actor as "<delegate> on behalf of <caller>": a name with
            // spaces could forge that sentence.
            issues.on(
                name,
                format!(
                    "caller name {:?} must be non-empty and contain no spaces",
                    name.get_ref()
                ),
            );
        }
        let purposes = c
            .purposes
            .iter()
            .map(|p| check_pattern(p, issues, &format!("caller {:?}", name.get_ref())))
            .collect();
        let delegates = delegates_of(name.get_ref(), &c.delegates, &raw.callers, issues);
        callers.insert(
            name.get_ref().clone(),
            Caller {
                name: name.get_ref().clone(),
                description: c.description.clone(),
                roles,
                purposes,
                delegates,
            },
        );
    }

    let rules = match &raw.rules {
        Some(r) => Rules {
            sensitive_requires_explicit_consent: r.sensitive_requires_explicit_consent,
            minors_require_guardian: r.minors_require_guardian,
            honor_gpc: r.honor_gpc,
            exclude_third_party_sources_for: r
                .exclude_third_party_sources_for
                .iter()
                .map(|p| check_pattern(p, issues, "rules.exclude_third_party_sources_for"))
                .collect(),
        },
        // Fail closed: a policy without a [rules] table gets every protective rule.
        None => Rules {
            sensitive_requires_explicit_consent: true,
            minors_require_guardian: true,
            honor_gpc: true,
            exclude_third_party_sources_for: Vec::new(),
        },
    };

    Policy {
        version: raw.policy.version,
        default_jurisdiction: raw.policy.default_jurisdiction.into_inner(),
        decision_ttl_seconds: raw.policy.decision_ttl_seconds.into_inner(),
        controller: raw.policy.controller,
        policy_url: raw.policy.policy_url,
        purposes,
        categories,
        jurisdictions,
        callers,
        rules,
        ladder,
    }
}

/// A caller's `delegates` table, validated: every RPC one whose requests carry `on_behalf_of`,
/// every name `*` or a caller of the policy.
fn delegates_of(
    caller: &str,
    raw: &BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    callers: &BTreeMap<Spanned<String>, RawCaller>,
    issues: &mut Issues<'_>,
) -> Delegates {
    let mut delegates = Delegates::new();
    for (rpc, names) in raw {
        if !DELEGABLE_RPCS.contains(&rpc.get_ref().as_str()) {
            issues.on(
                rpc,
                format!(
                    "caller {caller:?} delegates {:?}, which is not a delegable RPC (expected one of {})",
                    rpc.get_ref(),
                    DELEGABLE_RPCS.join(", ")
                ),
            );
        }
        let principals = if names.iter().any(|n| n.get_ref() == "*") {
            Principals::Any
        } else {
            Principals::Named(names.iter().map(|n| n.get_ref().clone()).collect())
        };
        for n in names {
            if n.get_ref() != "*" && !callers.keys().any(|k| k.get_ref() == n.get_ref()) {
                issues.on(
                    n,
                    format!(
                        "caller {caller:?} may delegate {:?} for unknown caller {:?}",
                        rpc.get_ref(),
                        n.get_ref()
                    ),
                );
            }
        }
        delegates.insert(rpc.get_ref().clone(), principals);
    }
    delegates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_rich_enough() {
        let policy = Policy::default_policy().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            policy.purposes.len() >= 15,
            "{} purposes",
            policy.purposes.len()
        );
        assert!(
            policy.categories.len() >= 25,
            "{} categories",
            policy.categories.len()
        );
        for key in [
            "user.contact.email",
            "user.preferences.stated",
            "user.survey.answers",
            "user.behavior.browsing_history",
            "user.behavior.purchase_history",
            "user.location.coarse",
            "user.location.precise",
            "user.demographic.age",
            "user.health",
            "user.financial",
            "user.biometric",
            "user.childrens",
        ] {
            assert!(
                policy.categories.contains_key(key),
                "missing category {key}"
            );
        }
        for sensitive in [
            "user.health",
            "user.financial",
            "user.biometric",
            "user.location.precise",
        ] {
            assert!(
                policy.categories[sensitive].sensitive,
                "{sensitive} must be sensitive"
            );
        }
        // Strict opt-in: every purpose that is not essential/contract relies on consent by default.
        for p in policy.purposes.values() {
            assert!(
                p.default_basis == LegalBasis::Consent || p.default_basis.needs_no_consent(),
                "{} defaults to {:?}",
                p.key,
                p.default_basis
            );
        }
        let ca = &policy.jurisdictions["US-CA"];
        assert!(ca.honors_gpc);
        let sale = &policy.purposes["third_party_sharing.sale"];
        assert_eq!(policy.legal_basis(sale, ca), LegalBasis::OptOut);
        assert!(sale.gpc_scoped);
        assert_eq!(
            policy.legal_basis(sale, &policy.jurisdictions["EU"]),
            LegalBasis::Consent
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = Policy::from_toml("[policy]\nversion = 1\n", "p.toml").unwrap_err();
        assert_eq!(err.file, "p.toml");
        assert_eq!(err.issues[0].line, 2, "{err}");
        assert!(err.to_string().starts_with("p.toml:2:"), "{err}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let mut text = crate::DEFAULT_POLICY_TOML.to_owned();
        text.push_str(
            "\n[purposes.\"analytics.broken\"]\ndescription = \"x\"\nlegal_basis = \"maybe\"\ncategories = [\"user.nope\"]\nretention_days = 1\nnotice_id = \"n\"\nnotice_version = \"v1\"\n",
        );
        let err = Policy::from_toml(&text, "bad.toml").unwrap_err();
        let reasons: Vec<_> = err.issues.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(err.issues.len(), 3, "{err}");
        assert!(
            reasons[0].contains("unknown legal basis \"maybe\""),
            "{err}"
        );
        assert!(
            reasons[1].contains("unknown data category \"user.nope\""),
            "{err}"
        );
        assert!(reasons[2].contains("notice_version"), "{err}");
        let base = crate::DEFAULT_POLICY_TOML.lines().count();
        assert_eq!(err.issues[0].line, base + 4, "{err}");
        assert_eq!(err.issues[1].line, base + 5, "{err}");
    }

    #[test]
    fn unknown_fields_and_roles_are_rejected() {
        let text =
            crate::DEFAULT_POLICY_TOML.replace("roles = [\"enforcer\"]", "roles = [\"superuser\"]");
        let err = Policy::from_toml(&text, "p.toml").unwrap_err();
        assert!(
            err.to_string().contains("unknown role \"superuser\""),
            "{err}"
        );
        let text = crate::DEFAULT_POLICY_TOML.replace("[rules]", "[rules]\nbogus = true");
        let err = Policy::from_toml(&text, "p.toml").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn delegation_to_unknown_callers_or_rpcs_is_rejected_with_its_line() {
        let mut text = crate::DEFAULT_POLICY_TOML.to_owned();
        text.push_str(
            "\n[callers.\"batch-job\"]\nroles = [\"reader\"]\ndelegates = { \"consent.Check\" = [\"mailer\", \"ghost\"], \"consent.Grant\" = [\"*\"] }\n",
        );
        let err = Policy::from_toml(&text, "p.toml").unwrap_err();
        let line = crate::DEFAULT_POLICY_TOML.lines().count() + 4;
        assert_eq!(err.issues.len(), 2, "{err}");
        assert!(err.issues.iter().all(|i| i.line == line), "{err}");
        assert!(
            err.to_string()
                .contains("may delegate \"consent.Check\" for unknown caller \"ghost\""),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("delegates \"consent.Grant\", which is not a delegable RPC"),
            "{err}"
        );
        let text =
            crate::DEFAULT_POLICY_TOML.replace("[callers.\"mailer\"]", "[callers.\"mail er\"]");
        let err = Policy::from_toml(&text, "p.toml").unwrap_err();
        assert!(err.to_string().contains("contain no spaces"), "{err}");
    }
}
