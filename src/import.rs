//! `consentgate import FILE`: reads consent records exported from another platform, one JSON
//! object per line (the format is in docs/import.md), and streams them to the consent service's
//! ImportConsents in chunks, with a progress bar; every line that is not stored is reported with
//! its line number and reason. Running the same command again resumes an interrupted import:
//! records already imported are answered as duplicates.

use anyhow::Context;
use consentgate_proto::common::v1 as common;
use consentgate_proto::consent::v1 as pb;
use serde::Deserialize;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Chunks sent ahead of the answers: one being imported, one waiting, so the server never idles
/// between chunks and the client never holds more than a few chunks.
const CHUNKS_AHEAD: usize = 2;

/// A reason quoted from a parser is cut to this many characters: a line of an export is personal
/// data, and a terminal or a log is no place for it.
const MAX_REASON_CHARS: usize = 120;

/// What the command was asked.
pub struct ImportArgs<'a> {
    /// The JSONL file.
    pub file: &'a Path,
    /// The platform the records come from (ImportConsentsRequest.source).
    pub source: &'a str,
    /// The consent service's URL.
    pub consent: &'a str,
    /// A privacy_ops caller's bearer token.
    pub token: &'a str,
    /// Records per chunk (1 to 1,000).
    pub chunk: usize,
    /// Where the rejected lines go, one JSON object per line; stderr when absent.
    pub rejects: Option<&'a Path>,
}

/// What an import did, line by line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines read (blank lines are skipped and not counted).
    pub lines: u64,
    /// Stored and now current.
    pub imported: u64,
    /// Stored in history only: the subject has a newer record for the same key.
    pub history_only: u64,
    /// Imported before: nothing written.
    pub duplicate: u64,
    /// Refused by the service (a bad field, an erased subject, a conflicting id).
    pub rejected: u64,
    /// Not a valid line of the format (never sent).
    pub malformed: u64,
}

/// One line of the export format (docs/import.md). Unknown fields are errors: a misspelt
/// field must not silently drop what it carried.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    #[serde(default)]
    subject_id: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    purpose: String,
    #[serde(default)]
    data_category: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    state: String,
    #[serde(default)]
    consent_type: Option<String>,
    #[serde(default)]
    collection_method: Option<String>,
    #[serde(default)]
    jurisdiction: Option<String>,
    #[serde(default)]
    notice_version: Option<String>,
    collected_at: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    guardian_ref: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

/// A line's record, or why it is not one (a field name, a reason).
fn record_of(text: &str) -> Result<pb::ImportRecord, (String, String)> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        let reason: String = e.to_string().chars().take(MAX_REASON_CHARS).collect();
        (
            String::new(),
            format!("not a record of the format: {reason}"),
        )
    })?;
    let bad = |field: &str, why: &str| (field.to_owned(), why.to_owned());
    let subject = match (line.subject_id, line.device_id) {
        (Some(s), None) => common::subject_ref::Id::SubjectId(s),
        (None, Some(d)) => common::subject_ref::Id::DeviceId(d),
        _ => return Err(bad("subject_id", "exactly one of subject_id and device_id")),
    };
    let state = match line.state.as_str() {
        "given" => pb::ConsentState::Given,
        "refused" => pb::ConsentState::Refused,
        "withdrawn" => pb::ConsentState::Withdrawn,
        _ => return Err(bad("state", "one of given, refused, withdrawn")),
    };
    let consent_type = match line.consent_type.as_deref() {
        None => pb::ConsentType::Unspecified,
        Some("explicit") => pb::ConsentType::Explicit,
        Some("expressed") => pb::ConsentType::Expressed,
        Some(_) => return Err(bad("consent_type", "one of explicit, expressed")),
    };
    let collection_method = match line.collection_method.as_deref() {
        None | Some("import") => pb::CollectionMethod::Import,
        Some("preference_center") => pb::CollectionMethod::PreferenceCenter,
        Some("banner") => pb::CollectionMethod::Banner,
        Some("survey") => pb::CollectionMethod::Survey,
        Some("api") => pb::CollectionMethod::Api,
        Some(_) => {
            return Err(bad(
                "collection_method",
                "one of preference_center, banner, survey, api, import",
            ));
        }
    };
    let time = |field: &str, text: &str| {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| prost_types::Timestamp {
                seconds: t.unix_timestamp(),
                nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
            })
            .map_err(|_| bad(field, "an RFC 3339 time, e.g. 2021-03-04T10:15:00Z"))
    };
    Ok(pb::ImportRecord {
        source_record_id: line.id,
        target: Some(pb::ConsentTarget {
            subject: Some(common::SubjectRef { id: Some(subject) }),
            purpose: line.purpose,
            data_category: line.data_category.unwrap_or_default(),
            channel: line.channel.unwrap_or_default(),
        }),
        state: state as i32,
        consent_type: consent_type as i32,
        collection_method: collection_method as i32,
        jurisdiction: line.jurisdiction.unwrap_or_default(),
        notice_version: line.notice_version.unwrap_or_default(),
        collected_at: Some(time("collected_at", &line.collected_at)?),
        expires_at: line
            .expires_at
            .as_deref()
            .map(|t| time("expires_at", t))
            .transpose()?,
        source: (line.ip_address.is_some() || line.user_agent.is_some()).then(|| {
            pb::ConsentSource {
                ip_address: line.ip_address.unwrap_or_default(),
                user_agent: line.user_agent.unwrap_or_default(),
            }
        }),
        guardian_ref: line.guardian_ref.unwrap_or_default(),
        language: line.language.unwrap_or_default(),
    })
}

