//! Delegation on the server side: a request made by one service on behalf of another caller
//! (`on_behalf_of`), authorized as that caller would be, and only if the policy lets the
//! calling identity act for it there.
//!
//! The auth layer ([`crate::auth`]) authenticates the transport identity. For an RPC whose
//! requests carry `on_behalf_of` ([`consentgate_policy::DELEGABLE_RPCS`]) it also leaves a
//! [`DelegationScope`] for the handler, and lets through an identity whose own roles do not
//! allow the RPC only when the policy lets it delegate that RPC to someone. Such a request
//! carries no [`CallerIdentity`], so a handler that forgets to resolve the delegation with
//! [`acting_for`] fails closed. Resolving needs both: the delegate's rule for this RPC and this
//! principal (`delegates` in the policy), and a role of the principal that the RPC allows.
//! Naming oneself in `on_behalf_of` is the same as leaving it empty (one's own roles apply).

use crate::auth::CallerIdentity;
use crate::errors::{invalid_argument, status};
use consentgate_policy::{DELEGABLE_RPCS, Policy, rpc_short_name};
use std::sync::Arc;
use tonic::Code;

/// What a delegable RPC's handler needs to resolve `on_behalf_of`: who called, which RPC, the
/// roles it allows, and the policy's delegation rules. Placed in the request's extensions by
/// the auth layer.
#[derive(Debug, Clone)]
pub struct DelegationScope {
    /// The transport identity (the delegate, when the request names someone else).
    caller: Arc<CallerIdentity>,
    /// The RPC's short name (`consent.EraseSubject`).
    rpc: String,
    /// The roles the RPC's rule allows.
    roles: Vec<&'static str>,
    /// The policy in force.
    policy: Arc<Policy>,
}

impl DelegationScope {
    /// The scope of a request to `path` by `caller`, when the RPC is delegable.
    pub(crate) fn of(
        policy: &Arc<Policy>,
        caller: &Arc<CallerIdentity>,
        path: &str,
        roles: &[&'static str],
    ) -> Option<DelegationScope> {
        let rpc = rpc_short_name(path)?;
        DELEGABLE_RPCS
            .contains(&rpc.as_str())
            .then(|| DelegationScope {
                caller: caller.clone(),
                rpc,
                roles: roles.to_vec(),
                policy: policy.clone(),
            })
    }

    /// The authenticated caller (the delegate), whose limits the request counts against.
    pub(crate) fn caller(&self) -> &Arc<CallerIdentity> {
        &self.caller
    }

    /// Whether the caller may make this RPC on behalf of anyone (the layer lets it through
    /// without a role of its own only then).
    pub(crate) fn delegates_at_all(&self) -> bool {
        self.policy.delegates_rpc(&self.caller.name, &self.rpc)
    }
}

/// Who a request acts as: the caller whose roles (and purposes) apply, and the service that
/// acted for it, if any.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The caller the RPC is authorized for (the principal under delegation).
    pub caller: Arc<CallerIdentity>,
    /// The authenticated service that made the call on the caller's behalf.
    pub delegate: Option<Arc<CallerIdentity>>,
}

impl Actor {
    /// How records and logs name the actor: `mailer`, or `profile-service on behalf of
    /// privacy-ops` (caller names contain no spaces, so the form is unambiguous).
    pub fn recorded_as(&self) -> String {
        match &self.delegate {
            Some(d) => on_behalf_of(&d.name, &self.caller.name),
            None => self.caller.name.clone(),
        }
    }
}

/// `"<delegate> on behalf of <caller>"`: the one spelling of a delegated actor.
pub fn on_behalf_of(delegate: &str, caller: &str) -> String {
    format!("{delegate} on behalf of {caller}")
}

