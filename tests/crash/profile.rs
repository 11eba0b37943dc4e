//! The profile service under `kill -9`: attributes, answers and events collected, and gated
//! reads answered, from several clients at once, in front of a consent service that stays up;
//! a kill at a random moment, and the checks after every restart.
//!
//! What the profile service promises (`services/profile/src/access_log/writer.rs`): a read's
//! data is returned only after its access-log entry is durable (committed, or on SQLite
//! appended to the store's journal, which the next start chains into the log). So every
//! answered read that returned data must have its entry after the restart; a read in flight at
//! the kill may have one or not. Profile writes carry no idempotency key (a retry would
//! collect twice), so an unacknowledged write is not retried: it must be there whole or not at
//! all.

use crate::child::{Process, Service};
use crate::common::{Bearer, ProfileClient, TestServer, attribute, grant, subject};
use crate::{Rng, Scratch, Summary, died, kill_delay};
use consentgate_consent::testing::Backend;
use consentgate_proto::profile::v1 as pb;
use pb::profile_service_client::ProfileServiceClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent clients (each writes and reads).
const CLIENTS: u64 = 4;
/// Subjects written and read in one cycle.
const SUBJECTS_PER_CYCLE: u64 = 4;
/// Everything is collected and read under this purpose, which each subject is granted.
const PURPOSE: &str = "personalize.content.profiled";
/// The load runs up to this long before the kill.
const MAX_LOAD_MS: u64 = 150;
/// One kill in this many also kills the next start before it serves (while it may be chaining
/// a dead process's journal).
const STARTUP_KILL_ONE_IN: u64 = 8;

/// What one request was about.
#[derive(Debug, Clone)]
enum Op {
    /// Two attributes named `<key>-0`, `<key>-1`, valued with the key.
    Attributes,
    /// One preference answer, question id the key.
    Answer,
    /// Two product views of items `<key>-0`, `<key>-1`.
    Events,
    /// A gated read of everything (ReadSubject) or of the attributes (GetProfile).
    Read { whole: bool },
}

#[derive(Debug, Clone)]
struct Sent {
    key: String,
    subject: String,
    op: Op,
}

/// What is known of one subject.
#[derive(Debug, Default)]
struct Held {
    /// Acknowledged writes, by key.
    acked: Vec<Sent>,
    /// Writes in flight at a kill.
    unacked: Vec<Sent>,
    /// Answered reads that returned data (each must have its access-log entry).
    answered_reads: u64,
    /// Reads in flight at a kill (each may or may not have one).
    unanswered_reads: u64,
}

fn client(process: &Process, caller: &str) -> ProfileClient {
    ProfileServiceClient::with_interceptor(process.channel(), Bearer::caller(caller))
}

/// The clients a load needs: collector, preference center, reader.
struct Clients {
    collector: ProfileClient,
    center: ProfileClient,
    reader: ProfileClient,
}

impl Clients {
    fn of(process: &Process) -> Clients {
        Clients {
            collector: client(process, "collector"),
            center: client(process, "preference-center"),
            reader: client(process, "recommendation-service"),
        }
    }
}

fn read_request(who: &str) -> pb::ReadSubjectRequest {
    pb::ReadSubjectRequest {
        subject: subject(who),
        purpose: PURPOSE.into(),
        attributes: Some(pb::AttributeSelector::default()),
        events: Some(pb::EventSelector {
            limit: 1000,
            ..Default::default()
        }),
        answers: Some(pb::AnswerSelector::default()),
        ..Default::default()
    }
}

