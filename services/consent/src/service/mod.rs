//! The consent service's domain room: what each RPC means, with no protocol in sight. Domain
//! types come in (already validated by [`crate::convert`]), domain types and a [`ServiceError`]
//! go out; the gRPC adapter ([`crate::grpc`]) only converts around it.
//!
//! The service wraps the [`Engine`] rather than absorbing it: the engine is the write path, the
//! decision cache and the change feed, which the server's change follower and the load
//! generators drive directly, while the service holds the rules on top of it (a grant's retention
//! cap and receipt, the signal fold, the Explain narrative, the change-stream loop) and is the
//! only code that reaches the engine's store and signing keys.
//!
//! Split by concern: [`consent`] records consent and signals, [`decide`] answers Check,
//! BatchCheck and Explain, [`watch`] streams changes, [`dsr`] serves data-subject rights and
//! proof (consents, history, receipts, restriction, erasure, ledger verification), [`import`]
//! brings in consent records from another platform.

mod consent;
mod decide;
mod dsr;
mod import;
mod watch;

pub use consent::{ConsentAsk, GrantAsk, Granted, SignalAsk, Target};
pub use decide::{Ask, Explained};
pub use dsr::{ConsentsView, CurrentRecord, HistoryPage, Reapplied, Receipt};
pub use import::{ImportAsk, ImportOutcome};
pub use watch::{WatchEvent, WatchStream};

use crate::engine::{Engine, EngineError};
use crate::ledger;
use crate::model::{Change, SubjectKey, Write, WriteOutcome};
use crate::observe::ConsentMetrics;
use crate::store::StoreError;
use consentgate_policy::Policy;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::delegation::Actor;
use consentgate_runtime::errors::{ErrorCode, to_status};
use consentgate_runtime::telemetry::pseudonymize;
use std::sync::Arc;
use tonic::Code;

/// The consent service: every RPC's meaning, over the engine.
pub struct Service {
    engine: Arc<Engine>,
    metrics: Arc<ConsentMetrics>,
    /// Keys log pseudonyms of subject ids; random per process and never logged.
    log_key: [u8; 32],
}

/// A write's idempotency: the caller's key and a fingerprint of what was asked, so that a retry
/// is answered once and a reused key with other content is refused.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The caller's idempotency key.
    pub key: String,
    /// SHA-256 of the request without its key.
    pub fingerprint: [u8; 32],
}

/// Why a service call failed: one variant per answer a caller can branch on, each with its gRPC
/// code and reason code (the [`ErrorCode`] impl), mapped to a `Status` in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input found by the decision function: (field, description) pairs.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// The subject was erased.
    #[error("the subject was erased; nothing more is recorded about it")]
    Erased,
    /// The idempotency key was reused with different content.
    #[error("idempotency_key was already used for a different request")]
    IdempotencyKeyReused,
    /// The store failed (already logged, without details, when the error was converted).
    #[error("the consent store is unavailable; retry later")]
    StoreUnavailable,
    /// No receipt exists for the record.
    #[error("no receipt for this record (only grants have receipts; erased subjects have none)")]
    ReceiptNotFound,
    /// The policy does not let the caller ask this RPC on behalf of that caller.
    #[error(
        "caller {delegate:?} may not call {rpc} on behalf of {principal:?} (the policy's `delegates`)"
    )]
    DelegationNotPermitted {
        /// The authenticated caller.
        delegate: String,
        /// The caller it named in `on_behalf_of`.
        principal: String,
        /// The RPC's short name.
        rpc: &'static str,
    },
    /// The server is shutting down: long-lived streams end so that shutdown can finish.
    #[error("the consent service is shutting down; reconnect and resume from your last revision")]
    ShuttingDown,
    /// `at_least_as_fresh` names a revision the database has not committed: a token this
    /// service never issued, or one issued before its database was restored to an earlier
    /// point. FAILED_PRECONDITION, not INVALID_ARGUMENT: the token is well formed and the state
    /// decides; the caller acts by dropping it (or re-reading the revision a write returns).
    #[error(
        "at_least_as_fresh {token} is beyond the last committed revision ({head}): not a token this service issued, or its database was restored since; drop it"
    )]
    TokenAhead {
        /// The caller's token.
        token: u64,
        /// The last committed revision.
        head: u64,
    },
    /// `WatchChanges.after_revision` names a revision the database has not committed: the
    /// watcher followed this database before it was restored to an earlier point (or made the
    /// revision up). Served, the stream would skip every change up to it unannounced, so it is
    /// refused; the watcher acts by dropping what it derived from the stream and starting over.
    #[error(
        "after_revision {after} is beyond the last committed revision ({head}): the database was restored to an earlier point since this revision was seen, or it was never issued; drop what was derived from the stream and watch from 0"
    )]
    RevisionAhead {
        /// The watcher's resume point.
        after: u64,
        /// The last committed revision.
        head: u64,
    },
    /// The call's deadline passed before its store work began, so nothing was done.
    #[error("the call's deadline passed before its work began; nothing was done")]
    DeadlineExceeded,
    /// An invariant did not hold (a bug, never a caller's fault).
    #[error("{0}")]
    Internal(&'static str),
}

