//! The one error map: every domain error implements [`ErrorCode`] (a gRPC code, an `ErrorInfo`
//! reason, the fields it names), and [`to_status`] turns it into a `google.rpc.Status`. Handlers
//! never build a `Status` themselves, so every error a caller sees carries a reason code, and
//! `INVALID_ARGUMENT` carries `BadRequest` field violations naming the field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every consentgate error.
pub const ERROR_DOMAIN: &str = "consentgate.dev";

/// What a domain error tells a caller. Each service's error enum implements it, one arm per
/// variant, so the code a caller branches on is decided next to the variant, not in a handler.
pub trait ErrorCode: std::fmt::Display {
    /// The gRPC status code.
    fn code(&self) -> Code;
    /// The `ErrorInfo` reason: a stable, machine-readable code such as `SUBJECT_ERASED`.
    fn reason(&self) -> &str;
    /// For bad input: each offending field and what is wrong with it (empty otherwise).
    fn field_violations(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The one function from a domain error to the `Status` a caller receives: the error's code, its
/// message, an `ErrorInfo` with its reason and, when it names fields, a `BadRequest`.
pub fn to_status(error: &(impl ErrorCode + ?Sized)) -> Status {
    let violations = error.field_violations();
    if violations.is_empty() {
        status(error.code(), error.reason(), error.to_string())
    } else {
        invalid_arguments(violations)
    }
}

/// A status with an `ErrorInfo` reason code.
pub fn status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// The `ErrorInfo` reason code of a consentgate error (another service's answer, say), if any:
/// what a caller branches on, never the message text.
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN)
        .map(|info| info.reason)
}

/// `INVALID_ARGUMENT` naming one field.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    invalid_arguments(vec![(field.to_owned(), description.into())])
}

/// `INVALID_ARGUMENT` naming every bad field at once (callers fix them all in one round).
pub fn invalid_arguments(violations: Vec<(String, String)>) -> Status {
    let message = violations
        .iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, []);
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Collects field violations while a request is validated, then fails with all of them.
#[derive(Default, Debug)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Records a violation when `bad` holds.
    pub fn check(&mut self, bad: bool, field: &str, description: &str) {
        if bad {
            self.add(field, description);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves `other`'s violations here with `prefix` before each field (e.g. `checks[3].`).
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for (field, description) in other.0 {
            self.0.push((format!("{prefix}{field}"), description));
        }
    }

    /// The value validation produced when nothing was recorded, else the `INVALID_ARGUMENT`
    /// status. Validators build the value only from valid parts, so a missing value with no
    /// violation is a bug in the validator: `INTERNAL`, never a half-built request.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T, Status> {
        self.finish()?;
        value.ok_or_else(|| status(Code::Internal, "INTERNAL", "validation produced no value"))
    }

    /// `Ok` when nothing was recorded, else the `INVALID_ARGUMENT` status.
    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(invalid_arguments(self.0))
        }
    }
}
