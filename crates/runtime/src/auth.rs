//! Caller identity from the transport (a bearer token per caller) and per-RPC role rules.
//!
//! Identity never comes from a request body. The layer runs before any service code: an
//! unknown caller gets `UNAUTHENTICATED`, a caller whose roles the RPC does not allow gets
//! `PERMISSION_DENIED`, and an RPC with no rule is refused (default deny). Health and
//! reflection stay open so that probes and `grpcurl` work without credentials. A caller
//! without the RPC's role passes only to act for another caller where the policy lets it
//! delegate that RPC; its handler then resolves whom for ([`crate::delegation`]).

use crate::delegation::DelegationScope;
use crate::errors::status;
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
}

/// Maps bearer tokens to callers. Tokens are kept only as SHA-256 digests.
#[derive(Debug, Default, Clone)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Arc<CallerIdentity>>,
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
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match header {
            None => return ready(missing_credentials().into_http()),
            Some(value) => match value.strip_prefix("Bearer ").map(str::trim) {
                Some(t) if !t.is_empty() => t,
                _ => {
                    return ready(refuse(
                        Code::Unauthenticated,
                        "MALFORMED_CREDENTIALS",
                        "the authorization metadata must be `Bearer <token>`",
                    ));
                }
            },
        };
        let Some(identity) = self.layer.authenticator.authenticate(token) else {
            return ready(refuse(
                Code::Unauthenticated,
                "UNKNOWN_CREDENTIALS",
                "the bearer token is not known",
            ));
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
                    return Box::pin(self.forward(request));
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
        Box::pin(self.forward(request))
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

    /// Calls the service that was driven to readiness, leaving a fresh clone in its place.
    fn forward<B>(&mut self, request: http::Request<B>) -> <S as Service<http::Request<B>>>::Future
    where
        S: Service<http::Request<B>> + Clone,
    {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        inner.call(request)
    }
}

fn ready<T: Send + 'static, E: Send + 'static>(
    response: T,
) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send>> {
    Box::pin(std::future::ready(Ok(response)))
}