impl ErrorCode for ServiceError {
    fn code(&self) -> Code {
        match self {
            ServiceError::Invalid(_) => Code::InvalidArgument,
            ServiceError::Erased
            | ServiceError::IdempotencyKeyReused
            | ServiceError::TokenAhead { .. }
            | ServiceError::RevisionAhead { .. } => Code::FailedPrecondition,
            ServiceError::StoreUnavailable | ServiceError::ShuttingDown => Code::Unavailable,
            ServiceError::ReceiptNotFound => Code::NotFound,
            ServiceError::DelegationNotPermitted { .. } => Code::PermissionDenied,
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }

    fn reason(&self) -> &str {
        match self {
            ServiceError::Invalid(_) => "INVALID_ARGUMENT",
            ServiceError::Erased => "SUBJECT_ERASED",
            ServiceError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ServiceError::StoreUnavailable => "STORE_UNAVAILABLE",
            ServiceError::ReceiptNotFound => "RECEIPT_NOT_FOUND",
            ServiceError::DelegationNotPermitted { .. } => "DELEGATION_NOT_PERMITTED",
            ServiceError::ShuttingDown => "SHUTTING_DOWN",
            ServiceError::TokenAhead { .. } => "TOKEN_AHEAD_OF_DATABASE",
            ServiceError::RevisionAhead { .. } => "REVISION_AHEAD_OF_DATABASE",
            ServiceError::Internal(_) => "INTERNAL",
            ServiceError::DeadlineExceeded => "DEADLINE_EXCEEDED",
        }
    }

    fn field_violations(&self) -> Vec<(String, String)> {
        match self {
            ServiceError::Invalid(violations) => violations.clone(),
            _ => Vec::new(),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        to_status(&error)
    }
}

impl From<EngineError> for ServiceError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Invalid(violations) => ServiceError::Invalid(violations),
            EngineError::Erased => ServiceError::Erased,
            EngineError::IdempotencyConflict => ServiceError::IdempotencyKeyReused,
            EngineError::TokenAhead { token, head } => ServiceError::TokenAhead { token, head },
            EngineError::RevisionAhead { after, head } => {
                ServiceError::RevisionAhead { after, head }
            }
            EngineError::Store(e) if e.is_deadline_exceeded() => ServiceError::DeadlineExceeded,
            EngineError::Store(e) => {
                // Store failures do not leak details to callers; the log keeps the class only.
                tracing::error!(error = %e.log_safe(), "consent store failed");
                ServiceError::StoreUnavailable
            }
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        EngineError::from(error).into()
    }
}

impl Service {
    /// The service over an engine, counting decisions and writes into `metrics`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<ConsentMetrics>) -> Self {
        Service {
            engine,
            metrics,
            log_key: ledger::random_key(),
        }
    }

    /// The policy in force (validation in [`crate::convert`] checks requests against it).
    pub fn policy(&self) -> &Arc<Policy> {
        self.engine.policy()
    }

    fn pseudonym(&self, subject: &SubjectKey) -> String {
        pseudonymize(&self.log_key, &subject.storage())
    }

    /// Records a change for `caller` and logs it (the subject by pseudonym only).
    async fn record(
        &self,
        caller: &CallerIdentity,
        idempotency: Idempotency,
        change: Change,
    ) -> Result<WriteOutcome, ServiceError> {
        self.record_by(&caller.name, None, idempotency, change)
            .await
    }

    /// Records a change for `actor`, who may be a delegate acting for another caller.
    async fn record_as(
        &self,
        actor: &Actor,
        idempotency: Idempotency,
        change: Change,
    ) -> Result<WriteOutcome, ServiceError> {
        let delegate = actor.delegate.as_ref().map(|d| d.name.as_str());
        self.record_by(&actor.caller.name, delegate, idempotency, change)
            .await
    }

    /// Records a change for `caller` (made by `delegate` on its behalf, if any) and logs it.
    /// Idempotency keys stay scoped to `caller`, so a retry is answered once whether it comes
    /// directly or through a delegate.
    async fn record_by(
        &self,
        caller: &str,
        delegate: Option<&str>,
        idempotency: Idempotency,
        change: Change,
    ) -> Result<WriteOutcome, ServiceError> {
        let kind = change.kind();
        let who = self.pseudonym(change.subject());
        let started = std::time::Instant::now();
        let actor = match delegate {
            Some(d) => consentgate_runtime::delegation::on_behalf_of(d, caller),
            None => caller.to_owned(),
        };
        let write = self.engine.record(Write {
            caller: caller.to_owned(),
            delegate: delegate.map(str::to_owned),
            idempotency_key: idempotency.key,
            fingerprint: idempotency.fingerprint,
            change,
        });
        // The write, its ledger append and its durable commit.
        let outcome = consentgate_runtime::traces::in_span(
            "consentgate.consent.record",
            || [opentelemetry::KeyValue::new("consentgate.change", kind)],
            write,
        )
        .await?;
        self.metrics
            .wrote(kind, outcome.replayed, started.elapsed());
        tracing::info!(caller = %actor, kind, subject = %who, revision = outcome.revision, replayed = outcome.replayed, "consent change recorded");
        Ok(outcome)
    }
}