/// Sends one request: for a write, whether every item was accepted; for a read, how many
/// items it returned.
async fn send(c: &mut Clients, sent: &Sent) -> Result<usize, tonic::Status> {
    let who = &sent.subject;
    let key = &sent.key;
    let accepted = |accepted: u32, rejected: u32, n: u32| {
        assert!(
            accepted == n && rejected == 0,
            "{key}: {accepted} of {n} accepted (the subject consented to {PURPOSE})"
        );
        n as usize
    };
    Ok(match sent.op {
        Op::Attributes => {
            let r = c
                .collector
                .set_attributes(pb::SetAttributesRequest {
                    subject: subject(who),
                    context: None,
                    attributes: (0..2)
                        .map(|i| {
                            attribute(
                                &format!("{key}-{i}"),
                                key,
                                "user.preferences.stated",
                                PURPOSE,
                            )
                        })
                        .collect(),
                })
                .await?
                .into_inner();
            accepted(r.accepted, r.rejected, 2)
        }
        Op::Answer => {
            let r = c
                .center
                .submit_answers(pb::SubmitAnswersRequest {
                    subject: subject(who),
                    purpose: PURPOSE.into(),
                    answers: vec![pb::AnswerInput {
                        kind: pb::AnswerKind::Preference as i32,
                        question_id: key.clone(),
                        question: "Which sport do you like?".into(),
                        answer: key.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await?
                .into_inner();
            accepted(r.accepted, r.rejected, 1)
        }
        Op::Events => {
            let r = c
                .collector
                .record_events(pb::RecordEventsRequest {
                    subject: subject(who),
                    purpose: PURPOSE.into(),
                    events: (0..2)
                        .map(|i| pb::EventInput {
                            kind: pb::EventKind::ProductView as i32,
                            item_id: format!("{key}-{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            accepted(r.accepted, r.rejected, 2)
        }
        Op::Read { whole: true } => {
            let r = c.reader.read_subject(read_request(who)).await?.into_inner();
            r.attributes.len() + r.events.len() + r.answers.len()
        }
        Op::Read { whole: false } => {
            let r = c
                .reader
                .get_profile(pb::GetProfileRequest {
                    subject: subject(who),
                    purpose: PURPOSE.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            r.attributes.len()
        }
    })
}

/// One client at full speed until the server dies: (request, items) answered, and the
/// request in flight.
async fn load_until_killed(
    mut c: Clients,
    mut rng: Rng,
    subjects: Arc<Vec<String>>,
    cycle: u32,
    n: u64,
) -> (Vec<(Sent, usize)>, Sent) {
    let mut answered = Vec::new();
    let mut i = 0;
    loop {
        let op = match rng.below(10) {
            0..=1 => Op::Attributes,
            2 => Op::Answer,
            3..=4 => Op::Events,
            5..=7 => Op::Read { whole: true },
            _ => Op::Read { whole: false },
        };
        let sent = Sent {
            key: format!("crash-{cycle}-{n}-{i}"),
            subject: subjects[rng.below(subjects.len() as u64) as usize].clone(),
            op,
        };
        match send(&mut c, &sent).await {
            Ok(items) => answered.push((sent, items)),
            Err(status) => {
                assert!(died(&status), "{} failed: {status:?}", sent.key);
                return (answered, sent);
            }
        }
        i += 1;
    }
}

/// Whether the read `r` holds all of `sent`'s items (Some(true)), none (Some(false)), or part
/// (None: a torn write).
fn holds(r: &pb::ReadSubjectResponse, sent: &Sent) -> Option<bool> {
    let key = &sent.key;
    let found = match sent.op {
        Op::Attributes => (0..2)
            .filter(|i| {
                r.attributes
                    .iter()
                    .any(|a| a.name == format!("{key}-{i}") && &a.value == key)
            })
            .count(),
        Op::Answer => usize::from(
            r.answers
                .iter()
                .any(|a| &a.question_id == key && &a.answer == key),
        ),
        Op::Events => (0..2)
            .filter(|i| r.events.iter().any(|e| e.item_id == format!("{key}-{i}")))
            .count(),
        Op::Read { .. } => unreachable!("reads are not held"),
    };
    let all = match sent.op {
        Op::Answer => 1,
        _ => 2,
    };
    match found {
        0 => Some(false),
        f if f == all => Some(true),
        _ => None,
    }
}

/// The checks after a restart, for the subjects of the cycle before the kill (every request
/// of theirs is answered or was in flight at the kill).
async fn check_restart(
    process: &Process,
    held: &mut BTreeMap<String, Held>,
    finished: &[String],
    summary: &mut Summary,
) {
    let reader = client(process, "recommendation-service");
    let ops = client(process, "privacy-ops");
    for who in finished {
        let h = held.entry(who.clone()).or_default();
        let r = patiently("ReadSubject after the restart", summary, || {
            let mut reader = reader.clone();
            async move { reader.read_subject(read_request(who)).await }
        })
        .await;
        for sent in &h.acked {
            assert_eq!(
                holds(&r, sent),
                Some(true),
                "LOST: acknowledged {:?} {} is not (wholly) there after the restart",
                sent.op,
                sent.key
            );
        }
        for sent in &h.unacked {
            match holds(&r, sent) {
                Some(true) => summary.unacknowledged_present += 1,
                Some(false) => summary.unacknowledged_absent += 1,
                None => panic!(
                    "TORN: the unacknowledged {:?} {} is there in part",
                    sent.op, sent.key
                ),
            }
        }
        if r.attributes.len() + r.events.len() + r.answers.len() > 0 {
            h.answered_reads += 1;
        }
        let report = patiently("GetAccessReport after the restart", summary, || {
            let mut ops = ops.clone();
            async move {
                ops.get_access_report(pb::GetAccessReportRequest {
                    subject: subject(who),
                })
                .await
            }
        })
        .await;
        let entries = report.entries.len() as u64;
        assert!(
            entries >= h.answered_reads,
            "LOST: {} answered reads (that returned data) but {entries} access-log entries",
            h.answered_reads
        );
        // More entries than reads made: a read logged twice (docs/durability.md, "Findings": a
        // journal chained again after a kill between its commit and its deletion, fixed).
        let made = h.answered_reads + h.unanswered_reads;
        assert!(
            entries <= made,
            "TWICE: {entries} access-log entries for {made} reads that returned data or were in \
             flight at a kill: a read logged twice"
        );
        summary.answered_reads += h.answered_reads;
        // Done with this subject: it is never written again.
        held.remove(who);
    }
    let verified = client(process, "auditor")
        .verify_access_log(pb::VerifyAccessLogRequest {})
        .await
        .expect("VerifyAccessLog")
        .into_inner();
    assert!(verified.ok, "the access log does not verify: {verified:?}");
}

/// A read after a restart, retried (as a gRPC client retries) while it answers `UNAVAILABLE`:
/// the consent service it asks stays up through the run, but a durability check is not an
/// availability check, and a read that fails closed loses nothing. Every retry is printed and
/// counted in the run's report, so an outage is seen, not hidden; any other failure, or
/// `UNAVAILABLE` five times over, fails the run.
async fn patiently<T, F, Fut>(what: &str, summary: &mut Summary, call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < ATTEMPTS => {
                summary.unavailable_retries += 1;
                eprintln!(
                    "crash run: {what} answered UNAVAILABLE (attempt {attempt}), retrying: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// `consentgate serve profile` on the database at `url`, in front of `consent`.
fn profile_service(scratch: &Scratch, url: &str, consent: &TestServer) -> Service {
    // The deployment secret that keys data-subject request digests: one per run, kept across
    // restarts as a mounted Secret would be.
    let request_key = scratch.path("request.key");
    consentgate_profile::request_key::RequestKey::load_or_create(&request_key)
        .expect("the request key");
    Service::new(
        "profile",
        vec![
            "--metrics-listen".into(),
            "off".into(),
            "--database-url".into(),
            url.into(),
            "--tokens-file".into(),
            scratch.path("tokens.toml").display().to_string(),
            "--consent-url".into(),
            format!("http://{}", consent.addr),
            "--consent-token".into(),
            crate::common::token("profile-service"),
            "--retention-every-secs".into(),
            "86400".into(),
            "--request-key-file".into(),
            request_key.display().to_string(),
        ],
        scratch.path("profile.log"),
    )
}

/// `crashes` kills of the profile service on the database at `url`, in front of a consent
/// service (in this process, on `backend` too) that stays up.
pub async fn run(
    scratch: &Scratch,
    backend: Backend,
    url: &str,
    crashes: u32,
    seed: u64,
) -> Summary {
    let consent = TestServer::start(backend).await;
    let mut service = profile_service(scratch, url, &consent);
    let mut grants = consent.as_caller("preference-center").await;
    let mut summary = Summary::default();
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new();
    for cycle in 0..crashes {
        let mut rng = Rng::fork(seed, u64::from(cycle) << 8);
        let process = service.start().await;
        check_restart(&process, &mut held, &finished, &mut summary).await;

        let subjects: Vec<String> = (0..SUBJECTS_PER_CYCLE)
            .map(|i| format!("crash-subject-{cycle}-{i}"))
            .collect();
        for who in &subjects {
            grants
                .grant(grant(who, PURPOSE, &format!("{who}-grant")))
                .await
                .expect("grant");
        }
        let subjects = Arc::new(subjects);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                tokio::spawn(load_until_killed(
                    Clients::of(&process),
                    Rng::fork(seed, (u64::from(cycle) << 8) + n + 1),
                    subjects.clone(),
                    cycle,
                    n,
                ))
            })
            .collect();
        tokio::time::sleep(kill_delay(&mut rng, MAX_LOAD_MS)).await;
        process.kill().await;
        summary.crashes += 1;
        for c in clients {
            let (answered, in_flight) = c.await.expect("a client panicked");
            for (sent, items) in answered {
                let h = held.entry(sent.subject.clone()).or_default();
                match sent.op {
                    Op::Read { .. } if items > 0 => h.answered_reads += 1,
                    Op::Read { .. } => {}
                    _ => {
                        summary.acknowledged_writes += 1;
                        h.acked.push(sent);
                    }
                }
            }
            let h = held.entry(in_flight.subject.clone()).or_default();
            match in_flight.op {
                Op::Read { .. } => h.unanswered_reads += 1,
                _ => h.unacked.push(in_flight),
            }
        }
        finished = subjects.to_vec();

        if rng.below(STARTUP_KILL_ONE_IN) == 0 {
            let starting = service.spawn();
            tokio::time::sleep(kill_delay(&mut rng, 400)).await;
            starting.kill().await;
            summary.kills_starting += 1;
        }
    }
    let process = service.start().await;
    check_restart(&process, &mut held, &finished, &mut summary).await;
    process.kill().await;
    tokio::time::timeout(Duration::from_secs(30), consent.stop())
        .await
        .expect("the consent service stops");
    summary
}

/// The access journals beside the SQLite database at `url` that hold entries: (path, content).
fn journals(url: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let db = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
    let prefix = format!(
        "{}.access-journal-",
        db.file_name().expect("a file").to_string_lossy()
    );
    std::fs::read_dir(db.parent().expect("a folder"))
        .expect("the database folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .map(|p| {
            let content = std::fs::read(&p).expect("a journal");
            (p, content)
        })
        .filter(|(_, content)| !content.is_empty())
        .collect()
}

/// The finding the crash run turned up, made deterministic (docs/durability.md, "Findings"):
/// on SQLite, a read's access-log entry is journaled, then chained into the table in one
/// transaction, then its journal file is deleted. A kill between that commit and the deletion
/// leaves the file behind, and the next start chained its entries again (now it recognises
/// the journal by the name the chaining recorded, and deletes it): the person's access report
/// listed the read twice. The kill is reproduced by its effect on disk: the journal a
/// killed process left is kept aside, the service chains it, and the file is put back as the
/// kill would have left it. Returns (answered reads, access-log entries after the restart).
pub async fn journal_chained_twice(scratch: &Scratch, url: &str) -> (u64, u64) {
    let consent = TestServer::start(Backend::Sqlite).await;
    let mut service = profile_service(scratch, url, &consent);
    let who = "crash-journal-subject";
    consent
        .as_caller("preference-center")
        .await
        .grant(grant(who, PURPOSE, "journal-grant"))
        .await
        .expect("grant");
    let mut answered = 0;
    let mut left = Vec::new();
    for attempt in 0..50 {
        let process = service.start().await;
        let mut c = Clients::of(&process);
        let key = format!("journal-{attempt}");
        let write = Sent {
            key: key.clone(),
            subject: who.into(),
            op: Op::Attributes,
        };
        send(&mut c, &write).await.expect("SetAttributes");
        let read = Sent {
            key,
            subject: who.into(),
            op: Op::Read { whole: false },
        };
        assert!(send(&mut c, &read).await.expect("GetProfile") > 0);
        answered += 1;
        // Killed before the 100 ms flush chains the entry, its journal stays behind.
        process.kill().await;
        left = journals(url);
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "no kill beat the journal's flush");

    // The next start chains the journal into the table and deletes the file.
    let process = service.start().await;
    let report = |process: &Process| {
        let mut ops = client(process, "privacy-ops");
        async move {
            ops.get_access_report(pb::GetAccessReportRequest {
                subject: subject(who),
            })
            .await
            .expect("GetAccessReport")
            .into_inner()
            .entries
            .len() as u64
        }
    };
    assert_eq!(report(&process).await, answered, "chained once");
    process.kill().await;
    // As a kill after the chaining commit and before the deletion leaves the disk.
    for (path, content) in &left {
        std::fs::write(path, content).expect("put the journal back");
    }
    let process = service.start().await;
    let entries = report(&process).await;
    process.kill().await;
    consent.stop().await;
    (answered, entries)
}
