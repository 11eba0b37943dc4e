//! Caller identity from the transport (a verified client certificate's SPIFFE ID, or a bearer
//! token) and per-RPC role rules.
//!
//! Identity never comes from a request body. A caller is configured for one kind of credential:
//! a caller mapped to a SPIFFE ID is known only by its certificate (its token, if one leaked,
//! proves nothing), the others by their token. The layer runs before any service code: an
//! unknown caller gets `UNAUTHENTICATED`, a caller whose roles the RPC does not allow gets
//! `PERMISSION_DENIED`, and an RPC with no rule is refused (default deny). Health and
//! reflection stay open so that probes and `grpcurl` work without credentials. A caller
//! without the RPC's role passes only to act for another caller where the policy lets it
//! delegate that RPC; its handler then resolves whom for ([`crate::delegation`]).

use crate::delegation::DelegationScope;
use crate::errors::status;
use crate::tls::PeerIdentity;
use consentgate_policy::Policy;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Code;
use tower::{Layer, Service};

/// An authenticated caller, placed in the request's extensions for handlers to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The caller's name in the policy.
    pub name: String,
    /// The caller's roles, as policy-file strings (e.g. `enforcer`).
    pub roles: Vec<String>,
}

impl CallerIdentity {
    /// The caller the auth layer authenticated for `request`. The layer always sets it before a
    /// handler runs; if it did not (a server assembled without it), the handler fails closed
    /// with the layer's own answer for a missing credential, so that one case has one code.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Arc<CallerIdentity>, tonic::Status> {
        request
            .extensions()
            .get::<Arc<CallerIdentity>>()
            .cloned()
            .ok_or_else(missing_credentials)
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The answer to a request without a credential, from the layer or a handler alike.
fn missing_credentials() -> tonic::Status {
    status(
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
        "missing `authorization: Bearer <token>` metadata",
    )
}

/// Why the configured tokens cannot authenticate anyone.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token names a caller the policy does not define.
    #[error("caller token for {0:?}, which the policy does not define under [callers]")]
    UnknownCaller(String),
    /// Two callers share a token.
    #[error("callers {0:?} and {1:?} share a token; every caller needs its own")]
    SharedToken(String, String),
    /// Two callers share a SPIFFE ID.
    #[error("callers {0:?} and {1:?} share a SPIFFE ID; every caller needs its own")]
    SharedIdentity(String, String),
    /// An identity is not a SPIFFE ID.
    #[error("the identity of caller {0:?} must be a spiffe:// URI")]
    NotSpiffe(String),
}

/// Maps bearer tokens and SPIFFE IDs to callers. Tokens are kept only as SHA-256 digests.
#[derive(Debug, Default, Clone)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Arc<CallerIdentity>>,
    by_spiffe_id: HashMap<String, Arc<CallerIdentity>>,
    /// The callers known by certificate, so a token request checks one set, not every identity.
    certificate_callers: std::collections::HashSet<String>,
    /// The policy's delegation rules (`None`: nobody may delegate).
    policy: Option<Arc<Policy>>,
}

impl Authenticator {
    /// The authenticator every service runs: each (caller, token) pair, with the caller's roles
    /// from the policy's `[callers]`. A token for an unknown caller, or one shared by two
    /// callers, is refused at start: either would let one caller pass for another.
    pub fn from_policy(policy: &Policy, tokens: &[(String, String)]) -> Result<Self, TokenError> {
        let mut auth = Authenticator {
            policy: Some(Arc::new(policy.clone())),
            ..Authenticator::default()
        };
        for (i, (name, token)) in tokens.iter().enumerate() {
            let caller = policy
                .callers
                .get(name)
                .ok_or_else(|| TokenError::UnknownCaller(name.clone()))?;
            if let Some((other, _)) = tokens[..i].iter().find(|(_, t)| t == token) {
                return Err(TokenError::SharedToken(other.clone(), name.clone()));
            }
            let roles = caller.roles.iter().map(|r| r.as_str().to_owned()).collect();
            auth.insert(
                token,
                CallerIdentity {
                    name: name.clone(),
                    roles,
                },
            );
        }
        Ok(auth)
    }