/// Resolves who `request` acts as, given its `on_behalf_of` field: the authenticated caller
/// itself when the field is empty or names it, else the named caller, if the policy lets the
/// authenticated caller act for it on this RPC and the named caller has a role the RPC allows.
/// Refusals: `INVALID_ARGUMENT` for a name no caller has, `PERMISSION_DENIED`
/// (`DELEGATION_NOT_PERMITTED` or `ROLE_NOT_PERMITTED`) otherwise.
pub fn acting_for<T>(
    request: &tonic::Request<T>,
    on_behalf_of: &str,
) -> Result<Actor, tonic::Status> {
    let direct = request.extensions().get::<Arc<CallerIdentity>>().cloned();
    let scope = request.extensions().get::<DelegationScope>();
    let Some(scope) = scope else {
        // Not a delegable RPC (or a server without the layer): only the caller's own call.
        let caller = CallerIdentity::of(request)?;
        if on_behalf_of.is_empty() || on_behalf_of == caller.name {
            return Ok(Actor {
                caller,
                delegate: None,
            });
        }
        return Err(status(
            Code::PermissionDenied,
            "DELEGATION_NOT_PERMITTED",
            "this RPC cannot be made on behalf of another caller",
        ));
    };
    if on_behalf_of.is_empty() || on_behalf_of == scope.caller.name {
        return direct
            .map(|caller| Actor {
                caller,
                delegate: None,
            })
            .ok_or_else(|| {
                status(
                    Code::PermissionDenied,
                    "ROLE_NOT_PERMITTED",
                    format!(
                        "caller {:?} lacks a role this RPC requires ({}); it may make it only on behalf of a caller the policy lets it act for",
                        scope.caller.name,
                        scope.roles.join(" or ")
                    ),
                )
            });
    }
    let Some(principal) = scope.policy.callers.get(on_behalf_of) else {
        return Err(invalid_argument(
            "on_behalf_of",
            "names no caller of the policy",
        ));
    };
    if !scope
        .policy
        .may_delegate(&scope.caller.name, &scope.rpc, on_behalf_of)
    {
        return Err(status(
            Code::PermissionDenied,
            "DELEGATION_NOT_PERMITTED",
            format!(
                "caller {:?} may not call {} on behalf of {:?} (the policy's `delegates`)",
                scope.caller.name, scope.rpc, principal.name
            ),
        ));
    }
    let roles: Vec<String> = principal
        .roles
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    if !scope.roles.iter().any(|r| roles.iter().any(|p| p == r)) {
        return Err(status(
            Code::PermissionDenied,
            "ROLE_NOT_PERMITTED",
            format!(
                "caller {:?}, on whose behalf {:?} calls, lacks a role this RPC requires ({})",
                principal.name,
                scope.caller.name,
                scope.roles.join(" or ")
            ),
        ));
    }
    Ok(Actor {
        caller: Arc::new(CallerIdentity {
            name: principal.name.clone(),
            roles,
        }),
        delegate: Some(scope.caller.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ERASE: &str = "/consentgate.consent.v1.ConsentService/EraseSubject";

    /// The default policy, with the profile service allowed to erase for every caller.
    fn policy() -> Arc<Policy> {
        let text = consentgate_policy::DEFAULT_POLICY_TOML.replace(
            "\"consent.EraseSubject\" = [\"privacy-ops\"]",
            "\"consent.EraseSubject\" = [\"*\"]",
        );
        Arc::new(Policy::from_toml(&text, "test.toml").expect("policy"))
    }

    fn identity(name: &str, roles: &[&str]) -> Arc<CallerIdentity> {
        Arc::new(CallerIdentity {
            name: name.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        })
    }

    /// A request to EraseSubject as the auth layer leaves it for `caller`.
    fn request(policy: &Arc<Policy>, caller: &Arc<CallerIdentity>) -> tonic::Request<()> {
        let roles = ["privacy_ops"];
        let direct = caller.roles.iter().any(|r| roles.contains(&r.as_str()));
        let mut request = tonic::Request::new(());
        let scope = DelegationScope::of(policy, caller, ERASE, &roles).expect("delegable");
        assert!(direct || scope.delegates_at_all());
        request.extensions_mut().insert(scope);
        if direct {
            request.extensions_mut().insert(caller.clone());
        }
        request
    }

    fn reason(status: &tonic::Status) -> String {
        crate::errors::reason_of(status).unwrap_or_default()
    }

    #[test]
    fn a_delegate_acts_with_the_principals_roles_only() {
        let policy = policy();
        let profile = identity("profile-service", &["enforcer"]);
        let request = request(&policy, &profile);
        // Without a role of its own, nothing is authorized on its own account (fail closed).
        assert!(CallerIdentity::of(&request).is_err());
        let status = acting_for(&request, "").expect_err("own account");
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::PermissionDenied, "ROLE_NOT_PERMITTED")
        );
        // A principal the rule covers but whose roles the RPC does not allow is refused.
        let status = acting_for(&request, "mailer").expect_err("the mailer may not erase");
        assert_eq!(reason(&status), "ROLE_NOT_PERMITTED", "{status:?}");
        assert!(status.message().contains("\"mailer\""), "{status:?}");
        // The privacy team may: the actor is the team, made by the profile service.
        let actor = acting_for(&request, "privacy-ops").expect("for the privacy team");
        assert_eq!(actor.caller.name, "privacy-ops");
        assert!(actor.caller.has_role("privacy_ops"));
        assert_eq!(
            actor.recorded_as(),
            "profile-service on behalf of privacy-ops"
        );
        let status = acting_for(&request, "ghost").expect_err("unknown caller");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    #[test]
    fn a_direct_caller_acts_for_itself_and_delegates_only_by_rule() {
        let policy = policy();
        let ops = identity("privacy-ops", &["privacy_ops"]);
        let request = request(&policy, &ops);
        for own in ["", "privacy-ops"] {
            let actor = acting_for(&request, own).expect("own account");
            assert!(actor.delegate.is_none());
            assert_eq!(actor.recorded_as(), "privacy-ops");
        }
        let status = acting_for(&request, "auditor").expect_err("no rule");
        assert_eq!(reason(&status), "DELEGATION_NOT_PERMITTED", "{status:?}");
        // An RPC whose requests cannot name anyone has no scope.
        let check = identity("recommendation-service", &["enforcer"]);
        assert!(
            DelegationScope::of(
                &policy,
                &check,
                "/consentgate.consent.v1.ConsentService/Grant",
                &["preference_center"]
            )
            .is_none()
        );
    }
}
