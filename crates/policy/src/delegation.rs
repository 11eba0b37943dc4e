//! Delegation rules: which caller may make which RPC on behalf of which other callers.
//!
//! A service that acts for another caller (the profile service reading for a mailer, or erasing
//! for the privacy team) says so in the request's `on_behalf_of` instead of forwarding that
//! caller's credentials. The policy decides whether it may: each caller's `delegates` table maps
//! an RPC (`consent.Check`, `consent.EraseSubject`, …) to the callers it may act for, by name or
//! `*` for every caller. Nothing is delegable unless the policy says so (fail closed).

use std::collections::BTreeMap;

/// The RPCs whose requests carry `on_behalf_of`, by short name (`<service>.<Method>`): the only
/// ones a `delegates` table may name. Their handlers resolve the delegation
/// (`consentgate_runtime::delegation`); an RPC without the field cannot be delegated.
pub const DELEGABLE_RPCS: &[&str] = &[
    "consent.Check",
    "consent.BatchCheck",
    "consent.GetConsents",
    "consent.ListConsentHistory",
    "consent.EraseSubject",
    "consent.FindErased",
    "consent.ListErasures",
    "consent.ReapplyErasures",
    "recommendation.Unlearn",
];

/// Whom a caller may act for on one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principals {
    /// Every caller of the policy (`"*"`).
    Any,
    /// Only these callers, by name.
    Named(Vec<String>),
}

impl Principals {
    /// Whether `caller` is one of them.
    pub fn includes(&self, caller: &str) -> bool {
        match self {
            Principals::Any => true,
            Principals::Named(names) => names.iter().any(|n| n == caller),
        }
    }
}

/// A caller's delegation rules: RPC short name → whom it may act for there.
pub type Delegates = BTreeMap<String, Principals>;

impl crate::Policy {
    /// Whether `delegate` may call `rpc` (a short name, see [`DELEGABLE_RPCS`]) on behalf of
    /// someone at all: what the auth layer asks before the request's `on_behalf_of` is known.
    pub fn delegates_rpc(&self, delegate: &str, rpc: &str) -> bool {
        self.callers
            .get(delegate)
            .is_some_and(|c| c.delegates.contains_key(rpc))
    }

    /// Whether `delegate` may call `rpc` on behalf of `principal`. A caller the policy does not
    /// define is never a principal, even under `*`.
    pub fn may_delegate(&self, delegate: &str, rpc: &str, principal: &str) -> bool {
        self.callers.contains_key(principal)
            && self
                .callers
                .get(delegate)
                .and_then(|c| c.delegates.get(rpc))
                .is_some_and(|p| p.includes(principal))
    }
}

/// The short name of an RPC from its gRPC path: `/consentgate.consent.v1.ConsentService/Check`
/// → `consent.Check`. `None` for paths outside consentgate's packages.
pub fn rpc_short_name(path: &str) -> Option<String> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let package = service.strip_prefix("consentgate.")?.split('.').next()?;
    Some(format!("{package}.{method}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_come_from_the_package_and_method() {
        assert_eq!(
            rpc_short_name("/consentgate.consent.v1.ConsentService/EraseSubject").as_deref(),
            Some("consent.EraseSubject")
        );
        assert_eq!(
            rpc_short_name("/consentgate.recommendation.v1.RecommendationService/Unlearn")
                .as_deref(),
            Some("recommendation.Unlearn")
        );
        assert_eq!(rpc_short_name("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_default_policy_delegates_only_what_it_names() {
        let policy = crate::Policy::default_policy().expect("default policy");
        // The profile service checks for anyone who calls it, and acts for the privacy team.
        assert!(policy.may_delegate("profile-service", "consent.Check", "mailer"));
        assert!(policy.may_delegate("profile-service", "consent.EraseSubject", "privacy-ops"));
        assert!(!policy.may_delegate("profile-service", "consent.EraseSubject", "mailer"));
        assert!(!policy.may_delegate("profile-service", "consent.Check", "nobody"));
        // The recommendation service personalizes for the storefront only: never a mailer.
        assert!(policy.may_delegate("recommendation-service", "consent.BatchCheck", "storefront"));
        assert!(!policy.may_delegate("recommendation-service", "consent.Check", "mailer"));
        assert!(!policy.may_delegate("recommendation-service", "consent.Check", "profile-service"));
        assert!(!policy.delegates_rpc("mailer", "consent.Check"));
    }
}