    /// Adds the callers known by certificate: (caller, SPIFFE ID) pairs, from configuration
    /// (never from a request). An unknown caller, or two callers sharing an ID, are refused at
    /// start. Such a caller's token, if the tokens file still has one, never suffices alone.
    pub fn with_identities(
        mut self,
        policy: &Policy,
        identities: &[(String, String)],
    ) -> Result<Self, TokenError> {
        for (i, (name, id)) in identities.iter().enumerate() {
            let caller = policy
                .callers
                .get(name)
                .ok_or_else(|| TokenError::UnknownCaller(name.clone()))?;
            if !id.starts_with("spiffe://") {
                return Err(TokenError::NotSpiffe(name.clone()));
            }
            if let Some((other, _)) = identities[..i].iter().find(|(_, other)| other == id) {
                return Err(TokenError::SharedIdentity(other.clone(), name.clone()));
            }
            let roles = caller.roles.iter().map(|r| r.as_str().to_owned()).collect();
            self.certificate_callers.insert(name.clone());
            self.by_spiffe_id.insert(
                id.clone(),
                Arc::new(CallerIdentity {
                    name: name.clone(),
                    roles,
                }),
            );
        }
        Ok(self)
    }

    /// The caller a verified certificate's SPIFFE ID belongs to.
    pub fn identify(&self, spiffe_id: &str) -> Option<Arc<CallerIdentity>> {
        self.by_spiffe_id.get(spiffe_id).cloned()
    }

    /// Whether `caller` is known by certificate (and so never by a token).
    fn needs_certificate(&self, caller: &str) -> bool {
        self.certificate_callers.contains(caller)
    }

    /// Registers a caller's token.
    pub fn insert(&mut self, token: &str, identity: CallerIdentity) {
        self.by_digest
            .insert(Sha256::digest(token.as_bytes()).into(), Arc::new(identity));
    }

    /// The caller a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Arc<CallerIdentity>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest).cloned()
    }
}

/// Which roles may call which RPC, by full method path (`/pkg.Service/Method`).
#[derive(Debug, Default, Clone)]
pub struct RpcRules {
    rules: HashMap<String, Vec<&'static str>>,
    open_prefixes: Vec<&'static str>,
}

impl RpcRules {
    /// Rules where health and reflection are open to everyone.
    pub fn new() -> Self {
        RpcRules {
            rules: HashMap::new(),
            open_prefixes: vec!["/grpc.health.v1.", "/grpc.reflection."],
        }
    }

    /// Allows `roles` to call `service`/`method`.
    pub fn allow(mut self, service: &str, method: &str, roles: &[&'static str]) -> Self {
        self.rules
            .insert(format!("/{service}/{method}"), roles.to_vec());
        self
    }

    /// The methods that have a rule, for tests that check coverage.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    fn is_open(&self, path: &str) -> bool {
        self.open_prefixes.iter().any(|p| path.starts_with(p))
    }

    fn allowed_roles(&self, path: &str) -> Option<&[&'static str]> {
        self.rules.get(path).map(Vec::as_slice)
    }
}

impl Authenticator {
    /// Who sent `request`: the caller its verified certificate maps to, else the caller its
    /// bearer token belongs to. Both present must agree; a certificate caller's token alone is
    /// refused; an unmapped certificate without a token is an unknown identity.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Arc<CallerIdentity>, tonic::Status> {
        let peer_id = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|peer| peer.spiffe_id.as_deref());
        let by_certificate = peer_id.and_then(|id| self.identify(id));
        let by_token = match request.headers().get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        status(
                            Code::Unauthenticated,
                            "MALFORMED_CREDENTIALS",
                            "the authorization metadata must be `Bearer <token>`",
                        )
                    })?;
                Some(self.authenticate(token).ok_or_else(|| {
                    status(
                        Code::Unauthenticated,
                        "UNKNOWN_CREDENTIALS",
                        "the bearer token is not known",
                    )
                })?)
            }
        };
        match (by_certificate, by_token) {
            (Some(certified), None) => Ok(certified),
            (Some(certified), Some(token)) if token.name == certified.name => Ok(certified),
            (Some(_), Some(_)) => Err(status(
                Code::Unauthenticated,
                "CONFLICTING_CREDENTIALS",
                "the client certificate and the bearer token name different callers",
            )),
            (None, Some(token)) if self.needs_certificate(&token.name) => Err(status(
                Code::Unauthenticated,
                "CERTIFICATE_REQUIRED",
                format!(
                    "caller {:?} is configured for mTLS and must present its client certificate",
                    token.name
                ),
            )),
            (None, Some(token)) => Ok(token),
            (None, None) => match peer_id {
                Some(id) => Err(status(
                    Code::Unauthenticated,
                    "UNKNOWN_IDENTITY",
                    format!(
                        "the client certificate's SPIFFE ID {:?} is not mapped to a caller",
                        id.chars().take(128).collect::<String>()
                    ),
                )),
                None => Err(missing_credentials()),
            },
        }
    }
}

