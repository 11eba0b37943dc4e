//! The one error map: every domain error implements [`ErrorCode`] (a gRPC code, an `ErrorInfo`
//! reason, the fields it names), and [`to_status`] turns it into a `google.rpc.Status`. Handlers
//! never build a `Status` themselves, so every error a caller sees carries a reason code, and
//! `INVALID_ARGUMENT` carries `BadRequest` field violations naming the field.
//!
//! Errors travel in trailers (`grpc-message`, `grpc-status-details-bin`), and a default client
//! refuses trailers over a few KiB: a request value is echoed only through [`echo`] (a short
//! prefix), and [`status`] and [`invalid_arguments`] bound the message, each description and the
//! number of violations whatever a caller passes them, so a hostile value never makes the answer
//! unreadable.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every consentgate error.
pub use consentgate_proto::ERROR_DOMAIN;

/// Characters of a request value an error echoes (see [`echo`]).
pub const ECHO_CHARS: usize = 64;
/// Field violations one `INVALID_ARGUMENT` carries; the rest are counted in its message.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest field path of one violation, in bytes.
const MAX_FIELD_BYTES: usize = 128;
/// Longest description of one violation, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 256;
/// Longest status message, in bytes (before percent-encoding).
const MAX_MESSAGE_BYTES: usize = 1024;

/// A request value as an error quotes it: the whole value when it is short, else its first
/// [`ECHO_CHARS`] characters (cut on a character boundary), an ellipsis and its length. The one
/// way a validator names a bad value: a caller recognizes its value, and a 1 MiB value costs
/// the answer under a hundred bytes.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, an ellipsis marking the cut: the
/// central bound behind [`echo`], for text a validator built without it.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
    text
}

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
    Status::with_error_details(code, bounded(message.into(), MAX_MESSAGE_BYTES), details)
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

/// `INVALID_ARGUMENT` naming every bad field at once (callers fix them all in one round), up to
/// [`MAX_VIOLATIONS`] of them, each bounded; the message says how many more there were.
pub fn invalid_arguments(violations: Vec<(String, String)>) -> Status {
    bad_request(violations, 0)
}

/// [`invalid_arguments`] for violations of which `dropped` more were already left out.
fn bad_request(violations: Vec<(String, String)>, dropped: usize) -> Status {
    let more = violations.len().saturating_sub(MAX_VIOLATIONS) + dropped;
    let violations: Vec<(String, String)> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|(f, d)| {
            (
                bounded(f, MAX_FIELD_BYTES),
                bounded(d, MAX_DESCRIPTION_BYTES),
            )
        })
        .collect();
    let mut message = violations
        .iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        message = bounded(message, MAX_MESSAGE_BYTES - 32);
        message.push_str(&format!("; and {more} more"));
    }
    let mut details = ErrorDetails::with_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, []);
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
    }
    let message = bounded(message, MAX_MESSAGE_BYTES);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Collects field violations while a request is validated, then fails with all of them. Keeps
/// the first [`MAX_VIOLATIONS`] and counts the rest, so a request with a million bad items
/// costs a counter, not a million descriptions.
#[derive(Default, Debug)]
pub struct Violations {
    kept: Vec<(String, String)>,
    dropped: usize,
}

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.kept.len() < MAX_VIOLATIONS {
            self.kept.push((field.into(), description.into()));
        } else {
            self.dropped += 1;
        }
    }

    /// Records a violation when `bad` holds.
    pub fn check(&mut self, bad: bool, field: &str, description: &str) {
        if bad {
            self.add(field, description);
        }
    }

    /// Records that `text` is too long when it is over `max` bytes (a bound from
    /// `consentgate_proto::limits`); true when it fits. The value itself is never echoed.
    pub fn check_len(&mut self, field: &str, text: &str, max: usize) -> bool {
        let fits = text.len() <= max;
        if !fits {
            self.add(
                field,
                format!("must be at most {max} bytes (got {})", text.len()),
            );
        }
        fits
    }

    /// Records that a repeated field has too many items when it has over `max`; true when it
    /// fits. Checked before the items are looked at, so their number bounds the work.
    pub fn check_count(&mut self, field: &str, count: usize, max: usize) -> bool {
        let fits = count <= max;
        if !fits {
            self.add(field, format!("at most {max} items (got {count})"));
        }
        fits
    }

    /// The violations kept, as (field, description) pairs: for an answer that reports them
    /// per item instead of failing the whole request (an import's rejected records).
    pub fn into_list(self) -> Vec<(String, String)> {
        self.kept
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Moves `other`'s violations here with `prefix` before each field (e.g. `checks[3].`).
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for (field, description) in other.kept {
            self.add(format!("{prefix}{field}"), description);
        }
        self.dropped += other.dropped;
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
        if self.kept.is_empty() {
            Ok(())
        } else {
            Err(bad_request(self.kept, self.dropped))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn echo_quotes_short_values_whole_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(echo("marketing"), "\"marketing\"");
        let long = "é".repeat(1 << 19);
        let echoed = echo(&long);
        assert!(echoed.starts_with(&format!("\"{}\"…", "é".repeat(ECHO_CHARS))));
        assert!(echoed.ends_with(&format!("({} bytes)", long.len())));
        assert!(echoed.len() < 200, "{}", echoed.len());
    }

    #[test]
    fn invalid_arguments_bound_the_message_each_description_and_the_violation_count() {
        let huge = "x".repeat(1 << 20);
        let violations = (0..1000)
            .map(|i| (format!("checks[{i}].purpose"), huge.clone()))
            .collect();
        let status = invalid_arguments(violations);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(
            status.message().ends_with("; and 980 more"),
            "{}",
            status.message()
        );
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS);
        assert_eq!(bad.field_violations[0].field, "checks[0].purpose");
        assert!(
            bad.field_violations
                .iter()
                .all(|v| v.description.len() <= MAX_DESCRIPTION_BYTES)
        );
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );
        let plain = status_message_of(Code::Internal, &huge);
        assert!(plain.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn violations_keep_the_first_ones_and_count_the_rest() {
        let mut v = Violations::default();
        for i in 0..30 {
            let mut item = Violations::default();
            item.add("purpose", "unknown");
            item.add("channel", "unknown");
            v.extend_prefixed(&format!("checks[{i}]."), item);
        }
        let status = v.finish().expect_err("violations");
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS);
        assert!(
            status.message().ends_with("; and 40 more"),
            "{}",
            status.message()
        );
    }

    fn status_message_of(code: Code, message: &str) -> String {
        status(code, "X", message).message().to_owned()
    }
}