/// Where rejected lines are reported, one JSON object per line.
struct Rejects {
    out: Box<dyn Write>,
}

impl Rejects {
    fn report(&mut self, line: u64, code: &str, field: &str, reason: &str) -> anyhow::Result<()> {
        let entry =
            serde_json::json!({"line": line, "code": code, "field": field, "reason": reason});
        writeln!(self.out, "{entry}").context("writing a rejected line")
    }
}

/// Runs an import: reads the file, sends it in chunks, reports each line not stored. `Err` when
/// the import could not finish (the file, the connection, the service); running it again
/// resumes.
pub async fn run(args: &ImportArgs<'_>) -> anyhow::Result<ImportSummary> {
    anyhow::ensure!(
        (1..=1000).contains(&args.chunk),
        "--chunk must be 1 to 1000 records"
    );
    let file = std::fs::File::open(args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut lines = std::io::BufReader::new(file);
    let mut rejects = Rejects {
        out: match args.rejects {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )),
            None => Box::new(std::io::stderr()),
        },
    };
    let progress = indicatif::ProgressBar::new(size);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta} {msg}",
        )
        .context("the progress bar's template")?,
    );

    let channel = tonic::transport::Channel::from_shared(args.consent.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to the consent service at {}", args.consent))?;
    let mut client = pb::consent_service_client::ConsentServiceClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let (requests, outgoing) =
        tokio::sync::mpsc::channel::<pb::ImportConsentsRequest>(CHUNKS_AHEAD);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", args.token)
            .parse()
            .context("the token is not a valid header value")?,
    );
    let mut answers = client
        .import_consents(request)
        .await
        .map_err(|s| anyhow::anyhow!("ImportConsents failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();

    let mut summary = ImportSummary::default();
    // The line numbers of each chunk sent and not yet answered, oldest first.
    let mut in_flight: VecDeque<Vec<u64>> = VecDeque::new();
    let mut line_no = 0u64;
    let mut read = 0u64;
    let mut done_reading = false;
    let mut text = String::new();
    let interrupted = |line: u64| {
        format!(
            "the import stopped before line {line} was answered; run the same command again to resume (what landed is answered as a duplicate)"
        )
    };
    loop {
        // Fill the pipeline.
        while !done_reading && in_flight.len() < CHUNKS_AHEAD {
            let mut chunk = pb::ImportConsentsRequest {
                source: args.source.to_owned(),
                records: Vec::with_capacity(args.chunk),
            };
            let mut numbers = Vec::with_capacity(args.chunk);
            while chunk.records.len() < args.chunk {
                text.clear();
                let n = lines
                    .read_line(&mut text)
                    .with_context(|| format!("reading line {}", line_no + 1))?;
                if n == 0 {
                    done_reading = true;
                    break;
                }
                read += n as u64;
                line_no += 1;
                if text.trim().is_empty() {
                    continue;
                }
                summary.lines += 1;
                match record_of(text.trim_end()) {
                    Ok(record) => {
                        chunk.records.push(record);
                        numbers.push(line_no);
                    }
                    Err((field, reason)) => {
                        summary.malformed += 1;
                        rejects.report(line_no, "MALFORMED", &field, &reason)?;
                    }
                }
            }
            progress.set_position(read);
            if chunk.records.is_empty() {
                continue;
            }
            let first = numbers[0];
            requests
                .send(chunk)
                .await
                .map_err(|_| anyhow::anyhow!(interrupted(first)))?;
            in_flight.push_back(numbers);
        }
        let Some(numbers) = in_flight.pop_front() else {
            break;
        };
        let answer = answers
            .message()
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "{:?}: {}; {}",
                    s.code(),
                    s.message(),
                    interrupted(numbers[0])
                )
            })?
            .ok_or_else(|| anyhow::anyhow!(interrupted(numbers[0])))?;
        for outcome in &answer.outcomes {
            let line = numbers
                .get(outcome.index as usize)
                .copied()
                .unwrap_or_default();
            match pb::ImportStatus::try_from(outcome.status) {
                Ok(pb::ImportStatus::Imported) => summary.imported += 1,
                Ok(pb::ImportStatus::HistoryOnly) => summary.history_only += 1,
                Ok(pb::ImportStatus::Duplicate) => summary.duplicate += 1,
                _ => {
                    summary.rejected += 1;
                    rejects.report(line, &outcome.code, &outcome.field, &outcome.reason)?;
                }
            }
        }
        anyhow::ensure!(
            answer.outcomes.len() == numbers.len(),
            "the service answered {} records of a chunk of {}",
            answer.outcomes.len(),
            numbers.len()
        );
        progress.set_message(format!(
            "{} imported, {} history only, {} duplicates, {} rejected",
            summary.imported,
            summary.history_only,
            summary.duplicate,
            summary.rejected + summary.malformed
        ));
    }
    drop(requests);
    rejects.out.flush().context("writing the rejected lines")?;
    progress.finish();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_the_format_becomes_a_record() {
        let record = record_of(
            r#"{"id":"ot-1","subject_id":"alice","purpose":"marketing.communications.email","channel":"email","state":"given","consent_type":"explicit","collection_method":"banner","jurisdiction":"EU","notice_version":"2","collected_at":"2021-03-04T10:15:00Z","ip_address":"203.0.113.7"}"#,
        )
        .expect("a valid line");
        assert_eq!(record.source_record_id, "ot-1");
        assert_eq!(record.state, pb::ConsentState::Given as i32);
        assert_eq!(
            record.collection_method,
            pb::CollectionMethod::Banner as i32
        );
        assert_eq!(record.collected_at.map(|t| t.seconds), Some(1_614_852_900));
        assert_eq!(record.target.map(|t| t.channel).as_deref(), Some("email"));
    }

    #[test]
    fn malformed_lines_are_named_by_field_and_never_echo_the_line() {
        let (field, _) = record_of(
            r#"{"id":"1","purpose":"p","state":"given","collected_at":"2021-03-04T10:15:00Z"}"#,
        )
        .expect_err("no subject");
        assert_eq!(field, "subject_id");
        let (field, _) = record_of(r#"{"id":"1","subject_id":"a","purpose":"p","state":"maybe","collected_at":"2021-03-04T10:15:00Z"}"#)
            .expect_err("a bad state");
        assert_eq!(field, "state");
        let (field, _) = record_of(r#"{"id":"1","subject_id":"a","purpose":"p","state":"given","collected_at":"yesterday"}"#)
            .expect_err("a bad time");
        assert_eq!(field, "collected_at");
        let (_, reason) = record_of(r#"{"id":"1","subject_id":"a","purpose":"p","state":"given","collected_at":"2021-03-04T10:15:00Z","emial":"alice@example.com"}"#)
            .expect_err("an unknown field");
        assert!(reason.contains("unknown field"), "{reason}");
        assert!(!reason.contains("alice@example.com"), "{reason}");
        let (_, reason) =
            record_of(&format!("{{\"id\": \"{}", "x".repeat(10_000))).expect_err("not JSON");
        assert!(reason.chars().count() < 200, "{reason}");
    }
}