/// The tower layer that authenticates and authorizes every request.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    rules: Arc<RpcRules>,
}

impl AuthLayer {
    /// A layer enforcing `rules` for callers known to `authenticator`.
    pub fn new(authenticator: Authenticator, rules: RpcRules) -> Self {
        AuthLayer {
            authenticator: Arc::new(authenticator),
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// Why a request was refused before reaching a handler.
fn refuse(code: Code, reason: &str, message: &str) -> http::Response<tonic::body::Body> {
    status(code, reason, message).into_http()
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let rules = &self.layer.rules;
        if rules.is_open(&path) {
            return Box::pin(self.inner.call(request));
        }
        let identity = match self.layer.authenticator.admit(&request) {
            Ok(identity) => identity,
            Err(refusal) => return ready(refusal.into_http()),
        };
        match rules.allowed_roles(&path) {
            None => {
                return ready(refuse(
                    Code::PermissionDenied,
                    "NO_RULE_FOR_RPC",
                    "this RPC has no authorization rule, so it is refused",
                ));
            }
            Some(roles) if !roles.iter().any(|r| identity.has_role(r)) => {
                if let Some(scope) = self
                    .delegation_scope(&identity, &path, roles)
                    .filter(DelegationScope::delegates_at_all)
                {
                    // No role of its own: it may only act for another caller, so the handler
                    // gets the scope and no identity (crate::delegation).
                    request.extensions_mut().insert(scope);
                    return Box::pin(call_ready(&mut self.inner, request));
                }
                let message = format!(
                    "caller {:?} lacks a role this RPC requires ({})",
                    identity.name,
                    roles.join(" or ")
                );
                return ready(refuse(
                    Code::PermissionDenied,
                    "ROLE_NOT_PERMITTED",
                    &message,
                ));
            }
            Some(roles) => {
                if let Some(scope) = self.delegation_scope(&identity, &path, roles) {
                    request.extensions_mut().insert(scope);
                }
            }
        }
        request.extensions_mut().insert(identity);
        Box::pin(call_ready(&mut self.inner, request))
    }
}

impl<S> AuthService<S> {
    /// The delegation scope of a request to a delegable RPC (see [`crate::delegation`]).
    fn delegation_scope(
        &self,
        identity: &Arc<CallerIdentity>,
        path: &str,
        roles: &[&'static str],
    ) -> Option<DelegationScope> {
        let policy = self.layer.authenticator.policy.as_ref()?;
        DelegationScope::of(policy, identity, path, roles)
    }
}

/// Calls `inner`, which was driven to readiness, leaving a fresh clone in its place: how a layer
/// (this one, [`crate::limits`]) passes a request on from `call`.
pub(crate) fn call_ready<S, R>(inner: &mut S, request: R) -> S::Future
where
    S: Service<R> + Clone,
{
    let clone = inner.clone();
    std::mem::replace(inner, clone).call(request)
}

/// A layer's own answer, given without calling the service behind it.
pub(crate) fn ready<T: Send + 'static, E: Send + 'static>(
    response: T,
) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send>> {
    Box::pin(std::future::ready(Ok(response)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::reason_of;

    const MAILER_ID: &str = "spiffe://test/ns/cg/sa/mailer";

    /// Tokens for the auditor and privacy-ops; the mailer known by certificate only.
    fn authenticator() -> Authenticator {
        let policy = Policy::default_policy().expect("policy");
        Authenticator::from_policy(
            &policy,
            &[
                ("auditor".into(), "t-auditor".into()),
                ("privacy-ops".into(), "t-privacy".into()),
            ],
        )
        .expect("tokens")
        .with_identities(&policy, &[("mailer".into(), MAILER_ID.into())])
        .expect("identities")
    }

    fn request(spiffe_id: Option<&str>, token: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        if let Some(id) = spiffe_id {
            request.extensions_mut().insert(PeerIdentity {
                tcp: None,
                spiffe_id: Some(Arc::from(id)),
                has_certificate: true,
            });
        }
        if let Some(token) = token {
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        request
    }

    fn refusal(spiffe_id: Option<&str>, token: Option<&str>) -> String {
        let status = authenticator()
            .admit(&request(spiffe_id, token))
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        reason_of(&status).expect("reason")
    }

    #[test]
    fn a_certificate_caller_is_known_by_its_certificate() {
        let caller = authenticator()
            .admit(&request(Some(MAILER_ID), None))
            .expect("admitted");
        assert_eq!(caller.name, "mailer");
        assert!(caller.has_role("reader"));
    }

    #[test]
    fn a_token_caller_is_known_by_its_token() {
        let caller = authenticator()
            .admit(&request(None, Some("t-auditor")))
            .expect("admitted");
        assert_eq!(caller.name, "auditor");
    }

    #[test]
    fn certificate_and_token_must_name_the_same_caller() {
        assert_eq!(
            refusal(Some(MAILER_ID), Some("t-auditor")),
            "CONFLICTING_CREDENTIALS"
        );
        assert_eq!(
            refusal(Some(MAILER_ID), Some("not-a-token")),
            "UNKNOWN_CREDENTIALS"
        );
    }

    #[test]
    fn an_unmapped_certificate_without_a_token_is_an_unknown_identity() {
        assert_eq!(
            refusal(Some("spiffe://test/ns/cg/sa/intruder"), None),
            "UNKNOWN_IDENTITY"
        );
        // With a token, the token speaks (a mesh proxy's certificate, say).
        let caller = authenticator()
            .admit(&request(
                Some("spiffe://test/ns/cg/sa/proxy"),
                Some("t-privacy"),
            ))
            .expect("admitted by token");
        assert_eq!(caller.name, "privacy-ops");
    }

    #[test]
    fn identities_are_checked_at_start() {
        let policy = Policy::default_policy().expect("policy");
        let shared = Authenticator::default().with_identities(
            &policy,
            &[
                ("mailer".into(), MAILER_ID.into()),
                ("auditor".into(), MAILER_ID.into()),
            ],
        );
        assert!(matches!(shared, Err(TokenError::SharedIdentity(..))));
        let not_spiffe = Authenticator::default()
            .with_identities(&policy, &[("mailer".into(), "https://mailer".into())]);
        assert!(matches!(not_spiffe, Err(TokenError::NotSpiffe(_))));
    }

    #[test]
    fn a_token_of_a_certificate_caller_is_refused_alone() {
        let policy = Policy::default_policy().expect("policy");
        let auth = Authenticator::from_policy(&policy, &[("mailer".into(), "t-mailer".into())])
            .expect("tokens")
            .with_identities(&policy, &[("mailer".into(), MAILER_ID.into())])
            .expect("identities");
        let status = auth
            .admit(&request(None, Some("t-mailer")))
            .expect_err("refused");
        assert_eq!(reason_of(&status).as_deref(), Some("CERTIFICATE_REQUIRED"));
        // Beside its certificate, its own token is no conflict.
        let caller = auth
            .admit(&request(Some(MAILER_ID), Some("t-mailer")))
            .expect("admitted");
        assert_eq!(caller.name, "mailer");
    }

    #[test]
    fn no_credential_at_all_is_missing_credentials() {
        assert_eq!(refusal(None, None), "MISSING_CREDENTIALS");
    }
}
